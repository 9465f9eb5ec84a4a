//! Repository locks (spec §15). Backups and readers take shared locks, prune a prune
//! lock, repair index an exclusive one. A lock is a small sealed object in locks/; while
//! held, a new object with a higher `seq` replaces it every five minutes (create-only:
//! none is ever rewritten), and release deletes what the holder wrote. Where the storage
//! refuses the delete (create-only storage), release writes one more object, of kind
//! `released`, which readers skip; maintenance removes them all later.
//!
//! No clock of another machine is ever compared with ours: a lock is dead only when it
//! names this very machine, boot and PID namespace and its process is gone, and stale
//! only when this process has itself watched it unchanged for the stale threshold.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Result, anyhow};
use crossbeam_channel::{Sender, bounded};

use super::backend::{Backend, FileKind};
use super::repository::{Repository, hostname, now_rfc3339, username};
use crate::error::VaultError;
use crate::format::Id;
use crate::format::crypto::Keys;
use crate::format::lock::Lock;
pub use crate::format::lock::LockKind;
use crate::report::{Report, Reporter, Silent};

/// A lock this process watched unchanged for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// For tests only: shorten the stale threshold and the refresh interval (seconds,
/// fractions allowed).
pub const STALE_VAR: &str = "VAULT_LOCK_STALE_SECS";
pub const REFRESH_VAR: &str = "VAULT_LOCK_REFRESH_SECS";

fn secs_from_env(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .unwrap_or(default)
}

pub fn stale_after() -> Duration {
    secs_from_env(STALE_VAR, STALE_AFTER)
}

/// At most a third of the stale threshold, so that a holder gets two more tries after a
/// failed refresh before its own limit.
pub fn refresh_every() -> Duration {
    secs_from_env(REFRESH_VAR, REFRESH_EVERY).min(stale_after() / 3)
}

/// How long a holder goes on without a successful refresh: one refresh interval less
/// than the stale threshold, so it stops before anyone may judge its lock stale.
pub fn hold_limit() -> Duration {
    stale_after().saturating_sub(refresh_every())
}

/// CLOCK_BOOTTIME: never set back, and it runs while the machine is suspended, so a
/// suspended holder counts as not refreshed.
fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is handed.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        static START: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);
        return START.elapsed();
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// This process as locks name it.
struct Me {
    process: String,
    boot_id: String,
    pid_ns: String,
}

static ME: LazyLock<Me> = LazyLock::new(|| {
    let mut b = [0u8; 16];
    crate::format::crypto::fill_random(&mut b);
    Me {
        process: hex::encode(b),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        pid_ns: std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .and_then(|p| p.to_str().map(String::from))
            .unwrap_or_default(),
    }
});

/// Process-wide, so that a later lock of this process supersedes leftovers of an
/// earlier one whose release could not delete them.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Repositories this process holds a lock on: readers see one lock per process, so a
/// process holds at most one per repository.
static HELD: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// Dead only when the lock names this machine, boot and PID namespace, all known, and
/// no process has its pid: another container with the same host name, another boot or a
/// lock of an older vault never qualifies.
fn is_dead(l: &Lock) -> bool {
    let me = &*ME;
    l.process.is_some()
        && !me.boot_id.is_empty()
        && !me.pid_ns.is_empty()
        && !l.host.is_empty()
        && l.host == hostname()
        && l.boot_id == me.boot_id
        && l.pid_ns == me.pid_ns
        && !process_alive(l.pid)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Live,
    /// Its process is gone from this machine, boot and PID namespace.
    Dead,
    /// Cannot be read: counts as a live exclusive lock.
    Unreadable(String),
    /// Its newest object says the holder let go (storage that refused to delete it).
    Released,
}

/// One holder: its newest object, and every object of it still stored.
pub struct LockInfo {
    pub id: Id,
    pub objects: Vec<Id>,
    pub lock: Option<Lock>,
    pub status: Status,
}

/// What a watcher compares: any change means the holder is alive.
type Fingerprint = (Id, u64, String);

impl LockInfo {
    pub fn kind(&self) -> LockKind {
        self.lock.as_ref().map_or(LockKind::Exclusive, Lock::kind)
    }

    /// Written by a vault without process ids: whether it still runs cannot be told
    /// except by watching it.
    pub fn from_older_vault(&self) -> bool {
        self.lock.as_ref().is_some_and(|l| l.process.is_none())
    }

    pub fn is_dead(&self) -> bool {
        self.status == Status::Dead
    }

    pub fn is_released(&self) -> bool {
        self.status == Status::Released
    }

    fn is_ours(&self) -> bool {
        self.lock
            .as_ref()
            .is_some_and(|l| l.process.as_deref() == Some(ME.process.as_str()))
    }

    fn holder(&self) -> String {
        match self.lock.as_ref().and_then(|l| l.process.clone()) {
            Some(p) => p,
            None => format!("object {}", self.id.to_hex()),
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        match &self.lock {
            Some(l) => (self.id, l.seq, l.time.clone()),
            None => (self.id, 0, String::new()),
        }
    }

    pub fn describe(&self) -> String {
        let Some(l) = &self.lock else {
            return format!("lock {} (unreadable)", self.id.short());
        };
        if self.is_released() {
            return format!(
                "released lock {} of `{}` (pid {} on {} as {})",
                self.id.short(),
                l.command,
                l.pid,
                l.host,
                l.user
            );
        }
        let when = if self.from_older_vault() {
            format!("refreshed {}; written by an older vault", l.time)
        } else {
            format!("since {}, refresh {}", l.started, l.seq)
        };
        format!(
            "{} lock {} held by `{}` (pid {} on {} as {}, {when})",
            l.kind().name(),
            self.id.short(),
            l.command,
            l.pid,
            l.host,
            l.user
        )
    }
}

fn read_lock(backend: &Backend, keys: &Keys, id: Id) -> Result<Option<LockInfo>> {
    let info = |lock, status| LockInfo {
        id,
        objects: vec![id],
        lock,
        status,
    };
    Ok(Some(match backend.read(&FileKind::Lock.path(&id)) {
        Ok(b) => match Lock::open(keys, &b) {
            Ok(l) => {
                let status = if l.is_released() {
                    Status::Released
                } else if is_dead(&l) {
                    Status::Dead
                } else {
                    Status::Live
                };
                info(Some(l), status)
            }
            Err(e) => info(None, Status::Unreadable(e.to_string())),
        },
        // Released between list and read.
        Err(e) if super::backend::is_not_found(&e) => return Ok(None),
        // Whether a lock the storage would not hand over is live is unknown: neither
        // ignore it nor call it dead (which `unlock` would delete).
        Err(e) if super::backend::is_storage_error(&e) => {
            return Err(e.context(format!("reading lock {}", id.short())));
        }
        Err(e) => info(None, Status::Unreadable(crate::error::one_line(&e))),
    }))
}

/// Every holder, one entry per process (its newest `seq` speaks for it).
pub fn list_locks(backend: &Backend, keys: &Keys) -> Result<Vec<LockInfo>> {
    // A holder refreshes by writing its new object, then deleting the old one: a listing
    // taken just before the write, read just after the delete, would miss a live holder.
    // Listed again, it shows the new object.
    let mut tries = 0;
    loop {
        let (locks, vanished) = list_locks_once(backend, keys)?;
        tries += 1;
        if !vanished || tries == 4 {
            return Ok(locks);
        }
    }
}

/// The locks by holder, and whether an object listed was gone when read.
fn list_locks_once(backend: &Backend, keys: &Keys) -> Result<(Vec<LockInfo>, bool)> {
    let mut by_holder: HashMap<String, LockInfo> = HashMap::new();
    let mut vanished = false;
    for (id, size) in backend.list_sized(FileKind::Lock)? {
        // Created but not yet written, on storage where objects are written under their
        // names (create-only, §17), or so left by a writer killed in between: no holder
        // yet. Its writer reads the locks only once the object is whole, and then sees
        // ours.
        if size == 0 {
            continue;
        }
        let Some(info) = read_lock(backend, keys, id)? else {
            vanished = true;
            continue;
        };
        match by_holder.entry(info.holder()) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(info);
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let old = o.get_mut();
                let newer = info.lock.as_ref().map(|l| (l.seq, info.id))
                    > old.lock.as_ref().map(|l| (l.seq, old.id));
                let mut objects = std::mem::take(&mut old.objects);
                objects.extend(info.objects.iter().copied());
                if newer {
                    *old = info;
                }
                old.objects = objects;
            }
        }
    }
    let mut out: Vec<LockInfo> = by_holder.into_values().collect();
    out.sort_by_key(|i| i.id);
    Ok((out, vanished))
}

/// What this process has seen of other locks, on its own clock.
#[derive(Default)]
pub struct Watch {
    seen: HashMap<String, (Fingerprint, Duration)>,
}

impl Watch {
    pub fn new() -> Watch {
        Watch::default()
    }

    /// Records the locks as they are now; a holder that changed starts over.
    pub fn observe(&mut self, locks: &[LockInfo]) {
        let now = boottime();
        let mut next = HashMap::new();
        for info in locks {
            let fp = info.fingerprint();
            let since = match self.seen.get(&info.holder()) {
                Some((old, t)) if *old == fp => *t,
                _ => now,
            };
            next.insert(info.holder(), (fp, since));
        }
        self.seen = next;
    }

    /// How long this process has seen `info` exactly as it is.
    pub fn unchanged_for(&self, info: &LockInfo) -> Duration {
        match self.seen.get(&info.holder()) {
            Some((fp, since)) if *fp == info.fingerprint() => boottime().saturating_sub(*since),
            _ => Duration::ZERO,
        }
    }

    pub fn is_stale(&self, info: &LockInfo) -> bool {
        self.unchanged_for(info) > stale_after()
    }
}

pub fn human(d: Duration) -> String {
    if d >= Duration::from_secs(120) {
        format!("{} min", d.as_secs() / 60)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Fails with exit code 11 when another process holds a lock that conflicts with
/// `kind` and is neither dead nor watched stale.
///
/// `own` is the path of the own newest object: skipped even when its read came back
/// damaged.
fn check_conflicts(
    backend: &Backend,
    keys: &Keys,
    kind: LockKind,
    watch: &mut Watch,
    own: &str,
    report: &dyn Reporter,
) -> Result<()> {
    let locks = list_locks(backend, keys)?;
    watch.observe(&locks);
    for other in &locks {
        let own_object = other
            .objects
            .iter()
            .any(|id| FileKind::Lock.path(id) == own);
        if own_object
            || other.is_ours()
            || other.is_released()
            || !kind.conflicts_with(other.kind())
        {
            continue;
        }
        if other.is_dead() {
            report.warn(&format!(
                "ignoring dead {} (its process is gone from this machine; `vault unlock` removes it)",
                other.describe()
            ));
        } else if watch.is_stale(other) {
            report.warn(&format!(
                "ignoring stale {} (unchanged for {} while this process watched it)",
                other.describe(),
                human(watch.unchanged_for(other))
            ));
        } else {
            return Err(VaultError::Locked(format!(
                "{}; wait for it to finish (--lock-wait), or if its process is gone (another machine or container), run `vault unlock --stale`",
                other.describe()
            ))
            .into());
        }
    }
    Ok(())
}

/// Whether the holder kept its lock refreshed.
struct Health {
    /// CLOCK_BOOTTIME when the last successful write began.
    last_ok: Duration,
    /// Set for good once a refresh came later than the hold limit: someone may have
    /// judged the lock stale meanwhile. Only `renew` clears it.
    lapsed: Option<Duration>,
}

struct Objects {
    current: String,
    /// Superseded objects whose delete failed; retried at release.
    leftovers: Vec<String>,
}

struct Held {
    backend: Backend,
    /// Replaced once, when a key rotation starts sealing under its new key.
    keys: Mutex<Keys>,
    template: Lock,
    objects: Mutex<Objects>,
    health: Mutex<Health>,
    /// Where the refresher's and the conflict checks' warnings go.
    report: Report,
}

impl Held {
    fn write_object(&self) -> Result<String> {
        let mut l = self.template.clone();
        l.seq = SEQ.fetch_add(1, Ordering::SeqCst) + 1;
        l.time = now_rfc3339();
        let path = FileKind::Lock.path(&Id::random());
        self.backend.write(&path, l.seal(&locked(&self.keys)))?;
        super::cleanup::track(&self.backend, &path);
        Ok(path)
    }

    fn delete_object(&self, path: &str) -> Result<()> {
        self.backend.delete(path)?;
        super::cleanup::untrack(&self.backend, path);
        Ok(())
    }

    /// A new object first, then the old one goes: the holder never vanishes, and no
    /// object is rewritten (storage that forbids deletes keeps the old ones, which
    /// readers ignore for the higher `seq`).
    fn refresh(&self) -> Result<()> {
        let mut objects = locked(&self.objects);
        let start = boottime();
        let path = self.write_object()?;
        {
            let mut h = locked(&self.health);
            let gap = start.saturating_sub(h.last_ok);
            if gap > hold_limit() && h.lapsed.is_none() {
                h.lapsed = Some(gap);
            }
            h.last_ok = start;
        }
        let old = std::mem::replace(&mut objects.current, path);
        if self.delete_object(&old).is_err() {
            objects.leftovers.push(old);
        }
        Ok(())
    }

    /// Deletes every object of this holder, the superseded ones first: while any is
    /// left, the newest left must not look like a live holder. Where a delete fails
    /// (storage that refuses deletes), a last object of kind `released`, with the
    /// highest `seq`, says the holder let go; what stays is left for maintenance.
    fn release(&self) {
        let objects = locked(&self.objects);
        let mut kept = 0;
        let mut refused = false;
        for p in objects
            .leftovers
            .iter()
            .chain(std::iter::once(&objects.current))
        {
            if let Err(e) = self.delete_object(p) {
                kept += 1;
                refused |= super::backend::is_refused(&e);
            }
        }
        if kept == 0 {
            return;
        }
        let mut last = self.template.released();
        last.seq = SEQ.fetch_add(1, Ordering::SeqCst) + 1;
        last.time = now_rfc3339();
        let path = FileKind::Lock.path(&Id::random());
        let written = self
            .backend
            .write(&path, last.seal(&locked(&self.keys)))
            .is_ok();
        if refused {
            super::cleanup::left_for_maintenance(
                &self.backend,
                "lock object",
                kept + u64::from(written),
            );
        }
        if !written {
            self.report.warn(&format!(
                "could not release the {}: it stays until `vault unlock` removes it",
                self.describe()
            ));
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} lock of `{}` (process {})",
            self.template.kind().name(),
            self.template.command,
            &ME.process[..8]
        )
    }
}

pub struct LockGuard {
    held: Arc<Held>,
    location: String,
    stop: Option<Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        self.held.release();
        locked(&HELD).remove(&self.location);
    }
}

impl LockGuard {
    /// Fails (exit code 11) once the lock went longer than the hold limit without a
    /// successful refresh: another process may have judged it stale. Call it right
    /// before each step that cannot be taken back.
    pub fn ensure_held(&self) -> Result<()> {
        let h = locked(&self.held.health);
        let gap = boottime().saturating_sub(h.last_ok);
        let gap = h.lapsed.map_or(gap, |l| l.max(gap));
        if h.lapsed.is_some() || gap > hold_limit() {
            return Err(VaultError::LockLapsed(format!(
                "{} could not be refreshed for {}; nothing was published; run again",
                self.held.describe(),
                human(gap)
            ))
            .into());
        }
        Ok(())
    }

    /// Refreshes now and checks again that no other process holds a conflicting live
    /// lock (exit code 11 if one does); on success the lock counts as held again.
    pub fn renew(&self) -> Result<()> {
        self.held.refresh()?;
        let own = locked(&self.held.objects).current.clone();
        let keys = locked(&self.held.keys).clone();
        check_conflicts(
            &self.held.backend,
            &keys,
            self.held.template.kind(),
            &mut Watch::new(),
            &own,
            &*self.held.report,
        )?;
        locked(&self.held.health).lapsed = None;
        Ok(())
    }

    pub fn kind(&self) -> LockKind {
        self.held.template.kind()
    }

    /// Seals the lock under `keys` from now on, at once: a key rotation's new key, so
    /// that what a kill leaves opens with the key that remains.
    pub fn rekey(&self, keys: &Keys) -> Result<()> {
        *locked(&self.held.keys) = keys.clone();
        self.held.refresh()
    }

    fn start_refresher(&mut self) {
        let (tx, rx) = bounded::<()>(0);
        let held = self.held.clone();
        self.stop = Some(tx);
        self.refresher = Some(std::thread::spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                rx.recv_timeout(refresh_every())
            {
                if let Err(e) = held.refresh() {
                    held.report.warn(&format!(
                        "cannot refresh the {}: {} (it stops before publishing anything once this lasts {})",
                        held.describe(),
                        crate::error::one_line(&e),
                        human(hold_limit())
                    ));
                }
            }
        }));
    }
}

/// Takes a lock; fails with exit code 11 when a conflicting lock of another process is
/// neither dead nor stale. The own lock is written first and the others read after, so
/// two racing processes cannot both miss each other.
pub fn acquire(repo: &Repository, kind: LockKind, command: &str) -> Result<LockGuard> {
    acquire_watching(repo, kind, command, &mut Watch::new(), Arc::new(Silent))
}

/// `acquire`, remembering in `watch` what it saw: a caller that retries with the same
/// watch may pass a lock it has watched unchanged for the stale threshold.
pub fn acquire_watching(
    repo: &Repository,
    kind: LockKind,
    command: &str,
    watch: &mut Watch,
    report: Report,
) -> Result<LockGuard> {
    let location = repo.location().to_string();
    if !locked(&HELD).insert(location.clone()) {
        return Err(anyhow!(
            "this process already holds a lock on {location} (a bug: release it first)"
        ));
    }
    let template = Lock {
        host: hostname(),
        pid: std::process::id(),
        user: username(),
        time: String::new(),
        exclusive: kind != LockKind::Shared,
        command: command.to_string(),
        kind: Some(kind.name().to_string()),
        process: Some(ME.process.clone()),
        boot_id: ME.boot_id.clone(),
        pid_ns: ME.pid_ns.clone(),
        started: now_rfc3339(),
        seq: 0,
    };
    let start = boottime();
    let mut held = Held {
        backend: repo.backend.clone(),
        keys: Mutex::new(repo.keys.clone()),
        template,
        objects: Mutex::new(Objects {
            current: String::new(),
            leftovers: Vec::new(),
        }),
        health: Mutex::new(Health {
            last_ok: start,
            lapsed: None,
        }),
        report,
    };
    let first = held.write_object();
    let first = match first {
        Ok(p) => p,
        Err(e) => {
            locked(&HELD).remove(&location);
            return Err(e);
        }
    };
    held.objects
        .get_mut()
        .unwrap_or_else(|e| e.into_inner())
        .current = first.clone();
    let mut guard = LockGuard {
        held: Arc::new(held),
        location,
        stop: None,
        refresher: None,
    };
    // On failure the guard drops, deleting the own lock again.
    check_conflicts(
        &repo.backend,
        &repo.keys,
        kind,
        watch,
        &first,
        &*guard.held.report,
    )?;
    guard.start_refresher();
    Ok(guard)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockMode {
    /// Locks whose process is gone from this machine, boot and PID namespace.
    Dead,
    /// Those, and locks watched unchanged for the stale threshold.
    Stale,
    /// Every lock.
    All,
}

#[derive(Default)]
pub struct Unlocked {
    pub removed: Vec<String>,
    /// Watched and seen refreshed (or appeared meanwhile): kept.
    pub kept: Vec<String>,
}

fn remove(repo: &Repository, info: &LockInfo) -> Result<()> {
    for id in &info.objects {
        match repo.backend.delete(&FileKind::Lock.path(id)) {
            Err(e) if !super::backend::is_not_found(&e) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Removes dead locks, with `Stale` also those that stay unchanged while this process
/// watches them for the stale threshold (`waiting` hears what it waits for), with `All`
/// every lock.
pub fn unlock(repo: &Repository, mode: UnlockMode, waiting: &dyn Fn(String)) -> Result<Unlocked> {
    let mut out = Unlocked::default();
    let mut watched = Vec::new();
    for info in list_locks(&repo.backend, &repo.keys)? {
        if mode == UnlockMode::All || info.is_dead() || info.is_released() {
            remove(repo, &info)?;
            out.removed.push(info.describe());
        } else {
            watched.push(info);
        }
    }
    if mode != UnlockMode::Stale || watched.is_empty() {
        out.kept = watched.iter().map(LockInfo::describe).collect();
        return Ok(out);
    }
    let threshold = stale_after();
    waiting(format!(
        "watching {} lock(s) for {}; those that do not change meanwhile are removed:",
        watched.len(),
        human(threshold)
    ));
    for w in &watched {
        waiting(format!("  {}", w.describe()));
    }
    let mut watch = Watch::new();
    watch.observe(&watched);
    let began = boottime();
    let poll = (threshold / 20).clamp(Duration::from_millis(50), Duration::from_secs(10));
    let now = loop {
        std::thread::sleep(poll);
        let now = list_locks(&repo.backend, &repo.keys)?;
        watch.observe(&now);
        if boottime().saturating_sub(began) > threshold {
            break now;
        }
    };
    for info in &now {
        if info.is_dead() || info.is_released() || watch.is_stale(info) {
            remove(repo, info)?;
            out.removed.push(info.describe());
        } else {
            out.kept.push(info.describe());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::repository::InitOptions;
    use crate::repo::storage::append_only::Change;
    use crate::repo::storage::{self, Entry, Meta, Refused, Storage};

    /// Storage as a test needs it: refusing every delete and rename, as create-only
    /// storage does, or answering its first listing with one taken earlier.
    #[derive(Debug)]
    struct Tampered {
        inner: Arc<dyn Storage>,
        no_deletes: bool,
        stale_list: std::sync::Mutex<Option<Vec<Entry>>>,
    }

    impl Tampered {
        fn no_deletes(inner: Arc<dyn Storage>) -> Tampered {
            Tampered {
                inner,
                no_deletes: true,
                stale_list: Default::default(),
            }
        }

        fn stale_list_once(inner: Arc<dyn Storage>, entries: Vec<Entry>) -> Tampered {
            Tampered {
                inner,
                no_deletes: false,
                stale_list: std::sync::Mutex::new(Some(entries)),
            }
        }
    }

    fn refused<T>(change: Change, path: &str) -> storage::Result<T> {
        Err(Refused {
            change,
            path: path.into(),
        }
        .into())
    }

    impl Storage for Tampered {
        fn read(&self, path: &str) -> storage::Result<Vec<u8>> {
            self.inner.read(path)
        }
        fn read_range(&self, path: &str, offset: u64, len: u64) -> storage::Result<Vec<u8>> {
            self.inner.read_range(path, offset, len)
        }
        fn write(&self, path: &str, bytes: bytes::Bytes) -> storage::Result<()> {
            self.inner.write(path, bytes)
        }
        fn write_new(&self, path: &str, bytes: bytes::Bytes) -> storage::Result<()> {
            self.inner.write_new(path, bytes)
        }
        fn rename(&self, from: &str, to: &str) -> storage::Result<()> {
            if self.no_deletes {
                return refused(Change::Rename, from);
            }
            self.inner.rename(from, to)
        }
        fn delete(&self, path: &str) -> storage::Result<()> {
            if self.no_deletes {
                return refused(Change::Delete, path);
            }
            self.inner.delete(path)
        }
        fn stat(&self, path: &str) -> storage::Result<Meta> {
            self.inner.stat(path)
        }
        fn exists(&self, path: &str) -> storage::Result<bool> {
            self.inner.exists(path)
        }
        fn list(&self, dir: &str) -> storage::Result<Vec<Entry>> {
            if let Some(stale) = self.stale_list.lock().expect("poisoned").take() {
                return Ok(stale);
            }
            self.inner.list(dir)
        }
        fn probe(&self) -> storage::Result<()> {
            self.inner.probe()
        }
        fn create_dir(&self, dir: &str) -> storage::Result<()> {
            self.inner.create_dir(dir)
        }
    }

    /// Writes `lock` as another process's (in another PID namespace).
    fn as_another_process(repo: &Repository, lock: &Lock) -> Id {
        let mut l = lock.clone();
        l.process = Some("0".repeat(32));
        l.pid_ns = "pid:[1]".into();
        let id = Id::random();
        let path = FileKind::Lock.path(&id);
        repo.backend.write(&path, l.seal(&repo.keys)).unwrap();
        id
    }

    #[test]
    fn a_holder_that_cannot_delete_leaves_a_released_lock_that_excludes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().to_str().unwrap();
        let opts = InitOptions {
            kdf: crate::format::keyfile::KdfCost::FLOOR,
            ..InitOptions::default()
        };
        let mut repo = Repository::init(Backend::open(location).unwrap(), b"pw", &opts).unwrap();
        repo.backend = repo
            .backend
            .clone()
            .decorated(|s| Arc::new(Tampered::no_deletes(s)));
        drop(acquire(&repo, LockKind::Shared, "backup").unwrap());
        crate::repo::cleanup::left_behind();

        let locks = list_locks(&repo.backend, &repo.keys).unwrap();
        assert_eq!(locks.len(), 1, "one holder");
        let released = &locks[0];
        assert!(released.is_released(), "{}", released.describe());
        assert_eq!(
            released.objects.len(),
            2,
            "its lock and the released object"
        );
        assert!(released.describe().starts_with("released lock"));

        // Another process's: released, it excludes nothing; not released, it does.
        let l = released.lock.clone().unwrap();
        as_another_process(&repo, &l);
        let conflicts = |own: &str| {
            check_conflicts(
                &repo.backend,
                &repo.keys,
                LockKind::Exclusive,
                &mut Watch::new(),
                own,
                &Silent,
            )
        };
        conflicts("").unwrap();
        let live = Lock {
            kind: Some("shared".into()),
            exclusive: false,
            seq: l.seq + 1,
            ..l.clone()
        };
        as_another_process(&repo, &live);
        let e = conflicts("").unwrap_err();
        assert!(e.to_string().contains("shared lock"), "{e}");
    }

    /// A holder refreshes by writing its new object and deleting the old: a listing taken
    /// before the write and read after the delete still finds it (listed again).
    #[test]
    fn a_holder_refreshing_between_list_and_read_is_still_listed() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            kdf: crate::format::keyfile::KdfCost::FLOOR,
            ..InitOptions::default()
        };
        let location = dir.path().to_str().unwrap();
        let mut repo = Repository::init(Backend::open(location).unwrap(), b"pw", &opts).unwrap();
        let guard = acquire(&repo, LockKind::Shared, "backup").unwrap();
        let l = list_locks(&repo.backend, &repo.keys).unwrap()[0]
            .lock
            .clone()
            .unwrap();
        drop(guard);
        let old = as_another_process(&repo, &l);
        // The listing as it was before the refresh, answered once.
        let dir = FileKind::Lock.dir();
        repo.backend = repo.backend.clone().decorated(|s| {
            let stale = s.list(dir).unwrap();
            assert_eq!(stale.len(), 1);
            Arc::new(Tampered::stale_list_once(s, stale))
        });
        let refreshed = Lock {
            seq: l.seq + 1,
            ..l.clone()
        };
        as_another_process(&repo, &refreshed);
        repo.backend.delete(&FileKind::Lock.path(&old)).unwrap();
        let locks = list_locks(&repo.backend, &repo.keys).unwrap();
        assert_eq!(locks.len(), 1, "the refreshing holder is listed");
        assert_eq!(locks[0].lock.as_ref().unwrap().seq, l.seq + 1);
    }

    #[test]
    fn an_empty_lock_object_is_no_holder() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().to_str().unwrap();
        let opts = InitOptions {
            kdf: crate::format::keyfile::KdfCost::FLOOR,
            ..InitOptions::default()
        };
        let repo = Repository::init(Backend::open(location).unwrap(), b"pw", &opts).unwrap();
        let path = FileKind::Lock.path(&Id::random());
        repo.backend.write(&path, Vec::new()).unwrap();
        assert!(list_locks(&repo.backend, &repo.keys).unwrap().is_empty());
        let garbage = FileKind::Lock.path(&Id::random());
        repo.backend.write(&garbage, b"x".to_vec()).unwrap();
        let locks = list_locks(&repo.backend, &repo.keys).unwrap();
        assert!(matches!(
            locks[..],
            [LockInfo {
                status: Status::Unreadable(_),
                ..
            }]
        ));
    }
}
