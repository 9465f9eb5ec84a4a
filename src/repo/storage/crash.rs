//! The crash hook, a test hook built only with the `test-hooks` feature: with
//! VAULT_CRASH_AFTER_WRITES=N the process kills itself with SIGKILL right after its Nth
//! write, rename or delete that succeeded (counted over every backend of the process),
//! exactly as `kill -9` at that instant would. It sits on top of a backend's stack, so
//! it counts what reached the storage once retries are done; `Backend` sends what is not
//! one of the writes the crash tests probe (temporary names, the cleanup of an
//! interrupted command) beneath it.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{Result, Storage};

pub const VAR: &str = "VAULT_CRASH_AFTER_WRITES";

static CRASH_AFTER: LazyLock<Option<u64>> =
    LazyLock::new(|| std::env::var(VAR).ok().and_then(|v| v.parse().ok()));
static MUTATIONS: AtomicU64 = AtomicU64::new(0);

/// The number of writes the variable asks to die after, if it is set.
pub fn from_env() -> Option<u64> {
    *CRASH_AFTER
}

#[derive(Debug)]
pub struct CrashAfter<S> {
    inner: S,
    after: u64,
}

impl<S: Storage> CrashAfter<S> {
    /// Kills the process after the `after`th write, rename or delete through any
    /// `CrashAfter` of the process.
    pub fn new(inner: S, after: u64) -> Self {
        CrashAfter { inner, after }
    }

    fn mutated<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_ok() && MUTATIONS.fetch_add(1, Ordering::SeqCst) + 1 >= self.after {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
        }
        r
    }
}

impl<S: Storage> Storage for CrashAfter<S> {
    super::reads_pass_through!();

    fn write(&self, path: &str, bytes: Bytes) -> Result<()> {
        self.mutated(self.inner.write(path, bytes))
    }

    fn write_new(&self, path: &str, bytes: Bytes) -> Result<()> {
        self.mutated(self.inner.write_new(path, bytes))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.mutated(self.inner.rename(from, to))
    }

    fn delete(&self, path: &str) -> Result<()> {
        self.mutated(self.inner.delete(path))
    }

    /// Not counted: `init` makes directories before any object.
    fn create_dir(&self, dir: &str) -> Result<()> {
        self.inner.create_dir(dir)
    }
}
