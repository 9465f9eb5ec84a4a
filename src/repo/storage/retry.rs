//! Retries with backoff: a call that fails with a temporary error (see
//! [`Error::is_temporary`]) is made again, after a delay that doubles from `min_delay` up
//! to `max_delay`, each with a random jitter of up to `min_delay` added (so that the
//! requests of many threads that failed together do not come back together), up to
//! `max_times` more times. An error that outlives its retries is marked persistent, so
//! that nothing above retries it again.

use std::time::Duration;

use bytes::Bytes;

use super::{Entry, Error, Meta, Result, Storage};

#[derive(Debug)]
pub struct Retry<S> {
    inner: S,
    max_times: usize,
    min_delay: Duration,
    max_delay: Duration,
}

impl<S: Storage> Retry<S> {
    pub fn new(inner: S, max_times: usize, min_delay: Duration, max_delay: Duration) -> Self {
        Retry {
            inner,
            max_times,
            min_delay,
            max_delay,
        }
    }

    /// A local disk fails rarely and briefly (a busy NFS server, an interrupted call): a
    /// few quick retries, so that one hiccup does not fail a backup.
    pub fn local(inner: S) -> Self {
        Self::new(
            inner,
            5,
            Duration::from_millis(5),
            Duration::from_millis(200),
        )
    }

    /// Remote storage: a few retries over seconds, long enough for a dropped connection
    /// to come back or a server's "slow down" to pass.
    pub fn remote(inner: S) -> Self {
        Self::new(
            inner,
            5,
            Duration::from_millis(200),
            Duration::from_secs(10),
        )
    }

    fn run<T>(&self, what: &str, path: &str, f: impl Fn(&S) -> Result<T>) -> Result<T> {
        let mut delay = self.min_delay;
        for attempt in 1.. {
            match f(&self.inner) {
                Err(e) if e.is_temporary() && attempt <= self.max_times => {
                    let wait = delay + jitter(self.min_delay);
                    // At -vvv only, as the retries of the storage library always were.
                    log::trace!(
                        "will retry {what} {path} (attempt {attempt}) after {:.3}s because: {e}",
                        wait.as_secs_f64()
                    );
                    std::thread::sleep(wait);
                    delay = (delay * 2).min(self.max_delay);
                }
                Err(Error::Storage(e)) if e.is_temporary() => {
                    return Err(Error::Storage(e.set_persistent()));
                }
                r => return r,
            }
        }
        unreachable!("the loop returns once the retries are spent")
    }
}

/// A random delay in [0, `max`).
fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return Duration::ZERO;
    }
    let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    max.mul_f64(unit)
}

impl<S: Storage> Storage for Retry<S> {
    fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.run("read", path, |s| s.read(path))
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.run("read", path, |s| s.read_range(path, offset, len))
    }

    fn write(&self, path: &str, bytes: Bytes) -> Result<()> {
        self.run("write", path, |s| s.write(path, bytes.clone()))
    }

    /// A retry may find the object its failed try wrote after all: `Backend` tells that
    /// from another object by reading it.
    fn write_new(&self, path: &str, bytes: Bytes) -> Result<()> {
        self.run("write", path, |s| s.write_new(path, bytes.clone()))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.run("rename", from, |s| s.rename(from, to))
    }

    fn delete(&self, path: &str) -> Result<()> {
        self.run("delete", path, |s| s.delete(path))
    }

    fn stat(&self, path: &str) -> Result<Meta> {
        self.run("stat", path, |s| s.stat(path))
    }

    fn exists(&self, path: &str) -> Result<bool> {
        self.run("stat", path, |s| s.exists(path))
    }

    fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        self.run("list", dir, |s| s.list(dir))
    }

    fn probe(&self) -> Result<()> {
        self.run("list", "", |s| s.probe())
    }

    fn create_dir(&self, dir: &str) -> Result<()> {
        self.run("create_dir", dir, |s| s.create_dir(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails its first `failures` stats with `error`, then answers.
    #[derive(Debug)]
    struct Flaky {
        failures: usize,
        temporary: bool,
        calls: AtomicUsize,
    }

    impl Flaky {
        fn answer(&self) -> Result<Meta> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.failures {
                let e = opendal::Error::new(opendal::ErrorKind::Unexpected, "flaky");
                return Err(if self.temporary { e.set_temporary() } else { e }.into());
            }
            Ok(Meta {
                size: 1,
                modified: None,
            })
        }
    }

    impl Storage for Flaky {
        fn read(&self, _: &str) -> Result<Vec<u8>> {
            unimplemented!()
        }
        fn read_range(&self, _: &str, _: u64, _: u64) -> Result<Vec<u8>> {
            unimplemented!()
        }
        fn write(&self, _: &str, _: Bytes) -> Result<()> {
            unimplemented!()
        }
        fn write_new(&self, _: &str, _: Bytes) -> Result<()> {
            unimplemented!()
        }
        fn rename(&self, _: &str, _: &str) -> Result<()> {
            unimplemented!()
        }
        fn delete(&self, _: &str) -> Result<()> {
            unimplemented!()
        }
        fn stat(&self, _: &str) -> Result<Meta> {
            self.answer()
        }
        fn exists(&self, _: &str) -> Result<bool> {
            unimplemented!()
        }
        fn list(&self, _: &str) -> Result<Vec<Entry>> {
            unimplemented!()
        }
        fn probe(&self) -> Result<()> {
            unimplemented!()
        }
        fn create_dir(&self, _: &str) -> Result<()> {
            unimplemented!()
        }
    }

    fn retry(failures: usize, temporary: bool) -> Retry<Flaky> {
        let flaky = Flaky {
            failures,
            temporary,
            calls: AtomicUsize::new(0),
        };
        Retry::new(flaky, 3, Duration::from_millis(1), Duration::from_millis(2))
    }

    #[test]
    fn temporary_errors_are_retried_up_to_max_times() {
        let r = retry(3, true);
        assert!(r.stat("x").is_ok());
        assert_eq!(r.inner.calls.load(Ordering::SeqCst), 4);

        let r = retry(4, true);
        let e = r.stat("x").unwrap_err();
        assert!(!e.is_temporary(), "spent retries leave a persistent error");
        assert_eq!(r.inner.calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn other_errors_are_not_retried() {
        let r = retry(1, false);
        assert!(r.stat("x").is_err());
        assert_eq!(r.inner.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(5)) < Duration::from_millis(5));
        }
    }
}
