//! Crash and concurrency tests. Backup, prune, sync and export are killed with SIGKILL at
//! seeded instants: right after their Nth storage write or delete
//! (VAULT_CRASH_AFTER_WRITES), or by a timer that lands anywhere in their run, between
//! and inside writes. After every kill the repository (or mirror, or export) must pass
//! `check --read-data`, the operation must complete when run again, and every kept
//! snapshot must restore byte-identical to the source generation it was taken from.
//! Then four backups from different hosts and a forget+prune start at once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, bytes, walkdir};

/// Kill instants per operation (the brief asks for at least 50).
const KILLS: usize = 52;

/// xorshift64*: every run draws the same write counts and delays from a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---- source trees and what a restore must reproduce ----

#[derive(Clone, PartialEq, Debug)]
enum Node {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
}

type Tree = BTreeMap<PathBuf, Node>;

fn read_tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let ft = fs::symlink_metadata(&p).unwrap().file_type();
            if ft.is_symlink() {
                out.insert(rel, Node::Link(fs::read_link(&p).unwrap()));
            } else if ft.is_dir() {
                out.insert(rel, Node::Dir);
                walk(root, &p, out);
            } else {
                out.insert(rel, Node::File(fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

/// Compares a restored tree with the expected one: (bytes compared, bytes lost, first
/// difference). A file counts as lost whole when any of its bytes differ or it is absent.
fn compare(expected: &Tree, got: &Tree) -> (u64, u64, Option<String>) {
    let (mut compared, mut lost, mut first) = (0, 0, None);
    for (path, want) in expected {
        let size = match want {
            Node::File(b) => b.len() as u64,
            _ => 0,
        };
        compared += size;
        if got.get(path) != Some(want) {
            lost += size;
            first.get_or_insert_with(|| format!("{} differs or is missing", path.display()));
        }
    }
    if let Some(extra) = got.keys().find(|p| !expected.contains_key(*p)) {
        first.get_or_insert_with(|| format!("{} should not exist", extra.display()));
    }
    (compared, lost, first)
}

/// Source generation `g`: one file every generation shares (deduplicated), one that
/// grows by a new tail, about 1.5 MiB that only this generation has, small files, an
/// empty file and a symlink. With 64 KiB packs a backup of it writes about 30 packs.
fn write_generation(src: &Path, g: u64) {
    let _ = fs::remove_dir_all(src);
    fs::create_dir_all(src.join("d/e")).unwrap();
    fs::write(src.join("same"), bytes(1, 384 << 10)).unwrap();
    let mut grow = bytes(2, 256 << 10);
    grow.extend(bytes(300 + g, 96 << 10));
    fs::write(src.join("grow"), grow).unwrap();
    for i in 0..4 {
        fs::write(
            src.join(format!("new{g}-{i}")),
            bytes(1000 * g + i, 384 << 10),
        )
        .unwrap();
    }
    fs::write(src.join("d/small"), format!("generation {g}\n")).unwrap();
    fs::write(src.join("d/e/empty"), b"").unwrap();
    std::os::unix::fs::symlink(format!("new{g}-0"), src.join("d/link")).unwrap();
}

// ---- running vault ----

/// vault for this test's repository, opened with the raw key file as on an unattended
/// machine: no scrypt per run, which would cost more than the rest of most commands.
fn cmd(env: &Env) -> Command {
    let mut c = env.cmd();
    c.env("VAULT_KEY_FILE", env.path("key"));
    c
}

/// Runs vault and asserts its exit code; `ctx` says which kill this follows.
fn vault(env: &Env, args: &[&str], code: i32, ctx: &str) -> String {
    let out = cmd(env).args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{ctx}: vault {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a backup with --json; returns its snapshot id.
fn backup_id(env: &Env, args: &[&str], ctx: &str) -> String {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out: serde_json::Value = serde_json::from_str(&vault(env, &a, 0, ctx)).unwrap();
    out["snapshot"].as_str().unwrap().to_string()
}

fn snapshot_ids(env: &Env, repo: &Path, ctx: &str) -> BTreeSet<String> {
    let out = vault(
        env,
        &["--json", "snapshots", "--repo", repo.to_str().unwrap()],
        0,
        ctx,
    );
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn check_read_data(env: &Env, repo: &Path, ctx: &str) {
    let out = vault(
        env,
        &["check", "--read-data", "--repo", repo.to_str().unwrap()],
        0,
        ctx,
    );
    assert!(out.contains("no errors"), "{ctx}: {out}");
}

/// `vault audit` without the password: every object hashes to its name.
fn audit(env: &Env, repo: &Path, ctx: &str) {
    let out = env
        .cmd()
        .env_remove("VAULT_PASSWORD")
        .env_remove("VAULT_KEY_FILE")
        .args(["audit", "--repo", repo.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{ctx}: audit of {}: {}{}",
        repo.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn locks(repo: &Path) -> usize {
    walkdir(&repo.join("locks")).len()
}

/// Every file of a repository but its locks and temporary files, with its hash.
fn listing(repo: &Path) -> BTreeMap<PathBuf, blake3::Hash> {
    walkdir(repo)
        .into_iter()
        .map(|p| p.strip_prefix(repo).unwrap().to_path_buf())
        .filter(|p| !p.starts_with("locks") && !p.starts_with("tmp"))
        .map(|p| {
            let h = blake3::hash(&fs::read(repo.join(&p)).unwrap());
            (p, h)
        })
        .collect()
}

fn sha256sum_ok(dir: &Path) -> bool {
    Command::new("sha256sum")
        .args(["-c", "--quiet", "MANIFEST"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ---- killing ----

#[derive(Clone, Copy, Debug)]
enum Kill {
    /// VAULT_CRASH_AFTER_WRITES=N: SIGKILL right after the Nth storage write or delete.
    AfterWrites(u64),
    /// SIGKILL from outside after this long: between writes, inside one, before the
    /// first or during work that writes nothing through the backend (export's extras).
    AfterDelay(Duration),
}

/// What one uninterrupted run does: its storage writes and deletes, and how long it takes.
#[derive(Clone, Copy, Debug)]
struct Span {
    writes: u64,
    duration: Duration,
}

/// Runs `args` once with -vv (and without -q, which would silence it) and counts the
/// "write"/"delete" lines the backend logs.
fn measure(env: &Env, args: &[&str]) -> Span {
    let loud = args.iter().filter(|a| **a != "-q");
    let start = Instant::now();
    let out = cmd(env).arg("-vv").args(loud).output().unwrap();
    let duration = start.elapsed();
    common::assert_ok(&out);
    let writes = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("write ") || l.starts_with("delete "))
        .count() as u64;
    assert!(writes > 0, "{args:?} wrote nothing");
    Span { writes, duration }
}

/// Draws a kill: by write count (uniform over every write of the operation) `by_count`
/// percent of the time, else by a timer uniform over the operation's running time.
fn draw(rng: &mut Rng, span: Span, by_count: u64) -> Kill {
    if rng.below(100) < by_count {
        Kill::AfterWrites(1 + rng.below(span.writes))
    } else {
        let micros = span.duration.as_micros() as u64;
        Kill::AfterDelay(Duration::from_micros(rng.below(micros)))
    }
}

/// Runs `cmd` to be killed as `kill` says. True when it died of SIGKILL; false when it
/// finished first, which it must do with exit 0.
fn run_killed(cmd: &mut Command, kill: Kill, log: &Path, ctx: &str) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap());
    let status = match kill {
        Kill::AfterWrites(n) => cmd
            .env("VAULT_CRASH_AFTER_WRITES", n.to_string())
            .status()
            .unwrap(),
        Kill::AfterDelay(d) => {
            let mut child = cmd.spawn().unwrap();
            std::thread::sleep(d);
            // Killing a child that already exited (not yet reaped) is harmless: its
            // status then tells that it finished.
            let _ = child.kill();
            child.wait().unwrap()
        }
    };
    if status.signal() == Some(9) {
        return true;
    }
    assert!(
        status.success(),
        "{ctx}: exit {status:?}: {}",
        fs::read_to_string(log).unwrap_or_default()
    );
    false
}

/// The figures each crash test prints.
#[derive(Default)]
struct Tally {
    by_count: usize,
    by_timer: usize,
    finished_first: usize,
    checks: usize,
    restored: usize,
    compared: u64,
    lost: u64,
}

impl Tally {
    fn kills(&self) -> usize {
        self.by_count + self.by_timer
    }

    fn killed(&mut self, kill: Kill) {
        match kill {
            Kill::AfterWrites(_) => self.by_count += 1,
            Kill::AfterDelay(_) => self.by_timer += 1,
        }
    }

    fn report(&self, what: &str, span: &str, started: Instant) {
        eprintln!(
            "crash {what}: {} kills ({} after a write count, {} by timer; {} runs finished before the timer) over {span}; \
             {} checks passed, {} snapshots restored, {} bytes compared, bytes lost = {}; {:.1}s",
            self.kills(),
            self.by_count,
            self.by_timer,
            self.finished_first,
            self.checks,
            self.restored,
            self.compared,
            self.lost,
            started.elapsed().as_secs_f64()
        );
        assert!(self.kills() >= KILLS, "{what}: only {} kills", self.kills());
        assert_eq!(self.lost, 0);
    }
}

// ---- the repository each iteration starts from ----

/// A repository with a history of source generations, kept aside as a template and
/// copied into place for each iteration.
struct Fixture {
    env: Env,
    src: PathBuf,
    /// The source generation every snapshot ever taken was taken from.
    gen_of: BTreeMap<String, u64>,
    trees: BTreeMap<u64, Tree>,
    template: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let env = Env::new();
        // Small packs and chunks: many writes from a few MiB.
        env.init(&["--pack-size", "64K", "--chunk-size", "16K"]);
        let key = env.path("key");
        let out = env.run(&["key", "export", "--raw"]);
        common::assert_ok(&out);
        fs::write(&key, out.stdout).unwrap();
        fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        Fixture {
            src: env.path("src"),
            template: env.path("template"),
            env,
            gen_of: BTreeMap::new(),
            trees: BTreeMap::new(),
        }
    }

    /// Writes generation `g` into the source, without backing it up.
    fn generation(&mut self, g: u64) {
        write_generation(&self.src, g);
        self.trees.insert(g, read_tree(&self.src));
    }

    fn backup(&mut self, g: u64) -> String {
        self.generation(g);
        let src = self.src.to_str().unwrap().to_string();
        let id = backup_id(&self.env, &["backup", "-q", &src], "fixture");
        self.gen_of.insert(id.clone(), g);
        id
    }

    /// Sets the repository aside as the template.
    fn freeze(&self) {
        fs::rename(self.env.repo(), &self.template).unwrap();
    }

    /// A fresh copy of the template in place, and no cache that could hide damage.
    fn reset(&self) {
        let _ = fs::remove_dir_all(self.env.repo());
        let _ = fs::remove_dir_all(self.env.path("cache"));
        common::copy_tree(&self.template, &self.env.repo());
    }

    /// Restores snapshot `id` from `repo` and compares every byte with its generation.
    fn restores_exactly(&self, repo: &Path, id: &str, tally: &mut Tally, ctx: &str) {
        let g = *self
            .gen_of
            .get(id)
            .unwrap_or_else(|| panic!("{ctx}: snapshot {id} comes from no known backup"));
        let ctx = format!("{ctx}, generation {g}");
        self.restores_tree(repo, id, &self.src, &self.trees[&g], tally, &ctx);
    }

    /// Restores snapshot `id` (of `src`) from `repo` and compares every byte with `want`.
    fn restores_tree(
        &self,
        repo: &Path,
        id: &str,
        src: &Path,
        want: &Tree,
        tally: &mut Tally,
        ctx: &str,
    ) {
        let target = self.env.path("restored");
        let _ = fs::remove_dir_all(&target);
        vault(
            &self.env,
            &[
                "restore",
                "-q",
                id,
                "--repo",
                repo.to_str().unwrap(),
                "--target",
                target.to_str().unwrap(),
            ],
            0,
            ctx,
        );
        let got = read_tree(&Env::restored(&target, src));
        let (compared, lost, first) = compare(want, &got);
        tally.restored += 1;
        tally.compared += compared;
        tally.lost += lost;
        assert!(
            first.is_none(),
            "{ctx}: snapshot {id}: {lost} bytes lost; {}",
            first.unwrap()
        );
    }

    /// After a kill: the dead process's lock at most, and `check --read-data` passes with
    /// it in place (a lock whose process is gone is ignored, as documented); `exclusive`
    /// says whether the dead process held a lock that conflicts with check's shared one.
    fn check_after_kill(&self, repo: &Path, exclusive: bool, tally: &mut Tally, ctx: &str) {
        // A kill between a refresh's new lock object and the removal of the old one
        // leaves both (refresh is create-only); they are one holder.
        let dead = locks(repo);
        assert!(
            dead <= 2,
            "{ctx}: more than the dead process's lock objects"
        );
        let out = cmd(&self.env)
            .args(["check", "--read-data", "--repo", repo.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no errors"),
            "{ctx}: check --read-data: {err}"
        );
        // A dead shared lock is no conflict for check's shared one, so only a dead
        // exclusive lock earns the notice.
        if dead == 1 && exclusive {
            assert!(err.contains("ignoring dead"), "{ctx}: no notice: {err}");
        }
        tally.checks += 1;
    }

    /// What a user does about the notice: `vault unlock` removes the dead lock.
    fn unlock(&self, ctx: &str) {
        vault(&self.env, &["unlock", "-q"], 0, ctx);
        assert_eq!(locks(&self.env.repo()), 0, "{ctx}: a lock survived unlock");
    }
}

// ---- the crash tests ----

#[test]
fn backup_killed_at_random_instants_loses_nothing() {
    let started = Instant::now();
    let mut f = Fixture::new();
    f.backup(1);
    f.backup(2);
    f.freeze();
    let kept: BTreeSet<String> = f.gen_of.keys().cloned().collect();
    f.generation(3);
    let src = f.src.to_str().unwrap().to_string();
    let args = ["backup", "-q", &src];
    f.reset();
    let span = measure(&f.env, &args);
    let repo = f.env.repo();
    let mut rng = Rng::new(0xB4C0);
    let mut t = Tally::default();
    let mut i = 0;
    let mut disturbed = 0;
    while t.kills() < KILLS {
        i += 1;
        assert!(i < 3 * KILLS, "too many runs finished before their timer");
        let kill = draw(&mut rng, span, 60);
        let ctx = format!("backup, iteration {i}, {kill:?}");
        f.reset();
        let log = f.env.path("op.log");
        let outside = outer_ancestors(&f.env);
        if !run_killed(cmd(&f.env).args(args), kill, &log, &ctx) {
            t.finished_first += 1;
            continue;
        }
        t.killed(kill);
        f.check_after_kill(&repo, false, &mut t, &ctx);
        // No snapshot is lost, and a new one exists only if the kill came after it.
        let after = snapshot_ids(&f.env, &repo, &ctx);
        assert!(after.is_superset(&kept), "{ctx}: a snapshot vanished");
        let partial: Vec<String> = after.difference(&kept).cloned().collect();
        assert!(partial.len() <= 1, "{ctx}: {partial:?}");
        // The next backup ignores the dead lock, completes, and reuses what the killed
        // one uploaded: no blob is stored twice (prune would count a copy as unused).
        let new = backup_id(&f.env, &args, &ctx);
        let out = vault(&f.env, &["--json", "prune", "--dry-run"], 0, &ctx);
        let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
        if outer_ancestors(&f.env) == outside {
            assert_eq!(plan["stats"]["bytes_unused"], 0, "{ctx}: {plan}");
        } else {
            // Another test made or removed its directory next to this one's: the trees
            // of the source's ancestors the killed run stored may rightly go unused.
            disturbed += 1;
        }
        check_read_data(&f.env, &repo, &ctx);
        t.checks += 1;
        // Snapshots of earlier iterations stay in the map: ids never repeat.
        for id in partial.iter().chain([&new]) {
            f.gen_of.insert(id.clone(), 3);
        }
        let all = snapshot_ids(&f.env, &repo, &ctx);
        assert_eq!(all.len(), kept.len() + partial.len() + 1, "{ctx}");
        for id in &all {
            f.restores_exactly(&repo, id, &mut t, &ctx);
        }
        f.unlock(&ctx);
    }
    assert!(
        disturbed < KILLS / 4,
        "{disturbed} of {KILLS} runs were disturbed: the reuse check hardly ran"
    );
    t.report(
        "backup",
        &format!("{} writes / {:?}", span.writes, span.duration),
        started,
    );
}

/// The metadata of the directories above the test's own (which vault stores as the
/// source's ancestors): mtime, ctime and link count of each.
fn outer_ancestors(env: &Env) -> Vec<(i64, i64, i64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    env.dir
        .path()
        .ancestors()
        .skip(1)
        .map(|d| {
            let m = fs::metadata(d).unwrap();
            (
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                m.nlink(),
            )
        })
        .collect()
}

#[test]
fn prune_killed_at_random_instants_loses_nothing() {
    let started = Instant::now();
    let mut f = Fixture::new();
    for g in 1..=4 {
        f.backup(g);
    }
    // Two-phase prune (no grace period): one generation forgotten and pruned, so its
    // packs are marked (and packs shared with the kept ones repacked), then another
    // forgotten. The prune that is killed deletes the marked packs (deletion record, new
    // index, packs, old marks) and repacks and marks the second generation's.
    vault(&f.env, &["forget", "-q", "--keep-last", "3"], 0, "fixture");
    let prune = ["prune", "-q", "--grace", "0s", "--max-unused", "0%"];
    vault(&f.env, &prune, 0, "fixture");
    vault(&f.env, &["forget", "-q", "--keep-last", "2"], 0, "fixture");
    let kept = snapshot_ids(&f.env, &f.env.repo(), "fixture");
    assert_eq!(kept.len(), 2);
    f.freeze();
    let args = prune;
    f.reset();
    let span = measure(&f.env, &args);
    let repo = f.env.repo();
    let mut rng = Rng::new(0x9E0E);
    let mut t = Tally::default();
    let mut i = 0;
    while t.kills() < KILLS {
        i += 1;
        assert!(i < 3 * KILLS, "too many runs finished before their timer");
        let kill = draw(&mut rng, span, 60);
        let ctx = format!("prune, iteration {i}, {kill:?}");
        f.reset();
        if !run_killed(cmd(&f.env).args(args), kill, &f.env.path("op.log"), &ctx) {
            t.finished_first += 1;
            continue;
        }
        t.killed(kill);
        // Prune's lock is a prune lock: no conflict for check's shared one, no notice.
        f.check_after_kill(&repo, false, &mut t, &ctx);
        assert_eq!(snapshot_ids(&f.env, &repo, &ctx), kept, "{ctx}");
        // Run again (marks, then deletes), prune finishes the job: nothing unused is left.
        let again = ["--json", "prune", "--grace", "0s", "--max-unused", "0%"];
        vault(&f.env, &again, 0, &ctx);
        let out = vault(&f.env, &again, 0, &ctx);
        let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(stats["stats"]["bytes_unused_after"], 0, "{ctx}: {stats}");
        check_read_data(&f.env, &repo, &ctx);
        t.checks += 1;
        for id in &kept {
            f.restores_exactly(&repo, id, &mut t, &ctx);
        }
        f.unlock(&ctx);
    }
    t.report(
        "prune",
        &format!("{} writes and deletes / {:?}", span.writes, span.duration),
        started,
    );
}

#[test]
fn sync_killed_at_random_instants_loses_nothing() {
    let started = Instant::now();
    let mut f = Fixture::new();
    let mirror = f.env.path("mirror");
    let mirror_template = f.env.path("mirror-template");
    let m = mirror.to_str().unwrap().to_string();
    vault(
        &f.env,
        &["mirror", "add", "m", &m, "-q", "--no-sync"],
        0,
        "fixture",
    );
    f.backup(1);
    f.backup(2);
    vault(&f.env, &["sync", "-q"], 0, "fixture");
    fs::rename(&mirror, &mirror_template).unwrap();
    // The mirror is now one generation and a forget+prune behind: sync copies packs,
    // index files and a snapshot, and deletes a snapshot, index files and packs.
    f.backup(3);
    vault(&f.env, &["forget", "-q", "--keep-last", "2"], 0, "fixture");
    for _ in 0..2 {
        // Two-phase prune: marked, then deleted.
        let prune = ["prune", "-q", "--grace", "0s", "--max-unused", "0%"];
        vault(&f.env, &prune, 0, "fixture");
    }
    let kept = snapshot_ids(&f.env, &f.env.repo(), "fixture");
    let before: BTreeSet<String> = f.gen_of.keys().cloned().collect();
    f.freeze();
    let primary = listing(&f.template);
    let reset = || {
        f.reset();
        let _ = fs::remove_dir_all(&mirror);
        common::copy_tree(&mirror_template, &mirror);
    };
    let args = ["sync", "-q"];
    reset();
    let span = measure(&f.env, &args);
    assert_eq!(listing(&mirror), primary, "a sync makes the mirror a copy");
    let repo = f.env.repo();
    let mut rng = Rng::new(0x5E1C);
    let mut t = Tally::default();
    let mut i = 0;
    while t.kills() < KILLS {
        i += 1;
        assert!(i < 3 * KILLS, "too many runs finished before their timer");
        let kill = draw(&mut rng, span, 60);
        let ctx = format!("sync, iteration {i}, {kill:?}");
        reset();
        if !run_killed(cmd(&f.env).args(args), kill, &f.env.path("op.log"), &ctx) {
            t.finished_first += 1;
            continue;
        }
        t.killed(kill);
        assert!(locks(&repo) <= 1, "{ctx}");
        assert_eq!(listing(&repo), primary, "{ctx}: sync changed the primary");
        // The mirror is a valid repository at every instant, holding snapshots of the
        // old or the new set.
        assert_eq!(locks(&mirror), 0, "{ctx}: sync locked the mirror");
        check_read_data(&f.env, &mirror, &ctx);
        t.checks += 1;
        let on_mirror = snapshot_ids(&f.env, &mirror, &ctx);
        assert!(on_mirror.is_subset(&before), "{ctx}: {on_mirror:?}");
        // Run again (beside the dead lock): the mirror becomes an exact copy.
        vault(&f.env, &args, 0, &ctx);
        assert_eq!(listing(&repo), primary, "{ctx}: sync changed the primary");
        assert_eq!(
            listing(&mirror),
            primary,
            "{ctx}: mirror differs after resync"
        );
        check_read_data(&f.env, &mirror, &ctx);
        audit(&f.env, &mirror, &ctx);
        t.checks += 2;
        assert_eq!(snapshot_ids(&f.env, &mirror, &ctx), kept, "{ctx}");
        for id in &kept {
            f.restores_exactly(&mirror, id, &mut t, &ctx);
        }
        f.unlock(&ctx);
    }
    t.report(
        "sync",
        &format!("{} writes and deletes / {:?}", span.writes, span.duration),
        started,
    );
}

/// Where an export goes in one iteration of the export test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dest {
    /// Over an earlier export (gens 1-2): copy gen 3, drop gen 1.
    Update,
    /// Into an empty directory.
    Fresh,
    /// A tar image in volumes.
    Image,
}

/// In declaration order: `dest as usize` indexes it.
const DESTS: [Dest; 3] = [Dest::Update, Dest::Fresh, Dest::Image];

#[test]
fn export_killed_at_random_instants_loses_nothing() {
    let started = Instant::now();
    let mut f = Fixture::new();
    f.backup(1);
    f.backup(2);
    let old = snapshot_ids(&f.env, &f.env.repo(), "fixture");
    let dir = f.env.path("export");
    let dir_template = f.env.path("export-template");
    let d = dir.to_str().unwrap().to_string();
    let select = ["--snapshots", "--keep-last 2"];
    let export: Vec<&str> = [&["export", "-q", d.as_str()][..], &select].concat();
    vault(&f.env, &export, 0, "fixture");
    fs::rename(&dir, &dir_template).unwrap();
    f.backup(3);
    // --keep-last 2 now chooses generations 2 and 3.
    let chosen: BTreeSet<String> = f
        .gen_of
        .iter()
        .filter(|(_, g)| **g >= 2)
        .map(|(id, _)| id.clone())
        .collect();
    let repo = f.env.repo();
    let image = f.env.path("images/vault.tar");
    fs::create_dir_all(image.parent().unwrap()).unwrap();
    let img = image.to_str().unwrap().to_string();
    let export_image: Vec<&str> = [
        &["export", "-q", "--image", &img, "--split", "8M"][..],
        &select,
    ]
    .concat();
    let unpacked = f.env.path("unpacked");
    let prepare = |dest: Dest| {
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(image.parent().unwrap());
        let _ = fs::remove_dir_all(&unpacked);
        fs::create_dir_all(image.parent().unwrap()).unwrap();
        if dest == Dest::Update {
            common::copy_tree(&dir_template, &dir);
        }
    };
    let args = |dest: Dest| {
        if dest == Dest::Image {
            &export_image
        } else {
            &export
        }
    };
    let spans: Vec<Span> = DESTS
        .iter()
        .map(|dest| {
            prepare(*dest);
            measure(&f.env, args(*dest))
        })
        .collect();
    let records = || walkdir(&repo.join("exports")).len();
    let mut rng = Rng::new(0xE4B0);
    let mut t = Tally::default();
    let mut per_dest = [0; DESTS.len()];
    let mut i = 0;
    while t.kills() < KILLS {
        i += 1;
        assert!(i < 3 * KILLS, "too many runs finished before their timer");
        let dest = DESTS[i % DESTS.len()];
        let span = spans[dest as usize];
        // An image is written outside the storage layer: only the lock and the export
        // record count as writes, so the timer does most of the work there.
        let kill = draw(&mut rng, span, if dest == Dest::Image { 20 } else { 50 });
        let ctx = format!("export, iteration {i}, {dest:?}, {kill:?}");
        prepare(dest);
        let records_before = records();
        if !run_killed(
            cmd(&f.env).args(args(dest)),
            kill,
            &f.env.path("op.log"),
            &ctx,
        ) {
            t.finished_first += 1;
            continue;
        }
        t.killed(kill);
        per_dest[dest as usize] += 1;
        let recorded = records() > records_before;
        if dest == Dest::Image {
            // Only a complete image carries the first volume's final name.
            let first = PathBuf::from(format!("{img}.000"));
            if first.exists() {
                vault(&f.env, &["export", "-q", "--verify-image", &img], 0, &ctx);
                t.checks += 1;
            } else {
                assert!(!recorded, "{ctx}: an export record for a missing image");
                vault(&f.env, &["export", "-q", "--verify-image", &img], 1, &ctx);
            }
            vault(&f.env, &export_image, 0, &ctx);
            vault(&f.env, &["export", "-q", "--verify-image", &img], 0, &ctx);
            t.checks += 1;
            let leftovers: Vec<PathBuf> = walkdir(image.parent().unwrap())
                .into_iter()
                .filter(|p| p.to_string_lossy().ends_with(".vault-partial"))
                .collect();
            assert!(leftovers.is_empty(), "{ctx}: {leftovers:?}");
            fs::create_dir_all(&unpacked).unwrap();
            let script = format!(
                "cat {img}.[0-9][0-9][0-9] | tar -x -C {}",
                unpacked.display()
            );
            let ok = Command::new("sh").args(["-c", &script]).status().unwrap();
            assert!(ok.success(), "{ctx}: unpacking the image");
            check_image_dir(&f, &unpacked, &chosen, &mut t, &ctx);
            f.unlock(&ctx);
            continue;
        }
        // A MANIFEST, or an export record, only for a complete export.
        if dir.join("MANIFEST").exists() {
            assert!(sha256sum_ok(&dir), "{ctx}: the MANIFEST lies");
        } else {
            assert!(!recorded, "{ctx}: an export record without a MANIFEST");
        }
        if dir.join("config").exists() {
            check_read_data(&f.env, &dir, &ctx);
            t.checks += 1;
            let held = snapshot_ids(&f.env, &dir, &ctx);
            let allowed: BTreeSet<String> = if dest == Dest::Update {
                old.union(&chosen).cloned().collect()
            } else {
                chosen.clone()
            };
            assert!(held.is_subset(&allowed), "{ctx}: {held:?}");
        } else {
            // Before a first export's config DIR is no repository at all.
            assert_eq!(dest, Dest::Fresh, "{ctx}: the export lost its config");
            assert!(!dir.join("MANIFEST").exists(), "{ctx}");
            vault(&f.env, &["check", "--repo", &d], 10, &ctx);
        }
        vault(&f.env, &export, 0, &ctx);
        assert!(records() > records_before, "{ctx}: no export record");
        assert!(sha256sum_ok(&dir), "{ctx}: MANIFEST after the rerun");
        check_image_dir(&f, &dir, &chosen, &mut t, &ctx);
        f.unlock(&ctx);
    }
    let kinds: Vec<String> = DESTS
        .iter()
        .map(|d| {
            let s = spans[*d as usize];
            let n = per_dest[*d as usize];
            format!("{d:?}: {n} kills, {} writes / {:?}", s.writes, s.duration)
        })
        .collect();
    t.report("export", &kinds.join("; "), started);
}

/// A finished export (a directory, or an unpacked image): check, audit, exactly the
/// chosen snapshots, each byte-identical.
fn check_image_dir(f: &Fixture, dir: &Path, chosen: &BTreeSet<String>, t: &mut Tally, ctx: &str) {
    check_read_data(&f.env, dir, ctx);
    audit(&f.env, dir, ctx);
    t.checks += 2;
    assert_eq!(&snapshot_ids(&f.env, dir, ctx), chosen, "{ctx}");
    for id in chosen {
        f.restores_exactly(dir, id, t, ctx);
    }
}

/// Runs `cmd` and SIGKILLs it the moment `path` exists; true when it was caught there
/// (rather than finishing first).
fn kill_when_exists(cmd: &mut Command, path: &Path) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if path.exists() {
            let _ = child.kill();
            return child.wait().unwrap().signal() == Some(9);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            return false;
        }
    }
}

/// Regressions: an export killed while its MANIFEST temporary existed made the next
/// export list that temporary in its MANIFEST (gone by then, so `sha256sum -c` failed);
/// an image killed between renaming its volumes could leave a first volume under its
/// final name beside unrenamed others.
#[test]
fn export_killed_while_finishing_leaves_nothing_that_looks_complete() {
    let mut f = Fixture::new();
    f.backup(1);
    let dir = f.env.path("export");
    let d = dir.to_str().unwrap().to_string();
    let mut caught = 0;
    for attempt in 0..30 {
        let ctx = format!("manifest, attempt {attempt}");
        let _ = fs::remove_dir_all(&dir);
        if !kill_when_exists(
            cmd(&f.env).args(["export", "-q", &d]),
            &dir.join("MANIFEST.vault-tmp"),
        ) {
            continue;
        }
        caught += 1;
        assert!(!dir.join("MANIFEST").exists(), "{ctx}");
        vault(&f.env, &["export", "-q", &d], 0, &ctx);
        assert!(
            sha256sum_ok(&dir),
            "{ctx}: the MANIFEST lists what is not there"
        );
        if caught == 3 {
            break;
        }
    }
    assert!(caught > 0, "never killed while MANIFEST.vault-tmp existed");

    let images = f.env.path("images");
    let img = images.join("vault.tar");
    let i = img.to_str().unwrap().to_string();
    let mut caught_image = 0;
    for attempt in 0..30 {
        let ctx = format!("image, attempt {attempt}");
        let _ = fs::remove_dir_all(&images);
        fs::create_dir_all(&images).unwrap();
        // The first volume under its final name: the image must be whole by then.
        let first = PathBuf::from(format!("{i}.000"));
        if !kill_when_exists(
            cmd(&f.env).args(["export", "-q", "--image", &i, "--split", "1M"]),
            &first,
        ) {
            continue;
        }
        caught_image += 1;
        vault(&f.env, &["export", "-q", "--verify-image", &i], 0, &ctx);
        if caught_image == 3 {
            break;
        }
    }
    assert!(caught_image > 0, "never killed during the volume renames");
    eprintln!(
        "crash export finish: {caught} kills inside the MANIFEST write, {caught_image} inside the volume renames"
    );
}

/// One host's source in round `r`: a file every host shares (so concurrent backups
/// store the same blobs), one of its own per round, a small one.
fn write_host(src: &Path, host: u64, r: u64) -> Tree {
    let _ = fs::remove_dir_all(src);
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("common"), bytes(1, 512 << 10)).unwrap();
    fs::write(src.join("own"), bytes(10_000 * host + r, 512 << 10)).unwrap();
    fs::write(src.join("d/small"), format!("host {host} round {r}\n")).unwrap();
    read_tree(src)
}

#[test]
fn four_hosts_back_up_while_forget_and_prune_run() {
    const HOSTS: u64 = 4;
    let started = Instant::now();
    let f = Fixture::new();
    let repo = f.env.repo();
    let srcs: Vec<PathBuf> = (0..HOSTS)
        .map(|h| f.env.path(&format!("host{h}")))
        .collect();
    // Snapshot id -> (host, tree).
    let mut expected: BTreeMap<String, (u64, Tree)> = BTreeMap::new();
    let mut oldest = BTreeSet::new();
    // Two old snapshots per host, so `forget --keep-last 1` always has one to remove.
    for r in 0..2 {
        for h in 0..HOSTS {
            let tree = write_host(&srcs[h as usize], h, r);
            let host = format!("host{h}");
            let src = srcs[h as usize].to_str().unwrap();
            let id = backup_id(&f.env, &["backup", "-q", "--host", &host, src], "setup");
            if r == 0 {
                oldest.insert(id.clone());
            }
            expected.insert(id, (h, tree));
        }
    }
    let mut rng = Rng::new(0xC0C0);
    let mut t = Tally::default();
    let (mut locked, mut waited) = (0, 0);
    // Rounds 2..=4 wait for locks as a nightly job would (--lock-wait); round 5 does not,
    // where the designed outcome is exit 11 for whoever meets a conflicting live lock.
    for r in 2..=5u64 {
        let wait = r < 5;
        let ctx = format!("round {r}");
        let trees: Vec<Tree> = (0..HOSTS)
            .map(|h| write_host(&srcs[h as usize], h, r))
            .collect();
        let mut jobs: Vec<Vec<String>> = (0..HOSTS)
            .map(|h| {
                let src = srcs[h as usize].to_str().unwrap();
                ["--json", "backup", "-q", "--host", &format!("host{h}"), src]
                    .map(String::from)
                    .to_vec()
            })
            .collect();
        jobs.push(
            ["forget", "-q", "--keep-last", "1", "--prune"]
                .map(String::from)
                .to_vec(),
        );
        if wait {
            for j in &mut jobs {
                j.splice(0..0, ["--lock-wait".to_string(), "2m".to_string()]);
            }
        }
        // All five start within 300 ms of each other (at once in the last round).
        let outs: Vec<std::process::Output> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|args| {
                    let jitter = Duration::from_millis(if wait { rng.below(300) } else { 0 });
                    let mut c = cmd(&f.env);
                    c.args(args);
                    s.spawn(move || {
                        std::thread::sleep(jitter);
                        let start = Instant::now();
                        (c.output().unwrap(), start.elapsed())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    let (out, took) = h.join().unwrap();
                    // --lock-wait retries every 2 s: a job that took longer waited.
                    if took >= Duration::from_secs(2) {
                        waited += 1;
                    }
                    out
                })
                .collect()
        });
        for (h, out) in outs.iter().enumerate() {
            let code = out.status.code();
            let err = String::from_utf8_lossy(&out.stderr);
            if !wait && code == Some(11) {
                assert!(err.contains("locked"), "{ctx}: job {h}: {err}");
                locked += 1;
                continue;
            }
            assert_eq!(code, Some(0), "{ctx}: job {h} ({:?}): {err}", jobs[h]);
            if (h as u64) < HOSTS {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let id = v["snapshot"].as_str().unwrap().to_string();
                expected.insert(id, (h as u64, trees[h].clone()));
            }
        }
        assert_eq!(locks(&repo), 0, "{ctx}: a lock outlived its process");
        check_read_data(&f.env, &repo, &ctx);
        t.checks += 1;
        let ids = snapshot_ids(&f.env, &repo, &ctx);
        // Every backup that exited 0 is there, whatever order the five ran in.
        for (h, out) in outs.iter().take(HOSTS as usize).enumerate() {
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let id = v["snapshot"].as_str().unwrap();
                assert!(ids.contains(id), "{ctx}: host{h}'s snapshot is gone");
            }
        }
        if r == 2 {
            assert!(
                ids.is_disjoint(&oldest),
                "{ctx}: forget removed nothing old"
            );
        }
        for id in &ids {
            let (h, tree) = expected
                .get(id)
                .unwrap_or_else(|| panic!("{ctx}: snapshot {id} from no known backup"));
            f.restores_tree(&repo, id, &srcs[*h as usize], tree, &mut t, &ctx);
        }
    }
    eprintln!(
        "concurrency: 4 rounds of {HOSTS} backups and a forget --prune at once ({waited} jobs waited for a lock, {locked} exits 11 in the round without --lock-wait); \
         {} checks passed, {} snapshots restored, {} bytes compared, bytes lost = {}; {:.1}s",
        t.checks,
        t.restored,
        t.compared,
        t.lost,
        started.elapsed().as_secs_f64()
    );
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
