//! Storage that lets the backing-up host only create objects (issue 25, point 1; spec
//! §15 and §17): a local directory made append-only with `chattr +a`, and an sshd whose
//! internal-sftp denies remove, rename and attribute changes and creates every file
//! read-only, logged into as a user who is not root. Backup, sync, check, verify,
//! restore and status work there; what they cannot delete they say in one line, and
//! exit 0.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::servers::{CREATE_ONLY_USER, Sftp};
use common::{Env, bytes, walkdir};

const LEFT: &str = "left for `vault maintain`";

/// Every directory below (and with) `root`.
fn dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// The directories of a repository made append-only (create allowed; delete, rename
/// and replace refused, for root too); undone when dropped, so that the test's
/// directory can go.
struct AppendOnly(Vec<PathBuf>);

impl AppendOnly {
    fn apply(root: &Path) -> AppendOnly {
        // Every pack directory first, as README's recipe says: new ones would not
        // inherit the attribute.
        for b in 0..=255u8 {
            fs::create_dir_all(root.join(format!("data/{b:02x}"))).unwrap();
        }
        let all = dirs(root);
        let status = Command::new("chattr")
            .arg("+a")
            .args(&all)
            .status()
            .expect("chattr");
        assert!(status.success(), "chattr +a (ext4 as root needed)");
        AppendOnly(all)
    }
}

impl Drop for AppendOnly {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-a").args(&self.0).status();
    }
}

/// A source with a file big enough for several chunks and a small one.
fn source(env: &Env) -> PathBuf {
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), bytes(5, 3 << 20)).unwrap();
    fs::write(src.join("small.txt"), b"create-only").unwrap();
    src
}

fn run(env: &Env, repo: &str, args: &[&str]) -> Output {
    env.cmd()
        .env("VAULT_REPOSITORY", repo)
        .args(args)
        .output()
        .expect("run vault")
}

/// Runs, asserts exit 0 and at most one notice of what was left per copy; returns
/// stdout and stderr.
fn ok(env: &Env, repo: &str, args: &[&str]) -> (String, String) {
    let out = run(env, repo, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "vault {args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    let notices: Vec<&str> = stderr.lines().filter(|l| l.contains(LEFT)).collect();
    let copies: std::collections::HashSet<&str> = notices
        .iter()
        .map(|l| l.split(": the storage refuses").next().unwrap_or(l))
        .collect();
    assert_eq!(notices.len(), copies.len(), "one line per copy: {stderr}");
    (stdout, stderr)
}

/// Backup twice (the second adds nothing), check, verify, restore byte for byte and
/// status, all on `repo`.
fn works_end_to_end(env: &Env, repo: &str, src: &Path) {
    let s = src.to_str().unwrap();
    let (first, stderr) = ok(env, repo, &["backup", "--json", s]);
    assert!(stderr.contains(LEFT), "the lock stays: {stderr}");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let (second, _) = ok(env, repo, &["backup", "--json", s]);
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(second["summary"]["bytes_read"], 0, "{second}");
    assert_eq!(second["summary"]["files_unchanged"], 2, "{second}");
    assert_eq!(second["parent"], first["snapshot"]);
    ok(env, repo, &["check", "--read-data"]);
    ok(env, repo, &["verify"]);
    let target = env.path("restored");
    ok(
        env,
        repo,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    let back = Env::restored(&target, src);
    for f in ["big.bin", "small.txt"] {
        assert_eq!(
            fs::read(back.join(f)).unwrap(),
            fs::read(src.join(f)).unwrap()
        );
    }
    ok(env, repo, &["status"]);
}

#[test]
fn a_local_append_only_directory_takes_backups() {
    let env = Env::new();
    let src = source(&env);
    env.init(&[]);
    let repo = env.repo();
    let _guard = AppendOnly::apply(&repo);
    // The attribute holds for root too: nothing already there can go.
    assert!(fs::remove_file(repo.join("config")).is_err());
    let before = walkdir(&repo);
    works_end_to_end(&env, repo.to_str().unwrap(), &src);
    let after = walkdir(&repo);
    assert!(before.iter().all(|p| after.contains(p)), "nothing deleted");

    // A backup in another PID namespace could not delete its lock: to this process it
    // would be live for good, were it not released. An exclusive lock passes it.
    let mut other = Command::new("unshare");
    other
        .args(["-p", "--fork", "--mount-proc", env!("CARGO_BIN_EXE_vault")])
        .args(["backup", "-q", src.to_str().unwrap()])
        .env_clear();
    for (k, v) in env.cmd().get_envs() {
        if let Some(v) = v {
            other.env(k, v);
        }
    }
    common::assert_ok(&other.output().unwrap());
    ok(&env, repo.to_str().unwrap(), &["upgrade"]);
}

/// A repository at `dir` made with full rights, handed over to the create-only server;
/// its URL. The server refuses to delete, rename or overwrite what is there.
fn create_only_repo(env: &Env, server: &Sftp, dir: &Path, init: &[&str]) -> String {
    let mut args = vec!["init"];
    args.extend_from_slice(init);
    let out = run(env, dir.to_str().unwrap(), &args);
    common::assert_ok(&out);
    common::servers::hand_over(dir);
    let config = dir.join("config");
    let before = fs::read(&config).unwrap();
    let c = config.display();
    assert!(
        server.as_create_only(&format!("ls {c}")),
        "the server answers"
    );
    assert!(!server.as_create_only(&format!("rm {c}")), "remove denied");
    assert!(
        !server.as_create_only(&format!("rename {c} {c}.x")),
        "rename denied"
    );
    assert!(
        !server.as_create_only(&format!("put /etc/hostname {c}")),
        "overwrite denied"
    );
    assert_eq!(fs::read(&config).unwrap(), before);
    server.url_as(CREATE_ONLY_USER, dir)
}

#[test]
fn a_create_only_sftp_server_takes_backups() {
    let env = Env::new();
    let Some(server) = Sftp::start_create_only(&env.path("sshd")) else {
        return;
    };
    common::servers::open_path(&env.dir);
    let src = source(&env);
    let dir = env.path("remote/vault");
    fs::create_dir_all(&dir).unwrap();
    let url = create_only_repo(&env, &server, &dir, &[]);
    works_end_to_end(&env, &url, &src);
}

#[test]
fn sync_to_a_create_only_mirror_deletes_nothing_and_says_so() {
    let env = Env::new();
    let Some(server) = Sftp::start_create_only(&env.path("sshd")) else {
        return;
    };
    common::servers::open_path(&env.dir);
    let src = source(&env);
    let s = src.to_str().unwrap();
    env.init(&[]);
    let mirror = env.path("remote/mirror");
    let url = server.url_as(CREATE_ONLY_USER, &mirror);
    env.ok(&["mirror", "add", "vault-b", &url, "--no-sync"]);
    // The mirror's first copy is made with full rights, then handed over.
    fs::create_dir_all(mirror.parent().unwrap()).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(env.repo())
        .arg(&mirror)
        .status()
        .unwrap();
    assert!(status.success());
    common::servers::hand_over(&mirror);
    env.ok(&["backup", s]);
    ok(&env, env.repo().to_str().unwrap(), &["sync"]);
    fs::write(src.join("small.txt"), b"changed").unwrap();
    env.ok(&["backup", s]);
    ok(&env, env.repo().to_str().unwrap(), &["sync"]);
    let before = walkdir(&mirror);

    env.ok(&["forget", "--keep-last", "1", "--prune"]);
    let (_, stderr) = ok(&env, env.repo().to_str().unwrap(), &["sync"]);
    let notice: Vec<&str> = stderr.lines().filter(|l| l.contains(LEFT)).collect();
    assert_eq!(notice.len(), 1, "{stderr}");
    assert!(
        notice[0].contains("vault-b") && notice[0].contains("deletions"),
        "{stderr}"
    );
    let after = walkdir(&mirror);
    assert!(before.iter().all(|p| after.contains(p)), "nothing deleted");
    // The mirror is a whole repository still, every snapshot it had included.
    ok(&env, &url, &["check", "--read-data"]);
    let (snaps, _) = ok(&env, &url, &["snapshots", "--json"]);
    let snaps: serde_json::Value = serde_json::from_str(&snaps).unwrap();
    assert!(!snaps.as_array().unwrap().is_empty());

    // A sync killed while it wrote a pack left it short on the mirror, where it cannot
    // be replaced: sync stops before anything that refers to it, and says why.
    let packs_before: Vec<PathBuf> = walkdir(&env.repo().join("data"));
    fs::write(src.join("third.bin"), bytes(9, 1 << 20)).unwrap();
    env.ok(&["backup", s]);
    let new_pack = walkdir(&env.repo().join("data"))
        .into_iter()
        .find(|p| !packs_before.contains(p))
        .expect("a new pack");
    let rel = new_pack.strip_prefix(env.repo()).unwrap();
    let body = fs::read(&new_pack).unwrap();
    fs::write(mirror.join(rel), &body[..body.len() / 2]).unwrap();
    let snaps_before = walkdir(&mirror.join("snapshots"));
    let out = run(&env, env.repo().to_str().unwrap(), &["sync"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("other bytes are stored under this name") && stderr.contains(LEFT),
        "{stderr}"
    );
    assert_eq!(walkdir(&mirror.join("snapshots")), snaps_before);
    ok(&env, &url, &["check"]);
}

#[test]
fn a_backup_killed_on_create_only_storage_leaves_it_usable() {
    let env = Env::new();
    let Some(server) = Sftp::start_create_only(&env.path("sshd")) else {
        return;
    };
    common::servers::open_path(&env.dir);
    let src = source(&env);
    for i in 0..6 {
        fs::write(src.join(format!("more-{i}.bin")), bytes(10 + i, 1 << 20)).unwrap();
    }
    let dir = env.path("remote/vault");
    fs::create_dir_all(&dir).unwrap();
    let url = create_only_repo(&env, &server, &dir, &["--pack-size", "512K"]);
    let s = src.to_str().unwrap();
    for after in [2, 4] {
        let status = env
            .cmd()
            .env("VAULT_REPOSITORY", &url)
            .env("VAULT_CRASH_AFTER_WRITES", after.to_string())
            .args(["backup", "-q", s])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(9), "killed after {after} writes");
    }
    // What a writer killed mid-object leaves under a final name, which nobody may
    // remove: a pack cut short, and one whose header landed before all its body did.
    let whole = |p: &PathBuf| {
        let name = p.file_name().unwrap().to_str().unwrap();
        fs::read(p).is_ok_and(|b| vault::format::Id::of_stored(&b).to_hex() == name)
    };
    let packs = walkdir(&dir.join("data"));
    let pack = packs
        .iter()
        .find(|p| whole(p))
        .expect("the killed backups wrote whole packs");
    let body = fs::read(pack).unwrap();
    let fake = |first: &str| dir.join("data/00").join(format!("00{}", first.repeat(62)));
    fs::write(fake("0"), &body[..body.len() / 2]).unwrap();
    let mut holed = body.clone();
    holed[..body.len() / 2].fill(0);
    fs::write(fake("1"), &holed).unwrap();

    ok(&env, &url, &["backup", s]);
    // The packs the killed backups left whole were adopted; the damaged ones were not.
    let (report, _) = ok(&env, &url, &["check", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let warnings = report["report"]["warnings"].to_string();
    assert!(
        warnings.contains("1 pack(s) in no index file, e.g. 00111111"),
        "{report}"
    );
    assert!(
        warnings.contains("are in no index file and have no readable header"),
        "the short one: {report}"
    );
    ok(&env, &url, &["backup", s]);
    ok(
        &env,
        &url,
        &[
            "restore",
            "latest",
            "--target",
            env.path("back").to_str().unwrap(),
            "--verify",
        ],
    );
}

/// The tests above rely on VAULT_CRASH_AFTER_WRITES, which only a build with the test
/// hooks obeys.
#[test]
fn the_test_hooks_are_built() {
    if !cfg!(feature = "test-hooks") {
        panic!(
            "run the tests with --features test-hooks: without it vault ignores VAULT_CRASH_AFTER_WRITES"
        );
    }
}

/// After a key rotation, sync to a create-only mirror cannot replace its config: that
/// mirror's sync fails (exit 3) with one line saying why and what to do, nothing
/// written there is lost and the copy still opens and restores with the old key's view;
/// a sync with rights to replace objects then brings it to the new key, and removes the
/// lock a command run there with the old key could not delete.
#[test]
fn after_a_key_rotation_a_create_only_mirror_says_its_config_cannot_be_replaced() {
    let env = Env::new();
    let src = source(&env);
    env.init(&[]);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let mirror = env.path("mirror");
    let m = mirror.to_str().unwrap();
    env.ok(&["mirror", "add", "locked", m, "-q"]);
    fs::write(env.path("same-password"), common::PASSWORD).unwrap();
    let guard = AppendOnly::apply(&mirror);
    let rotate = env
        .cmd()
        .env("VAULT_NEW_PASSWORD_FILE", env.path("same-password"))
        .args(["key", "rotate", "--yes", "-q"])
        .output()
        .unwrap();
    common::assert_ok(&rotate);
    let new_ids = env.json(&["snapshots"], 0);

    let out = run(&env, env.repo().to_str().unwrap(), &["sync"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("from before a key rotation"))
        .collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(
        said[0].contains("mirror locked") && said[0].contains("credentials that may replace"),
        "{err}"
    );
    // The old view still restores from it.
    let target = env.path("from-old-view");
    ok(
        &env,
        m,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_eq!(
        fs::read(Env::restored(&target, &src).join("big.bin")).unwrap(),
        fs::read(src.join("big.bin")).unwrap()
    );

    drop(guard);
    env.ok(&["sync"]);
    assert_eq!(env.json(&["--repo", m, "snapshots"], 0), new_ids);
    // The restore's lock under the old key, which the storage would not let it delete,
    // went with the sync: unreadable under the new key, it would hold off every command.
    ok(&env, m, &["check", "--read-data"]);
}
