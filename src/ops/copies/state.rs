//! When each mirror was last brought up to date from this machine: `sync-state.json` in
//! the cache (none without a cache). Only `status` reads it, so a file that cannot be
//! read or written costs the "last sync" column, never a sync.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::repo::Repository;

/// Mirror name → RFC 3339 time of its last complete sync.
pub(super) type LastSyncs = BTreeMap<String, String>;

fn path(repo: &Repository) -> Option<PathBuf> {
    repo.cache.as_ref().map(|c| c.dir().join("sync-state.json"))
}

pub(super) fn load(repo: &Repository) -> LastSyncs {
    path(repo)
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub(super) fn save(repo: &Repository, state: &LastSyncs) {
    if let (Some(p), Ok(b)) = (path(repo), serde_json::to_vec(state)) {
        let _ = std::fs::write(p, b);
    }
}
