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
//! or at once when the walker is waiting for it.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::backup::Warn;
use super::exclude::{Excludes, is_cache_dir};
use crate::format::Id;
use crate::format::tree::{Node, Tree};
use crate::fsmeta::{self, Names};
use crate::repo::Repository;

/// Threads scanning ahead. Their work is mostly waiting on the disk, so more than the
/// cores keeps more requests in flight (on the bench's virtual disk a cold no-change run
/// took 1.4 s with four, 1.1 s with eight).
pub const THREADS: usize = 8;
/// Entries scanned or being scanned but not yet walked, each with its old node about
/// 800 bytes: bounds memory in a tree of many or large directories. Counted before they
/// are stat'ed, since the bench's three sibling directories of 6 000 to 10 000 entries,
/// scanned together, had made the peak of a no-change run. On the bench's cold walk, half
/// this bound cost 8% more time for 5 MB less.
const AHEAD: usize = 8192;
/// Directories of this many entries are stat'ed on [`SPLIT_THREADS`] threads.
const SPLIT_AT: usize = 1024;
const SPLIT_THREADS: usize = 4;

/// What became of one directory entry: as scanned, then as walked. The walk turns each
/// entry into what the tree finalizer needs in place, so a directory's entries are held
/// once, not once scanned and again walked.
#[allow(clippy::large_enum_variant)] // nearly every entry is a node: boxing costs more
pub enum Found {
    /// Its node (scanned: content not yet filled in; walked: complete).
    Node(Node),
    /// It was deleted between the listing and the stat; walked: also any entry left out.
    Vanished,
    /// It could not be stat'ed or read; one line naming it.
    Failed(String),
    /// Walked: a file with the readers, whose node comes back through the directory's
    /// gather.
    Pending,
    /// Walked: a subdirectory and the job that makes its tree. Until the finalizer puts
    /// the new tree id in, the node's `subtree` is the parent snapshot's.
    Subdir(Node, usize),
}

pub struct Scanned {
    pub name: OsString,
    pub found: Found,
    /// Where the same name's node is in `Listing::old_nodes`.
    pub old: Option<usize>,
}

#[derive(Default)]
pub struct Listing {
    /// Sorted by name bytes, excluded entries left out.
    pub entries: Vec<Scanned>,
    /// Why the directory could not be listed (then there are no entries).
    pub error: Option<String>,
    /// The directory's tree in the parent snapshot, and its entries. Entries point into
    /// them rather than each holding a copy: a listing waiting to be walked then costs
    /// half the memory.
    pub old_tree: Option<Id>,
    pub old_nodes: Vec<Node>,
}

impl Listing {
    /// An entry's node in the parent snapshot.
    pub fn old(&self, e: &Scanned) -> Option<&Node> {
        e.old.map(|i| &self.old_nodes[i])
    }
}

/// A directory to scan whole.
pub struct Dir {
    pub path: PathBuf,
    /// Its tree in the parent snapshot.
    pub old: Option<Id>,
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

/// A name to scan, with its directory entry when it was listed.
type Listed = (OsString, Option<std::fs::DirEntry>);

pub struct Scanner<'a> {
    repo: &'a Repository,
    excludes: &'a Excludes,
    exclude_caches: bool,
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
    pub fn new(
        repo: &'a Repository,
        excludes: &'a Excludes,
        exclude_caches: bool,
        warn: Warn,
    ) -> Self {
        Scanner {
            repo,
            excludes,
            exclude_caches,
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
                    return self.scan_dir(&slot.dir, names, |_| true);
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
            .unwrap_or_else(|_| Listing {
                error: Some(format!("{}: scanning failed", slot.dir.path.display())),
                ..Listing::default()
            });
            *lock(&slot.state) = State::Done(listing, admitted);
            slot.done.notify_all();
        }
    }

    /// Scans a requested directory ahead of the walk, once admitted; `admitted` is set to
    /// the entries it was admitted with. Closed, the listing is empty: nobody takes it.
    fn scan_ahead(&self, slot: &Slot, admitted: &mut usize, names: &mut Names) -> Listing {
        self.scan_dir(&slot.dir, names, |n| {
            let admit = self.admit(slot, n);
            if admit {
                *admitted = n;
            }
            admit
        })
    }

    /// Waits until `n` more entries fit ahead of the walk (or nothing is ahead, or the
    /// walker waits for this one) and counts them; false once closed.
    fn admit(&self, slot: &Slot, n: usize) -> bool {
        let mut ahead = lock(&self.ahead);
        loop {
            if lock(&self.queue).1 {
                return false;
            }
            if *ahead == 0 || *ahead + n <= AHEAD || slot.wanted.load(Ordering::Relaxed) {
                *ahead += n;
                return true;
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

    /// Scans a requested directory whole, once `admit` lets through the entries listed
    /// (plus one for the directory); an empty listing when it does not.
    fn scan_dir(&self, dir: &Dir, names: &mut Names, admit: impl FnOnce(usize) -> bool) -> Listing {
        let listed = match self.list(&dir.path, None) {
            Ok(listed) => listed,
            Err(listing) => return listing,
        };
        if !admit(listed.len() + 1) {
            return Listing::default();
        }
        let old = dir.old.and_then(|id| self.old_tree(id));
        self.fill(&dir.path, listed, true, old, names)
    }

    /// The parent snapshot's tree of a directory, with its id; unreadable, its files are
    /// read again.
    pub fn old_tree(&self, id: Id) -> Option<(Id, Tree)> {
        match self.repo.load_tree(&id) {
            Ok(t) => Some((id, t)),
            Err(e) => {
                (self.warn)(format!(
                    "parent tree unreadable, reading its files again: {}",
                    crate::error::one_line(&e)
                ));
                None
            }
        }
    }

    /// Scans `path`: all of it, or only the names in `only` (the way down to a backup
    /// source, which no exclude applies to). `old` is its tree in the parent snapshot.
    pub fn scan(
        &self,
        path: &Path,
        only: Option<Vec<OsString>>,
        old: Option<(Id, Tree)>,
        names: &mut Names,
    ) -> Listing {
        let whole = only.is_none();
        match self.list(path, only) {
            Ok(listed) => self.fill(path, listed, whole, old, names),
            Err(listing) => listing,
        }
    }

    /// The names to scan in `path`, with their directory entries when listed; a listing
    /// with the error when it cannot be listed.
    fn list(&self, path: &Path, only: Option<Vec<OsString>>) -> Result<Vec<Listed>, Listing> {
        let whole = only.is_none();
        let mut listed: Vec<Listed> = match only {
            Some(only) => only.into_iter().map(|n| (n, None)).collect(),
            None => match std::fs::read_dir(path) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| (e.file_name(), Some(e))))
                    .collect(),
                Err(e) => {
                    return Err(Listing {
                        error: Some(format!("{}: cannot list directory: {e}", path.display())),
                        ..Listing::default()
                    });
                }
            },
        };
        if whole && self.exclude_caches && is_cache_dir(path) {
            listed.retain(|(n, _)| n == "CACHEDIR.TAG");
        }
        Ok(listed)
    }

    /// Stats the `listed` entries of `path` into its listing; `whole`: excludes apply.
    fn fill(
        &self,
        path: &Path,
        mut listed: Vec<Listed>,
        whole: bool,
        old: Option<(Id, Tree)>,
        names: &mut Names,
    ) -> Listing {
        // Stat'ed in inode order: on ext4 and its kin, inodes numbered close together
        // share inode-table blocks, so a directory not in the page cache costs fewer and
        // more sequential reads than in name order.
        listed.sort_unstable_by_key(|(_, d)| d.as_ref().map_or(0, |d| d.ino()));
        let (old_tree, old_nodes) = match old {
            Some((id, t)) => (Some(id), t.nodes),
            None => (None, Vec::new()),
        };
        let (mut entries, dirents): (Vec<Scanned>, Vec<_>) = listed
            .into_iter()
            .map(|(name, d)| {
                let s = Scanned {
                    name,
                    found: Found::Vanished,
                    old: None,
                };
                (s, d)
            })
            .unzip();
        let mut excluded = vec![false; entries.len()];
        if entries.len() < SPLIT_AT {
            let run = (&mut entries[..], &dirents[..], &mut excluded[..]);
            self.stat_run(path, run, whole, &old_nodes, names);
        } else {
            // Large directories are stat'ed on several threads, in runs of neighbouring
            // inodes: one thread, waiting on each inode-table block in turn, made the
            // bench's directories of 6 000 to 10 000 files the longest waits of a cold
            // walk. Each fills its part of the entries in place.
            let per = entries.len().div_ceil(SPLIT_THREADS);
            let old_nodes = &old_nodes;
            std::thread::scope(|s| {
                let runs = entries
                    .chunks_mut(per)
                    .zip(dirents.chunks(per))
                    .zip(excluded.chunks_mut(per));
                for ((e, d), x) in runs {
                    s.spawn(move || {
                        let names = &mut Names::default();
                        self.stat_run(path, (e, d, x), whole, old_nodes, names);
                    });
                }
            });
        }
        drop(dirents);
        let mut excluded = excluded.into_iter();
        entries.retain(|_| !excluded.next().unwrap_or(false));
        entries.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Listing {
            entries,
            error: None,
            old_tree,
            old_nodes,
        }
    }

    /// Stats a run of entries of `path` one by one, in the order given, into their
    /// `found` and `old`; marks those an exclude matches (when `whole`).
    fn stat_run(
        &self,
        path: &Path,
        (entries, dirents, excluded): (&mut [Scanned], &[Option<std::fs::DirEntry>], &mut [bool]),
        whole: bool,
        old_nodes: &[Node],
        names: &mut Names,
    ) {
        for ((e, dirent), excluded) in entries.iter_mut().zip(dirents).zip(excluded) {
            let name = &e.name;
            let child = path.join(name);
            // Listed entries stat relative to their directory, which spares the kernel a
            // walk down the whole path for every file.
            let md = match &dirent {
                Some(d) => d.metadata(),
                None => std::fs::symlink_metadata(&child),
            };
            if whole
                && md
                    .as_ref()
                    .is_ok_and(|m| self.excludes.excluded(&child, m.is_dir()))
            {
                *excluded = true;
                continue;
            }
            // A tree's names are sorted and unique (Tree::decode checks).
            let old = old_nodes
                .binary_search_by(|n| n.name.0.as_slice().cmp(name.as_bytes()))
                .ok();
            let old_node = old.map(|i| &old_nodes[i]);
            e.found = match md {
                Ok(md) => match fsmeta::node_from(&child, name, &md, names, old_node) {
                    Ok(node) => Found::Node(node),
                    Err(e) => Found::Failed(crate::error::one_line(&e)),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Found::Vanished,
                Err(err) => Found::Failed(format!("{}: {err}", child.display())),
            };
            e.old = old;
        }
    }
}
