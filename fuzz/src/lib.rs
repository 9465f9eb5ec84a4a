//! What the fuzz targets share: a fixed repository key, the associated data the format
//! binds to each kind of ciphertext, and helpers that seal a fuzz input with that key so
//! the decoders behind the AEAD see arbitrary plaintext.
//!
//! The associated data strings are copied from the format (`repo-format/README.md`);
//! `keys()` checks once, against what vault itself seals, that they still agree.

use std::sync::LazyLock;

use vault::format::Id;
use vault::format::crypto::{Cipher, Keys, MasterKey};
use vault::format::object::{self, Kind, OBJECT_VERSION};
use vault::format::pack::{self, BlobType, PackBuilder};

/// The master key of every fuzz input (and of the seed corpus).
pub const MASTER_KEY: [u8; 32] = [0x42; 32];
/// The password the keyfile target tries.
pub const PASSWORD: &[u8] = b"fuzz password";

/// Associated data of a pack header.
pub const PACK_HEADER_AAD: &[u8] = b"vault pack header v1";

/// Associated data of a blob: `"vault blob v1" || type || id`.
pub fn blob_aad(blob_type: BlobType, id: &Id) -> Vec<u8> {
    let mut aad = b"vault blob v1".to_vec();
    aad.push(blob_type as u8);
    aad.extend_from_slice(&id.0);
    aad
}

/// Associated data of a bundle: `"vault bundle v1" || type`.
pub fn bundle_aad(blob_type: BlobType) -> Vec<u8> {
    let mut aad = b"vault bundle v1".to_vec();
    aad.push(blob_type as u8);
    aad
}

/// Associated data of a sealed object: `"vault object v1 " || kind`.
pub fn object_aad(kind: Kind) -> Vec<u8> {
    let name = match kind {
        Kind::Config => "config",
        Kind::Index => "index",
        Kind::Snapshot => "snapshot",
        Kind::Lock => "lock",
        Kind::Mirror => "mirror",
        Kind::Forget => "forget",
        Kind::Export => "export",
        Kind::Mark => "mark",
        Kind::Revival => "revival",
        Kind::Deletion => "deletion",
        Kind::Format => "format",
    };
    format!("vault object v1 {name}").into_bytes()
}

/// The working keys derived from `MASTER_KEY`.
pub fn keys() -> &'static Keys {
    static KEYS: LazyLock<Keys> = LazyLock::new(|| {
        let keys = MasterKey::from_bytes(MASTER_KEY).derive();
        self_check(&keys);
        keys
    });
    &KEYS
}

/// Panics when the associated data above no longer matches what vault seals: the
/// sealing modes of the targets would then only ever exercise the MAC check.
fn self_check(keys: &Keys) {
    let s = object::seal(keys, Kind::Index, b"x");
    keys.cipher
        .open(&object_aad(Kind::Index), &s[1..])
        .expect("object associated data matches vault's");
    let id = keys.blob_id(BlobType::Tree as u8, b"x");
    let b = pack::seal_blob(keys, BlobType::Tree, id, b"x", 3);
    keys.cipher
        .open(&blob_aad(BlobType::Tree, &id), &b.bytes)
        .expect("blob associated data matches vault's");
    let mut pb = PackBuilder::default();
    pb.add(b);
    let (bytes, _, _) = pb.finish(keys);
    let hlen = pack::parse_trailer(&bytes[bytes.len() - pack::TRAILER_LEN..]).unwrap() as usize;
    let header = &bytes[bytes.len() - pack::TRAILER_LEN - hlen..bytes.len() - pack::TRAILER_LEN];
    keys.cipher
        .open(PACK_HEADER_AAD, header)
        .expect("pack header associated data matches vault's");
}

/// Seals `payload` (compression byte, then body) as the stored bytes of an object of
/// `kind`, exactly as `object::seal` does after choosing the compression.
pub fn seal_object_payload(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![OBJECT_VERSION];
    keys()
        .cipher
        .seal_into(&object_aad(kind), payload, &mut out);
    out
}

/// Appends the keyless checksum of config and lock files.
pub fn checksummed(mut sealed: Vec<u8>) -> Vec<u8> {
    let sum = blake3::hash(&sealed);
    sealed.extend_from_slice(sum.as_bytes());
    sealed
}

/// The stored bytes of an object of `kind` for one fuzz input. The first byte picks how
/// the rest is used:
/// 0: as stored bytes (envelope, AEAD; only the checks before the MAC are reachable);
/// 1: as the object's body, sealed with `object::seal` (compressed when that helps);
/// 2: as the payload (compression byte, then body), sealed as is, so arbitrary zstd
///    frames reach the decompressor.
///
/// Config objects also get their keyless checksum in modes 1 and 2. None when the input
/// is empty.
pub fn stored_object(kind: Kind, data: &[u8]) -> Option<Vec<u8>> {
    let (&mode, rest) = data.split_first()?;
    let stored = match mode % 3 {
        0 => return Some(rest.to_vec()),
        1 => object::seal(keys(), kind, rest),
        _ => seal_object_payload(kind, rest),
    };
    Some(if kind == Kind::Config {
        checksummed(stored)
    } else {
        stored
    })
}

/// The cheapest scrypt there is (N = 2, r = 1, p = 1) in place of the key file's own
/// parameters, which the format puts at N >= 2^15 (tens of MiB and milliseconds per
/// input); everything around the derivation is vault's own code.
pub fn cheap_kek(password: &[u8], salt: &[u8]) -> Cipher {
    let params = scrypt::Params::new(1, 1, 1).expect("valid scrypt parameters");
    let mut kek = [0u8; 32];
    scrypt::scrypt(password, salt, &params, &mut kek).expect("32-byte output");
    Cipher::new(&kek)
}

/// A key file whose payload (`payload_json`) opens under `cheap_kek(PASSWORD, salt)` and
/// whose metadata (`meta_json`) opens under the fixed master key.
pub fn cheap_key_file(
    salt: &[u8],
    payload_json: &[u8],
    meta_json: &[u8],
) -> vault::format::keyfile::KeyFile {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use vault::format::keyfile::{self, KdfParams, KeyFile};
    KeyFile {
        version: keyfile::KEYFILE_VERSION,
        kdf: KdfParams {
            algorithm: "scrypt".into(),
            log_n: keyfile::MIN_LOG_N,
            r: 8,
            p: 1,
            salt: B64.encode(salt),
        },
        sealed: B64.encode(cheap_kek(PASSWORD, salt).seal(keyfile::AAD, payload_json)),
        meta: B64.encode(keys().cipher.seal(keyfile::META_AAD, meta_json)),
    }
}

/// Reads little-endian integers off the front of a fuzz input.
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    pub fn id(&mut self) -> Id {
        let mut id = [0u8; 32];
        for b in &mut id {
            *b = self.u8();
        }
        Id(id)
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (h, t) = self.0.split_at(n.min(self.0.len()));
        self.0 = t;
        h
    }

    pub fn rest(&self) -> &'a [u8] {
        self.0
    }
}
