//! `vault find PATTERN`: which snapshots hold paths matching a glob. A pattern without
//! `/` matches file names; with `/`, whole paths. Subtrees known to hold no match are
//! skipped when another snapshot shares them, so a long history costs little more than
//! one snapshot.

use std::collections::HashMap;
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

/// Finds matches in one snapshot at a time; `memo` (shared across snapshots) remembers
/// which subtrees hold none.
pub struct Finder<'a> {
    repo: &'a Repository,
    pattern: &'a Pattern,
    has_match: HashMap<(Id, std::path::PathBuf), bool>,
}

impl<'a> Finder<'a> {
    pub fn new(repo: &'a Repository, pattern: &'a Pattern) -> Finder<'a> {
        Finder {
            repo,
            pattern,
            has_match: HashMap::new(),
        }
    }

    /// Matches in the snapshot with root tree `root`, at or below `below`.
    pub fn find(&mut self, root: &Id, below: &Path) -> Result<Vec<Match>> {
        let mut out = Vec::new();
        match walk::find(self.repo, root, below) {
            Ok(Found::Root(id)) => {
                self.tree(&id, below, &mut out)?;
            }
            Ok(Found::Node(n)) => {
                self.node(&n, below, &mut out)?;
            }
            Err(_) => {} // not in this snapshot
        }
        Ok(out)
    }

    fn node(&mut self, n: &Node, path: &Path, out: &mut Vec<Match>) -> Result<bool> {
        let mut found = false;
        if self.pattern.matches(path) {
            out.push(Match {
                path: path.to_string_lossy().into_owned(),
                kind: n.kind,
                size: n.size,
                mtime: fmt_ns(n.mtime_ns),
            });
            found = true;
        }
        if let (NodeType::Dir, Some(sub)) = (n.kind, n.subtree) {
            found |= self.tree(&sub, path, out)?;
        }
        Ok(found)
    }

    fn tree(&mut self, id: &Id, path: &Path, out: &mut Vec<Match>) -> Result<bool> {
        // Whole-path patterns depend on where the tree sits, so the key includes it.
        let key = if self.pattern.whole_path {
            (*id, path.to_path_buf())
        } else {
            (*id, std::path::PathBuf::new())
        };
        if self.has_match.get(&key) == Some(&false) {
            return Ok(false);
        }
        let tree = self.repo.load_tree(id)?;
        let mut found = false;
        for n in &tree.nodes {
            if walk::safe_name(&n.name.0) {
                found |= self.node(n, &walk::join(path, &n.name.0), out)?;
            }
        }
        self.has_match.insert(key, found);
        Ok(found)
    }
}
