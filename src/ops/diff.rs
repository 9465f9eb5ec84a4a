//! `vault diff A B`: what changed between two snapshots. Walks both trees in name order
//! and skips every subtree whose id is the same on both sides, so it reads only the
//! trees that differ, never file data.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::walk;
use crate::format::Id;
use crate::format::tree::{Node, NodeType, Tree};
use crate::repo::Repository;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Removed,
    /// Content changed (file data, link target, device number).
    Modified,
    /// Same content, different metadata (mode, owner, mtime, xattrs).
    Metadata,
    /// Became another type of file.
    Type,
}

impl ChangeKind {
    pub fn sign(self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Modified => 'M',
            ChangeKind::Metadata => 'U',
            ChangeKind::Type => 'T',
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Change {
    pub change: ChangeKind,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: NodeType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_after: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct DiffStats {
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    pub metadata: u64,
    pub type_changed: u64,
    pub bytes_added: u64,
    pub bytes_removed: u64,
    pub trees_read: u64,
}

struct Differ<'a> {
    repo: &'a Repository,
    out: &'a mut dyn FnMut(Change),
    stats: DiffStats,
}

pub fn diff(repo: &Repository, a: &Id, b: &Id, out: &mut dyn FnMut(Change)) -> Result<DiffStats> {
    let mut d = Differ {
        repo,
        out,
        stats: DiffStats::default(),
    };
    d.trees(Some(a), Some(b), Path::new("/"))?;
    Ok(d.stats)
}

fn same_content(a: &Node, b: &Node) -> bool {
    a.size == b.size && a.content == b.content && a.target == b.target && a.rdev == b.rdev
}

/// Metadata a user cares about. Directory times change with their contents and inode
/// numbers and ctimes with any rewrite, so those alone are not reported.
fn same_metadata(a: &Node, b: &Node) -> bool {
    let times = a.kind == NodeType::Dir || a.mtime_ns == b.mtime_ns;
    times && a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.xattrs == b.xattrs
}

impl Differ<'_> {
    fn load(&mut self, id: Option<&Id>) -> Result<Tree> {
        match id {
            Some(id) => {
                self.stats.trees_read += 1;
                self.repo.load_tree(id)
            }
            None => Ok(Tree::default()),
        }
    }

    fn trees(&mut self, a: Option<&Id>, b: Option<&Id>, path: &Path) -> Result<()> {
        if a.is_some() && a == b {
            return Ok(());
        }
        let (ta, tb) = (self.load(a)?, self.load(b)?);
        let (mut i, mut j) = (0, 0);
        while i < ta.nodes.len() || j < tb.nodes.len() {
            let (na, nb) = (ta.nodes.get(i), tb.nodes.get(j));
            let order = match (na, nb) {
                (Some(x), Some(y)) => x.name.0.cmp(&y.name.0),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    i += 1;
                    self.one_side(na.expect("left"), path, ChangeKind::Removed)?;
                }
                std::cmp::Ordering::Greater => {
                    j += 1;
                    self.one_side(nb.expect("right"), path, ChangeKind::Added)?;
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                    self.both(na.expect("left"), nb.expect("right"), path)?;
                }
            }
        }
        Ok(())
    }

    fn emit(&mut self, change: ChangeKind, path: &Path, a: Option<&Node>, b: Option<&Node>) {
        let kind = b.or(a).map_or(NodeType::File, |n| n.kind);
        let size = |n: Option<&Node>| n.filter(|n| n.kind == NodeType::File).map(|n| n.size);
        let s = &mut self.stats;
        match change {
            ChangeKind::Added => s.added += 1,
            ChangeKind::Removed => s.removed += 1,
            ChangeKind::Modified => s.modified += 1,
            ChangeKind::Metadata => s.metadata += 1,
            ChangeKind::Type => s.type_changed += 1,
        }
        let (before, after) = (size(a), size(b));
        s.bytes_added += after.unwrap_or(0).saturating_sub(before.unwrap_or(0));
        s.bytes_removed += before.unwrap_or(0).saturating_sub(after.unwrap_or(0));
        (self.out)(Change {
            change,
            path: path.to_string_lossy().into_owned(),
            kind,
            size_before: before,
            size_after: after,
        });
    }

    /// A node present on one side only: it and everything below it.
    fn one_side(&mut self, n: &Node, base: &Path, change: ChangeKind) -> Result<()> {
        let path = walk::join(base, &n.name.0);
        let (a, b) = match change {
            ChangeKind::Removed => (Some(n), None),
            _ => (None, Some(n)),
        };
        self.emit(change, &path, a, b);
        if let (NodeType::Dir, Some(sub)) = (n.kind, n.subtree.as_ref()) {
            match change {
                ChangeKind::Removed => self.trees(Some(sub), None, &path)?,
                _ => self.trees(None, Some(sub), &path)?,
            }
        }
        Ok(())
    }

    fn both(&mut self, a: &Node, b: &Node, base: &Path) -> Result<()> {
        let path = walk::join(base, &a.name.0);
        if a.kind != b.kind {
            self.emit(ChangeKind::Type, &path, Some(a), Some(b));
            if a.kind == NodeType::Dir {
                self.trees(a.subtree.as_ref(), None, &path)?;
            }
            if b.kind == NodeType::Dir {
                self.trees(None, b.subtree.as_ref(), &path)?;
            }
            return Ok(());
        }
        if a.kind == NodeType::Dir {
            if !same_metadata(a, b) {
                self.emit(ChangeKind::Metadata, &path, Some(a), Some(b));
            }
            return self.trees(a.subtree.as_ref(), b.subtree.as_ref(), &path);
        }
        if !same_content(a, b) {
            self.emit(ChangeKind::Modified, &path, Some(a), Some(b));
        } else if !same_metadata(a, b) {
            self.emit(ChangeKind::Metadata, &path, Some(a), Some(b));
        }
        Ok(())
    }
}
