//! What a running command has put on storage that only it may take away: temporary
//! objects on their way to their names, and its lock objects. When the command is
//! interrupted (Ctrl-C, SIGTERM, SIGHUP), `interrupt` removes them before the process
//! exits, so an interrupted command leaves no temporary file and no lock for others to
//! wait out. A `kill -9` still can: prune's repair of stray temporary files and the
//! stale-lock rules cover that case.
//!
//! On storage that refuses deletes (create-only, spec §17) what a command could not
//! remove is counted here instead (`left_for_maintenance`), and said once per copy when
//! the command ends (`left_behind`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};

use super::Backend;

/// How an object is left behind: by its exact path, or (local writes, whose temporary
/// name the storage library picks) as any name in `tmp/` starting with a prefix.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Leftover {
    Path(String),
    TmpPrefix(String),
}

static TRACKED: LazyLock<Mutex<HashMap<(String, Leftover), Backend>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
static STOPPING: AtomicBool = AtomicBool::new(false);
/// What must be undone before the process exits on a signal (a mount to unmount).
type Undo = Box<dyn FnOnce() + Send>;
static ON_INTERRUPT: LazyLock<Mutex<Vec<Undo>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// Runs `undo` first when the process is interrupted (see [`interrupt`]).
pub fn on_interrupt(undo: impl FnOnce() + Send + 'static) {
    ON_INTERRUPT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(undo));
}

fn tracked() -> MutexGuard<'static, HashMap<(String, Leftover), Backend>> {
    TRACKED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the process is being interrupted: writes started now would only be left
/// behind.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Remembers that `path` on `backend` exists because of this process until `untrack`.
pub fn track(backend: &Backend, path: &str) {
    let key = (backend.location().to_string(), Leftover::Path(path.into()));
    tracked().insert(key, backend.alone());
}

pub fn untrack(backend: &Backend, path: &str) {
    tracked().remove(&(backend.location().to_string(), Leftover::Path(path.into())));
}

/// Remembers that names in `tmp/` starting with `prefix` are this process's until
/// `untrack_tmp_prefix`.
pub fn track_tmp_prefix(backend: &Backend, prefix: &str) {
    let key = (
        backend.location().to_string(),
        Leftover::TmpPrefix(prefix.into()),
    );
    tracked().insert(key, backend.alone());
}

pub fn untrack_tmp_prefix(backend: &Backend, prefix: &str) {
    let key = (
        backend.location().to_string(),
        Leftover::TmpPrefix(prefix.into()),
    );
    tracked().remove(&key);
}

/// For a program that ends on Ctrl-C, SIGTERM and SIGHUP: on the first, `notice` runs and
/// the process exits once what it put on storage for the time being is removed
/// ([`interrupt`]), within 20 seconds; a second signal ends it at once. Exit code 128 +
/// the signal, as a shell reports it.
pub fn on_signals(notice: impl Fn() + Send + 'static) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("vault-signals".into())
        .spawn(move || {
            let mut cleaning = false;
            for sig in signals.forever() {
                if cleaning {
                    std::process::exit(128 + sig);
                }
                cleaning = true;
                notice();
                let _ = std::thread::Builder::new()
                    .name("vault-cleanup".into())
                    .spawn(move || {
                        let (tx, rx) = std::sync::mpsc::channel();
                        std::thread::spawn(move || {
                            interrupt();
                            let _ = tx.send(());
                        });
                        let _ = rx.recv_timeout(std::time::Duration::from_secs(20));
                        std::process::exit(128 + sig);
                    });
            }
        });
}

/// Stops new writes and removes everything tracked. Run twice a moment apart, since a
/// write in flight when the first pass ran may land after it.
pub fn interrupt() {
    STOPPING.store(true, Ordering::SeqCst);
    let undo = std::mem::take(&mut *ON_INTERRUPT.lock().unwrap_or_else(|e| e.into_inner()));
    for u in undo {
        u();
    }
    for pass in 0..2 {
        if pass > 0 {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let items: Vec<_> = tracked()
            .iter()
            .map(|((_, l), b)| (l.clone(), b.clone()))
            .collect();
        for (leftover, backend) in items {
            remove(&backend, &leftover);
        }
    }
}

fn remove(backend: &Backend, leftover: &Leftover) {
    match leftover {
        Leftover::Path(p) => {
            let _ = backend.delete_now(p);
        }
        Leftover::TmpPrefix(prefix) => {
            let Ok(files) = backend.list_files("tmp/") else {
                return;
            };
            for (path, _) in files {
                let name = path.rsplit('/').next().unwrap_or(&path);
                if name.starts_with(prefix.as_str()) {
                    let _ = backend.delete_now(&path);
                }
            }
        }
    }
}

/// Per copy (its label), what kind of object and how many were left because the
/// storage refused to delete them.
static LEFT: LazyLock<Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// Records that `n` objects of kind `what` ("lock object", "temporary object", ...)
/// stay on `backend` because its storage refused their deletion; with `n` 0, `what`
/// stands alone ("the deletions sync carries over").
pub fn left_for_maintenance(backend: &Backend, what: &'static str, n: u64) {
    let mut left = LEFT.lock().unwrap_or_else(|e| e.into_inner());
    *left
        .entry(backend.label().to_string())
        .or_default()
        .entry(what)
        .or_default() += n;
}

/// One line per copy that kept something for want of delete rights, and empties the
/// record.
pub fn left_behind() -> Vec<String> {
    let left = std::mem::take(&mut *LEFT.lock().unwrap_or_else(|e| e.into_inner()));
    left.into_iter()
        .map(|(copy, kinds)| {
            let what: Vec<String> = kinds
                .iter()
                .map(|(k, n)| match n {
                    0 => k.to_string(),
                    n => format!("{n} {k}(s)"),
                })
                .collect();
            format!(
                "{copy}: the storage refuses deletes (create-only); {} left for `vault maintain`",
                what.join(", ")
            )
        })
        .collect()
}
