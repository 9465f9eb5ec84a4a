//! The readers: files new or changed since the parent snapshot opened, read (only their
//! data extents when sparse), cut into chunks and hashed; chunks new to the repository
//! go on to the sealers. Each file's node comes back to its directory's gather.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result, anyhow};
use crossbeam_channel::{Receiver, Sender, bounded};

use super::Shared;
use super::sealers::{self, Chunk};
use crate::format::Id;
use crate::format::pack::BlobType;
use crate::format::tree::{Node, NodeType};
use crate::fsmeta;
use crate::ops::handoff::{Batcher, Promise};

/// A file for the readers, and where its node goes once read (None: it could not be).
pub(super) struct FileJob {
    pub path: PathBuf,
    pub node: Node,
    pub is_new: bool,
    pub done: Promise<Node>,
}

/// Files to a reader per batch, at most: few enough that the readers share a directory.
const FILES_PER_BATCH: usize = 32;
/// File bytes per batch, at most: a large file goes nearly alone.
const FILE_BYTES_PER_BATCH: u64 = 8 << 20;

/// The walker's way of queueing files for the readers, in batches.
pub(super) fn batcher(tx: Sender<Vec<FileJob>>) -> Batcher<FileJob> {
    Batcher::new("file readers", tx, FILES_PER_BATCH, FILE_BYTES_PER_BATCH)
}

/// Starts the reader threads, which queue new chunks on `chunk_tx`; returns the queue
/// they take files from.
pub(super) fn start(
    shared: &Arc<Shared>,
    chunk_tx: &Sender<Vec<Chunk>>,
    workers: usize,
) -> (Sender<Vec<FileJob>>, Vec<JoinHandle<()>>) {
    let (file_tx, file_rx) = bounded::<Vec<FileJob>>(workers * 2);
    // Twice as many readers as cores: a reader waiting for the disk leaves its core to
    // the others.
    let readers = (0..workers * 2)
        .map(|_| {
            let (rx, tx, sh) = (file_rx.clone(), chunk_tx.clone(), shared.clone());
            thread::spawn(move || read_loop(rx, sealers::batcher(tx), sh))
        })
        .collect();
    (file_tx, readers)
}

/// Waits for the readers (their queue closed).
pub(super) fn join(readers: Vec<JoinHandle<()>>) -> Result<()> {
    for r in readers {
        r.join().map_err(|_| anyhow!("file reader panicked"))?;
    }
    Ok(())
}

fn read_loop(rx: Receiver<Vec<FileJob>>, mut chunks: Batcher<Chunk>, sh: Arc<Shared>) {
    for mut job in rx.into_iter().flatten() {
        let r = read_file(&sh, &mut job, &mut chunks);
        sh.counters.files.fetch_add(1, Ordering::Relaxed);
        let reply = match r {
            Ok(()) => {
                count_read(&sh, &job);
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

fn count_read(sh: &Shared, job: &FileJob) {
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
}

/// Reads standard input, or what `command` (when given) writes to its standard output,
/// as the file `name`: its node, with the chunks queued. A command that fails (exit code
/// not 0, or killed) fails the backup, as a stream it did not finish is no backup.
pub(super) fn read_stdin(
    sh: &Shared,
    name: &str,
    command: &[String],
    mut chunks: Batcher<Chunk>,
) -> Result<Node> {
    let mut node = Node::new(name.as_bytes().to_vec(), NodeType::File);
    node.mode = 0o644;
    node.uid = nix::unistd::getuid().as_raw();
    node.gid = nix::unistd::getgid().as_raw();
    let now = jiff::Timestamp::now().as_nanosecond() as i64;
    node.mtime_ns = now;
    node.ctime_ns = now;
    let (content, size) = match command.split_first() {
        None => chunk_stream(sh, &mut std::io::stdin().lock(), &mut chunks)
            .context("reading standard input")?,
        Some((program, args)) => chunk_command(sh, program, args, &mut chunks)?,
    };
    chunks.flush()?;
    node.content = content;
    node.size = size;
    sh.stat(|s| {
        s.files_new += 1;
        s.bytes_total += size;
    });
    Ok(node)
}

/// Runs `program` with `args` and chunks its standard output; fails when it does.
fn chunk_command(
    sh: &Shared,
    program: &str,
    args: &[String],
    chunks: &mut Batcher<Chunk>,
) -> Result<(Vec<Id>, u64)> {
    let what = || format!("--stdin-from-command {program:?}");
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("{}: could not start it", what()))?;
    let mut out = child.stdout.take().context("no standard output")?;
    let read = chunk_stream(sh, &mut out, chunks);
    drop(out);
    let status = child.wait().with_context(what)?;
    let read = read.with_context(|| format!("{}: reading its output", what()))?;
    if !status.success() {
        return Err(anyhow!("{}: {status}: no snapshot was made", what()));
    }
    Ok(read)
}

fn read_file(sh: &Shared, job: &mut FileJob, chunks: &mut Batcher<Chunk>) -> Result<()> {
    let file = open_noatime(&job.path)?;
    let md = file.metadata()?;
    let extents = fsmeta::sparse_extents(&file, &md);
    let (content, read) = read_content(sh, &file, extents.as_ref(), chunks)?;
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

/// Chunks a file's data: only its `extents` when it is sparse.
fn read_content(
    sh: &Shared,
    file: &File,
    extents: Option<&Vec<[u64; 2]>>,
    chunks: &mut Batcher<Chunk>,
) -> Result<(Vec<Id>, u64)> {
    match extents {
        Some(ex) => {
            let mut r = ExtentReader {
                file,
                extents: ex.clone(),
                i: 0,
                done_in_extent: 0,
            };
            chunk_stream(sh, &mut r, chunks)
        }
        None => {
            let mut f = file;
            f.seek(SeekFrom::Start(0))?;
            chunk_stream(sh, &mut f, chunks)
        }
    }
}

/// Reads `src` to the end, chunks it, and queues chunks new to the repository for sealing.
/// Returns the blob ids in order and the number of bytes read.
pub(super) fn chunk_stream(
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

/// Reads come in steps of this size; the buffer grows beyond it only while no cut is
/// found (up to the maximum chunk size). Each reader holds its buffer for the whole run,
/// so a larger step costs resident memory without saving measurable time.
const STEP: usize = 1 << 20;

fn chunk_into(
    sh: &Shared,
    src: &mut dyn Read,
    out: &mut Batcher<Chunk>,
    buf: &mut Vec<u8>,
) -> Result<(Vec<Id>, u64)> {
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
                ids.push(queue_chunk(sh, &buf[start..start + cut], out)?);
                start += cut;
            }
            _ if eof => break,
            _ => {
                buf.drain(..start);
                start = 0;
                let n = read_step(sh, src, buf)?;
                eof = n < STEP;
                total += n as u64;
            }
        }
    }
    Ok((ids, total))
}

/// A chunk's blob id; the chunk is queued for sealing when this run is the first to need
/// it stored.
fn queue_chunk(sh: &Shared, data: &[u8], out: &mut Batcher<Chunk>) -> Result<Id> {
    let id = sh.keys.blob_id(BlobType::Data as u8, data);
    if sh.dedup.claim(id) {
        let chunk = Chunk {
            id,
            blob_type: BlobType::Data,
            data: data.to_vec(),
        };
        out.push(chunk, data.len() as u64)?;
    }
    Ok(id)
}

/// Appends up to [`STEP`] bytes of `src` to `buf`; how many it read.
fn read_step(sh: &Shared, src: &mut dyn Read, buf: &mut Vec<u8>) -> Result<usize> {
    // read_to_end fills spare capacity without zeroing it first.
    buf.reserve(STEP);
    let n = src.take(STEP as u64).read_to_end(buf)?;
    sh.counters
        .bytes_read
        .fetch_add(n as u64, Ordering::Relaxed);
    Ok(n)
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
