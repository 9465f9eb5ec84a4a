//! The walker: the sources walked depth first in name order from the listings the
//! scanners make (see scanner.rs), with the parent snapshot found first to compare with.
//! Files new or changed go to the readers, and each directory, once walked, to the
//! finalizer.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow};
use crossbeam_channel::Sender;

use super::finalizer::DirTask;
use super::readers::{self, FileJob};
use super::scanner::{self, Found, Listing, Scanned, Scanner, Slot};
use super::sealers::Chunk;
use super::{BackupOptions, Shared, Warn};
use crate::format::Id;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{LazyTree, Node, NodeType};
use crate::fsmeta::Names;
use crate::ops::exclude::Inherited;
use crate::ops::handoff::{Batcher, Gather};
use crate::ops::walk::SnapPath;
use crate::repo::Repository;

/// A backup source as an absolute path, `..` resolved by name.
pub(super) fn clean_path(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).with_context(|| format!("backup source {}", p.display()))?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The snapshot to compare with: `--parent`, else the latest of this host with the same
/// paths. None when the snapshots cannot be listed (everything is read).
pub(super) fn find_parent(
    repo: &Repository,
    opts: &BackupOptions,
    host: &str,
    paths: &[String],
    warn: &Warn,
) -> Option<(Id, Snapshot)> {
    let snaps = match repo.snapshots() {
        Ok(s) => s,
        Err(e) => {
            warn(format!(
                "cannot list snapshots, reading every file: {}",
                crate::error::one_line(&e)
            ));
            return None;
        }
    };
    snaps
        .into_iter()
        .rev()
        .filter_map(|(id, s)| s.ok().map(|s| (id, s)))
        .find(|(id, s)| match opts.parent {
            Some(p) => *id == p,
            None => s.host == host && s.paths == paths,
        })
}

/// Source paths as a trie of absolute components, so that /home/a and /home/b share /home.
#[derive(Default)]
struct Trie {
    children: BTreeMap<OsString, Trie>,
    source: bool,
}

impl Trie {
    fn insert(&mut self, path: &Path) {
        let mut t = self;
        for c in path.components() {
            if let Component::Normal(name) = c {
                if t.source {
                    return; // already covered by a parent source
                }
                t = t.children.entry(name.to_os_string()).or_default();
            }
        }
        t.source = true;
        t.children.clear();
    }

    /// The part of `trie` below its entry `name`: None where the walk takes all of it.
    fn below<'t>(trie: Option<&'t Trie>, name: &OsString) -> Option<&'t Trie> {
        trie.filter(|t| !t.source)
            .and_then(|t| t.children.get(name))
    }

    /// The names to scan in this directory: None for all of it (a source).
    fn only(&self) -> Option<Vec<OsString>> {
        (!self.source).then(|| self.children.keys().cloned().collect())
    }
}

/// A directory being walked: its entries (each turned into what the finalizer needs as
/// it is walked), the scans asked for its subdirectories, and its node in its parent.
struct DirFrame<'t> {
    entries: Vec<Scanned>,
    /// The rest of the directory's listing (its entries taken out).
    listing: Listing,
    ahead: Vec<Option<Arc<Slot>>>,
    /// The next entry to walk.
    next: usize,
    dev: Option<u64>,
    trie: Option<&'t Trie>,
    files: Arc<Gather<Node>>,
    /// The directory's node, for its parent once its tree's job is known (None: root).
    node: Option<Box<Node>>,
    /// The length of the walk's path before this directory's name.
    mark: usize,
}

impl DirFrame<'_> {
    /// The index of the next entry to walk, if any.
    fn next_entry(&mut self) -> Option<usize> {
        let i = self.next;
        (i < self.entries.len()).then(|| {
            self.next += 1;
            i
        })
    }
}

/// What walking one entry gives: the entry as walked, or a directory to enter with its
/// listing and the device its source is on.
enum Walked {
    Done(Found),
    Enter(Box<Node>, Listing, Option<u64>),
}

/// Where an entry is met: its directory's device (within a source) and place among the
/// sources, and the gather its file's node goes to.
struct Place<'a, 't> {
    dev: Option<u64>,
    trie: Option<&'t Trie>,
    files: &'a Arc<Gather<Node>>,
    /// The ignore-file rules in force in the directory.
    rules: &'a Inherited,
}

pub(super) struct Walker<'s, 'r> {
    shared: Arc<Shared>,
    scanner: &'s Scanner<'r>,
    one_fs: bool,
    names: Names,
    files_out: Batcher<FileJob>,
    dir_tx: Sender<DirTask>,
    next_job: usize,
}

impl<'s, 'r> Walker<'s, 'r> {
    pub(super) fn new(
        shared: Arc<Shared>,
        scanner: &'s Scanner<'r>,
        one_fs: bool,
        file_tx: Sender<Vec<FileJob>>,
        dir_tx: Sender<DirTask>,
    ) -> Self {
        Walker {
            shared,
            scanner,
            one_fs,
            names: Names::default(),
            files_out: readers::batcher(file_tx),
            dir_tx,
            next_job: 0,
        }
    }
}

impl Walker<'_, '_> {
    fn warn_error(&self, msg: String) {
        self.shared.stat(|s| s.errors += 1);
        (self.shared.warn)(msg);
    }

    /// Walks the sources from the root, whose tree in the parent snapshot is `old`.
    /// Returns the job number whose tree id the finalizer will produce.
    pub(super) fn root(
        &mut self,
        sources: &[PathBuf],
        old: Option<(Id, LazyTree)>,
    ) -> Result<usize> {
        let mut trie = Trie::default();
        for s in sources {
            trie.insert(s);
        }
        let root = (Path::new("/"), &Inherited::default());
        let listing = self.scanner.scan(root, trie.only(), old, &mut self.names);
        self.walk(listing, Some(&trie))
    }

    /// Backs up standard input (or `command`'s output) as the root's one file `name`;
    /// returns the root's job.
    pub(super) fn stdin(
        &mut self,
        name: &str,
        command: &[String],
        chunks: Batcher<Chunk>,
    ) -> Result<usize> {
        let node = readers::read_stdin(&self.shared, name, command, chunks)?;
        let entry = Scanned {
            name: name.into(),
            found: Found::Node(Box::new(node)),
            old: None,
            same: false,
        };
        self.send_dir(vec![entry], Arc::default(), None)
    }

    /// Walks the tree from the root's listing, depth first in name order; `trie` limits it
    /// to the source paths (None: all). Returns the job number whose tree id the finalizer
    /// will produce. The walk keeps its own stack, a directory's entries per level, and
    /// one path that grows and shrinks with it, so any depth works in memory that grows
    /// with the depth only.
    fn walk(&mut self, listing: Listing, trie: Option<&Trie>) -> Result<usize> {
        let mut path = SnapPath::new(Path::new("/"));
        let mut stack = vec![self.open_dir(path.as_path(), None, listing, trie, None, 0)];
        loop {
            let top = stack
                .last_mut()
                .expect("a directory until the root is done");
            match top.next_entry() {
                Some(i) => {
                    if let Some(dir) = self.walk_entry(top, i, &mut path)? {
                        stack.push(dir);
                    }
                }
                None => {
                    let done = stack.pop().expect("a directory");
                    path.cut(done.mark);
                    if let Some(root_job) = self.leave_dir(done, stack.last_mut())? {
                        return Ok(root_job);
                    }
                }
            }
        }
    }

    /// Walks entry `i` of `top`, at `path` and below; returns the directory to enter
    /// next, if it is one.
    fn walk_entry<'t>(
        &mut self,
        top: &mut DirFrame<'t>,
        i: usize,
        path: &mut SnapPath,
    ) -> Result<Option<DirFrame<'t>>> {
        let files = top.files.clone();
        let scanned = &mut top.entries[i];
        let place = Place {
            dev: top.dev,
            trie: Trie::below(top.trie, &scanned.name),
            files: &files,
            rules: &top.listing.rules,
        };
        let found = std::mem::replace(&mut scanned.found, Found::Vanished);
        let slot = top.ahead[i].take();
        let mark = path.push(scanned.name.as_bytes());
        let at = (path.as_path(), &*scanned);
        match self.entry(at, found, slot, &place)? {
            Walked::Done(found) => {
                scanned.found = found;
                path.cut(mark);
                Ok(None)
            }
            Walked::Enter(node, listing, dev) => {
                let at = path.as_path();
                let dir = self.open_dir(at, dev, listing, place.trie, Some(node), mark);
                Ok(Some(dir))
            }
        }
    }

    /// Hands a walked directory to the finalizer and puts it in its parent's entries;
    /// returns its job when it is the root.
    fn leave_dir(
        &mut self,
        done: DirFrame,
        parent: Option<&mut DirFrame>,
    ) -> Result<Option<usize>> {
        let (node, job) = self.close_dir(done)?;
        let Some(parent) = parent else {
            return Ok(Some(job));
        };
        parent.entries[parent.next - 1].found =
            Found::Subdir(node.expect("a subdirectory's node"), job);
        Ok(None)
    }

    /// Starts walking a directory from its listing: asks for its subdirectories' scans.
    fn open_dir<'t>(
        &mut self,
        path: &Path,
        dev: Option<u64>,
        mut listing: Listing,
        trie: Option<&'t Trie>,
        node: Option<Box<Node>>,
        mark: usize,
    ) -> DirFrame<'t> {
        if let Some(e) = listing.error.take() {
            self.warn_error(e);
        }
        let ahead = self.scan_ahead(path, dev, &listing, trie);
        DirFrame {
            entries: std::mem::take(&mut listing.entries),
            listing,
            ahead,
            next: 0,
            dev,
            trie,
            files: Arc::new(Gather::default()),
            node,
            mark,
        }
    }

    /// Hands a walked directory to the finalizer; returns its node (None for the root)
    /// and the job number its tree id will come under.
    fn close_dir(&mut self, d: DirFrame) -> Result<(Option<Box<Node>>, usize)> {
        // The finalizer will wait for this directory's files: none may stay behind here.
        self.files_out.flush()?;
        self.shared.stat(|s| s.dirs += 1);
        let job = self.send_dir(d.entries, d.files, Some(d.listing))?;
        Ok((d.node, job))
    }

    /// Sends a directory's entries to the finalizer, with what its listing says of its
    /// tree in the parent snapshot (None: nothing); returns its job number.
    fn send_dir(
        &mut self,
        entries: Vec<Scanned>,
        files: Arc<Gather<Node>>,
        listing: Option<Listing>,
    ) -> Result<usize> {
        let job = self.next_job;
        self.next_job += 1;
        let listing = listing.unwrap_or_default();
        self.dir_tx
            .send(DirTask {
                job,
                entries,
                files,
                same_as: listing.old_tree.filter(|_| listing.as_before),
                old_tree: listing.old_tree,
                old_nodes: listing.old_nodes,
            })
            .map_err(|_| anyhow!("tree finalizer stopped"))?;
        Ok(job)
    }

    /// Asks the scanner for the subdirectories this walk will enter whole, in order.
    fn scan_ahead(
        &self,
        path: &Path,
        dev: Option<u64>,
        listing: &Listing,
        trie: Option<&Trie>,
    ) -> Vec<Option<Arc<Slot>>> {
        let entries = &listing.entries;
        let mut dirs = Vec::new();
        let mut at = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let Found::Node(node) = &e.found else {
                continue;
            };
            let sub_trie = Trie::below(trie, &e.name);
            if node.kind != NodeType::Dir
                || sub_trie.is_some_and(|t| !t.source)
                || self.crosses(node, dev, sub_trie)
            {
                continue;
            }
            dirs.push(scanner::Dir {
                path: path.join(&e.name),
                old: node.subtree,
                rules: listing.rules.clone(),
            });
            at.push(i);
        }
        let mut out = vec![None; entries.len()];
        for (i, slot) in at.into_iter().zip(self.scanner.request(dirs)) {
            out[i] = Some(slot);
        }
        out
    }

    /// Whether a directory is on another file system than its source, with
    /// --one-file-system.
    fn crosses(&self, node: &Node, dev: Option<u64>, trie: Option<&Trie>) -> bool {
        self.one_fs && trie.is_none() && dev.is_some_and(|d| d != node.dev)
    }

    /// Walks one scanned entry at `path`: returns it as walked (see [`Found`]), or the
    /// listing of a directory to enter.
    fn entry(
        &mut self,
        (path, scanned): (&Path, &Scanned),
        found: Found,
        slot: Option<Arc<Slot>>,
        place: &Place,
    ) -> Result<Walked> {
        let node = match found {
            Found::Node(node) => node,
            found => return Ok(Walked::Done(self.no_node(path, found))),
        };
        match node.kind {
            NodeType::Dir => self.dir_entry(path, node, slot, place),
            NodeType::File if scanned.same => {
                log::debug!("unchanged {}", path.display());
                self.unchanged_file(node.size);
                Ok(Walked::Done(Found::Node(node)))
            }
            NodeType::File => self.file_entry(path, scanned, node, place),
            _ => {
                self.shared.counters.files.fetch_add(1, Ordering::Relaxed);
                Ok(Walked::Done(Found::Node(node)))
            }
        }
    }

    /// Walks an entry the scan found no new node for: one as it was, or lost.
    fn no_node(&self, path: &Path, found: Found) -> Found {
        match found {
            Found::Same { file, size } => {
                if file {
                    log::debug!("unchanged {}", path.display());
                    self.unchanged_file(size);
                } else {
                    self.shared.counters.files.fetch_add(1, Ordering::Relaxed);
                }
                found
            }
            Found::Failed(msg) => {
                self.warn_error(msg.into());
                Found::Vanished
            }
            // Vanished: a scan finds nothing else.
            _ => {
                (self.shared.warn)(format!("{}: vanished during backup", path.display()));
                Found::Vanished
            }
        }
    }

    /// A directory: entered with its listing, or left empty when it is on another file
    /// system.
    fn dir_entry(
        &mut self,
        path: &Path,
        node: Box<Node>,
        slot: Option<Arc<Slot>>,
        place: &Place,
    ) -> Result<Walked> {
        if self.crosses(&node, place.dev, place.trie) {
            let job = self.send_dir(Vec::new(), Arc::default(), None)?;
            return Ok(Walked::Done(Found::Subdir(node, job)));
        }
        let listing = match slot {
            Some(slot) => self.scanner.take(&slot, &mut self.names),
            None => {
                let old = node.subtree.and_then(|id| self.scanner.old_tree(id));
                let only = place.trie.and_then(Trie::only);
                self.scanner
                    .scan((path, place.rules), only, old, &mut self.names)
            }
        };
        let in_source = place.trie.is_none_or(|t| t.source);
        let dev = place.dev.unwrap_or(node.dev);
        Ok(Walked::Enter(node, listing, in_source.then_some(dev)))
    }

    /// A file new or changed: queued for the readers.
    fn file_entry(
        &mut self,
        path: &Path,
        scanned: &Scanned,
        node: Box<Node>,
        place: &Place,
    ) -> Result<Walked> {
        let size = node.size;
        let job = FileJob {
            path: path.to_path_buf(),
            node: *node,
            is_new: scanned.old.is_none(),
            done: place.files.promise(),
        };
        self.shared
            .counters
            .to_read
            .fetch_add(size, Ordering::Relaxed);
        self.files_out.push(job, size)?;
        Ok(Walked::Done(Found::Pending))
    }

    /// Counts a file whose content is its node's in the parent snapshot.
    fn unchanged_file(&self, size: u64) {
        self.shared.stat(|s| {
            s.files_unchanged += 1;
            s.bytes_total += size;
        });
        self.shared.counters.files.fetch_add(1, Ordering::Relaxed);
    }
}
