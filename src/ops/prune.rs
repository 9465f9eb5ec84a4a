//! `vault prune`: reclaim the space of blobs no snapshot uses. Packs with no used blob are
//! deleted; packs whose unused share is worth it are repacked (their used blobs copied,
//! still sealed, into new packs). Order, so a kill at any instant loses nothing: new packs
//! and their index first, then the new index that supersedes the old one, then the old
//! index files, and the packs last. Runs under the exclusive lock: no backup can add
//! blobs while it decides what is unused.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, anyhow};
use serde::Serialize;

use crate::error::{Advised, Remedy, one_line};
use crate::format::Id;
use crate::format::index::{IndexFile, PackBlobs};
use crate::format::pack::{self, BlobEntry, BlobType, SealedBlob};
use crate::format::tree::{Node, NodeType};
use crate::repo::index::replace_index;
use crate::repo::packer::Packer;
use crate::repo::repository::is_misnamed;
use crate::repo::{FileKind, Repository};

#[derive(Clone, Copy, Debug)]
pub enum MaxUnused {
    Percent(f64),
    Bytes(u64),
}

impl std::str::FromStr for MaxUnused {
    type Err = String;

    fn from_str(s: &str) -> Result<MaxUnused, String> {
        match s.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| (0.0..=100.0).contains(v))
                .map(MaxUnused::Percent)
                .ok_or_else(|| format!("--max-unused {s:?}: give a percentage 0-100% or a size")),
            None => crate::units::parse_size(s).map(MaxUnused::Bytes),
        }
    }
}

/// How prune goes about it: one type for programs and the command line (clap derives its
/// flags under the `cli` feature, with the defaults [`Default`] gives).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct PruneOptions {
    /// Unused space tolerated in kept packs before they are repacked: a percentage of the
    /// repository or a size
    #[cfg_attr(feature = "cli", arg(long, default_value = "5%", value_name = "LIMIT"))]
    pub max_unused: MaxUnused,
    /// Repack at most this much in one run
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "SIZE", value_parser = crate::units::parse_size)
    )]
    pub max_repack: Option<u64>,
    /// Show what would be deleted and repacked; change nothing (the command line's own
    /// flag sets it).
    #[cfg_attr(feature = "cli", arg(skip))]
    pub dry_run: bool,
    /// Format 3: unused packs are marked once this old, and marked packs deleted once
    /// marked this long (s, m, h or d). Safety never depends on it: a backup that
    /// outlives it revives or re-uploads what it needs
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "24h", value_name = "DURATION", value_parser = crate::units::parse_wait)
    )]
    pub grace: std::time::Duration,
}

impl Default for PruneOptions {
    fn default() -> PruneOptions {
        PruneOptions {
            max_unused: MaxUnused::Percent(5.0),
            max_repack: None,
            dry_run: false,
            grace: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Default)]
pub struct Counters {
    pub trees: AtomicU64,
    pub packs_repacked: AtomicU64,
}

#[derive(Debug, Default, Serialize)]
pub struct PruneStats {
    pub snapshots: u64,
    pub blobs_used: u64,
    pub packs: u64,
    pub bytes_total: u64,
    pub bytes_unused: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub bytes_repacked: u64,
    pub packs_written: u64,
    pub bytes_written: u64,
    /// Space returned to storage: deleted and repacked packs minus the new packs.
    pub bytes_freed: u64,
    /// Unused bytes left in kept packs (within --max-unused).
    pub bytes_unused_after: u64,
    pub index_files_written: u64,
    pub index_files_removed: u64,
    /// Two-phase prune: packs marked, revived (used again), and records removed.
    pub two_phase: bool,
    pub packs_marked: u64,
    pub packs_revived: u64,
    pub records_removed: u64,
    /// Temporary objects a killed process left in tmp/, removed once a day old.
    pub tmp_removed: u64,
    /// Per pack that is not simply in use: its state (two-phase prune).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<super::twophase::PackPlan>,
}

/// One pack and what prune decided for it.
pub(super) struct PackUse {
    pub(super) blobs: Vec<BlobEntry>,
    /// Which entries are the copy of a used blob that the repository keeps.
    pub(super) used: Vec<bool>,
    pub(super) size: u64,
    pub(super) used_bytes: u64,
}

impl PackUse {
    pub(super) fn unused_bytes(&self) -> u64 {
        self.size.saturating_sub(self.used_bytes)
    }
}

/// `held` is asked before each step that cannot be taken back (records, deletions): the
/// caller fails it when its lock could not be refreshed.
pub fn prune(
    repo: &mut Repository,
    opts: &PruneOptions,
    counters: &Counters,
    held: &dyn Fn() -> Result<()>,
) -> Result<PruneStats> {
    let mut stats = if repo.two_phase() {
        super::twophase::prune(repo, opts, counters, held)?
    } else {
        held()?;
        prune_at_once(repo, opts, counters)?
    };
    if !opts.dry_run {
        stats.tmp_removed = sweep_tmp(repo)?;
    }
    Ok(stats)
}

/// How old a temporary object must be before prune takes it for a killed process's
/// leftover: no write of one object takes this long.
const TMP_LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes what processes killed mid-write left in tmp/ (an interrupted one removes its
/// own), judged by the storage's clock, so a host with a skewed clock cannot take a
/// running write's file.
fn sweep_tmp(repo: &Repository) -> Result<u64> {
    sweep_tmp_at(&repo.backend, super::twophase::storage_now(repo, false))
}

/// `sweep_tmp` on any copy, with `now` on its clock.
pub(crate) fn sweep_tmp_at(backend: &crate::repo::Backend, now: jiff::Timestamp) -> Result<u64> {
    let mut removed = 0;
    for (path, _, time) in backend.list_files_timed("tmp/")? {
        let old = time.is_some_and(|t| {
            now.duration_since(t)
                .try_into()
                .is_ok_and(|age: std::time::Duration| age > TMP_LEFTOVER_AGE)
        });
        if old && backend.delete(&path).is_ok() {
            log::info!("removed {path}, left by a process killed mid-write");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether prune may start: no index file or snapshot it cannot read.
pub(super) fn refuse_unknown(repo: &Repository) -> Result<()> {
    repo.refuse_misnamed()?;
    if let Some((id, why)) = repo.damaged_index.first() {
        let msg = format!("index {} is damaged ({why})", id.short());
        return Err(Advised::error(msg, Remedy::RepairIndexBeforePruning));
    }
    Ok(())
}

/// Prune of a repository before format 3, under the exclusive lock: what is unused goes
/// in this run.
fn prune_at_once(
    repo: &Repository,
    opts: &PruneOptions,
    counters: &Counters,
) -> Result<PruneStats> {
    refuse_unknown(repo)?;
    let mut stats = PruneStats::default();
    let mut used = HashSet::new();
    let snapshots = repo.backend.list(FileKind::Snapshot)?;
    mark_snapshots(repo, &snapshots, &mut used, counters, &mut stats)?;
    stats.blobs_used = used.len() as u64;
    let mut packs = pack_usage(repo, &used)?;
    stats.packs = packs.len() as u64;
    stats.bytes_total = packs.values().map(|p| p.size).sum();
    stats.bytes_unused = packs.values().map(PackUse::unused_bytes).sum();

    let delete: Vec<Id> = packs
        .iter()
        .filter(|(_, p)| p.used_bytes == 0)
        .map(|(id, _)| *id)
        .collect();
    let doomed: HashSet<Id> = delete.iter().copied().collect();
    let repack = choose_repacks(&packs, &doomed, opts, &|_| true);
    let gone: HashSet<Id> = doomed.iter().chain(&repack).copied().collect();
    stats.packs_deleted = delete.len() as u64;
    stats.packs_repacked = repack.len() as u64;
    stats.bytes_repacked = repack.iter().map(|id| packs[id].size).sum();
    let freed_whole: u64 = delete.iter().map(|id| packs[id].size).sum();
    stats.bytes_unused_after = packs
        .iter()
        .filter(|(id, _)| !gone.contains(id))
        .map(|(_, p)| p.unused_bytes())
        .sum();
    if log::log_enabled!(log::Level::Info) {
        let verb = if opts.dry_run { "would " } else { "" };
        for id in &delete {
            log::info!("{verb}delete pack {} (unused)", id.short());
        }
        for id in &repack {
            let p = &packs[id];
            log::info!(
                "{verb}repack pack {} ({} of {} bytes used)",
                id.short(),
                p.used_bytes,
                p.size
            );
        }
    }
    if opts.dry_run {
        let used_in_repack: u64 = repack.iter().map(|id| packs[id].used_bytes).sum();
        stats.bytes_freed = freed_whole + stats.bytes_repacked - used_in_repack;
        return Ok(stats);
    }

    // 1. Copy the used blobs of repacked packs into new packs (with their own index).
    let new_index_files = copy_used(repo, &packs, &repack, counters, &mut stats)?;
    // 2. One index describing exactly the packs that stay, superseding every old file.
    let mut keep: Vec<PackBlobs> = Vec::new();
    for (id, p) in packs.iter_mut() {
        if !gone.contains(id) {
            keep.push(PackBlobs {
                pack: *id,
                blobs: std::mem::take(&mut p.blobs),
            });
        }
    }
    let mut old: Vec<Id> = repo.backend.list(FileKind::Index)?;
    for id in &new_index_files {
        let bytes = repo.backend.read(&FileKind::Index.path(id))?;
        let f = IndexFile::open(&repo.keys, &bytes)
            .map_err(|e| anyhow!(e).context(format!("reading back index {}", id.short())))?;
        keep.extend(f.packs);
        if !old.contains(id) {
            old.push(*id);
        }
    }
    keep.sort_by_key(|p| p.pack);
    let (written, removed) = replace_index(&repo.backend, &repo.keys, keep, &old)?;
    stats.index_files_written = written;
    stats.index_files_removed = removed;
    // 3. Only now, when no index names them, the packs go.
    for id in &gone {
        repo.backend.delete(&FileKind::Data.path(id))?;
    }
    stats.bytes_freed = (freed_whole + stats.bytes_repacked).saturating_sub(stats.bytes_written);
    if let Some(c) = &repo.cache {
        for id in &gone {
            c.remove("packs", id);
        }
    }
    Ok(stats)
}

/// Adds every blob snapshots `ids` reference to `used`. Any snapshot or tree that cannot
/// be read stops prune: what it references is unknown, and deleting it would lose data.
/// A snapshot gone since the listing was forgotten meanwhile, and references nothing.
pub(super) fn mark_snapshots(
    repo: &Repository,
    ids: &[Id],
    used: &mut HashSet<Id>,
    counters: &Counters,
    stats: &mut PruneStats,
) -> Result<()> {
    for id in ids {
        let snap = match repo.load_snapshot(id) {
            Ok(s) => s,
            Err(e) if crate::repo::backend::is_not_found(&e) => continue,
            Err(e) if is_misnamed(&e) => return Err(e), // its own message says what to run
            Err(e) => {
                let msg = format!("{}: prune cannot know what it references", one_line(&e));
                return Err(Advised::error(msg, Remedy::ForgetOrRepair(id.short())));
            }
        };
        stats.snapshots += 1;
        mark_tree(repo, &snap.tree, Path::new("/"), used, counters)?;
    }
    Ok(())
}

/// Adds tree `id` (at `path`) and every blob below it to `used`. The walk keeps its own
/// stack (one loaded tree per level) instead of recursing, so any depth works; a tree
/// already in `used` is not walked again, so a tree repeating one subtree costs its depth.
pub(crate) fn mark_tree(
    repo: &Repository,
    id: &Id,
    path: &Path,
    used: &mut HashSet<Id>,
    counters: &Counters,
) -> Result<()> {
    let mut path = crate::ops::walk::SnapPath::new(path);
    let mut stack: Vec<(std::vec::IntoIter<Node>, usize)> = Vec::new();
    mark_one(repo, id, &path, path.mark(), used, counters, &mut stack)?;
    while let Some((nodes, _)) = stack.last_mut() {
        let Some(n) = nodes.next() else {
            let (_, mark) = stack.pop().expect("a frame");
            path.cut(mark);
            continue;
        };
        match (n.kind, n.subtree) {
            (NodeType::Dir, Some(sub)) => {
                let mark = path.push(&n.name.0);
                if !mark_one(repo, &sub, &path, mark, used, counters, &mut stack)? {
                    path.cut(mark);
                }
            }
            (NodeType::File, _) => used.extend(n.content.iter().copied()),
            _ => {}
        }
    }
    Ok(())
}

/// Marks tree `id` and stacks its nodes, unless it was marked before; returns whether
/// it stacked them.
fn mark_one(
    repo: &Repository,
    id: &Id,
    path: &crate::ops::walk::SnapPath,
    mark: usize,
    used: &mut HashSet<Id>,
    counters: &Counters,
    stack: &mut Vec<(std::vec::IntoIter<Node>, usize)>,
) -> Result<bool> {
    if !used.insert(*id) {
        return Ok(false); // this subtree is already marked
    }
    counters.trees.fetch_add(1, Ordering::Relaxed);
    let tree = repo.load_tree(id).map_err(|e| {
        let msg = format!(
            "{}: {} cannot be read, so prune cannot know what it references",
            one_line(&e),
            path.as_path().display()
        );
        Advised::error(msg, Remedy::RepairSnapshotsFirst)
    })?;
    stack.push((tree.nodes.into_iter(), mark));
    Ok(true)
}

/// Every pack with every entry the index (or, for unindexed packs, the header) lists.
pub(super) fn pack_usage(repo: &Repository, used: &HashSet<Id>) -> Result<HashMap<Id, PackUse>> {
    let index = repo.index();
    let stored: HashMap<Id, u64> = repo
        .backend
        .list_sized(FileKind::Data)?
        .into_iter()
        .collect();
    let mut listed: HashMap<Id, PackBlobs> = HashMap::new();
    for (_, f) in repo.index_files()? {
        for p in f.packs {
            crate::format::index::merge_listing(&mut listed, p);
        }
    }
    for p in &index.unindexed {
        listed.entry(p.pack).or_insert_with(|| p.clone());
    }
    let mut packs: HashMap<Id, PackUse> = HashMap::new();
    for p in listed.into_values() {
        // A pack a prune deleted that an index file written meanwhile still lists
        // (a backup listing the packs it uploaded) is gone on purpose: the next index
        // rewrite drops it.
        if !stored.contains_key(&p.pack) && repo.marks.deleting().contains(&p.pack) {
            continue;
        }
        let size = *stored.get(&p.pack).ok_or_else(|| {
            let msg = format!(
                "pack {} is in the index but missing from storage",
                p.pack.short()
            );
            Advised::error(msg, Remedy::CheckBeforePruning)
        })?;
        let used_flags: Vec<bool> = p
            .blobs
            .iter()
            .map(|b| used.contains(&b.id) && index.get(&b.id).is_some_and(|(at, _)| at == p.pack))
            .collect();
        let used_bytes = used_bytes(&p.blobs, &used_flags);
        // Header and trailer count as used while any blob is.
        let overhead = if used_flags.contains(&true) {
            size.saturating_sub(pack::units_len(&p.blobs))
        } else {
            0
        };
        packs.insert(
            p.pack,
            PackUse {
                blobs: p.blobs,
                used: used_flags,
                size,
                used_bytes: used_bytes + overhead,
            },
        );
    }
    Ok(packs)
}

/// The stored bytes that the used blobs of one pack occupy. A bundle counts in proportion
/// to the plaintext of its used members, so that the waste inside partly used bundles is
/// seen, and repacked, like any other.
fn used_bytes(blobs: &[BlobEntry], used: &[bool]) -> u64 {
    #[derive(Default)]
    struct Unit {
        length: u64,
        raw: u64,
        raw_used: u64,
        members: u32,
        members_used: u32,
    }
    let mut units: HashMap<(u32, u32), Unit> = HashMap::new();
    for (b, &u) in blobs.iter().zip(used) {
        let unit = units.entry((b.offset, b.length)).or_default();
        unit.length = u64::from(b.length);
        unit.raw += u64::from(b.raw_len);
        unit.members += 1;
        if u {
            unit.raw_used += u64::from(b.raw_len);
            unit.members_used += 1;
        }
    }
    units
        .values()
        .map(|u| match u.members_used {
            0 => 0,
            n if n == u.members => u.length,
            // Never 0 while a member is used: a pack with used bytes is kept.
            _ => (u.length * u.raw_used / u.raw.max(1)).max(1),
        })
        .sum()
}

/// The partly used packs to repack, most wasteful first, until what stays unused is
/// within `max_unused` (and no more than `max_repack` bytes are rewritten).
pub(super) fn choose_repacks(
    packs: &HashMap<Id, PackUse>,
    delete: &HashSet<Id>,
    opts: &PruneOptions,
    eligible: &dyn Fn(&Id) -> bool,
) -> Vec<Id> {
    let mut partial: Vec<(&Id, &PackUse)> = packs
        .iter()
        .filter(|(id, p)| !delete.contains(id) && p.unused_bytes() > 0 && eligible(id))
        .collect();
    let kept_size: u64 = packs
        .iter()
        .filter(|(id, _)| !delete.contains(id))
        .map(|(_, p)| p.size)
        .sum();
    let limit = match opts.max_unused {
        MaxUnused::Bytes(b) => b,
        MaxUnused::Percent(p) => (kept_size as f64 * p / 100.0) as u64,
    };
    let mut unused: u64 = partial.iter().map(|(_, p)| p.unused_bytes()).sum();
    partial.sort_by(|a, b| {
        let ratio = |p: &PackUse| p.unused_bytes() as f64 / p.size.max(1) as f64;
        ratio(b.1).total_cmp(&ratio(a.1)).then(a.0.cmp(b.0))
    });
    let mut out = Vec::new();
    let mut budget = opts.max_repack.unwrap_or(u64::MAX);
    for (id, p) in partial {
        if unused <= limit {
            break;
        }
        if p.size > budget {
            continue;
        }
        budget -= p.size;
        unused -= p.unused_bytes();
        out.push(*id);
    }
    out
}

/// Seals the used members of a repacked pack's bundles as new bundles of the size backup
/// makes.
fn rebundle(repo: &Repository, packer: &Packer, members: &[(BlobType, Id, Vec<u8>)]) -> Result<()> {
    let level = repo.config.compression_level;
    let mut start = 0;
    let mut size = 0;
    for (i, (blob_type, _, data)) in members.iter().enumerate() {
        size += data.len();
        let last = members.get(i + 1).is_none_or(|(t, _, _)| t != blob_type);
        if size >= pack::BUNDLE_TARGET || last {
            let parts: Vec<(Id, &[u8])> = members[start..=i]
                .iter()
                .map(|(_, id, d)| (*id, d.as_slice()))
                .collect();
            packer.add_bundle(pack::seal_bundle(&repo.keys, *blob_type, &parts, level))?;
            (start, size) = (i + 1, 0);
        }
    }
    Ok(())
}

/// Copies the used blobs of `repack` into new packs. Each is opened first: a damaged blob
/// stops prune before anything is deleted. Returns the index files the packer wrote.
pub(super) fn copy_used(
    repo: &Repository,
    packs: &HashMap<Id, PackUse>,
    repack: &[Id],
    counters: &Counters,
    stats: &mut PruneStats,
) -> Result<Vec<Id>> {
    if repack.is_empty() {
        return Ok(Vec::new());
    }
    let packer = Packer::new(&repo.backend, &repo.keys, repo.config.pack_size, false)
        .caching_trees(repo.cache.clone());
    for id in repack {
        copy_pack(repo, &packer, id, &packs[id])?;
        counters.packs_repacked.fetch_add(1, Ordering::Relaxed);
    }
    let done = packer.finish()?;
    stats.packs_written = done.packs;
    stats.bytes_written = done.bytes;
    Ok(done.index_files)
}

/// Copies the used units of one pack: plain blobs and wholly used bundles as they are
/// stored, the used members of partly used bundles sealed again without the others.
fn copy_pack(repo: &Repository, packer: &Packer, id: &Id, p: &PackUse) -> Result<()> {
    let bytes = repo.backend.read(&FileKind::Data.path(id))?;
    let mut opener = pack::BlobOpener::default();
    let mut bundle: Vec<(BlobType, Id, Vec<u8>)> = Vec::new();
    let mut pending = 0;
    let mut i = 0;
    while i < p.blobs.len() {
        let e = &p.blobs[i];
        // A bundle's members are listed together, in the order of its plaintext.
        let n = p.blobs[i..]
            .iter()
            .take_while(|m| e.bundled() && (m.offset, m.length) == (e.offset, e.length))
            .count()
            .max(1);
        let (members, used) = (&p.blobs[i..i + n], &p.used[i..i + n]);
        i += n;
        if !used.contains(&true) {
            continue;
        }
        let end = e.offset as usize + e.length as usize;
        let stored = bytes
            .get(e.offset as usize..end)
            .ok_or_else(|| anyhow!("pack {} is shorter than its index says", id.short()))?;
        let plains = open_used(repo, &mut opener, id, members, used, stored)?;
        if !e.bundled() {
            packer.add(SealedBlob {
                blob_type: e.blob_type,
                flags: e.flags,
                id: e.id,
                raw_len: e.raw_len,
                bytes: stored.to_vec(),
            })?;
        } else if !used.contains(&false) && fills(members, opener.bundle_len()) {
            // Every member still used: the sealed bundle as it is, not compressed again.
            packer.add_bundle(pack::SealedBundle {
                blob_type: e.blob_type,
                flags: e.flags,
                members: members.iter().map(|m| (m.id, m.raw_len)).collect(),
                bytes: stored.to_vec(),
            })?;
        } else {
            // The used members are sealed again without the unused ones, a bundle at a
            // time: a pack of well-compressed members holds ten times its size in
            // plaintext.
            for (m, plain) in members
                .iter()
                .zip(used)
                .filter(|(_, u)| **u)
                .map(|(m, _)| m)
                .zip(plains)
            {
                pending += plain.len();
                bundle.push((m.blob_type, m.id, plain));
            }
            if pending >= pack::BUNDLE_TARGET {
                rebundle(repo, packer, &bundle)?;
                (bundle, pending) = (Vec::new(), 0);
            }
        }
    }
    rebundle(repo, packer, &bundle)
}

/// Opens the used ones of `members` (one blob, or one bundle's members): a damaged blob
/// stops prune before anything is deleted.
fn open_used(
    repo: &Repository,
    opener: &mut pack::BlobOpener,
    pack: &Id,
    members: &[BlobEntry],
    used: &[bool],
    stored: &[u8],
) -> Result<Vec<Vec<u8>>> {
    let used_members = members.iter().zip(used).filter(|(_, u)| **u);
    used_members
        .map(|(m, _)| {
            opener.open(&repo.keys, m, stored).map_err(|err| {
                let msg = format!(
                    "{} blob {} in pack {}: {err}; nothing was deleted",
                    m.blob_type.name(),
                    m.id.short(),
                    pack.short()
                );
                Advised::error(msg, Remedy::CheckData)
            })
        })
        .collect()
}

/// Whether `members` are the whole plaintext of their bundle, `len` bytes, in order: only
/// then can the sealed bundle be copied with their entries describing it.
fn fills(members: &[BlobEntry], len: Option<usize>) -> bool {
    let mut at = 0u64;
    for m in members {
        if u64::from(m.inner) != at {
            return false;
        }
        at += u64::from(m.raw_len);
    }
    len.is_some_and(|len| at == len as u64)
}

/// A vault older than format 3 backs up without confirming its packs, relying on prune's
/// exclusive lock: two-phase prune does not run beside one.
pub fn refuse_older_vaults(repo: &crate::repo::Repository) -> Result<()> {
    let locks = crate::repo::lock::list_locks(&repo.backend, &repo.keys)?;
    let older = |l: &&crate::repo::lock::LockInfo| {
        (l.from_older_vault() || l.lock.is_none()) && !l.is_dead()
    };
    match locks.iter().find(older) {
        Some(l) => Err(crate::error::VaultError::Locked(format!(
            "{} is from a vault older than format 3 (or unreadable), which relies on prune not running beside it; wait for it, and upgrade vault on that host",
            l.describe()
        ))
        .into()),
        None => Ok(()),
    }
}
