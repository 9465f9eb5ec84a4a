//! The backup pipeline, as stages with bounded queues between them, each in the file
//! named after it:
//!
//! scanners (list, stat, build nodes, load parent trees; ahead of the walk)
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

pub mod copy;
mod finalizer;
pub(crate) mod lists;
mod options;
mod readers;
mod scanner;
mod sealers;
mod walker;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::{Sender, bounded};

use self::finalizer::{DirTask, Heading};
pub use self::options::BackupOptions;
use self::readers::FileJob;
use self::scanner::Scanner;
use self::sealers::Chunk;
use self::walker::Walker;
use super::confirm::{Confirmed, Outcome};
use crate::error::VaultError;
use crate::format::Id;
use crate::format::chunker::Chunker;
use crate::format::crypto::Keys;
use crate::format::snapshot::{Snapshot, Summary};
use crate::format::tree::LazyTree;
use crate::repo::Repository;
use crate::repo::index::MasterIndex;
use crate::repo::packer::Packer;
use crate::repo::repository::hostname;

pub type Warn = Arc<dyn Fn(String) + Send + Sync>;

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
    pub confirmed: Confirmed,
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

/// What every stage of one pass shares.
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
    fn new(repo: &Repository, dry_run: bool, counters: Arc<Counters>, warn: Warn) -> Result<Self> {
        Ok(Shared {
            keys: repo.keys.clone(),
            chunker: Chunker::new(&repo.config.chunker, &repo.chunker_secret()?)?,
            level: repo.config.compression_level,
            bundles: repo.config.bundles(),
            dedup: Dedup {
                index: repo.index(),
                claimed: Mutex::new(HashSet::new()),
            },
            packer: Packer::new(&repo.backend, &repo.keys, repo.config.pack_size, dry_run)
                .caching_trees(repo.cache.clone()),
            counters,
            stats: Mutex::new(Summary::default()),
            warn,
        })
    }

    fn stat(&self, f: impl FnOnce(&mut Summary)) {
        f(&mut self.stats.lock().expect("stats poisoned"));
    }
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
    let host = opts
        .host
        .clone()
        .or_else(|| repo.backup_host().map(str::to_string))
        .unwrap_or_else(hostname);
    repo.write_as(&host)?;
    // Read already when the caller resolved them: then this changes nothing.
    let mut opts = BackupOptions {
        host: Some(host),
        ..opts.clone()
    };
    for w in opts.resolve()? {
        warn(w);
    }
    let opts = &opts;
    let mut with_parent = true;
    let mut confirmed = Confirmed::default();
    for attempt in 0.. {
        let known: BTreeSet<Id> = repo.marks.deletions.keys().copied().collect();
        let snapshot = build(repo, opts, counters.clone(), warn.clone(), with_parent)?;
        confirmed.passes += 1;
        if opts.dry_run {
            return Ok(BackupResult {
                snapshot_id: None,
                snapshot,
                confirmed,
            });
        }
        let lost = match finalizer::publish(repo, &snapshot, &known, &mut confirmed, held)? {
            Outcome::Published(id) => {
                return Ok(BackupResult {
                    snapshot_id: Some(id),
                    snapshot,
                    confirmed,
                });
            }
            Outcome::Lost(n) => n,
        };
        prepare_again(repo, opts, &warn, lost, attempt)?;
        with_parent = false;
    }
    unreachable!("the loop returns")
}

/// After a pass whose snapshot lost `lost` blobs to a prune: the index reloaded for one
/// more pass, or why there is none.
fn prepare_again(
    repo: &mut Repository,
    opts: &BackupOptions,
    warn: &Warn,
    lost: usize,
    attempt: usize,
) -> Result<()> {
    if opts.stdin_filename.is_some() || attempt == 2 {
        bail!(
            "{lost} blob(s) this backup references were deleted by a prune while it ran, and the source cannot be read again; nothing was published: run the backup again"
        );
    }
    warn(format!(
        "{lost} blob(s) this backup references were deleted by a prune while it ran (it outlived the grace period): reading the source again"
    ));
    repo.load_index_for_backup()
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
    let (sources, paths) = sources(opts)?;
    let selection = opts.selection()?;

    let parent = if with_parent {
        walker::find_parent(repo, opts, &host, &paths, &warn)
    } else {
        None
    };
    let scanner = Scanner::new(repo, &selection, warn.clone());
    let parent_tree = parent.as_ref().and_then(|(_, s)| scanner.old_tree(s.tree));
    let shared = Arc::new(Shared::new(repo, opts.dry_run, counters, warn)?);
    let root = run_stages(repo, opts, &shared, &scanner, &sources, parent_tree)?;
    let mut summary = finalizer::finish(shared)?;
    summary.duration_s = start.elapsed().as_secs_f64();
    let heading = Heading {
        host,
        paths,
        parent: parent.map(|(id, _)| id),
        excludes: selection.list.clone(),
    };
    Ok(finalizer::snapshot(opts, heading, root, summary))
}

/// The sources to walk, as clean absolute paths, each checked to exist, and the paths
/// the snapshot names (sorted); or why the options name none.
fn sources(opts: &BackupOptions) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let sources: Vec<PathBuf> = if opts.stdin_filename.is_some() {
        Vec::new()
    } else {
        opts.paths
            .iter()
            .map(|p| walker::clean_path(p))
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
    Ok((sources, paths))
}

/// Runs the stages over the sources (or standard input) to the end; the root tree's id.
fn run_stages(
    repo: &Repository,
    opts: &BackupOptions,
    shared: &Arc<Shared>,
    scanner: &Scanner,
    sources: &[PathBuf],
    parent_tree: Option<(Id, LazyTree)>,
) -> Result<Id> {
    let workers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8);
    let (chunk_tx, sealers) = sealers::start(shared, workers);
    let (file_tx, readers) = readers::start(shared, &chunk_tx, workers);
    let walked = Walked {
        file_tx,
        chunk_tx: &chunk_tx,
        sources,
        parent_tree,
    };
    let (walk, finished) = walk_and_finalize(repo, opts, shared, scanner, walked);
    drop(chunk_tx);
    let root_job = walk?;
    let finished = finished.map_err(|_| anyhow!("tree finalizer panicked"))?;
    readers::join(readers)?;
    sealers::join(sealers)?;
    finished?
        .remove(&root_job)
        .ok_or_else(|| anyhow!("root tree was not produced"))
}

/// What the walk starts from, and the queues it feeds.
struct Walked<'a> {
    file_tx: Sender<Vec<FileJob>>,
    chunk_tx: &'a Sender<Vec<Chunk>>,
    sources: &'a [PathBuf],
    parent_tree: Option<(Id, LazyTree)>,
}

/// Walks on this thread, with the scanners and the finalizer beside it, until both are
/// done: the root's job number, and the finalizer's trees by job.
fn walk_and_finalize(
    repo: &Repository,
    opts: &BackupOptions,
    shared: &Arc<Shared>,
    scanner: &Scanner,
    walked: Walked,
) -> (Result<usize>, thread::Result<Result<HashMap<usize, Id>>>) {
    let (dir_tx, dir_rx) = bounded::<DirTask>(1024);
    thread::scope(|s| {
        let finalizer = {
            let (sh, ctx) = (shared.clone(), walked.chunk_tx.clone());
            s.spawn(move || finalizer::run(dir_rx, sealers::batcher(ctx), sh, repo))
        };
        for _ in 0..scanner::THREADS {
            s.spawn(|| scanner.run());
        }
        let walk = walk(opts, shared, scanner, walked, dir_tx);
        shared
            .counters
            .scanned
            .store(walk.is_ok(), Ordering::Relaxed);
        // The walker is gone, and with it the directories' sender: the finalizer ends.
        (walk, finalizer.join())
    })
}

/// The walk itself, over the sources or standard input: the root's job number.
fn walk(
    opts: &BackupOptions,
    shared: &Arc<Shared>,
    scanner: &Scanner,
    walked: Walked,
    dir_tx: Sender<DirTask>,
) -> Result<usize> {
    // Closed however the walk ends, or the scope would wait on its threads forever.
    let _close = scanner.closer();
    let one_fs = opts.one_file_system;
    let mut walker = Walker::new(shared.clone(), scanner, one_fs, walked.file_tx, dir_tx);
    match &opts.stdin_filename {
        Some(name) => walker.stdin(
            name,
            &opts.stdin_command,
            sealers::batcher(walked.chunk_tx.clone()),
        ),
        None => walker.root(walked.sources, walked.parent_tree),
    }
}
