//! Two-phase prune's records and format records (spec §12a): object envelope, AEAD,
//! zstd, JSON. A record that opens seals and opens again to the same record.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::format::object::Kind;
use vault::format::prune::{DeletionRecord, FormatRecord, MarkRecord, RevivalRecord};
use vault_fuzz::{keys, stored_object};

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Some(s) = stored_object(Kind::Mark, rest)
                && let Ok(r) = MarkRecord::open(keys, &s)
            {
                assert_eq!(MarkRecord::open(keys, &r.seal(keys)).expect("reopens"), r);
            }
        }
        1 => {
            if let Some(s) = stored_object(Kind::Revival, rest)
                && let Ok(r) = RevivalRecord::open(keys, &s)
            {
                assert_eq!(
                    RevivalRecord::open(keys, &r.seal(keys)).expect("reopens"),
                    r
                );
            }
        }
        2 => {
            if let Some(s) = stored_object(Kind::Deletion, rest)
                && let Ok(r) = DeletionRecord::open(keys, &s)
            {
                assert_eq!(
                    DeletionRecord::open(keys, &r.seal(keys)).expect("reopens"),
                    r
                );
            }
        }
        _ => {
            if let Some(s) = stored_object(Kind::Format, rest)
                && let Ok(r) = FormatRecord::open(keys, &s)
            {
                assert_eq!(FormatRecord::open(keys, &r.seal(keys)).expect("reopens"), r);
            }
        }
    }
});
