//! Repository locks. Backup and restore take shared locks; operations that delete take an
//! exclusive one. A lock is a small sealed file in locks/, refreshed every five minutes
//! while held and removed when released.

use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use crossbeam_channel::{Sender, bounded};

use super::backend::{Backend, FileKind};
use super::repository::{Repository, hostname, now_rfc3339, username};
use crate::error::VaultError;
use crate::format::Id;
use crate::format::crypto::Keys;
use crate::format::lock::Lock;

pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// Why a lock may be ignored, if it may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staleness {
    Live,
    /// Its process on this host no longer exists: certainly abandoned.
    DeadProcess,
    /// Not refreshed for 30 minutes.
    Expired,
    Unreadable(String),
}

pub struct LockInfo {
    pub id: Id,
    pub lock: Option<Lock>,
    pub staleness: Staleness,
}

impl LockInfo {
    pub fn describe(&self) -> String {
        match &self.lock {
            Some(l) => format!(
                "{} lock {} held by `{}` (pid {} on {} as {}, refreshed {})",
                if l.exclusive { "exclusive" } else { "shared" },
                self.id.short(),
                l.command,
                l.pid,
                l.host,
                l.user,
                l.time
            ),
            None => format!("lock {} (unreadable)", self.id.short()),
        }
    }
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

fn staleness(lock: &Lock) -> Staleness {
    if lock.host == hostname() && !process_alive(lock.pid) {
        return Staleness::DeadProcess;
    }
    let age = lock
        .time
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| jiff::Timestamp::now().duration_since(t).try_into().ok())
        .unwrap_or(Duration::MAX);
    if age > STALE_AFTER {
        Staleness::Expired
    } else {
        Staleness::Live
    }
}

pub fn list_locks(backend: &Backend, keys: &Keys) -> Result<Vec<LockInfo>> {
    let mut out = Vec::new();
    for id in backend.list(FileKind::Lock)? {
        let info = match backend.read(&FileKind::Lock.path(&id)) {
            Ok(b) => match Lock::open(keys, &b) {
                Ok(l) => LockInfo {
                    id,
                    staleness: staleness(&l),
                    lock: Some(l),
                },
                Err(e) => LockInfo {
                    id,
                    lock: None,
                    staleness: Staleness::Unreadable(e.to_string()),
                },
            },
            // Released between list and read.
            Err(e) if super::backend::is_not_found(&e) => continue,
            // Whether a lock the storage would not hand over is live is unknown: neither
            // ignore it nor call it stale (which `unlock` would delete).
            Err(e) if super::backend::is_storage_error(&e) => {
                return Err(e.context(format!("reading lock {}", id.short())));
            }
            Err(e) => LockInfo {
                id,
                lock: None,
                staleness: Staleness::Unreadable(crate::error::one_line(&e)),
            },
        };
        out.push(info);
    }
    Ok(out)
}

pub struct LockGuard {
    backend: Backend,
    path: String,
    stop: Option<Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let _ = self.backend.delete(&self.path);
    }
}

/// Takes a lock; fails with exit code 11 when a conflicting live lock exists.
/// The own lock is written first and the others read after, so two racing processes
/// cannot both miss each other.
pub fn acquire(repo: &Repository, exclusive: bool, command: &str) -> Result<LockGuard> {
    let backend = repo.backend.clone();
    let mut lock = Lock {
        host: hostname(),
        pid: std::process::id(),
        user: username(),
        time: now_rfc3339(),
        exclusive,
        command: command.to_string(),
    };
    let id = Id::random();
    let path = FileKind::Lock.path(&id);
    backend.write(&path, lock.seal(&repo.keys))?;
    let mut guard = LockGuard {
        backend: backend.clone(),
        path: path.clone(),
        stop: None,
        refresher: None,
    };
    for other in list_locks(&backend, &repo.keys)? {
        if other.id == id {
            continue;
        }
        let other_exclusive = other.lock.as_ref().is_none_or(|l| l.exclusive);
        if !(exclusive || other_exclusive) {
            continue;
        }
        match &other.staleness {
            Staleness::Live => {
                return Err(VaultError::Locked(format!(
                    "{}; wait for it to finish",
                    other.describe()
                ))
                .into());
            }
            Staleness::DeadProcess => {
                eprintln!(
                    "vault: ignoring stale {} (its process is gone; `vault unlock` removes it)",
                    other.describe()
                );
            }
            Staleness::Expired | Staleness::Unreadable(_) if exclusive => {
                return Err(VaultError::Locked(format!(
                    "{} looks stale; if no vault process uses the repository, run `vault unlock`",
                    other.describe()
                ))
                .into());
            }
            _ => eprintln!("vault: warning: stale {}", other.describe()),
        }
    }
    let (tx, rx) = bounded::<()>(0);
    let keys = repo.keys.clone();
    guard.stop = Some(tx);
    guard.refresher = Some(std::thread::spawn(move || {
        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(REFRESH_EVERY)
        {
            lock.time = now_rfc3339();
            if let Err(e) = backend.write(&path, lock.seal(&keys)) {
                eprintln!(
                    "vault: warning: cannot refresh lock: {}",
                    crate::error::one_line(&e)
                );
            }
        }
    }));
    Ok(guard)
}

/// Removes stale locks (or all with `all`); returns what was removed.
pub fn unlock(repo: &Repository, all: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for info in list_locks(&repo.backend, &repo.keys)? {
        if all || info.staleness != Staleness::Live {
            repo.backend.delete(&FileKind::Lock.path(&info.id))?;
            removed.push(info.describe());
        }
    }
    Ok(removed)
}
