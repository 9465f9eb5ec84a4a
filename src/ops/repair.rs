//! `vault repair index` rebuilds the index from the packs' own headers; `vault repair
//! snapshots` writes new snapshots without the files that can no longer be restored.
//! Both only add objects until the end, so a kill at any point leaves a valid repository.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Result, anyhow};
use crossbeam_channel::bounded;
use serde::Serialize;

use super::check::{self, CheckOptions};
use super::subset::Subset;
use crate::error::one_line;
use crate::format::Id;
use crate::format::index::PackBlobs;
use crate::format::pack::{BlobType, seal_blob};
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Node, NodeType, Tree};
use crate::repo::index::replace_index;
use crate::repo::packer::Packer;
use crate::repo::{FileKind, Repository};

#[derive(Debug, Default, Serialize)]
pub struct RepairIndexResult {
    pub packs: u64,
    pub blobs: u64,
    pub index_files_written: u64,
    pub index_files_removed: u64,
    /// Packs whose header could not be read, kept from the old index when it knew them.
    pub unreadable_headers: Vec<String>,
}

/// Rebuilds the index from every pack's header. The caller holds the exclusive lock;
/// `before_publish` runs before the first index file is written (the caller checks there
/// that its lock is still held).
pub fn repair_index(
    repo: &Repository,
    before_publish: &dyn Fn() -> Result<()>,
) -> Result<RepairIndexResult> {
    let old: Vec<Id> = repo.backend.list(FileKind::Index)?;
    let mut packs: Vec<Id> = repo.backend.list(FileKind::Data)?;
    packs.sort();
    let mut result = RepairIndexResult::default();
    let (mut rebuilt, failed) = read_headers(repo, &packs);
    // A pack whose header is unreadable keeps the entries the old index had for it.
    let failed_ids: HashSet<Id> = failed.iter().map(|(id, _)| *id).collect();
    let mut from_old: HashMap<Id, Vec<_>> = HashMap::new();
    for (pack, entry) in repo.index().blobs_in_packs(&failed_ids) {
        from_old.entry(pack).or_default().push(entry);
    }
    for (id, why) in failed {
        let kept = from_old.remove(&id);
        let note = if kept.is_some() {
            "kept from the old index"
        } else {
            "its blobs are lost"
        };
        result
            .unreadable_headers
            .push(format!("pack {}: {why} ({note})", id.short()));
        if let Some(mut blobs) = kept {
            blobs.sort_by_key(|e| e.offset);
            rebuilt.push(PackBlobs { pack: id, blobs });
        }
    }
    rebuilt.sort_by_key(|p| p.pack);
    result.packs = rebuilt.len() as u64;
    result.blobs = rebuilt.iter().map(|p| p.blobs.len() as u64).sum();
    before_publish()?;
    let (written, removed) = replace_index(&repo.backend, &repo.keys, rebuilt, &old)?;
    result.index_files_written = written;
    result.index_files_removed = removed;
    Ok(result)
}

type Headers = (Vec<PackBlobs>, Vec<(Id, String)>);

fn read_headers(repo: &Repository, packs: &[Id]) -> Headers {
    let out = Mutex::new((Vec::new(), Vec::new()));
    // Headers are small: as many reads at once as the backend takes.
    let readers = repo.backend.connections().clamp(1, packs.len().max(1));
    let (tx, rx) = bounded::<Id>(readers * 2);
    std::thread::scope(|s| {
        for _ in 0..readers {
            let (rx, out) = (rx.clone(), &out);
            s.spawn(move || {
                for id in rx {
                    let r = repo.read_pack_header(&id);
                    let mut o = out.lock().expect("poisoned");
                    match r {
                        Ok(blobs) => o.0.push(PackBlobs { pack: id, blobs }),
                        Err(e) => o.1.push((id, one_line(&e))),
                    }
                }
            });
        }
        for id in packs {
            let _ = tx.send(*id);
        }
        drop(tx);
    });
    out.into_inner().expect("poisoned")
}

/// One type for programs and the command line (clap derives its flags under the `cli`
/// feature).
#[derive(Debug, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RepairSnapshotsOptions {
    /// Read all data to find damaged blobs, not only missing ones
    #[cfg_attr(feature = "cli", arg(long))]
    pub read_data: bool,
    /// Show what would be dropped; write nothing
    #[cfg_attr(feature = "cli", arg(long, short = 'n'))]
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct RepairedSnapshot {
    pub original: String,
    /// The new snapshot (None in a dry run).
    pub repaired: Option<String>,
    /// What was dropped: files with lost content, directories whose listing was lost.
    pub dropped: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct RepairSnapshotsResult {
    pub snapshots_checked: u64,
    pub repaired: Vec<RepairedSnapshot>,
    /// Snapshots that cannot be read at all (nothing to rewrite from).
    pub unreadable: Vec<String>,
}

pub const REPAIRED_TAG: &str = "repaired";

/// Writes, for every snapshot that references lost blobs, a new snapshot without the
/// affected files (a directory whose tree is lost becomes empty). The new snapshot is
/// tagged `repaired` and names the original, which stays until the user forgets it.
pub fn repair_snapshots(
    repo: &Repository,
    opts: &RepairSnapshotsOptions,
) -> Result<RepairSnapshotsResult> {
    let check_opts = CheckOptions {
        read_data: opts.read_data.then_some(Subset::All),
    };
    let report = check::check(repo, &check_opts, &check::Counters::default())?;
    let packer = Packer::new(
        &repo.backend,
        &repo.keys,
        repo.config.pack_size,
        opts.dry_run,
    )
    .caching_trees(repo.cache.clone());
    let mut rw = Rewriter {
        repo,
        lost: &report.lost,
        packer: &packer,
        memo: HashMap::new(),
        dropped: Vec::new(),
        written: HashSet::new(),
    };
    let mut result = RepairSnapshotsResult::default();
    let mut pending: Vec<(Id, Snapshot, Id, Vec<String>)> = Vec::new();
    for (id, snap) in repo.snapshots()? {
        result.snapshots_checked += 1;
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                result.unreadable.push(one_line(&e));
                continue;
            }
        };
        rw.dropped.clear();
        let new_root = rw.tree(&snap.tree, Path::new("/"))?;
        if new_root != snap.tree {
            pending.push((id, snap, new_root, std::mem::take(&mut rw.dropped)));
        }
    }
    // Trees first, then the snapshots that point at them.
    packer.finish()?;
    for (id, snap, root, dropped) in pending {
        let repaired = if opts.dry_run {
            None
        } else {
            let mut new = snap.clone();
            new.tree = root;
            new.original = Some(id);
            new.time = snap.time.clone();
            if !new.tags.iter().any(|t| t == REPAIRED_TAG) {
                new.tags.push(REPAIRED_TAG.to_string());
            }
            Some(repo.save_snapshot(&new)?.to_hex())
        };
        result.repaired.push(RepairedSnapshot {
            original: id.to_hex(),
            repaired,
            dropped,
        });
    }
    Ok(result)
}

/// One tree being rewritten: its nodes still to look at, those kept, what was dropped
/// below it, and the directory node waiting for its rewritten subtree.
struct RewriteFrame {
    id: Id,
    todo: std::vec::IntoIter<Node>,
    kept: Vec<Node>,
    dropped: Vec<PathBuf>,
    waiting: Option<Node>,
}

impl RewriteFrame {
    /// Takes the result of the subtree of the waiting directory node.
    fn adopt(&mut self, (new, below): (Id, Vec<PathBuf>)) {
        let Some(mut node) = self.waiting.take() else {
            return;
        };
        let name = PathBuf::from(std::ffi::OsStr::from_bytes(&node.name.0));
        self.dropped.extend(below.into_iter().map(|b| name.join(b)));
        node.subtree = Some(new);
        self.kept.push(node);
    }
}

struct Rewriter<'a> {
    repo: &'a Repository,
    lost: &'a HashSet<Id>,
    packer: &'a Packer,
    /// Old tree id to rewritten tree id and what it dropped.
    memo: HashMap<Id, (Id, Vec<PathBuf>)>,
    /// What the current snapshot lost, as paths.
    dropped: Vec<String>,
    written: HashSet<Id>,
}

impl Rewriter<'_> {
    fn usable(&self, id: &Id) -> bool {
        self.repo.index().contains(id) && !self.lost.contains(id)
    }

    /// Returns the id of `id` rewritten without lost content (the same id if intact) and
    /// records what was dropped under `path`.
    fn tree(&mut self, id: &Id, path: &Path) -> Result<Id> {
        let (new, dropped) = self.rewrite(id)?;
        self.dropped.extend(
            dropped
                .iter()
                .map(|d| format!("{}", path.join(d).display())),
        );
        Ok(new)
    }

    /// The rewritten tree and the paths dropped below it (relative), memoized so that a
    /// subtree shared by many snapshots is rewritten once and reported for each. The walk
    /// keeps its own stack (one tree per level) instead of recursing, so any depth works.
    fn rewrite(&mut self, id: &Id) -> Result<(Id, Vec<PathBuf>)> {
        let mut stack: Vec<RewriteFrame> = Vec::new();
        if let Some(done) = self.start(id, &mut stack)? {
            return Ok(done);
        }
        loop {
            let frame = stack.last_mut().expect("a frame until the root is done");
            let Some(node) = frame.todo.next() else {
                let done = stack.pop().expect("a frame");
                let result = self.finish(done)?;
                match stack.last_mut() {
                    Some(parent) => parent.adopt(result),
                    None => return Ok(result),
                }
                continue;
            };
            match (node.kind, node.subtree) {
                (NodeType::Dir, Some(sub)) => {
                    frame.waiting = Some(node);
                    if let Some(result) = self.start(&sub, &mut stack)? {
                        stack.last_mut().expect("the parent").adopt(result);
                    }
                }
                (NodeType::File, _) if !node.content.iter().all(|b| self.usable(b)) => {
                    frame
                        .dropped
                        .push(PathBuf::from(std::ffi::OsStr::from_bytes(&node.name.0)));
                }
                _ => frame.kept.push(node),
            }
        }
    }

    /// The result for tree `id` when known at once (memoized, or unreadable), or None when
    /// its frame was stacked.
    fn start(
        &mut self,
        id: &Id,
        stack: &mut Vec<RewriteFrame>,
    ) -> Result<Option<(Id, Vec<PathBuf>)>> {
        if let Some(done) = self.memo.get(id) {
            return Ok(Some(done.clone()));
        }
        let loaded = if self.usable(id) {
            self.repo.load_tree(id).map_err(|e| one_line(&e))
        } else {
            Err("tree blob lost".to_string())
        };
        match loaded {
            Ok(tree) => {
                stack.push(RewriteFrame {
                    id: *id,
                    kept: Vec::with_capacity(tree.nodes.len()),
                    todo: tree.nodes.into_iter(),
                    dropped: Vec::new(),
                    waiting: None,
                });
                Ok(None)
            }
            Err(why) => {
                let empty = self.save(Tree::default())?;
                let done = (
                    empty,
                    vec![PathBuf::from(format!("(directory listing lost: {why})"))],
                );
                self.memo.insert(*id, done.clone());
                Ok(Some(done))
            }
        }
    }

    /// Saves a finished tree if anything below it was dropped, and memoizes the result.
    fn finish(&mut self, f: RewriteFrame) -> Result<(Id, Vec<PathBuf>)> {
        let new = if f.dropped.is_empty() {
            f.id
        } else {
            self.save(Tree { nodes: f.kept })?
        };
        self.memo.insert(f.id, (new, f.dropped.clone()));
        Ok((new, f.dropped))
    }

    fn save(&mut self, tree: Tree) -> Result<Id> {
        Ok(save_tree(self.repo, self.packer, &mut self.written, tree)?.0)
    }
}

/// Hands `tree` to `packer` unless the index or `written` (what this run added) has it
/// already; its id, and whether it was added.
pub(crate) fn save_tree(
    repo: &Repository,
    packer: &Packer,
    written: &mut HashSet<Id>,
    mut tree: Tree,
) -> Result<(Id, bool)> {
    let bytes = tree.encode();
    let id = repo.keys.blob_id(BlobType::Tree as u8, &bytes);
    if repo.index().contains(&id) || !written.insert(id) {
        return Ok((id, false));
    }
    let level = repo.config.compression_level;
    packer
        .add(seal_blob(&repo.keys, BlobType::Tree, id, &bytes, level))
        .map_err(|e| anyhow!(e).context("writing a rewritten tree"))?;
    Ok((id, true))
}
