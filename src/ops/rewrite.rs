//! `vault rewrite`: new snapshots without the paths that match exclude patterns. Only
//! the trees on the way to what was left out are written anew; every file's blobs are
//! the original's. Each new snapshot names its `original`, lists the patterns in its
//! `excludes`, and its summary's `bytes_total` drops what was left out. With `forget`,
//! the originals are forgotten once every new snapshot is written, so that a kill at any
//! instant leaves each original, or its rewrite, or both (never neither).

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use serde::Serialize;

use super::stats::Sizes;
use crate::error::VaultError;
use crate::format::Id;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Node, NodeType, Tree};
use crate::repo::Repository;
use crate::repo::packer::Packer;

/// One type for programs and the command line.
#[derive(Debug, Default, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RewriteOptions {
    /// Leave out paths matching PATTERN (repeatable; gitignore style as backup's
    /// --exclude, anchored at /: `*.iso` anywhere, `/home/me/secret.pdf` only there)
    #[cfg_attr(feature = "cli", arg(long = "exclude", value_name = "PATTERN"))]
    pub excludes: Vec<String>,
    /// Show what would be left out; write nothing
    #[cfg_attr(feature = "cli", arg(long, short = 'n'))]
    pub dry_run: bool,
    /// Forget the originals once their rewrites are written (then prune frees the space)
    #[cfg_attr(feature = "cli", arg(long))]
    pub forget: bool,
}

#[derive(Debug, Serialize)]
pub struct Rewritten {
    pub original: Id,
    /// The new snapshot (None in a dry run).
    pub rewritten: Option<Id>,
    /// Paths left out (a directory stands for everything below it).
    pub removed: Vec<String>,
    /// Bytes of the files left out.
    pub removed_bytes: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct RewriteResult {
    pub rewritten: Vec<Rewritten>,
    /// Snapshots with nothing to leave out (left as they are).
    pub unchanged: Vec<Id>,
    /// Tree blobs written (0 in a dry run), and the packs and bytes they took.
    pub trees_written: u64,
    pub packs_written: u64,
    pub bytes_written: u64,
}

pub fn matcher(patterns: &[String]) -> Result<Gitignore> {
    if patterns.iter().all(|p| p.trim().is_empty()) {
        return Err(
            VaultError::Usage("vault rewrite: give at least one --exclude PATTERN".into()).into(),
        );
    }
    let mut b = GitignoreBuilder::new("/");
    for p in patterns {
        b.add_line(None, p).map_err(|e| {
            VaultError::Usage(format!("exclude pattern {p:?} is not a valid glob: {e}"))
        })?;
    }
    b.build().context("building exclude patterns")
}

/// Writes the trees of each of `snaps` without what `opts.excludes` matches, then the
/// new snapshots; the caller forgets the originals afterwards if asked.
pub fn rewrite(
    repo: &Repository,
    snaps: &[(Id, Snapshot)],
    opts: &RewriteOptions,
) -> Result<RewriteResult> {
    let globs = matcher(&opts.excludes)?;
    let packer = Packer::new(
        &repo.backend,
        &repo.keys,
        repo.config.pack_size,
        opts.dry_run,
    )
    .caching_trees(repo.cache.clone());
    let mut w = Walker {
        repo,
        globs: &globs,
        packer: &packer,
        memo: HashMap::new(),
        sizes: Sizes::default(),
        added: HashSet::new(),
        written: 0,
        dry_run: opts.dry_run,
    };
    let mut result = RewriteResult::default();
    let mut pending = Vec::new();
    for (id, snap) in snaps {
        let (root, removed, bytes) = w.tree(snap.tree, Path::new("/"))?;
        if removed.is_empty() {
            result.unchanged.push(*id);
        } else {
            pending.push((*id, snap, root, removed, bytes));
        }
    }
    result.trees_written = w.written;
    // Trees first (and their index), then the snapshots that point at them.
    let stats = packer.finish()?;
    result.packs_written = stats.packs;
    result.bytes_written = stats.bytes;
    for (id, snap, root, removed, bytes) in pending {
        let rewritten = if opts.dry_run {
            None
        } else {
            let mut new = snap.clone();
            new.tree = root;
            new.original = Some(id);
            for p in &opts.excludes {
                if !new.excludes.contains(p) {
                    new.excludes.push(p.clone());
                }
            }
            new.summary.bytes_total = new.summary.bytes_total.saturating_sub(bytes);
            Some(repo.save_snapshot(&new)?)
        };
        result.rewritten.push(Rewritten {
            original: id,
            rewritten,
            removed: removed.iter().map(|p| p.display().to_string()).collect(),
            removed_bytes: bytes,
        });
    }
    Ok(result)
}

/// A tree's rewrite: its new id, the paths left out below it and their file bytes.
type Done = (Id, Vec<PathBuf>, u64);

struct Frame {
    id: Id,
    path: PathBuf,
    todo: std::vec::IntoIter<Node>,
    kept: Vec<Node>,
    removed: Vec<PathBuf>,
    bytes: u64,
    waiting: Option<Node>,
}

struct Walker<'a> {
    repo: &'a Repository,
    globs: &'a Gitignore,
    packer: &'a Packer,
    /// By old tree and its path (patterns depend on where a tree is).
    memo: HashMap<(Id, PathBuf), Done>,
    sizes: Sizes,
    /// Trees handed to the packer (two snapshots may come to the same new tree).
    added: HashSet<Id>,
    written: u64,
    dry_run: bool,
}

impl Walker<'_> {
    /// The tree `id` at `path` without what the patterns match. Walks with its own stack
    /// (a tree per level), so any depth works.
    fn tree(&mut self, id: Id, path: &Path) -> Result<Done> {
        let mut stack: Vec<Frame> = Vec::new();
        if let Some(done) = self.start(id, path, &mut stack)? {
            return Ok(done);
        }
        loop {
            let frame = stack.last_mut().expect("a frame until the root is done");
            let Some(node) = frame.todo.next() else {
                let f = stack.pop().expect("a frame");
                let done = self.finish(f)?;
                match stack.last_mut() {
                    Some(parent) => adopt(parent, done),
                    None => return Ok(done),
                }
                continue;
            };
            let p = frame.path.join(std::ffi::OsStr::from_bytes(&node.name.0));
            let is_dir = node.kind == NodeType::Dir;
            if self.globs.matched(&p, is_dir).is_ignore() {
                frame.bytes += match (node.kind, node.subtree) {
                    (NodeType::File, _) => node.size,
                    (NodeType::Dir, Some(sub)) => self.sizes.of(self.repo, sub)?.1,
                    _ => 0,
                };
                frame.removed.push(p);
                continue;
            }
            match (is_dir, node.subtree) {
                (true, Some(sub)) => {
                    frame.waiting = Some(node);
                    if let Some(done) = self.start(sub, &p, &mut stack)? {
                        adopt(stack.last_mut().expect("the parent"), done);
                    }
                }
                _ => frame.kept.push(node),
            }
        }
    }

    fn start(&mut self, id: Id, path: &Path, stack: &mut Vec<Frame>) -> Result<Option<Done>> {
        if let Some(done) = self.memo.get(&(id, path.to_path_buf())) {
            return Ok(Some(done.clone()));
        }
        let tree = self.repo.load_tree(&id)?;
        stack.push(Frame {
            id,
            path: path.to_path_buf(),
            kept: Vec::with_capacity(tree.nodes.len()),
            todo: tree.nodes.into_iter(),
            removed: Vec::new(),
            bytes: 0,
            waiting: None,
        });
        Ok(None)
    }

    fn finish(&mut self, f: Frame) -> Result<Done> {
        let new = if f.removed.is_empty() {
            f.id
        } else {
            self.save(Tree { nodes: f.kept })?
        };
        let done = (new, f.removed, f.bytes);
        self.memo.insert((f.id, f.path), done.clone());
        Ok(done)
    }

    fn save(&mut self, tree: Tree) -> Result<Id> {
        let (id, added) = super::repair::save_tree(self.repo, self.packer, &mut self.added, tree)?;
        self.written += u64::from(added && !self.dry_run);
        Ok(id)
    }
}

/// Gives the waiting directory node of `parent` its rewritten subtree.
fn adopt(parent: &mut Frame, (new, removed, bytes): Done) {
    let Some(mut node) = parent.waiting.take() else {
        return;
    };
    parent.removed.extend(removed);
    parent.bytes += bytes;
    node.subtree = Some(new);
    parent.kept.push(node);
}
