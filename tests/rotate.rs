//! `vault key rotate` (format 5): afterwards the old master key, and every key file, raw
//! key and password that held it, opens nothing the repository holds; the new key
//! restores every snapshot byte for byte; blob ids do not change. A rotation killed at
//! any storage write finishes when run again.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::{Env, PASSWORD, bytes, copy_tree, files_with_bytes, snapshot_of, walkdir};
use vault::format::Id;
use vault::format::crypto::{Keys, MasterKey};
use vault::format::index::IndexFile;
use vault::format::keyfile::KeyFile;
use vault::format::object::{self, Kind};
use vault::format::pack;
use vault::format::roles::RoleKeys;
use vault::repo::repository::RawKeyFile;

const NEW_PASSWORD: &str = "the password after the rotation";
const SECOND_PASSWORD: &str = "a colleague's password";
/// The exit code of a password or key that opens nothing (README "Exit codes").
const WRONG_KEY: i32 = 12;
/// Of a usage error.
const USAGE: i32 = 2;

/// A repository of `format` with three snapshots (the first re-tagged, one forgotten),
/// a second full key, and in format 4 a backup-role key; the source as each kept
/// snapshot saw it.
struct Setup {
    env: Env,
    src: PathBuf,
    states: Vec<std::collections::BTreeMap<Vec<u8>, String>>,
}

fn setup(format: &str) -> Setup {
    let env = Env::new();
    env.init(&["--format-version", format, "--pack-size", "256K"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("docs")).unwrap();
    let mut states = Vec::new();
    for round in 0..4u64 {
        fs::write(src.join("big"), bytes(round, 600_000)).unwrap();
        for i in 0..20 {
            fs::write(
                src.join(format!("docs/{i}.txt")),
                format!("note {i} of round {round}\n").repeat(50),
            )
            .unwrap();
        }
        env.ok(&["backup", src.to_str().unwrap(), "-q"]);
        states.push(snapshot_of(&src));
    }
    env.ok(&["tag", "--add", "keep", &first_id(&env)]);
    // The second snapshot goes: a forget record to carry over.
    let ids = snapshot_ids(&env);
    env.ok(&["forget", &ids[1]]);
    states.remove(1);
    let pw = env.path("second-password");
    fs::write(&pw, SECOND_PASSWORD).unwrap();
    env.ok(&[
        "key",
        "add",
        "--label",
        "colleague",
        "--new-password-file",
        pw.to_str().unwrap(),
    ]);
    if format == "4" {
        env.add_backup_key("laptop", "laptop password");
    }
    let mirror = env.path("mirror");
    env.ok(&["mirror", "add", "offsite", mirror.to_str().unwrap(), "-q"]);
    fs::write(env.path("new-password"), NEW_PASSWORD).unwrap();
    Setup { env, src, states }
}

fn snapshot_ids(env: &Env) -> Vec<String> {
    ids_with(env, PASSWORD)
}

/// The snapshots' ids, oldest first, listed with `password`.
fn ids_with(env: &Env, password: &str) -> Vec<String> {
    let out = run_with(env, password, &["--json", "snapshots"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn first_id(env: &Env) -> String {
    snapshot_ids(env)[0].clone()
}

/// `vault` with `password` (instead of the test's own) on the same repository.
fn run_with(env: &Env, password: &str, args: &[&str]) -> std::process::Output {
    env.cmd()
        .env("VAULT_PASSWORD", password)
        .env("VAULT_NEW_PASSWORD_FILE", env.path("new-password"))
        .args(args)
        .output()
        .unwrap()
}

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The master key a raw key export of the repository holds now, with `password`.
fn master_now(env: &Env, password: &str) -> MasterKey {
    let out = run_with(env, password, &["key", "export", "--raw"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let raw: RawKeyFile = serde_json::from_slice(&out.stdout).unwrap();
    raw.master().unwrap()
}

/// Every stored object's path, and the files of `keys/`.
fn objects(repo: &Path) -> Vec<PathBuf> {
    walkdir(repo)
        .into_iter()
        .filter(|p| p.is_file())
        .filter(|p| !["locks", "tmp"].iter().any(|d| p.starts_with(repo.join(d))))
        .collect()
}

/// Whether `keys` open the object at `path` (whichever kind its directory holds).
fn opens(keys: &Keys, repo: &Path, path: &Path) -> bool {
    let b = fs::read(path).unwrap();
    let dir = path
        .strip_prefix(repo)
        .unwrap()
        .components()
        .next()
        .unwrap();
    let dir = dir.as_os_str().to_str().unwrap();
    let kind = match dir {
        "config" => return object::open_checksummed(keys, Kind::Config, &b).is_ok(),
        "keys" => return KeyFile::parse(&b).unwrap().meta(keys).is_ok(),
        "data" => {
            let n = b.len();
            let hlen = pack::parse_trailer(&b[n - 8..]).unwrap() as usize;
            let start = n - 8 - hlen;
            return pack::open_header(keys, &b[start..n - 8], start as u64).is_ok();
        }
        "index" => return IndexFile::open(keys, &b).is_ok(),
        "manifests" => return true, // plaintext by design (§8): names and sizes only
        "snapshots" => Kind::Snapshot,
        "forgotten" => Kind::Forget,
        "exports" => Kind::Export,
        "mirrors" => Kind::Mirror,
        "marks" => Kind::Mark,
        "revivals" => Kind::Revival,
        "deletions" => Kind::Deletion,
        "format" => Kind::Format,
        other => panic!("unexpected object {other}: {}", path.display()),
    };
    object::open_authenticated(keys, kind, &b).is_ok()
}

/// Every object of the repository at `root`, each of which opens with `new` and none
/// with `old` (manifests are plaintext by design, §8).
fn only_the_new_key_opens(root: &Path, old: &Keys, new: &Keys, format: &str) -> Vec<PathBuf> {
    let all = objects(root);
    for p in &all {
        let plain = p.starts_with(root.join("manifests"));
        let at = p.display();
        assert!(
            plain || !opens(old, root, p),
            "format {format}: {at} opens with the old key"
        );
        assert!(
            opens(new, root, p),
            "format {format}: {at} does not open with the new key"
        );
    }
    all
}

fn full_keys(m: &MasterKey, format: &str) -> Keys {
    let keys = m.derive();
    if format == "3" {
        keys
    } else {
        keys.with_roles(RoleKeys::full(m, "h"))
    }
}

/// Every blob id the index lists.
fn blob_ids(repo: &Path, keys: &Keys) -> BTreeSet<Id> {
    walkdir(&repo.join("index"))
        .into_iter()
        .filter(|p| p.is_file())
        .flat_map(|p| IndexFile::open(keys, &fs::read(p).unwrap()).unwrap().packs)
        .flat_map(|p| p.blobs.into_iter().map(|b| b.id))
        .collect()
}

/// Restores every snapshot, oldest first, and compares each with the source it saw.
fn every_snapshot_restores(s: &Setup, password: &str, tag: &str) {
    let ids = ids_with(&s.env, password);
    assert_eq!(ids.len(), s.states.len(), "{tag}: snapshots {ids:?}");
    for (i, (id, want)) in ids.iter().zip(&s.states).enumerate() {
        let target = s.env.path(&format!("restored-{tag}-{i}"));
        let out = run_with(
            &s.env,
            password,
            &["restore", id, "--target", target.to_str().unwrap()],
        );
        assert_eq!(code(&out), Some(0), "{tag}: restore {id}: {}", stderr(&out));
        assert_eq!(
            &snapshot_of(&Env::restored(&target, &s.src)),
            want,
            "{tag}: snapshot {id}"
        );
    }
}

#[test]
fn after_a_rotation_the_old_key_opens_nothing_and_the_new_one_everything() {
    for format in ["3", "4"] {
        let s = setup(format);
        let env = &s.env;
        let repo = env.repo();
        let old = master_now(env, PASSWORD);
        let old_keys = full_keys(&old, format);
        let ids_before = blob_ids(&repo, &old_keys);
        let key_files = files_with_bytes(&repo.join("keys"));
        fs::write(
            env.path("old-raw"),
            serde_json::to_vec(&vault::repo::repository::RawKeyFile::of(&old, "")).unwrap(),
        )
        .unwrap();

        let old_ids = snapshot_ids(env);
        // Other key files exist: refused without --yes, and nothing written.
        let before = objects(&repo);
        let out = run_with(env, PASSWORD, &["key", "rotate"]);
        assert_eq!(code(&out), Some(USAGE), "{}", stderr(&out));
        assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
        assert_eq!(
            objects(&repo),
            before,
            "format {format}: a refused rotation wrote"
        );

        let out = run_with(env, PASSWORD, &["key", "rotate", "--yes"]);
        assert_eq!(code(&out), Some(0), "format {format}: {}", stderr(&out));

        // Every old way in is refused with exit 12.
        for (what, pw) in [
            ("old password", PASSWORD),
            ("colleague", SECOND_PASSWORD),
            ("backup-role", "laptop password"),
        ] {
            let out = run_with(env, pw, &["snapshots"]);
            assert_eq!(
                code(&out),
                Some(WRONG_KEY),
                "format {format}: {what}: {}",
                stderr(&out)
            );
        }
        let out = env
            .cmd()
            .env_remove("VAULT_PASSWORD")
            .env("VAULT_KEY_FILE", env.path("old-raw"))
            .args(["snapshots"])
            .output()
            .unwrap();
        assert_eq!(
            code(&out),
            Some(WRONG_KEY),
            "format {format}: old raw key: {}",
            stderr(&out)
        );
        // A copy of an old key file put back opens it with its old password: exit 12, and
        // a message that says why.
        for (p, b) in &key_files {
            fs::write(p, b).unwrap();
        }
        let out = run_with(env, PASSWORD, &["snapshots"]);
        assert_eq!(
            code(&out),
            Some(WRONG_KEY),
            "format {format}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("key rotate"), "{}", stderr(&out));
        for (p, _) in &key_files {
            fs::remove_file(p).unwrap();
        }

        // The new password restores every snapshot as it was; check reads all data.
        every_snapshot_restores(&s, NEW_PASSWORD, &format!("v{format}"));
        let out = run_with(env, NEW_PASSWORD, &["check", "--read-data"]);
        assert_eq!(code(&out), Some(0), "format {format}: {}", stderr(&out));

        // An id kept from before the rotation still names its snapshot.
        let new_ids = ids_with(env, NEW_PASSWORD);
        assert!(old_ids.iter().all(|o| !new_ids.contains(o)), "ids change");
        let target = env.path(&format!("by-old-id-v{format}"));
        let old_first = &old_ids[0][..8];
        let out = run_with(
            env,
            NEW_PASSWORD,
            &["restore", old_first, "--target", target.to_str().unwrap()],
        );
        assert_eq!(
            code(&out),
            Some(0),
            "format {format}: restore {old_first}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(&format!("written again as {}", &new_ids[0][..8])),
            "{}",
            stderr(&out)
        );
        assert_eq!(snapshot_of(&Env::restored(&target, &s.src)), s.states[0]);

        // No stored object opens with the old key; each opens with the new one.
        let new = master_now(env, NEW_PASSWORD);
        assert!(new.content_bytes().is_some());
        let new_keys = full_keys(&new, "4");
        let all = only_the_new_key_opens(&repo, &old_keys, &new_keys, format);
        assert!(all.len() > 10, "{all:?}");
        // Nothing was chunked again: the same blobs, under the same ids.
        assert_eq!(blob_ids(&repo, &new_keys), ids_before, "format {format}");

        // Sync carries it to the mirror: the new config, the old objects and key files
        // gone, nothing there that the old key opens.
        let out = run_with(env, NEW_PASSWORD, &["sync"]);
        assert_eq!(
            code(&out),
            Some(0),
            "format {format}: sync: {}",
            stderr(&out)
        );
        let mirror = env.path("mirror");
        let on_mirror = only_the_new_key_opens(&mirror, &old_keys, &new_keys, format);
        let rel = |p: &PathBuf, root: &Path| p.strip_prefix(root).unwrap().to_path_buf();
        let here: BTreeSet<PathBuf> = objects(&repo).iter().map(|p| rel(p, &repo)).collect();
        let there: BTreeSet<PathBuf> = on_mirror.iter().map(|p| rel(p, &mirror)).collect();
        assert_eq!(
            here, there,
            "format {format}: the mirror holds what the primary holds"
        );
        let target = env.path(&format!("from-mirror-v{format}"));
        let out = run_with(
            env,
            NEW_PASSWORD,
            &[
                "--repo",
                mirror.to_str().unwrap(),
                "restore",
                "latest",
                "--target",
                target.to_str().unwrap(),
            ],
        );
        assert_eq!(code(&out), Some(0), "format {format}: {}", stderr(&out));
        assert_eq!(
            snapshot_of(&Env::restored(&target, &s.src)),
            *s.states.last().unwrap()
        );
        let out = run_with(
            env,
            PASSWORD,
            &["--repo", mirror.to_str().unwrap(), "snapshots"],
        );
        assert_eq!(
            code(&out),
            Some(WRONG_KEY),
            "format {format}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_rotation_killed_at_any_write_finishes_when_run_again() {
    let s = setup("3");
    let all = std::env::var_os("VAULT_TEST_ALL_KILL_POINTS").is_some();
    let base = s.env.path("base");
    copy_tree(&s.env.repo(), &base);
    let mut n = 1;
    loop {
        // Every write count up to 12, then every 5th (all with VAULT_TEST_ALL_KILL_POINTS).
        if !all && n > 12 && n % 5 != 0 {
            n += 1;
            continue;
        }
        let repo = s.env.repo();
        fs::remove_dir_all(&repo).unwrap();
        copy_tree(&base, &repo);
        let out = s
            .env
            .cmd()
            .env("VAULT_NEW_PASSWORD_FILE", s.env.path("new-password"))
            .env("VAULT_CRASH_AFTER_WRITES", n.to_string())
            .args(["key", "rotate", "--yes"])
            .output()
            .unwrap();
        if code(&out) == Some(0) {
            assert!(n > 20, "a rotation made only {n} writes");
            break;
        }
        assert_eq!(
            out.status.code(),
            None,
            "killed after write {n}: {}",
            stderr(&out)
        );
        // Whichever password opens the repository now restores every snapshot.
        let opener = [PASSWORD, NEW_PASSWORD]
            .into_iter()
            .find(|pw| code(&run_with(&s.env, pw, &["snapshots"])) == Some(0))
            .unwrap_or_else(|| panic!("killed after write {n}: no password opens the repository"));
        every_snapshot_restores(&s, opener, &format!("kill{n}"));
        let out = run_with(&s.env, opener, &["key", "rotate", "--yes"]);
        assert_eq!(
            code(&out),
            Some(0),
            "killed after write {n}, run again: {}",
            stderr(&out)
        );
        every_snapshot_restores(&s, NEW_PASSWORD, &format!("kill{n}-done"));
        let out = run_with(&s.env, NEW_PASSWORD, &["check", "--read-data"]);
        assert_eq!(
            code(&out),
            Some(0),
            "killed after write {n}: {}",
            stderr(&out)
        );
        assert_eq!(
            code(&run_with(&s.env, PASSWORD, &["snapshots"])),
            Some(WRONG_KEY),
            "killed after write {n}"
        );
        n += 1;
    }
}
