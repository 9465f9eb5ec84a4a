//! The finalizer: each walked directory's tree, once the readers have returned its
//! files' nodes, encoded and queued for sealing (post-order, so a tree's subtrees are
//! known); then the last packs and index, and the snapshot, published once everything it
//! references is confirmed live (format 3, see `confirm`).
//!
//! The crash-safe order is the packer's and `confirm`'s: packs are uploaded before the
//! index files that list them (flushed as the packs accumulate, and at the end by
//! [`finish`]), and the snapshot is written only after [`publish`] has confirmed them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::Receiver;

use super::scanner::{self, Found, Scanned};
use super::sealers::Chunk;
use super::{BackupOptions, Shared};
use crate::format::Id;
use crate::format::pack::BlobType;
use crate::format::snapshot::{SNAPSHOT_VERSION, Snapshot, Summary};
use crate::format::tree::{LazyTree, Node, Tree};
use crate::ops::confirm::{self, Confirmed, Outcome};
use crate::ops::handoff::{Batcher, Gather};
use crate::repo::Repository;
use crate::repo::repository::username;

/// A walked directory, for the finalizer.
pub(super) struct DirTask {
    pub job: usize,
    /// As walked: see [`Found`].
    pub entries: Vec<Scanned>,
    pub files: Arc<Gather<Node>>,
    /// The directory's tree in the parent snapshot, while nothing in it differs from it
    /// but maybe its subdirectories' trees, which the finalizer compares.
    pub same_as: Option<Id>,
    /// Where the finalizer finds the nodes of the `Same` entries: see
    /// [`scanner::Listing`].
    pub old_tree: Option<Id>,
    pub old_nodes: Option<LazyTree>,
}

/// Builds tree blobs in post-order; returns the tree id of each job not yet consumed by
/// its parent (at the end: only the root).
pub(super) fn run(
    rx: Receiver<DirTask>,
    mut chunks: Batcher<Chunk>,
    sh: Arc<Shared>,
    repo: &Repository,
) -> Result<HashMap<usize, Id>> {
    let mut done: HashMap<usize, Id> = HashMap::new();
    for mut task in rx {
        let same_as = settle(&mut task, &mut done)?;
        // An unchanged directory is its old tree, already stored: nothing to encode.
        if let Some(id) = same_as.filter(|id| sh.dedup.index.contains(id)) {
            done.insert(task.job, id);
            continue;
        }
        let job = task.job;
        let tree = new_tree(task, repo)?;
        done.insert(job, store_tree(&sh, tree, &mut chunks)?);
    }
    chunks.flush()?;
    if done.is_empty() {
        bail!("backup produced no tree");
    }
    Ok(done)
}

/// Puts the read files' nodes and the finished subtrees into a directory's entries;
/// returns its tree in the parent snapshot if it is still that tree.
fn settle(task: &mut DirTask, done: &mut HashMap<usize, Id>) -> Result<Option<Id>> {
    let mut same_as = task.same_as;
    let mut read = task.files.wait().into_iter();
    for e in &mut task.entries {
        e.found = match std::mem::replace(&mut e.found, Found::Vanished) {
            Found::Pending => match read.next() {
                Some(Some(n)) => Found::Node(Box::new(n)),
                _ => Found::Vanished,
            },
            Found::Subdir(mut n, job) => {
                let id = done
                    .remove(&job)
                    .ok_or_else(|| anyhow!("subtree {job} finished out of order"))?;
                if n.subtree.replace(id) != Some(id) {
                    same_as = None;
                }
                Found::Node(n)
            }
            found => found,
        };
    }
    Ok(same_as)
}

/// The most a tree may encode to: a blob's length and its offset in a pack are 32-bit.
const MAX_TREE_BYTES: usize = 1 << 31;

/// The error for a tree over [`MAX_TREE_BYTES`]: in practice one file of tens of millions
/// of chunks, whose ids the tree lists.
fn too_large(tree: &Tree, len: usize) -> anyhow::Error {
    let biggest = tree.nodes.iter().max_by_key(|n| n.content.len());
    let (name, chunks) = biggest.map_or((String::new(), 0), |n| (n.name.lossy(), n.content.len()));
    anyhow!(
        "a directory's listing would take {len} bytes, over the 2 GiB a tree may take (its \
         file {name:?} has {chunks} chunks): back such a file up into a repository made \
         with a larger --chunk-size"
    )
}

/// Encodes a tree and queues it for sealing unless stored already; its id.
pub(super) fn store_tree(sh: &Shared, mut tree: Tree, chunks: &mut Batcher<Chunk>) -> Result<Id> {
    let bytes = tree.encode();
    if bytes.len() > MAX_TREE_BYTES {
        return Err(too_large(&tree, bytes.len()));
    }
    let id = sh.keys.blob_id(BlobType::Tree as u8, &bytes);
    if sh.dedup.claim(id) {
        let size = bytes.len() as u64;
        let chunk = Chunk {
            id,
            blob_type: BlobType::Tree,
            data: bytes,
        };
        chunks.push(chunk, size)?;
    }
    Ok(id)
}

/// A walked directory's tree: its entries' nodes, those `Same` taken from the parent
/// snapshot's tree (loaded again when the listing let go of it).
fn new_tree(task: DirTask, repo: &Repository) -> Result<Tree> {
    let old = match (task.old_nodes, task.old_tree) {
        (Some(old), _) => Some(old),
        (None, Some(id)) if scanner::takes_old(&task.entries) => Some(
            repo.load_tree_lazy(&id)
                .with_context(|| format!("parent snapshot's tree {} unreadable", id.short()))?,
        ),
        _ => None,
    };
    let mut nodes = Vec::with_capacity(task.entries.len());
    for e in task.entries {
        match e.found {
            Found::Node(n) => nodes.push(*n),
            Found::Same { .. } => nodes.push(old_node(&e, old.as_ref())?),
            _ => {}
        }
    }
    Ok(Tree { nodes })
}

/// The node of an entry as it was in the parent snapshot's tree `old`.
fn old_node(e: &Scanned, old: Option<&LazyTree>) -> Result<Node> {
    let (Some(i), Some(old)) = (e.old, old) else {
        bail!(
            "{}: not in the parent snapshot's tree",
            e.name.to_string_lossy()
        );
    };
    old.node(i).with_context(|| {
        format!(
            "{}: in the parent snapshot's tree",
            e.name.to_string_lossy()
        )
    })
}

/// Ends the pipeline: the last packs uploaded and the final index written. Returns the
/// run's summary so far.
pub(super) fn finish(shared: Arc<Shared>) -> Result<Summary> {
    Ok(finish_keeping_claims(shared)?.0)
}

/// As [`finish`], also giving back the blobs the pass claimed (stored by it), for a
/// next pass that has not reloaded the index (`vault copy`, snapshot after snapshot).
pub(super) fn finish_keeping_claims(
    shared: Arc<Shared>,
) -> Result<(Summary, std::collections::HashSet<Id>)> {
    let shared = Arc::into_inner(shared).ok_or_else(|| anyhow!("pipeline still running"))?;
    shared.packer.finish()?;
    let claimed = shared.dedup.claimed.into_inner().expect("dedup poisoned");
    Ok((shared.stats.into_inner().expect("stats poisoned"), claimed))
}

/// What a snapshot says of its backup besides its tree and summary.
pub(super) struct Heading {
    pub host: String,
    pub paths: Vec<String>,
    pub parent: Option<Id>,
    pub excludes: Vec<String>,
}

pub(super) fn snapshot(
    opts: &BackupOptions,
    heading: Heading,
    tree: Id,
    summary: Summary,
) -> Snapshot {
    Snapshot {
        version: SNAPSHOT_VERSION,
        time: opts.time.unwrap_or_else(jiff::Timestamp::now).to_string(),
        host: heading.host,
        user: username(),
        paths: heading.paths,
        tags: opts.tags.clone(),
        parent: heading.parent,
        tree,
        excludes: heading.excludes,
        program: format!("vault {}", env!("CARGO_PKG_VERSION")),
        summary,
        original: None,
    }
}

/// Publishes `snapshot` once everything it references is confirmed live; `known`: the
/// deletion records on record when the pass loaded its index. `held` is asked first.
pub(super) fn publish(
    repo: &mut Repository,
    snapshot: &Snapshot,
    known: &BTreeSet<Id>,
    confirmed: &mut Confirmed,
    held: &dyn Fn() -> Result<()>,
) -> Result<Outcome> {
    held()?;
    confirm::publish(repo, snapshot, known, confirmed)
}
