//! The repository config: written once at init, sealed, with a keyless checksum.

use serde::{Deserialize, Serialize};

use super::crypto::Keys;
use super::error::{FormatError, Result};
use super::object::{self, Kind};

/// The version `init` writes. Version 2 adds bundles (several small blobs sealed as one
/// unit in a pack); version 3 adds two-phase prune (marks, revivals, deletions, format
/// records). Older repositories are read, and written as their version allows, so that
/// older vaults can still read them; `vault upgrade` raises one with a format record.
pub const REPO_VERSION: u32 = 3;
const OLDEST_VERSION: u32 = 1;
/// Version 4 adds roles (§20): backup-role keys, contents sealed to the repository's
/// public key, trees and snapshots under host keys, admin tags. `init
/// --format-version 4` writes it.
pub const ROLES_VERSION: u32 = 4;
/// Version 5 is version 4 after a key rotation (`vault key rotate`): a master key apart
/// from the content key, and readers that fall back to `configs/`. Only a rotation
/// writes it.
pub const ROTATED_VERSION: u32 = 5;
/// The newest version this vault reads and writes.
pub const NEWEST_VERSION: u32 = ROTATED_VERSION;
/// The newest version `init` creates.
pub const NEWEST_INIT_VERSION: u32 = ROLES_VERSION;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    /// Always "fastcdc-v2020" in version 1.
    pub algorithm: String,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// FastCDC normalization level (0-3).
    pub normalization: u8,
    /// The gear table (§16): absent in every config written before the PRF table
    /// existed, which keep the XOR-seeded table (and so their deduplication); kept as
    /// written so that such a config encodes again byte for byte. See [`Self::gear`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gear: Option<String>,
}

/// Which gear table a repository's chunker uses (§16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gear {
    /// FastCDC's public table XORed with a 64-bit seed: configs without `gear`.
    XorSeed,
    /// Each entry a keyed BLAKE3 output under a 256-bit gear key: `"gear": "prf-v2"`.
    PrfV2,
}

/// The config value that selects [`Gear::PrfV2`].
pub const GEAR_PRF_V2: &str = "prf-v2";

impl ChunkerParams {
    /// FastCDC v2020 around an average chunk size: at least half of it, at most eight
    /// times it (and 16 MiB), normalization 1, the PRF gear table: what a new
    /// repository gets.
    pub fn with_avg(avg: u32) -> Self {
        ChunkerParams {
            algorithm: "fastcdc-v2020".into(),
            min_size: avg / 2,
            avg_size: avg,
            max_size: avg.saturating_mul(8).min(16 << 20),
            normalization: 1,
            gear: Some(GEAR_PRF_V2.into()),
        }
    }

    /// The gear table the config selects. A value this vault does not know is refused
    /// rather than read as the old table: chunking with another table than the one the
    /// repository was written with would silently stop deduplication.
    pub fn gear(&self) -> Result<Gear> {
        match self.gear.as_deref() {
            None => Ok(Gear::XorSeed),
            Some(GEAR_PRF_V2) => Ok(Gear::PrfV2),
            Some(other) => Err(FormatError::malformed(
                "config",
                format!(
                    "chunker gear {other:?} is unknown to this vault (it knows {GEAR_PRF_V2:?}, or none): \
                     upgrade vault, or copy `config` back from a mirror or an export"
                ),
            )),
        }
    }
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams::with_avg(128 * 1024)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub version: u32,
    /// Random, names the local cache directory: so it is exactly 64 lowercase hex
    /// digits (see [`is_repo_id`]), never anything a path could be made of.
    pub id: String,
    pub chunker: ChunkerParams,
    /// Target size of a pack file in bytes.
    pub pack_size: u32,
    /// zstd level for blobs.
    pub compression_level: i32,
    pub created: String,
}

/// Whether `id` is a repository id as init writes it: 64 lowercase hex digits. The id
/// names a directory of the local cache; a key holder who wrote `../..` or an absolute
/// path there would otherwise choose where every host's vault creates and deletes files.
pub fn is_repo_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        if !(OLDEST_VERSION..=NEWEST_VERSION).contains(&self.version) {
            return Err(FormatError::Version {
                what: "repository",
                version: self.version,
            });
        }
        if !is_repo_id(&self.id) {
            return Err(FormatError::malformed(
                "config",
                "repository id is not 64 lowercase hex digits (forged or damaged): copy `config` back from a mirror or an export",
            ));
        }
        let c = &self.chunker;
        let ok = c.algorithm == "fastcdc-v2020"
            && c.min_size >= 64
            && c.avg_size >= 256
            && c.avg_size <= 4 * 1024 * 1024
            && [c.min_size, c.avg_size, c.max_size]
                .iter()
                .all(|v| v % 2 == 0)
            && c.min_size <= c.avg_size
            && c.avg_size <= c.max_size
            && c.max_size <= 16 * 1024 * 1024
            && c.normalization <= 3
            && self.pack_size >= 64 * 1024
            && (1..=22).contains(&self.compression_level);
        if !ok {
            return Err(FormatError::malformed("config", "parameters out of range"));
        }
        c.gear()?;
        Ok(())
    }

    /// Whether writers may bundle small blobs in this repository.
    pub fn bundles(&self) -> bool {
        self.version >= 2
    }

    pub fn seal(&self, keys: &Keys) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("config serializes");
        object::seal_checksummed(keys, Kind::Config, &body)
    }

    pub fn open(keys: &Keys, stored: &[u8]) -> Result<Config> {
        let body = object::open_checksummed(keys, Kind::Config, stored)?;
        let cfg: Config =
            serde_json::from_slice(&body).map_err(|e| FormatError::malformed("config", e))?;
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(chunker: ChunkerParams) -> Config {
        Config {
            version: REPO_VERSION,
            id: "ab".repeat(32),
            chunker,
            pack_size: 16 << 20,
            compression_level: 3,
            created: "2026-12-03T00:00:00Z".into(),
        }
    }

    /// A config written before the gear field existed reads as the XOR-seeded table and
    /// encodes again without the field, byte for byte.
    #[test]
    fn a_config_without_gear_keeps_the_xor_table_and_its_bytes() {
        let old = br#"{"version":2,"id":"abababababababababababababababababababababababababababababababab","chunker":{"algorithm":"fastcdc-v2020","min_size":65536,"avg_size":131072,"max_size":1048576,"normalization":1},"pack_size":16777216,"compression_level":3,"created":"2026-11-21T20:57:44.509461693Z"}"#;
        let cfg: Config = serde_json::from_slice(old).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.chunker.gear(), Ok(Gear::XorSeed));
        assert_eq!(serde_json::to_vec(&cfg).unwrap(), old.to_vec());
    }

    #[test]
    fn new_configs_name_the_prf_table_and_unknown_ones_are_refused() {
        let new = config(ChunkerParams::with_avg(1 << 17));
        new.validate().unwrap();
        assert_eq!(new.chunker.gear(), Ok(Gear::PrfV2));
        let json = String::from_utf8(serde_json::to_vec(&new).unwrap()).unwrap();
        assert!(
            json.contains(r#""normalization":1,"gear":"prf-v2"}"#),
            "{json}"
        );
        for bad in ["", "prf-v3", "PRF-V2", "xor-seed"] {
            let mut p = ChunkerParams::with_avg(1 << 17);
            p.gear = Some(bad.into());
            let err = config(p).validate().unwrap_err().to_string();
            assert!(err.contains("chunker gear") && !err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn repo_id_is_64_lowercase_hex_and_nothing_else() {
        assert!(is_repo_id(&"0123456789abcdef".repeat(4)));
        for bad in [
            String::new(),
            "../../x".into(),
            "/tmp/abs".into(),
            "0123456789ABCDEF".repeat(4),
            format!("{}/", "a".repeat(63)),
            "a".repeat(65),
            format!("..{}", "a".repeat(62)),
        ] {
            assert!(!is_repo_id(&bad), "{bad:?}");
        }
    }
}
