//! The sealers: new chunks (file data from the readers, tree blobs from the finalizer)
//! compressed, encrypted and handed to the packer, small data chunks gathered into
//! bundles first (repository version 2).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};

use anyhow::{Result, anyhow};
use crossbeam_channel::{Receiver, Sender, bounded};

use super::Shared;
use crate::format::Id;
use crate::format::pack::{BUNDLE_BELOW, BUNDLE_TARGET, BlobType, seal_blob, seal_bundle};
use crate::ops::handoff::Batcher;

/// A blob new to the repository, to seal.
pub(super) struct Chunk {
    pub id: Id,
    pub blob_type: BlobType,
    pub data: Vec<u8>,
}

/// Chunk bytes per batch to the sealers.
const CHUNK_BYTES_PER_BATCH: u64 = 1 << 20;

/// A stage's way of queueing chunks for the sealers, in batches.
pub(super) fn batcher(tx: Sender<Vec<Chunk>>) -> Batcher<Chunk> {
    Batcher::new("blob sealers", tx, usize::MAX, CHUNK_BYTES_PER_BATCH)
}

/// Starts `workers` sealer threads; returns the queue they take chunks from.
pub(super) fn start(
    shared: &Arc<Shared>,
    workers: usize,
) -> (Sender<Vec<Chunk>>, Vec<JoinHandle<Result<()>>>) {
    let (chunk_tx, chunk_rx) = bounded::<Vec<Chunk>>(workers * 2);
    let sealers = (0..workers)
        .map(|_| {
            let (rx, sh) = (chunk_rx.clone(), shared.clone());
            thread::spawn(move || seal_loop(rx, sh))
        })
        .collect();
    (chunk_tx, sealers)
}

/// Waits for the sealers (their queue closed); the first error any of them met.
pub(super) fn join(sealers: Vec<JoinHandle<Result<()>>>) -> Result<()> {
    for s in sealers {
        s.join().map_err(|_| anyhow!("blob sealer panicked"))??;
    }
    Ok(())
}

/// Small data chunks waiting to be sealed together.
#[derive(Default)]
struct Bundle {
    members: Vec<Chunk>,
    bytes: usize,
}

/// Seals queued chunks. After a failure it keeps draining the queue, so that no reader
/// blocks forever, and reports the first error at the end.
fn seal_loop(rx: Receiver<Vec<Chunk>>, sh: Arc<Shared>) -> Result<()> {
    let mut first_err = None;
    let mut bundle = Bundle::default();
    for c in rx.into_iter().flatten() {
        if first_err.is_some() {
            continue;
        }
        if let Err(e) = seal(&sh, c, &mut bundle) {
            first_err = Some(e);
        }
    }
    if first_err.is_none() && !bundle.members.is_empty() {
        first_err = seal_members(&sh, bundle.members).err();
    }
    first_err.map_or(Ok(()), Err)
}

/// Seals one chunk, or adds it to `bundle` and seals the bundle once it is large enough.
fn seal(sh: &Shared, c: Chunk, bundle: &mut Bundle) -> Result<()> {
    if !(sh.bundles && c.blob_type == BlobType::Data && c.data.len() < BUNDLE_BELOW) {
        return seal_one(sh, c);
    }
    bundle.bytes += c.data.len();
    bundle.members.push(c);
    if bundle.bytes < BUNDLE_TARGET {
        return Ok(());
    }
    bundle.bytes = 0;
    seal_members(sh, std::mem::take(&mut bundle.members))
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
