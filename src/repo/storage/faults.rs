//! Fault injection, a test hook built only with the `test-hooks` feature. With
//!
//! ```text
//! VAULT_FAULTS=seed=7,error=0.1,truncate=0.02,flip=0.02,slow=0.05
//! ```
//!
//! every backend (local or remote, primary or mirror) goes through [`Faults`], below its
//! retries as a flaky disk or network would be: that fraction of reads, writes, stats,
//! lists (each page of 100 entries) and deletes fail with a temporary error before
//! they touch anything, that fraction of reads arrive cut short or with one bit flipped,
//! and that fraction of calls wait 20-100 ms first. Every field is optional (a missing one
//! is 0, the seed 1). The choices come from the seed, so a test can name the run it saw.
//! At exit the process prints one line on stderr saying what it injected ([`summary`]).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};
use bytes::Bytes;
use opendal::ErrorKind;

use super::{Entry, Meta, Storage};

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

    fn slow(&self) {
        if self.chance(self.slow) {
            COUNTS.slowed.fetch_add(1, Ordering::Relaxed);
            let ms = 20 + draw(self.seed) % 81;
            std::thread::sleep(Duration::from_millis(ms));
        }
    }

    /// Maybe waits, then maybe fails the call, before it reaches the storage.
    fn enter(&self, op: Op) -> super::Result<()> {
        self.slow();
        COUNTS.calls.fetch_add(1, Ordering::Relaxed);
        if !self.chance(self.error) {
            return Ok(());
        }
        COUNTS.errors[op as usize].fetch_add(1, Ordering::Relaxed);
        let e = opendal::Error::new(ErrorKind::Unexpected, format!("injected fault ({VAR})"))
            .with_operation(op.name())
            .set_temporary();
        Err(e.into())
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

/// The plan the variable asks for, if any; an error when it does not parse.
pub fn from_env() -> Result<Option<Plan>> {
    match &*PLAN {
        None => Ok(None),
        Some(Ok(plan)) => Ok(Some(*plan)),
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
    /// The damaged bytes (`v` must not be empty): cut short as a connection cut
    /// mid-body would leave them, or with one bit flipped.
    fn apply(self, mut v: Vec<u8>) -> Vec<u8> {
        match self {
            Damage::Truncate(r) => v.truncate((r % v.len() as u64) as usize),
            Damage::Flip(r) => {
                let bit = (r % (v.len() as u64 * 8)) as usize;
                v[bit / 8] ^= 1 << (bit % 8);
            }
        }
        v
    }

    /// Damages a read's bytes, counting it; nothing to damage in an empty read.
    fn inflict(self, v: Vec<u8>) -> Vec<u8> {
        if v.is_empty() {
            return v;
        }
        let count = match self {
            Damage::Truncate(_) => &COUNTS.truncated,
            Damage::Flip(_) => &COUNTS.flipped,
        };
        count.fetch_add(1, Ordering::Relaxed);
        self.apply(v)
    }
}

/// Reads damaged so far in this process (for tests that build the decorator themselves).
#[cfg(test)]
pub(crate) fn damaged_reads() -> u64 {
    COUNTS.truncated.load(Ordering::Relaxed) + COUNTS.flipped.load(Ordering::Relaxed)
}

/// Entries per listing request: a fault can strike at each, as at each page of an
/// object store's listing.
const PAGE: usize = 100;

/// The fault injector: `inner` with the faults of `plan`.
#[derive(Debug)]
pub struct Faults<S> {
    inner: S,
    plan: Plan,
}

impl<S: Storage> Faults<S> {
    pub fn new(inner: S, plan: Plan) -> Self {
        Faults { inner, plan }
    }

    fn read_with(&self, read: impl FnOnce(&S) -> super::Result<Vec<u8>>) -> super::Result<Vec<u8>> {
        self.plan.enter(Op::Read)?;
        let bytes = read(&self.inner)?;
        Ok(match self.plan.damage() {
            Some(d) => d.inflict(bytes),
            None => bytes,
        })
    }
}

impl<S: Storage> Storage for Faults<S> {
    fn read(&self, path: &str) -> super::Result<Vec<u8>> {
        self.read_with(|s| s.read(path))
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> super::Result<Vec<u8>> {
        self.read_with(|s| s.read_range(path, offset, len))
    }

    fn write(&self, path: &str, bytes: Bytes) -> super::Result<()> {
        self.plan.enter(Op::Write)?;
        self.inner.write(path, bytes)
    }

    fn write_new(&self, path: &str, bytes: Bytes) -> super::Result<()> {
        self.plan.enter(Op::Write)?;
        self.inner.write_new(path, bytes)
    }

    fn rename(&self, from: &str, to: &str) -> super::Result<()> {
        self.plan.enter(Op::Write)?;
        self.inner.rename(from, to)
    }

    fn delete(&self, path: &str) -> super::Result<()> {
        self.plan.enter(Op::Delete)?;
        self.inner.delete(path)
    }

    fn stat(&self, path: &str) -> super::Result<Meta> {
        self.plan.enter(Op::Stat)?;
        self.inner.stat(path)
    }

    fn exists(&self, path: &str) -> super::Result<bool> {
        self.plan.enter(Op::Stat)?;
        self.inner.exists(path)
    }

    /// A fault may strike before the listing and at each further page of it; one that
    /// strikes fails the whole listing, which the retries above make again.
    fn list(&self, dir: &str) -> super::Result<Vec<Entry>> {
        self.plan.enter(Op::List)?;
        let entries = self.inner.list(dir)?;
        for _ in 0..entries.len() / PAGE {
            self.plan.enter(Op::List)?;
        }
        Ok(entries)
    }

    fn probe(&self) -> super::Result<()> {
        self.plan.enter(Op::List)?;
        self.inner.probe()
    }

    fn create_dir(&self, dir: &str) -> super::Result<()> {
        self.plan.enter(Op::Write)?;
        self.inner.create_dir(dir)
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
        let data = vec![7u8; 64];
        let cut = Damage::Truncate(1000).apply(data.clone());
        assert!(cut.len() < 64);
        let flipped = Damage::Flip(1000).apply(data.clone());
        assert_eq!(flipped.len(), 64);
        let diff: u32 = flipped
            .iter()
            .zip(data)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!(diff, 1);
    }
}
