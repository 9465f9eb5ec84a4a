//! Key files: the master key sealed under a key derived from a password with scrypt.
//! Plaintext JSON holds only the KDF parameters and salt; label, host and creation time
//! are sealed together with the master key so the storage provider learns none of them.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::crypto::{Cipher, MasterKey, fill_random};
use super::error::{FormatError, Result};

pub const KEYFILE_VERSION: u32 = 1;
/// The floor the format promises: N = 2^15, r = 8, p = 1.
pub const MIN_LOG_N: u8 = 15;
/// 2^20 with r = 8 needs 1 GiB of memory; beyond that opening would fail on small machines.
pub const MAX_LOG_N: u8 = 20;
/// Most memory a key file may demand (128·r·N bytes): the ceiling's 1 GiB.
pub const MAX_KDF_MEMORY: u64 = 1 << 30;
/// Most work a key file may demand (r·p·N): the ceiling's 8 · 2^20.
pub const MAX_KDF_WORK: u64 = 8 << 20;
/// Associated data of the sealed payload.
pub const AAD: &[u8] = b"vault key v1";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub algorithm: String,
    pub log_n: u8,
    pub r: u32,
    pub p: u32,
    pub salt: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct KeyFile {
    pub version: u32,
    pub kdf: KdfParams,
    pub sealed: String,
    /// Label, host, user and creation time sealed under the repository's encryption key,
    /// so that `key list` shows every key's metadata whichever password opened it.
    pub meta: String,
}

/// A key's metadata, as sealed in `meta`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct KeyMeta {
    pub label: String,
    pub host: String,
    pub user: String,
    pub created: String,
}

/// Associated data of the sealed metadata.
pub const META_AAD: &[u8] = b"vault key meta v1";

/// What a key file protects.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct KeyPayload {
    pub master_key: String,
    pub label: String,
    pub host: String,
    pub user: String,
    pub created: String,
}

impl KeyPayload {
    pub fn master(&self) -> Result<MasterKey> {
        let raw = Zeroizing::new(
            B64.decode(&self.master_key)
                .map_err(|e| FormatError::malformed("key payload", e))?,
        );
        let mut arr = Zeroizing::new([0u8; 32]);
        if raw.len() != arr.len() {
            return Err(FormatError::malformed(
                "key payload",
                "master key is not 32 bytes",
            ));
        }
        arr.copy_from_slice(&raw);
        Ok(MasterKey::from_bytes(*arr))
    }
}

/// The payload carries the master key in base64: wiped like the key itself.
impl Drop for KeyPayload {
    fn drop(&mut self) {
        self.master_key.zeroize();
    }
}

impl ZeroizeOnDrop for KeyPayload {}

impl KdfParams {
    /// Checks the algorithm and the parameter ranges without deriving; returns the salt.
    pub fn check(&self) -> Result<Vec<u8>> {
        if self.algorithm != "scrypt" {
            return Err(FormatError::malformed(
                "key file",
                format!("kdf {}", self.algorithm),
            ));
        }
        if self.log_n < MIN_LOG_N
            || self.log_n > MAX_LOG_N
            || self.r == 0
            || self.r > 32
            || self.p == 0
            || self.p > 16
        {
            return Err(FormatError::malformed(
                "key file",
                "scrypt parameters out of range",
            ));
        }
        // Key files are not authenticated before their KDF runs: whoever holds the
        // storage could plant one that demands more than the ceiling (N = 2^20, r = 8,
        // p = 1) and stall or exhaust every machine that opens the repository.
        let n = 1u64 << self.log_n;
        let (r, p) = (u64::from(self.r), u64::from(self.p));
        if 128 * r * n > MAX_KDF_MEMORY || r * p * n > MAX_KDF_WORK {
            return Err(FormatError::malformed(
                "key file",
                "scrypt parameters above the ceiling",
            ));
        }
        B64.decode(&self.salt)
            .map_err(|e| FormatError::malformed("key file salt", e))
    }
}

fn derive(password: &[u8], kdf: &KdfParams) -> Result<Cipher> {
    let salt = kdf.check()?;
    let params = scrypt::Params::new(kdf.log_n, kdf.r, kdf.p)
        .map_err(|e| FormatError::malformed("key file", e))?;
    let mut kek = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password, &salt, &params, kek.as_mut())
        .map_err(|e| FormatError::malformed("key file", e))?;
    Ok(Cipher::new(&kek))
}

/// Chooses log2(N) so that one derivation takes about `target` on this machine.
pub fn calibrate_log_n(target: Duration) -> u8 {
    let params = scrypt::Params::new(MIN_LOG_N, 8, 1).expect("valid floor parameters");
    let mut out = [0u8; 32];
    let start = Instant::now();
    let _ = scrypt::scrypt(b"calibration", b"calibration salt", &params, &mut out);
    let mut per = start.elapsed().max(Duration::from_millis(1));
    let mut log_n = MIN_LOG_N;
    while log_n < MAX_LOG_N && per * 2 <= target + target / 4 {
        per *= 2;
        log_n += 1;
    }
    log_n
}

impl KeyFile {
    pub fn create(password: &[u8], log_n: u8, payload: &KeyPayload) -> Result<KeyFile> {
        let repo_keys = payload.master()?.derive();
        let meta = KeyMeta {
            label: payload.label.clone(),
            host: payload.host.clone(),
            user: payload.user.clone(),
            created: payload.created.clone(),
        };
        let meta = serde_json::to_vec(&meta).map_err(|e| FormatError::malformed("key meta", e))?;
        let mut salt = [0u8; 32];
        fill_random(&mut salt);
        let kdf = KdfParams {
            algorithm: "scrypt".into(),
            log_n: log_n.clamp(MIN_LOG_N, MAX_LOG_N),
            r: 8,
            p: 1,
            salt: B64.encode(salt),
        };
        let cipher = derive(password, &kdf)?;
        let body = Zeroizing::new(
            serde_json::to_vec(payload).map_err(|e| FormatError::malformed("key payload", e))?,
        );
        Ok(KeyFile {
            version: KEYFILE_VERSION,
            kdf,
            sealed: B64.encode(cipher.seal(AAD, &body)),
            meta: B64.encode(repo_keys.cipher.seal(META_AAD, &meta)),
        })
    }

    pub fn parse(bytes: &[u8]) -> Result<KeyFile> {
        let kf: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| FormatError::malformed("key file", e))?;
        if kf.version != KEYFILE_VERSION {
            return Err(FormatError::Version {
                what: "key file",
                version: kf.version,
            });
        }
        Ok(kf)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("key file serializes")
    }

    /// Opens the key with a password. `BadMac` means a wrong password (or a damaged file).
    pub fn open(&self, password: &[u8]) -> Result<KeyPayload> {
        self.open_with(&derive(password, &self.kdf)?)
    }

    /// Opens the payload with an already derived key-encryption key (what `open` does
    /// after scrypt).
    pub fn open_with(&self, cipher: &Cipher) -> Result<KeyPayload> {
        let sealed = B64
            .decode(&self.sealed)
            .map_err(|e| FormatError::malformed("key file", e))?;
        let body = Zeroizing::new(cipher.open(AAD, &sealed)?);
        serde_json::from_slice(&body).map_err(|e| FormatError::malformed("key payload", e))
    }
}

impl KeyFile {
    /// The key's metadata, readable with the repository's keys.
    pub fn meta(&self, keys: &super::crypto::Keys) -> Result<KeyMeta> {
        let sealed = B64
            .decode(&self.meta)
            .map_err(|e| FormatError::malformed("key meta", e))?;
        let body = keys.cipher.open(META_AAD, &sealed)?;
        serde_json::from_slice(&body).map_err(|e| FormatError::malformed("key meta", e))
    }
}

pub fn encode_master(key: &MasterKey) -> String {
    B64.encode(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_zeroizes_on_drop() {
        fn wipes<T: ZeroizeOnDrop>() {}
        wipes::<KeyPayload>();
    }

    #[test]
    fn create_open_wrong_password() {
        let mk = MasterKey::generate();
        let payload = KeyPayload {
            master_key: encode_master(&mk),
            label: "l".into(),
            host: "h".into(),
            user: "u".into(),
            created: "now".into(),
        };
        let kf = KeyFile::create(b"pw", MIN_LOG_N, &payload).unwrap();
        let parsed = KeyFile::parse(&kf.to_bytes()).unwrap();
        let got = parsed.open(b"pw").unwrap();
        assert_eq!(got.master().unwrap().as_bytes(), mk.as_bytes());
        assert_eq!(parsed.open(b"bad").unwrap_err(), FormatError::BadMac);
    }

    #[test]
    fn rejects_weak_parameters() {
        let mut kf = KeyFile::create(
            b"pw",
            MIN_LOG_N,
            &KeyPayload {
                master_key: encode_master(&MasterKey::generate()),
                label: String::new(),
                host: String::new(),
                user: String::new(),
                created: String::new(),
            },
        )
        .unwrap();
        kf.kdf.log_n = 10;
        assert!(matches!(kf.open(b"pw"), Err(FormatError::Malformed { .. })));
        // Each parameter in range, together above the ceiling (4 GiB): refused before
        // any derivation starts.
        kf.kdf.log_n = MAX_LOG_N;
        kf.kdf.r = 32;
        assert!(matches!(kf.kdf.check(), Err(FormatError::Malformed { .. })));
        kf.kdf.r = 8;
        kf.kdf.p = 16;
        assert!(matches!(kf.kdf.check(), Err(FormatError::Malformed { .. })));
        kf.kdf.p = 1;
        assert!(kf.kdf.check().is_ok(), "the ceiling itself is allowed");
    }
}
