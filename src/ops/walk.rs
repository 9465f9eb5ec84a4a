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

/// Adds to `wanted` the data blobs of every file below the trees `trees`, reading each
/// distinct tree once: a crafted snapshot whose trees repeat each other (2^40 paths from
/// 40 trees) costs 40 reads. An unreadable tree adds nothing; whoever reads it reports it.
pub fn data_below(repo: &Repository, trees: Vec<Id>, wanted: &mut Vec<Id>) {
    let mut seen = std::collections::HashSet::new();
    let mut todo = trees;
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for n in repo.load_tree(&id).map(|t| t.nodes).unwrap_or_default() {
            match n.subtree {
                Some(id) if n.kind == NodeType::Dir => todo.push(id),
                _ => wanted.extend(n.content),
            }
        }
    }
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

/// A snapshot path built in one buffer: a walk appends a name when it goes down and cuts
/// it off when it comes back up, so a deep walk holds one path, not one per level.
pub struct SnapPath {
    buf: Vec<u8>,
}

impl SnapPath {
    pub fn new(base: &Path) -> SnapPath {
        use std::os::unix::ffi::OsStrExt;
        SnapPath {
            buf: base.as_os_str().as_bytes().to_vec(),
        }
    }

    /// Appends `name`; returns the length to `cut` back to.
    pub fn push(&mut self, name: &[u8]) -> usize {
        let mark = self.buf.len();
        if !self.buf.is_empty() && self.buf.last() != Some(&b'/') {
            self.buf.push(b'/');
        }
        self.buf.extend_from_slice(name);
        mark
    }

    /// The current length, to `cut` back to.
    pub fn mark(&self) -> usize {
        self.buf.len()
    }

    pub fn cut(&mut self, mark: usize) {
        self.buf.truncate(mark);
    }

    pub fn as_path(&self) -> &Path {
        use std::os::unix::ffi::OsStrExt;
        Path::new(std::ffi::OsStr::from_bytes(&self.buf))
    }
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

/// One directory being walked: the nodes still to visit, and where its path ends.
struct Frame {
    id: Id,
    nodes: std::vec::IntoIter<Node>,
    /// The length of the walk's path before this directory's name was appended.
    mark: usize,
}

/// Like `walk`, but an unreadable tree or an unsafe name goes to `bad` with the path of
/// the directory it belongs to, and the walk goes on with the rest (unless `bad` fails).
///
/// Parents are visited before their children, depth-first in name order. The walk keeps
/// its own stack (one loaded tree per level), so any depth works and memory grows with
/// the depth only, whatever the tree's shape.
pub fn walk_lenient(
    repo: &Repository,
    id: &Id,
    base: &Path,
    visit: &mut dyn FnMut(&Path, &Node) -> Result<bool>,
    bad: &mut dyn FnMut(&Path, anyhow::Error) -> Result<()>,
) -> Result<()> {
    let mut path = SnapPath::new(base);
    let mut stack: Vec<Frame> = Vec::new();
    let top = path.mark();
    open_frame(repo, id, top, &mut path, &mut stack, bad)?;
    while let Some(frame) = stack.last_mut() {
        let Some(node) = frame.nodes.next() else {
            let mark = frame.mark;
            stack.pop();
            path.cut(mark);
            continue;
        };
        if !safe_name(&node.name.0) {
            let msg = anyhow!(
                "tree {} holds an unsafe name {:?} (skipped)",
                frame.id.short(),
                node.name.lossy()
            );
            bad(path.as_path(), msg)?;
            continue;
        }
        let mark = path.push(&node.name.0);
        let descend = visit(path.as_path(), &node)?;
        match (descend, node.kind, node.subtree) {
            (true, NodeType::Dir, Some(sub)) => {
                open_frame(repo, &sub, mark, &mut path, &mut stack, bad)?
            }
            _ => path.cut(mark),
        }
    }
    Ok(())
}

/// Loads tree `id` (whose path is `path`) onto the stack; a tree that cannot be loaded goes
/// to `bad` and its path is cut back to `mark`.
fn open_frame(
    repo: &Repository,
    id: &Id,
    mark: usize,
    path: &mut SnapPath,
    stack: &mut Vec<Frame>,
    bad: &mut dyn FnMut(&Path, anyhow::Error) -> Result<()>,
) -> Result<()> {
    let tree: Tree = match repo.load_tree(id) {
        Ok(t) => t,
        Err(e) => {
            let msg = e.context(format!("contents of {}", path.as_path().display()));
            let r = bad(path.as_path(), msg);
            path.cut(mark);
            return r;
        }
    };
    stack.push(Frame {
        id: *id,
        nodes: tree.nodes.into_iter(),
        mark,
    });
    Ok(())
}
