//! `vault copy --from`: snapshots of a repository with another key and another chunker,
//! re-encrypted into this one, byte for byte, resumable, and nothing written on bad input.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const SOURCE_PASSWORD: &str = "the source's own password";

/// The source repository, beside the test's own (`repo`), and how to reach it.
struct Source {
    repo: PathBuf,
    password_file: PathBuf,
}

impl Source {
    fn new(env: &Env, extra: &[&str]) -> Source {
        let s = Source {
            repo: env.path("source-repo"),
            password_file: env.path("source-password"),
        };
        fs::write(&s.password_file, format!("{SOURCE_PASSWORD}\n")).unwrap();
        let mut a = vec!["init"];
        a.extend_from_slice(extra);
        assert_ok(&s.cmd(env).args(&a).output().unwrap());
        s
    }

    /// vault on the source repository, with its own password.
    fn cmd(&self, env: &Env) -> Command {
        let mut c = env.cmd();
        c.env("VAULT_REPOSITORY", &self.repo)
            .env("VAULT_PASSWORD", SOURCE_PASSWORD);
        c
    }

    fn ok(&self, env: &Env, args: &[&str]) -> String {
        let out = self.cmd(env).args(args).output().unwrap();
        assert_ok(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn snapshots(&self, env: &Env) -> Vec<serde_json::Value> {
        json_list(&self.ok(env, &["--json", "snapshots"]))
    }

    /// `vault copy` into the test's repository, the source's password from its file.
    fn copy(&self, env: &Env, extra: &[&str]) -> Output {
        let mut c = env.cmd();
        c.arg("copy")
            .arg("--from")
            .arg(&self.repo)
            .arg("--from-password-file")
            .arg(&self.password_file)
            .args(extra);
        c.output().unwrap()
    }

    fn copy_json(&self, env: &Env, extra: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(extra);
        let out = self.copy(env, &a);
        assert_ok(&out);
        serde_json::from_slice(&out.stdout).expect("copy --json prints JSON")
    }
}

fn json_list(s: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(s)
        .expect("JSON")
        .as_array()
        .expect("a list")
        .clone()
}

/// A tree with what a copy must carry over: sizes across chunk boundaries, a sparse file,
/// an empty file, a symlink, a hard link, an xattr, odd modes and a name that is not
/// UTF-8.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::write(root.join("big.bin"), bytes(1, 6 << 20)).unwrap();
    fs::write(root.join("sub/small.txt"), b"small and plain\n").unwrap();
    fs::write(root.join("sub/deeper/mid.bin"), bytes(2, 300_000)).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join(os(b"caf\xe9.txt")), b"latin-1 name").unwrap();
    let sparse = fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    {
        use std::os::unix::fs::FileExt;
        sparse.write_all_at(&bytes(3, 100_000), 20 << 20).unwrap();
    }
    symlink("sub/small.txt", root.join("link")).unwrap();
    fs::hard_link(root.join("sub/small.txt"), root.join("hard")).unwrap();
    set_xattr(&root.join("big.bin"), "user.note", b"kept");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        root.join("sub/small.txt"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
}

fn restore(cmd: &mut Command, id: &str, target: &Path) {
    cmd.args(["restore", id, "--target"])
        .arg(target)
        .arg("--verify");
    assert_ok(&cmd.output().unwrap());
}

/// Two snapshots copied: each restores from the copy exactly as from the source, with
/// the source's time, host, paths and tags, and the second's parent is the first's copy.
/// Nothing the source stored is in the copy's packs as it was (another key), and running
/// the copy again copies nothing.
#[test]
fn snapshots_copied_restore_as_from_the_source() {
    let env = Env::new();
    let src = Source::new(&env, &["--chunk-size", "64K"]);
    env.init(&[]);
    let data = env.path("data");
    make_tree(&data);
    let d = data.to_str().unwrap();
    src.ok(&env, &["backup", "--tag", "nightly", "--host", "laptop", d]);
    fs::write(data.join("sub/small.txt"), b"changed on the second night\n").unwrap();
    fs::write(data.join("added.bin"), bytes(4, 1 << 20)).unwrap();
    src.ok(&env, &["backup", "--tag", "nightly", "--host", "laptop", d]);
    let source_snaps = src.snapshots(&env);
    assert_eq!(source_snaps.len(), 2);

    let done = src.copy_json(&env, &[]);
    let copied = done["snapshots"].as_array().unwrap();
    assert_eq!(copied.len(), 2, "{done}");
    assert!(copied.iter().all(|c| c["already"] == false));
    assert!(done["bytes_added"].as_u64().unwrap() > 7 << 20, "{done}");

    let here = json_list(&env.ok(&["--json", "snapshots"]));
    assert_eq!(here.len(), 2);
    for (s, c) in source_snaps.iter().zip(copied) {
        let copy = here
            .iter()
            .find(|h| h["id"] == c["copy"])
            .expect("the copy is listed");
        for field in ["time", "host", "paths", "tags"] {
            assert_eq!(s[field], copy[field], "{field} differs");
        }
        let (sid, cid) = (s["id"].as_str().unwrap(), c["copy"].as_str().unwrap());
        let from_source = env.path(&format!("from-source-{sid}"));
        restore(&mut src.cmd(&env), sid, &from_source);
        let from_copy = env.path(&format!("from-copy-{cid}"));
        restore(&mut env.cmd(), cid, &from_copy);
        assert_eq!(
            snapshot_of(&Env::restored(&from_source, &data)),
            snapshot_of(&Env::restored(&from_copy, &data)),
            "snapshot {sid} and its copy {cid} restore differently"
        );
    }
    let second = here.iter().find(|h| h["id"] == copied[1]["copy"]).unwrap();
    assert_eq!(
        second["parent"], copied[0]["copy"],
        "the parent is the copy's"
    );
    env.ok(&["check", "--read-data"]);
    assert_no_stored_object_shared(&src.repo, &env.repo());

    let again = src.copy_json(&env, &[]);
    let all_here = again["snapshots"].as_array().unwrap();
    assert!(all_here.iter().all(|c| c["already"] == true), "{again}");
    assert_eq!(again["bytes_added"], 0);
    assert_eq!(json_list(&env.ok(&["--json", "snapshots"])).len(), 2);
}

/// No file under data/ of one repository has the same bytes as one of the other's: the
/// copy stored everything anew under its own key.
fn assert_no_stored_object_shared(a: &Path, b: &Path) {
    let digests = |root: &Path| -> std::collections::HashSet<String> {
        walkdir(&root.join("data"))
            .iter()
            .filter(|p| p.is_file())
            .map(|p| blake3::hash(&fs::read(p).unwrap()).to_hex().to_string())
            .collect()
    };
    let (da, db) = (digests(a), digests(b));
    assert!(!da.is_empty() && !db.is_empty());
    assert!(da.is_disjoint(&db), "a pack is in both repositories");
}

/// A copy killed after each of its first writes (SIGKILL, as `kill -9` there) leaves a
/// repository that checks clean and holds only whole snapshots; run again, it finishes,
/// and every snapshot restores byte for byte.
#[test]
fn a_copy_killed_at_any_write_resumes() {
    let env = Env::new();
    let src = Source::new(&env, &[]);
    env.init(&["--pack-size", "1M"]);
    let data = env.path("data");
    make_tree(&data);
    let d = data.to_str().unwrap();
    src.ok(&env, &["backup", d]);
    fs::write(data.join("night2.bin"), bytes(9, 3 << 20)).unwrap();
    src.ok(&env, &["backup", d]);

    let mut killed = 0;
    for n in 1..=12 {
        let mut c = env.cmd();
        c.env("VAULT_CRASH_AFTER_WRITES", n.to_string())
            .args(["copy", "--from"])
            .arg(&src.repo)
            .arg("--from-password-file")
            .arg(&src.password_file);
        let out = c.output().unwrap();
        if out.status.code().is_none() {
            killed += 1;
        }
        env.ok(&["check"]);
        let here = json_list(&env.ok(&["--json", "snapshots"]));
        for s in &here {
            let id = s["id"].as_str().unwrap();
            let t = env.path(&format!("kill-{n}-{id}"));
            restore(&mut env.cmd(), id, &t);
            fs::remove_dir_all(&t).unwrap();
        }
    }
    assert!(killed >= 8, "only {killed} of 12 runs were killed");
    let done = src.copy_json(&env, &[]);
    assert_eq!(done["snapshots"].as_array().unwrap().len(), 2, "{done}");
    let here = json_list(&env.ok(&["--json", "snapshots"]));
    assert_eq!(here.len(), 2, "one copy per source snapshot, never two");
    let latest = env.restore_verified("final");
    let from_source = env.path("from-source");
    restore(&mut src.cmd(&env), "latest", &from_source);
    assert_eq!(
        snapshot_of(&Env::restored(&from_source, &data)),
        snapshot_of(&Env::restored(&latest, &data))
    );
    env.ok(&["check", "--read-data"]);
}

/// Bad input writes nothing: a wrong source password, a missing source, the repository
/// itself as its source, and a dry run.
#[test]
fn bad_input_and_dry_runs_write_nothing() {
    let env = Env::new();
    let src = Source::new(&env, &[]);
    env.init(&[]);
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"one file").unwrap();
    src.ok(&env, &["backup", data.to_str().unwrap()]);
    let before = walkdir(&env.repo());

    let wrong = env.path("wrong");
    fs::write(&wrong, "not the password\n").unwrap();
    let out = env
        .cmd()
        .args(["copy", "--from"])
        .arg(&src.repo)
        .arg("--from-password-file")
        .arg(&wrong)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("not the password"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let out = env
        .cmd()
        .args(["copy", "--from"])
        .arg(env.path("nowhere"))
        .arg("--from-password-file")
        .arg(&src.password_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));

    // The repository as its own source (its password via VAULT_FROM_PASSWORD).
    let out = env
        .cmd()
        .env("VAULT_FROM_PASSWORD", PASSWORD)
        .args(["copy", "--from"])
        .arg(env.repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("this repository"));

    let out = src.copy(&env, &["--dry-run"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("would copy 1 snapshot"));
    let after = walkdir(&env.repo());
    let written: Vec<_> = after
        .iter()
        .filter(|p| !before.contains(p) && !p.starts_with(env.repo().join("locks")))
        .collect();
    assert!(written.is_empty(), "written: {written:?}");
    assert!(json_list(&env.ok(&["--json", "snapshots"])).is_empty());
}

/// The way out of an old format: the version-1 fixture (written by vault 0.1.0) copied
/// into a new format-4 repository restores as the fixture does.
#[test]
fn the_version_1_fixture_copies_into_a_format_4_repository() {
    let env = Env::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let old = env.path("old");
    copy_tree(&fixtures.join("repo-v1"), &old);
    env.init(&["--format-version", "4"]);
    let out = env
        .cmd()
        .args([
            "--json", "copy", "--host", "fixture", "--tag", "v1", "--from",
        ])
        .arg(&old)
        .arg("--from-password-file")
        .arg(fixtures.join("repo-v1.password"))
        .output()
        .unwrap();
    assert_ok(&out);
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let copy = done["snapshots"][0]["copy"].as_str().expect("one copy");
    let target = env.path("r");
    restore(&mut env.cmd(), copy, &target);
    assert_fixture_restored(&target.join("tmp/vault-fixture-v1"));
}

/// On a terminal a copy shows how far it has come, as a percentage with an ETA (reads
/// paced here, since progress counts the bytes read from the source).
#[test]
fn a_copy_shows_percent_and_eta_on_a_terminal() {
    let env = Env::new();
    let src = Source::new(&env, &[]);
    env.init(&[]);
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    for i in 0..8 {
        fs::write(data.join(format!("f{i}")), bytes(40 + i, 1 << 20)).unwrap();
    }
    src.ok(&env, &["backup", data.to_str().unwrap()]);
    let pw = src.password_file.to_str().unwrap().to_string();
    let from = src.repo.to_str().unwrap().to_string();
    let args = ["--limit-download", "2M", "copy", "--from", &from];
    let Some(shown) = on_terminal(&env, &args, &[("VAULT_FROM_PASSWORD_FILE", &pw)]) else {
        return;
    };
    assert!(drew_percent_and_eta(&shown), "{shown:?}");
    assert!(shown.contains("copied 1 snapshot(s)"), "{shown:?}");
}

/// Into a format-4 repository with only a backup-role key: the laptop brings its own
/// host's history over (sealed as its backups are, so the key cannot read it back), and
/// another host's snapshot is refused with exit 14, its copy not written.
#[test]
fn a_backup_role_key_copies_its_own_hosts_history_only() {
    let env = Env::new();
    let src = Source::new(&env, &[]);
    env.init(&["--format-version", "4"]);
    let pw = env.add_backup_key("laptop", "the laptop's backup key");
    let data = env.path("data");
    make_tree(&data);
    let d = data.to_str().unwrap();
    src.ok(&env, &["backup", "--host", "laptop", d]);
    src.ok(&env, &["backup", "--host", "server", d]);
    let as_laptop = |extra: &[&str]| {
        let mut c = env.cmd();
        c.env_remove("VAULT_PASSWORD")
            .env("VAULT_PASSWORD_FILE", &pw)
            .env("VAULT_FROM_PASSWORD_FILE", &src.password_file)
            .args(["copy", "--from"])
            .arg(&src.repo)
            .args(extra);
        c.output().unwrap()
    };
    assert_ok(&as_laptop(&["--host", "laptop"]));
    let out = as_laptop(&["--host", "server"]);
    assert_eq!(out.status.code(), Some(14), "{out:?}");
    // The full key sees one snapshot, the laptop's, and it restores as the source's.
    let here = json_list(&env.ok(&["--json", "snapshots"]));
    assert_eq!(here.len(), 1, "{here:?}");
    assert_eq!(here[0]["host"], "laptop");
    let restored = env.restore_verified("r");
    let from_source = env.path("from-source");
    let snaps = src.snapshots(&env);
    let laptop = snaps.iter().find(|s| s["host"] == "laptop").unwrap();
    restore(
        &mut src.cmd(&env),
        laptop["id"].as_str().unwrap(),
        &from_source,
    );
    assert_eq!(
        snapshot_of(&Env::restored(&from_source, &data)),
        snapshot_of(&Env::restored(&restored, &data))
    );
}

/// Flips a byte in the middle of every data pack under `repo`.
fn damage_packs(repo: &Path) {
    for p in walkdir(&repo.join("data")).iter().filter(|p| p.is_file()) {
        let mut b = fs::read(p).unwrap();
        let at = b.len() / 2;
        b[at] ^= 0x40;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(p, b).unwrap();
    }
}

/// The source is read as restore reads it: a damaged pack is read from its mirror, and
/// the copy is whole. Damaged in the mirror too, the files it held are left out with a
/// warning naming them and exit code 3, and the rest is copied.
#[test]
fn a_damaged_source_pack_is_read_from_its_mirror() {
    let env = Env::new();
    let src = Source::new(&env, &[]);
    env.init(&[]);
    let mirror = env.path("source-mirror");
    let m = mirror.to_str().unwrap();
    src.ok(&env, &["mirror", "add", "offsite", m, "--no-sync"]);
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("big"), bytes(21, 3 << 20)).unwrap();
    src.ok(&env, &["backup", data.to_str().unwrap()]);
    src.ok(&env, &["sync"]);
    damage_packs(&src.repo);

    let done = src.copy_json(&env, &[]);
    assert_eq!(done["errors"], 0, "{done}");
    let restored = env.restore_verified("r");
    assert_eq!(
        fs::read(Env::restored(&restored, &data).join("big")).unwrap(),
        bytes(21, 3 << 20)
    );

    damage_packs(&mirror);
    let other = env.path("other-repo");
    let other_repo = other.to_str().unwrap();
    env.ok(&["--repo", other_repo, "init"]);
    let out = src.copy(&env, &["--repo", other_repo]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("big: cannot read from the source"), "{err}");
}
