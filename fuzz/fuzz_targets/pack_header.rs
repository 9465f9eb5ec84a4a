//! Pack trailers and headers, as `check` reads them from a whole pack and the repository
//! from a trailer and a header range.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::format::crypto::OVERHEAD;
use vault::format::pack::{self, BlobType, PackBuilder};
use vault_fuzz::{Bytes, PACK_HEADER_AAD, keys};

/// Checks what `open_header` promises about the entries it returns.
fn check_entries(entries: &[pack::BlobEntry], data_len: u64, sealed_len: usize) {
    let mut offset = 0u64;
    let mut prev: Option<&pack::BlobEntry> = None;
    for e in entries {
        match prev {
            // A bundle's later members share its place and follow each other inside it.
            Some(p) if e.bundled() && e.offset == p.offset => {
                assert!(p.bundled() && e.length == p.length);
                assert_eq!(
                    u64::from(e.inner),
                    u64::from(p.inner) + u64::from(p.raw_len)
                );
            }
            _ => {
                assert_eq!(u64::from(e.offset), offset, "units are consecutive");
                assert_eq!(e.inner, 0, "a unit starts with its first blob");
                offset += u64::from(e.length);
            }
        }
        prev = Some(e);
    }
    assert_eq!(offset, data_len, "blobs fill the pack");
    assert_eq!(
        pack::stored_size(entries),
        data_len + sealed_len as u64 + pack::TRAILER_LEN as u64,
        "stored_size agrees with the pack"
    );
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let mut b = Bytes(data);
    match b.u8() % 3 {
        // A whole pack as stored, split the way `check` does.
        0 => {
            let bytes = b.rest();
            let Some(tstart) = bytes.len().checked_sub(pack::TRAILER_LEN) else {
                return;
            };
            let Ok(hlen) = pack::parse_trailer(&bytes[tstart..]) else {
                return;
            };
            let Some(hstart) = tstart.checked_sub(hlen as usize) else {
                return;
            };
            let sealed = &bytes[hstart..tstart];
            if let Ok(entries) = pack::open_header(keys, sealed, hstart as u64) {
                check_entries(&entries, hstart as u64, sealed.len());
            }
        }
        // A header plaintext, sealed with the fixed key, for a pack of `data_len` bytes
        // before its header.
        1 => {
            let data_len = b.u64() % (1 << 36);
            let sealed = keys.cipher.seal(PACK_HEADER_AAD, b.rest());
            if let Ok(entries) = pack::open_header(keys, &sealed, data_len) {
                assert_eq!(
                    entries.len() * pack::HEADER_ENTRY_LEN + OVERHEAD,
                    sealed.len()
                );
                check_entries(&entries, data_len, sealed.len());
            }
        }
        // Blobs cut from the input, packed and read back.
        _ => {
            let mut blobs = Vec::new();
            let mut pb = PackBuilder::default();
            while !b.rest().is_empty() && blobs.len() < 64 {
                let control = b.u8();
                let t = if control & 1 == 0 {
                    BlobType::Data
                } else {
                    BlobType::Tree
                };
                // Bit 1: a bundle of this blob and the next (lengths from the input).
                let members = if control & 2 == 0 { 1 } else { 2 };
                let mut parts = Vec::new();
                for _ in 0..members {
                    let len = usize::from(b.u8()) * 16;
                    let plain = b.take(len);
                    parts.push((keys.blob_id(t as u8, plain), plain));
                    blobs.push(plain);
                }
                if members == 1 {
                    pb.add(pack::seal_blob(keys, t, parts[0].0, parts[0].1, 1));
                } else {
                    pb.add_bundle(pack::seal_bundle(keys, t, &parts, 1));
                }
            }
            let (bytes, id, entries) = pb.finish(keys);
            assert_eq!(id, vault::format::Id::of_stored(&bytes));
            let tstart = bytes.len() - pack::TRAILER_LEN;
            let hlen = pack::parse_trailer(&bytes[tstart..]).expect("own trailer") as usize;
            let hstart = tstart - hlen;
            let parsed =
                pack::open_header(keys, &bytes[hstart..tstart], hstart as u64).expect("own header");
            assert_eq!(parsed, entries);
            check_entries(&parsed, hstart as u64, hlen);
            for (e, plain) in parsed.iter().zip(&blobs) {
                let stored = &bytes[e.offset as usize..(e.offset + e.length) as usize];
                assert_eq!(pack::open_blob(keys, e, stored).expect("own blob"), *plain);
            }
        }
    }
});
