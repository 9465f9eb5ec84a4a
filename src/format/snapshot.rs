//! Snapshots: one backup run — when, where, what, and the root tree.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::crypto::Keys;
use super::error::{FormatError, Result};
use super::id::Id;
use super::object::{self, Kind};

pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    pub dirs: u64,
    /// Files and directories that could not be read and are missing from the snapshot.
    pub errors: u64,
    /// Files that changed while they were read (stored as read).
    pub files_changed_during_read: u64,
    pub bytes_total: u64,
    pub bytes_read: u64,
    /// Plaintext bytes of blobs that were new to the repository.
    pub bytes_added: u64,
    /// What those blobs take in packs, after compression and encryption.
    pub bytes_stored: u64,
    pub blobs_added: u64,
    pub duration_s: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub version: u32,
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    pub host: String,
    pub user: String,
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    pub tree: Id,
    #[serde(default)]
    pub excludes: Vec<String>,
    pub program: String,
    #[serde(default)]
    pub summary: Summary,
    /// The snapshot this one replaces: the damaged one `vault repair snapshots` rewrote
    /// (another tree), or the one `vault tag` re-tagged (the same tree; see
    /// [`superseded`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
}

impl Snapshot {
    pub fn seal(&self, keys: &Keys) -> Vec<u8> {
        object::seal(
            keys,
            Kind::Snapshot,
            &serde_json::to_vec(self).expect("snapshot serializes"),
        )
    }

    pub fn open(keys: &Keys, stored: &[u8]) -> Result<Snapshot> {
        let body = object::open(keys, Kind::Snapshot, stored)?;
        let s: Snapshot =
            serde_json::from_slice(&body).map_err(|e| FormatError::malformed("snapshot", e))?;
        if s.version != SNAPSHOT_VERSION {
            return Err(FormatError::Version {
                what: "snapshot",
                version: s.version,
            });
        }
        Ok(s)
    }

    pub fn timestamp(&self) -> Result<jiff::Timestamp> {
        self.time
            .parse()
            .map_err(|e| FormatError::malformed("snapshot time", e))
    }
}

/// The snapshots another one replaces without changing their content: `vault tag` writes
/// the re-tagged snapshot (same tree, `original` naming the old one) before it forgets
/// the old one, and a kill between the two leaves both. Each such leftover maps to the
/// snapshot that replaces it; listings hide it, and forgetting the replacement forgets
/// it too. A repaired snapshot has another tree, so its original stays in view.
pub fn superseded<'a>(snaps: impl IntoIterator<Item = (&'a Id, &'a Snapshot)>) -> HashMap<Id, Id> {
    let snaps: Vec<(&Id, &Snapshot)> = snaps.into_iter().collect();
    let trees: HashMap<&Id, &Id> = snaps.iter().map(|(id, s)| (*id, &s.tree)).collect();
    snaps
        .iter()
        .filter_map(|(id, s)| {
            let old = s.original.as_ref()?;
            (old != *id && trees.get(old) == Some(&&s.tree)).then_some((*old, **id))
        })
        .collect()
}
