//! Storage access. Every byte goes through opendal, so the same code serves a local
//! directory, s3, sftp, webdav, gcs, azblob and b2; nothing above this file assumes a path.

use std::sync::LazyLock;

use anyhow::{Context, Result, bail};
use opendal::{ErrorKind, blocking, options::ReadOptions};

use crate::format::Id;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vault-io")
        .enable_all()
        .build()
        .expect("cannot start the I/O runtime")
});

/// The kinds of stored files and the directories that hold them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Key,
    Data,
    Index,
    Snapshot,
    Lock,
    Manifest,
    Mirror,
    Forget,
    Export,
}

impl FileKind {
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Key => "keys/",
            FileKind::Data => "data/",
            FileKind::Index => "index/",
            FileKind::Snapshot => "snapshots/",
            FileKind::Lock => "locks/",
            FileKind::Manifest => "manifests/",
            FileKind::Mirror => "mirrors/",
            FileKind::Forget => "forgotten/",
            FileKind::Export => "exports/",
        }
    }

    pub fn path(self, id: &Id) -> String {
        let hex = id.to_hex();
        match self {
            // Packs fan out by their first byte, so no directory grows past a few thousand.
            FileKind::Data => format!("data/{}/{}", &hex[..2], hex),
            _ => format!("{}{}", self.dir(), hex),
        }
    }
}

pub const CONFIG_PATH: &str = "config";

/// Fault injection for the crash tests: with VAULT_CRASH_AFTER_WRITES=N the process kills
/// itself with SIGKILL right after its Nth write or delete, exactly as `kill -9` at that
/// instant would.
static CRASH_AFTER: LazyLock<Option<u64>> = LazyLock::new(|| {
    std::env::var("VAULT_CRASH_AFTER_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
});
static MUTATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn mutated() {
    if let Some(n) = *CRASH_AFTER
        && MUTATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= n
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
    }
}

/// Why a storage call failed, when the caller must tell "absent" from "broken".
#[derive(Debug, thiserror::Error)]
#[error("{path}: not found")]
pub struct NotFound {
    pub path: String,
}

#[derive(Clone)]
pub struct Backend {
    op: blocking::Operator,
    location: String,
    remote: bool,
    /// Whether a write appears whole under its name; if not, writes go to `tmp/` first
    /// and are renamed into place.
    atomic_writes: bool,
    /// Mirrors to read from, in order, when this backend fails to deliver an object.
    fallbacks: Vec<Backend>,
}

impl Backend {
    /// Opens a location: a local path, `fs:///path`, or a remote URL (see `location`).
    pub fn open(location: &str) -> Result<Backend> {
        Self::from_opened(super::location::open(location)?)
    }

    /// Opens the location of mirror `name`, preferring its own credential variables.
    pub fn open_mirror(location: &str, name: &str) -> Result<Backend> {
        Self::from_opened(super::location::open_mirror(location, name)?)
    }

    fn from_opened(opened: super::location::Opened) -> Result<Backend> {
        let _guard = RUNTIME.enter();
        let op = blocking::Operator::new(opened.op)
            .with_context(|| format!("repository {}", opened.display))?;
        Ok(Backend {
            op,
            location: opened.display,
            remote: opened.remote,
            atomic_writes: opened.atomic_writes,
            fallbacks: Vec::new(),
        })
    }

    /// Reads fall back to `mirrors`, in order, per object.
    pub fn with_fallbacks(mut self, mirrors: Vec<Backend>) -> Backend {
        self.fallbacks = mirrors;
        self
    }

    pub fn has_fallbacks(&self) -> bool {
        !self.fallbacks.is_empty()
    }

    /// This backend without its fallbacks: for commands that judge this copy alone.
    pub fn alone(&self) -> Backend {
        Backend {
            fallbacks: Vec::new(),
            ..self.clone()
        }
    }

    /// Tries this backend, then each fallback, until `f` succeeds; the error is this
    /// backend's own.
    fn first_ok<T>(&self, f: impl Fn(&Backend) -> Result<T>) -> Result<T> {
        // `f` uses only this backend's own operator, so no copy without fallbacks is
        // needed (this is every read's path).
        let primary = f(self);
        let Err(err) = &primary else {
            return primary;
        };
        for m in &self.fallbacks {
            if let Ok(v) = f(m) {
                log::info!(
                    "using mirror {} ({})",
                    m.location,
                    crate::error::one_line(err)
                );
                return Ok(v);
            }
        }
        primary
    }

    /// Reads an object and accepts the first copy (this backend, then the mirrors) that
    /// passes `check`; fails with this backend's error, or with `bad` when every copy
    /// was read but none passed.
    pub fn read_verified(
        &self,
        path: &str,
        check: &dyn Fn(&[u8]) -> bool,
        bad: &dyn Fn() -> anyhow::Error,
    ) -> Result<Vec<u8>> {
        self.first_ok(|b| {
            let bytes = b.read_here(path)?;
            if check(&bytes) { Ok(bytes) } else { Err(bad()) }
        })
    }

    pub fn is_remote(&self) -> bool {
        self.remote
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    fn ctx(&self, path: &str) -> String {
        format!("{}/{}", self.location.trim_end_matches('/'), path)
    }

    fn wrap(&self, path: &str, e: opendal::Error) -> anyhow::Error {
        if e.kind() == ErrorKind::NotFound {
            anyhow::Error::new(NotFound {
                path: self.ctx(path),
            })
        } else {
            anyhow::Error::new(e).context(self.ctx(path))
        }
    }

    /// Reads a whole object (from a mirror when this backend fails).
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.first_ok(|b| b.read_here(path))
    }

    fn read_here(&self, path: &str) -> Result<Vec<u8>> {
        log::trace!("read {}", self.ctx(path));
        self.op
            .read(path)
            .map(|b| b.to_vec())
            .map_err(|e| self.wrap(path, e))
    }

    /// Reads `len` bytes at `offset` (from a mirror when this backend fails).
    pub fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.first_ok(|b| b.read_range_here(path, offset, len))
    }

    fn read_range_here(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        log::trace!("read {} ({len} bytes at {offset})", self.ctx(path));
        let opts = ReadOptions {
            range: (offset..offset + len).into(),
            ..Default::default()
        };
        let buf = self
            .op
            .read_options(path, opts)
            .map_err(|e| self.wrap(path, e))?
            .to_vec();
        if buf.len() as u64 != len {
            bail!(
                "{}: short read ({} of {} bytes at offset {})",
                self.ctx(path),
                buf.len(),
                len,
                offset
            );
        }
        Ok(buf)
    }

    /// Writes a whole object; on a local disk it appears atomically (temp file, fsync,
    /// rename), so a kill never leaves half an object under its final name.
    pub fn write(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        log::debug!("write {} ({} bytes)", self.ctx(path), bytes.len());
        if !self.atomic_writes {
            let tmp = format!("tmp/{}.tmp", Id::random().to_hex());
            self.op.write(&tmp, bytes).map_err(|e| self.wrap(&tmp, e))?;
            return self
                .op
                .rename(&tmp, path)
                .map(|_| mutated())
                .map_err(|e| self.wrap(path, e));
        }
        self.op
            .write(path, bytes)
            .map(|_| mutated())
            .map_err(|e| self.wrap(path, e))
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        log::debug!("delete {}", self.ctx(path));
        self.op
            .delete(path)
            .map(|_| mutated())
            .map_err(|e| self.wrap(path, e))
    }

    pub fn size(&self, path: &str) -> Result<u64> {
        self.first_ok(|b| {
            b.op.stat(path)
                .map(|m| m.content_length())
                .map_err(|e| b.wrap(path, e))
        })
    }

    /// Every copy this backend reads from: itself, then its mirrors.
    pub fn copies(&self) -> Vec<Backend> {
        std::iter::once(self.alone())
            .chain(self.fallbacks.iter().cloned())
            .collect()
    }

    pub fn exists(&self, path: &str) -> Result<bool> {
        self.op.exists(path).map_err(|e| self.wrap(path, e))
    }

    /// Lists the ids of all objects of one kind (recursively for packs). Names that are
    /// not ids (temporary files, strays) are skipped.
    pub fn list(&self, kind: FileKind) -> Result<Vec<Id>> {
        Ok(self
            .list_sized(kind)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Like `list`, with each object's size.
    pub fn list_sized(&self, kind: FileKind) -> Result<Vec<(Id, u64)>> {
        Ok(self
            .list_files(kind.dir())?
            .into_iter()
            .filter_map(|(path, size)| {
                let name = path.rsplit('/').next().unwrap_or(&path);
                Id::from_hex(name).map(|id| (id, size))
            })
            .collect())
    }

    /// Every file below `dir` ("" for the whole repository), recursively: its path
    /// relative to the root, and its size.
    pub fn list_files(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let opts = opendal::options::ListOptions {
            recursive: true,
            ..Default::default()
        };
        let entries = match self.op.list_options(dir, opts) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.wrap(dir, e)),
        };
        Ok(entries
            .into_iter()
            .filter(|e| !e.metadata().is_dir())
            .map(|e| (e.path().to_string(), e.metadata().content_length()))
            .collect())
    }

    pub fn create_layout(&self) -> Result<()> {
        for d in LAYOUT_DIRS {
            let d = format!("{d}/");
            self.op.create_dir(&d).map_err(|e| self.wrap(&d, e))?;
        }
        Ok(())
    }
}

/// The directories of a repository (spec §1), as `init` creates them.
pub const LAYOUT_DIRS: [&str; 10] = [
    "keys",
    "data",
    "index",
    "manifests",
    "mirrors",
    "forgotten",
    "exports",
    "snapshots",
    "locks",
    "tmp",
];

pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<NotFound>().is_some())
}
