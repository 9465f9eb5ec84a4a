//! The backup pipeline, as stages with bounded queues between them:
//!
//! scanners (list, stat, build nodes, load parent trees; ahead of the walk, see scan.rs)
//!    │ directory listings, in walk order
//!    ▼
//! walker (this thread) ──files──▶ readers (read, chunk, hash, dedup)
//!    │                                 │ new chunks
//!    │ directories, post-order         ▼
//!    ▼                            sealers (compress, encrypt) ──▶ packer ──▶ uploaders
//! finalizer (waits for each directory's files, writes its tree blob) ──▶ packer
//!
//! Files go to the readers, and chunks to the sealers, in batches, and a directory's
//! files come back to the finalizer with one wake-up (see handoff.rs).
//!
//! Unchanged files (same size, mtime, ctime and inode as in the parent snapshot) reuse the
//! parent's blob list without being opened. Memory is bounded by the queue and batch
//! sizes, not by the size or number of files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::{Receiver, Sender, bounded};

use super::exclude::Excludes;
use super::handoff::{Batcher, Gather, Promise};
use super::scan::{self, Found, Listing, Scanned, Scanner, Slot};
use crate::error::VaultError;
use crate::format::Id;
use crate::format::chunker::Chunker;
use crate::format::crypto::Keys;
use crate::format::pack::{BUNDLE_BELOW, BUNDLE_TARGET, BlobType, seal_blob, seal_bundle};
use crate::format::snapshot::{SNAPSHOT_VERSION, Snapshot, Summary};
use crate::format::tree::{LazyTree, Node, NodeType, Tree};
use crate::fsmeta::{self, Names};
use crate::repo::Repository;
use crate::repo::index::MasterIndex;
use crate::repo::packer::Packer;
use crate::repo::repository::{hostname, username};

pub type Warn = Arc<dyn Fn(String) + Send + Sync>;

pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    pub host: Option<String>,
    pub excludes: Vec<String>,
    pub exclude_files: Vec<PathBuf>,
    pub exclude_caches: bool,
    pub one_file_system: bool,
    /// Back up standard input as one file of this name.
    pub stdin_filename: Option<String>,
    pub dry_run: bool,
    /// Snapshot time override (tests and imports).
    pub time: Option<jiff::Timestamp>,
    pub parent: Option<Id>,
}

/// Live counters for a progress display.
#[derive(Default)]
pub struct Counters {
    pub files: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_added: AtomicU64,
    pub bytes_stored: AtomicU64,
    /// The size of the files the walk found to read (new or changed) so far...
    pub to_read: AtomicU64,
    /// ... and whether it has found them all: then `to_read` is what `bytes_read` goes
    /// to (give or take files that change while read).
    pub scanned: AtomicBool,
}

pub struct BackupResult {
    pub snapshot_id: Option<Id>,
    pub snapshot: Snapshot,
    pub confirmed: super::confirm::Confirmed,
}

/// Blobs already stored or claimed by this run; claiming is atomic so two files with the
/// same chunk store it once.
struct Dedup {
    index: Arc<MasterIndex>,
    claimed: Mutex<HashSet<Id>>,
}

impl Dedup {
    fn claim(&self, id: Id) -> bool {
        !self.index.contains(&id) && self.claimed.lock().expect("dedup poisoned").insert(id)
    }
}

struct Shared {
    keys: Keys,
    chunker: Chunker,
    level: i32,
    /// Whether small data blobs are sealed together (repository version 2).
    bundles: bool,
    dedup: Dedup,
    packer: Packer,
    counters: Arc<Counters>,
    stats: Mutex<Summary>,
    warn: Warn,
}

impl Shared {
    fn stat(&self, f: impl FnOnce(&mut Summary)) {
        f(&mut self.stats.lock().expect("stats poisoned"));
    }
}

struct Chunk {
    id: Id,
    blob_type: BlobType,
    data: Vec<u8>,
}

struct FileJob {
    path: PathBuf,
    node: Node,
    is_new: bool,
    done: Promise<Node>,
}

struct DirTask {
    job: usize,
    /// As walked: see [`Found`].
    entries: Vec<Scanned>,
    files: Arc<Gather<Node>>,
    /// The directory's tree in the parent snapshot, while nothing in it differs from it
    /// but maybe its subdirectories' trees, which the finalizer compares.
    same_as: Option<Id>,
    /// Where the finalizer finds the nodes of the `Same` entries: see [`Listing`].
    old_tree: Option<Id>,
    old_nodes: Option<LazyTree>,
}

/// Files to a reader per batch, at most: few enough that the readers share a directory.
const FILES_PER_BATCH: usize = 32;
/// File bytes per batch, at most: a large file goes nearly alone.
const FILE_BYTES_PER_BATCH: u64 = 8 << 20;
/// Chunk bytes per batch to the sealers.
const CHUNK_BYTES_PER_BATCH: u64 = 1 << 20;

fn chunk_batcher(tx: Sender<Vec<Chunk>>) -> Batcher<Chunk> {
    Batcher::new("blob sealers", tx, usize::MAX, CHUNK_BYTES_PER_BATCH)
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

fn clean_path(p: &Path) -> Result<PathBuf> {
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

/// Backs up, then publishes the snapshot once everything it references is confirmed
/// live (format 3, see `confirm`). When prunes deleted blobs it relied on (it ran past
/// two grace periods), it reads the source again without a parent, against the index as
/// it is now, at most twice.
///
/// `held` is asked right before the snapshot is confirmed and written: the caller
/// renews its lock there (a backup's safety does not rest on it, but repair and key
/// changes wait for it) and fails if it cannot.
pub fn backup(
    repo: &mut Repository,
    opts: &BackupOptions,
    counters: Arc<Counters>,
    warn: Warn,
    held: &dyn Fn() -> Result<()>,
) -> Result<BackupResult> {
    let mut with_parent = true;
    let mut confirmed = super::confirm::Confirmed::default();
    for attempt in 0.. {
        let known: std::collections::BTreeSet<Id> = repo.marks.deletions.keys().copied().collect();
        let snapshot = build(repo, opts, counters.clone(), warn.clone(), with_parent)?;
        confirmed.passes += 1;
        if opts.dry_run {
            return Ok(BackupResult {
                snapshot_id: None,
                snapshot,
                confirmed,
            });
        }
        held()?;
        let lost = match super::confirm::publish(repo, &snapshot, &known, &mut confirmed)? {
            super::confirm::Outcome::Published(id) => {
                return Ok(BackupResult {
                    snapshot_id: Some(id),
                    snapshot,
                    confirmed,
                });
            }
            super::confirm::Outcome::Lost(n) => n,
        };
        if opts.stdin_filename.is_some() || attempt == 2 {
            bail!(
                "{lost} blob(s) this backup references were deleted by a prune while it ran, and the source cannot be read again; nothing was published: run the backup again"
            );
        }
        warn(format!(
            "{lost} blob(s) this backup references were deleted by a prune while it ran (it outlived the grace period): reading the source again"
        ));
        repo.load_index_for_backup()?;
        with_parent = false;
    }
    unreachable!("the loop returns")
}

/// One pass over the sources: packs and index files written, the snapshot not yet.
fn build(
    repo: &Repository,
    opts: &BackupOptions,
    counters: Arc<Counters>,
    warn: Warn,
    with_parent: bool,
) -> Result<Snapshot> {
    let start = Instant::now();
    let host = opts.host.clone().unwrap_or_else(hostname);
    let sources: Vec<PathBuf> = if opts.stdin_filename.is_some() {
        Vec::new()
    } else {
        opts.paths
            .iter()
            .map(|p| clean_path(p))
            .collect::<Result<_>>()?
    };
    for s in &sources {
        std::fs::symlink_metadata(s).with_context(|| format!("backup source {}", s.display()))?;
    }
    if sources.is_empty() && opts.stdin_filename.is_none() {
        return Err(
            VaultError::Usage("backup: name at least one path, or use --stdin".into()).into(),
        );
    }
    let mut paths: Vec<String> = match &opts.stdin_filename {
        Some(name) => vec![format!("/{name}")],
        None => sources
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
    };
    paths.sort();
    paths.dedup();
    if let Some(name) = &opts.stdin_filename
        && !super::walk::safe_name(name.as_bytes())
    {
        return Err(VaultError::Usage(format!(
            "--stdin-filename {name:?}: give a plain file name, without '/'"
        ))
        .into());
    }
    let excludes = Excludes::new(&opts.excludes, &opts.exclude_files)?;

    let parent = if with_parent {
        find_parent(repo, opts, &host, &paths, &warn)
    } else {
        None
    };
    let scanner = Scanner::new(repo, &excludes, opts.exclude_caches, warn.clone());
    let parent_tree = parent.as_ref().and_then(|(_, s)| scanner.old_tree(s.tree));

    let index = repo.index();
    let shared = Arc::new(Shared {
        keys: repo.keys.clone(),
        chunker: Chunker::new(&repo.config.chunker, repo.master_key())?,
        level: repo.config.compression_level,
        bundles: repo.config.bundles(),
        dedup: Dedup {
            index: index.clone(),
            claimed: Mutex::new(HashSet::new()),
        },
        packer: Packer::new(
            &repo.backend,
            &repo.keys,
            repo.config.pack_size,
            opts.dry_run,
        )
        .caching_trees(repo.cache.clone()),
        counters,
        stats: Mutex::new(Summary::default()),
        warn: warn.clone(),
    });

    let workers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8);
    let (chunk_tx, chunk_rx) = bounded::<Vec<Chunk>>(workers * 2);
    let sealers: Vec<_> = (0..workers)
        .map(|_| {
            let (rx, sh) = (chunk_rx.clone(), shared.clone());
            thread::spawn(move || seal_loop(rx, sh))
        })
        .collect();
    drop(chunk_rx);
    let (file_tx, file_rx) = bounded::<Vec<FileJob>>(workers * 2);
    // Twice as many readers as cores: a reader waiting for the disk leaves its core to
    // the others.
    let readers: Vec<_> = (0..workers * 2)
        .map(|_| {
            let (rx, tx, sh) = (file_rx.clone(), chunk_tx.clone(), shared.clone());
            thread::spawn(move || read_loop(rx, chunk_batcher(tx), sh))
        })
        .collect();
    drop(file_rx);
    let (dir_tx, dir_rx) = bounded::<DirTask>(1024);
    let (walk, finished) = thread::scope(|s| {
        let finalizer = {
            let (sh, ctx) = (shared.clone(), chunk_tx.clone());
            s.spawn(move || finalize_loop(dir_rx, chunk_batcher(ctx), sh, repo))
        };
        for _ in 0..scan::THREADS {
            s.spawn(|| scanner.run());
        }
        let walk = {
            // Closed however the walk ends, or the scope would wait on its threads forever.
            let _close = scanner.closer();
            let mut walker = Walker {
                shared: shared.clone(),
                scanner: &scanner,
                one_fs: opts.one_file_system,
                names: Names::default(),
                files_out: Batcher::new(
                    "file readers",
                    file_tx,
                    FILES_PER_BATCH,
                    FILE_BYTES_PER_BATCH,
                ),
                dir_tx,
                next_job: 0,
            };
            match &opts.stdin_filename {
                Some(name) => walker.stdin(name, chunk_batcher(chunk_tx.clone())),
                None => walker.root(&sources, parent_tree),
            }
        };
        shared
            .counters
            .scanned
            .store(walk.is_ok(), Ordering::Relaxed);
        // The walker is gone, and with it the directories' sender: the finalizer ends.
        (walk, finalizer.join())
    });
    drop(chunk_tx);
    let root_job = walk?;
    let finished = finished.map_err(|_| anyhow!("tree finalizer panicked"))?;
    for r in readers {
        r.join().map_err(|_| anyhow!("file reader panicked"))?;
    }
    for s in sealers {
        s.join().map_err(|_| anyhow!("blob sealer panicked"))??;
    }
    let root = finished?
        .remove(&root_job)
        .ok_or_else(|| anyhow!("root tree was not produced"))?;
    let shared = Arc::into_inner(shared).ok_or_else(|| anyhow!("pipeline still running"))?;
    shared.packer.finish()?;

    let mut summary = shared.stats.into_inner().expect("stats poisoned");
    summary.duration_s = start.elapsed().as_secs_f64();
    let snapshot = Snapshot {
        version: SNAPSHOT_VERSION,
        time: opts.time.unwrap_or_else(jiff::Timestamp::now).to_string(),
        host,
        user: username(),
        paths,
        tags: opts.tags.clone(),
        parent: parent.map(|(id, _)| id),
        tree: root,
        excludes: excludes.list.clone(),
        program: format!("vault {}", env!("CARGO_PKG_VERSION")),
        summary,
        original: None,
    };
    Ok(snapshot)
}

fn find_parent(
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

struct Walker<'s, 'r> {
    shared: Arc<Shared>,
    scanner: &'s Scanner<'r>,
    one_fs: bool,
    names: Names,
    files_out: Batcher<FileJob>,
    dir_tx: Sender<DirTask>,
    next_job: usize,
}

impl Walker<'_, '_> {
    fn warn_error(&self, msg: String) {
        self.shared.stat(|s| s.errors += 1);
        (self.shared.warn)(msg);
    }

    /// Walks the sources from the root, whose tree in the parent snapshot is `old`.
    fn root(&mut self, sources: &[PathBuf], old: Option<(Id, LazyTree)>) -> Result<usize> {
        let mut trie = Trie::default();
        for s in sources {
            trie.insert(s);
        }
        let listing = self
            .scanner
            .scan(Path::new("/"), trie.only(), old, &mut self.names);
        self.walk(listing, Some(&trie))
    }

    /// Walks the tree from the root's listing, depth first in name order; `trie` limits it
    /// to the source paths (None: all). Returns the job number whose tree id the finalizer
    /// will produce. The walk keeps its own stack, a directory's entries per level, and
    /// one path that grows and shrinks with it, so any depth works in memory that grows
    /// with the depth only.
    fn walk(&mut self, listing: Listing, trie: Option<&Trie>) -> Result<usize> {
        let mut path = super::walk::SnapPath::new(Path::new("/"));
        let mut stack = vec![self.open_dir(path.as_path(), None, listing, trie, None, 0)];
        loop {
            let top = stack
                .last_mut()
                .expect("a directory until the root is done");
            let Some(i) = top.next_entry() else {
                let done = stack.pop().expect("a directory");
                path.cut(done.mark);
                let (node, job) = self.close_dir(done)?;
                match stack.last_mut() {
                    Some(parent) => {
                        parent.entries[parent.next - 1].found =
                            Found::Subdir(node.expect("a subdirectory's node"), job)
                    }
                    None => return Ok(job),
                }
                continue;
            };
            let (dev, files) = (top.dev, top.files.clone());
            let scanned = &mut top.entries[i];
            let sub_trie = Trie::below(top.trie, &scanned.name);
            let found = std::mem::replace(&mut scanned.found, Found::Vanished);
            let slot = top.ahead[i].take();
            let mark = path.push(scanned.name.as_bytes());
            let at = (path.as_path(), &*scanned);
            match self.entry(at, found, slot, dev, sub_trie, &files)? {
                Walked::Done(found) => {
                    scanned.found = found;
                    path.cut(mark);
                }
                Walked::Enter(node, listing, dev) => {
                    let dir =
                        self.open_dir(path.as_path(), dev, listing, sub_trie, Some(node), mark);
                    stack.push(dir);
                }
            }
        }
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
        let job = self.next_job;
        self.next_job += 1;
        self.shared.stat(|s| s.dirs += 1);
        let listing = d.listing;
        self.dir_tx
            .send(DirTask {
                job,
                entries: d.entries,
                files: d.files,
                same_as: listing.old_tree.filter(|_| listing.as_before),
                old_tree: listing.old_tree,
                old_nodes: listing.old_nodes,
            })
            .map_err(|_| anyhow!("tree finalizer stopped"))?;
        Ok((d.node, job))
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
            dirs.push(scan::Dir {
                path: path.join(&e.name),
                old: node.subtree,
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
        dev: Option<u64>,
        trie: Option<&Trie>,
        files: &Arc<Gather<Node>>,
    ) -> Result<Walked> {
        let node = match found {
            Found::Node(node) => node,
            Found::Same { file, size } => {
                if file {
                    log::debug!("unchanged {}", path.display());
                    self.unchanged_file(size);
                } else {
                    self.shared.counters.files.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(Walked::Done(found));
            }
            Found::Failed(msg) => {
                self.warn_error(msg.into());
                return Ok(Walked::Done(Found::Vanished));
            }
            // Vanished: a scan finds nothing else.
            _ => {
                (self.shared.warn)(format!("{}: vanished during backup", path.display()));
                return Ok(Walked::Done(Found::Vanished));
            }
        };
        match node.kind {
            NodeType::Dir => {
                if self.crosses(&node, dev, trie) {
                    let job = self.empty_dir()?;
                    return Ok(Walked::Done(Found::Subdir(node, job)));
                }
                let listing = match slot {
                    Some(slot) => self.scanner.take(&slot, &mut self.names),
                    None => {
                        let old = node.subtree.and_then(|id| self.scanner.old_tree(id));
                        let only = trie.and_then(Trie::only);
                        self.scanner.scan(path, only, old, &mut self.names)
                    }
                };
                let in_source = trie.is_none_or(|t| t.source);
                let dev = dev.unwrap_or(node.dev);
                Ok(Walked::Enter(node, listing, in_source.then_some(dev)))
            }
            NodeType::File if scanned.same => {
                log::debug!("unchanged {}", path.display());
                self.unchanged_file(node.size);
                Ok(Walked::Done(Found::Node(node)))
            }
            NodeType::File => {
                let size = node.size;
                let job = FileJob {
                    path: path.to_path_buf(),
                    node: *node,
                    is_new: scanned.old.is_none(),
                    done: files.promise(),
                };
                self.shared
                    .counters
                    .to_read
                    .fetch_add(size, Ordering::Relaxed);
                self.files_out.push(job, size)?;
                Ok(Walked::Done(Found::Pending))
            }
            _ => {
                self.shared.counters.files.fetch_add(1, Ordering::Relaxed);
                Ok(Walked::Done(Found::Node(node)))
            }
        }
    }

    /// Counts a file whose content is its node's in the parent snapshot.
    fn unchanged_file(&self, size: u64) {
        self.shared.stat(|s| {
            s.files_unchanged += 1;
            s.bytes_total += size;
        });
        self.shared.counters.files.fetch_add(1, Ordering::Relaxed);
    }

    fn empty_dir(&mut self) -> Result<usize> {
        let job = self.next_job;
        self.next_job += 1;
        self.dir_tx
            .send(DirTask {
                job,
                entries: Vec::new(),
                files: Arc::default(),
                same_as: None,
                old_tree: None,
                old_nodes: None,
            })
            .map_err(|_| anyhow!("tree finalizer stopped"))?;
        Ok(job)
    }

    fn stdin(&mut self, name: &str, mut chunks: Batcher<Chunk>) -> Result<usize> {
        let mut node = Node::new(name.as_bytes().to_vec(), NodeType::File);
        node.mode = 0o644;
        node.uid = nix::unistd::getuid().as_raw();
        node.gid = nix::unistd::getgid().as_raw();
        let now = jiff::Timestamp::now().as_nanosecond() as i64;
        node.mtime_ns = now;
        node.ctime_ns = now;
        let (content, size) = chunk_stream(&self.shared, &mut std::io::stdin().lock(), &mut chunks)
            .context("reading standard input")?;
        chunks.flush()?;
        node.content = content;
        node.size = size;
        self.shared.stat(|s| {
            s.files_new += 1;
            s.bytes_total += size;
        });
        let job = self.next_job;
        self.next_job += 1;
        self.dir_tx
            .send(DirTask {
                job,
                entries: vec![Scanned {
                    name: name.into(),
                    found: Found::Node(Box::new(node)),
                    old: None,
                    same: false,
                }],
                files: Arc::default(),
                same_as: None,
                old_tree: None,
                old_nodes: None,
            })
            .map_err(|_| anyhow!("tree finalizer stopped"))?;
        Ok(job)
    }
}

/// Reads `src` to the end, chunks it, and queues chunks new to the repository for sealing.
/// Returns the blob ids in order and the number of bytes read.
fn chunk_stream(
    sh: &Shared,
    src: &mut dyn Read,
    out: &mut Batcher<Chunk>,
) -> Result<(Vec<Id>, u64)> {
    // One buffer per reading thread, reused from file to file: a fresh multi-megabyte
    // buffer per file cost more than reading a small file does.
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        let r = chunk_into(sh, src, out, buf);
        if buf.capacity() > 4 * sh.chunker.max_size() {
            *buf = Vec::new(); // a stdin stream may have grown it
        }
        r
    })
}

fn chunk_into(
    sh: &Shared,
    src: &mut dyn Read,
    out: &mut Batcher<Chunk>,
    buf: &mut Vec<u8>,
) -> Result<(Vec<Id>, u64)> {
    // Reads come in steps of this size; the buffer grows beyond it only while no cut is
    // found (up to the maximum chunk size). Each reader holds its buffer for the whole
    // run, so a larger step costs resident memory (4 MiB steps added 6 MB to the first
    // backup's peak on the bench) without saving measurable time.
    const STEP: usize = 1 << 20;
    let max = sh.chunker.max_size();
    let mut start = 0;
    let mut eof = false;
    let mut ids = Vec::new();
    let mut total = 0u64;
    loop {
        let avail = buf.len() - start;
        // A cut found before the end of the bytes at hand is where it would be with all
        // of them: the chunker looks only backwards from each position.
        let cut = (avail > 0).then(|| sh.chunker.next_cut(&buf[start..]));
        match cut {
            Some(cut) if cut < avail || avail >= max || eof => {
                let data = &buf[start..start + cut];
                let id = sh.keys.blob_id(BlobType::Data as u8, data);
                ids.push(id);
                if sh.dedup.claim(id) {
                    let chunk = Chunk {
                        id,
                        blob_type: BlobType::Data,
                        data: data.to_vec(),
                    };
                    out.push(chunk, cut as u64)?;
                }
                start += cut;
            }
            _ if eof => break,
            _ => {
                buf.drain(..start);
                start = 0;
                // read_to_end fills spare capacity without zeroing it first.
                buf.reserve(STEP);
                let n = (&mut *src).take(STEP as u64).read_to_end(buf)?;
                eof = n < STEP;
                total += n as u64;
                sh.counters
                    .bytes_read
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    Ok((ids, total))
}

/// Reads only the data extents of a sparse file, back to back.
struct ExtentReader<'a> {
    file: &'a File,
    extents: Vec<[u64; 2]>,
    i: usize,
    done_in_extent: u64,
}

impl Read for ExtentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        while let Some(&[off, len]) = self.extents.get(self.i) {
            if self.done_in_extent >= len {
                self.i += 1;
                self.done_in_extent = 0;
                continue;
            }
            let want = buf.len().min((len - self.done_in_extent) as usize);
            let n = self
                .file
                .read_at(&mut buf[..want], off + self.done_in_extent)?;
            if n == 0 {
                // The file shrank under us; stop here and let the change check report it.
                self.i = self.extents.len();
                return Ok(0);
            }
            self.done_in_extent += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

fn open_noatime(path: &Path) -> std::io::Result<File> {
    if fsmeta::is_long(path) {
        use nix::fcntl::OFlag;
        let r = fsmeta::open_any(path, OFlag::O_RDONLY | OFlag::O_NOATIME | OFlag::O_NOFOLLOW);
        return match r {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                fsmeta::open_any(path, OFlag::O_RDONLY | OFlag::O_NOFOLLOW)
            }
            r => r,
        };
    }
    let r = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW)
        .open(path);
    match r {
        // O_NOATIME is allowed only to the file's owner (or root).
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path),
        r => r,
    }
}

fn read_file(sh: &Shared, job: &mut FileJob, chunks: &mut Batcher<Chunk>) -> Result<()> {
    let file = open_noatime(&job.path)?;
    let md = file.metadata()?;
    let extents = fsmeta::sparse_extents(&file, &md);
    let (content, read) = match &extents {
        Some(ex) => {
            let mut r = ExtentReader {
                file: &file,
                extents: ex.clone(),
                i: 0,
                done_in_extent: 0,
            };
            chunk_stream(sh, &mut r, chunks)?
        }
        None => {
            let mut f = &file;
            f.seek(SeekFrom::Start(0))?;
            chunk_stream(sh, &mut f, chunks)?
        }
    };
    let after = file.metadata()?;
    let expected: u64 = extents
        .as_ref()
        .map_or(job.node.size, |e| e.iter().map(|x| x[1]).sum());
    let changed = after.size() != job.node.size
        || after.mtime() != md.mtime()
        || after.mtime_nsec() != md.mtime_nsec()
        || read != expected
        || md.size() != job.node.size;
    if changed {
        sh.stat(|s| s.files_changed_during_read += 1);
        (sh.warn)(format!(
            "{}: changed while it was read; stored as read",
            job.path.display()
        ));
        // Keep what was read consistent with the node: size is what we stored.
        if extents.is_none() {
            job.node.size = read;
        }
    }
    job.node.content = content;
    job.node.extents = extents;
    Ok(())
}

fn read_loop(rx: Receiver<Vec<FileJob>>, mut chunks: Batcher<Chunk>, sh: Arc<Shared>) {
    for mut job in rx.into_iter().flatten() {
        let r = read_file(&sh, &mut job, &mut chunks);
        sh.counters.files.fetch_add(1, Ordering::Relaxed);
        let reply = match r {
            Ok(()) => {
                let size = job.node.size;
                let what = if job.is_new { "new" } else { "modified" };
                log::info!("{what} {}", job.path.display());
                sh.stat(|s| {
                    if job.is_new {
                        s.files_new += 1
                    } else {
                        s.files_changed += 1
                    }
                    s.bytes_total += size;
                    s.bytes_read += size;
                });
                Some(job.node)
            }
            Err(e) => {
                sh.stat(|s| s.errors += 1);
                (sh.warn)(format!(
                    "{}: cannot read, skipped: {}",
                    job.path.display(),
                    crate::error::one_line(&e)
                ));
                None
            }
        };
        job.done.keep(reply);
    }
}

/// Seals queued chunks; small data chunks are gathered into bundles. After a failure it
/// keeps draining the queue, so that no reader blocks forever, and reports the first
/// error at the end.
fn seal_loop(rx: Receiver<Vec<Chunk>>, sh: Arc<Shared>) -> Result<()> {
    let mut first_err = None;
    let mut bundle: Vec<Chunk> = Vec::new();
    let mut bundled = 0;
    for c in rx.into_iter().flatten() {
        if first_err.is_some() {
            continue;
        }
        let r = if sh.bundles && c.blob_type == BlobType::Data && c.data.len() < BUNDLE_BELOW {
            bundled += c.data.len();
            bundle.push(c);
            if bundled >= BUNDLE_TARGET {
                bundled = 0;
                seal_members(&sh, std::mem::take(&mut bundle))
            } else {
                Ok(())
            }
        } else {
            seal_one(&sh, c)
        };
        if let Err(e) = r {
            first_err = Some(e);
        }
    }
    if first_err.is_none() && !bundle.is_empty() {
        first_err = seal_members(&sh, bundle).err();
    }
    first_err.map_or(Ok(()), Err)
}

fn seal_one(sh: &Shared, c: Chunk) -> Result<()> {
    let blob = seal_blob(&sh.keys, c.blob_type, c.id, &c.data, sh.level);
    let stored = blob.bytes.len() as u64;
    sh.packer.add(blob)?;
    added(sh, c.data.len() as u64, stored, 1);
    Ok(())
}

/// Seals `members` as one bundle (a lone member as a plain blob).
fn seal_members(sh: &Shared, mut members: Vec<Chunk>) -> Result<()> {
    if members.len() == 1 {
        return seal_one(sh, members.remove(0));
    }
    let parts: Vec<(Id, &[u8])> = members.iter().map(|c| (c.id, c.data.as_slice())).collect();
    let bundle = seal_bundle(&sh.keys, BlobType::Data, &parts, sh.level);
    let raw: u64 = members.iter().map(|c| c.data.len() as u64).sum();
    let stored = bundle.bytes.len() as u64;
    sh.packer.add_bundle(bundle)?;
    added(sh, raw, stored, members.len() as u64);
    Ok(())
}

fn added(sh: &Shared, raw: u64, stored: u64, blobs: u64) {
    sh.counters.bytes_added.fetch_add(raw, Ordering::Relaxed);
    sh.counters
        .bytes_stored
        .fetch_add(stored, Ordering::Relaxed);
    sh.stat(|s| {
        s.bytes_added += raw;
        s.bytes_stored += stored;
        s.blobs_added += blobs;
    });
}

/// A walked directory's tree: its entries' nodes, those `Same` taken from the parent
/// snapshot's tree (loaded again when the listing let go of it).
fn new_tree(task: DirTask, repo: &Repository) -> Result<Tree> {
    let old = match (task.old_nodes, task.old_tree) {
        (Some(old), _) => Some(old),
        (None, Some(id)) if scan::takes_old(&task.entries) => Some(
            repo.load_tree_lazy(&id)
                .with_context(|| format!("parent snapshot's tree {} unreadable", id.short()))?,
        ),
        _ => None,
    };
    let mut nodes = Vec::with_capacity(task.entries.len());
    for e in task.entries {
        match e.found {
            Found::Node(n) => nodes.push(*n),
            Found::Same { .. } => {
                let (Some(i), Some(old)) = (e.old, &old) else {
                    bail!(
                        "{}: not in the parent snapshot's tree",
                        e.name.to_string_lossy()
                    );
                };
                let node = old.node(i).with_context(|| {
                    format!(
                        "{}: in the parent snapshot's tree",
                        e.name.to_string_lossy()
                    )
                })?;
                nodes.push(node);
            }
            _ => {}
        }
    }
    Ok(Tree { nodes })
}

/// Builds tree blobs in post-order; returns the tree id of each job not yet consumed by
/// its parent (at the end: only the root).
fn finalize_loop(
    rx: Receiver<DirTask>,
    mut chunks: Batcher<Chunk>,
    sh: Arc<Shared>,
    repo: &Repository,
) -> Result<HashMap<usize, Id>> {
    let mut done: HashMap<usize, Id> = HashMap::new();
    for mut task in rx {
        let mut same_as = task.same_as;
        let mut read = task.files.wait().into_iter();
        for e in &mut task.entries {
            e.found = match std::mem::replace(&mut e.found, Found::Vanished) {
                Found::Pending => match read.next() {
                    Some(Some(n)) => Found::Node(Box::new(n)),
                    _ => Found::Vanished,
                },
                Found::Subdir(mut n, job) => {
                    let id = done
                        .remove(&job)
                        .ok_or_else(|| anyhow!("subtree {job} finished out of order"))?;
                    if n.subtree.replace(id) != Some(id) {
                        same_as = None;
                    }
                    Found::Node(n)
                }
                found => found,
            };
        }
        // An unchanged directory is its old tree, already stored: nothing to encode.
        if let Some(id) = same_as.filter(|id| sh.dedup.index.contains(id)) {
            done.insert(task.job, id);
            continue;
        }
        let job = task.job;
        let mut tree = new_tree(task, repo)?;
        let bytes = tree.encode();
        let id = sh.keys.blob_id(BlobType::Tree as u8, &bytes);
        if sh.dedup.claim(id) {
            let size = bytes.len() as u64;
            let chunk = Chunk {
                id,
                blob_type: BlobType::Tree,
                data: bytes,
            };
            chunks.push(chunk, size)?;
        }
        done.insert(job, id);
    }
    chunks.flush()?;
    if done.is_empty() {
        bail!("backup produced no tree");
    }
    Ok(done)
}
