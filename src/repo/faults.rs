//! Fault injection, a test hook like VAULT_CRASH_AFTER_WRITES. With
//!
//! ```text
//! VAULT_FAULTS=seed=7,error=0.1,truncate=0.02,flip=0.02,slow=0.05
//! ```
//!
//! every backend (local or remote, primary or mirror) goes through `FaultLayer`, below its
//! retry layer as a flaky disk or network would be: that fraction of reads, writes, stats,
//! lists and deletes fail with a temporary error before they touch anything, that
//! fraction of reads arrive cut short or with one bit flipped, and that fraction of calls
//! wait 20-100 ms first. Every field is optional (a missing one is 0, the seed 1). The
//! choices come from the seed, so a test can name the run it saw. At exit the process
//! prints one line on stderr saying what it injected. Unset, none of this is built.

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};
use opendal::raw::oio;
use opendal::raw::{
    Layer, OpCompose, OpCopy, OpCreateDir, OpDelete, OpList, OpPresign, OpRead, OpRename,
    OpRestore, OpStat, OpWrite, RpCreateDir, RpPresign, RpRead, RpRename, RpRestore, RpStat,
    Service, ServiceInfo, Servicer,
};
use opendal::{Buffer, BytesRange, Capability, Error, ErrorKind, Metadata, OperationContext};

pub const VAR: &str = "VAULT_FAULTS";

/// What to inject, as fractions of calls.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Plan {
    seed: u64,
    error: f64,
    truncate: f64,
    flip: f64,
    slow: f64,
}

impl Plan {
    pub fn parse(spec: &str) -> Result<Plan> {
        let mut p = Plan {
            seed: 1,
            ..Plan::default()
        };
        for field in spec.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| anyhow!("{field:?} is not key=value"))?;
            if key == "seed" {
                p.seed = value
                    .parse()
                    .map_err(|_| anyhow!("seed={value:?} is not a whole number"))?;
                continue;
            }
            let share: f64 = value
                .parse()
                .ok()
                .filter(|v| (0.0..=1.0).contains(v))
                .ok_or_else(|| anyhow!("{key}={value:?} is not a fraction from 0 to 1"))?;
            match key {
                "error" => p.error = share,
                "truncate" => p.truncate = share,
                "flip" => p.flip = share,
                "slow" => p.slow = share,
                _ => {
                    return Err(anyhow!(
                        "unknown field {key:?} (use seed, error, truncate, flip, slow)"
                    ));
                }
            }
        }
        Ok(p)
    }

    fn chance(&self, share: f64) -> bool {
        share > 0.0 && unit(self.seed) < share
    }

    async fn slow(&self) {
        if self.chance(self.slow) {
            COUNTS.slowed.fetch_add(1, Ordering::Relaxed);
            let ms = 20 + draw(self.seed) % 81;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// Maybe waits, then maybe fails the call, before it reaches the storage.
    async fn enter(&self, op: Op) -> opendal::Result<()> {
        self.slow().await;
        COUNTS.calls.fetch_add(1, Ordering::Relaxed);
        if !self.chance(self.error) {
            return Ok(());
        }
        COUNTS.errors[op as usize].fetch_add(1, Ordering::Relaxed);
        Err(
            Error::new(ErrorKind::Unexpected, format!("injected fault ({VAR})"))
                .with_operation(op.name())
                .set_temporary(),
        )
    }

    /// How one read's bytes will be damaged, if at all.
    fn damage(&self) -> Option<Damage> {
        let r = unit(self.seed);
        if r < self.truncate {
            Some(Damage::Truncate(draw(self.seed)))
        } else if r < self.truncate + self.flip {
            Some(Damage::Flip(draw(self.seed)))
        } else {
            None
        }
    }
}

/// The plan from the environment: None when the variable is unset.
static PLAN: LazyLock<Option<Result<Plan, String>>> = LazyLock::new(|| {
    let spec = std::env::var(VAR).ok()?;
    Some(Plan::parse(&spec).map_err(|e| format!("{VAR}={spec:?}: {e}")))
});

/// The layer to put under a backend's retry layer, when the variable asks for one.
pub fn layer() -> Result<Option<FaultLayer>> {
    match &*PLAN {
        None => Ok(None),
        Some(Ok(plan)) => Ok(Some(FaultLayer::new(*plan))),
        Some(Err(e)) => Err(anyhow!("{e}")),
    }
}

#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
    Stat,
    List,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Stat => "stat",
            Op::List => "list",
            Op::Delete => "delete",
        }
    }
}

const OPS: [Op; 5] = [Op::Read, Op::Write, Op::Stat, Op::List, Op::Delete];

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    errors: [AtomicU64; 5],
    truncated: AtomicU64,
    flipped: AtomicU64,
    slowed: AtomicU64,
}

static COUNTS: LazyLock<Counts> = LazyLock::new(Counts::default);
static DRAWS: AtomicU64 = AtomicU64::new(0);

/// The next number of the seed's sequence (splitmix64 of a shared counter: the sequence
/// is fixed by the seed; which thread draws which number is up to the scheduler).
fn draw(seed: u64) -> u64 {
    let n = DRAWS.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A draw in [0, 1).
fn unit(seed: u64) -> f64 {
    (draw(seed) >> 11) as f64 / (1u64 << 53) as f64
}

/// What was injected so far, as `key=value` words; None when injection is off.
pub fn summary() -> Option<String> {
    if !matches!(&*PLAN, Some(Ok(_))) {
        return None;
    }
    let c = &*COUNTS;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut s = format!("faults injected: calls={}", n(&c.calls));
    for op in OPS {
        s.push_str(&format!(
            " {}_error={}",
            op.name(),
            n(&c.errors[op as usize])
        ));
    }
    s.push_str(&format!(
        " truncated={} flipped={} slowed={}",
        n(&c.truncated),
        n(&c.flipped),
        n(&c.slowed)
    ));
    Some(s)
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    Truncate(u64),
    Flip(u64),
}

impl Damage {
    /// The damaged bytes (`buf` must not be empty).
    fn apply(self, buf: Buffer) -> Buffer {
        let mut v = buf.to_vec();
        match self {
            Damage::Truncate(r) => v.truncate((r % v.len() as u64) as usize),
            Damage::Flip(r) => {
                let bit = (r % (v.len() as u64 * 8)) as usize;
                v[bit / 8] ^= 1 << (bit % 8);
            }
        }
        Buffer::from(v)
    }

    /// Damages a read's bytes, counting it; nothing to damage in an empty read.
    fn inflict(self, buf: Buffer) -> Buffer {
        if buf.is_empty() {
            return buf;
        }
        let count = match self {
            Damage::Truncate(_) => &COUNTS.truncated,
            Damage::Flip(_) => &COUNTS.flipped,
        };
        count.fetch_add(1, Ordering::Relaxed);
        self.apply(buf)
    }
}

/// Reads damaged so far in this process (for tests that build the layer themselves).
#[cfg(test)]
pub(crate) fn damaged_reads() -> u64 {
    COUNTS.truncated.load(Ordering::Relaxed) + COUNTS.flipped.load(Ordering::Relaxed)
}

#[derive(Clone, Debug)]
pub struct FaultLayer {
    plan: Plan,
}

impl FaultLayer {
    pub fn new(plan: Plan) -> FaultLayer {
        FaultLayer { plan }
    }
}

impl Layer for FaultLayer {
    fn apply_service(&self, inner: Servicer) -> Servicer {
        Arc::new(FaultService {
            inner,
            plan: self.plan,
        })
    }
}

#[derive(Debug)]
pub struct FaultService {
    inner: Servicer,
    plan: Plan,
}

impl Service for FaultService {
    type Reader = FaultReader;
    type Writer = FaultWriter;
    type Lister = FaultLister;
    type Deleter = FaultDeleter;
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
        self.plan.enter(Op::Write).await?;
        self.inner.create_dir(ctx, path, args).await
    }

    async fn stat(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpStat,
    ) -> opendal::Result<RpStat> {
        self.plan.enter(Op::Stat).await?;
        self.inner.stat(ctx, path, args).await
    }

    // Creating a reader, writer, lister or deleter touches nothing yet; the faults go
    // into their (asynchronous) calls, which the retry layer retries without blocking.
    fn read(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpRead,
    ) -> opendal::Result<FaultReader> {
        Ok(FaultReader {
            inner: self.inner.read(ctx, path, args)?,
            plan: self.plan,
        })
    }

    fn write(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpWrite,
    ) -> opendal::Result<FaultWriter> {
        Ok(FaultWriter {
            inner: self.inner.write(ctx, path, args)?,
            plan: self.plan,
            entered: false,
        })
    }

    fn delete(&self, ctx: &OperationContext) -> opendal::Result<FaultDeleter> {
        Ok(FaultDeleter {
            inner: self.inner.delete(ctx)?,
            plan: self.plan,
        })
    }

    fn list(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpList,
    ) -> opendal::Result<FaultLister> {
        Ok(FaultLister {
            inner: self.inner.list(ctx, path, args)?,
            plan: self.plan,
            delivered: 0,
        })
    }

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
        self.plan.enter(Op::Write).await?;
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

pub struct FaultReader {
    inner: oio::Reader,
    plan: Plan,
}

impl oio::Read for FaultReader {
    async fn open(
        &self,
        range: BytesRange,
    ) -> opendal::Result<(RpRead, Box<dyn oio::ReadStreamDyn>)> {
        self.plan.enter(Op::Read).await?;
        let (rp, inner) = self.inner.open(range).await?;
        let stream = FaultStream {
            inner,
            damage: self.plan.damage(),
            ended: false,
        };
        Ok((rp, Box::new(stream)))
    }

    async fn read(&self, range: BytesRange) -> opendal::Result<(RpRead, Buffer)> {
        self.plan.enter(Op::Read).await?;
        let (rp, buf) = self.inner.read(range).await?;
        Ok(match self.plan.damage() {
            Some(d) => (rp, d.inflict(buf)),
            None => (rp, buf),
        })
    }
}

/// A read's bytes, with its damage in the first chunk that has any; a truncated stream
/// ends right after it, as a connection cut mid-body would.
struct FaultStream {
    inner: Box<dyn oio::ReadStreamDyn>,
    damage: Option<Damage>,
    ended: bool,
}

impl oio::ReadStream for FaultStream {
    async fn read(&mut self) -> opendal::Result<Buffer> {
        if self.ended {
            return Ok(Buffer::new());
        }
        let buf = self.inner.read().await?;
        if buf.is_empty() {
            return Ok(buf);
        }
        match self.damage.take() {
            Some(d) => {
                self.ended = matches!(d, Damage::Truncate(_));
                Ok(d.inflict(buf))
            }
            None => Ok(buf),
        }
    }
}

pub struct FaultWriter {
    inner: oio::Writer,
    plan: Plan,
    /// Whether this write got past its fault: a failed write has written nothing, so
    /// the retry that follows gets its own chance to fail.
    entered: bool,
}

impl FaultWriter {
    async fn enter(&mut self) -> opendal::Result<()> {
        if !self.entered {
            self.plan.enter(Op::Write).await?;
            self.entered = true;
        }
        Ok(())
    }
}

impl oio::Write for FaultWriter {
    async fn write(&mut self, bs: Buffer) -> opendal::Result<()> {
        self.enter().await?;
        self.inner.write(bs).await
    }

    async fn copy_from(
        &mut self,
        path: &str,
        args: OpRead,
        range: BytesRange,
    ) -> opendal::Result<()> {
        self.enter().await?;
        self.inner.copy_from(path, args, range).await
    }

    async fn close(&mut self) -> opendal::Result<Metadata> {
        self.enter().await?;
        self.inner.close().await
    }

    async fn abort(&mut self) -> opendal::Result<()> {
        self.inner.abort().await
    }
}

/// Entries per listing request: a fault can strike at each, as at each page of an
/// object store's listing.
const PAGE: u64 = 100;

pub struct FaultLister {
    inner: oio::Lister,
    plan: Plan,
    delivered: u64,
}

impl oio::List for FaultLister {
    async fn next(&mut self) -> opendal::Result<Option<oio::Entry>> {
        if self.delivered % PAGE == 0 {
            self.plan.enter(Op::List).await?;
        }
        let entry = self.inner.next().await?;
        self.delivered += 1;
        Ok(entry)
    }
}

pub struct FaultDeleter {
    inner: oio::Deleter,
    plan: Plan,
}

impl oio::Delete for FaultDeleter {
    async fn delete(&mut self, path: &str, args: OpDelete) -> opendal::Result<()> {
        self.plan.enter(Op::Delete).await?;
        self.inner.delete(path, args).await
    }

    async fn close(&mut self) -> opendal::Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plans_and_refuses_nonsense() {
        let p = Plan::parse("seed=7,error=0.1,truncate=0.02,flip=0.02,slow=0.05").unwrap();
        assert_eq!(
            p,
            Plan {
                seed: 7,
                error: 0.1,
                truncate: 0.02,
                flip: 0.02,
                slow: 0.05
            }
        );
        assert_eq!(Plan::parse("").unwrap().seed, 1);
        assert!(Plan::parse("error=1.5").is_err());
        assert!(Plan::parse("error").is_err());
        assert!(Plan::parse("seed=-1").is_err());
        assert!(Plan::parse("often=0.1").is_err());
    }

    #[test]
    fn damage_changes_the_bytes() {
        let data = Buffer::from(vec![7u8; 64]);
        let cut = Damage::Truncate(1000).apply(data.clone());
        assert!(cut.len() < 64);
        let flipped = Damage::Flip(1000).apply(data.clone()).to_vec();
        assert_eq!(flipped.len(), 64);
        let diff: u32 = flipped
            .iter()
            .zip(data.to_vec())
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!(diff, 1);
    }
}
