//! Blobs and object payloads: AEAD, zstd decompression with its limit, length and id
//! checks. Since the AEAD rejects random bytes, most modes seal the input first.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::format::object::{self, Kind};
use vault::format::pack::{
    self, BlobEntry, BlobType, FLAG_BUNDLE, FLAG_HOST, FLAG_PUBLIC, FLAG_ZSTD,
};
use vault_fuzz::{Bytes, blob_aad, bundle_aad, keys, seal_object_payload};

/// The largest blob vault writes: the chunker's maximum (16 MiB). Raw lengths come from
/// the authenticated index, so larger ones are not attacker-controlled.
const MAX_RAW: u32 = 16 << 20;

const KINDS: [Kind; 7] = [
    Kind::Config,
    Kind::Index,
    Kind::Snapshot,
    Kind::Lock,
    Kind::Mirror,
    Kind::Forget,
    Kind::Export,
];

fn blob_type(b: u8) -> BlobType {
    if b & 1 == 0 {
        BlobType::Data
    } else {
        BlobType::Tree
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let mut b = Bytes(data);
    match b.u8() % 7 {
        // An index entry and stored bytes as read from a pack.
        0 => {
            let blob_type = blob_type(b.u8());
            let flags = b.u8();
            let id = b.id();
            let raw_len = b.u32() % (MAX_RAW + 1);
            let inner = b.u32();
            let entry = BlobEntry {
                blob_type,
                flags,
                id,
                offset: 0,
                length: b.rest().len() as u32,
                raw_len,
                inner,
            };
            let _ = pack::open_blob(keys, &entry, b.rest());
        }
        // A payload sealed under its entry: with the zstd flag the rest is decompressed
        // against the entry's raw length; the id is that of the payload, so a stored
        // (uncompressed) blob opens.
        1 => {
            let t = blob_type(b.u8());
            // Bundle members are sealed differently (mode 5), and role-sealed units
            // (public-key or host prefix) are not sealed under the cipher alone.
            let flags = b.u8() & !(FLAG_BUNDLE | FLAG_PUBLIC | FLAG_HOST);
            let raw_len = b.u32() % (MAX_RAW + 1);
            let payload = b.rest();
            let id = keys.blob_id(t as u8, payload);
            let stored = keys.cipher.seal(&blob_aad(t, &id), payload);
            let entry = BlobEntry {
                blob_type: t,
                flags,
                id,
                offset: 0,
                length: stored.len() as u32,
                raw_len,
                inner: 0,
            };
            let opened = pack::open_blob(keys, &entry, &stored);
            assert_eq!(
                opened.as_ref().ok(),
                pack::open_blob_owned(keys, &entry, stored.clone())
                    .as_ref()
                    .ok(),
                "opening in place gives what opening a copy gives"
            );
            match opened {
                Ok(plain) => assert_eq!(plain.len(), raw_len as usize),
                Err(_) => assert!(
                    flags & FLAG_ZSTD != 0 || payload.len() != raw_len as usize,
                    "an uncompressed blob of the right length opens"
                ),
            }
        }
        // What vault writes: sealed (compressed when that helps), then read back.
        2 => {
            let t = blob_type(b.u8());
            let level = i32::from(b.u8() % 3) + 1;
            let plain = b.rest();
            let id = keys.blob_id(t as u8, plain);
            let blob = pack::seal_blob(keys, t, id, plain, level);
            assert_eq!(
                pack::open_blob(keys, &blob.entry(0), &blob.bytes).expect("a sealed blob opens"),
                plain
            );
        }
        // A bundle payload sealed under the bundle AAD, read as one member placed by the
        // input: the bundle decompressor and the member's bounds.
        5 => {
            let t = blob_type(b.u8());
            let flags = b.u8() | FLAG_BUNDLE;
            let (raw_len, inner) = (b.u32() % (MAX_RAW + 1), b.u32());
            let stored = keys.cipher.seal(&bundle_aad(t), b.rest());
            let entry = BlobEntry {
                blob_type: t,
                flags,
                id: b.id(),
                offset: 0,
                length: stored.len() as u32,
                raw_len,
                inner,
            };
            let _ = pack::open_blob(keys, &entry, &stored);
        }
        // What vault writes for small blobs: the input cut into members and sealed as
        // one bundle, each member read back on its own and through an opener.
        6 => {
            let t = blob_type(b.u8());
            let cuts = [b.u8(), b.u8(), b.u8()];
            let plain = b.rest();
            let mut parts = Vec::new();
            let mut at = 0;
            for c in cuts {
                let end = (at + usize::from(c)).min(plain.len());
                parts.push((keys.blob_id(t as u8, &plain[at..end]), &plain[at..end]));
                at = end;
            }
            parts.push((keys.blob_id(t as u8, &plain[at..]), &plain[at..]));
            let mut pb = pack::PackBuilder::default();
            pb.add_bundle(pack::seal_bundle(keys, t, &parts, 1));
            let (bytes, _, entries) = pb.finish(keys);
            let mut opener = pack::BlobOpener::default();
            for (e, (_, part)) in entries.iter().zip(&parts) {
                let stored = &bytes[e.offset as usize..(e.offset + e.length) as usize];
                assert_eq!(pack::open_blob(keys, e, stored).expect("own member"), *part);
                assert_eq!(opener.open(keys, e, stored).expect("own member"), *part);
            }
        }
        // An object payload (compression byte, then body), sealed: the object
        // decompressor, which has no declared size to hold it to.
        3 => {
            let kind = KINDS[usize::from(b.u8()) % KINDS.len()];
            let stored = seal_object_payload(kind, b.rest());
            let _ = object::open(keys, kind, &stored);
        }
        // The decompressor itself, with a limit.
        _ => {
            let limit = b.u32() % (MAX_RAW + 1);
            if let Ok(out) = object::decompress(b.rest(), limit as usize) {
                assert!(out.len() <= limit as usize, "the limit holds");
            }
        }
    }
});
