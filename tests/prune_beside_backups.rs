//! Two-phase prune (format 3) beside running backups: prune and forget run with no
//! exclusive lock, from any host, container or clock, and nothing a backup wrote or
//! relies on is lost. Backups are paused with SIGSTOP past the grace period, run in
//! another PID namespace under the same host name (`unshare -p`) and with clocks an hour
//! off (`faketime`), and killed at every write between relying on a marked pack and
//! publishing. Afterwards `check --read-data` passes and every snapshot whose backup
//! reported success restores byte for byte.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Env, bytes, snapshot_of};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// vault with this test's repository, and a cache of the given host's own: hosts share
/// no cache. `wrap` runs it under another program (unshare, faketime).
fn host_cmd(env: &Env, host: &str, wrap: &[&str]) -> Command {
    let vault = env!("CARGO_BIN_EXE_vault");
    let mut c = match wrap.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg(vault);
            c
        }
        None => Command::new(vault),
    };
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.dir.path())
        .env("VAULT_REPOSITORY", env.repo())
        .env("VAULT_PASSWORD", common::PASSWORD)
        .env("VAULT_KDF_LOG_N", "15")
        .env("VAULT_CACHE_DIR", env.path(&format!("cache-{host}")));
    c
}

fn need(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("{tool} is needed by this test (apt-get install faketime util-linux)");
    }
    found
}

fn packs(repo: &Path) -> usize {
    common::walkdir(&repo.join("data"))
        .iter()
        .filter(|p| p.is_file())
        .count()
}

fn stats(out: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(out).expect("prune --json");
    v["stats"].clone()
}

fn prune(env: &Env, grace: &str) -> serde_json::Value {
    stats(&env.ok(&["--json", "prune", "--grace", grace, "--max-unused", "0%"]))
}

fn check_clean(env: &Env, ctx: &str) {
    let out = env.run(&["check", "--read-data"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no errors"),
        "{ctx}: check --read-data:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restores `id` and compares it with the tree `src` had when backed up.
fn restores_as(env: &Env, id: &str, src: &Path, tree: &BTreeMap<Vec<u8>, String>, ctx: &str) {
    let target = env.path(&format!("restore-{id}"));
    let _ = fs::remove_dir_all(&target);
    env.ok(&["restore", id, "--target", target.to_str().unwrap()]);
    let got = snapshot_of(&Env::restored(&target, src));
    assert!(
        got == *tree,
        "{ctx}: snapshot {id} does not restore its source"
    );
    fs::remove_dir_all(&target).unwrap();
}

/// Starts a backup of `src` and stops it with SIGSTOP once it has written `after` packs.
fn paused_backup(env: &Env, src: &Path, after: usize) -> Child {
    let before = packs(&env.repo());
    let mut child = host_cmd(env, "paused", &[])
        .args(["--json", "backup", "-q", src.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while packs(&env.repo()) < before + after {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it was paused"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the backup wrote no packs"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGSTOP).unwrap();
    child
}

fn resume(child: Child) -> serde_json::Value {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the resumed backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn big_source(env: &Env, name: &str, seed: u64, files: u64) -> PathBuf {
    let src = env.path(name);
    fs::create_dir_all(&src).unwrap();
    for i in 0..files {
        fs::write(src.join(format!("f{i}")), bytes(seed * 100 + i, 2 << 20)).unwrap();
    }
    src
}

#[test]
fn a_backup_paused_past_two_grace_periods_still_publishes_a_whole_snapshot() {
    let env = Env::new();
    env.init(&["--pack-size", "64K", "--chunk-size", "512K"]);
    let src = big_source(&env, "src", 1, 32);
    let tree = snapshot_of(&src);
    let child = paused_backup(&env, &src, 10);
    // Its packs are older than the grace period: the first prune marks them (no snapshot
    // uses them), the second deletes them.
    std::thread::sleep(Duration::from_millis(1100));
    let first = prune(&env, "1s");
    assert!(first["packs_marked"].as_u64().unwrap() >= 10, "{first}");
    std::thread::sleep(Duration::from_millis(1100));
    let second = prune(&env, "1s");
    assert!(second["packs_deleted"].as_u64().unwrap() >= 10, "{second}");
    let out = resume(child);
    // It found what it relied on deleted and read its source again.
    assert!(out["confirmed"]["passes"].as_u64().unwrap() >= 2, "{out}");
    let id = out["snapshot"].as_str().unwrap();
    check_clean(&env, "after the resumed backup");
    restores_as(&env, id, &src, &tree, "resumed backup");
    // And later prunes leave it whole.
    prune(&env, "0s");
    prune(&env, "0s");
    check_clean(&env, "after two more prunes");
    restores_as(&env, id, &src, &tree, "after two more prunes");
}

#[test]
fn a_backup_that_relies_on_marked_packs_revives_them() {
    let env = Env::new();
    env.init(&["--pack-size", "64K", "--chunk-size", "512K"]);
    let src = big_source(&env, "src", 2, 32);
    let tree = snapshot_of(&src);
    let child = paused_backup(&env, &src, 10);
    std::thread::sleep(Duration::from_millis(1100));
    let first = prune(&env, "1s");
    assert!(first["packs_marked"].as_u64().unwrap() >= 10, "{first}");
    let out = resume(child);
    assert!(
        out["confirmed"]["packs_revived"].as_u64().unwrap() >= 10,
        "{out}"
    );
    assert_eq!(out["confirmed"]["passes"], 1, "{out}");
    let id = out["snapshot"].as_str().unwrap();
    // With no grace at all, two prunes (mark, delete) must still keep every pack it uses.
    prune(&env, "0s");
    let last = prune(&env, "0s");
    assert_eq!(last["packs_deleted"], 0, "{last}");
    check_clean(&env, "after the prunes");
    restores_as(&env, id, &src, &tree, "revived");
}

#[test]
fn prune_beside_a_running_backup_runs_and_loses_nothing() {
    // Format 3 prune takes no exclusive lock: it runs while a backup holds its lock.
    let env = Env::new();
    env.init(&[]);
    let src = big_source(&env, "src", 3, 12);
    let tree = snapshot_of(&src);
    let child = paused_backup(&env, &src, 1);
    let out = env.run(&["prune", "--grace", "0s"]);
    assert!(
        out.status.success(),
        "prune must run beside a backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.ok(&["prune", "--grace", "0s"]);
    let out = resume(child);
    let id = out["snapshot"].as_str().unwrap();
    check_clean(&env, "after the race");
    restores_as(&env, id, &src, &tree, "race");
}

/// One host's source in a round: a file all hosts share, one of its own, a small one.
fn write_host(src: &Path, host: usize, round: u64) -> BTreeMap<Vec<u8>, String> {
    let _ = fs::remove_dir_all(src);
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("common"), bytes(round, 1 << 20)).unwrap();
    // The host that is paused has more to do, so it is still running when paused.
    let own = if host == 0 { 24 } else { 3 };
    for i in 0..own {
        let seed = 10_000 * host as u64 + 100 * round + i;
        fs::write(src.join(format!("own{i}")), bytes(seed, 1 << 20)).unwrap();
    }
    fs::write(src.join("d/small"), format!("host {host} round {round}\n")).unwrap();
    snapshot_of(src)
}

/// How each of the four hosts runs its backups.
const HOSTS: [(&str, &[&str]); 4] = [
    ("plain", &[]),
    ("namespace", &["unshare", "-p", "--fork", "--mount-proc"]),
    ("behind", &["faketime", "-f", "-1h"]),
    ("ahead", &["faketime", "-f", "+1h"]),
];

#[test]
fn forget_and_prune_again_and_again_beside_four_hosts_lose_nothing() {
    if !need("faketime") || !need("unshare") {
        return;
    }
    let started = Instant::now();
    let env = Env::new();
    env.init(&["--pack-size", "64K", "--chunk-size", "16K"]);
    let srcs: Vec<PathBuf> = (0..4).map(|h| env.path(&format!("host{h}"))).collect();
    let mut expected: BTreeMap<String, (usize, BTreeMap<Vec<u8>, String>)> = BTreeMap::new();
    let (mut published, mut deleted, mut revived, mut passes) = (0, 0, 0, 0);
    for round in 0..4u64 {
        let ctx = format!("round {round}");
        let trees: Vec<_> = (0..4).map(|h| write_host(&srcs[h], h, round)).collect();
        let mut children: Vec<Child> = HOSTS
            .iter()
            .enumerate()
            .map(|(h, (name, wrap))| {
                // The plain host logs its writes, so it can be paused once it has some.
                let quiet = if h == 0 { "-vv" } else { "-q" };
                host_cmd(&env, name, wrap)
                    .args(["--json", "backup", quiet, "--host", name])
                    .arg(&srcs[h])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // The plain host's backup (a direct child, so SIGSTOP reaches it) is paused once
        // it has written 3 packs, while forget and prune run and run again past the grace
        // period: its packs are marked, then deleted, and it must revive or re-read them.
        let log = children[0].stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut all = String::new();
            let mut packs = 0;
            for line in std::io::BufReader::new(log).lines().map_while(Result::ok) {
                if line.contains("write ") && line.contains("data/") {
                    packs += 1;
                    if packs == 3 {
                        let _ = tx.send(());
                    }
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let paused = rx.recv_timeout(Duration::from_secs(60)).is_ok()
            && kill(Pid::from_raw(children[0].id() as i32), Signal::SIGSTOP).is_ok();
        for turn in 0..3 {
            let forget = env.run(&["forget", "-q", "--keep-last", "1"]);
            assert!(forget.status.success(), "{ctx}: forget: {forget:?}");
            let s = prune(&env, "1s");
            deleted += s["packs_deleted"].as_u64().unwrap();
            if turn < 2 {
                std::thread::sleep(Duration::from_millis(1100));
            }
        }
        if paused {
            kill(Pid::from_raw(children[0].id() as i32), Signal::SIGCONT).unwrap();
        }
        let mut outs: Vec<Output> = children
            .drain(..)
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        outs[0].stderr = reader.join().unwrap().into_bytes();
        let _ = prune(&env, "1s");
        for (h, out) in outs.iter().enumerate() {
            assert!(
                out.status.success(),
                "{ctx}: host {}: {}",
                HOSTS[h].0,
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            revived += v["confirmed"]["packs_revived"].as_u64().unwrap();
            passes += v["confirmed"]["passes"].as_u64().unwrap();
            let id = v["snapshot"].as_str().unwrap().to_string();
            expected.insert(id, (h, trees[h].clone()));
            published += 1;
        }
        check_clean(&env, &ctx);
        let ids = env.ok(&["snapshots", "--json"]);
        let ids: Vec<serde_json::Value> = serde_json::from_str(&ids).unwrap();
        // Every backup that reported success is there or was forgotten for a newer one
        // of its host; every snapshot there restores byte for byte.
        for v in &ids {
            let id = v["id"].as_str().unwrap();
            let (h, tree) = expected
                .get(id)
                .unwrap_or_else(|| panic!("{ctx}: snapshot {id} from no known backup"));
            restores_as(&env, id, &srcs[*h], tree, &ctx);
        }
        assert!(ids.len() >= 4, "{ctx}: a host's newest snapshot is gone");
    }
    assert!(
        deleted > 0,
        "no prune deleted anything: the test proved nothing"
    );
    assert!(
        revived > 0 || passes > published,
        "no backup revived or read again what a prune took: the race never happened"
    );
    eprintln!(
        "four hosts: {published} backups published beside 12 forgets and 16 prunes; {deleted} packs deleted, \
         {revived} revived by backups, {passes} passes; every snapshot restored; {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The writes one uninterrupted run makes.
fn writes(env: &Env, args: &[&str]) -> u64 {
    let loud = args.iter().filter(|a| **a != "-q");
    let out = env.cmd().arg("-vv").args(loud).output().unwrap();
    common::assert_ok(&out);
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("write ") || l.starts_with("delete "))
        .count() as u64
}

/// Killed after each of its writes, a backup that reuses marked packs (revival records,
/// then its snapshot) and a prune that deletes marked packs (deletion record, index, packs,
/// marks) leave a repository that checks clean, and whose snapshots restore once the
/// interrupted operation and two more prunes ran.
#[test]
fn backup_and_prune_killed_at_every_write_lose_nothing() {
    let env = Env::new();
    env.init(&["--pack-size", "64K", "--chunk-size", "512K"]);
    let src = big_source(&env, "src", 4, 2);
    let tree = snapshot_of(&src);
    let s = src.to_str().unwrap().to_string();
    // Everything backed up, then forgotten and marked: the next backup of the same data
    // relies on marked packs only.
    env.ok(&["backup", "-q", &s]);
    env.ok(&["forget", "-q", "--keep-last", "0"]);
    let marked = prune(&env, "0s");
    assert!(marked["packs_marked"].as_u64().unwrap() > 5, "{marked}");
    let template = env.path("template");
    fs::rename(env.repo(), &template).unwrap();
    let reset = || {
        let _ = fs::remove_dir_all(env.repo());
        let _ = fs::remove_dir_all(env.path("cache"));
        common::copy_tree(&template, &env.repo());
    };
    let ops: [&[&str]; 2] = [
        &["backup", "-q", &s],
        &["prune", "-q", "--grace", "0s", "--max-unused", "0%"],
    ];
    let mut kills = 0;
    for op in ops {
        reset();
        let n = writes(&env, op);
        assert!(n > 3, "{op:?} makes only {n} writes");
        for at in 1..=n {
            let ctx = format!("{op:?} killed after write {at} of {n}");
            reset();
            let status = env
                .cmd()
                .args(op)
                .env("VAULT_CRASH_AFTER_WRITES", at.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if status.success() {
                continue; // its last write was a delete of its own lock
            }
            kills += 1;
            env.ok(&["unlock", "-q"]);
            check_clean(&env, &ctx);
            // The next runs finish the job: nothing that a published snapshot uses goes.
            let id = env.backup_json(&[&s])["snapshot"]
                .as_str()
                .unwrap()
                .to_string();
            prune(&env, "0s");
            prune(&env, "0s");
            check_clean(&env, &ctx);
            restores_as(&env, &id, &src, &tree, &ctx);
        }
    }
    assert!(kills >= 10, "killed only {kills} times");
    eprintln!("two-phase crash points: {kills} kills, each checked clean and restored");
}

/// Some tests here rely on VAULT_CRASH_AFTER_WRITES, which only a build with the test hooks obeys.
#[test]
fn the_test_hooks_are_built() {
    if !cfg!(feature = "test-hooks") {
        panic!(
            "run the tests with --features test-hooks: without it vault ignores VAULT_CRASH_AFTER_WRITES"
        );
    }
}
