//! Snapshots: object envelope, AEAD, zstd, JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::format::object::Kind;
use vault::format::snapshot::Snapshot;
use vault_fuzz::{keys, stored_object};

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let Some(stored) = stored_object(Kind::Snapshot, data) else {
        return;
    };
    if let Ok(s) = Snapshot::open(keys, &stored) {
        let _ = s.timestamp();
        // Written again, it opens again (floats in the summary may not round-trip
        // bit for bit, so only the rest is compared).
        let again = Snapshot::open(keys, &s.seal(keys)).expect("a sealed snapshot opens");
        assert_eq!(
            (&again.time, &again.paths, &again.tree, &again.tags),
            (&s.time, &s.paths, &s.tree, &s.tags)
        );
    }
});
