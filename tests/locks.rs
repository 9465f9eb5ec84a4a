//! Locks (spec §15): a lock is dead only when it names this machine, boot and PID
//! namespace and its process is gone; stale only when this process watched it unchanged
//! for the stale threshold; refreshed by new objects only; and a holder that could not
//! refresh stops before it publishes.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, PASSWORD};
use vault::repo::lock::{self, LockInfo};
use vault::repo::{Backend, Repository, Secret};

fn vault_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vault")
}

/// The repository through the library, only to read its locks.
fn repo_of(env: &Env) -> Repository {
    let backend = Backend::open(env.repo().to_str().unwrap()).unwrap();
    let mut r = Repository::open(backend, &Secret::Password(PASSWORD.into())).unwrap();
    r.cache = None;
    r
}

fn holders(repo: &Repository) -> Vec<LockInfo> {
    lock::list_locks(&repo.backend, &repo.keys).unwrap()
}

fn lock_files(env: &Env) -> Vec<PathBuf> {
    let mut v = common::walkdir(&env.repo().join("locks"));
    v.sort();
    v
}

/// How a holder is started.
enum Wrap<'a> {
    Plain,
    /// In a new PID namespace (same host name), as a child of a shell there, so that its
    /// pid is `pid` (chosen absent from ours).
    PidNs {
        pid: u32,
    },
    /// Under faketime with this offset (wall clock only; its monotonic clock is right).
    Faketime(&'a str),
}

/// A `vault backup --stdin` holding a shared lock until its stdin closes.
struct Holder {
    child: Child,
}

impl Holder {
    fn start(env: &Env, repo: &Repository, wrap: Wrap, envs: &[(&str, &str)]) -> Holder {
        let before = holders(repo).len();
        let backup = [
            vault_bin(),
            "backup",
            "-q",
            "--stdin",
            "--stdin-filename",
            "held",
        ];
        let mut c = match wrap {
            Wrap::Plain => Command::new(vault_bin()),
            Wrap::PidNs { pid } => {
                let mut c = Command::new("unshare");
                // The shell stays pid 1 and forks vault after choosing its pid; the last
                // command is not the vault, so no shell execs it in place.
                let script = format!(
                    "echo {} > /proc/sys/kernel/ns_last_pid && \"$@\"; exit $?",
                    pid - 1
                );
                c.args([
                    "-p",
                    "--kill-child",
                    "--mount-proc",
                    "sh",
                    "-c",
                    &script,
                    "sh",
                ]);
                c.arg(vault_bin());
                c
            }
            Wrap::Faketime(offset) => {
                let mut c = Command::new("faketime");
                c.args(["-f", offset, vault_bin()])
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
                c
            }
        };
        c.args(&backup[1..]);
        c.env("VAULT_REPOSITORY", env.repo())
            .env("VAULT_PASSWORD", PASSWORD)
            .env("VAULT_KDF_LOG_N", "15")
            .env("VAULT_CACHE_DIR", "")
            .env("HOME", env.dir.path())
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("start the lock holder");
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"held data\n")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while holders(repo).len() <= before {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("the holder exited ({st}) before locking: {err}");
            }
            assert!(Instant::now() < deadline, "the holder never locked");
            std::thread::sleep(Duration::from_millis(10));
        }
        Holder { child }
    }

    /// Closes stdin: the backup finishes; asserts it succeeded.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the holder failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A pid that no process here has, for a holder in another namespace: the old rule
/// ("same host name, no such process here") would call its lock dead.
fn pid_absent_here() -> u32 {
    let max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let free = |p: u32| (0..50).all(|d| !Path::new(&format!("/proc/{}", p + d)).exists());
    (max / 2..max - 100)
        .step_by(97)
        .find(|p| free(*p))
        .expect("a free pid range")
        + 25
}

fn unshare_available() -> bool {
    let ok = Command::new("unshare")
        .args(["-p", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "unshare -p (root) is needed for this test under CI=true"
        );
        eprintln!("skipped: unshare -p is not available (needs root)");
    }
    ok
}

#[test]
fn a_lock_from_another_pid_namespace_with_the_same_host_name_stays_live() {
    if !unshare_available() {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let repo = repo_of(&env);
    let pid = pid_absent_here();
    let holder = Holder::start(&env, &repo, Wrap::PidNs { pid }, &[]);
    let h = holders(&repo);
    assert_eq!(h.len(), 1);
    let l = h[0].lock.as_ref().unwrap();
    assert_eq!(
        l.pid, pid,
        "the holder runs with the chosen pid in its namespace"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} must not exist here, or this test proves nothing"
    );

    // Plain unlock removes only dead locks: this one is kept.
    let out = env.ok(&["unlock"]);
    assert!(out.contains("0 lock(s) removed"), "{out}");
    assert_eq!(holders(&repo).len(), 1, "unlock removed a live lock");
    // An exclusive operation refuses to run beside it, naming it, and writes nothing.
    let index_before = common::walkdir(&env.repo().join("index"));
    let out = env.run(&["repair", "index"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{err}");
    assert!(
        err.contains("shared lock") && err.contains("`backup`"),
        "{err}"
    );
    assert_eq!(common::walkdir(&env.repo().join("index")), index_before);
    let h = holders(&repo);
    let l = h[0].lock.as_ref().unwrap();
    assert!(!l.pid_ns.is_empty() && !l.boot_id.is_empty() && l.process.is_some());
    assert!(!h[0].is_dead() && !h[0].from_older_vault());
    // Shared locks coexist.
    let src = env.source_with_file(b"x");
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    holder.finish();
    assert_eq!(env.files_in("snapshots"), 2);
    assert!(lock_files(&env).is_empty(), "the holder released its lock");
}

fn faketime_available() -> bool {
    if Command::new("sh")
        .args(["-c", "command -v faketime"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "faketime (apt package faketime) is needed for this test under CI=true"
    );
    eprintln!("skipped: faketime is not installed");
    false
}

/// `vault ARGS` for this test's repository, its wall clock off by `offset`.
fn faketime(offset: &str, env: &Env, args: &[&str]) -> std::process::Output {
    Command::new("faketime")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("HOME", env.dir.path())
        .env("VAULT_REPOSITORY", env.repo())
        .env("VAULT_PASSWORD", PASSWORD)
        .env("VAULT_KDF_LOG_N", "15")
        .env("VAULT_CACHE_DIR", "")
        .args(["-f", offset, vault_bin()])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn clock_skew_never_makes_a_live_lock_stale() {
    if !faketime_available() {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let repo = repo_of(&env);
    let mut snapshots = 0;
    for offset in ["-31m", "+31m", "-1d", "+1d"] {
        // The holder's clock is off: its lock's times are 31 minutes or a day away.
        let holder = Holder::start(&env, &repo, Wrap::Faketime(offset), &[]);
        let t = holders(&repo)[0].lock.as_ref().unwrap().time.clone();
        let skew = t.parse::<jiff::Timestamp>().unwrap() - jiff::Timestamp::now();
        assert!(
            skew.total(jiff::Unit::Minute).unwrap().abs() > 30.0,
            "{offset}: faketime did not skew the holder ({t})"
        );
        let out = env.ok(&["unlock"]);
        assert!(out.contains("0 lock(s) removed"), "{offset}: {out}");
        let out = env.run(&["repair", "index"]);
        assert_eq!(out.status.code(), Some(11), "{offset}: repair index ran");
        holder.finish();
        snapshots += 1;

        // The other way round: our clock is off, the holder's is right.
        let holder = Holder::start(&env, &repo, Wrap::Plain, &[]);
        let out = faketime(offset, &env, &["unlock"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("0 lock(s) removed"),
            "{offset}: skewed unlock: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = faketime(offset, &env, &["repair", "index"]);
        assert_eq!(
            out.status.code(),
            Some(11),
            "{offset}: skewed repair index: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        holder.finish();
        snapshots += 1;
        assert!(lock_files(&env).is_empty(), "{offset}");
    }
    assert_eq!(env.files_in("snapshots"), snapshots);
}

#[test]
fn refresh_creates_a_new_object_and_never_rewrites_one() {
    let env = Env::new();
    env.init(&[]);
    let repo = repo_of(&env);
    let holder = Holder::start(
        &env,
        &repo,
        Wrap::Plain,
        &[("VAULT_LOCK_REFRESH_SECS", "0.2")],
    );
    let mut seen: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        let files = lock_files(&env);
        assert!(!files.is_empty(), "the lock vanished during a refresh");
        for f in files {
            let Ok(bytes) = fs::read(&f) else {
                continue; // deleted between listing and reading: the superseded one
            };
            let first = seen.entry(f.clone()).or_insert_with(|| bytes.clone());
            assert!(*first == bytes, "{} was rewritten in place", f.display());
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    assert!(
        seen.len() >= 5,
        "only {} lock objects in 3 s of 0.2 s refreshes",
        seen.len()
    );
    let h = holders(&repo);
    assert_eq!(h.len(), 1, "one holder");
    assert_eq!(h[0].objects.len(), 1, "superseded objects are deleted");
    assert!(h[0].lock.as_ref().unwrap().seq >= 5);
    holder.finish();
    assert!(lock_files(&env).is_empty());
}

/// Runs vault as an unprivileged user, so that a read-only locks/ really is one.
fn as_nobody(env: &Env) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(vault_bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("VAULT_REPOSITORY", env.repo())
        .env("VAULT_PASSWORD", PASSWORD)
        .env("VAULT_KDF_LOG_N", "15")
        .env("VAULT_CACHE_DIR", "")
        .env("HOME", env.dir.path());
    c
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Starts `cmd`, waits for its lock object, runs `then`, and returns its output.
fn once_locked(env: &Env, mut cmd: Command, then: impl FnOnce(u32)) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lock_files(env).is_empty() {
        assert!(Instant::now() < deadline, "it never locked");
        std::thread::sleep(Duration::from_millis(1));
    }
    then(child.id());
    child.wait_with_output().unwrap()
}

#[test]
fn forget_whose_lock_cannot_be_refreshed_deletes_nothing() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test drops privileges with setpriv: run the tests as root"
    );
    let env = Env::new();
    chmod(env.dir.path(), 0o777);
    let out = as_nobody(&env).arg("init").output().unwrap();
    common::assert_ok(&out);
    let src = env.source_with_file(b"x");
    chmod(&src, 0o777);
    for i in 0..20 {
        fs::write(src.join("f"), format!("version {i}")).unwrap();
        let out = as_nobody(&env)
            .args(["backup", "-q", src.to_str().unwrap()])
            .output()
            .unwrap();
        common::assert_ok(&out);
    }
    let snapshots_before = common::walkdir(&env.repo().join("snapshots"));
    assert_eq!(snapshots_before.len(), 20);
    let mut forget = as_nobody(&env);
    // Slow storage: reading the 20 snapshots takes about a second, several times the
    // hold limit (0.6 s stale threshold less 0.2 s refresh interval).
    forget
        .env("VAULT_FAULTS", "seed=3,slow=1")
        .env("VAULT_LOCK_STALE_SECS", "0.6")
        .env("VAULT_LOCK_REFRESH_SECS", "0.2")
        .args(["forget", "--keep-last", "1"]);
    let locks = env.repo().join("locks");
    let out = once_locked(&env, forget, |_| chmod(&locks, 0o555));
    chmod(&locks, 0o755);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{err}");
    assert!(
        err.contains("could not be refreshed") && err.contains("nothing was published"),
        "{err}"
    );
    assert_eq!(
        common::walkdir(&env.repo().join("snapshots")),
        snapshots_before,
        "forget deleted snapshots with a lapsed lock"
    );
    assert!(common::walkdir(&env.repo().join("forgotten")).is_empty());
}

#[test]
fn repair_index_suspended_past_the_threshold_writes_nothing() {
    let env = Env::new();
    env.init(&["--pack-size", "64K", "--chunk-size", "16K"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), common::bytes(1, 2 << 20)).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let index_before = common::walkdir(&env.repo().join("index"));
    let mut repair = env.cmd();
    repair
        .env("VAULT_FAULTS", "seed=5,slow=1")
        .env("VAULT_LOCK_STALE_SECS", "0.9")
        .env("VAULT_LOCK_REFRESH_SECS", "0.3")
        .args(["repair", "index"]);
    // Stopped once it holds its lock, for longer than the stale threshold: like a
    // suspended laptop. It may refresh when it wakes, but not publish.
    let out = once_locked(&env, repair, |pid| {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{err}");
    assert!(err.contains("could not be refreshed"), "{err}");
    assert_eq!(
        common::walkdir(&env.repo().join("index")),
        index_before,
        "repair index wrote with a lapsed lock"
    );
    assert!(lock_files(&env).is_empty(), "it released its lock");
    env.ok(&["check"]);
}

#[test]
fn unlock_stale_removes_only_a_lock_watched_unchanged() {
    if !unshare_available() {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let repo = repo_of(&env);
    let refresh = [("VAULT_LOCK_REFRESH_SECS", "0.2")];
    let killed = Holder::start(
        &env,
        &repo,
        Wrap::PidNs {
            pid: pid_absent_here(),
        },
        &refresh,
    );
    let alive = Holder::start(
        &env,
        &repo,
        Wrap::PidNs {
            pid: pid_absent_here() + 7,
        },
        &refresh,
    );
    killed.kill();
    // Its process is gone, but from another namespace: plain unlock cannot tell.
    let out = env.ok(&["unlock"]);
    assert!(out.contains("0 lock(s) removed"), "{out}");
    assert_eq!(holders(&repo).len(), 2);
    let start = Instant::now();
    let out = env
        .cmd()
        .env("VAULT_LOCK_STALE_SECS", "2")
        .args(["unlock", "--stale"])
        .output()
        .unwrap();
    let took = start.elapsed();
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{err}");
    assert!(err.contains("watching 2 lock(s)"), "{err}");
    assert!(
        took >= Duration::from_secs(2),
        "removed after only {took:?}"
    );
    assert!(stdout.contains("1 lock(s) removed"), "{stdout}");
    let left = holders(&repo);
    assert_eq!(left.len(), 1, "{stdout}");
    assert!(!left[0].is_dead());
    // The refreshed one survives and finishes.
    alive.finish();
    assert!(lock_files(&env).is_empty());
    assert_eq!(env.files_in("snapshots"), 1);
}

/// A lock object as another process (or an older vault) would write it.
fn plant(repo: &Repository, l: &vault::format::lock::Lock) -> vault::format::Id {
    let id = vault::format::Id::random();
    repo.backend
        .write(&vault::repo::FileKind::Lock.path(&id), l.seal(&repo.keys))
        .unwrap();
    id
}

fn planted(
    host: &str,
    pid: u32,
    exclusive: bool,
    kind: Option<&str>,
    process: Option<&str>,
) -> vault::format::lock::Lock {
    vault::format::lock::Lock {
        host: host.into(),
        pid,
        user: "someone".into(),
        time: jiff::Timestamp::now().to_string(),
        exclusive,
        command: "repair index".into(),
        kind: kind.map(String::from),
        process: process.map(String::from),
        boot_id: String::new(),
        pid_ns: String::new(),
        started: String::new(),
        seq: 1,
    }
}

#[test]
fn a_lock_of_an_older_vault_is_never_judged_dead() {
    let env = Env::new();
    env.init(&[]);
    let repo = repo_of(&env);
    // This host's name and a pid that does not exist here: the old rule called it dead.
    let host = vault::repo::repository::hostname();
    let pid = pid_absent_here();
    plant(&repo, &planted(&host, pid, false, None, None));
    let h = holders(&repo);
    assert!(h[0].from_older_vault() && !h[0].is_dead());
    assert!(
        h[0].describe().contains("older vault"),
        "{}",
        h[0].describe()
    );
    let out = env.ok(&["unlock"]);
    assert!(out.contains("0 lock(s) removed"), "{out}");
    // Shared (`exclusive: false`, no `kind`): a backup runs beside it, repair index not.
    let src = env.source_with_file(b"x");
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let out = env.run(&["repair", "index"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{err}");
    assert!(err.contains("older vault"), "{err}");
}

#[test]
fn lock_wait_passes_only_a_lock_it_watched_unchanged() {
    if !unshare_available() {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let repo = repo_of(&env);
    let refresh = [("VAULT_LOCK_REFRESH_SECS", "0.2")];
    let alive = Holder::start(
        &env,
        &repo,
        Wrap::PidNs {
            pid: pid_absent_here(),
        },
        &refresh,
    );
    let short = |args: &[&str]| {
        let start = Instant::now();
        let out = env
            .cmd()
            .env("VAULT_LOCK_STALE_SECS", "1.5")
            .args(args)
            .output()
            .unwrap();
        (out, start.elapsed())
    };
    // Refreshed all along: waiting longer than the threshold never passes it.
    let (out, took) = short(&["--lock-wait", "5s", "repair", "index"]);
    assert_eq!(
        out.status.code(),
        Some(11),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took >= Duration::from_secs(5), "gave up after {took:?}");
    alive.kill();
    // Its holder was killed in another namespace: without waiting, still locked.
    let (out, _) = short(&["repair", "index"]);
    assert_eq!(
        out.status.code(),
        Some(11),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Waiting, it is passed once watched unchanged for the threshold.
    let (out, took) = short(&["--lock-wait", "30s", "repair", "index"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("ignoring stale"), "{err}");
    assert!(took >= Duration::from_millis(1500), "passed after {took:?}");
}

#[test]
fn renew_fails_when_a_conflicting_lock_appeared_meanwhile() {
    let env = Env::new();
    env.init(&[]);
    let repo = repo_of(&env);
    let guard = lock::acquire(&repo, lock::LockKind::Prune, "prune").unwrap();
    guard.ensure_held().unwrap();
    guard.renew().unwrap();
    // Another process judged ours stale and took a prune lock of its own.
    let theirs = planted("elsewhere", 7, true, Some("prune"), Some("00ff"));
    let id = plant(&repo, &theirs);
    let err = guard.renew().unwrap_err();
    assert_eq!(vault::error::exit_code(&err), 11, "{err:#}");
    assert!(format!("{err:#}").contains("elsewhere"), "{err:#}");
    repo.backend
        .delete(&vault::repo::FileKind::Lock.path(&id))
        .unwrap();
    guard.renew().unwrap();
    drop(guard);
    assert!(lock_files(&env).is_empty(), "release deletes what it wrote");
}

/// Some tests here rely on VAULT_FAULTS, which only a build with the test hooks obeys.
#[test]
fn the_test_hooks_are_built() {
    if !cfg!(feature = "test-hooks") {
        panic!("run the tests with --features test-hooks: without it vault ignores VAULT_FAULTS");
    }
}
