//! `vault find PATTERN`: which snapshots hold paths matching a glob. A pattern without
//! `/` matches file names; with `/`, whole paths. Subtrees known to hold no match are
//! skipped when another snapshot shares them, so a long history costs little more than
//! one snapshot.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result};
use globset::{GlobBuilder, GlobMatcher};
use serde::Serialize;

use super::ls::fmt_ns;
use super::walk::{self, Found};
use crate::format::Id;
use crate::format::tree::{Node, NodeType};
use crate::repo::Repository;

pub struct Pattern {
    glob: GlobMatcher,
    whole_path: bool,
}

impl Pattern {
    pub fn new(pattern: &str) -> Result<Pattern> {
        let whole_path = pattern.contains('/');
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .with_context(|| format!("pattern {pattern:?} is not a valid glob"))?
            .compile_matcher();
        Ok(Pattern { glob, whole_path })
    }

    fn matches(&self, path: &Path) -> bool {
        if self.whole_path {
            self.glob.is_match(path)
        } else {
            path.file_name().is_some_and(|n| self.glob.is_match(n))
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Match {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: NodeType,
    pub size: u64,
    pub mtime: String,
}

/// Finds matches in one snapshot at a time; `no_match` (shared across snapshots)
/// remembers which subtrees hold none.
pub struct Finder<'a> {
    repo: &'a Repository,
    pattern: &'a Pattern,
    /// Subtrees (with, for whole-path patterns, a hash of where they sit) known to hold no
    /// match. Cleared when full, so that a huge history or a self-repeating tree cannot
    /// grow it without bound; it is only a shortcut.
    no_match: HashSet<(Id, [u8; 32])>,
}

const NO_MATCH_LIMIT: usize = 1 << 18;

/// One directory being searched: the nodes still to look at, where its path ends, and
/// whether anything below it matched so far.
struct Frame {
    key: (Id, [u8; 32]),
    nodes: std::vec::IntoIter<Node>,
    mark: usize,
    found: bool,
}

impl<'a> Finder<'a> {
    pub fn new(repo: &'a Repository, pattern: &'a Pattern) -> Finder<'a> {
        Finder {
            repo,
            pattern,
            no_match: HashSet::new(),
        }
    }

    /// Matches in the snapshot with root tree `root`, at or below `below`.
    pub fn find(&mut self, root: &Id, below: &Path) -> Result<Vec<Match>> {
        let mut out = Vec::new();
        self.each(root, below, &mut |m| {
            out.push(m);
            Ok(())
        })?;
        Ok(out)
    }

    /// Like `find`, but hands each match to `out` as it is found (depth-first in name
    /// order), so a search of any size holds memory for the depth of the tree only.
    pub fn each(
        &mut self,
        root: &Id,
        below: &Path,
        out: &mut dyn FnMut(Match) -> Result<()>,
    ) -> Result<()> {
        let mut path = walk::SnapPath::new(below);
        let mut stack = Vec::new();
        match walk::find(self.repo, root, below) {
            Ok(Found::Root(id)) => {
                self.enter(&id, &path, path.mark(), &mut stack)?;
            }
            Ok(Found::Node(n)) => {
                if self.pattern.matches(path.as_path()) {
                    out(self.matched(path.as_path(), &n))?;
                }
                if let (NodeType::Dir, Some(sub)) = (n.kind, n.subtree) {
                    self.enter(&sub, &path, path.mark(), &mut stack)?;
                }
            }
            Err(_) => return Ok(()), // not in this snapshot
        }
        self.search(&mut path, &mut stack, out)
    }

    fn search(
        &mut self,
        path: &mut walk::SnapPath,
        stack: &mut Vec<Frame>,
        out: &mut dyn FnMut(Match) -> Result<()>,
    ) -> Result<()> {
        while let Some(frame) = stack.last_mut() {
            let Some(n) = frame.nodes.next() else {
                let done = stack.pop().expect("a frame");
                path.cut(done.mark);
                if !done.found {
                    if self.no_match.len() >= NO_MATCH_LIMIT {
                        self.no_match.clear();
                    }
                    self.no_match.insert(done.key);
                }
                if let Some(parent) = stack.last_mut() {
                    parent.found |= done.found;
                }
                continue;
            };
            if !walk::safe_name(&n.name.0) {
                continue;
            }
            let mark = path.push(&n.name.0);
            if self.pattern.matches(path.as_path()) {
                frame.found = true;
                out(self.matched(path.as_path(), &n))?;
            }
            let entered = match (n.kind, n.subtree) {
                (NodeType::Dir, Some(sub)) => self.enter(&sub, path, mark, stack)?,
                _ => false,
            };
            if !entered {
                path.cut(mark);
            }
        }
        Ok(())
    }

    fn matched(&self, path: &Path, n: &Node) -> Match {
        Match {
            path: path.to_string_lossy().into_owned(),
            kind: n.kind,
            size: n.size,
            mtime: fmt_ns(n.mtime_ns),
        }
    }

    /// Pushes tree `id` (at `path`) unless it is known to hold no match; returns whether
    /// it did.
    fn enter(
        &mut self,
        id: &Id,
        path: &walk::SnapPath,
        mark: usize,
        stack: &mut Vec<Frame>,
    ) -> Result<bool> {
        // Whole-path patterns depend on where the tree sits, so the key includes it.
        let place = if self.pattern.whole_path {
            use std::os::unix::ffi::OsStrExt;
            *blake3::hash(path.as_path().as_os_str().as_bytes()).as_bytes()
        } else {
            [0; 32]
        };
        let key = (*id, place);
        if self.no_match.contains(&key) {
            return Ok(false);
        }
        let tree = self.repo.load_tree(id)?;
        stack.push(Frame {
            key,
            nodes: tree.nodes.into_iter(),
            mark,
            found: false,
        });
        Ok(true)
    }
}
