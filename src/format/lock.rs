//! Lock objects: who holds the repository, refreshed while held.

use serde::{Deserialize, Serialize};

use super::crypto::Keys;
use super::error::{FormatError, Result};
use super::object::{self, Kind};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub host: String,
    pub pid: u32,
    pub user: String,
    /// Last refresh, RFC 3339 UTC.
    pub time: String,
    pub exclusive: bool,
    pub command: String,
}

impl Lock {
    pub fn seal(&self, keys: &Keys) -> Vec<u8> {
        object::seal_checksummed(
            keys,
            Kind::Lock,
            &serde_json::to_vec(self).expect("lock serializes"),
        )
    }

    pub fn open(keys: &Keys, stored: &[u8]) -> Result<Lock> {
        let body = object::open_checksummed(keys, Kind::Lock, stored)?;
        serde_json::from_slice(&body).map_err(|e| FormatError::malformed("lock", e))
    }
}
