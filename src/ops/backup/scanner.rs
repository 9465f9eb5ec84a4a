//! Directory scanning for backup, ahead of the walk and on several threads: a directory's
//! entries listed, sorted, stat'ed and turned into nodes, next to the same names' nodes
//! from the parent snapshot.
//!
//! On a cold cache an unchanged tree costs little but these calls, and one thread makes
//! them one at a time, each waiting on the disk. The walker asks for its subdirectories
//! as soon as it has listed a directory; scanner threads take the newest requests first,
//! which is the order a depth-first walk needs them in. The walker scans a directory
//! itself when no thread has started it, so it never waits on a queue.
//!
//! Entries scanned ahead of the walk are bounded. A thread lists a directory's names
//! first and is admitted to stat them (and to decode its old tree) only while the
//! entries ahead stay under [`AHEAD`]; one directory larger than that is admitted alone,
//! or at once when the walker is waiting for it. A listing that has to wait for room is
//! dropped and read again once admitted, rather than held.
//!
//! Each entry is compared with its node in the parent snapshot as it is stat'ed. An entry
//! as it was is kept as a marker, not a node, and the old tree is let go of unless the
//! directory's new tree will differ from it: an unchanged tree is held while it is walked
//! or waits to be as little more than its names.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::Warn;
use crate::format::Id;
use crate::format::tree::{LazyTree, Node, NodeType};
use crate::fsmeta::{self, Names};
use crate::ops::exclude::{Inherited, Selection};
use crate::repo::Repository;
use crate::repo::index::MasterIndex;

/// Threads scanning ahead. Their work is mostly waiting on the disk, so more than the
/// cores keeps more requests in flight.
pub const THREADS: usize = 8;
/// Entries scanned or being scanned but not yet walked, each with its old node about
/// 800 bytes: bounds memory in a tree of many or large directories. Counted before they
/// are stat'ed, since sibling directories of many entries, scanned together, would
/// otherwise make the peak of a run that finds nothing changed. A smaller bound costs
/// time on a cold walk for little memory.
const AHEAD: usize = 8192;
/// Directories of this many entries are stat'ed on [`SPLIT_THREADS`] threads.
const SPLIT_AT: usize = 1024;
const SPLIT_THREADS: usize = 4;

/// What became of one directory entry: as scanned, then as walked. The walk turns each
/// entry into what the tree finalizer needs in place, so a directory's entries are held
/// once, not once scanned and again walked.
pub enum Found {
    /// Not a directory, and as it was in the parent snapshot: its node there is its node
    /// (`size` when a file).
    Same { file: bool, size: u64 },
    /// Its node. Scanned, a file's content is filled in only when `Scanned::same`; a
    /// directory's `subtree` is its tree in the parent snapshot.
    Node(Box<Node>),
    /// It was deleted between the listing and the stat; walked: also any entry left out.
    Vanished,
    /// It could not be stat'ed or read; one line naming it.
    Failed(Box<str>),
    /// Walked: a file with the readers, whose node comes back through the directory's
    /// gather.
    Pending,
    /// Walked: a subdirectory and the job that makes its tree. Until the finalizer puts
    /// the new tree id in, the node's `subtree` is the parent snapshot's.
    Subdir(Box<Node>, usize),
}

pub struct Scanned {
    pub name: OsString,
    pub found: Found,
    /// Where the same name's node is in the parent snapshot's tree.
    pub old: Option<usize>,
    /// A file's node: its content is the old node's, unchanged (only its metadata
    /// differs). A directory's: its node is the old one, but maybe for the tree, which
    /// the walk makes.
    pub same: bool,
}

impl Scanned {
    /// Whether the entry is as it was in the parent snapshot (a directory's tree aside).
    fn as_before(&self) -> bool {
        match &self.found {
            Found::Same { .. } => true,
            Found::Node(n) => n.kind == NodeType::Dir && self.same,
            _ => false,
        }
    }
}

/// Whether a directory's new tree takes nodes from its old one: those of its `Same`
/// entries.
pub fn takes_old(entries: &[Scanned]) -> bool {
    entries
        .iter()
        .any(|e| matches!(e.found, Found::Same { .. }))
}

#[derive(Default)]
pub struct Listing {
    /// Sorted by name bytes, excluded entries left out.
    pub entries: Vec<Scanned>,
    /// Why the directory could not be listed (then there are no entries).
    pub error: Option<String>,
    /// The directory's tree in the parent snapshot.
    pub old_tree: Option<Id>,
    /// Whether the new tree can be the old one: the same names, each as it was (the
    /// subdirectories' trees aside, which the walk makes).
    pub as_before: bool,
    /// The old tree, kept when the new tree will differ from it and takes some of its
    /// nodes (the `Same` entries). Otherwise it is not held: it is loaded again should a
    /// subdirectory's tree turn out to differ.
    pub old_nodes: Option<LazyTree>,
    /// The ignore-file rules in force in the directory, for its subdirectories.
    pub rules: Inherited,
}

impl Listing {
    fn failed(error: String) -> Listing {
        Listing {
            error: Some(error),
            ..Listing::default()
        }
    }
}

/// A directory to scan whole.
pub struct Dir {
    pub path: PathBuf,
    /// Its tree in the parent snapshot.
    pub old: Option<Id>,
    /// The ignore-file rules in force in its parent.
    pub rules: Inherited,
}

enum State {
    Queued,
    Running,
    /// The listing and the entries it was admitted with.
    Done(Listing, usize),
    Taken,
}

/// A requested scan; the walker takes its listing with [`Scanner::take`].
pub struct Slot {
    dir: Dir,
    state: Mutex<State>,
    done: Condvar,
    /// The walker waits for this listing: it is admitted whatever is ahead.
    wanted: AtomicBool,
}

/// A name to scan, with its inode number when it was listed (else 0).
type Listed = (OsString, u64);

pub struct Scanner<'a> {
    repo: &'a Repository,
    index: Arc<MasterIndex>,
    selection: &'a Selection,
    warn: Warn,
    queue: Mutex<(Vec<Arc<Slot>>, bool)>,
    wake: Condvar,
    ahead: Mutex<usize>,
    room: Condvar,
}

pub struct Closer<'s, 'a>(&'s Scanner<'a>);

impl Drop for Closer<'_, '_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("scanner poisoned")
}

impl<'a> Scanner<'a> {
    pub fn new(repo: &'a Repository, selection: &'a Selection, warn: Warn) -> Self {
        Scanner {
            repo,
            index: repo.index(),
            selection,
            warn,
            queue: Mutex::new((Vec::new(), false)),
            wake: Condvar::new(),
            ahead: Mutex::new(0),
            room: Condvar::new(),
        }
    }

    /// Queues scans of `dirs`, which the walker will take in this order.
    pub fn request(&self, dirs: Vec<Dir>) -> Vec<Arc<Slot>> {
        let slots: Vec<Arc<Slot>> = dirs
            .into_iter()
            .map(|dir| {
                Arc::new(Slot {
                    dir,
                    state: Mutex::new(State::Queued),
                    done: Condvar::new(),
                    wanted: AtomicBool::new(false),
                })
            })
            .collect();
        let mut q = lock(&self.queue);
        q.0.extend(slots.iter().rev().cloned()); // the first one on top
        drop(q);
        self.wake.notify_all();
        slots
    }

    /// The listing of a requested directory: scanned already, awaited while a thread
    /// scans it, or scanned here when none has started.
    pub fn take(&self, slot: &Slot, names: &mut Names) -> Listing {
        let mut st = lock(&slot.state);
        loop {
            match std::mem::replace(&mut *st, State::Taken) {
                State::Queued => {
                    drop(st);
                    return self.scan_dir(&slot.dir, names, |_, _| true);
                }
                State::Running => {
                    *st = State::Running;
                    {
                        // Under the lock its thread waits for room with, so the wake-up
                        // cannot fall between its check and its wait.
                        let _ahead = lock(&self.ahead);
                        slot.wanted.store(true, Ordering::Relaxed);
                        self.room.notify_all();
                    }
                    st = slot.done.wait(st).expect("scanner poisoned");
                }
                State::Done(listing, admitted) => {
                    *lock(&self.ahead) -= admitted;
                    self.room.notify_all();
                    return listing;
                }
                State::Taken => unreachable!("a directory's listing is taken once"),
            }
        }
    }

    /// Ends the scanner threads once the walk is over (or has failed).
    pub fn close(&self) {
        lock(&self.queue).1 = true;
        self.wake.notify_all();
        // Threads check `closed` under this lock before they wait for room, so the
        // wake-up cannot fall between their check and their wait.
        let _ahead = lock(&self.ahead);
        self.room.notify_all();
    }

    /// A guard that closes the scanner when dropped.
    pub fn closer(&self) -> Closer<'_, 'a> {
        Closer(self)
    }

    /// A scanner thread's body.
    pub fn run(&self) {
        let mut names = Names::default();
        while let Some(slot) = self.next() {
            {
                let mut st = lock(&slot.state);
                if !matches!(*st, State::Queued) {
                    continue; // the walker scanned it itself
                }
                *st = State::Running;
            }
            // A panic here would leave the walker waiting on this slot for ever.
            let mut admitted = 0;
            let listing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.scan_ahead(&slot, &mut admitted, &mut names)
            }))
            .unwrap_or_else(|_| {
                Listing::failed(format!("{}: scanning failed", slot.dir.path.display()))
            });
            *lock(&slot.state) = State::Done(listing, admitted);
            slot.done.notify_all();
        }
    }

    /// Scans a requested directory ahead of the walk, once admitted; `admitted` is set to
    /// the entries it was admitted with. Closed, the listing is empty: nobody takes it.
    fn scan_ahead(&self, slot: &Slot, admitted: &mut usize, names: &mut Names) -> Listing {
        self.scan_dir(&slot.dir, names, |n, wait| {
            let admit = self.admit(slot, n, wait);
            if admit {
                *admitted = n;
            }
            admit
        })
    }

    /// Counts `n` more entries ahead of the walk if they fit (or nothing is ahead, or the
    /// walker waits for this one); when they do not, waits for room if `wait`, else says
    /// false. False once closed.
    fn admit(&self, slot: &Slot, n: usize, wait: bool) -> bool {
        let mut ahead = lock(&self.ahead);
        loop {
            if lock(&self.queue).1 {
                return false;
            }
            if *ahead == 0 || *ahead + n <= AHEAD || slot.wanted.load(Ordering::Relaxed) {
                *ahead += n;
                return true;
            }
            if !wait {
                return false;
            }
            ahead = self.room.wait(ahead).expect("scanner poisoned");
        }
    }

    fn next(&self) -> Option<Arc<Slot>> {
        let mut q = lock(&self.queue);
        loop {
            if q.1 {
                return None;
            }
            if let Some(s) = q.0.pop() {
                return Some(s);
            }
            q = self.wake.wait(q).expect("scanner poisoned");
        }
    }

    /// Scans a requested directory whole, once `admit(n, wait)` lets through the entries
    /// listed (plus one for the directory): at once, or else after waiting for room, with
    /// the listing dropped meanwhile and read again. An empty listing when it does not.
    fn scan_dir(
        &self,
        dir: &Dir,
        names: &mut Names,
        mut admit: impl FnMut(usize, bool) -> bool,
    ) -> Listing {
        let mut listed = match self.list(&dir.path, None) {
            Ok(listed) => listed,
            Err(error) => return Listing::failed(error),
        };
        let n = listed.len() + 1;
        if !admit(n, false) {
            drop(listed);
            if !admit(n, true) {
                return Listing::default();
            }
            listed = match self.list(&dir.path, None) {
                Ok(listed) => listed,
                Err(error) => return Listing::failed(error),
            };
        }
        let old = dir.old.and_then(|id| self.old_tree(id));
        self.fill((&dir.path, &dir.rules), listed, true, old, names)
    }

    /// The parent snapshot's tree of a directory, with its id; unreadable, its files are
    /// read again.
    pub fn old_tree(&self, id: Id) -> Option<(Id, LazyTree)> {
        match self.repo.load_tree_lazy(&id) {
            Ok(t) => Some((id, t)),
            // Another host's identical tree, deduplicated: this key cannot read it
            // (§20), and reads the files again without a word.
            Err(e) if crate::repo::repository::not_permitted(&e) => None,
            Err(e) => {
                (self.warn)(format!(
                    "parent tree unreadable, reading its files again: {}",
                    crate::error::one_line(&e)
                ));
                None
            }
        }
    }

    /// Scans `path`, where the ignore-file rules `up` are in force: all of it, or only the
    /// names in `only` (the way down to a backup source, which no exclude applies to).
    /// `old` is its tree in the parent snapshot.
    pub fn scan(
        &self,
        (path, up): (&Path, &Inherited),
        only: Option<Vec<OsString>>,
        old: Option<(Id, LazyTree)>,
        names: &mut Names,
    ) -> Listing {
        let whole = only.is_none();
        match self.list(path, only) {
            Ok(listed) => self.fill((path, up), listed, whole, old, names),
            Err(error) => Listing::failed(error),
        }
    }

    /// The names to scan in `path`, with their inode numbers when listed; why it cannot
    /// be listed.
    fn list(&self, path: &Path, only: Option<Vec<OsString>>) -> Result<Vec<Listed>, String> {
        let whole = only.is_none();
        let mut listed: Vec<Listed> = match only {
            Some(only) => only.into_iter().map(|n| (n, 0)).collect(),
            // Names and inode numbers only: a directory entry kept until the stat held
            // its name twice.
            None => match fsmeta::list_dir_any(path) {
                Ok(listed) => listed,
                Err(e) => return Err(format!("{}: cannot list directory: {e}", path.display())),
            },
        };
        if whole && let Some(tags) = self.selection.tagged(path, |n| listed_has(&listed, n)) {
            listed.retain(|(n, _)| tags.contains(n));
        }
        Ok(listed)
    }

    /// Stats the `listed` entries of `path` into its listing; `whole`: excludes apply,
    /// with the ignore-file rules `up` and those of its own ignore files.
    fn fill(
        &self,
        (path, up): (&Path, &Inherited),
        mut listed: Vec<Listed>,
        whole: bool,
        old: Option<(Id, LazyTree)>,
        names: &mut Names,
    ) -> Listing {
        // Stat'ed in inode order: on ext4 and its kin, inodes numbered close together
        // share inode-table blocks, so a directory not in the page cache costs fewer and
        // more sequential reads than in name order.
        listed.sort_unstable_by_key(|&(_, ino)| ino);
        let rules = self.rules_in(path, up, whole.then_some(&listed[..]));
        let (old_tree, old_nodes) = match old {
            Some((id, t)) => (Some(id), Some(t)),
            None => (None, None),
        };
        let mut entries: Vec<Scanned> = listed
            .into_iter()
            .map(|(name, _)| Scanned {
                name,
                found: Found::Vanished,
                old: None,
                same: false,
            })
            .collect();
        let dir = open_for_stat(path);
        let excluded = self.stat_all(
            (path, dir.as_ref()),
            &mut entries,
            whole.then_some(&rules),
            old_nodes.as_ref(),
            names,
        );
        let mut excluded = excluded.into_iter();
        entries.retain(|_| !excluded.next().unwrap_or(false));
        entries.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Listing {
            rules,
            ..listing_of(entries, old_tree, old_nodes)
        }
    }

    /// The ignore-file rules in force in `path`, below `up`: its own ignore files are
    /// looked for in its listing, `listed`, when it is scanned whole, and else (on the
    /// way down to a source) opened if there.
    fn rules_in(&self, path: &Path, up: &Inherited, listed: Option<&[Listed]>) -> Inherited {
        if !self.selection.reads_ignore_files() {
            return up.clone();
        }
        let warn = |m: String| (self.warn)(m);
        match listed {
            Some(l) => self
                .selection
                .rules_in(path, up, |n| listed_has(l, n), &warn),
            None => self.selection.rules_in(path, up, |_| true, &warn),
        }
    }

    /// Stats all `entries` of `path` (open as `dir`); which of them an exclude matches
    /// (when `select` gives the ignore-file rules in force: excludes apply).
    fn stat_all(
        &self,
        (path, dir): (&Path, Option<&std::fs::File>),
        entries: &mut [Scanned],
        select: Option<&Inherited>,
        old_nodes: Option<&LazyTree>,
        names: &mut Names,
    ) -> Vec<bool> {
        let mut excluded = vec![false; entries.len()];
        if entries.len() < SPLIT_AT {
            let run = (&mut entries[..], &mut excluded[..]);
            self.stat_run((path, dir), run, select, old_nodes, names);
            return excluded;
        }
        // Large directories are stat'ed on several threads, in runs of neighbouring
        // inodes: one thread, waiting on each inode-table block in turn, made large
        // directories the longest waits of a cold walk. Each fills its part of the
        // entries in place.
        let per = entries.len().div_ceil(SPLIT_THREADS);
        std::thread::scope(|s| {
            let runs = entries.chunks_mut(per).zip(excluded.chunks_mut(per));
            for run in runs {
                s.spawn(move || {
                    let names = &mut Names::default();
                    self.stat_run((path, dir), run, select, old_nodes, names);
                });
            }
        });
        excluded
    }

    /// Stats a run of entries of `path` (open as `dir`) one by one, in the order given,
    /// into their `found` and `old`; marks those an exclude matches (see `stat_all`).
    fn stat_run(
        &self,
        at: (&Path, Option<&std::fs::File>),
        (entries, excluded): (&mut [Scanned], &mut [bool]),
        select: Option<&Inherited>,
        old_nodes: Option<&LazyTree>,
        names: &mut Names,
    ) {
        for (e, excluded) in entries.iter_mut().zip(excluded) {
            *excluded = !self.stat_entry(at, e, select, old_nodes, names);
        }
    }

    /// Stats one entry of `path` (open as `dir`) into its `found` and `old`; false when
    /// an exclude matches it (see `stat_all`), and then it is left as it is.
    fn stat_entry(
        &self,
        (path, dir): (&Path, Option<&std::fs::File>),
        e: &mut Scanned,
        select: Option<&Inherited>,
        old_nodes: Option<&LazyTree>,
        names: &mut Names,
    ) -> bool {
        use nix::fcntl::AtFlags;
        use nix::sys::stat::fstatat;
        let name = &e.name;
        let child = path.join(name);
        let md = match dir {
            Some(d) => fstatat(d, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(std::io::Error::from),
            None => fsmeta::lstat_any(&child),
        };
        if let Some(rules) = select
            && md.as_ref().is_ok_and(|m| {
                let size = u64::try_from(m.st_size).unwrap_or(0);
                (self.selection).excluded(&child, fsmeta::is_dir(m), size, rules)
            })
        {
            return false;
        }
        // An old node that does not decode is as good as none: the entry is read
        // again.
        let old = old_nodes.and_then(|t| t.find(name.as_bytes()));
        let old_node = old.and_then(|i| old_nodes?.node(i).ok());
        e.found = match md {
            Ok(md) => match fsmeta::node_from(&child, name, &md, names, old_node.as_ref()) {
                Ok(node) => {
                    let (found, same) = self.compare(node, old_node.as_ref());
                    e.same = same;
                    found
                }
                Err(e) => Found::Failed(crate::error::one_line(&e).into()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Found::Vanished,
            Err(err) => Found::Failed(format!("{}: {err}", child.display()).into()),
        };
        e.old = old;
        true
    }

    /// A file whose size, times and inode are unchanged has its old content, as long as
    /// the repository still holds all of it.
    fn content_unchanged(&self, node: &Node, o: &Node) -> bool {
        o.kind == NodeType::File
            && o.size == node.size
            && o.mtime_ns == node.mtime_ns
            && o.ctime_ns == node.ctime_ns
            && o.inode == node.inode
            && o.content.iter().all(|id| self.index.contains(id))
    }

    /// An entry's node next to its node in the parent snapshot: what was found, and
    /// whether it is the same (see [`Scanned::same`]).
    fn compare(&self, mut node: Node, old: Option<&Node>) -> (Found, bool) {
        let Some(o) = old else {
            return (Found::Node(Box::new(node)), false);
        };
        let same = match node.kind {
            NodeType::Dir => {
                node.subtree = o.subtree;
                o.subtree.is_some() && node == *o
            }
            NodeType::File => {
                if !self.content_unchanged(&node, o) {
                    return (Found::Node(Box::new(node)), false);
                }
                node.content = o.content.clone();
                node.extents = o.extents.clone();
                if node == *o {
                    let size = node.size;
                    return (Found::Same { file: true, size }, true);
                }
                true
            }
            _ if node == *o => {
                return (
                    Found::Same {
                        file: false,
                        size: 0,
                    },
                    true,
                );
            }
            _ => false,
        };
        (Found::Node(Box::new(node)), same)
    }
}

/// `path` opened to stat its entries relative to it, which spares the kernel a walk down
/// the whole path for every file. O_PATH: a directory on the way to a source may be
/// searchable but not readable. None when it cannot be opened (entries are stat'ed by
/// path then).
fn open_for_stat(path: &Path) -> Option<std::fs::File> {
    if fsmeta::is_long(path) {
        use nix::fcntl::OFlag;
        fsmeta::open_any(path, OFlag::O_PATH | OFlag::O_DIRECTORY).ok()
    } else {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(path)
            .ok()
    }
}

/// A directory's listing from its stat'ed `entries` (sorted, excluded ones left out) and
/// its tree in the parent snapshot: whether it is as before, and whether the old tree is
/// kept.
fn listing_of(entries: Vec<Scanned>, old_tree: Option<Id>, old_nodes: Option<LazyTree>) -> Listing {
    let as_before = old_nodes.as_ref().is_some_and(|o| o.len() == entries.len())
        && entries.iter().all(Scanned::as_before);
    let takes_old = takes_old(&entries);
    Listing {
        entries,
        error: None,
        old_tree,
        as_before,
        old_nodes: old_nodes.filter(|_| !as_before && takes_old),
        rules: Inherited::default(),
    }
}

/// Whether a directory's listing holds `name`.
fn listed_has(listed: &[Listed], name: &std::ffi::OsStr) -> bool {
    listed.iter().any(|(n, _)| n == name)
}
