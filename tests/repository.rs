//! End-to-end: the repository's promises — the v1 fixture still restores, passwords and
//! keys, locks, partial backups, and crash safety.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use vault::format::Id;

/// Written once by vault 0.1.0 (format version 1) and never regenerated: every future
/// version must still open and restore it.
#[test]
fn fixture_repository_v1_still_restores() {
    let env = Env::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    // Work on a copy: opening writes locks and the cache.
    let repo = env.path("repo");
    copy_tree(&fixtures.join("repo-v1"), &repo);
    let mut c = env.cmd();
    c.env_remove("VAULT_PASSWORD")
        .env("VAULT_PASSWORD_FILE", fixtures.join("repo-v1.password"))
        .args([
            "restore", "latest", "--host", "fixture", "--tag", "v1", "--target",
        ])
        .arg(env.path("r"))
        .arg("--verify");
    let out = c.output().unwrap();
    common::assert_ok(&out);
    assert_fixture_restored(&env.path("r/tmp/vault-fixture-v1"));
    // New backups into a version-1 repository stay readable by the vault that wrote it:
    // no bundles.
    let src = env.path("small");
    similar_small_files(&src, 50);
    let mut c = env.cmd();
    c.env_remove("VAULT_PASSWORD")
        .env("VAULT_PASSWORD_FILE", fixtures.join("repo-v1.password"))
        .arg("backup")
        .arg(&src);
    common::assert_ok(&c.output().unwrap());
    let password = fs::read_to_string(fixtures.join("repo-v1.password")).unwrap();
    let (bundled, blobs) = bundled_blobs(&repo, password.trim_end_matches('\n'));
    assert_eq!(
        bundled, 0,
        "{bundled} of {blobs} blobs bundled in a version-1 repository"
    );
}

/// The format-3 fixture: a format-2 repository raised by `vault upgrade` (a format
/// record), holding a mark, a revival and a deletion record naming a deleted pack
/// (tests/fixtures/make-repo-v3.sh). Both snapshots restore, check passes (the deleted
/// pack is not missing), prune knows the states, and it takes new backups.
#[test]
fn fixture_repository_v3_restores() {
    let env = Env::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let repo = env.path("repo");
    copy_tree(&fixtures.join("repo-v3"), &repo);
    let run = |args: &[&str]| {
        let mut c = env.cmd();
        c.env_remove("VAULT_PASSWORD")
            .env("VAULT_PASSWORD_FILE", fixtures.join("repo-v3.password"))
            .args(args);
        let out = c.output().unwrap();
        common::assert_ok(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (tag, dir) in [("v2", "v2"), ("v3", "c")] {
        let target = env.path(&format!("r-{tag}"));
        let t = target.to_str().unwrap();
        run(&["restore", "latest", "--tag", tag, "--target", t, "--verify"]);
        common::assert_fixture_v3_restored(
            &target.join(format!("tmp/vault-fixture-v3/{dir}")),
            dir,
        );
    }
    let check = run(&["check", "--read-data"]);
    assert!(check.contains("no errors"), "{check}");
    let plan = run(&["--json", "prune", "--dry-run", "--grace", "0s"]);
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["stats"]["two_phase"], true, "{plan}");
    assert_eq!(plan["stats"]["packs_revived"], 0, "{plan}");
    let src = env.source_with_file(b"new data in a format-3 fixture");
    run(&["backup", src.to_str().unwrap()]);
    assert!(run(&["check", "--read-data"]).contains("no errors"));
}

/// A copy of fixture `name` as `env`'s repository, and a runner of vault on it with
/// the fixture's password file `password` (`repo-v4.password` and the like).
fn on_fixture<'a>(env: &'a Env, name: &str) -> impl Fn(&str, &[&str]) -> std::process::Output + 'a {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    copy_tree(&fixtures.join(name), &env.path("repo"));
    move |password, args| {
        let mut c = env.cmd();
        c.env_remove("VAULT_PASSWORD")
            .env("VAULT_PASSWORD_FILE", fixtures.join(password))
            .args(args);
        c.output().unwrap()
    }
}

/// The standard output of a command that must succeed.
fn succeeds(out: std::process::Output) -> String {
    common::assert_ok(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fixture's `server` and `laptop` snapshots, the only two listed, restore as
/// `NAME.expected` says, and check reads everything, all with `full`.
fn server_and_laptop_restore(env: &Env, name: &str, full: &dyn Fn(&[&str]) -> String) {
    for dir in ["server", "laptop"] {
        let target = env.path(&format!("r-{dir}"));
        let t = target.to_str().unwrap();
        full(&["restore", "latest", "--tag", dir, "--target", t, "--verify"]);
        common::assert_fixture_dir_restored(
            &format!("{name}.expected"),
            &target.join(format!("tmp/vault-fixture-{}/{dir}", &name[5..])),
            dir,
        );
    }
    let listed: serde_json::Value = serde_json::from_str(&full(&["--json", "snapshots"])).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "the forgotten one stays forgotten"
    );
    assert!(full(&["check", "--read-data"]).contains("no errors"));
}

/// The format-4 fixture (tests/fixtures/make-repo-v4.sh): a full key restores the
/// server's snapshot and the one a backup-role key wrote; the backup-role key lists its
/// own snapshot only, restores nothing, and backs up again into a copy; the forget
/// record (an admin record) is believed.
#[test]
fn fixture_repository_v4_restores() {
    let env = Env::new();
    let run = on_fixture(&env, "repo-v4");
    let full = |args: &[&str]| succeeds(run("repo-v4.password", args));
    server_and_laptop_restore(&env, "repo-v4", &full);
    let backup_key = |args: &[&str]| run("repo-v4.backup-password", args);
    let own = backup_key(&["--json", "snapshots"]);
    common::assert_ok(&own);
    let own: serde_json::Value = serde_json::from_slice(&own.stdout).unwrap();
    assert_eq!(own.as_array().unwrap().len(), 1);
    assert_eq!(own[0]["host"], "laptop");
    let t = env.path("never");
    let refused = backup_key(&["restore", "latest", "--target", t.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(14));
    let src = env.source_with_file(b"new data from the laptop");
    common::assert_ok(&backup_key(&["backup", src.to_str().unwrap()]));
    assert!(full(&["check", "--read-data"]).contains("no errors"));
}

/// The format-5 fixture (tests/fixtures/make-repo-v5.sh, a rotated format-3
/// repository): its password restores both snapshots and backs up into a copy; the
/// password from before the rotation opens nothing (exit 12).
#[test]
fn fixture_repository_v5_restores() {
    let env = Env::new();
    let run = on_fixture(&env, "repo-v5");
    let full = |args: &[&str]| succeeds(run("repo-v5.password", args));
    server_and_laptop_restore(&env, "repo-v5", &full);
    let old = run("repo-v5.old-password", &["snapshots"]);
    assert_eq!(old.status.code(), Some(12));
    let src = env.source_with_file(b"new data in a rotated fixture");
    full(&["backup", src.to_str().unwrap()]);
    assert!(full(&["check", "--read-data"]).contains("no errors"));
}

fn repo_listing(env: &Env) -> Vec<std::path::PathBuf> {
    let mut v = walkdir(&env.repo());
    v.sort();
    v
}

#[test]
fn wrong_password_exits_12_and_writes_nothing() {
    let env = Env::new();
    let src = env.source_with_file(b"x");
    env.init(&[]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let before = repo_listing(&env);
    for args in [
        vec!["snapshots"],
        vec!["backup", src.to_str().unwrap()],
        vec!["restore", "latest", "--target", "/tmp/never"],
    ] {
        let out = env
            .cmd()
            .env("VAULT_PASSWORD", "wrong")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(12), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("wrong password") && !err.contains("wrong\n") && err.lines().count() == 1,
            "{err}"
        );
    }
    assert_eq!(before, repo_listing(&env), "nothing written");
    assert!(!Path::new("/tmp/never").exists());
    // No repository: exit 10, before any password is asked.
    let out = env
        .cmd()
        .env("VAULT_REPOSITORY", env.path("nothing"))
        .env_remove("VAULT_PASSWORD")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(10));
    // No password source and no terminal: a clear error, never a hang.
    let out = env
        .cmd()
        .env_remove("VAULT_PASSWORD")
        .arg("snapshots")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VAULT_PASSWORD_FILE"));
}

#[test]
fn keys_add_list_passwd_remove_and_raw_key_file() {
    let env = Env::new();
    env.init(&[]);
    fs::write(env.path("pw2"), "second password\n").unwrap();
    env.ok(&[
        "key",
        "add",
        "--label",
        "laptop",
        "--new-password-file",
        env.path("pw2").to_str().unwrap(),
    ]);
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["key", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    // The second password opens the repository too.
    let out = env
        .cmd()
        .env("VAULT_PASSWORD", "second password")
        .arg("snapshots")
        .output()
        .unwrap();
    assert!(out.status.success());
    // Change the first password; the old one stops working.
    fs::write(env.path("pw3"), "third password").unwrap();
    let changed = env.json(
        &[
            "key",
            "passwd",
            "--new-password-file",
            env.path("pw3").to_str().unwrap(),
        ],
        0,
    );
    let (new_key, old_key) = (
        changed["key"].as_str().unwrap(),
        changed["replaces"].as_str(),
    );
    assert!(env.repo().join("keys").join(new_key).exists());
    assert!(!env.repo().join("keys").join(old_key.unwrap()).exists());
    env.expect(&["snapshots"], 12);
    let with3 = |args: &[&str]| {
        env.cmd()
            .env("VAULT_PASSWORD", "third password")
            .args(args)
            .output()
            .unwrap()
    };
    assert!(with3(&["snapshots"]).status.success());
    // Remove the laptop key; the last key can never be removed.
    let laptop = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "laptop")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let removed = with3(&["--json", "key", "remove", &laptop[..8]]);
    assert!(removed.status.success());
    let removed: serde_json::Value = serde_json::from_slice(&removed.stdout).unwrap();
    assert_eq!(removed["removed"], laptop.as_str(), "{removed}");
    let keys = walkdir(&env.repo().join("keys"));
    assert_eq!(keys.len(), 1);
    let last = keys[0].file_name().unwrap().to_str().unwrap().to_string();
    let out = with3(&["key", "remove", &last]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only key"));
    // A raw key file opens the repository without any password.
    let raw = with3(&["key", "export", "--raw"]);
    fs::write(env.path("raw.key"), &raw.stdout).unwrap();
    chmod(&env.path("raw.key"), 0o600);
    let out = env
        .cmd()
        .env_remove("VAULT_PASSWORD")
        .env("VAULT_KEY_FILE", env.path("raw.key"))
        .arg("snapshots")
        .output()
        .unwrap();
    common::assert_ok(&out);
    assert!(!String::from_utf8_lossy(&raw.stderr).contains("third password"));
}

/// The master key on paper: printed as four checked lines and a whole check, typed
/// back (a mistyped digit is named by its line, and nothing is written), it makes a raw
/// key file that opens the repository with no password; at a terminal each line is
/// asked for again until it matches its check.
#[test]
fn a_paper_key_typed_back_opens_the_repository() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file(b"on paper");
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let paper = env.ok(&["key", "export", "--paper"]);
    let lines: Vec<&str> = paper.lines().collect();
    assert_eq!(lines.len(), 6, "{paper}");
    assert!(
        lines[0].starts_with("vault paper key, repository "),
        "{paper}"
    );
    assert!(lines[5].starts_with("check: "), "{paper}");

    // One digit of line 2 mistyped.
    let mut wrong: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let digit = if wrong[2].as_bytes()[3] == b'f' {
        "e"
    } else {
        "f"
    };
    wrong[2].replace_range(3..4, digit);
    let key = env.path("paper.key");
    let out = paper_import(&env, &wrong.join("\n"), &key);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2 does not match its check"), "{err}");
    assert!(!key.exists(), "nothing written");

    let out = paper_import(&env, &paper, &key);
    common::assert_ok(&out);
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let opened = env
        .cmd()
        .env_remove("VAULT_PASSWORD")
        .env("VAULT_KEY_FILE", &key)
        .args(["--json", "snapshots"])
        .output()
        .unwrap();
    common::assert_ok(&opened);
    let out = paper_import(&env, &paper, &key);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an existing file is not overwritten"
    );

    // At a terminal (script(1) gives it one): the mistyped line is asked for again.
    let typed = env.path("typed.key");
    let mut answers: Vec<String> = vec![wrong[1].clone(), wrong[2].clone(), lines[2].to_string()];
    answers.extend(lines[3..].iter().map(|l| l.to_string()));
    let out = paper_typed(&env, &answers, &typed);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("line 2 does not match its check"), "{shown}");
    assert_eq!(
        fs::read(&typed).unwrap(),
        fs::read(&key).unwrap(),
        "the same key file"
    );
}

/// `vault key import --paper --output OUT` with `text` on its standard input.
fn paper_import(env: &Env, text: &str, out: &Path) -> std::process::Output {
    use std::io::Write;
    let mut child = env
        .cmd()
        .env_remove("VAULT_REPOSITORY")
        .env_remove("VAULT_PASSWORD")
        .args([
            "key",
            "import",
            "--paper",
            "--output",
            out.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The same at a terminal (script(1) gives it one), `answers` typed one by one.
fn paper_typed(env: &Env, answers: &[String], out: &Path) -> std::process::Output {
    use std::io::Write;
    let cmd = format!(
        "{} key import --paper --output {}",
        env!("CARGO_BIN_EXE_vault"),
        out.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("HOME", env.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for a in answers {
        writeln!(stdin, "{a}").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// After a rotation the paper key has eight lines, the content key in lines 5–8: typed
/// back, from stdin or at a terminal, it restores every snapshot byte for byte, so blob
/// ids come out right; the first four lines alone, with any check, make no key.
#[test]
fn a_rotated_key_on_paper_has_eight_lines_and_restores() {
    let env = Env::new();
    let run = on_fixture(&env, "repo-v5");
    let paper = succeeds(run("repo-v5.password", &["key", "export", "--paper"]));
    let lines: Vec<String> = paper.lines().map(String::from).collect();
    assert_eq!(lines.len(), 10, "{paper}");
    assert!(lines[9].starts_with("check: "), "{paper}");

    let four = env.path("four.key");
    let cut = format!("{}\n{}\n", lines[..5].join("\n"), lines[9]);
    let out = paper_import(&env, &cut, &four);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("check"));
    assert!(!four.exists(), "nothing written");

    let key = env.path("paper.key");
    common::assert_ok(&paper_import(&env, &paper, &key));
    let typed = env.path("typed.key");
    let shown = paper_typed(&env, &lines[1..], &typed);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    assert_eq!(fs::read(&typed).unwrap(), fs::read(&key).unwrap());

    let with_key = |args: &[&str]| {
        let out = env
            .cmd()
            .env_remove("VAULT_PASSWORD")
            .env("VAULT_KEY_FILE", &key)
            .args(args)
            .output()
            .unwrap();
        succeeds(out)
    };
    server_and_laptop_restore(&env, "repo-v5", &with_key);
}

/// Runs vault as an unprivileged user when the tests run as root, so that chmod 000
/// really makes a file unreadable.
fn as_nobody(env: &Env, args: &[&str]) -> std::process::Output {
    let mut c = if nix::unistd::geteuid().is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_vault"));
        c
    } else {
        std::process::Command::new(env!("CARGO_BIN_EXE_vault"))
    };
    c.env("VAULT_REPOSITORY", env.repo())
        .env("VAULT_PASSWORD", PASSWORD)
        .env("VAULT_CACHE_DIR", "")
        .env("HOME", env.path("."))
        .args(args);
    c.output().unwrap()
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn unreadable_file_is_skipped_with_exit_3() {
    let env = Env::new();
    chmod(env.dir.path(), 0o777);
    let src = env.path("src");
    fs::create_dir_all(src.join("locked-dir")).unwrap();
    fs::write(src.join("ok.txt"), b"fine").unwrap();
    fs::write(src.join("secret.txt"), b"no").unwrap();
    chmod(&src.join("secret.txt"), 0o000);
    chmod(&src.join("locked-dir"), 0o000);
    let out = as_nobody(&env, &["init"]);
    common::assert_ok(&out);
    let out = as_nobody(&env, &["backup", "--json", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("secret.txt") && err.contains("Permission denied"),
        "{err}"
    );
    assert!(err.contains("locked-dir"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["errors"], 2);
    assert!(v["snapshot"].is_string(), "the snapshot is still written");
    let ls = as_nobody(&env, &["ls", "latest"]);
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.contains("ok.txt") && !ls.contains("secret.txt"));
}

/// A source below a directory its user may search but not list backs up whole: the
/// ancestors are stat'ed through the search permission alone.
#[test]
fn a_source_below_a_searchable_unreadable_directory_backs_up() {
    let env = Env::new();
    chmod(env.dir.path(), 0o777);
    let src = env.path("outer/src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/f.txt"), b"inside").unwrap();
    chmod(&env.path("outer"), 0o711);
    common::assert_ok(&as_nobody(&env, &["init"]));
    let out = as_nobody(&env, &["backup", "--json", src.to_str().unwrap()]);
    common::assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["errors"], 0, "{v}");
    let target = env.path("restored");
    let out = as_nobody(
        &env,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    common::assert_ok(&out);
    let got = fs::read(Env::restored(&target, &src).join("sub/f.txt")).unwrap();
    assert_eq!(got, b"inside");
}

#[test]
fn file_changing_during_backup_is_reported() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let path = src.join("growing.log");
    fs::write(&path, bytes(5, 64 << 20)).unwrap();
    env.init(&[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (p, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"another log line\n").unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let out = env.run(&["backup", src.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("growing.log: changed while it was read")
    );
}

#[test]
fn kill_9_during_backup_leaves_a_valid_repository_and_resumes() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        fs::write(src.join(format!("f{i}")), bytes(100 + i, 12 << 20)).unwrap();
    }
    env.init(&["--pack-size", "512K", "--chunk-size", "64K"]);
    let mut child = env
        .cmd()
        .args(["backup", "-q", src.to_str().unwrap()])
        .spawn()
        .unwrap();
    // Kill once at least one index file (and so some packs) is published.
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.files_in("index") == 0 {
        assert!(Instant::now() < deadline, "no index flushed");
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.files_in("snapshots"), 0, "killed before the snapshot");
    assert_eq!(env.files_in("locks"), 1, "the dead process's lock stays");
    // The next backup ignores the dead lock, reuses the uploaded packs, and completes.
    let b = env.backup_json(&[src.to_str().unwrap()]);
    let added = b["summary"]["bytes_added"].as_u64().unwrap();
    assert!(added < 96 << 20, "resumed: added {added} of {}", 96 << 20);
    let target = env.restore_verified("r");
    for i in 0..8 {
        let got = fs::read(Env::restored(&target, &src).join(format!("f{i}"))).unwrap();
        assert!(got == bytes(100 + i, 12 << 20), "f{i} differs");
    }
    // unlock removes the stale lock.
    let out = env.ok(&["unlock"]);
    assert!(out.contains("1 lock(s) removed"), "{out}");
    assert_eq!(env.files_in("locks"), 0);
}

#[test]
fn live_lock_makes_writers_exit_11_and_write_nothing() {
    use vault::repo::{Backend, Repository, Secret, lock};
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file(b"data");
    let backend = Backend::open(env.repo().to_str().unwrap()).unwrap();
    let repo = Repository::open(backend, &Secret::Password(PASSWORD.into())).unwrap();

    // An exclusive lock (as prune or repair index hold) stops a backup.
    let guard = lock::acquire(&repo, lock::LockKind::Exclusive, "test").unwrap();
    let before = repo_listing(&env);
    let out = env.run(&["backup", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(11));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked") && err.contains("test"), "{err}");
    assert_eq!(
        repo_listing(&env),
        before,
        "a refused backup writes nothing"
    );
    drop(guard);

    // A shared lock (a running backup) stops an exclusive operation but not a reader.
    let guard = lock::acquire(&repo, lock::LockKind::Shared, "backup").unwrap();
    env.expect(&["repair", "index"], 11);
    env.ok(&["snapshots"]);
    drop(guard);
    env.ok(&["backup", src.to_str().unwrap()]);
    env.ok(&["repair", "index"]);

    // --lock-wait: a writer waits for the lock instead of giving up.
    let guard = lock::acquire(&repo, lock::LockKind::Exclusive, "test").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        drop(guard);
    });
    let start = Instant::now();
    env.ok(&["backup", "-q", "--lock-wait", "60s", src.to_str().unwrap()]);
    assert!(start.elapsed() >= Duration::from_secs(2), "it waited");
    release.join().unwrap();
    env.expect(&["backup", "--lock-wait", "soon", src.to_str().unwrap()], 2);
}

/// A tmpfs mounted inside the source tree, unmounted on drop.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn one_file_system_stays_on_the_first_file_system() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let mnt = src.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(src.join("here"), b"on the source fs").unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "vault-test", mnt.to_str().unwrap()])
        .status()
        .expect("mount(8) is needed for this test");
    assert!(
        status.success(),
        "mounting a tmpfs needs root (tests run as root in CI)"
    );
    let _m = Mount(mnt.clone());
    std::fs::write(mnt.join("elsewhere"), b"on the tmpfs").unwrap();

    let s = src.to_str().unwrap();
    env.ok(&["backup", "-q", "--one-file-system", "--tag", "x", s]);
    env.ok(&["backup", "-q", "--tag", "all", s]);
    let ls = |tag: &str| env.ok(&["ls", "latest", "--tag", tag]);
    let x = ls("x");
    assert!(x.contains("/src/here") && x.contains("/src/mnt\n"), "{x}");
    assert!(!x.contains("elsewhere"), "-x crossed into the tmpfs: {x}");
    assert!(ls("all").contains("/src/mnt/elsewhere"));
}

#[test]
fn hooks_run_on_success_and_on_failure_with_the_outcome() {
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file(b"x");
    let log = env.path("hook.log");
    let hook = format!(
        "echo \"$VAULT_COMMAND $VAULT_EXIT_CODE $VAULT_MESSAGE\" >> {}",
        log.display()
    );
    env.ok(&[
        "backup",
        "-q",
        "--on-success",
        &hook,
        "--on-failure",
        "false",
        src.to_str().unwrap(),
    ]);
    env.expect(
        &[
            "restore",
            "ffff0000",
            "--target",
            "/tmp/x",
            "--on-failure",
            &hook,
        ],
        1,
    );
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "backup 0 ", "{text}");
    assert!(
        lines[1].starts_with("restore 1 snapshot ffff0000"),
        "{text}"
    );

    // --log-file: one line per run.
    let runlog = env.path("runs.log");
    env.ok(&["snapshots", "-q", "--log-file", runlog.to_str().unwrap()]);
    env.expect(
        &[
            "dump",
            "latest",
            "/nope",
            "--log-file",
            runlog.to_str().unwrap(),
        ],
        1,
    );
    let text = fs::read_to_string(&runlog).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].ends_with("vault snapshots exit 0"), "{text}");
    assert!(lines[1].contains("vault dump exit 1: "), "{text}");
}

/// `--before`: run first, with the hooks' environment; its failure skips the command
/// (exit 15, nothing written, before the repository is even opened), and the failure
/// hook and the log see that.
#[test]
fn a_failing_before_command_skips_the_command() {
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file(b"x");
    let s = src.to_str().unwrap();
    let marker = env.path("prepared");
    let prepare = format!(
        "echo noise; echo \"$VAULT_COMMAND\" > '{}'",
        marker.display()
    );
    let out = env.json(&["backup", "--before", &prepare, s], 0);
    assert_eq!(
        out["summary"]["files_new"], 1,
        "stdout is vault's JSON alone: {out}"
    );
    assert_eq!(fs::read_to_string(&marker).unwrap(), "backup\n");
    let snapshots = || env.json(&["snapshots"], 0).as_array().unwrap().len();
    assert_eq!(snapshots(), 1);

    let (hook_log, runs) = (env.path("hook.log"), env.path("runs.log"));
    let hook = format!(
        "echo \"$VAULT_COMMAND $VAULT_EXIT_CODE $VAULT_MESSAGE\" >> '{}'",
        hook_log.display()
    );
    let out = env
        .cmd()
        .args(["backup", "--before", "exit 7", "--on-failure", &hook])
        .args(["--log-file", runs.to_str().unwrap(), s])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(15));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--before command \"exit 7\" exited with exit status: 7")
            && err.contains("vault backup was not run"),
        "{err}"
    );
    assert_eq!(snapshots(), 1, "nothing was backed up");
    let hooked = fs::read_to_string(&hook_log).unwrap();
    assert!(
        hooked.starts_with("backup 15 the --before command"),
        "{hooked}"
    );
    assert!(
        fs::read_to_string(&runs)
            .unwrap()
            .contains("vault backup exit 15")
    );

    // It runs before the repository is opened: no repository is no exit 10 here.
    let out = env
        .cmd()
        .env("VAULT_REPOSITORY", env.path("nowhere"))
        .args(["snapshots", "--before", "false"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(15));
    assert!(!env.path("nowhere").exists());

    // From a profile.
    let config = env.path("vault.toml");
    fs::write(
        &config,
        format!(
            "[profiles.p]\nrepository = \"{}\"\nbefore = \"exit 1\"\n",
            env.repo().display()
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    env.expect(&["--config", c, "--profile", "p", "snapshots"], 15);
    env.ok(&[
        "--config",
        c,
        "--profile",
        "p",
        "--before",
        "true",
        "snapshots",
    ]);
}

/// `vault cache`: lists every repository's cache; --cleanup removes those not used for
/// --max-age and trims the rest to --max-size, least recently used first; commands then
/// download what they need again.
#[test]
fn cache_lists_and_cleans_up_the_caches() {
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file(bytes(5, 300_000));
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let ours = env.json(&["cache"], 0)["caches"][0]["path"].clone();
    let other = env.path("repo2");
    let in_other = |args: &[&str]| {
        let out = env
            .cmd()
            .env("VAULT_REPOSITORY", &other)
            .args(args)
            .output()
            .unwrap();
        common::assert_ok(&out);
    };
    in_other(&["init"]);
    in_other(&["backup", "-q", src.to_str().unwrap()]);

    let listed = env.json(&["cache"], 0);
    let caches = listed["caches"].as_array().unwrap();
    assert_eq!(caches.len(), 2, "{listed}");
    for c in caches {
        let dir = PathBuf::from(c["path"].as_str().unwrap());
        let on_disk: u64 = common::walkdir(&dir)
            .iter()
            .filter(|p| p.is_file())
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert!(on_disk > 0);
        assert_eq!(c["bytes"], on_disk, "{c}");
    }
    // The other repository's cache was last used 60 days ago.
    let other_id = caches
        .iter()
        .find(|c| c["path"] != ours)
        .map(|c| PathBuf::from(c["path"].as_str().unwrap()))
        .unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60 * 86400);
    fs::File::open(&other_id)
        .unwrap()
        .set_modified(old)
        .unwrap();

    let dry = env.json(&["cache", "--cleanup", "--dry-run"], 0);
    assert_eq!(
        dry["cleanup"]["removed"].as_array().unwrap().len(),
        1,
        "{dry}"
    );
    assert!(other_id.exists(), "a dry run removes nothing");
    let done = env.json(&["cache", "--cleanup", "--max-age", "30d"], 0);
    assert_eq!(
        done["cleanup"]["removed"][0]["path"],
        other_id.to_str().unwrap()
    );
    assert!(!other_id.exists());
    assert_eq!(
        env.json(&["cache"], 0)["caches"].as_array().unwrap().len(),
        1
    );

    let trimmed = env.json(&["cache", "--cleanup", "--max-size", "1K"], 0);
    assert!(
        trimmed["cleanup"]["trimmed_files"].as_u64().unwrap() > 0,
        "{trimmed}"
    );
    assert!(
        trimmed["cleanup"]["kept_bytes"].as_u64().unwrap() <= 1024,
        "{trimmed}"
    );
    env.restore_verified("restored");
    env.ok(&["check"]);

    // A symlink named like a cache, to a directory of someone's files: not a cache, so
    // neither listed nor emptied, however small the cap.
    let elsewhere = env.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("precious"), bytes(6, 100_000)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, env.path("cache").join("ab".repeat(32))).unwrap();
    assert_eq!(
        env.json(&["cache"], 0)["caches"].as_array().unwrap().len(),
        1
    );
    env.json(
        &["cache", "--cleanup", "--max-age", "0s", "--max-size", "1"],
        0,
    );
    assert_eq!(
        fs::read(elsewhere.join("precious")).unwrap(),
        bytes(6, 100_000)
    );
    assert!(env.path("cache").join("ab".repeat(32)).is_symlink());
    env.expect(&["cache", "--max-size", "2G"], 2);
    env.expect(&["cache", "--cleanup", "--max-size", "lots"], 2);
}

#[test]
fn profiles_and_the_nightly_run() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::write(src.join("keep.txt"), b"keep").unwrap();
    fs::write(src.join("skip.tmp"), b"skip").unwrap();
    let pw = env.path("pw");
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let archive = env.path("archive");
    let config_dir = env.path(".config/vault");
    fs::create_dir_all(&config_dir).unwrap();
    fs::write(
        config_dir.join("vault.toml"),
        format!(
            r#"
[profiles.nightly]
repository = "{repo}"
password-file = "{pw}"
sources = ["{src}"]
exclude = ["*.tmp"]
tags = ["nightly"]
prune = "always"
check = "1/3"
[profiles.nightly.retention]
keep-last = 2
[profiles.nightly.export]
destination = "{archive}"
every = "30d"
"#,
            repo = env.repo().display(),
            pw = pw.display(),
            src = src.display(),
            archive = archive.display()
        ),
    )
    .unwrap();
    // The profile supplies repository and password: no VAULT_* variables needed.
    let vault = |args: &[&str]| {
        let out = env
            .cmd()
            .env_remove("VAULT_REPOSITORY")
            .env_remove("VAULT_PASSWORD")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = vault(&["config", "check"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("1 profile(s) valid: nightly"), "{out}");
    let (code, _, err) = vault(&["--profile", "nightly", "init"]);
    assert_eq!(code, Some(0), "{err}");
    for _ in 0..3 {
        let (code, out, err) = vault(&["run", "nightly"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains("run nightly: backup ok, forget ok, prune ok"),
            "{out}"
        );
    }
    let (_, out, _) = vault(&["--profile", "nightly", "--json", "snapshots"]);
    let snaps: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 2, "keep-last 2");
    assert_eq!(snaps[0]["tags"][0], "nightly");
    let (_, out, _) = vault(&["--profile", "nightly", "ls", "latest"]);
    assert!(
        out.contains("keep.txt") && !out.contains("skip.tmp"),
        "{out}"
    );
    assert!(archive.join("MANIFEST").is_file(), "the first run exported");
    let (_, out, _) = vault(&["run", "nightly"]);
    assert!(out.contains("export not due"), "{out}");

    // Scheduling: systemd units that run the profile, or a crontab line.
    let units = env.path("units");
    let (code, out, err) = vault(&[
        "schedule",
        "install",
        "nightly",
        "--at",
        "03:15",
        "--unit-dir",
        units.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("systemctl --user enable --now vault-nightly.timer"),
        "{out}"
    );
    let timer = fs::read_to_string(units.join("vault-nightly.timer")).unwrap();
    assert!(timer.contains("OnCalendar=*-*-* 03:15:00") && timer.contains("Persistent=true"));
    let service = fs::read_to_string(units.join("vault-nightly.service")).unwrap();
    assert!(service.contains(" run nightly"), "{service}");
    let (_, out, _) = vault(&["schedule", "list", "--unit-dir", units.to_str().unwrap()]);
    assert!(out.contains("nightly") && out.contains("03:15"), "{out}");
    let (_, out, _) = vault(&["schedule", "install", "nightly", "--cron", "--at", "02:30"]);
    assert!(
        out.starts_with("30 2 * * * ") && out.trim_end().ends_with("run nightly"),
        "{out}"
    );
    let (code, _, _) = vault(&[
        "schedule",
        "remove",
        "nightly",
        "--unit-dir",
        units.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0));
    assert!(!units.join("vault-nightly.timer").exists());
    let (code, _, _) = vault(&[
        "schedule",
        "install",
        "nosuch",
        "--unit-dir",
        units.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));

    // A wrong key is named, with its line.
    fs::write(
        config_dir.join("vault.toml"),
        "[profiles.x]\nrepository = \"/r\"\nsorces = []\n",
    )
    .unwrap();
    let (code, _, err) = vault(&["config", "check"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("sorces") && err.contains("line 3"), "{err}");
}

/// The cached tree packs of the test's repository, by name, with their bytes.
fn cached_packs(env: &Env) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for repo_dir in fs::read_dir(env.path("cache")).unwrap().flatten() {
        let Ok(packs) = fs::read_dir(repo_dir.path().join("packs")) else {
            continue;
        };
        for p in packs.flatten() {
            let name = p.file_name().to_string_lossy().into_owned();
            out.push((name, fs::read(p.path()).unwrap()));
        }
    }
    out.sort();
    out
}

/// Trees are cached a whole tree pack at a time, from the backup that writes them; a
/// damaged cached pack costs a download and never a wrong answer; a pack that prune
/// deletes leaves the cache too.
#[test]
fn tree_packs_are_cached_whole_and_a_damaged_copy_is_fetched_again() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/b/f"), "first").unwrap();
    let s = src.to_str().unwrap();
    env.ok(&["backup", s]);
    let cached = cached_packs(&env);
    assert!(!cached.is_empty(), "backup cached no tree pack");
    let listing = env.ok(&["ls", "latest"]);
    assert!(listing.contains("a/b/f"), "{listing}");
    assert_eq!(cached_packs(&env), cached);
    for (name, bytes) in &cached {
        assert_eq!(
            &Id::of_stored(bytes).to_hex(),
            name,
            "a cached pack is the pack"
        );
        let stored = fs::read(env.repo().join("data").join(&name[..2]).join(name)).unwrap();
        assert_eq!(
            &stored, bytes,
            "cached pack {name} differs from the stored one"
        );
    }

    // Damage every cached pack: the trees come from the repository again.
    let cache_dir = fs::read_dir(env.path("cache")).unwrap().flatten();
    for d in cache_dir {
        for p in fs::read_dir(d.path().join("packs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let mut b = fs::read(p.path()).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 0x40;
            fs::write(p.path(), b).unwrap();
        }
    }
    assert_eq!(env.ok(&["ls", "latest"]), listing);
    assert_eq!(
        cached_packs(&env),
        cached,
        "the damaged packs were fetched again"
    );

    // A second backup with every directory changed; the first snapshot's trees go.
    fs::write(src.join("a/b/f"), "second").unwrap();
    env.ok(&["backup", s]);
    env.ok(&["ls", "latest"]);
    // Two-phase prune: the first run marks, the second deletes.
    env.ok(&["forget", "--keep-last", "1", "--prune", "--grace", "0s"]);
    env.ok(&["prune", "--grace", "0s"]);
    let stored: Vec<String> = walkdir(&env.repo().join("data"))
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect();
    let now = cached_packs(&env);
    assert!(!now.is_empty());
    for (name, _) in &now {
        assert!(
            stored.contains(name),
            "pack {name} was pruned but is still cached"
        );
    }
    assert!(
        cached.iter().any(|(n, _)| !stored.contains(n)),
        "prune deleted none of the first snapshot's tree packs: the test proves nothing"
    );
}

/// A tree pack whose stored copy no longer matches its name is never cached: its trees
/// are read one by one, each checked on its own.
#[test]
fn a_tree_pack_that_does_not_match_its_name_is_not_cached() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::write(src.join("a/f"), "data").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let listing = env.ok(&["ls", "latest"]);
    let cached = cached_packs(&env);
    assert!(!cached.is_empty());
    fs::remove_dir_all(env.path("cache")).unwrap();
    // The pack's last byte is in its header, which reading a blob by the index skips.
    for (name, _) in &cached {
        let p = env.repo().join("data").join(&name[..2]).join(name);
        let mut b = fs::read(&p).unwrap();
        *b.last_mut().unwrap() ^= 1;
        fs::write(&p, b).unwrap();
    }
    assert_eq!(env.ok(&["ls", "latest"]), listing);
    assert!(cached_packs(&env).is_empty(), "a damaged pack was cached");
}

/// A repository of a format newer than this vault (as a version-5 one is to a vault of
/// format 4: the way an older vault meets a rotated repository): every command refuses
/// it in one line naming the version, exit 1, and writes nothing.
#[test]
fn a_repository_newer_than_this_vault_is_refused_and_nothing_is_written() {
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file(b"written by a newer vault");
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let repo = common::open_repo(&env);
    let mut cfg = repo.config.clone();
    cfg.version = vault::format::config::NEWEST_VERSION + 1;
    fs::write(env.repo().join("config"), cfg.seal(&repo.keys)).unwrap();
    let before = common::stored_bytes(&env.repo());
    let target = env.path("restored");
    for args in [
        vec!["backup", src.to_str().unwrap()],
        vec!["snapshots"],
        vec!["restore", "latest", "--target", target.to_str().unwrap()],
        vec!["check"],
        vec!["forget", "--keep-last", "0"],
        vec!["prune"],
        vec!["key", "add", "--label", "x"],
    ] {
        let out = env.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("repository version {} is newer", cfg.version))
                && err.contains("upgrade vault")
                && !err.contains("damaged"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    assert!(
        common::stored_bytes(&env.repo()) == before,
        "the repository changed"
    );
    assert!(!target.exists());
}
