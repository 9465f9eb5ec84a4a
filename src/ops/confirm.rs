//! A backup's last step in a format-3 repository (spec §17 "Backup"): before it publishes
//! its snapshot it confirms that every blob the snapshot references has a copy in a pack
//! that is live. A pack that a prune marked is revived (a revival record; no data moves);
//! a blob whose only copies are in packs being deleted is copied, as stored, into a new
//! pack while one still exists. It then looks for deletion records once more: only after
//! its revivals are written, since a prune looks for revivals only after its deletion
//! record is (see `twophase`). After the snapshot is written it looks once more, for a
//! prune that announced a deletion between; what such a prune may delete is copied too.
//!
//! A blob with no copy left at all (a backup suspended past two grace periods while
//! prunes ran) cannot be confirmed: the caller reads the source again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::Result;

use crate::format::Id;
use crate::format::pack::{self, BlobEntry, BlobOpener};
use crate::format::prune::{DeletionRecord, Revived};
use crate::format::snapshot::Snapshot;
use crate::repo::marks::PruneState;
use crate::repo::packer::Packer;
use crate::repo::{FileKind, Repository};

/// How many times the records are looked at again when prunes keep announcing
/// deletions; past this the backup fails rather than loop.
const ROUNDS: usize = 5;

/// What confirming took: for `backup --json`, and for tests to see the race happen.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Confirmed {
    /// Packs revived: marked by a prune, relied on by this snapshot.
    pub packs_revived: u64,
    /// Blobs copied out of packs a prune is deleting.
    pub blobs_copied: u64,
    /// Passes over the source (more than 1 when a prune deleted what a pass relied on).
    pub passes: u64,
}

pub enum Outcome {
    Published(Id),
    /// This many referenced blobs have no copy left; nothing was published.
    Lost(usize),
}

/// What a snapshot needs before it may be published.
#[derive(Default)]
struct Needs {
    /// Referenced blobs that no index lists any more (their packs were deleted).
    lost: usize,
    revive: BTreeMap<Id, Vec<Id>>,
    /// Blobs to copy, with every place a copy may still be read from.
    copy: HashMap<Id, Vec<(Id, BlobEntry)>>,
}

/// Publishes `snap` once everything it references is confirmed live.
/// `known`: the deletion records on record when the backup loaded its index.
pub fn publish(
    repo: &mut Repository,
    snap: &Snapshot,
    known: &BTreeSet<Id>,
    done: &mut Confirmed,
) -> Result<Outcome> {
    if !repo.two_phase() {
        return Ok(Outcome::Published(repo.save_snapshot(snap)?));
    }
    let mut seen = None;
    for _ in 0..ROUNDS {
        let state = repo.prune_state()?;
        let lost = satisfy(repo, snap, &state, known, done)?;
        if lost > 0 {
            return Ok(Outcome::Lost(lost));
        }
        // Only now, with the revivals written, do deletion records tell the truth.
        let after = repo.deletion_records()?;
        if after.keys().all(|id| state.deletions.contains_key(id)) {
            seen = Some(after);
            break;
        }
    }
    let Some(seen) = seen else {
        anyhow::bail!(
            "prunes kept announcing deletions while this backup confirmed its packs; nothing was published: run it again"
        );
    };
    let id = repo.save_snapshot(snap)?;
    if !newer(&repo.deletion_records()?, &seen) {
        return Ok(Outcome::Published(id));
    }
    // A prune announced a deletion while the snapshot was written: it may not have
    // seen the snapshot, so what it deletes must have another copy.
    let state = repo.prune_state()?;
    let lost = satisfy(repo, snap, &state, known, done)?;
    if lost > 0 {
        repo.backend.delete(&FileKind::Snapshot.path(&id))?;
        return Ok(Outcome::Lost(lost));
    }
    Ok(Outcome::Published(id))
}

fn newer(now: &BTreeMap<Id, DeletionRecord>, seen: &BTreeMap<Id, DeletionRecord>) -> bool {
    now.keys().any(|id| !seen.contains_key(id))
}

/// Revives and copies what `snap` needs under `state`; returns how many blobs have no
/// copy left.
fn satisfy(
    repo: &mut Repository,
    snap: &Snapshot,
    state: &PruneState,
    known: &BTreeSet<Id>,
    done: &mut Confirmed,
) -> Result<usize> {
    let needs = needs(repo, snap, state, known)?;
    if needs.lost > 0 {
        return Ok(needs.lost);
    }
    done.packs_revived += needs.revive.values().map(|p| p.len() as u64).sum::<u64>();
    if !needs.revive.is_empty() {
        let revived = needs
            .revive
            .into_iter()
            .map(|(mark, packs)| Revived { mark, packs })
            .collect();
        repo.save_revival(revived)?;
    }
    let lost = copy(repo, &needs.copy)?;
    done.blobs_copied += (needs.copy.len() - lost) as u64;
    Ok(lost)
}

/// Which marks to revive and which blobs to copy for `snap` to be safe under `state`;
/// `known` are the deletion records the backup knew when it loaded its index.
fn needs(
    repo: &mut Repository,
    snap: &Snapshot,
    state: &PruneState,
    known: &BTreeSet<Id>,
) -> Result<Needs> {
    let marked = state.marked();
    let dying = state.deleting();
    // A deletion the backup did not know of may have taken packs it relied on, which
    // then no index lists any more: every reference is looked up.
    let new_deletions = state.deletions.keys().any(|id| !known.contains(id));
    if marked.is_empty() && !new_deletions && dying.is_empty() {
        return Ok(Needs::default());
    }
    // Index as it is now: the backup's own new packs included.
    repo.load_index_for_confirm()?;
    let risky_listed = repo
        .index()
        .pack_ids()
        .iter()
        .any(|p| marked.contains_key(p) || dying.contains(p));
    if !risky_listed && !new_deletions {
        return Ok(Needs::default());
    }
    let at_risk = if risky_listed {
        blobs_at_risk(repo, &marked, &dying)?
    } else {
        HashMap::new()
    };
    let (referenced, missing_trees) = referenced(repo, &snap.tree);
    let index = repo.index();
    let mut needs = Needs {
        lost: missing_trees
            + referenced
                .iter()
                .filter(|b| !index.contains(b) && !at_risk.contains_key(b))
                .count(),
        ..Needs::default()
    };
    for (blob, places) in at_risk {
        if !referenced.contains(&blob) {
            continue;
        }
        // A marked pack that is not being deleted is revived; else the blob is copied.
        match places.iter().find(|(p, _)| !dying.contains(p)) {
            Some((p, _)) => {
                for m in marked.get(p).into_iter().flatten() {
                    let packs = needs.revive.entry(*m).or_default();
                    if !packs.contains(p) {
                        packs.push(*p);
                    }
                }
            }
            None => {
                needs.copy.insert(blob, places);
            }
        }
    }
    Ok(needs)
}

/// Every blob the snapshot under `root` references, and how many of its trees no longer
/// read (each is a loss: what is below it is unknown, and so it must be backed up again).
fn referenced(repo: &Repository, root: &Id) -> (HashSet<Id>, usize) {
    let mut seen = HashSet::from([*root]);
    let mut stack = vec![*root];
    let mut missing = 0;
    while let Some(id) = stack.pop() {
        let Ok(tree) = repo.load_tree(&id) else {
            missing += 1;
            continue;
        };
        for n in tree.nodes {
            seen.extend(n.content.iter().copied());
            if let Some(sub) = n.subtree
                && seen.insert(sub)
            {
                stack.push(sub);
            }
        }
    }
    (seen, missing)
}

/// Every blob whose copies all lie in marked or dying packs, with those copies.
fn blobs_at_risk(
    repo: &Repository,
    marked: &HashMap<Id, Vec<Id>>,
    dying: &HashSet<Id>,
) -> Result<HashMap<Id, Vec<(Id, BlobEntry)>>> {
    let risky = |p: &Id| marked.contains_key(p) || dying.contains(p);
    let files = repo.index_files()?;
    let index = repo.index();
    let all = files
        .iter()
        .flat_map(|(_, f)| &f.packs)
        .chain(&index.unindexed);
    let mut places: HashMap<Id, Vec<(Id, BlobEntry)>> = HashMap::new();
    for p in all.clone().filter(|p| risky(&p.pack)) {
        for b in &p.blobs {
            places.entry(b.id).or_default().push((p.pack, *b));
        }
    }
    for p in all.filter(|p| !risky(&p.pack)) {
        for b in &p.blobs {
            places.remove(&b.id);
        }
    }
    Ok(places)
}

/// Copies each blob, as stored, from the first place it can still be read into a new
/// pack; returns how many could be read nowhere.
fn copy(repo: &Repository, blobs: &HashMap<Id, Vec<(Id, BlobEntry)>>) -> Result<usize> {
    if blobs.is_empty() {
        return Ok(0);
    }
    let packer = Packer::new(&repo.backend, &repo.keys, repo.config.pack_size, false)
        .caching_trees(repo.cache.clone());
    let mut lost = 0;
    for (id, places) in blobs {
        let plain = places.iter().find_map(|(pack, e)| {
            let stored = repo
                .backend
                .read_range(
                    &FileKind::Data.path(pack),
                    u64::from(e.offset),
                    u64::from(e.length),
                )
                .ok()?;
            BlobOpener::default().open(&repo.keys, e, &stored).ok()
        });
        match plain {
            Some(plain) => {
                let blob_type = places[0].1.blob_type;
                let level = repo.config.compression_level;
                packer.add(pack::seal_blob(&repo.keys, blob_type, *id, &plain, level))?;
            }
            None => lost += 1,
        }
    }
    packer.finish()?;
    if lost > 0 {
        log::warn!("{lost} blob(s) this backup references were deleted by a prune meanwhile");
    }
    Ok(lost)
}
