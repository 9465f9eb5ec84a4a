//! Directory scanning for backup, ahead of the walk and on several threads: a directory's
//! entries listed, sorted, stat'ed and turned into nodes, next to the same names' nodes
//! from the parent snapshot.
//!
//! On a cold cache an unchanged tree costs little but these calls, and one thread makes
//! them one at a time, each waiting on the disk. The walker asks for its subdirectories
//! as soon as it has listed a directory; scanner threads take the newest requests first,
//! which is the order a depth-first walk needs them in. The walker scans a directory
//! itself when no thread has started it, so it never waits on a queue, and listings
//! scanned but not yet walked are bounded.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
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
/// Entries scanned but not yet walked (each some hundreds of bytes): bounds memory in a
/// tree of many or large directories.
const AHEAD: usize = 8192;

/// What became of one directory entry.
#[allow(clippy::large_enum_variant)] // nearly every entry is a node: boxing costs more
pub enum Found {
    /// Its node (content not yet filled in).
    Node(Node),
    /// It was deleted between the listing and the stat.
    Vanished,
    /// It could not be stat'ed or read; one line naming it.
    Failed(String),
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
    Done(Listing),
    Taken,
}

/// A requested scan; the walker takes its listing with [`Scanner::take`].
pub struct Slot {
    dir: Dir,
    state: Mutex<State>,
    done: Condvar,
}

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
                    return self.scan_dir(&slot.dir, names);
                }
                State::Running => {
                    *st = State::Running;
                    st = slot.done.wait(st).expect("scanner poisoned");
                }
                State::Done(listing) => {
                    *lock(&self.ahead) -= listing.entries.len() + 1;
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
            if !self.reserve() {
                break;
            }
            {
                let mut st = lock(&slot.state);
                if !matches!(*st, State::Queued) {
                    continue; // the walker scanned it itself
                }
                *st = State::Running;
            }
            // A panic here would leave the walker waiting on this slot for ever.
            let listing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.scan_dir(&slot.dir, &mut names)
            }))
            .unwrap_or_else(|_| Listing {
                error: Some(format!("{}: scanning failed", slot.dir.path.display())),
                ..Listing::default()
            });
            *lock(&self.ahead) += listing.entries.len() + 1;
            *lock(&slot.state) = State::Done(listing);
            slot.done.notify_all();
        }
    }

    /// Waits for room for another listing ahead of the walk; false once closed.
    fn reserve(&self) -> bool {
        let mut ahead = lock(&self.ahead);
        loop {
            if lock(&self.queue).1 {
                return false;
            }
            if *ahead < AHEAD {
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

    fn scan_dir(&self, dir: &Dir, names: &mut Names) -> Listing {
        let old = dir.old.and_then(|id| self.old_tree(id));
        self.scan(&dir.path, None, old, names)
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
        // Entries stat relative to their directory, which spares the kernel a walk down
        // the whole path for every file.
        let mut listed: Vec<(OsString, Option<std::fs::DirEntry>)> = match only {
            Some(only) => only.into_iter().map(|n| (n, None)).collect(),
            None => match std::fs::read_dir(path) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| (e.file_name(), Some(e))))
                    .collect(),
                Err(e) => {
                    return Listing {
                        error: Some(format!("{}: cannot list directory: {e}", path.display())),
                        ..Listing::default()
                    };
                }
            },
        };
        if whole && self.exclude_caches && is_cache_dir(path) {
            listed.retain(|(n, _)| n == "CACHEDIR.TAG");
        }
        // Stat'ed in inode order: on ext4 and its kin, inodes numbered close together
        // share inode-table blocks, so a directory not in the page cache costs fewer and
        // more sequential reads than in name order.
        listed.sort_unstable_by_key(|(_, d)| d.as_ref().map_or(0, |d| d.ino()));
        let (old_tree, old_nodes) = match old {
            Some((id, t)) => (Some(id), t.nodes),
            None => (None, Vec::new()),
        };
        let mut entries = Vec::with_capacity(listed.len());
        for (name, dirent) in listed {
            let child = path.join(&name);
            let md = match &dirent {
                Some(d) => d.metadata(),
                None => std::fs::symlink_metadata(&child),
            };
            if whole
                && md
                    .as_ref()
                    .is_ok_and(|m| self.excludes.excluded(&child, m.is_dir()))
            {
                continue;
            }
            // A tree's names are sorted and unique (Tree::decode checks).
            let old = old_nodes
                .binary_search_by(|n| n.name.0.as_slice().cmp(name.as_bytes()))
                .ok();
            let old_node = old.map(|i| &old_nodes[i]);
            let found = match md {
                Ok(md) => match fsmeta::node_from(&child, &name, &md, names, old_node) {
                    Ok(node) => Found::Node(node),
                    Err(e) => Found::Failed(crate::error::one_line(&e)),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Found::Vanished,
                Err(e) => Found::Failed(format!("{}: {e}", child.display())),
            };
            entries.push(Scanned { name, found, old });
        }
        entries.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Listing {
            entries,
            error: None,
            old_tree,
            old_nodes,
        }
    }
}
