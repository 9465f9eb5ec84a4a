//! The library's front door: a repository session whose type says how far it has come,
//! so that the order every operation depends on cannot be got wrong.
//!
//! ```text
//! Session::open ─► Session<Open> ─ lock / without_lock ─► Session<Locked>
//!                                        ├─ index ─────────────► Session<Indexed>    (read)
//!                                        └─ index_for_backup ──► Session<ForBackup>  (write)
//! ```
//!
//! - The index is loaded only once a lock is held (or the caller chose to go without
//!   one): it may change while a process waits for its lock.
//! - A backup starts only after the packs an interrupted run left behind are indexed,
//!   so a new snapshot never depends on a pack that no index file lists.
//! - Whatever cannot be taken back (publishing a snapshot, deleting) is done here, after
//!   checking that the lock is still held.
//!
//! Warnings go to the [`Reporter`] given at open; errors are [`crate::error::Error`].
//!
//! The order is the compiler's to enforce: an index cannot be loaded before a lock is
//! taken (or explicitly gone without), nor a backup run on a session indexed for reading.
//!
//! ```compile_fail,E0599
//! fn index_before_lock(s: vault::session::Session<vault::session::state::Open>) {
//!     let _ = s.index();
//! }
//! ```
//!
//! ```compile_fail,E0599
//! use vault::session::{Session, state::Indexed};
//! fn backup_on_a_reading_session(mut s: Session<Indexed>) {
//!     let _ = s.backup(&Default::default(), Default::default(), std::sync::Arc::new(|_| {}));
//! }
//! ```

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{ErrorKind, Result, VaultError};
use crate::format::Id;
use crate::format::snapshot::Snapshot;
use crate::ops::{backup, copies, forget, prune, repair, restore, rewrite, rotate, select, tag};
use crate::repo::lock::{self, LockGuard, LockKind};
use crate::repo::repository::{InitOptions, Secret};
use crate::repo::{Backend, FileKind, Repository};
use crate::report::{Report, Reporter};

/// The states of a [`Session`].
pub mod state {
    /// Config and keys read: snapshots, keys and locks can be listed.
    pub struct Open;
    /// A lock is held, or the caller chose to go without one.
    pub struct Locked;
    /// The index is loaded for reading: ls, restore, dump, check.
    pub struct Indexed;
    /// The index is loaded for writing, and left-over packs are indexed: backup.
    pub struct ForBackup;
}
use state::{ForBackup, Indexed, Locked, Open};

/// Whether and how a session locks the repository.
#[derive(Clone, Copy, Debug)]
pub enum Locking {
    /// Take the lock; a conflicting live lock fails at once, or, with `wait`, is waited
    /// for that long (tried again every two seconds).
    Take { wait: Option<Duration> },
    /// Go without a lock (`--no-lock`): for callers who know that nothing else uses the
    /// repository, such as a read-only copy.
    Skip,
}

/// An open repository, at stage `S`.
pub struct Session<S> {
    repo: Repository,
    lock: Option<LockGuard>,
    report: Report,
    stage: PhantomData<S>,
}

impl<S> Session<S> {
    fn to<T>(self) -> Session<T> {
        Session {
            repo: self.repo,
            lock: self.lock,
            report: self.report,
            stage: PhantomData,
        }
    }

    /// The repository, for reading at any stage.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    pub fn reporter(&self) -> &dyn Reporter {
        &*self.report
    }

    /// The kind of lock held, if any.
    pub fn lock_kind(&self) -> Option<LockKind> {
        self.lock.as_ref().map(LockGuard::kind)
    }

    /// Fails ([`ErrorKind::Locked`]) when the lock went unrefreshed so long that another
    /// process may have judged it stale: called before each step that cannot be taken
    /// back.
    pub fn ensure_held(&self) -> Result<()> {
        Ok(self.lock.as_ref().map_or(Ok(()), LockGuard::ensure_held)?)
    }

    /// The snapshots `filter` selects, oldest first; unreadable ones are reported and
    /// left out.
    pub fn snapshots(&self, filter: &select::Filter) -> Result<Vec<(Id, Snapshot)>> {
        let warn = |m: String| self.report.warn(&m);
        Ok(select::list(&self.repo, filter, &warn)?)
    }

    /// Every copy's state and whether they are enough (see [`copies::status`]).
    pub fn status(&mut self, export_max_age: jiff::Span) -> Result<copies::Status> {
        let report = self.report.clone();
        Ok(copies::status(&mut self.repo, export_max_age, &*report)?)
    }

    /// Gives up the lock (it is also given up when the session is dropped).
    pub fn release(mut self) -> Session<Open> {
        self.lock = None;
        self.to()
    }

    /// Reads fall back to the mirrors this host trusts, per object; mirrors that do not
    /// open are reported (unless `quiet`) and left out.
    pub fn with_mirrors(mut self, quiet: bool) -> Self {
        copies::attach_mirrors(&mut self.repo, quiet, &*self.report);
        self
    }

    /// Forgets `ids`, and before them every snapshot an interrupted `vault tag` left
    /// hidden behind one of them (else it would come back into view): the forget record
    /// first (it is what lets sync remove them from the mirrors too), then each snapshot
    /// file, the hidden ones first, so that whatever a kill leaves is hidden or gone.
    fn forget_ids(&self, ids: &[Id]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.ensure_held()?;
        let ids = self.with_superseded(ids)?;
        self.repo.save_forget_record(&ids)?;
        for id in &ids {
            self.repo.backend.delete(&FileKind::Snapshot.path(id))?;
        }
        Ok(())
    }

    /// `ids` after the snapshots hidden behind them, deepest first.
    fn with_superseded(&self, ids: &[Id]) -> Result<Vec<Id>> {
        let all = self.repo.all_snapshots()?;
        let hidden = crate::format::snapshot::superseded(
            all.iter()
                .filter_map(|(id, s)| s.as_ref().ok().map(|s| (id, s))),
        );
        let mut taken: std::collections::HashSet<Id> = ids.iter().copied().collect();
        let mut extra = Vec::new();
        loop {
            let more: Vec<Id> = hidden
                .iter()
                .filter(|(old, new)| taken.contains(*new) && !taken.contains(*old))
                .map(|(old, _)| *old)
                .collect();
            if more.is_empty() {
                break;
            }
            taken.extend(more.iter().copied());
            extra.extend(more);
        }
        extra.reverse();
        extra.extend_from_slice(ids);
        Ok(extra)
    }

    fn warn_damaged_index(&self) {
        for (id, why) in &self.repo.damaged_index {
            self.report.warn(&format!(
                "index {} skipped ({why}); blobs it lists count as missing until `vault repair index`",
                id.short()
            ));
        }
    }
}

/// What a backup-role key may lock the repository for: adding snapshots, copying them
/// to mirrors, and browsing its own host's trees.
const BACKUP_ROLE_COMMANDS: &[&str] = &["backup", "copy", "sync", "ls", "diff", "find", "versions"];

impl Session<Open> {
    /// Opens the repository at `location`. `secret` is asked for only once a repository
    /// is known to be there, so that a wrong location fails before any prompt.
    pub fn open(
        location: &str,
        secret: impl FnOnce() -> anyhow::Result<Secret>,
        report: Report,
    ) -> Result<Session<Open>> {
        let backend = Backend::open(location)?;
        if !backend.exists(crate::repo::backend::CONFIG_PATH)? {
            return Err(match backend.why_absent() {
                Some(e) => e.into(),
                None => VaultError::NoRepository(location.to_string()).into(),
            });
        }
        let secret = secret()?;
        Ok(Self::new(Repository::open(backend, &secret)?, report))
    }

    /// Creates a repository at `location`, its first key opened by the password
    /// `password` gives; fails ([`ErrorKind::AlreadyExists`]) if one is there, before
    /// asking for the password.
    pub fn init<P: AsRef<[u8]>>(
        location: &str,
        password: impl FnOnce() -> anyhow::Result<P>,
        opts: &InitOptions,
        report: Report,
    ) -> Result<Session<Open>> {
        let backend = Backend::open(location)?;
        if backend.exists(crate::repo::backend::CONFIG_PATH)? {
            return Err(VaultError::AlreadyExists(location.to_string()).into());
        }
        let password = password()?;
        let repo = Repository::init(backend, password.as_ref(), opts)?;
        Ok(Self::new(repo, report))
    }

    fn new(repo: Repository, report: Report) -> Session<Open> {
        Session {
            repo,
            lock: None,
            report,
            stage: PhantomData,
        }
    }

    /// Takes a lock of `kind` for `command`, as `how` says; a conflict fails with
    /// [`ErrorKind::Locked`]. A lock watched unchanged for the stale threshold is passed.
    pub fn lock(self, kind: LockKind, command: &str, how: Locking) -> Result<Session<Locked>> {
        // A backup-role key adds snapshots and copies them; it reads no contents and
        // removes nothing (§20).
        if !BACKUP_ROLE_COMMANDS.contains(&command) {
            self.repo.require_full(&format!("vault {command}"))?;
        }
        let wait = match how {
            Locking::Skip => return Ok(self.without_lock()),
            Locking::Take { wait } => wait,
        };
        let deadline = wait.map(|w| Instant::now() + w);
        // Kept across retries: what was watched unchanged long enough may be passed.
        let mut watch = lock::Watch::new();
        loop {
            match lock::acquire_watching(&self.repo, kind, command, &mut watch, self.report.clone())
            {
                Ok(guard) => {
                    let mut s = self.to::<Locked>();
                    s.lock = Some(guard);
                    return Ok(s);
                }
                Err(e)
                    if ErrorKind::of(&e) == ErrorKind::Locked
                        && deadline.is_some_and(|d| Instant::now() < d) =>
                {
                    // Our own lock is gone again (acquire removes it on failure).
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Goes on without a lock: for dry runs, which write nothing.
    pub fn without_lock(self) -> Session<Locked> {
        self.to()
    }

    /// Reads what is stored, never the local cache: for check, verify and repair, which
    /// judge the stored objects.
    pub fn uncached(mut self) -> Self {
        self.repo.cache = None;
        self
    }

    /// Removes locks as `mode` says (dead, stale, or all); `waiting` hears about each
    /// lock it watches for staleness.
    pub fn unlock(
        &self,
        mode: lock::UnlockMode,
        waiting: &dyn Fn(String),
    ) -> Result<lock::Unlocked> {
        Ok(lock::unlock(&self.repo, mode, waiting)?)
    }

    /// Prune: takes the lock prune needs (two-phase prune runs beside backups; before
    /// format 3 it excludes everything), then reclaims what no snapshot uses.
    pub fn prune(
        self,
        opts: &prune::PruneOptions,
        counters: &prune::Counters,
        how: Locking,
    ) -> Result<prune::PruneStats> {
        let two_phase = self.repo.two_phase();
        let kind = if two_phase {
            LockKind::Prune
        } else {
            LockKind::Exclusive
        };
        let mut s = self.lock(kind, "prune", how)?;
        if two_phase {
            prune::refuse_older_vaults(&s.repo)?;
        }
        // Read after the lock is held, and before anything else, so that a damaged or
        // forged index refuses prune at once; two-phase prune reads it again itself,
        // after listing the snapshots.
        s.repo.load_index()?;
        let held = || s.lock.as_ref().map_or(Ok(()), LockGuard::ensure_held);
        Ok(prune::prune(&mut s.repo, opts, counters, &held)?)
    }
}

impl Session<Locked> {
    /// Changes the tags of `snaps` as `change` says (see [`tag::retag`]): every new
    /// snapshot is written, then the old ones are forgotten in one record.
    pub fn tag(&self, snaps: &[(Id, Snapshot)], change: &tag::TagChange) -> Result<tag::Tagged> {
        self.ensure_held()?;
        let done = tag::retag(&self.repo, snaps, change)?;
        let mut old: Vec<Id> = done.changed.iter().map(|c| c.old).collect();
        // What an interrupted run left hidden behind a snapshot that needs no change now
        // is forgotten too, so that running tag again finishes the job.
        let unchanged: Vec<Id> = snaps
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !old.contains(id))
            .collect();
        old.extend(
            self.with_superseded(&unchanged)?
                .into_iter()
                .filter(|id| !unchanged.contains(id)),
        );
        self.forget_ids(&old)?;
        Ok(done)
    }

    /// Loads the index for reading; damaged index files are reported and skipped.
    pub fn index(mut self) -> Result<Session<Indexed>> {
        self.repo.load_index()?;
        self.warn_damaged_index();
        Ok(self.to())
    }

    /// Loads the index with trees only, for commands that walk snapshots and read no
    /// file's data (ls, find, diff, versions), or that learn what they will read before
    /// loading its places ([`Session::keep_for_restore`]).
    pub fn index_trees(mut self) -> Result<Session<Indexed>> {
        self.repo.load_index_trees()?;
        self.warn_damaged_index();
        Ok(self.to())
    }

    /// Loads the index for check and verify, which report damaged index files as
    /// findings of their own rather than as warnings.
    pub fn index_to_check(mut self) -> Result<Session<Indexed>> {
        self.repo.load_index()?;
        Ok(self.to())
    }

    /// `repair index`: rebuilds the index from the packs' headers (the old index, read
    /// now that the lock is held, stands in for unreadable headers). Needs the
    /// exclusive lock.
    pub fn repair_index(mut self) -> Result<repair::RepairIndexResult> {
        self.repo.load_index()?;
        let held = || self.lock.as_ref().map_or(Ok(()), LockGuard::ensure_held);
        Ok(repair::repair_index(&self.repo, &held)?)
    }

    /// Loads the index for a backup and, unless `dry_run`, indexes the packs an
    /// interrupted run left behind, whose blobs the backup then reuses.
    pub fn index_for_backup(mut self, dry_run: bool) -> Result<Session<ForBackup>> {
        self.repo.load_index_for_backup()?;
        self.warn_damaged_index();
        if !dry_run {
            let n = self.repo.adopt_unindexed()?;
            if n > 0 {
                self.report.warn(&format!(
                    "indexed {n} pack(s) left without an index (interrupted backup or damaged index)"
                ));
            }
        }
        Ok(self.to())
    }

    /// Raises the repository to the newest format this vault writes; the format it had,
    /// or `None` when it was already there. Needs the exclusive lock.
    pub fn upgrade(&mut self) -> Result<Option<u32>> {
        Ok(self.repo.upgrade()?)
    }

    /// `key rotate`: a new master key, and everything the repository holds sealed
    /// again under it (see [`rotate::rotate`]); or the end of a rotation a kill
    /// interrupted, when the key in use is the rotation's.
    pub fn rotate_key(
        &mut self,
        password: &[u8],
        label: &str,
        cost: crate::format::keyfile::KdfCost,
        progress: &rotate::Counters,
    ) -> Result<rotate::Rotated> {
        let lock = self.lock.as_ref();
        let rekey = |k: &crate::format::crypto::Keys| lock.map_or(Ok(()), |g| g.rekey(k));
        let held = || lock.map_or(Ok(()), LockGuard::ensure_held);
        let hooks = rotate::LockHooks {
            rekey: &rekey,
            held: &held,
            progress,
        };
        Ok(rotate::rotate(
            &mut self.repo,
            password,
            label,
            cost,
            &hooks,
        )?)
    }

    /// `repair --from`: copies back to this repository what it lacks or holds damaged,
    /// from `source` (see [`copies::repair_from`]).
    pub fn repair_from(
        &mut self,
        source: &copies::RepairSource,
        secret: &dyn Fn(&str) -> anyhow::Result<Secret>,
    ) -> Result<crate::ops::sync::CopyReport> {
        let location = self.repo.location().to_string();
        let report = self.report.clone();
        Ok(copies::repair_from(
            &location,
            Some(&mut self.repo),
            source,
            secret,
            &*report,
        )?)
    }
}

impl Session<ForBackup> {
    /// Backs up as `opts` says. Before it confirms and publishes, the lock is renewed:
    /// a backup may outlive its lock's refreshes (a suspended laptop), and stops if
    /// another process now excludes it.
    pub fn backup(
        &mut self,
        opts: &backup::BackupOptions,
        counters: Arc<backup::Counters>,
        warn: backup::Warn,
    ) -> Result<backup::BackupResult> {
        let lock = &self.lock;
        let held = || lock.as_ref().map_or(Ok(()), LockGuard::renew);
        Ok(backup::backup(&mut self.repo, opts, counters, warn, &held)?)
    }

    /// Copies `snaps` of the repository `src` (another key) into this one, each published
    /// once whole (see [`backup::copy::copy`]); the lock is renewed before each is.
    pub fn copy(
        &mut self,
        src: &Session<Indexed>,
        snaps: &[(Id, Snapshot)],
        dry_run: bool,
        counters: Arc<backup::Counters>,
        warn: backup::Warn,
    ) -> Result<backup::copy::CopyResult> {
        let lock = &self.lock;
        let held = || lock.as_ref().map_or(Ok(()), LockGuard::renew);
        let progress = (counters, warn);
        Ok(backup::copy::copy(
            &mut self.repo,
            &src.repo,
            snaps,
            dry_run,
            progress,
            &held,
        )?)
    }

    /// Brings snapshots this repository forgot back from trusted mirror `from` (see
    /// [`copies::unforget`]); the lock is renewed before each is published.
    pub fn unforget(
        &mut self,
        from: &str,
        wanted: &[String],
        dry_run: bool,
    ) -> Result<copies::Unforgotten> {
        let lock = &self.lock;
        let held = || lock.as_ref().map_or(Ok(()), LockGuard::renew);
        Ok(copies::unforget(
            &mut self.repo,
            from,
            wanted,
            dry_run,
            &held,
        )?)
    }
}

impl Session<Indexed> {
    /// Rewrites `snaps` without what `opts` excludes (see [`rewrite::rewrite`]); with
    /// `opts.forget`, then forgets the originals in one record.
    pub fn rewrite(
        &self,
        snaps: &[(Id, Snapshot)],
        opts: &rewrite::RewriteOptions,
    ) -> Result<rewrite::RewriteResult> {
        // Reads every file's place in the trees: a full key's, even for a dry run.
        self.repo.require_full("vault rewrite")?;
        if !opts.dry_run {
            self.ensure_held()?;
        }
        let done = rewrite::rewrite(&self.repo, snaps, opts)?;
        if opts.forget && !opts.dry_run {
            let old: Vec<Id> = done.rewritten.iter().map(|r| r.original).collect();
            self.forget_ids(&old)?;
        }
        Ok(done)
    }

    /// Loads the index again, for a long-lived reader (a mount) that must see what
    /// backups added since it opened.
    pub fn reload_index(&mut self) -> Result<()> {
        self.repo.load_index()?;
        Ok(())
    }

    /// Forgets `ids` (see [`Session::forget_ids`]).
    pub fn forget(&self, ids: &[Id]) -> Result<()> {
        self.forget_ids(ids)
    }

    /// The snapshots a retention policy removes, group by group with the reasons.
    pub fn plan_forget(
        &self,
        policy: &forget::Policy,
        filter: &select::Filter,
        group_by: forget::GroupBy,
    ) -> Result<Vec<forget::Group>> {
        let snaps = self.snapshots(filter)?;
        Ok(forget::apply(
            policy,
            &snaps,
            group_by,
            &jiff::tz::TimeZone::system(),
        ))
    }

    /// Loads the places of the data blobs a restore of `root` with `opts` reads, and
    /// of no other: memory that follows the restore, not the repository.
    pub fn keep_for_restore(&mut self, root: &Id, opts: &restore::RestoreOptions) -> Result<()> {
        let wanted = restore::wanted_blobs(&self.repo, root, opts).unwrap_or_default();
        self.repo.load_index_keeping(wanted)?;
        Ok(())
    }

    /// Loads the places of the data blobs a dump of `path` in `root` reads, and of no
    /// other (see [`Session::keep_for_restore`]).
    pub fn keep_for_dump(&mut self, root: &Id, path: &std::path::Path) -> Result<()> {
        let wanted = crate::ops::dump::wanted_blobs(&self.repo, root, path)?;
        self.repo.load_index_keeping(wanted)?;
        Ok(())
    }

    /// Restores the tree `root` as `opts` says.
    pub fn restore(
        &self,
        root: &Id,
        opts: &restore::RestoreOptions,
        counters: Arc<restore::Counters>,
    ) -> Result<restore::RestoreResult> {
        Ok(restore::restore(&self.repo, root, opts, counters)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::format::keyfile::KdfCost;
    use crate::report::Silent;

    const PASSWORD: &[u8] = b"a password for the tests";

    fn quick() -> InitOptions {
        InitOptions {
            kdf: KdfCost::FLOOR,
            ..InitOptions::new(128 << 10, 16 << 20, 3, "test".into(), 3).unwrap()
        }
    }

    fn open(loc: &str, password: &'static [u8]) -> Result<Session<Open>> {
        Session::open(
            loc,
            || Ok(Secret::Password(password.to_vec())),
            Arc::new(Silent),
        )
    }

    #[test]
    fn each_failure_at_the_front_door_has_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().join("repo").to_string_lossy().into_owned();
        let kind = |r: Result<Session<Open>>| r.err().map(|e| e.kind());

        assert_eq!(kind(open(&loc, PASSWORD)), Some(ErrorKind::NoRepository));
        Session::init(&loc, || Ok(PASSWORD), &quick(), Arc::new(Silent)).unwrap();
        let again = Session::init(&loc, || Ok(PASSWORD), &quick(), Arc::new(Silent));
        assert_eq!(kind(again), Some(ErrorKind::AlreadyExists));
        assert_eq!(kind(open(&loc, b"not it")), Some(ErrorKind::WrongPassword));

        // A lock held by another process (ErrorKind::Locked, exit 11) is tests/locks.rs's.
        let bad = InitOptions::new(10, 16 << 20, 3, "x".into(), 3).map_err(Error::from);
        assert_eq!(bad.err().map(|e| e.kind()), Some(ErrorKind::InvalidInput));
    }

    #[test]
    fn the_password_is_not_asked_for_where_there_is_no_repository() {
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().join("none").to_string_lossy().into_owned();
        let asked = std::cell::Cell::new(false);
        let r = Session::open(
            &loc,
            || {
                asked.set(true);
                Ok(Secret::Password(PASSWORD.to_vec()))
            },
            Arc::new(Silent),
        );
        assert!(r.is_err() && !asked.get());
    }
}
