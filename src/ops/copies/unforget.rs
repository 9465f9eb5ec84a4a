//! Bringing forgotten snapshots back from a mirror that still holds them: a protected
//! mirror keeps whatever forget and prune removed for its protection period, so that
//! what a mistake or an intruder forgot can be restored, and then made a snapshot of
//! the primary again.
//!
//! The data comes back as a backup writes it, not as the mirror stores it: the blobs the
//! primary no longer holds are sealed into new packs (the old packs' names may be named
//! by deletion records here, which would let a prune take them again), and the snapshot
//! is published once every blob it references is confirmed live (`ops::confirm`), so a
//! prune running meanwhile cannot take what it needs. The snapshot gets a new name: the
//! forget record naming the old one stays true of the old one.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use super::judge::trusted_def;
use crate::format::Id;
use crate::format::pack::seal_blob;
use crate::format::snapshot::Snapshot;
use crate::ops::confirm::{self, Confirmed, Outcome};
use crate::repo::packer::Packer;
use crate::repo::{Backend, FileKind, Repository, Secret};

/// One snapshot brought back.
#[derive(Debug, Serialize)]
pub struct Brought {
    /// Its name on the mirror (the one the forget record names).
    pub from: Id,
    /// Its new name here; None in a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    pub time: String,
    pub host: String,
    pub paths: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Unforgotten {
    pub snapshots: Vec<Brought>,
    /// Blobs this repository no longer held, written here again.
    pub blobs_copied: u64,
    pub bytes_written: u64,
    pub dry_run: bool,
}

/// Brings back from trusted mirror `from` the snapshots `wanted` (id prefixes, as the
/// mirror names them), or every snapshot forgotten here that the mirror holds. `repo`
/// has its index loaded for a backup; the caller holds a shared lock and `held` renews
/// it before each snapshot is published.
pub fn unforget(
    repo: &mut Repository,
    from: &str,
    wanted: &[String],
    dry_run: bool,
    held: &dyn Fn() -> Result<()>,
) -> Result<Unforgotten> {
    let (def, access) = trusted_def(repo, from)?;
    let backend = Backend::open_mirror(&def.url, &def.name, access)?;
    let copy = open_copy(repo, backend)?;
    let chosen = choose(repo, &copy, wanted)?;
    let mut out = Unforgotten {
        dry_run,
        ..Unforgotten::default()
    };
    if !dry_run {
        copy_lacking(repo, &copy, &chosen, &mut out)?;
    }
    for (from_id, snap) in chosen {
        let id = if dry_run {
            None
        } else {
            held()?;
            Some(publish(repo, &snap)?)
        };
        out.snapshots.push(Brought {
            from: from_id,
            id,
            time: snap.time.clone(),
            host: snap.host.clone(),
            paths: snap.paths.clone(),
        });
    }
    Ok(out)
}

/// The mirror as a repository, opened with this repository's key: it must be a copy of
/// this very repository.
fn open_copy(repo: &Repository, backend: Backend) -> Result<Repository> {
    let mut copy = Repository::open(backend, &Secret::Master(repo.master_key()?.clone()))?;
    if copy.config.id != repo.config.id {
        bail!(
            "{} holds another repository than this one",
            copy.backend.location()
        );
    }
    copy.cache = None;
    copy.load_index()?;
    Ok(copy)
}

/// The snapshots to bring back: those `wanted`, else every one forgotten here that the
/// copy holds; never one this repository still holds, under its name or (brought back
/// before) under another.
fn choose(repo: &Repository, copy: &Repository, wanted: &[String]) -> Result<Vec<(Id, Snapshot)>> {
    let here: HashSet<Id> = repo
        .backend
        .alone()
        .list(FileKind::Snapshot)?
        .into_iter()
        .collect();
    let held: HashSet<(String, String, Id)> = repo
        .snapshots()?
        .into_iter()
        .filter_map(|(_, s)| s.ok())
        .map(|s| same(&s))
        .collect();
    let there: Vec<Id> = copy
        .backend
        .list(FileKind::Snapshot)?
        .into_iter()
        .filter(|id| !here.contains(id))
        .collect();
    let ids: Vec<Id> = if wanted.is_empty() {
        let forgotten = repo.forgotten()?;
        there
            .into_iter()
            .filter(|id| forgotten.contains(id))
            .collect()
    } else {
        wanted
            .iter()
            .map(|w| by_prefix(&there, w, copy.backend.location()))
            .collect::<Result<_>>()?
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let snap = copy.load_snapshot(&id)?;
        if !held.contains(&same(&snap)) {
            out.push((id, snap));
        }
    }
    out.sort_by(|a, b| a.1.time.cmp(&b.1.time));
    Ok(out)
}

/// What makes two snapshot files the same snapshot: a snapshot brought back is sealed
/// anew, under another name.
fn same(s: &Snapshot) -> (String, String, Id) {
    (s.time.clone(), s.host.clone(), s.tree)
}

fn by_prefix(ids: &[Id], prefix: &str, location: &str) -> Result<Id> {
    let hits: Vec<&Id> = ids
        .iter()
        .filter(|id| id.to_hex().starts_with(&prefix.to_ascii_lowercase()))
        .collect();
    match hits.as_slice() {
        [one] => Ok(**one),
        [] => Err(crate::error::VaultError::Usage(format!(
            "no snapshot {prefix} at {location} that this repository lacks (`vault snapshots --repo {location}` lists them)"
        ))
        .into()),
        _ => Err(crate::error::VaultError::Usage(format!(
            "snapshot prefix {prefix} is ambiguous at {location}: give more digits"
        ))
        .into()),
    }
}

/// Writes here every blob the `chosen` snapshots reference that this repository lacks
/// (or holds only in packs being deleted).
fn copy_lacking(
    repo: &Repository,
    copy: &Repository,
    chosen: &[(Id, Snapshot)],
    out: &mut Unforgotten,
) -> Result<()> {
    let mut used = HashSet::new();
    let counters = crate::ops::prune::Counters::default();
    for (_, snap) in chosen {
        crate::ops::prune::mark_tree(copy, &snap.tree, Path::new("/"), &mut used, &counters)?;
    }
    let packer = Packer::new(&repo.backend, &repo.keys, repo.config.pack_size, false)
        .caching_trees(repo.cache.clone());
    let index = repo.index();
    let level = repo.config.compression_level;
    for id in used.iter().filter(|id| !index.contains(id)) {
        let (_, entry) = copy.index().get(id).ok_or_else(|| {
            anyhow!(
                "blob {} is not in the index of {}",
                id.short(),
                copy.backend.location()
            )
        })?;
        let plain = copy.read_blob(entry.blob_type, id)?;
        packer.add(seal_blob(&repo.keys, entry.blob_type, *id, &plain, level))?;
        out.blobs_copied += 1;
    }
    out.bytes_written += packer.finish()?.bytes;
    Ok(())
}

/// Publishes `snap` once every blob it references is confirmed live.
fn publish(repo: &mut Repository, snap: &Snapshot) -> Result<Id> {
    let known: BTreeSet<Id> = repo.marks.deletions.keys().copied().collect();
    let mut confirmed = Confirmed::default();
    match confirm::publish(repo, snap, &known, &mut confirmed)? {
        Outcome::Published(id) => Ok(id),
        Outcome::Lost(n) => bail!(
            "{n} blob(s) of the snapshot of {} were deleted by a prune while it was brought back; nothing was published: run unforget again",
            snap.time
        ),
    }
}
