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
/// Key files of backup-role keys (format 4, §20): older vaults refuse them by version
/// rather than misread a payload without a master key.
pub const KEYFILE_VERSION_ROLES: u32 = 2;
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
    /// "backup" for a backup-role key; empty for a full key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
}

/// Associated data of the sealed metadata.
pub const META_AAD: &[u8] = b"vault key meta v1";

/// What a key file protects.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct KeyPayload {
    /// The master key, base64; empty in a backup-role key.
    pub master_key: String,
    pub label: String,
    pub host: String,
    pub user: String,
    pub created: String,
    /// What a backup-role key holds instead of the master key (§20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupPayload>,
    /// Format 5, base64: what blob ids and chunk boundaries derive from, when it is
    /// not the master key (after a key rotation, §3.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_key: Option<String>,
    /// Format 5, base64, only while a key rotation is in progress: the master key it
    /// replaces, whose objects the repository still holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key: Option<String>,
}

/// The keys of a backup-role key, base64: enough to deduplicate, chunk as every host
/// does, seal contents to the repository's public key and read its own host's trees
/// and snapshots; nothing that opens file contents, other hosts' trees, or makes an
/// admin tag.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct BackupPayload {
    pub enc_key: String,
    pub id_key: String,
    pub chunker_seed: u64,
    pub gear_key: String,
    pub public: String,
    /// The host this key writes trees and snapshots as.
    pub host: String,
    pub host_id: String,
    pub host_key: String,
}

impl Drop for BackupPayload {
    fn drop(&mut self) {
        self.enc_key.zeroize();
        self.id_key.zeroize();
        self.chunker_seed.zeroize();
        self.gear_key.zeroize();
        self.host_key.zeroize();
    }
}

impl ZeroizeOnDrop for BackupPayload {}

fn bytes32(what: &'static str, b64: &str) -> Result<Zeroizing<[u8; 32]>> {
    let raw = Zeroizing::new(
        B64.decode(b64)
            .map_err(|e| FormatError::malformed(what, e))?,
    );
    let mut arr = Zeroizing::new([0u8; 32]);
    if raw.len() != arr.len() {
        return Err(FormatError::malformed(what, "not 32 bytes"));
    }
    arr.copy_from_slice(&raw);
    Ok(arr)
}

impl BackupPayload {
    /// A backup-role payload for host `host`, from the master key.
    pub fn derive(master: &MasterKey, host: &str) -> BackupPayload {
        let own = super::roles::derive_host_key(master, host);
        BackupPayload {
            enc_key: B64.encode(*master.enc_key()),
            id_key: B64.encode(*master.id_key()),
            chunker_seed: master.chunker_seed(),
            gear_key: B64.encode(master.gear_key().as_bytes()),
            public: B64.encode(super::roles::public_key(master)),
            host: host.to_string(),
            host_id: B64.encode(own.id),
            host_key: B64.encode(own.key_bytes()),
        }
    }

    /// The working keys this payload gives (without the role keys, which need the
    /// config's format).
    pub fn keys(&self) -> Result<super::crypto::Keys> {
        let enc = bytes32("backup key payload", &self.enc_key)?;
        let id = bytes32("backup key payload", &self.id_key)?;
        Ok(super::crypto::Keys::from_parts(&enc, &id))
    }

    pub fn role_keys(&self) -> Result<super::roles::RoleKeys> {
        let public = bytes32("backup key payload", &self.public)?;
        let key = bytes32("backup key payload", &self.host_key)?;
        let raw = B64
            .decode(&self.host_id)
            .map_err(|e| FormatError::malformed("backup key payload", e))?;
        let id = raw
            .try_into()
            .map_err(|_| FormatError::malformed("backup key payload", "host id length"))?;
        let own = super::roles::HostKey::new(id, *key);
        Ok(super::roles::RoleKeys::backup(*public, own))
    }

    pub fn chunker_secret(&self) -> Result<super::crypto::ChunkerSecret> {
        let gear = bytes32("backup key payload", &self.gear_key)?;
        Ok(super::crypto::ChunkerSecret {
            seed: self.chunker_seed,
            gear: super::crypto::GearKey::from_bytes(*gear),
        })
    }
}

impl KeyPayload {
    /// A full key's payload for `master` (its content key, and its previous key while
    /// a rotation is in progress, with it).
    pub fn full(master: &MasterKey, label: &str, host: &str, user: &str, created: &str) -> Self {
        KeyPayload {
            master_key: encode_master(master),
            label: label.to_string(),
            host: host.to_string(),
            user: user.to_string(),
            created: created.to_string(),
            backup: None,
            content_key: master.content_bytes().map(|c| B64.encode(c)),
            previous_key: master.previous().map(|p| encode_master(&p)),
        }
    }

    /// The master key, with the content and previous keys the payload gives.
    pub fn master(&self) -> Result<MasterKey> {
        let mut key = MasterKey::from_bytes(*bytes32_named(
            "key payload",
            "master key",
            &self.master_key,
        )?);
        if let Some(c) = &self.content_key {
            key = key.with_content(*bytes32_named("key payload", "content key", c)?);
        }
        if let Some(p) = &self.previous_key {
            key = key.with_previous(*bytes32_named("key payload", "previous key", p)?);
        }
        Ok(key)
    }
}

/// 32 bytes from base64, `which` naming the field when they are not.
pub fn bytes32_named(what: &'static str, which: &str, b64: &str) -> Result<Zeroizing<[u8; 32]>> {
    bytes32(what, b64)
        .map_err(|_| FormatError::malformed(what, format!("{which} is not 32 bytes of base64")))
}

/// The payload carries the master key in base64: wiped like the key itself.
impl Drop for KeyPayload {
    fn drop(&mut self) {
        self.master_key.zeroize();
        self.content_key.zeroize();
        self.previous_key.zeroize();
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
            || self.p > MAX_P
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
    let kek = derive_kek(password, kdf)?;
    Ok(Cipher::new(&kek))
}

/// The key-encryption key of §3.2.
fn derive_kek(password: &[u8], kdf: &KdfParams) -> Result<Zeroizing<[u8; 32]>> {
    let salt = kdf.check()?;
    let params = scrypt::Params::new(kdf.log_n, kdf.r, kdf.p)
        .map_err(|e| FormatError::malformed("key file", e))?;
    let mut kek = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password, &salt, &params, kek.as_mut())
        .map_err(|e| FormatError::malformed("key file", e))?;
    Ok(kek)
}

/// Most lanes (scrypt's p) a key file may have; vault writes at most this many.
pub const MAX_P: u32 = 16;

/// What one derivation costs: N = 2^log_n, r = 8 and p lanes. The lanes run one after
/// another in the same memory, so memory is 128·r·N whatever p is, and time is N·p.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfCost {
    pub log_n: u8,
    pub p: u32,
}

impl KdfCost {
    /// The floor the format promises: 32 MiB, one lane.
    pub const FLOOR: KdfCost = KdfCost {
        log_n: MIN_LOG_N,
        p: 1,
    };

    /// A cost fixed by log2(N) alone (one lane), clamped to the format's range.
    pub fn with_log_n(log_n: u8) -> KdfCost {
        KdfCost {
            log_n: log_n.clamp(MIN_LOG_N, MAX_LOG_N),
            p: 1,
        }
    }

    /// Bytes of memory one derivation holds (its V array).
    pub fn memory(&self) -> u64 {
        (128 * 8) << self.log_n
    }
}

/// Chooses the cost of a new key file: memory held at the floor's 32 MiB, which every
/// machine vault runs on has to spare beside a backup, and lanes added until one
/// derivation takes about `target` here. More memory would make each guess dearer on a
/// GPU, but every command pays it on every open; lanes make guesses dearer in time
/// without raising anyone's peak.
pub fn calibrate(target: Duration) -> KdfCost {
    let params = scrypt::Params::new(MIN_LOG_N, 8, 1).expect("valid floor parameters");
    let mut out = [0u8; 32];
    // The first run also faults its 32 MiB in; the faster of two is what each lane costs.
    let per = (0..2)
        .map(|_| {
            let start = Instant::now();
            let _ = scrypt::scrypt(b"calibration", b"calibration salt", &params, &mut out);
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
        .max(Duration::from_millis(1));
    let lanes = (target.as_micros() / per.as_micros().max(1)).clamp(1, u128::from(MAX_P));
    KdfCost {
        log_n: MIN_LOG_N,
        p: u32::try_from(lanes).unwrap_or(1),
    }
}

impl KeyFile {
    pub fn create(password: &[u8], cost: KdfCost, payload: &KeyPayload) -> Result<KeyFile> {
        let (repo_keys, role) = match &payload.backup {
            Some(b) => (b.keys()?, "backup"),
            None => (payload.master()?.derive(), ""),
        };
        let meta = KeyMeta {
            label: payload.label.clone(),
            host: payload.host.clone(),
            user: payload.user.clone(),
            created: payload.created.clone(),
            role: role.into(),
        };
        let meta = serde_json::to_vec(&meta).map_err(|e| FormatError::malformed("key meta", e))?;
        let mut salt = [0u8; 32];
        fill_random(&mut salt);
        let kdf = KdfParams {
            algorithm: "scrypt".into(),
            log_n: cost.log_n.clamp(MIN_LOG_N, MAX_LOG_N),
            r: 8,
            p: cost.p.clamp(1, MAX_P),
            salt: B64.encode(salt),
        };
        let cipher = derive(password, &kdf)?;
        let body = Zeroizing::new(
            serde_json::to_vec(payload).map_err(|e| FormatError::malformed("key payload", e))?,
        );
        Ok(KeyFile {
            version: if payload.backup.is_some() {
                KEYFILE_VERSION_ROLES
            } else {
                KEYFILE_VERSION
            },
            kdf,
            sealed: B64.encode(cipher.seal(AAD, &body)),
            meta: B64.encode(repo_keys.cipher.seal(META_AAD, &meta)),
        })
    }

    pub fn parse(bytes: &[u8]) -> Result<KeyFile> {
        let kf: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| FormatError::malformed("key file", e))?;
        if kf.version != KEYFILE_VERSION && kf.version != KEYFILE_VERSION_ROLES {
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
        let body = keys.open_either(|k| k.cipher.open(META_AAD, &sealed))?;
        serde_json::from_slice(&body).map_err(|e| FormatError::malformed("key meta", e))
    }
}

pub fn encode_master(key: &MasterKey) -> String {
    B64.encode(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full key's payload with a fresh master key and no metadata.
    fn unlabelled() -> KeyPayload {
        KeyPayload {
            master_key: encode_master(&MasterKey::generate()),
            label: String::new(),
            host: String::new(),
            user: String::new(),
            created: String::new(),
            backup: None,
            content_key: None,
            previous_key: None,
        }
    }

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
            backup: None,
            content_key: None,
            previous_key: None,
        };
        let kf = KeyFile::create(b"pw", KdfCost::FLOOR, &payload).unwrap();
        let parsed = KeyFile::parse(&kf.to_bytes()).unwrap();
        let got = parsed.open(b"pw").unwrap();
        assert_eq!(got.master().unwrap().as_bytes(), mk.as_bytes());
        assert_eq!(parsed.open(b"bad").unwrap_err(), FormatError::BadMac);
    }

    #[test]
    fn rejects_weak_parameters() {
        let mut kf = KeyFile::create(b"pw", KdfCost::FLOOR, &unlabelled()).unwrap();
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

    #[test]
    fn spec_test_vectors() {
        let kek = |p: u32| {
            let kdf = KdfParams {
                algorithm: "scrypt".into(),
                log_n: 15,
                r: 8,
                p,
                salt: B64.encode([0u8; 32]),
            };
            hex::encode(*derive_kek(b"password", &kdf).unwrap())
        };
        assert_eq!(
            kek(1),
            "cb7dbad4bd634e12c5d12afd04f24e0dd6caa0d786ea7ce8a1446beb5bf9403e"
        );
        assert_eq!(
            kek(4),
            "a37cb8f444e543d1a38793762931a519d19fb38a7460d9571687d670ceae2a42"
        );
    }

    /// Format 5 (key rotation): a payload's content key, not its master key, gives blob
    /// ids and chunk boundaries; its previous key comes back with the same content key.
    /// Vector: master key `20 21 … 3f`, content key `00 01 … 1f`.
    #[test]
    fn a_content_key_and_a_previous_key_come_back_from_the_payload() {
        let content: [u8; 32] = std::array::from_fn(|i| i as u8);
        let master = MasterKey::from_bytes(std::array::from_fn(|i| 32 + i as u8))
            .with_content(content)
            .with_previous([9; 32]);
        let payload = KeyPayload::full(&master, "l", "h", "u", "now");
        let kf = KeyFile::create(b"pw", KdfCost::FLOOR, &payload).unwrap();
        let got = KeyFile::parse(&kf.to_bytes()).unwrap().open(b"pw").unwrap();
        let got = got.master().unwrap();
        assert_eq!(
            hex::encode(*got.enc_key()),
            "6d8300e28c4804ad185f92a81ea3b7f522411164d5b726944016e77bf3ce07df"
        );
        // The blob id key and chunker seed of Appendix A's master key 00 … 1f.
        assert_eq!(
            hex::encode(*got.id_key()),
            "42a0f2a75899755a779943f538685eb4842bfd58d524242ab6779959d50c6366"
        );
        assert_eq!(got.chunker_seed(), 0x4f1f28a2c452afb2);
        let prev = got.previous().unwrap();
        assert_eq!(prev.as_bytes(), &[9; 32]);
        assert_eq!(*prev.id_key(), *got.id_key());
        assert!(prev.previous().is_none());
        // Without the fields the master key is its own content key, as before.
        let plain = KeyPayload::full(&MasterKey::from_bytes(content), "l", "h", "u", "now");
        assert!(plain.content_key.is_none() && plain.previous_key.is_none());
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("content_key") && !json.contains("previous_key"));

        let mut bad = KeyPayload::full(&master, "l", "h", "u", "now");
        bad.content_key = Some(B64.encode([0u8; 31]));
        let e = bad.master().unwrap_err().to_string();
        assert!(e.contains("content key"), "{e}");
    }

    #[test]
    fn new_keys_cost_the_floors_memory_and_lanes_for_time() {
        let cost = calibrate(Duration::from_millis(250));
        assert_eq!(cost.log_n, MIN_LOG_N);
        assert_eq!(cost.memory(), 32 << 20);
        assert!((1..=MAX_P).contains(&cost.p), "{cost:?}");
        // A target no derivation can meet still gives the floor, never zero lanes.
        assert_eq!(calibrate(Duration::ZERO), KdfCost::FLOOR);
        let kf = KeyFile::create(b"pw", KdfCost { log_n: 15, p: 3 }, &unlabelled()).unwrap();
        assert_eq!((kf.kdf.log_n, kf.kdf.r, kf.kdf.p), (15, 8, 3));
        assert!(kf.open(b"pw").is_ok());
    }
}
