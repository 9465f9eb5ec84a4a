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

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    /// Always "fastcdc-v2020" in version 1.
    pub algorithm: String,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// FastCDC normalization level (0-3).
    pub normalization: u8,
}

impl ChunkerParams {
    /// FastCDC v2020 around an average chunk size: at least half of it, at most eight
    /// times it (and 16 MiB), normalization 1.
    pub fn with_avg(avg: u32) -> Self {
        ChunkerParams {
            algorithm: "fastcdc-v2020".into(),
            min_size: avg / 2,
            avg_size: avg,
            max_size: avg.saturating_mul(8).min(16 << 20),
            normalization: 1,
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
        if !(OLDEST_VERSION..=REPO_VERSION).contains(&self.version) {
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
