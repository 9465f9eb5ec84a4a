//! Index files: object envelope, AEAD, zstd, and the binary body decoder.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::format::index::IndexFile;
use vault::format::object::Kind;
use vault_fuzz::{keys, stored_object};

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    // Mode 3 (first byte % 4): the rest straight into the body decoder, skipping the
    // AEAD; the others go through `stored_object`.
    if let Some((&mode, body)) = data.split_first()
        && mode % 4 == 3
    {
        if let Ok(idx) = IndexFile::decode(body) {
            // The encoding has no slack: what decodes re-encodes to the same bytes.
            assert_eq!(idx.encode(), body);
            let _ = idx.blob_count();
        }
        return;
    }
    let Some(stored) = stored_object(Kind::Index, data) else {
        return;
    };
    if let Ok(idx) = IndexFile::open(keys, &stored) {
        let again = IndexFile::open(keys, &idx.seal(keys)).expect("a sealed index opens");
        assert_eq!(again, idx);
    }
});
