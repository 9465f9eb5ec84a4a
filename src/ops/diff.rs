//! `vault diff A B`: what changed between two snapshots. Walks both trees in name order
//! and skips every subtree whose id is the same on both sides, so it reads only the
//! trees that differ, never file data.

use std::iter::Peekable;
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
    path: walk::SnapPath,
    stack: Vec<Frame>,
}

/// A pair of directories being compared: the nodes still to compare on each side, and
/// where their path ends.
struct Frame {
    a: Peekable<std::vec::IntoIter<Node>>,
    b: Peekable<std::vec::IntoIter<Node>>,
    mark: usize,
}

pub fn diff(repo: &Repository, a: &Id, b: &Id, out: &mut dyn FnMut(Change)) -> Result<DiffStats> {
    let mut d = Differ {
        repo,
        out,
        stats: DiffStats::default(),
        path: walk::SnapPath::new(Path::new("/")),
        stack: Vec::new(),
    };
    d.push(Some(a), Some(b), d.path.mark())?;
    d.run()?;
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

    /// Stacks the comparison of trees `a` and `b` (at the current path, cut back to `mark`
    /// when done) unless they are the same; returns whether it did.
    fn push(&mut self, a: Option<&Id>, b: Option<&Id>, mark: usize) -> Result<bool> {
        if a == b {
            return Ok(false);
        }
        let (ta, tb) = (self.load(a)?, self.load(b)?);
        self.stack.push(Frame {
            a: ta.nodes.into_iter().peekable(),
            b: tb.nodes.into_iter().peekable(),
            mark,
        });
        Ok(true)
    }

    /// Compares the stacked trees in name order, depth first, with the stack in memory
    /// instead of on the native stack, so any depth works.
    fn run(&mut self) -> Result<()> {
        while let Some(f) = self.stack.last_mut() {
            let order = match (f.a.peek(), f.b.peek()) {
                (None, None) => {
                    let mark = f.mark;
                    self.stack.pop();
                    self.path.cut(mark);
                    continue;
                }
                (Some(x), Some(y)) => x.name.0.cmp(&y.name.0),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    let n = f.a.next().expect("peeked");
                    self.one_side(n, ChangeKind::Removed)?;
                }
                std::cmp::Ordering::Greater => {
                    let n = f.b.next().expect("peeked");
                    self.one_side(n, ChangeKind::Added)?;
                }
                std::cmp::Ordering::Equal => {
                    let (a, b) = (f.a.next().expect("peeked"), f.b.next().expect("peeked"));
                    self.both(a, b)?;
                }
            }
        }
        Ok(())
    }

    fn emit(&mut self, change: ChangeKind, a: Option<&Node>, b: Option<&Node>) {
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
            path: self.path.as_path().to_string_lossy().into_owned(),
            kind,
            size_before: before,
            size_after: after,
        });
    }

    /// A node present on one side only: it and everything below it.
    fn one_side(&mut self, n: Node, change: ChangeKind) -> Result<()> {
        let mark = self.path.push(&n.name.0);
        let (a, b) = match change {
            ChangeKind::Removed => (Some(&n), None),
            _ => (None, Some(&n)),
        };
        self.emit(change, a, b);
        let pushed = match (n.kind, n.subtree.as_ref(), change) {
            (NodeType::Dir, Some(sub), ChangeKind::Removed) => self.push(Some(sub), None, mark)?,
            (NodeType::Dir, Some(sub), _) => self.push(None, Some(sub), mark)?,
            _ => false,
        };
        if !pushed {
            self.path.cut(mark);
        }
        Ok(())
    }

    fn both(&mut self, a: Node, b: Node) -> Result<()> {
        let mark = self.path.push(&a.name.0);
        let pushed = if a.kind != b.kind {
            self.emit(ChangeKind::Type, Some(&a), Some(&b));
            // The stack runs last in first: the new side is stacked first so that the old
            // side's removals come out before its additions.
            let mut pushed = false;
            if b.kind == NodeType::Dir {
                pushed |= self.push(None, b.subtree.as_ref(), mark)?;
            }
            if a.kind == NodeType::Dir {
                let m = if pushed { self.path.mark() } else { mark };
                pushed |= self.push(a.subtree.as_ref(), None, m)?;
            }
            pushed
        } else if a.kind == NodeType::Dir {
            if !same_metadata(&a, &b) {
                self.emit(ChangeKind::Metadata, Some(&a), Some(&b));
            }
            self.push(a.subtree.as_ref(), b.subtree.as_ref(), mark)?
        } else {
            if !same_content(&a, &b) {
                self.emit(ChangeKind::Modified, Some(&a), Some(&b));
            } else if !same_metadata(&a, &b) {
                self.emit(ChangeKind::Metadata, Some(&a), Some(&b));
            }
            false
        };
        if !pushed {
            self.path.cut(mark);
        }
        Ok(())
    }
}
