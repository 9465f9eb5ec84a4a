//! Packing and uploading new blobs: sealed blobs collect in one open pack per blob type
//! (trees apart from data, so tree reads never touch file data); full packs go to
//! uploader threads; after each upload the pack is listed in a pending index, which is
//! flushed every few packs so that an interrupted run leaves its packs reusable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use crossbeam_channel::{Receiver, Sender, bounded};

use super::backend::{Backend, FileKind};
use super::cache::Cache;
use super::index::BLOBS_PER_INDEX;
use crate::format::Id;
use crate::format::crypto::Keys;
use crate::format::index::{IndexFile, PackBlobs};
use crate::format::pack::{BlobType, PackBuilder, SealedBlob, SealedBundle};

/// Bytes of packs a backup may hold in uploads to a remote backend. It uploads as many
/// packs at once as the backend takes requests (`Backend::connections`), so that one
/// request's latency does not stall it, but each holds its pack in memory: at most this
/// much (four packs of 16 MiB; at least one pack). A local disk takes a write at once,
/// and a second pack in flight would only hold 16 MiB more.
const REMOTE_UPLOAD_BYTES: usize = 64 << 20;
const FLUSH_PACKS: usize = 16;
const FLUSH_EVERY: Duration = Duration::from_secs(60);

struct Upload {
    bytes: Vec<u8>,
    pack: PackBlobs,
    /// Where to keep a copy: tree packs, which the next backup reads as its parent.
    cache: Option<Cache>,
}

/// Packs uploaded but not yet in an index file.
struct IndexSink {
    backend: Backend,
    keys: Keys,
    pending: Mutex<(Vec<PackBlobs>, Instant)>,
    written: Mutex<Vec<Id>>,
}

impl IndexSink {
    fn push(&self, pack: PackBlobs) -> Result<()> {
        let ready = {
            let mut p = self.pending.lock().expect("index sink poisoned");
            p.0.push(pack);
            // Blob count too: every reader holds one index file decoded at a time, and
            // packs of small blobs would make a file of 16 packs a million entries.
            let blobs: usize = p.0.iter().map(|p| p.blobs.len()).sum();
            if p.0.len() >= FLUSH_PACKS || blobs >= BLOBS_PER_INDEX || p.1.elapsed() >= FLUSH_EVERY
            {
                p.1 = Instant::now();
                std::mem::take(&mut p.0)
            } else {
                Vec::new()
            }
        };
        self.write(ready)
    }

    fn write(&self, packs: Vec<PackBlobs>) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        let file = IndexFile {
            supersedes: Vec::new(),
            packs,
        };
        let id = super::index::save_index_file(&self.backend, &self.keys, &file)?;
        self.written.lock().expect("index sink poisoned").push(id);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let packs = std::mem::take(&mut self.pending.lock().expect("index sink poisoned").0);
        self.write(packs)
    }
}

#[derive(Default, Debug, Clone)]
pub struct PackerStats {
    pub packs: u64,
    pub bytes: u64,
    pub index_files: Vec<Id>,
}

pub struct Packer {
    keys: Keys,
    pack_size: usize,
    open: Mutex<[Option<PackBuilder>; 2]>,
    tx: Option<Sender<Upload>>,
    uploaders: Vec<JoinHandle<()>>,
    sink: Arc<IndexSink>,
    failed: Arc<Mutex<Option<anyhow::Error>>>,
    has_failed: Arc<AtomicBool>,
    packs: AtomicU64,
    bytes: Arc<AtomicU64>,
    dry_run: bool,
    cache: Option<Cache>,
}

impl Packer {
    pub fn new(backend: &Backend, keys: &Keys, pack_size: u32, dry_run: bool) -> Packer {
        // A rendezvous channel: packs in memory are the one being built and one per uploader.
        let (tx, rx) = bounded::<Upload>(0);
        let sink = Arc::new(IndexSink {
            backend: backend.clone(),
            keys: keys.clone(),
            pending: Mutex::new((Vec::new(), Instant::now())),
            written: Mutex::new(Vec::new()),
        });
        let failed = Arc::new(Mutex::new(None));
        let has_failed = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let n = if backend.is_remote() {
            let budget = (REMOTE_UPLOAD_BYTES / (pack_size as usize).max(1)).max(1);
            backend.connections().clamp(1, budget)
        } else {
            1
        };
        let uploaders = (0..n)
            .map(|_| {
                let (rx, backend, sink) = (rx.clone(), backend.clone(), sink.clone());
                let (failed, has_failed, bytes) =
                    (failed.clone(), has_failed.clone(), bytes.clone());
                std::thread::spawn(move || {
                    upload_loop(rx, backend, sink, failed, has_failed, bytes, dry_run)
                })
            })
            .collect();
        Packer {
            keys: keys.clone(),
            pack_size: pack_size as usize,
            open: Mutex::new([None, None]),
            tx: Some(tx),
            uploaders,
            sink,
            failed,
            has_failed,
            packs: AtomicU64::new(0),
            bytes,
            dry_run,
            cache: None,
        }
    }

    /// Keeps a copy of each tree pack written in `cache`, where reading trees looks
    /// first: otherwise the next backup would download every tree it just wrote.
    pub fn caching_trees(mut self, cache: Option<Cache>) -> Packer {
        self.cache = cache;
        self
    }

    fn check_failed(&self) -> Result<()> {
        if self.has_failed.load(Ordering::Relaxed) {
            let e = self.failed.lock().expect("poisoned").take();
            return Err(e.unwrap_or_else(|| anyhow!("uploading a pack failed")));
        }
        Ok(())
    }

    pub fn add(&self, blob: SealedBlob) -> Result<()> {
        self.add_unit(blob.blob_type, |b| b.add(blob))
    }

    pub fn add_bundle(&self, bundle: SealedBundle) -> Result<()> {
        self.add_unit(bundle.blob_type, |b| b.add_bundle(bundle))
    }

    /// Adds a unit with `add` to the open pack of its type; ships the pack once full.
    fn add_unit(&self, blob_type: BlobType, add: impl FnOnce(&mut PackBuilder)) -> Result<()> {
        self.check_failed()?;
        let slot = blob_type as usize;
        let full = {
            let mut open = self.open.lock().expect("packer poisoned");
            let b = open[slot].get_or_insert_with(|| {
                PackBuilder::with_capacity(self.pack_size + self.pack_size / 8)
            });
            add(b);
            if b.len() >= self.pack_size {
                open[slot].take()
            } else {
                None
            }
        };
        if let Some(b) = full {
            self.ship(b)?;
        }
        Ok(())
    }

    fn ship(&self, b: PackBuilder) -> Result<()> {
        let (bytes, id, blobs) = b.finish(&self.keys);
        self.packs.fetch_add(1, Ordering::Relaxed);
        let trees = blobs.iter().all(|b| b.blob_type == BlobType::Tree);
        let tx = self.tx.as_ref().expect("packer already finished");
        tx.send(Upload {
            bytes,
            pack: PackBlobs { pack: id, blobs },
            cache: self.cache.clone().filter(|_| trees),
        })
        .map_err(|_| anyhow!("uploaders stopped"))?;
        Ok(())
    }

    /// Uploads what is left, waits for every upload and writes the final index.
    pub fn finish(mut self) -> Result<PackerStats> {
        let rest: Vec<PackBuilder> = {
            let mut open = self.open.lock().expect("packer poisoned");
            open.iter_mut().filter_map(|s| s.take()).collect()
        };
        for b in rest {
            self.ship(b)?;
        }
        drop(self.tx.take());
        for t in self.uploaders.drain(..) {
            let _ = t.join();
        }
        self.check_failed()?;
        if !self.dry_run {
            self.sink.flush()?;
        }
        Ok(PackerStats {
            packs: self.packs.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            index_files: self.sink.written.lock().expect("poisoned").clone(),
        })
    }
}

fn upload_loop(
    rx: Receiver<Upload>,
    backend: Backend,
    sink: Arc<IndexSink>,
    failed: Arc<Mutex<Option<anyhow::Error>>>,
    has_failed: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    dry_run: bool,
) {
    for up in rx {
        if has_failed.load(Ordering::Relaxed) {
            continue;
        }
        let len = up.bytes.len() as u64;
        let r = if dry_run {
            Ok(())
        } else {
            // Cached first, as the upload takes the bytes; a copy of a pack whose upload
            // then fails is dropped when the next run finds no index listing it.
            if let Some(c) = &up.cache {
                c.put("packs", &up.pack.pack, &up.bytes);
            }
            backend
                .write(&FileKind::Data.path(&up.pack.pack), up.bytes)
                .and_then(|_| sink.push(up.pack))
        };
        match r {
            Ok(()) => {
                bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => {
                *failed.lock().expect("poisoned") = Some(e.context("uploading a pack"));
                has_failed.store(true, Ordering::Relaxed);
            }
        }
    }
}
