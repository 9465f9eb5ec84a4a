//! The storage interface under [`Backend`](super::Backend): one small trait, [`Storage`],
//! implemented by the opendal-backed store ([`OpendalStore`]) and by decorators
//! that wrap any `Storage` and are stacked around it, as restic's backend wrappers are.
//!
//! A backend's stack, from the storage up:
//!
//! ```text
//! OpendalStore     the service, with its timeouts and limits (opendal layers, see below)
//! Faults           VAULT_FAULTS (feature "test-hooks" only): below retry, as a flaky
//!                  disk or network would be, so retries meet the injected faults
//! Retry            temporary errors retried with jittered exponential backoff
//! CrashAfter       VAULT_CRASH_AFTER_WRITES (feature "test-hooks" only): SIGKILL after
//!                  the Nth write, rename or delete that succeeded
//! ```
//!
//! [`AppendOnly`] and [`DryRun`] go above the retries, under the crash hook, when asked
//! for ([`Backend::append_only`](super::Backend::append_only),
//! [`Backend::dry_run`](super::Backend::dry_run), [`Backend::decorated`](super::Backend::decorated)
//! for any other decorator).
//!
//! Two rules stay out of the stack:
//!
//! - Limits (bandwidth, requests in flight) are an opendal layer inside the store (see
//!   [`limits`](super::limits)): they pace a transfer a chunk at a time inside its
//!   stream, which this trait, whose calls move whole objects or ranges, cannot see; a
//!   decorator here could only pace per object, in bursts.
//! - Mirror fallback stays in `Backend`: a read falls back per object to another
//!   *backend* (its own stack, location and error naming), and the bytes of each copy are
//!   verified and read again before the next copy is tried (`Backend::read_with` runs a
//!   caller's whole verification against one copy alone). That needs the object checks
//!   and the backend's other methods, not only the calls of this trait.

use std::fmt;

/// The reads of a decorator that changes only what is written: each passes through to
/// `self.inner` untouched. Written inside `impl Storage for …`.
macro_rules! reads_pass_through {
    () => {
        fn read(&self, path: &str) -> $crate::repo::storage::Result<Vec<u8>> {
            self.inner.read(path)
        }

        fn read_range(
            &self,
            path: &str,
            offset: u64,
            len: u64,
        ) -> $crate::repo::storage::Result<Vec<u8>> {
            self.inner.read_range(path, offset, len)
        }

        fn stat(&self, path: &str) -> $crate::repo::storage::Result<$crate::repo::storage::Meta> {
            self.inner.stat(path)
        }

        fn exists(&self, path: &str) -> $crate::repo::storage::Result<bool> {
            self.inner.exists(path)
        }

        fn list(
            &self,
            dir: &str,
        ) -> $crate::repo::storage::Result<Vec<$crate::repo::storage::Entry>> {
            self.inner.list(dir)
        }

        fn probe(&self) -> $crate::repo::storage::Result<()> {
            self.inner.probe()
        }
    };
}
use reads_pass_through;

pub mod append_only;
#[cfg(feature = "test-hooks")]
pub mod crash;
pub mod dry_run;
#[cfg(feature = "test-hooks")]
pub mod faults;
pub mod object_lock;
pub mod opendal_store;
pub mod retry;

pub use append_only::{AppendOnly, Refused};
pub use dry_run::DryRun;
pub use opendal_store::OpendalStore;
pub use retry::Retry;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the storage (or the library reaching it) answered.
    #[error(transparent)]
    Storage(#[from] ::opendal::Error),
    /// An append-only store refused to change an object this process did not create.
    #[error(transparent)]
    Refused(#[from] Refused),
}

impl Error {
    /// Whether the same call may succeed if made again (a timeout, a dropped connection,
    /// a server's "slow down").
    pub fn is_temporary(&self) -> bool {
        matches!(self, Error::Storage(e) if e.is_temporary())
    }

    /// Whether the object (or directory) is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Storage(e) if e.kind() == ::opendal::ErrorKind::NotFound)
    }

    /// Whether the storage (its permissions: an sshd denying remove and rename, an
    /// append-only directory) or an append-only decorator refused the change.
    pub fn is_refused(&self) -> bool {
        match self {
            Error::Refused(_) => true,
            Error::Storage(e) => e.kind() == ::opendal::ErrorKind::PermissionDenied,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the storage says of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub size: u64,
    /// When it was last written, where the storage says.
    pub modified: Option<jiff::Timestamp>,
}

/// One object of a listing: its path relative to the storage's root, and what the
/// listing said of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub meta: Meta,
}

/// A flat namespace of objects named by `/`-separated paths relative to a root, as a
/// repository needs it. Every call blocks until it is done; implementations are shared
/// by the threads of a command (Send + Sync). Paths of directories end in `/`.
pub trait Storage: Send + Sync + fmt::Debug {
    /// The whole object.
    fn read(&self, path: &str) -> Result<Vec<u8>>;

    /// `len` bytes at `offset`; fewer when the object ends before (the caller judges).
    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// Creates or replaces the object at `path` with `bytes`.
    fn write(&self, path: &str, bytes: bytes::Bytes) -> Result<()>;

    /// Creates the object at `path` directly under its name, without a temporary name
    /// or a rename, and fails when something is there already: the one write that
    /// storage refusing renames, deletes and overwrites still allows. A process killed
    /// meanwhile may leave it short.
    fn write_new(&self, path: &str, bytes: bytes::Bytes) -> Result<()>;

    /// Moves the object at `from` to `to`, replacing what is there.
    fn rename(&self, from: &str, to: &str) -> Result<()>;

    /// Removes the object; removing one that is not there succeeds.
    fn delete(&self, path: &str) -> Result<()>;

    /// Its size and time.
    fn stat(&self, path: &str) -> Result<Meta>;

    /// Whether there is an object at `path`.
    fn exists(&self, path: &str) -> Result<bool>;

    /// Every object below the directory `dir` ("" for the root), recursively, without
    /// the directories themselves; a directory that does not exist lists nothing.
    fn list(&self, dir: &str) -> Result<Vec<Entry>>;

    /// Lists at most one entry of the root: a request whose error answer says why the
    /// storage cannot be used (a bucket that does not exist, a credential refused).
    fn probe(&self) -> Result<()>;

    /// Creates the directory `dir` (ending in `/`); object stores need none.
    fn create_dir(&self, dir: &str) -> Result<()>;
}

/// A shared stack is a storage too: decorators wrap `Arc<dyn Storage>`.
impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn read(&self, path: &str) -> Result<Vec<u8>> {
        (**self).read(path)
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        (**self).read_range(path, offset, len)
    }

    fn write(&self, path: &str, bytes: bytes::Bytes) -> Result<()> {
        (**self).write(path, bytes)
    }

    fn write_new(&self, path: &str, bytes: bytes::Bytes) -> Result<()> {
        (**self).write_new(path, bytes)
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        (**self).rename(from, to)
    }

    fn delete(&self, path: &str) -> Result<()> {
        (**self).delete(path)
    }

    fn stat(&self, path: &str) -> Result<Meta> {
        (**self).stat(path)
    }

    fn exists(&self, path: &str) -> Result<bool> {
        (**self).exists(path)
    }

    fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        (**self).list(dir)
    }

    fn probe(&self) -> Result<()> {
        (**self).probe()
    }

    fn create_dir(&self, dir: &str) -> Result<()> {
        (**self).create_dir(dir)
    }
}
