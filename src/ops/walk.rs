//! Navigating snapshot trees: paths inside a snapshot, and depth-first walks.

use std::path::{Component, Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use crate::format::Id;
use crate::format::tree::{Node, NodeType, Tree};
use crate::repo::Repository;

/// Splits an absolute snapshot path into raw name components.
pub fn components(path: &Path) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.as_bytes().to_vec()),
            _ => None,
        })
        .collect()
}

/// A name from a tree is safe to join to a local path: no separators, no dot entries.
pub fn safe_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

pub fn join(base: &Path, name: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    base.join(std::ffi::OsStr::from_bytes(name))
}

/// What a path in a snapshot names: the root, or a node.
pub enum Found {
    Root(Id),
    Node(Box<Node>),
}

/// Finds `path` (absolute, as backed up) in the snapshot tree `root`.
pub fn find(repo: &Repository, root: &Id, path: &Path) -> Result<Found> {
    let comps = components(path);
    if comps.is_empty() {
        return Ok(Found::Root(*root));
    }
    let mut tree = repo.load_tree(root)?;
    for (i, name) in comps.iter().enumerate() {
        let Some(node) = tree.find(name).cloned() else {
            bail!("{}: not in this snapshot", path.display());
        };
        if i + 1 == comps.len() {
            return Ok(Found::Node(Box::new(node)));
        }
        match (node.kind, node.subtree) {
            (NodeType::Dir, Some(sub)) => tree = repo.load_tree(&sub)?,
            _ => bail!(
                "{}: not in this snapshot ({} is not a directory)",
                path.display(),
                String::from_utf8_lossy(name)
            ),
        }
    }
    unreachable!("loop returns on the last component")
}

/// Visits every node below tree `id` depth-first in name order, with its snapshot path.
/// The visitor returns whether to descend into a directory. The first unreadable tree
/// ends the walk with its error.
pub fn walk(
    repo: &Repository,
    id: &Id,
    base: &Path,
    visit: &mut dyn FnMut(&Path, &Node) -> Result<bool>,
) -> Result<()> {
    walk_lenient(repo, id, base, visit, &mut |_, e| Err(e))
}

/// Like `walk`, but an unreadable tree or an unsafe name goes to `bad` with the path of
/// the directory it belongs to, and the walk goes on with the rest (unless `bad` fails).
pub fn walk_lenient(
    repo: &Repository,
    id: &Id,
    base: &Path,
    visit: &mut dyn FnMut(&Path, &Node) -> Result<bool>,
    bad: &mut dyn FnMut(&Path, anyhow::Error) -> Result<()>,
) -> Result<()> {
    let tree: Tree = match repo.load_tree(id) {
        Ok(t) => t,
        Err(e) => return bad(base, e.context(format!("contents of {}", base.display()))),
    };
    for node in &tree.nodes {
        if !safe_name(&node.name.0) {
            bad(
                base,
                anyhow!(
                    "tree {} holds an unsafe name {:?} (skipped)",
                    id.short(),
                    node.name.lossy()
                ),
            )?;
            continue;
        }
        let path = join(base, &node.name.0);
        let descend = visit(&path, node)?;
        if descend && let (NodeType::Dir, Some(sub)) = (node.kind, node.subtree) {
            walk_lenient(repo, &sub, &path, visit, bad)?;
        }
    }
    Ok(())
}
