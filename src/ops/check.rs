//! `vault check`: the repository's structure (keys, index against packs, every snapshot's
//! trees and the blobs they reference) and, with read-data, every byte of a chosen subset
//! of packs. Each problem is reported once, naming the object and what it affects.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, anyhow};
use crossbeam_channel::bounded;
use serde::Serialize;

use super::problem::{Problem, Problems};
use super::subset::Subset;
use super::walk;
use crate::error::one_line;
use crate::format::Id;
use crate::format::manifest::Manifest;
use crate::format::pack::{self, BlobEntry, BlobType};
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Node, NodeType};
use crate::repo::repository::MISNAMED;
use crate::repo::{FileKind, Repository};

#[derive(Default)]
pub struct CheckOptions {
    /// Read and verify the bytes of these packs (None: structure only).
    pub read_data: Option<Subset>,
}

#[derive(Default)]
pub struct Counters {
    pub packs_read: AtomicU64,
    pub bytes_read: AtomicU64,
    /// The size of the packs to read (0 until they are chosen, or without --read-data).
    pub bytes_to_read: AtomicU64,
    pub trees: AtomicU64,
}

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub keys: u64,
    pub index_files: u64,
    pub packs: u64,
    pub blobs: u64,
    pub snapshots: u64,
    pub trees: u64,
    pub packs_read: u64,
    pub bytes_read: u64,
    /// Two-phase prune: stored packs under a mark in force, and packs a deletion record
    /// names that are still stored.
    pub packs_marked: u64,
    pub packs_deleting: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub problems: Vec<Problem>,
    /// Not damage, but worth knowing (e.g. packs left by an interrupted backup).
    pub warnings: Vec<String>,
    pub stats: Stats,
    /// Blobs that cannot be read back (missing pack, or damage found reading data).
    #[serde(skip)]
    pub lost: HashSet<Id>,
    /// Why pack contents (trees, data) were not read: the copy is cold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl Report {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Why a blob cannot be read, as the index of the problem that says so.
type Lost = HashMap<Id, usize>;

/// Checks the repository; `repo` must have its index loaded (without the cache, so that
/// what is checked is what is stored).
pub fn check(repo: &Repository, opts: &CheckOptions, counters: &Counters) -> Result<Report> {
    let mut problems = Problems::default();
    let mut report = Report::default();
    // A cold copy cannot serve pack contents before a warm-up: trees and data are left
    // unread, everything else (keys, index, manifests, pack sizes, snapshots) is checked.
    let cold = repo.backend.is_cold();
    if cold {
        report.skipped = Some(repo.backend.cold_note("vault check --read-data"));
    }
    check_keys(repo, &mut problems, &mut report.stats)?;
    for (id, why) in &repo.damaged_index {
        problems.add("index", Some(id), why.clone());
    }
    check_manifests(repo, &mut problems)?;
    let index = repo.index();
    report.stats.index_files = index.files.len() as u64 + repo.damaged_index.len() as u64;
    report.stats.blobs = index.len() as u64;
    let stored: HashMap<Id, u64> = repo
        .backend
        .list_sized(FileKind::Data)?
        .into_iter()
        .collect();
    let mut bad_packs = HashSet::new();
    let mut lost = Lost::new();
    let marked = repo.marks.marked();
    let dying = repo.marks.deleting();
    report.stats.packs_marked = stored.keys().filter(|p| marked.contains_key(p)).count() as u64;
    report.stats.packs_deleting = stored.keys().filter(|p| dying.contains(p)).count() as u64;
    let mut deleted_listed = 0;
    for (pack_id, expected, _) in index.packs() {
        report.stats.packs += 1;
        match stored.get(&pack_id) {
            // Deleted on purpose by a prune; an index file written meanwhile (a backup
            // indexing packs it found unlisted) still names it. Its blobs count as lost,
            // so a snapshot that needs one is still reported.
            None if dying.contains(&pack_id) => {
                deleted_listed += 1;
                bad_packs.insert(pack_id);
            }
            None => {
                problems.add("pack", Some(&pack_id), "missing");
                bad_packs.insert(pack_id);
            }
            Some(&size) if size != expected => {
                let what = if size < expected {
                    format!("truncated: {size} bytes, the index says {expected}")
                } else {
                    format!("{size} bytes, the index says {expected}")
                };
                problems.add("pack", Some(&pack_id), what);
                bad_packs.insert(pack_id);
            }
            Some(_) => {}
        }
    }
    if deleted_listed > 0 {
        report.warnings.push(format!(
            "{deleted_listed} pack(s) that a prune deleted are still listed by an index file (`vault prune` or `vault repair index` drops them)"
        ));
    }
    if let Some(first) = index.unindexed.first() {
        report.warnings.push(format!(
            "{} pack(s) in no index file, e.g. {} (left by an interrupted backup, or listed by a damaged index; their headers were read instead; `vault repair index` indexes them)",
            index.unindexed.len(),
            first.pack.short()
        ));
    }
    let indexed = index.pack_ids();
    let unreadable = stored.keys().filter(|p| !indexed.contains(p)).count();
    if unreadable > 0 {
        report.warnings.push(format!(
            "{unreadable} pack(s) are in no index file and have no readable header (left over from a failed write, or damaged; `vault prune` removes them)"
        ));
    }
    // Without reading data, every blob of a missing or truncated pack counts as lost.
    for (pack_id, entry) in index.blobs_in_packs(&bad_packs) {
        if let Some(p) = problems.find("pack", &pack_id) {
            let size = stored.get(&pack_id).copied().unwrap_or(0);
            if u64::from(entry.offset) + u64::from(entry.length) > size {
                lost.insert(entry.id, p);
            }
        }
    }
    if let Some(subset) = opts.read_data.as_ref().filter(|_| !cold) {
        let mut packs: Vec<(Id, u64)> = index
            .packs()
            .filter(|(id, _, _)| stored.contains_key(id) && !bad_packs.contains(id))
            .map(|(id, size, _)| (id, size))
            .collect();
        packs.sort();
        let chosen = subset.choose(&packs);
        let size = chosen.iter().map(|(_, n)| n).sum();
        counters.bytes_to_read.store(size, Ordering::Relaxed);
        read_packs(repo, &chosen, &mut problems, &mut lost, counters);
    }
    check_snapshots(
        repo,
        &mut problems,
        &lost,
        &mut report.stats,
        counters,
        !cold,
    )?;
    report.stats.packs_read = counters.packs_read.load(Ordering::Relaxed);
    report.stats.bytes_read = counters.bytes_read.load(Ordering::Relaxed);
    report.problems = problems.into_vec();
    report.lost = lost.into_keys().collect();
    Ok(report)
}

fn check_keys(repo: &Repository, problems: &mut Problems, stats: &mut Stats) -> Result<()> {
    for (id, r) in repo.list_keys()? {
        stats.keys += 1;
        if let Err(e) = r {
            problems.add("key", Some(&id), one_line(&e));
        }
    }
    Ok(())
}

/// Reads each chosen pack whole, as many at once as the backend takes requests
/// (`Backend::connections`), and verifies its name, header and blobs.
fn read_packs(
    repo: &Repository,
    packs: &[(Id, u64)],
    problems: &mut Problems,
    lost: &mut Lost,
    counters: &Counters,
) {
    let found: Mutex<Vec<PackFinding>> = Mutex::new(Vec::new());
    let readers = repo.backend.connections().clamp(1, packs.len().max(1));
    let (tx, rx) = bounded::<Id>(readers * 2);
    std::thread::scope(|s| {
        for _ in 0..readers {
            let rx = rx.clone();
            let found = &found;
            s.spawn(move || {
                for id in rx {
                    let f = read_pack(repo, &id, counters);
                    if !f.is_empty() {
                        found.lock().expect("poisoned").extend(f);
                    }
                }
            });
        }
        for (id, _) in packs {
            let _ = tx.send(*id);
        }
        drop(tx);
    });
    let mut found = found.into_inner().expect("poisoned");
    found.sort_by_key(|f| (f.pack, f.blob.map(|b| b.id)));
    for f in found {
        problems.add("pack", Some(&f.pack), f.pack_what);
        if let Some(b) = f.blob {
            let what = format!("in pack {}: {}", f.pack.short(), f.blob_what);
            let bi = problems.add(&format!("{} blob", b.blob_type.name()), Some(&b.id), what);
            lost.insert(b.id, bi);
        }
    }
}

/// One thing wrong with one pack: the pack itself, or one of its blobs.
struct PackFinding {
    pack: Id,
    pack_what: String,
    blob: Option<BlobEntry>,
    blob_what: String,
}

fn read_pack(repo: &Repository, id: &Id, counters: &Counters) -> Vec<PackFinding> {
    let finding = |what: String, blob: Option<BlobEntry>, blob_what: String| PackFinding {
        pack: *id,
        pack_what: what,
        blob,
        blob_what,
    };
    let bytes = match repo.backend.read(&FileKind::Data.path(id)) {
        Ok(b) => b,
        Err(e) => {
            return vec![finding(
                format!("unreadable: {}", one_line(&e)),
                None,
                String::new(),
            )];
        }
    };
    counters.packs_read.fetch_add(1, Ordering::Relaxed);
    counters
        .bytes_read
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let mut out = Vec::new();
    let name_ok = Id::of_stored(&bytes) == *id;
    let damaged = "content does not match its name (damaged)".to_string();
    if !name_ok {
        out.push(finding(damaged.clone(), None, String::new()));
    }
    let header = parse_header(repo, &bytes);
    let entries = match header {
        Ok(h) => h,
        Err(e) => {
            out.push(finding(
                format!("unreadable header: {e}"),
                None,
                String::new(),
            ));
            // The index still says where the blobs are; check each of them from there.
            let mut one = HashSet::new();
            one.insert(*id);
            let mut entries: Vec<BlobEntry> = repo
                .index()
                .blobs_in_packs(&one)
                .into_iter()
                .map(|(_, e)| e)
                .collect();
            entries.sort_by_key(|e| (e.offset, e.inner));
            entries
        }
    };
    let index = repo.index();
    let mut opener = pack::BlobOpener::default();
    for e in &entries {
        let end = e.offset as usize + e.length as usize;
        let r = match bytes.get(e.offset as usize..end) {
            Some(stored) => opener
                .open(&repo.keys, e, stored)
                .map(|_| ())
                .map_err(|x| x.to_string()),
            None => Err("past the end of the pack (truncated)".to_string()),
        };
        if let Err(why) = r {
            let what = if name_ok {
                "holds a bad blob".to_string()
            } else {
                damaged.clone()
            };
            out.push(finding(what, Some(*e), why));
        } else if index.get(&e.id).is_none() {
            out.push(finding(
                "its header lists a blob the index does not (`vault repair index` adds it)".into(),
                None,
                String::new(),
            ));
        }
    }
    out
}

fn parse_header(repo: &Repository, bytes: &[u8]) -> Result<Vec<BlobEntry>> {
    if bytes.len() < pack::TRAILER_LEN {
        return Err(anyhow!("truncated ({} bytes)", bytes.len()));
    }
    let tstart = bytes.len() - pack::TRAILER_LEN;
    let hlen = pack::parse_trailer(&bytes[tstart..])? as usize;
    let hstart = tstart
        .checked_sub(hlen)
        .ok_or_else(|| anyhow!("header length {hlen} exceeds the pack"))?;
    Ok(pack::open_header(
        &repo.keys,
        &bytes[hstart..tstart],
        hstart as u64,
    )?)
}

/// Walks every snapshot's trees; each tree is walked once unless it holds damage, in which
/// case each snapshot that reaches it gets its affected paths.
fn check_snapshots(
    repo: &Repository,
    problems: &mut Problems,
    lost: &Lost,
    stats: &mut Stats,
    counters: &Counters,
    walk_trees: bool,
) -> Result<()> {
    let mut clean: HashMap<Id, bool> = HashMap::new();
    let mut ids = repo.backend.list(FileKind::Snapshot)?;
    ids.sort();
    for id in ids {
        stats.snapshots += 1;
        let snap = match load_snapshot(repo, &id, problems) {
            Some(s) if walk_trees => s,
            _ => continue,
        };
        let mut ctx = TreeCheck {
            repo,
            index: repo.index(),
            problems,
            lost,
            clean: &mut clean,
            snap: id,
            counters,
        };
        ctx.tree(&snap.tree, Path::new("/"));
    }
    stats.trees = clean.len() as u64;
    Ok(())
}

/// Reads a snapshot, reporting a name that does not match its bytes: as misnamed
/// (swapped or forged) when they are authentic, whose trees are then still checked (every
/// other command refuses it), else as damaged.
fn load_snapshot(repo: &Repository, id: &Id, problems: &mut Problems) -> Option<Snapshot> {
    let bytes = match repo.backend.read(&FileKind::Snapshot.path(id)) {
        Ok(b) => b,
        Err(e) => {
            problems.add(
                "snapshot",
                Some(id),
                format!("unreadable: {}", one_line(&e)),
            );
            return None;
        }
    };
    let named = Id::of_stored(&bytes) == *id;
    match Snapshot::open(&repo.keys, &bytes) {
        Ok(s) => {
            if !named {
                problems.add("snapshot", Some(id), MISNAMED);
            }
            Some(s)
        }
        Err(e) => {
            if !named {
                problems.add(
                    "snapshot",
                    Some(id),
                    "content does not match its name (damaged)",
                );
            }
            problems.add("snapshot", Some(id), e.to_string());
            None
        }
    }
}

/// Manifests name the index files that were written; one that is gone was lost.
fn check_manifests(repo: &Repository, problems: &mut Problems) -> Result<()> {
    let present: HashSet<Id> = repo.backend.list(FileKind::Index)?.into_iter().collect();
    for id in repo.backend.list(FileKind::Manifest)? {
        let m = repo
            .backend
            .read(&FileKind::Manifest.path(&id))
            .and_then(|b| Ok(Manifest::decode(&b)?));
        match m {
            Ok(m) if !present.contains(&m.index.0) => {
                problems.add("index", Some(&m.index.0), "missing (its manifest lists it)");
            }
            Ok(_) => {}
            Err(e) => {
                problems.add("manifest", Some(&id), one_line(&e));
            }
        }
    }
    Ok(())
}

/// One tree being checked: the nodes still to check, where its path ends, and whether
/// everything checked below it so far was sound.
struct CheckFrame {
    id: Id,
    nodes: std::vec::IntoIter<Node>,
    mark: usize,
    ok: bool,
}

struct TreeCheck<'a> {
    repo: &'a Repository,
    index: std::sync::Arc<crate::repo::index::MasterIndex>,
    problems: &'a mut Problems,
    lost: &'a Lost,
    /// Trees already walked, and whether everything below them was sound.
    clean: &'a mut HashMap<Id, bool>,
    snap: Id,
    counters: &'a Counters,
}

impl TreeCheck<'_> {
    fn place(&self, path: &Path) -> String {
        format!("snapshot {}: {}", self.snap.short(), path.display())
    }

    /// Records that `blob` is unusable at `path`; returns false for convenience.
    fn blob_problem(&mut self, blob_type: BlobType, id: &Id, path: &Path) -> bool {
        let i = match self.lost.get(id) {
            Some(&i) => i,
            None => self.problems.add(
                &format!("{} blob", blob_type.name()),
                Some(id),
                "missing (referenced, but in no index)",
            ),
        };
        let place = self.place(path);
        self.problems.affect(i, place);
        false
    }

    fn usable(&self, id: &Id) -> bool {
        self.index.contains(id) && !self.lost.contains_key(id)
    }

    /// Checks tree `id` at `path`; returns whether it and everything below is sound.
    /// The walk keeps its own stack (one loaded tree per level) instead of recursing, so
    /// any depth works.
    fn tree(&mut self, id: &Id, path: &Path) -> bool {
        let mut path = walk::SnapPath::new(path);
        let mut stack: Vec<CheckFrame> = Vec::new();
        if let Some(ok) = self.enter(id, &path, path.mark(), &mut stack) {
            return ok;
        }
        let mut root_ok = true;
        while let Some(frame) = stack.last_mut() {
            let Some(node) = frame.nodes.next() else {
                let done = stack.pop().expect("a frame");
                path.cut(done.mark);
                self.clean.insert(done.id, done.ok);
                match stack.last_mut() {
                    Some(parent) => parent.ok &= done.ok,
                    None => root_ok = done.ok,
                }
                continue;
            };
            if !walk::safe_name(&node.name.0) {
                let i = self.problems.add(
                    "tree blob",
                    Some(&frame.id),
                    format!("holds an unsafe name {:?}", node.name.lossy()),
                );
                frame.ok = false;
                let place = self.place(path.as_path());
                self.problems.affect(i, place);
                continue;
            }
            let mark = path.push(&node.name.0);
            let ok = match (node.kind, node.subtree) {
                (NodeType::Dir, Some(sub)) => match self.enter(&sub, &path, mark, &mut stack) {
                    Some(ok) => ok,
                    None => continue, // its frame reports to this one when done
                },
                _ => self.node(&node, path.as_path()),
            };
            path.cut(mark);
            if let Some(frame) = stack.last_mut() {
                frame.ok &= ok;
            }
        }
        root_ok
    }

    /// Starts checking tree `id` at `path`: its result when known at once (already
    /// checked clean, missing, unreadable), or None when its frame was stacked.
    fn enter(
        &mut self,
        id: &Id,
        path: &walk::SnapPath,
        mark: usize,
        stack: &mut Vec<CheckFrame>,
    ) -> Option<bool> {
        if self.clean.get(id) == Some(&true) {
            return Some(true);
        }
        if !self.usable(id) {
            return Some(self.blob_problem(BlobType::Tree, id, path.as_path()));
        }
        self.counters.trees.fetch_add(1, Ordering::Relaxed);
        match self.repo.load_tree(id) {
            Ok(t) => {
                stack.push(CheckFrame {
                    id: *id,
                    nodes: t.nodes.into_iter(),
                    mark,
                    ok: true,
                });
                None
            }
            Err(e) => {
                let i = self.problems.add("tree blob", Some(id), one_line(&e));
                let place = self.place(path.as_path());
                self.problems.affect(i, place);
                self.clean.insert(*id, false);
                Some(false)
            }
        }
    }

    fn node(&mut self, node: &Node, path: &Path) -> bool {
        match (node.kind, node.subtree) {
            (NodeType::Dir, Some(sub)) => self.tree(&sub, path),
            (NodeType::Dir, None) => {
                let i = self
                    .problems
                    .add("tree", None, "a directory without a subtree");
                let place = self.place(path);
                self.problems.affect(i, place);
                false
            }
            (NodeType::File, _) => {
                let mut ok = true;
                for b in &node.content {
                    if !self.usable(b) {
                        ok = self.blob_problem(BlobType::Data, b, path);
                    }
                }
                ok
            }
            _ => true,
        }
    }
}
