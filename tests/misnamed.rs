//! Objects whose stored bytes are another authentic object (a snapshot or index file
//! copied over another's name, swapped or forged by whoever can write the storage) and a
//! config whose repository id is a path. Every command but check, audit and repair must
//! refuse them, name the object and say what to run, and write nothing; check and audit
//! must report them; repair from an intact copy must fix them. Each case is run on a
//! machine with no cache of the repository (the spare machine of `vault verify`) and on
//! one whose cache holds the genuine objects.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Env, PASSWORD, bytes, copy_tree};
use vault::format::Id;
use vault::repo::{Backend, FileKind, Repository, Secret};

const WHAT_TO_RUN: &str = "stored bytes do not match its name (swapped or forged); run `vault check` and `vault repair --from MIRROR`";

/// A repository with two snapshots of `src` (the file `f` changed between them), each
/// backup writing its own index file; and an intact copy of it, `copy`, for repair.
struct Fixture {
    env: Env,
    src: PathBuf,
    copy: PathBuf,
    /// Oldest first.
    snapshots: Vec<Id>,
}

fn fixture() -> Fixture {
    let env = Env::new();
    env.init(&["--pack-size", "64K", "--chunk-size", "8K"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), bytes(1, 100_000)).unwrap();
    fs::write(src.join("g"), bytes(2, 30_000)).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    fs::write(src.join("f"), bytes(3, 120_000)).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let snapshots: Vec<Id> = env
        .json(&["snapshots"], 0)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Id::from_hex(s["id"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(snapshots.len(), 2);
    let copy = env.path("copy");
    copy_tree(&env.repo(), &copy);
    Fixture {
        env,
        src,
        copy,
        snapshots,
    }
}

/// Which cache a command runs with.
#[derive(Clone, Copy, Debug)]
enum Cache {
    /// A cache directory that has never seen the repository.
    Cold,
    /// The test's own cache, filled by reads of every object before the damage.
    Warm,
}

impl Fixture {
    fn run(&self, cache: Cache, args: &[&str]) -> Output {
        let mut c = self.env.cmd();
        if let Cache::Cold = cache {
            let fresh = self
                .env
                .path(&format!("cold-cache-{}", Id::random().short()));
            c.env("VAULT_CACHE_DIR", fresh);
        }
        c.args(args).output().unwrap()
    }

    /// Reads every snapshot, index file and tree into the test's cache.
    fn warm_cache(&self) {
        for id in &self.snapshots {
            self.env.ok(&["ls", &id.short()]);
        }
        let cached = |kind: &str| fs::read_dir(self.cache_dir().join(kind)).unwrap().count();
        assert_eq!(cached("snapshots"), 2, "both snapshots are cached");
        assert!(cached("index") >= 2, "the index files are cached");
    }

    fn cache_dir(&self) -> PathBuf {
        let dirs: Vec<PathBuf> = fs::read_dir(self.env.path("cache"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(dirs.len(), 1, "one repository's cache: {dirs:?}");
        dirs[0].clone()
    }

    fn object(&self, kind: FileKind, id: &Id) -> PathBuf {
        self.env.repo().join(kind.path(id))
    }

    /// Copies object `from`'s bytes over object `to` (of the same kind); they must differ
    /// in length, so that a cache holding `to` can tell.
    fn copy_over(&self, kind: FileKind, from: &Id, to: &Id) {
        let bytes = fs::read(self.object(kind, from)).unwrap();
        let old = fs::read(self.object(kind, to)).unwrap();
        assert_ne!(
            bytes.len(),
            old.len(),
            "the fixture's objects differ in length"
        );
        fs::write(self.object(kind, to), bytes).unwrap();
    }

    /// Every file of the repository with its bytes: what a refused command must leave.
    fn repo_state(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<(PathBuf, Vec<u8>)> = common::walkdir(&self.env.repo())
            .into_iter()
            .filter(|p| p.is_file() && !p.starts_with(self.env.repo().join("locks")))
            .map(|p| {
                let b = fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        v.sort();
        v
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command failed with exit 1, and its error is one line naming `what` and saying
/// what to run.
fn refused(out: &Output, what: &str, case: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{case} must be refused: {err}");
    let line = format!("vault: {what}: {WHAT_TO_RUN}");
    assert!(
        err.lines().any(|l| l == line),
        "{case}: the error must be the one line {line:?}, got: {err}"
    );
}

/// Every reading command is refused on the misnamed object `what` and writes nothing:
/// no restore target, no dumped bytes, no snapshot forgotten, no pack pruned.
fn every_reader_refuses(f: &Fixture, cache: Cache, what: &str, snapshot: &Id) {
    let before = f.repo_state();
    let file = f.src.join("f");
    let file = file.to_str().unwrap();
    for spec in ["latest".to_string(), snapshot.short()] {
        let target = f.env.path(&format!("restored-{cache:?}-{spec}"));
        let out = f.run(
            cache,
            &["restore", &spec, "--target", target.to_str().unwrap()],
        );
        refused(&out, what, &format!("{cache:?}: restore {spec}"));
        assert!(!target.exists(), "restore {spec} must write nothing");

        let out = f.run(cache, &["dump", &spec, file]);
        refused(&out, what, &format!("{cache:?}: dump {spec}"));
        assert!(out.stdout.is_empty(), "dump {spec} must write nothing");

        let out = f.run(cache, &["ls", &spec]);
        refused(&out, what, &format!("{cache:?}: ls {spec}"));
        assert!(out.stdout.is_empty(), "ls {spec} must list nothing");
    }
    let out = f.run(cache, &["forget", "--keep-last", "1"]);
    refused(&out, what, &format!("{cache:?}: forget"));
    let out = f.run(cache, &["prune"]);
    refused(&out, what, &format!("{cache:?}: prune"));
    let out = f.run(cache, &["forget", "--keep-last", "1", "--prune"]);
    refused(&out, what, &format!("{cache:?}: forget --prune"));
    assert!(
        f.repo_state() == before,
        "{cache:?}: a refused command changed the repository"
    );
}

/// check and audit report the object; repair from the intact copy brings it back, and
/// then the latest snapshot restores with the newest content.
fn reported_and_repaired(f: &Fixture, kind: &str, id: &Id) {
    let out = f.env.run(&["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "check must fail: {err}");
    assert!(
        err.lines()
            .any(|l| l.contains(&format!("{kind} {}", id.short()))
                && l.contains("swapped or forged")),
        "check must name {kind} {} as swapped or forged: {err}",
        id.short()
    );
    let out = f
        .env
        .cmd()
        .env_remove("VAULT_PASSWORD")
        .arg("audit")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "audit must fail: {err}");
    assert!(
        err.contains(&id.short()) && err.contains("does not match its name"),
        "audit must name {}: {err}",
        id.short()
    );

    f.env.ok(&["repair", "--from", f.copy.to_str().unwrap()]);
    f.env.ok(&["check"]);
    let target = f.env.path("restored-after-repair");
    f.env
        .ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let got = fs::read(Env::restored(&target, &f.src.join("f"))).unwrap();
    assert!(
        got == bytes(3, 120_000),
        "latest restores the newest content"
    );
}

/// The attack of the issue: the older snapshot's file copied over the newer one's name.
/// Before, `restore latest` gave the older content and exited 0 on a machine without the
/// cache, and prune would have dropped the newer snapshot's data.
fn older_snapshot_over_newer(cache: Cache) {
    let f = fixture();
    if let Cache::Warm = cache {
        f.warm_cache();
    }
    let (older, newer) = (f.snapshots[0], f.snapshots[1]);
    f.copy_over(FileKind::Snapshot, &older, &newer);
    let what = format!("snapshot {}", newer.short());
    every_reader_refuses(&f, cache, &what, &older);
    let out = f.run(cache, &["snapshots"]);
    refused(&out, &what, &format!("{cache:?}: snapshots"));
    reported_and_repaired(&f, "snapshot", &newer);
}

#[test]
fn older_snapshot_copied_over_newer_is_refused_without_cache() {
    older_snapshot_over_newer(Cache::Cold);
}

#[test]
fn older_snapshot_copied_over_newer_is_refused_with_warm_cache() {
    older_snapshot_over_newer(Cache::Warm);
}

/// One index file's bytes under another's name: the blobs the overwritten one listed
/// would come from pack headers, and its `supersedes` list would be lost.
fn index_over_index(cache: Cache) {
    let f = fixture();
    if let Cache::Warm = cache {
        f.warm_cache();
    }
    let mut index: Vec<(Id, u64)> = fs::read_dir(f.env.repo().join("index"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let id = Id::from_hex(e.file_name().to_str().unwrap()).unwrap();
            (id, e.metadata().unwrap().len())
        })
        .collect();
    index.sort_by_key(|(_, len)| *len);
    let (small, large) = (index[0].0, index[index.len() - 1].0);
    f.copy_over(FileKind::Index, &small, &large);
    let what = format!("index {}", large.short());
    every_reader_refuses(&f, cache, &what, &f.snapshots[1]);
    reported_and_repaired(&f, "index", &large);
}

#[test]
fn index_file_copied_over_another_is_refused_without_cache() {
    index_over_index(Cache::Cold);
}

#[test]
fn index_file_copied_over_another_is_refused_with_warm_cache() {
    index_over_index(Cache::Warm);
}

/// A mirror copy whose bytes do not match its name is as damaged as the primary's: reads
/// fall over only to a copy that hashes to the name, never to a misnamed one.
#[test]
fn reads_fall_over_only_to_a_mirror_copy_that_matches_its_name() {
    let f = fixture();
    let (older, newer) = (f.snapshots[0], f.snapshots[1]);
    let mirror = f.env.path("mirror");
    f.env
        .ok(&["mirror", "add", "offsite", mirror.to_str().unwrap()]);
    f.env.ok(&["sync", "-q"]);
    let on_mirror = mirror.join(FileKind::Snapshot.path(&newer));
    // The older snapshot's bytes under the newer one's name, here and on the mirror.
    f.copy_over(FileKind::Snapshot, &older, &newer);
    fs::copy(f.object(FileKind::Snapshot, &newer), &on_mirror).unwrap();
    let target = f.env.path("restored");
    let restore = ["restore", "latest", "--target", target.to_str().unwrap()];
    let out = f.run(Cache::Cold, &restore);
    refused(
        &out,
        &format!("snapshot {}", newer.short()),
        "restore with misnamed copies everywhere",
    );
    assert!(!target.exists());

    // An intact copy on the mirror is read instead, and restores the newer content.
    fs::copy(f.copy.join(FileKind::Snapshot.path(&newer)), &on_mirror).unwrap();
    let out = f.run(Cache::Cold, &restore);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let got = fs::read(Env::restored(&target, &f.src.join("f"))).unwrap();
    assert!(got == bytes(3, 120_000), "the mirror's intact copy is read");
}

/// Writes a config whose repository id is `id`, sealed with the repository's key (`repo`,
/// opened before any forgery): what a key holder can do.
fn forge_config_id(env: &Env, repo: &Repository, id: &str) {
    let mut config = repo.config.clone();
    config.id = id.to_string();
    fs::write(env.repo().join("config"), config.seal(&repo.keys)).unwrap();
}

/// Everything below `dir`, for telling whether anything was created there.
fn tree_of(dir: &Path) -> Vec<PathBuf> {
    let mut v = common::walkdir(dir);
    v.sort();
    v
}

/// A config whose id is a path (`../../x`, an absolute path) fails every command with a
/// clear error, and nothing is created outside the cache directory. Before, the id
/// became the cache directory's name: vault created (and cleaned) files there.
#[test]
fn a_forged_config_id_fails_every_command_and_creates_nothing() {
    let f = fixture();
    let env = &f.env;
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    // The cache two levels below the test directory: `../../x` lands in it, not in the
    // shared directory of all tests.
    let cache = env.path("home/cache");
    let absolute = outside.join("abs");
    let backend = Backend::open(env.repo().to_str().unwrap()).unwrap();
    let repo = Repository::open(backend, &Secret::Password(PASSWORD.into())).unwrap();
    for id in [
        "../../x".to_string(),
        absolute.to_str().unwrap().to_string(),
    ] {
        forge_config_id(env, &repo, &id);
        let before = tree_of(env.dir.path());
        let target = env.path("restored");
        let src = f.src.to_str().unwrap();
        let commands: [&[&str]; 9] = [
            &["snapshots"],
            &["ls", "latest"],
            &["restore", "latest", "--target", target.to_str().unwrap()],
            &["dump", "latest", "/f"],
            &["backup", "-q", src],
            &["check"],
            &["forget", "--keep-last", "1"],
            &["prune"],
            &["repair", "index"],
        ];
        for args in commands {
            let out = env
                .cmd()
                .env("VAULT_CACHE_DIR", &cache)
                .args(args)
                .output()
                .unwrap();
            let err = stderr(&out);
            assert_ne!(
                out.status.code(),
                Some(0),
                "{id}: {args:?} must fail: {err}"
            );
            assert!(
                err.contains("repository id is not 64 lowercase hex digits"),
                "{id}: {args:?} must say what is wrong: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{id}: {args:?}: one line: {err}");
        }
        let created: Vec<PathBuf> = tree_of(env.dir.path())
            .into_iter()
            .filter(|p| !before.contains(p) && !p.starts_with(&cache))
            .filter(|p| !p.starts_with(env.repo().join("locks")))
            .collect();
        assert!(
            created.is_empty(),
            "{id}: created outside the cache: {created:?}"
        );
        assert!(!env.path("x").exists() && !absolute.exists());
    }
}
