//! `vault copy --from`: snapshots of another repository, which has its own key, backed up
//! into this one. The source's trees are walked instead of a file system, and each
//! file's data (its blobs read back to back) goes through this repository's chunker,
//! dedup and sealers as a backup's would: blob ids and chunk boundaries are keyed per
//! repository, so nothing stored in the source can be reused as it is.
//!
//! Each snapshot is published on its own, after its packs and index (and the format-3
//! confirmation a backup does), so a copy killed at any instant leaves only whole
//! snapshots, and one run again skips those already here (same time, host and paths)
//! and re-reads only what the lost run had not indexed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::sealers::{self, Chunk};
use super::{Counters, Shared, Warn, finalizer, readers};
use crate::error::VaultError;
use crate::format::Id;
use crate::format::pack::BlobType;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Node, NodeType, Tree};
use crate::ops::confirm::{self, Confirmed, Outcome};
use crate::ops::handoff::Batcher;
use crate::repo::Repository;

/// What happened to one source snapshot.
#[derive(Debug, Serialize)]
pub struct Copied {
    pub source: Id,
    /// This repository's snapshot: the new copy, or the one already here; None in a dry
    /// run for one that would be copied.
    pub copy: Option<Id>,
    /// Whether a snapshot with the same time, host and paths was here already.
    pub already: bool,
    pub time: String,
    pub host: String,
    pub paths: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct CopyResult {
    pub snapshots: Vec<Copied>,
    /// Files whose data was read from the source (others were the same as one read).
    pub files_read: u64,
    /// Files left out: their data could not be read from the source.
    pub errors: u64,
    pub bytes_added: u64,
    pub bytes_stored: u64,
    pub blobs_added: u64,
    pub confirmed: Confirmed,
}

/// The same snapshot, as far as a copy can tell: its time, host and paths.
type Likeness = (i128, String, Vec<String>);

fn likeness(s: &Snapshot) -> Option<Likeness> {
    let t = s.timestamp().ok()?.as_nanosecond();
    Some((t, s.host.clone(), s.paths.clone()))
}

/// Copies `snaps` (from `src`, oldest first) into `dest`, skipping those `dest` holds
/// already. `held` is asked before each snapshot is published (the caller's lock).
pub fn copy(
    dest: &mut Repository,
    src: &Repository,
    snaps: &[(Id, Snapshot)],
    dry_run: bool,
    progress: (Arc<Counters>, Warn),
    held: &dyn Fn() -> Result<()>,
) -> Result<CopyResult> {
    if dest.config.id == src.config.id {
        return Err(VaultError::Usage(
            "vault copy: --from names this repository (or a mirror of it); use sync for mirrors"
                .into(),
        )
        .into());
    }
    src.require_full("vault copy --from (reading another host's trees)")?;
    let (counters, warn) = progress;
    let present = present(dest)?;
    let mut result = CopyResult::default();
    let mut todo = Vec::new();
    for (id, snap) in snaps {
        let here = likeness(snap).and_then(|l| present.get(&l).copied());
        result.snapshots.push(Copied {
            source: *id,
            copy: here,
            already: here.is_some(),
            time: snap.time.clone(),
            host: snap.host.clone(),
            paths: snap.paths.clone(),
        });
        if here.is_none() {
            todo.push(result.snapshots.len() - 1);
        }
    }
    let total: u64 = todo.iter().map(|&i| snaps[i].1.summary.bytes_total).sum();
    counters.to_read.store(total, Ordering::Relaxed);
    counters.scanned.store(true, Ordering::Relaxed);
    if dry_run {
        return Ok(result);
    }
    let mut run = Run {
        src,
        counters,
        warn,
        memo: Memo::default(),
        claimed: HashSet::new(),
    };
    for i in todo {
        let (id, snap) = &snaps[i];
        let copies: HashMap<Id, Id> = result
            .snapshots
            .iter()
            .filter_map(|c| Some((c.source, c.copy?)))
            .collect();
        let parent = snap.parent.and_then(|p| copies.get(&p).copied());
        let new = run.snapshot(dest, id, snap, parent, &mut result, held)?;
        result.snapshots[i].copy = Some(new);
    }
    Ok(result)
}

/// The snapshots `dest` holds, by likeness.
fn present(dest: &Repository) -> Result<HashMap<Likeness, Id>> {
    let mut out = HashMap::new();
    for (id, snap) in dest.all_snapshots()? {
        if let Some(l) = snap.ok().as_ref().and_then(likeness) {
            out.insert(l, id);
        }
    }
    Ok(out)
}

/// What one run has done so far, which later snapshots reuse.
#[derive(Default)]
struct Memo {
    /// This repository's tree for a source tree, by the host it was written as (in
    /// format 4 each host's trees are sealed under its own key), and its files' bytes.
    trees: HashMap<(String, Id), Done>,
    /// This repository's blobs for a source file's data, by its blob list's digest.
    contents: HashMap<[u8; 32], Vec<Id>>,
    contents_ids: usize,
}

/// Blob ids the content memo holds at most (32 bytes each): a file's data seen again
/// past this is read again, which costs time, not space.
const MEMO_IDS: usize = 1 << 21;

struct Run<'a> {
    src: &'a Repository,
    counters: Arc<Counters>,
    warn: Warn,
    memo: Memo,
    /// Blobs written by this run's earlier snapshots (indexed, but not in the index
    /// `dest` loaded).
    claimed: HashSet<Id>,
}

impl Run<'_> {
    /// Copies one snapshot's tree, then publishes its copy; the copy's id.
    fn snapshot(
        &mut self,
        dest: &mut Repository,
        id: &Id,
        snap: &Snapshot,
        parent: Option<Id>,
        result: &mut CopyResult,
        held: &dyn Fn() -> Result<()>,
    ) -> Result<Id> {
        dest.write_as(&snap.host)?;
        let known: BTreeSet<Id> = dest.marks.deletions.keys().copied().collect();
        let mut shared = Shared::new(dest, false, self.counters.clone(), self.warn.clone())?;
        shared.dedup.claimed = std::sync::Mutex::new(std::mem::take(&mut self.claimed));
        let shared = Arc::new(shared);
        let root = self.tree_through_sealers(&shared, &snap.host, snap.tree, id)?;
        let (stats, claimed) = finalizer::finish_keeping_claims(shared)?;
        self.claimed = claimed;
        result.bytes_added += stats.bytes_added;
        result.bytes_stored += stats.bytes_stored;
        result.blobs_added += stats.blobs_added;
        result.files_read += stats.files_new;
        result.errors += stats.errors;
        let copy = Snapshot {
            tree: root,
            parent,
            original: Some(*id),
            ..snap.clone()
        };
        held()?;
        match confirm::publish(dest, &copy, &known, &mut result.confirmed)? {
            Outcome::Published(new) => Ok(new),
            Outcome::Lost(n) => bail!(
                "{n} blob(s) the copy of snapshot {} references were deleted by a prune while it ran; nothing was published for it: run the copy again",
                id.short()
            ),
        }
    }

    /// Walks the source tree `root` with sealer threads beside it; the new root tree.
    fn tree_through_sealers(
        &mut self,
        sh: &Arc<Shared>,
        host: &str,
        root: Id,
        snap: &Id,
    ) -> Result<Id> {
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8);
        let (tx, handles) = sealers::start(sh, workers);
        let mut out = sealers::batcher(tx);
        let walked = Walk {
            run: self,
            sh,
            host,
            out: &mut out,
        }
        .tree(root)
        .with_context(|| format!("copying snapshot {}", snap.short()));
        let flushed = out.flush();
        // The batcher holds the last sender: the sealers end once it is gone.
        drop(out);
        let joined = sealers::join(handles);
        let root = walked?;
        flushed?;
        joined?;
        Ok(root)
    }
}

/// A tree's copy and the bytes of the files below it.
type Done = (Id, u64);

struct Frame {
    src: Id,
    bytes: u64,
    path: PathBuf,
    todo: std::vec::IntoIter<Node>,
    done: Vec<Node>,
    waiting: Option<Node>,
}

struct Walk<'a, 'r> {
    run: &'a mut Run<'r>,
    sh: &'a Shared,
    host: &'a str,
    out: &'a mut Batcher<Chunk>,
}

impl Walk<'_, '_> {
    /// The copy of source tree `root`. Walks with its own stack (a tree per level), so
    /// any depth works.
    fn tree(&mut self, root: Id) -> Result<Id> {
        let mut stack = Vec::new();
        if let Some((id, _)) = self.start(root, Path::new("/"), &mut stack)? {
            return Ok(id);
        }
        loop {
            let frame = stack.last_mut().expect("a frame until the root is done");
            let Some(mut node) = frame.todo.next() else {
                let f = stack.pop().expect("a frame");
                let done = self.finish(f)?;
                match stack.last_mut() {
                    Some(parent) => adopt(parent, done),
                    None => return Ok(done.0),
                }
                continue;
            };
            let path = frame.path.join(std::ffi::OsStr::from_bytes(&node.name.0));
            match (node.kind, node.subtree) {
                (NodeType::Dir, Some(sub)) => {
                    frame.waiting = Some(node);
                    if let Some(done) = self.start(sub, &path, &mut stack)? {
                        adopt(stack.last_mut().expect("the parent"), done);
                    }
                }
                (NodeType::File, _) if !node.content.is_empty() => {
                    frame.bytes += node.size;
                    if self.file(&mut node, &path) {
                        frame.done.push(node);
                    }
                }
                _ => frame.done.push(node),
            }
        }
    }

    /// Pushes a frame for source tree `id`, or gives its copy when this run made it (a
    /// tree copied before counts as read, for the progress total, which counts every
    /// snapshot's files).
    fn start(&mut self, id: Id, path: &Path, stack: &mut Vec<Frame>) -> Result<Option<Done>> {
        if let Some(&done) = self.run.memo.trees.get(&(self.host.to_string(), id)) {
            let c = &self.run.counters;
            c.bytes_read.fetch_add(done.1, Ordering::Relaxed);
            return Ok(Some(done));
        }
        let tree = self.run.src.load_tree(&id).with_context(|| {
            format!("{}: source tree {} unreadable", path.display(), id.short())
        })?;
        stack.push(Frame {
            src: id,
            bytes: 0,
            path: path.to_path_buf(),
            done: Vec::with_capacity(tree.nodes.len()),
            todo: tree.nodes.into_iter(),
            waiting: None,
        });
        Ok(None)
    }

    fn finish(&mut self, f: Frame) -> Result<Done> {
        let id = finalizer::store_tree(self.sh, Tree { nodes: f.done }, self.out)?;
        let done = (id, f.bytes);
        self.run
            .memo
            .trees
            .insert((self.host.to_string(), f.src), done);
        Ok(done)
    }

    /// Gives `node` this repository's blobs for its data; false (with a warning) when
    /// the source's could not be read, and the file is left out.
    fn file(&mut self, node: &mut Node, path: &Path) -> bool {
        match self.content(node) {
            Ok(ids) => {
                node.content = ids;
                true
            }
            Err(e) => {
                self.sh.stat(|s| s.errors += 1);
                (self.sh.warn)(format!(
                    "{}: cannot read from the source, left out of the copy: {}",
                    path.display(),
                    crate::error::one_line(&e)
                ));
                false
            }
        }
    }

    fn content(&mut self, node: &Node) -> Result<Vec<Id>> {
        let digest = {
            let mut h = blake3::Hasher::new();
            for id in &node.content {
                h.update(&id.0);
            }
            *h.finalize().as_bytes()
        };
        let stored = node
            .checked_extents()
            .map_or(node.size, |e| e.iter().map(|[_, len]| len).sum::<u64>());
        if let Some(ids) = self.run.memo.contents.get(&digest) {
            self.run
                .counters
                .bytes_read
                .fetch_add(stored, Ordering::Relaxed);
            return Ok(ids.clone());
        }
        let mut blobs = Blobs {
            src: self.run.src,
            ids: node.content.iter(),
            buf: Vec::new(),
            at: 0,
        };
        let (ids, read) = readers::chunk_stream(self.sh, &mut blobs, self.out)?;
        if read != stored {
            bail!("its blobs hold {read} bytes where its node says {stored}");
        }
        self.sh.stat(|s| s.files_new += 1);
        let memo = &mut self.run.memo;
        if memo.contents_ids + ids.len() > MEMO_IDS {
            memo.contents.clear();
            memo.contents_ids = 0;
        }
        memo.contents_ids += ids.len();
        memo.contents.insert(digest, ids.clone());
        Ok(ids)
    }
}

/// Gives the waiting directory node of `parent` its copied subtree.
fn adopt(parent: &mut Frame, (id, bytes): Done) {
    if let Some(mut node) = parent.waiting.take() {
        node.subtree = Some(id);
        parent.bytes += bytes;
        parent.done.push(node);
    }
}

/// A source file's data: its blobs read one at a time, back to back.
struct Blobs<'a> {
    src: &'a Repository,
    ids: std::slice::Iter<'a, Id>,
    buf: Vec<u8>,
    at: usize,
}

impl Read for Blobs<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.buf.len() {
            let Some(id) = self.ids.next() else {
                return Ok(0);
            };
            self.buf = self
                .src
                .read_blob(BlobType::Data, id)
                .map_err(|e| std::io::Error::other(format!("blob {}: {e:#}", id.short())))?;
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
