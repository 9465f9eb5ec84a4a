//! Storage access. Every byte goes through a stack of [`Storage`] decorators over an
//! opendal operator (see `storage`), so the same code serves a local directory, s3, sftp,
//! webdav, gcs, azblob and b2; nothing above this file assumes a path. What needs more
//! than one call of the storage stays here: reading again bytes that fail their check,
//! falling back to mirrors per object, writing through a temporary name, naming errors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use anyhow::{Context, Result};
use opendal::{ErrorKind, blocking};

use crate::format::Id;
use crate::format::manifest::Manifest;
use crate::format::object;

use super::cleanup;
use super::remote::{CopyInfo, RemoteError, RemoteFailure, Service};
use super::storage::{self, AppendOnly, DryRun, OpendalStore, Retry, Storage};

pub(crate) static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
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
    Mark,
    Revival,
    Deletion,
    Format,
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
            FileKind::Mark => "marks/",
            FileKind::Revival => "revivals/",
            FileKind::Deletion => "deletions/",
            FileKind::Format => "format/",
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

    const ALL: [FileKind; 13] = [
        FileKind::Key,
        FileKind::Data,
        FileKind::Index,
        FileKind::Snapshot,
        FileKind::Lock,
        FileKind::Manifest,
        FileKind::Mirror,
        FileKind::Forget,
        FileKind::Export,
        FileKind::Mark,
        FileKind::Revival,
        FileKind::Deletion,
        FileKind::Format,
    ];

    /// The kind and id of the object at `path`, when it is one.
    pub(crate) fn of_path(path: &str) -> Option<(FileKind, Id)> {
        let kind = Self::ALL.into_iter().find(|k| path.starts_with(k.dir()))?;
        let id = Id::from_hex(path.rsplit('/').next()?)?;
        (kind.path(&id) == path).then_some((kind, id))
    }
}

/// Whether `bytes` pass the check that every stored object carries without the key:
/// hash-named objects hash to their name, the config and locks end in their checksum, a
/// manifest in its own and names its index file. Other paths always pass.
pub fn intact(path: &str, bytes: &[u8]) -> bool {
    if path == CONFIG_PATH {
        return object::verify_checksum(bytes).is_ok();
    }
    match FileKind::of_path(path) {
        None => true,
        Some((FileKind::Lock, _)) => object::verify_checksum(bytes).is_ok(),
        Some((FileKind::Manifest, id)) => Manifest::decode(bytes).is_ok_and(|m| m.index.0 == id),
        Some((_, id)) => Id::of_stored(bytes) == id,
    }
}

/// How many times one copy of an object is read before bytes that fail their check are
/// believed: a bit flipped or a body cut short on the way reads right the next time,
/// damage at rest never does. Nothing is reported damaged, repaired or deleted on the
/// word of one bad read.
const READS: usize = 3;

pub const CONFIG_PATH: &str = "config";

/// The storage under a backend's retries: the fault injector (VAULT_FAULTS) when the
/// test hooks are built and the variable asks for it, else the store itself.
#[cfg(feature = "test-hooks")]
fn with_faults(store: Arc<dyn Storage>) -> Result<Arc<dyn Storage>> {
    Ok(match storage::faults::from_env()? {
        Some(plan) => Arc::new(storage::faults::Faults::new(store, plan)),
        None => store,
    })
}

#[cfg(not(feature = "test-hooks"))]
fn with_faults(store: Arc<dyn Storage>) -> Result<Arc<dyn Storage>> {
    Ok(store)
}

/// The top of a backend's stack: the crash hook (VAULT_CRASH_AFTER_WRITES) over
/// `beneath` when the test hooks are built and the variable asks for it.
#[cfg(feature = "test-hooks")]
fn with_crash_hook(beneath: &Arc<dyn Storage>) -> Arc<dyn Storage> {
    match storage::crash::from_env() {
        Some(n) => Arc::new(storage::crash::CrashAfter::new(beneath.clone(), n)),
        None => beneath.clone(),
    }
}

#[cfg(not(feature = "test-hooks"))]
fn with_crash_hook(beneath: &Arc<dyn Storage>) -> Arc<dyn Storage> {
    beneath.clone()
}

/// Why a write through a temporary name failed.
enum Staged {
    /// The temporary object was written; the storage refused to move it into place
    /// (create-only storage), and `tmp_left` when also to delete it.
    RenameRefused {
        error: anyhow::Error,
        tmp_left: bool,
    },
    Failed(anyhow::Error),
}

/// Create-only storage holds other bytes under the name of an object being written (a
/// write killed midway left it short) and refuses to replace them.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: other bytes are stored under this name (a write killed midway?) and the storage refuses to replace them; left for `vault maintain`, which removes them"
)]
pub struct Occupied {
    pub path: String,
}

/// A write refused because the process is being interrupted.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Why a storage call failed, when the caller must tell "absent" from "broken".
#[derive(Debug, thiserror::Error)]
#[error("{path}: not found")]
pub struct NotFound {
    pub path: String,
}

/// A range read that came back shorter than asked, on every try.
#[derive(Debug, thiserror::Error)]
#[error("{path}: short read ({got} of {len} bytes at offset {offset})")]
pub struct ShortRead {
    path: String,
    got: usize,
    len: u64,
    offset: u64,
}

/// Whether `e` is a change the storage (its permissions) or an append-only decorator
/// refused: what create-only storage answers a delete, a rename or an overwrite.
pub fn is_refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<storage::Refused>()
            || c.downcast_ref::<RemoteError>()
                .is_some_and(|r| r.kind == RemoteFailure::PermissionDenied)
    })
}

/// Whether `e` is the storage's own verdict (an error it returned, which the retry
/// layer already retried, or a read that stayed short) rather than bytes that failed a
/// check, which a new read may cure.
pub fn is_storage_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<RemoteError>()
            || c.is::<opendal::Error>()
            || c.is::<storage::Refused>()
            || c.is::<Occupied>()
            || c.is::<NotFound>()
            || c.is::<ShortRead>()
    })
}

#[derive(Clone)]
pub struct Backend {
    /// The whole stack: what every call goes through.
    storage: Arc<dyn Storage>,
    /// The stack without the crash hook on top, for writes the crash tests do not count:
    /// an object's temporary name, and the cleanup of an interrupted command.
    beneath: Arc<dyn Storage>,
    location: String,
    /// How errors name this copy, and whether it is cold.
    copy: Arc<CopyInfo>,
    remote: bool,
    /// Whether a write appears whole under its name; if not, writes go to `tmp/` first
    /// and are renamed into place.
    atomic_writes: bool,
    /// Set once the storage refused to move a temporary object into place (create-only
    /// storage: an sshd denying rename, an append-only directory): from then on, objects
    /// are written under their final names directly (`write_direct`). Shared by clones.
    create_only: Arc<AtomicBool>,
    /// Requests it may have in flight (see `connections`).
    connections: usize,
    /// Mirrors to read from, in order, when this backend fails to deliver an object.
    fallbacks: Vec<Backend>,
}

impl Backend {
    /// Opens a location: a local path, `fs:///path`, or a remote URL (see `location`).
    pub fn open(location: &str) -> Result<Backend> {
        let opened = super::location::open(location).map_err(|e| open_error(location, None, e))?;
        Self::from_opened(opened, None)
    }

    /// Opens the location of mirror `name` with its own credential variables, and the
    /// usual ones or plain http only where `access` (this host's trust) allows them.
    pub fn open_mirror(
        location: &str,
        name: &str,
        access: super::location::Access,
    ) -> Result<Backend> {
        let opened = super::location::open_mirror(location, name, access)
            .map_err(|e| open_error(location, Some(name), e))?;
        Self::from_opened(opened, Some(name))
    }

    fn from_opened(opened: super::location::Opened, mirror: Option<&str>) -> Result<Backend> {
        let _guard = RUNTIME.enter();
        let copy = CopyInfo::new(&opened.display, mirror, opened.cold);
        let op = blocking::Operator::new(opened.op).with_context(|| copy.label.clone())?;
        let blocking = |o: Option<opendal::Operator>| -> Result<Option<blocking::Operator>> {
            o.map(|o| blocking::Operator::new(o).with_context(|| copy.label.clone()))
                .transpose()
        };
        let packs_op = blocking(opened.packs_op)?;
        let direct_op = blocking(opened.direct_op)?;
        let store = with_faults(Arc::new(OpendalStore::new(
            op,
            packs_op,
            direct_op,
            !opened.remote,
        )))?;
        let beneath: Arc<dyn Storage> = if opened.remote {
            Arc::new(Retry::remote(store))
        } else {
            Arc::new(Retry::local(store))
        };
        Ok(Backend {
            storage: with_crash_hook(&beneath),
            beneath,
            copy,
            location: opened.display,
            remote: opened.remote,
            atomic_writes: opened.atomic_writes,
            create_only: Arc::new(AtomicBool::new(false)),
            connections: opened.connections,
            fallbacks: Vec::new(),
        })
    }

    /// This backend with `wrap` put around its storage, under the crash hook.
    pub fn decorated(mut self, wrap: impl FnOnce(Arc<dyn Storage>) -> Arc<dyn Storage>) -> Backend {
        self.beneath = wrap(self.beneath);
        self.storage = with_crash_hook(&self.beneath);
        self
    }

    /// This backend refusing to delete, overwrite or rename anything it did not create
    /// (see `storage::append_only`).
    pub fn append_only(self) -> Backend {
        self.decorated(|s| Arc::new(AppendOnly::new(s)))
    }

    /// This backend with its writes and deletes skipped and counted (see
    /// `storage::dry_run`), and the counter.
    pub fn dry_run(self) -> (Backend, Arc<DryRun<Arc<dyn Storage>>>) {
        let dry = Arc::new(DryRun::new(self.beneath.clone()));
        let counter = dry.clone();
        (self.decorated(|_| dry), counter)
    }

    /// Reads fall back to `mirrors`, in order, per object.
    pub fn with_fallbacks(mut self, mirrors: Vec<Backend>) -> Backend {
        self.fallbacks = mirrors;
        self
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
        self.first_ok_from(self, f)
    }

    /// `first_ok` with `primary` (this backend, or it without fallbacks) tried first.
    fn first_ok_from<T>(&self, primary: &Backend, f: impl Fn(&Backend) -> Result<T>) -> Result<T> {
        let first = f(primary);
        let Err(err) = &first else {
            return first;
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
        first
    }

    /// Runs `read` (reads from the backend it is given, then verifies what it got) on
    /// this backend, then on each mirror, until it succeeds; fails with this backend's
    /// error. Each copy is read up to READS times while what fails is the bytes rather
    /// than the storage.
    pub fn read_with<T>(&self, read: impl Fn(&Backend) -> Result<T>) -> Result<T> {
        let reread = |b: &Backend| {
            let mut r = read(b);
            for _ in 1..READS {
                match &r {
                    Err(e) if !is_storage_error(e) => {
                        log::info!(
                            "{}: reading again ({})",
                            b.location,
                            crate::error::one_line(e)
                        );
                        r = read(b);
                    }
                    _ => break,
                }
            }
            r
        };
        // `read` may call any method of the backend it gets: each copy must be alone,
        // or its reads would fall back to the mirrors on their own.
        if self.fallbacks.is_empty() {
            return reread(self);
        }
        self.first_ok_from(&self.alone(), reread)
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

    /// How many requests this backend may have in flight (`--connections`, a mirror's
    /// own setting, or its kind's default): loops doing its I/O run that many at once.
    pub fn connections(&self) -> usize {
        self.connections
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// How errors and notices name this copy: "repository LOCATION" or "mirror NAME
    /// (LOCATION)".
    pub fn label(&self) -> &str {
        &self.copy.label
    }

    /// The same copy, named `label` in errors instead of "repository LOCATION" (e.g.
    /// "export /media/x").
    pub fn labeled(mut self, label: String) -> Backend {
        self.copy = self.copy.relabeled(label);
        self
    }

    /// Whether this copy keeps its packs in a storage class that cannot serve reads at
    /// once (`storage_class=GLACIER|DEEP_ARCHIVE` or `cold=true` in its location):
    /// commands that only check do not read pack contents from it.
    pub fn is_cold(&self) -> bool {
        self.copy.cold
    }

    /// What a command that checks says when it leaves pack contents unread on a cold
    /// copy (one line); `then` is the command that reads them after a warm-up.
    pub fn cold_note(&self, then: &str) -> String {
        format!(
            "{} keeps its packs in a cold storage class: their contents (trees and file data) were not read; to check them, restore data/ to a warm class (aws s3api restore-object), then run `{then}` with cold=false added to the location",
            self.copy.label
        )
    }

    fn ctx(&self, path: &str) -> String {
        format!("{}/{}", self.location.trim_end_matches('/'), path)
    }

    fn wrap(&self, path: &str, e: storage::Error) -> anyhow::Error {
        match e {
            storage::Error::Storage(e) if e.kind() == ErrorKind::NotFound => {
                anyhow::Error::new(NotFound {
                    path: self.ctx(path),
                })
            }
            storage::Error::Storage(e) => anyhow::Error::new(self.remote_error(path, &e)),
            storage::Error::Refused(r) => anyhow::Error::new(r).context(self.copy.label.clone()),
        }
    }

    /// The class of a failure at `path`. An S3 "access denied" without the code that
    /// tells a refused credential from a refused operation (a HEAD request's answer has
    /// no body) is asked once more, as a listing, whose answer has it.
    fn remote_error(&self, path: &str, e: &opendal::Error) -> RemoteError {
        let r = RemoteError::new(&self.copy, path, e);
        if self.copy.service() != Service::S3 || !super::remote::needs_code(e) {
            return r;
        }
        match self.list_root_error() {
            Some(p) => match super::remote::classify(&p) {
                RemoteFailure::Other => r,
                kind => RemoteError::of_kind(&self.copy, path, kind, &p).told_apart(e),
            },
            None => r,
        }
    }

    /// Whether a copy where the config is absent is missing its bucket or container
    /// rather than a repository: an object store answers a read of a missing object in a
    /// missing bucket as "not found", a listing with the reason.
    pub fn why_absent(&self) -> Option<anyhow::Error> {
        if !self.remote {
            return None;
        }
        self.list_root_error()
            .filter(|p| p.kind() != ErrorKind::NotFound)
            .map(|p| anyhow::Error::new(RemoteError::new(&self.copy, "", &p)))
    }

    /// The error of listing the first entry of the root, if any: a request whose error
    /// answer says why (a bucket that does not exist, a credential refused).
    fn list_root_error(&self) -> Option<opendal::Error> {
        match self.storage.probe() {
            Err(storage::Error::Storage(e)) => Some(e),
            _ => None,
        }
    }

    /// Reads a whole object (from a mirror when this backend fails).
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.first_ok(|b| b.read_here(path))
    }

    /// Reads an object whole, again when its bytes fail their check (see `intact`);
    /// bytes that never pass are returned for the caller to judge and report.
    fn read_here(&self, path: &str) -> Result<Vec<u8>> {
        let mut bytes = self.read_once(path)?;
        for _ in 1..READS {
            if intact(path, &bytes) {
                break;
            }
            log::info!("{}: bytes fail their check, reading again", self.ctx(path));
            bytes = self.read_once(path)?;
        }
        Ok(bytes)
    }

    fn read_once(&self, path: &str) -> Result<Vec<u8>> {
        log::trace!("read {}", self.ctx(path));
        self.storage.read(path).map_err(|e| self.wrap(path, e))
    }

    /// Reads `len` bytes at `offset` (from a mirror when this backend fails).
    pub fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.first_ok(|b| b.read_range_here(path, offset, len))
    }

    /// Reads a range; one that comes back short is read again, up to READS times.
    fn read_range_here(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = self.read_range_once(path, offset, len)?;
        for _ in 1..READS {
            if buf.len() as u64 == len {
                return Ok(buf);
            }
            log::info!("{}: short read, reading again", self.ctx(path));
            buf = self.read_range_once(path, offset, len)?;
        }
        if buf.len() as u64 != len {
            return Err(ShortRead {
                path: self.ctx(path),
                got: buf.len(),
                len,
                offset,
            }
            .into());
        }
        Ok(buf)
    }

    fn read_range_once(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        log::trace!("read {} ({len} bytes at {offset})", self.ctx(path));
        self.storage
            .read_range(path, offset, len)
            .map_err(|e| self.wrap(path, e))
    }

    /// Writes a whole object; on a local disk it appears atomically (temp file, fsync,
    /// rename), so a kill never leaves half an object under its final name. Its
    /// temporary name is known to `cleanup` while the write runs.
    ///
    /// Storage that refuses the rename (create-only: see `create_only`) gets this and
    /// every later object under its final name directly; the temporary object it could
    /// not remove is left for maintenance.
    pub fn write(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        log::debug!("write {} ({} bytes)", self.ctx(path), bytes.len());
        if cleanup::stopping() {
            return Err(anyhow::Error::new(Interrupted).context(self.ctx(path)));
        }
        let bytes = bytes::Bytes::from(bytes);
        if self.create_only.load(Ordering::Relaxed) {
            return self.write_direct(path, bytes);
        }
        let staged = if self.atomic_writes {
            self.write_atomic(path, bytes.clone())
        } else {
            self.write_via_tmp(path, bytes.clone())
        };
        match staged {
            Ok(()) => Ok(()),
            Err(Staged::Failed(e)) => Err(e),
            Err(Staged::RenameRefused { error, tmp_left }) => {
                log::info!(
                    "{}: the storage refuses to move objects into place ({}); writing them under their names directly (create-only storage)",
                    self.copy.label,
                    crate::error::one_line(&error)
                );
                self.create_only.store(true, Ordering::Relaxed);
                if tmp_left {
                    cleanup::left_for_maintenance(self, "temporary object", 1);
                }
                self.write_direct(path, bytes)
            }
        }
    }

    /// A local write: the storage library writes a temporary file in tmp/ and renames it.
    /// A refused write that left its temporary file behind was refused its rename.
    fn write_atomic(&self, path: &str, bytes: bytes::Bytes) -> Result<(), Staged> {
        // The storage library names a local temporary file after the object.
        let prefix = format!("{}.", path.rsplit('/').next().unwrap_or(path));
        if !self.remote {
            cleanup::track_tmp_prefix(self, &prefix);
        }
        let r = self.storage.write(path, bytes);
        if !self.remote {
            cleanup::untrack_tmp_prefix(self, &prefix);
        }
        let Err(e) = r else {
            return Ok(());
        };
        let refused = e.is_refused();
        let error = self.wrap(path, e);
        if self.remote || !refused {
            return Err(Staged::Failed(error));
        }
        let staged: Vec<String> = self
            .list_files("tmp/")
            .unwrap_or_default()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with(&prefix)))
            .collect();
        if staged.is_empty() {
            return Err(Staged::Failed(error));
        }
        let tmp_left = staged.iter().any(|p| self.beneath.delete(p).is_err());
        Err(Staged::RenameRefused { error, tmp_left })
    }

    /// Storage that shows a write before it is whole gets it under a temporary name
    /// first; one that fails is removed rather than left for a later sweep.
    fn write_via_tmp(&self, path: &str, bytes: bytes::Bytes) -> Result<(), Staged> {
        let tmp = format!("tmp/{}.tmp", Id::random().to_hex());
        cleanup::track(self, &tmp);
        let r = match self.beneath.write(&tmp, bytes) {
            Err(e) => Err(Staged::Failed(self.wrap(&tmp, e))),
            Ok(()) => self.storage.rename(&tmp, path).map_err(|e| {
                let refused = e.is_refused();
                let error = self.wrap(path, e);
                if !refused {
                    return Staged::Failed(error);
                }
                let tmp_left = self.beneath.delete(&tmp).is_err();
                Staged::RenameRefused { error, tmp_left }
            }),
        };
        if matches!(r, Err(Staged::Failed(_))) {
            let _ = self.beneath.delete(&tmp);
        }
        cleanup::untrack(self, &tmp);
        r
    }

    /// Writes under the final name with no temporary name, refusing to replace anything
    /// (spec §17, create-only storage). An object already there with exactly these bytes
    /// counts as written: a retried request whose first try landed, or the same object
    /// written twice. A different one (left short by a killed writer) is refused, never
    /// replaced: hash-named objects that fail their check are what readers skip.
    fn write_direct(&self, path: &str, bytes: bytes::Bytes) -> Result<()> {
        let Err(e) = self.storage.write_new(path, bytes.clone()) else {
            return Ok(());
        };
        match self.storage.exists(path) {
            Ok(true) => {
                if self.storage.read(path).is_ok_and(|b| b == bytes) {
                    return Ok(());
                }
                Err(anyhow::Error::new(Occupied {
                    path: self.ctx(path),
                })
                .context(self.copy.label.clone()))
            }
            _ => Err(self.wrap(path, e)),
        }
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        log::debug!("delete {}", self.ctx(path));
        self.storage.delete(path).map_err(|e| self.wrap(path, e))
    }

    /// `delete` for `cleanup`: no crash hook, since it runs while the process ends.
    pub(crate) fn delete_now(&self, path: &str) -> Result<()> {
        self.beneath.delete(path).map_err(|e| self.wrap(path, e))
    }

    pub fn size(&self, path: &str) -> Result<u64> {
        self.first_ok(|b| {
            b.storage
                .stat(path)
                .map(|m| m.size)
                .map_err(|e| b.wrap(path, e))
        })
    }

    pub fn exists(&self, path: &str) -> Result<bool> {
        self.storage.exists(path).map_err(|e| self.wrap(path, e))
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

    /// Like `list_sized`, with the time the storage says each object was last written
    /// (None where it does not say).
    pub fn list_timed(&self, kind: FileKind) -> Result<Vec<(Id, u64, Option<jiff::Timestamp>)>> {
        Ok(self
            .list_entries(kind.dir())?
            .into_iter()
            .filter_map(|(path, size, time)| {
                let name = path.rsplit('/').next().unwrap_or(&path);
                Id::from_hex(name).map(|id| (id, size, time))
            })
            .collect())
    }

    /// When the storage says `path` was last written; None when it does not say.
    pub fn modified(&self, path: &str) -> Result<Option<jiff::Timestamp>> {
        let meta = self.storage.stat(path).map_err(|e| self.wrap(path, e))?;
        Ok(meta.modified)
    }

    /// Every file below `dir` ("" for the whole repository), recursively: its path
    /// relative to the root, and its size.
    pub fn list_files(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list_entries(dir)?
            .into_iter()
            .map(|(path, size, _)| (path, size))
            .collect())
    }

    /// Like `list_files`, with the time the storage says each was last written.
    pub fn list_files_timed(
        &self,
        dir: &str,
    ) -> Result<Vec<(String, u64, Option<jiff::Timestamp>)>> {
        self.list_entries(dir)
    }

    fn list_entries(&self, dir: &str) -> Result<Vec<(String, u64, Option<jiff::Timestamp>)>> {
        let entries = self.storage.list(dir).map_err(|e| self.wrap(dir, e))?;
        Ok(entries
            .into_iter()
            .map(|e| (e.path, e.meta.size, e.meta.modified))
            .collect())
    }

    /// Makes the layout's directories. Not data/00 to data/ff: every listing of the
    /// packs would then read 256 directories, most of them empty; storage that lets
    /// the backing-up host only create files gets them when it is handed over
    /// (README, "Create-only storage").
    pub fn create_layout(&self) -> Result<()> {
        for d in LAYOUT_DIRS {
            let d = format!("{d}/");
            self.storage.create_dir(&d).map_err(|e| self.wrap(&d, e))?;
        }
        Ok(())
    }
}

/// The directories of a repository (spec §1), as `init` creates them.
pub const LAYOUT_DIRS: [&str; 14] = [
    "keys",
    "data",
    "index",
    "manifests",
    "mirrors",
    "forgotten",
    "exports",
    "format",
    "marks",
    "revivals",
    "deletions",
    "snapshots",
    "locks",
    "tmp",
];

/// An error of opening `location` (the storage library refusing its settings) as the
/// copy's own one-line error; other errors (a location that does not parse) as they are.
fn open_error(location: &str, mirror: Option<&str>, e: anyhow::Error) -> anyhow::Error {
    let Some(oe) = e.chain().find_map(|c| c.downcast_ref::<opendal::Error>()) else {
        return e;
    };
    let copy = CopyInfo::new(location, mirror, false);
    let kind = match super::remote::classify(oe) {
        RemoteFailure::Other => RemoteFailure::Location,
        k => k,
    };
    anyhow::Error::new(RemoteError::of_kind(&copy, "", kind, oe))
}

pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<NotFound>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend over `storage`, a local directory's stack as a test builds it.
    #[cfg(feature = "test-hooks")]
    fn on(storage: Arc<dyn Storage>) -> Backend {
        Backend {
            beneath: storage.clone(),
            storage,
            location: String::new(),
            copy: CopyInfo::new("", None, false),
            remote: false,
            atomic_writes: true,
            create_only: Arc::new(AtomicBool::new(false)),
            connections: 2,
            fallbacks: Vec::new(),
        }
    }

    #[cfg(feature = "test-hooks")]
    fn backend(dir: &std::path::Path, faults: &str) -> Backend {
        use crate::repo::storage::faults::{Faults, Plan};
        let store = OpendalStore::local_for_tests(dir);
        on(Arc::new(Faults::new(store, Plan::parse(faults).unwrap())))
    }

    #[test]
    fn decorators_go_around_an_opened_backend() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().to_str().unwrap();
        let b = Backend::open(location).unwrap();
        b.create_layout().unwrap();
        b.write("snapshots/old", b"old".to_vec()).unwrap();

        let append_only = Backend::open(location).unwrap().append_only();
        let e = append_only.delete("snapshots/old").unwrap_err();
        assert!(e.chain().any(|c| c.is::<storage::Refused>()), "{e:#}");
        assert!(is_storage_error(&e));
        append_only.write("snapshots/new", b"new".to_vec()).unwrap();
        append_only.delete("snapshots/new").unwrap();

        let (dry, skipped) = Backend::open(location).unwrap().dry_run();
        dry.write("snapshots/dry", b"12".to_vec()).unwrap();
        dry.delete("snapshots/old").unwrap();
        assert_eq!(
            (skipped.skipped().writes, skipped.skipped().deletes),
            (1, 1)
        );
        assert_eq!(b.list_files("snapshots/").unwrap().len(), 1);
        assert_eq!(b.read("snapshots/old").unwrap(), b"old");
    }

    #[test]
    fn intact_checks_each_kind_by_its_name_or_checksum() {
        let bytes = b"some object".to_vec();
        let id = Id::of_stored(&bytes);
        for kind in [FileKind::Snapshot, FileKind::Data, FileKind::Key] {
            assert!(intact(&kind.path(&id), &bytes));
            assert!(!intact(&kind.path(&id), &bytes[1..]));
        }
        assert!(!intact(CONFIG_PATH, &bytes), "no checksum");
        assert!(!intact(&FileKind::Lock.path(&id), &bytes), "no checksum");
        assert!(!intact(&FileKind::Manifest.path(&id), &bytes));
        assert!(
            intact("README.txt", b"anything"),
            "not an object: nothing to check"
        );
        assert!(intact("data/zz/not-an-id", b"anything"));
    }

    /// One test, since the fault counters are shared by the whole process.
    #[cfg(feature = "test-hooks")]
    #[test]
    fn bad_bytes_are_read_again_before_they_are_believed() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let path = FileKind::Snapshot.path(&Id::of_stored(&bytes));
        backend(dir.path(), "").write(&path, bytes.clone()).unwrap();

        // Every read damaged: READS reads, then the bytes as they came, for the caller
        // to judge.
        let before = storage::faults::damaged_reads();
        let got = backend(dir.path(), "flip=1").read(&path).unwrap();
        assert_ne!(got, bytes);
        assert_eq!(storage::faults::damaged_reads() - before, READS as u64);

        // A range that keeps coming back short fails as a short read, after READS reads.
        let before = storage::faults::damaged_reads();
        let short = backend(dir.path(), "truncate=1").read_range(&path, 10, 100);
        let e = short.unwrap_err();
        assert!(e.is::<ShortRead>(), "{e}");
        assert_eq!(storage::faults::damaged_reads() - before, READS as u64);

        // Bytes that fail the caller's verification are read again; a storage error is
        // not (the retry layer has had its go).
        let b = backend(dir.path(), "");
        let tries = std::cell::Cell::new(0);
        let r: Result<()> = b.read_with(|b| {
            tries.set(tries.get() + 1);
            b.read_range(&path, 0, 10)?;
            anyhow::bail!("does not verify")
        });
        assert!(r.is_err());
        assert_eq!(tries.get(), READS);
        tries.set(0);
        let r: Result<Vec<u8>> = b.read_with(|b| {
            tries.set(tries.get() + 1);
            b.read_range("snapshots/missing", 0, 10)
        });
        assert!(is_not_found(&r.unwrap_err()));
        assert_eq!(tries.get(), 1);

        // Injected errors are temporary: with a retry layer above, every read gets through.
        let faulty = storage::faults::Faults::new(
            OpendalStore::local_for_tests(dir.path()),
            storage::faults::Plan::parse("seed=3,error=0.5").unwrap(),
        );
        let retried = Retry::new(
            faulty,
            20,
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(2),
        );
        let b = on(Arc::new(retried));
        for _ in 0..20 {
            assert_eq!(b.read(&path).unwrap(), bytes);
        }
    }
}
