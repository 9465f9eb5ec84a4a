//! Two-phase prune (format 3, spec §17 "Prune"): runs beside any number of backups, on
//! any hosts, with no exclusive lock, and never deletes what a backup wrote or relies on.
//!
//! A pack that no snapshot uses is first *marked* (a mark record), once it is older than
//! the grace period, so that a running backup's packs, which no snapshot uses yet, are
//! left alone. A later prune deletes a marked pack once its mark is older than the grace
//! period, if it is still unused and no revival names it: it first writes a *deletion
//! record* naming it, then lists the snapshots and revivals once more, and deletes only
//! what they still leave unused. A backup writes its revivals and its snapshot first and
//! then looks for deletion records (see `ops::confirm`), so of a prune and a backup
//! racing for one pack, at least one sees the other. Nothing here depends on clocks
//! agreeing: the grace period only spares backups work.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Result;
use jiff::Timestamp;
use serde::Serialize;

use super::prune::{
    Counters, PackUse, PruneOptions, PruneStats, choose_repacks, copy_used, mark_snapshots,
    pack_usage, refuse_unknown,
};
use crate::format::Id;
use crate::format::index::{IndexFile, PackBlobs};
use crate::format::prune::Revived;
use crate::repo::backend::is_not_found;
use crate::repo::index::replace_index;
use crate::repo::marks::PruneState;
use crate::repo::{FileKind, Repository};

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PackState {
    /// Partly used and wasteful: its used blobs are copied, then it is marked.
    Repack,
    /// Unused but younger than the grace period: it may be a running backup's.
    Young,
    /// Unused: marked in this run.
    Mark,
    /// Marked, not yet long enough to be deleted.
    Marked,
    /// Marked long enough, or being deleted, and unused: deleted in this run.
    Delete,
    /// Marked, but a snapshot uses it again: a revival is written.
    Revive,
    /// Named by a deletion record, but used: its used blobs are copied out first.
    Rescue,
}

impl PackState {
    pub fn describe(self) -> &'static str {
        match self {
            PackState::Repack => "partly used: repack, then mark",
            PackState::Young => "unused, younger than the grace period",
            PackState::Mark => "unused: mark",
            PackState::Marked => "marked",
            PackState::Delete => "marked long enough and unused: delete",
            PackState::Revive => "marked but used again: revive",
            PackState::Rescue => "being deleted but used: copy its used blobs out",
        }
    }
}

/// One pack that is not simply in use, and what prune does with it.
#[derive(Debug, Serialize, Clone)]
pub struct PackPlan {
    pub pack: Id,
    pub size: u64,
    pub state: PackState,
    /// When the pack was written (young) or marked (marked), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// When its next step may happen: marking (young) or deletion (marked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Ages of packs and marks, on the storage's clock where it reports one.
struct Ages {
    now: Timestamp,
    packs: HashMap<Id, Timestamp>,
    marks: HashMap<Id, Timestamp>,
}

impl Ages {
    fn load(repo: &Repository, state: &PruneState, dry_run: bool) -> Result<Ages> {
        let now = storage_now(repo, dry_run);
        let packs = repo
            .backend
            .list_timed(FileKind::Data)?
            .into_iter()
            .filter_map(|(id, _, t)| Some((id, t?)))
            .collect();
        let stored: HashMap<Id, Timestamp> = repo
            .backend
            .list_timed(FileKind::Mark)?
            .into_iter()
            .filter_map(|(id, _, t)| Some((id, t?)))
            .collect();
        // A backend that reports no times leaves the writer's clock.
        let marks = state
            .marks
            .iter()
            .map(|(id, m)| {
                let t = stored
                    .get(id)
                    .copied()
                    .or_else(|| m.time.parse().ok())
                    .unwrap_or(now);
                (*id, t)
            })
            .collect();
        Ok(Ages { now, packs, marks })
    }

    fn older_than(&self, t: Timestamp, grace: Duration) -> bool {
        self.now
            .duration_since(t)
            .try_into()
            .is_ok_and(|age: Duration| age >= grace)
    }

    /// The oldest of `marks`.
    fn first_mark(&self, marks: &[Id]) -> Timestamp {
        marks
            .iter()
            .filter_map(|m| self.marks.get(m))
            .min()
            .copied()
            .unwrap_or(self.now)
    }
}

/// The storage's idea of now: the time it gives a small object written for the purpose.
/// Where it gives none (or in a dry run, which writes nothing), this host's clock.
pub(super) fn storage_now(repo: &Repository, dry_run: bool) -> Timestamp {
    if dry_run {
        return Timestamp::now();
    }
    storage_clock(&repo.backend).unwrap_or_else(Timestamp::now)
}

/// The time `backend` gives a small object written for the purpose; None where it gives
/// none. The object is deleted again where the storage allows it.
pub(crate) fn storage_clock(backend: &crate::repo::Backend) -> Option<Timestamp> {
    let path = format!("tmp/{}.clock", Id::random().to_hex());
    let t = backend
        .write(&path, Vec::new())
        .and_then(|()| backend.modified(&path));
    let _ = backend.delete(&path);
    t.ok().flatten()
}

fn after(t: Timestamp, grace: Duration) -> Option<String> {
    let span = jiff::SignedDuration::try_from(grace).ok()?;
    t.checked_add(span).ok().map(|t| t.to_string())
}

/// What this run does with each pack that is not simply in use.
fn plan(
    packs: &HashMap<Id, PackUse>,
    state: &PruneState,
    ages: &Ages,
    opts: &PruneOptions,
) -> Vec<PackPlan> {
    let marked = state.marked();
    let dying = state.deleting();
    let mut out = Vec::new();
    for (id, p) in packs {
        let line = |state, since: Option<Timestamp>, next: Option<Timestamp>| PackPlan {
            pack: *id,
            size: p.size,
            state,
            since: since.map(|t| t.to_string()),
            after: next.and_then(|t| after(t, opts.grace)),
        };
        let marks = marked.get(id);
        let written = ages.packs.get(id).copied();
        let entry = match (p.used_bytes > 0, dying.contains(id), marks) {
            (true, true, _) => line(PackState::Rescue, None, None),
            (true, false, Some(m)) => line(PackState::Revive, Some(ages.first_mark(m)), None),
            (true, false, None) => continue,
            (false, true, _) => line(PackState::Delete, None, None),
            (false, false, Some(m)) => {
                let t = ages.first_mark(m);
                if ages.older_than(t, opts.grace) {
                    line(PackState::Delete, Some(t), None)
                } else {
                    line(PackState::Marked, Some(t), Some(t))
                }
            }
            (false, false, None) => match written {
                Some(t) if !ages.older_than(t, opts.grace) => {
                    line(PackState::Young, Some(t), Some(t))
                }
                _ => line(PackState::Mark, written, None),
            },
        };
        out.push(entry);
    }
    // Partly used packs old enough, neither marked nor being deleted, may be repacked.
    let settled: HashSet<Id> = out.iter().map(|l| l.pack).collect();
    let eligible = |id: &Id| {
        !settled.contains(id)
            && ages
                .packs
                .get(id)
                .is_none_or(|t| ages.older_than(*t, opts.grace))
    };
    let unused: HashSet<Id> = packs
        .iter()
        .filter(|(_, p)| p.used_bytes == 0)
        .map(|(id, _)| *id)
        .collect();
    for id in choose_repacks(packs, &unused, opts, &eligible) {
        out.push(PackPlan {
            pack: id,
            size: packs[&id].size,
            state: PackState::Repack,
            since: None,
            after: None,
        });
    }
    out.sort_by_key(|a| (a.state as u8, a.pack));
    out
}

fn with_state(plan: &[PackPlan], s: PackState) -> Vec<Id> {
    plan.iter()
        .filter(|l| l.state == s)
        .map(|l| l.pack)
        .collect()
}

pub fn prune(
    repo: &mut Repository,
    opts: &PruneOptions,
    counters: &Counters,
    held: &dyn Fn() -> Result<()>,
) -> Result<PruneStats> {
    // Snapshots first, then the index: a backup writes its packs and index files before
    // its snapshot, so everything a listed snapshot references is in the index read after.
    let snapshots = repo.backend.list(FileKind::Snapshot)?;
    repo.load_index()?;
    refuse_unknown(repo)?;
    let mut stats = PruneStats {
        two_phase: true,
        ..PruneStats::default()
    };
    let state = repo.marks.clone();
    let ages = Ages::load(repo, &state, opts.dry_run)?;
    let mut used = HashSet::new();
    mark_snapshots(repo, &snapshots, &mut used, counters, &mut stats)?;
    stats.blobs_used = used.len() as u64;
    let packs = pack_usage(repo, &used)?;
    stats.packs = packs.len() as u64;
    stats.bytes_total = packs.values().map(|p| p.size).sum();
    stats.bytes_unused = packs.values().map(PackUse::unused_bytes).sum();
    let plan = plan(&packs, &state, &ages, opts);
    let size_of = |ids: &[Id]| ids.iter().map(|id| packs[id].size).sum::<u64>();
    let repack = with_state(&plan, PackState::Repack);
    let rescue = with_state(&plan, PackState::Rescue);
    stats.packs_repacked = (repack.len() + rescue.len()) as u64;
    stats.bytes_repacked = size_of(&repack) + size_of(&rescue);
    if opts.dry_run {
        let delete = with_state(&plan, PackState::Delete);
        stats.packs_deleted = delete.len() as u64;
        stats.bytes_freed = size_of(&delete);
        stats.packs_marked = (with_state(&plan, PackState::Mark).len() + repack.len()) as u64;
        stats.packs_revived = with_state(&plan, PackState::Revive).len() as u64;
        stats.plan = plan;
        return Ok(stats);
    }
    held()?;
    revive(
        repo,
        &state,
        &with_state(&plan, PackState::Revive),
        &mut stats,
    )?;
    let mut repacked = repack.clone();
    repacked.extend(&rescue);
    let new_index_files = copy_used(repo, &packs, &repacked, counters, &mut stats)?;
    let delete = fence(
        repo,
        &state,
        with_state(&plan, PackState::Delete),
        &snapshots,
        &packs,
        &mut used,
        counters,
        &mut stats,
    )?;
    // Packs deleted earlier that an index file still lists go from the index too.
    let dying = state.deleting();
    let listed_gone: Vec<Id> = repo
        .index()
        .packs()
        .map(|(id, _, _)| id)
        .filter(|id| !packs.contains_key(id) && dying.contains(id))
        .collect();
    held()?;
    delete_packs(repo, &delete, &listed_gone, &new_index_files, &mut stats)?;
    stats.bytes_freed = size_of(&delete);
    let mut to_mark = with_state(&plan, PackState::Mark);
    to_mark.extend(&repack);
    if !to_mark.is_empty() {
        to_mark.sort();
        stats.packs_marked = to_mark.len() as u64;
        repo.save_mark(to_mark)?;
    }
    stats.records_removed = collect_records(repo, &state)?;
    let deleted: HashSet<&Id> = delete.iter().collect();
    stats.bytes_unused_after = packs
        .iter()
        .filter(|(id, _)| !deleted.contains(id))
        .map(|(_, p)| p.unused_bytes())
        .sum();
    if let Some(c) = &repo.cache {
        for id in &delete {
            c.remove("packs", id);
        }
    }
    Ok(stats)
}

/// Revives marked packs that snapshots use again (every mark in force on them).
fn revive(
    repo: &Repository,
    state: &PruneState,
    packs: &[Id],
    stats: &mut PruneStats,
) -> Result<()> {
    if packs.is_empty() {
        return Ok(());
    }
    let marked = state.marked();
    let mut by_mark: HashMap<Id, Vec<Id>> = HashMap::new();
    for p in packs {
        for m in marked.get(p).into_iter().flatten() {
            by_mark.entry(*m).or_default().push(*p);
        }
    }
    let revived: Vec<Revived> = by_mark
        .into_iter()
        .map(|(mark, packs)| Revived { mark, packs })
        .collect();
    repo.save_revival(revived)?;
    stats.packs_revived = packs.len() as u64;
    Ok(())
}

/// Announces the deletion of `delete` (those not announced yet) with a deletion record,
/// then looks once more at the snapshots and revivals: a backup that wrote either before
/// the record keeps its packs; one that writes them after sees the record. Returns the
/// packs still free to delete.
#[allow(clippy::too_many_arguments)]
fn fence(
    repo: &mut Repository,
    state: &PruneState,
    delete: Vec<Id>,
    seen: &[Id],
    packs: &HashMap<Id, PackUse>,
    used: &mut HashSet<Id>,
    counters: &Counters,
    stats: &mut PruneStats,
) -> Result<Vec<Id>> {
    let dying = state.deleting();
    let fresh: Vec<Id> = delete
        .iter()
        .filter(|p| !dying.contains(p))
        .copied()
        .collect();
    if fresh.is_empty() {
        return Ok(delete);
    }
    repo.save_deletion(fresh)?;
    let seen: HashSet<&Id> = seen.iter().collect();
    let new: Vec<Id> = repo
        .backend
        .list(FileKind::Snapshot)?
        .into_iter()
        .filter(|id| !seen.contains(id))
        .collect();
    let mut more = PruneStats::default();
    if !new.is_empty() {
        // Their packs came after the index was read: read it again, after the listing.
        repo.load_index()?;
    }
    mark_snapshots(repo, &new, used, counters, &mut more)?;
    stats.snapshots += more.snapshots;
    let revived = repo.prune_state()?.revived();
    let marked = state.marked();
    let index = repo.index();
    Ok(delete
        .into_iter()
        .filter(|p| {
            let revived_now = marked
                .get(p)
                .is_some_and(|ms| ms.iter().any(|m| revived.contains(&(*m, *p))));
            let used_now = packs[p]
                .blobs
                .iter()
                .any(|b| used.contains(&b.id) && index.get(&b.id).is_none_or(|(at, _)| at == *p));
            !revived_now && !used_now
        })
        .collect())
}

/// Writes the index without `delete`, then deletes those packs: a reader never finds
/// an index entry for a pack that is gone.
fn delete_packs(
    repo: &Repository,
    delete: &[Id],
    listed_gone: &[Id],
    new_index_files: &[Id],
    stats: &mut PruneStats,
) -> Result<()> {
    if delete.is_empty() && listed_gone.is_empty() {
        return Ok(());
    }
    let gone: HashSet<&Id> = delete.iter().chain(listed_gone).collect();
    let mut keep: HashMap<Id, PackBlobs> = HashMap::new();
    let mut old: Vec<Id> = repo.index().files.clone();
    for (id, f) in repo.index_files()? {
        debug_assert!(old.contains(&id));
        keep_packs(&mut keep, f, &gone);
    }
    for p in &repo.index().unindexed {
        if !gone.contains(&p.pack) {
            keep.entry(p.pack).or_insert_with(|| p.clone());
        }
    }
    for id in new_index_files {
        let bytes = repo.backend.read(&FileKind::Index.path(id))?;
        keep_packs(&mut keep, IndexFile::open(&repo.keys, &bytes)?, &gone);
        old.push(*id);
    }
    let mut keep: Vec<PackBlobs> = keep.into_values().collect();
    keep.sort_by_key(|p| p.pack);
    let (written, removed) = replace_index(&repo.backend, &repo.keys, keep, &old)?;
    stats.index_files_written += written;
    stats.index_files_removed += removed;
    for id in delete {
        match repo.backend.delete(&FileKind::Data.path(id)) {
            Err(e) if !is_not_found(&e) => return Err(e),
            _ => {}
        }
    }
    stats.packs_deleted = delete.len() as u64;
    Ok(())
}

/// Adds the packs of `f` that stay to `keep`, merged with other files' listings.
fn keep_packs(keep: &mut HashMap<Id, PackBlobs>, f: IndexFile, gone: &HashSet<&Id>) {
    for p in f.packs {
        if !gone.contains(&p.pack) {
            crate::format::index::merge_listing(keep, p);
        }
    }
}

/// Removes mark records all of whose packs are gone or revived, then revivals that name
/// only removed marks. Deletion records stay: they are what lets sync delete a pack on
/// a mirror (§17). Returns how many records went.
fn collect_records(repo: &Repository, state: &PruneState) -> Result<u64> {
    let present: HashSet<Id> = repo.backend.list(FileKind::Data)?.into_iter().collect();
    let revived = repo.prune_state()?.revived();
    let mut removed = 0;
    let mut gone_marks = HashSet::new();
    for (id, m) in &state.marks {
        if m.packs
            .iter()
            .all(|p| !present.contains(p) || revived.contains(&(*id, *p)))
        {
            repo.backend.delete(&FileKind::Mark.path(id))?;
            gone_marks.insert(*id);
            removed += 1;
        }
    }
    let remaining: HashSet<Id> = repo.backend.list(FileKind::Mark)?.into_iter().collect();
    for (id, r) in &state.revivals {
        if r.revived.iter().all(|v| !remaining.contains(&v.mark)) {
            repo.backend.delete(&FileKind::Revival.path(id))?;
            removed += 1;
        }
    }
    Ok(removed)
}
