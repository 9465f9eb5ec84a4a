//! Limits on what one backend may take of a link (or of a slow disk): bytes per second
//! in each direction, and requests in flight.
//!
//! A rate is a token bucket shared by every request of the backend: bytes written count
//! against `upload`, bytes read against `download`. Pacing happens inside each request,
//! a piece at a time, not per object. A read stream hands up each chunk only once the
//! bucket has room for it (over a network, the connection's flow control then slows the
//! sender). A write is handed on in pieces, each waiting for its tokens: on a stream (a
//! local file, SFTP) pieces of about a sixteenth of a second's worth; on an object store
//! each piece becomes a part of a multipart upload (a request of its own), so pieces
//! there are parts of at least 5 MiB (the least S3, GCS and B2 take), each sent at the
//! link's speed once paid for, and a service that takes one request per object gets its
//! object whole once paid for. Requests in flight are capped with opendal's
//! `ConcurrentLimitLayer`.
//!
//! The same layer counts the bytes that pass, for every backend of the process
//! ([`transferred`]): progress displays take their rates from it, a chunk at a time
//! rather than an object at a time.
//!
//! The bucket ([`Bucket`]) and the settings ([`Limits`]) know nothing of opendal;
//! [`LimitLayer`] is the thin adapter that puts them under an operator. It is the one
//! opendal layer of vault's own, and stays one rather than becoming a decorator of
//! [`Storage`](super::storage::Storage) like the retries: that trait moves whole objects
//! and ranges, so a decorator could pace only per object, in bursts, while the layer sees
//! each chunk of a read stream and hands a write on piece by piece (and, on an object
//! store, part by part of a multipart upload).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opendal::layers::ConcurrentLimitLayer;
use opendal::raw::oio;
use opendal::raw::{
    Layer, OpCompose, OpCopy, OpCreateDir, OpList, OpPresign, OpRead, OpRename, OpRestore, OpStat,
    OpWrite, RpCreateDir, RpPresign, RpRead, RpRename, RpRestore, RpStat, Service, ServiceInfo,
    Servicer,
};
use opendal::{Buffer, BytesRange, Capability, Metadata, OperationContext, Operator};

/// What one backend may use. Each field unset means: as inherited (a mirror's own
/// setting over the command's), else no limit and the backend's default connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes per second written; `Some(0)` means no limit, overriding an inherited one.
    pub upload: Option<u64>,
    /// Bytes per second read; `Some(0)` means no limit, overriding an inherited one.
    pub download: Option<u64>,
    /// Requests in flight at once (at least 1).
    pub connections: Option<usize>,
}

impl Limits {
    /// These limits, with what they leave unset taken from `base`.
    pub fn over(self, base: Limits) -> Limits {
        Limits {
            upload: self.upload.or(base.upload),
            download: self.download.or(base.download),
            connections: self.connections.or(base.connections),
        }
    }

    fn rate(r: Option<u64>) -> Option<u64> {
        r.filter(|&r| r > 0)
    }
}

/// The most requests in flight a setting may ask for.
pub const MAX_CONNECTIONS: usize = 256;

/// Bytes read from storage and written to it by this process so far, all backends
/// together, counted as they pass (see [`transferred`]).
static READ: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Bytes that crossed to and from the storage so far, as (read, written), counted a
/// chunk of a read or a piece of a write at a time (a retried request counts again).
pub fn transferred() -> (u64, u64) {
    (
        READ.load(Ordering::Relaxed),
        WRITTEN.load(Ordering::Relaxed),
    )
}

/// Puts `limits` under `op`: a bucket per limited direction (and the byte counts of
/// [`transferred`]), then, when `connections` is set, at most that many requests in
/// flight (a request waiting for its bytes' turn is in flight). Goes above the timeout
/// layer, whose clock must not run while a request waits for tokens, and below the
/// retry layer, so a retried request is paced (and admitted) again.
pub fn apply(op: Operator, limits: Limits) -> Operator {
    let upload = Limits::rate(limits.upload).map(|r| Arc::new(Bucket::new(r)));
    let download = Limits::rate(limits.download).map(|r| Arc::new(Bucket::new(r)));
    let op = op.layer(LimitLayer { upload, download });
    match limits.connections {
        Some(n) => op.layer(ConcurrentLimitLayer::new(n.clamp(1, MAX_CONNECTIONS))),
        None => op,
    }
}

/// A token bucket of bytes. It holds up to `burst` bytes (an eighth of a second's
/// worth); a request takes what it needs at once, into debt if need be, and waits until
/// the debt is paid: so requests in flight together share the rate in the order they
/// asked, and a long-run average never exceeds it.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// A full bucket for `rate` bytes per second (at least 1).
    pub fn new(rate: u64) -> Bucket {
        let rate = rate.max(1) as f64;
        let burst = (rate / 8.0).max(1024.0);
        Bucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes `n` bytes as of `now`; returns how long to wait before sending them.
    pub fn take_at(&self, n: u64, now: Instant) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = *s;
        let refill = now.saturating_duration_since(at).as_secs_f64() * self.rate;
        let left = (tokens + refill).min(self.burst) - n as f64;
        *s = (left, now.max(at));
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.rate)
        }
    }

    /// Waits until `n` bytes may go (nothing, such as a stream's end, goes at once).
    pub async fn pace(&self, n: usize) {
        if n == 0 {
            return;
        }
        let wait = self.take_at(n as u64, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The size of the pieces a write is handed on in: about a sixteenth of a second's
    /// worth, from 1 KiB to 256 KiB.
    pub fn piece(&self) -> usize {
        ((self.rate / 16.0) as usize).clamp(1 << 10, 256 << 10)
    }
}

/// The opendal layer for the rates and counts (see the module's doc).
#[derive(Clone, Debug)]
pub struct LimitLayer {
    upload: Option<Arc<Bucket>>,
    download: Option<Arc<Bucket>>,
}

impl Layer for LimitLayer {
    fn apply_service(&self, inner: Servicer) -> Servicer {
        Arc::new(LimitService {
            inner,
            upload: self.upload.clone(),
            download: self.download.clone(),
        })
    }
}

#[derive(Debug)]
pub struct LimitService {
    inner: Servicer,
    upload: Option<Arc<Bucket>>,
    download: Option<Arc<Bucket>>,
}

impl Service for LimitService {
    type Reader = LimitReader;
    type Writer = LimitWriter;
    type Lister = oio::Lister;
    type Deleter = oio::Deleter;
    type Copier = oio::Copier;
    type Composer = oio::Composer;

    fn info(&self) -> ServiceInfo {
        self.inner.info()
    }

    fn capability(&self) -> Capability {
        self.inner.capability()
    }

    async fn create_dir(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpCreateDir,
    ) -> opendal::Result<RpCreateDir> {
        self.inner.create_dir(ctx, path, args).await
    }

    async fn stat(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpStat,
    ) -> opendal::Result<RpStat> {
        self.inner.stat(ctx, path, args).await
    }

    fn read(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpRead,
    ) -> opendal::Result<LimitReader> {
        Ok(LimitReader {
            inner: self.inner.read(ctx, path, args)?,
            bucket: self.download.clone(),
        })
    }

    fn write(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpWrite,
    ) -> opendal::Result<LimitWriter> {
        let piece = self.upload.as_ref().map_or(usize::MAX, |b| self.piece(b));
        Ok(LimitWriter {
            inner: self.inner.write(ctx, path, args)?,
            bucket: self.upload.clone(),
            piece,
        })
    }

    fn delete(&self, ctx: &OperationContext) -> opendal::Result<oio::Deleter> {
        self.inner.delete(ctx)
    }

    fn list(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpList,
    ) -> opendal::Result<oio::Lister> {
        self.inner.list(ctx, path, args)
    }

    // Copies and composes happen on the storage's side: no bytes cross the link.
    fn copy(
        &self,
        ctx: &OperationContext,
        from: &str,
        to: &str,
        args: OpCopy,
    ) -> opendal::Result<oio::Copier> {
        self.inner.copy(ctx, from, to, args)
    }

    fn compose(
        &self,
        ctx: &OperationContext,
        to: &str,
        args: OpCompose,
    ) -> opendal::Result<oio::Composer> {
        self.inner.compose(ctx, to, args)
    }

    async fn rename(
        &self,
        ctx: &OperationContext,
        from: &str,
        to: &str,
        args: OpRename,
    ) -> opendal::Result<RpRename> {
        self.inner.rename(ctx, from, to, args).await
    }

    async fn restore(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpRestore,
    ) -> opendal::Result<RpRestore> {
        self.inner.restore(ctx, path, args).await
    }

    async fn presign(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpPresign,
    ) -> opendal::Result<RpPresign> {
        self.inner.presign(ctx, path, args).await
    }
}

pub struct LimitReader {
    inner: oio::Reader,
    bucket: Option<Arc<Bucket>>,
}

impl oio::Read for LimitReader {
    async fn open(
        &self,
        range: BytesRange,
    ) -> opendal::Result<(RpRead, Box<dyn oio::ReadStreamDyn>)> {
        let (rp, inner) = self.inner.open(range).await?;
        let stream = LimitStream {
            inner,
            bucket: self.bucket.clone(),
        };
        Ok((rp, Box::new(stream)))
    }

    async fn read(&self, range: BytesRange) -> opendal::Result<(RpRead, Buffer)> {
        let (rp, buf) = self.inner.read(range).await?;
        READ.fetch_add(buf.len() as u64, Ordering::Relaxed);
        if let Some(b) = &self.bucket {
            b.pace(buf.len()).await;
        }
        Ok((rp, buf))
    }
}

/// A read's chunks, each counted and handed up once the bucket has room for it.
struct LimitStream {
    inner: Box<dyn oio::ReadStreamDyn>,
    bucket: Option<Arc<Bucket>>,
}

impl oio::ReadStream for LimitStream {
    async fn read(&mut self) -> opendal::Result<Buffer> {
        let buf = self.inner.read().await?;
        READ.fetch_add(buf.len() as u64, Ordering::Relaxed);
        if let Some(b) = &self.bucket {
            b.pace(buf.len()).await;
        }
        Ok(buf)
    }
}

/// The least part of a multipart upload that object stores take (S3, GCS and B2: 5 MiB,
/// a multiple of GCS's 256 KiB), used for every service that makes a request of each
/// piece written.
const MIN_PART: usize = 5 << 20;

impl LimitService {
    /// The pieces a write is handed on in (see the module's doc): the last one of a write
    /// also takes what is left, up to twice this.
    fn piece(&self, bucket: &Bucket) -> usize {
        if matches!(self.inner.info().scheme(), "fs" | "sftp") {
            return bucket.piece();
        }
        let cap = self.inner.capability();
        if !cap.write_can_multi {
            return usize::MAX;
        }
        let part = cap.write_multi_min_size.unwrap_or(0).max(MIN_PART);
        cap.write_multi_max_size.map_or(part, |max| part.min(max))
    }
}

pub struct LimitWriter {
    inner: oio::Writer,
    bucket: Option<Arc<Bucket>>,
    piece: usize,
}

impl oio::Write for LimitWriter {
    async fn write(&mut self, mut bs: Buffer) -> opendal::Result<()> {
        let Some(bucket) = &self.bucket else {
            let n = bs.len() as u64;
            self.inner.write(bs).await?;
            WRITTEN.fetch_add(n, Ordering::Relaxed);
            return Ok(());
        };
        while !bs.is_empty() {
            // Never a short piece but the last, which may be the part a store needs.
            let cut = if bs.len() / 2 >= self.piece {
                self.piece
            } else {
                bs.len()
            };
            let part = bs.split_to(cut);
            let n = part.len() as u64;
            bucket.pace(part.len()).await;
            self.inner.write(part).await?;
            WRITTEN.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn copy_from(
        &mut self,
        path: &str,
        args: OpRead,
        range: BytesRange,
    ) -> opendal::Result<()> {
        self.inner.copy_from(path, args, range).await
    }

    async fn close(&mut self) -> opendal::Result<Metadata> {
        self.inner.close().await
    }

    async fn abort(&mut self) -> opendal::Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_paces_to_its_rate() {
        let b = Bucket::new(1 << 20); // 1 MiB/s: a burst of 128 KiB
        let t0 = Instant::now();
        assert_eq!(b.take_at(64 << 10, t0), Duration::ZERO, "within the burst");
        assert_eq!(b.take_at(64 << 10, t0), Duration::ZERO, "the burst's end");
        // A second's worth more waits a second; requests queue behind each other.
        let w = b.take_at(1 << 20, t0);
        assert!((w.as_secs_f64() - 1.0).abs() < 1e-6, "{w:?}");
        let w = b.take_at(512 << 10, t0);
        assert!((w.as_secs_f64() - 1.5).abs() < 1e-6, "{w:?}");
        // Half a second later half a second of debt is paid.
        let w = b.take_at(0, t0 + Duration::from_millis(500));
        assert!((w.as_secs_f64() - 1.0).abs() < 1e-6, "{w:?}");
        // Idle for long, the bucket holds no more than its burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.take_at(128 << 10, later), Duration::ZERO);
        let w = b.take_at(1 << 10, later);
        assert!((w.as_secs_f64() - 1.0 / 1024.0).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn a_stream_of_pieces_keeps_the_rate() {
        // 8 MiB in 64 KiB pieces at 2 MiB/s, each sent as soon as allowed: the last one
        // goes after 8/2 s less the burst (an eighth of a second's worth).
        let b = Bucket::new(2 << 20);
        let t0 = Instant::now();
        let mut now = t0;
        for _ in 0..128 {
            now += b.take_at(64 << 10, now);
        }
        let took = (now - t0).as_secs_f64();
        assert!((took - (4.0 - 0.125)).abs() < 1e-6, "{took}");
        assert_eq!(Bucket::new(2 << 20).piece(), 128 << 10);
        assert_eq!(Bucket::new(1).piece(), 1 << 10);
        assert_eq!(Bucket::new(1 << 30).piece(), 256 << 10);
    }

    /// Through an operator: a write reaches the storage piece by piece while it is
    /// paced (a pacing per object would show nothing, then everything), and reads are
    /// paced too. Only lower bounds on times, and the half-way look has a second of room.
    #[test]
    fn an_operator_writes_and_reads_at_its_rates() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let fs = opendal::services::Fs::default().root(&dir.path().to_string_lossy());
        let limits = Limits {
            upload: Some(1 << 20),
            download: Some(4 << 20),
            connections: Some(2),
        };
        let op = apply(Operator::new(fs).unwrap(), limits);
        let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
        let start = Instant::now();
        let write = rt.spawn({
            let (op, data) = (op.clone(), data.clone());
            async move { op.write("f", data).await }
        });
        std::thread::sleep(Duration::from_secs(1));
        let half_way = std::fs::metadata(dir.path().join("f")).map_or(0, |m| m.len());
        rt.block_on(write).unwrap().unwrap();
        let took = start.elapsed();
        // 2 MiB at 1 MiB/s, less the burst of 128 KiB.
        assert!(took >= Duration::from_millis(1850), "{took:?}");
        assert!(
            half_way > 0 && half_way < 2 << 20,
            "{half_way} bytes written after a second"
        );
        let start = Instant::now();
        let back = rt.block_on(op.read("f")).unwrap().to_vec();
        let took = start.elapsed();
        assert!(back == data);
        // 2 MiB at 4 MiB/s, less the burst of 512 KiB.
        assert!(took >= Duration::from_millis(370), "{took:?}");
    }

    #[test]
    fn limits_inherit_field_by_field() {
        let cmd = Limits {
            upload: Some(1 << 20),
            download: Some(4 << 20),
            connections: Some(16),
        };
        let mirror = Limits {
            upload: Some(0),
            connections: Some(2),
            ..Limits::default()
        };
        assert_eq!(
            mirror.over(cmd),
            Limits {
                upload: Some(0),
                download: Some(4 << 20),
                connections: Some(2)
            }
        );
        assert_eq!(Limits::rate(Some(0)), None, "0 is no limit");
    }
}
