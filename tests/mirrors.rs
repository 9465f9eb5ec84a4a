//! One repository on three backends: a local primary, an S3 mirror and an SFTP mirror,
//! on real servers on loopback. Sync, status, an offline mirror, reads falling back to
//! mirrors, repair from a mirror, and deletions that sync propagates only when they were
//! deliberate.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::servers::{S3, Sftp};
use common::{Env, bytes, snapshot_of, walkdir};

struct Three {
    env: Env,
    s3: S3,
    _sftp: Sftp,
    s3_url: String,
    sftp_url: String,
    src: PathBuf,
}

fn three() -> Option<Three> {
    let env = Env::new();
    let s3 = S3::start(&env.path("s3"))?;
    let sftp = Sftp::start(&env.path("sshd"))?;
    let s3_url = "s3://bucket/vault?region=eu-central".to_string();
    let sftp_url = sftp.url(&env.path("friend/vault"));
    let src = env.path("src");
    fs::create_dir_all(src.join("docs")).unwrap();
    fs::write(src.join("big"), bytes(7, 2 << 20)).unwrap();
    fs::write(src.join("docs/a.txt"), b"alpha").unwrap();
    let t = Three {
        env,
        _sftp: sftp,
        s3_url,
        sftp_url,
        src,
        s3,
    };
    t.vault(&["init", "--pack-size", "512K"], 0);
    t.vault(
        &[
            "mirror",
            "add",
            "offsite",
            &t.s3_url,
            "--vendor",
            "wasabi",
            "--no-sync",
            // Its credentials are the usual AWS_* ones: the user says so.
            "--generic-credentials",
        ],
        0,
    );
    t.vault(
        &[
            "mirror",
            "add",
            "friend",
            &t.sftp_url,
            "--vendor",
            "home",
            "--region",
            "us-east",
            "--no-sync",
        ],
        0,
    );
    let primary = t.env.repo();
    t.vault(
        &[
            "mirror",
            "add",
            "primary",
            primary.to_str().unwrap(),
            "--vendor",
            "local",
            "--region",
            "eu-west",
        ],
        0,
    );
    Some(t)
}

impl Three {
    /// Runs vault with the S3 credentials and endpoint; asserts the exit code.
    fn vault(&self, args: &[&str], code: i32) -> String {
        let out = self
            .env
            .cmd()
            .envs(self.s3.env())
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.s3.server.port),
            )
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "vault {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.vault(&a, 0)).unwrap()
    }

    fn backup(&self, code: i32) {
        self.vault(
            &["backup", "-q", "--sync", self.src.to_str().unwrap()],
            code,
        );
    }

    fn restores_exactly(&self, args: &[&str], name: &str) {
        let target = self.env.path(name);
        let mut a = vec![
            "restore",
            "latest",
            "--verify",
            "--target",
            target.to_str().unwrap(),
        ];
        a.extend_from_slice(args);
        self.vault(&a, 0);
        assert_eq!(
            snapshot_of(&Env::restored(&target, &self.src)),
            snapshot_of(&self.src)
        );
    }

    fn complete_copies(&self) -> usize {
        self.json(&["status"])["copies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["complete"] == true)
            .count()
    }
}

fn packs(repo: &Path) -> Vec<PathBuf> {
    walkdir(&repo.join("data"))
}

#[test]
fn sync_status_offline_mirror_and_catch_up() {
    let Some(mut t) = three() else { return };
    t.backup(0);
    let status = t.json(&["status"]);
    assert_eq!(t.complete_copies(), 3, "{status}");
    assert!(
        status["summary"]
            .as_str()
            .unwrap()
            .starts_with("3 complete copies, 3 vendors, 2 regions"),
        "{status}"
    );
    // Every mirror is a repository of its own.
    for url in [&t.s3_url, &t.sftp_url] {
        t.vault(&["check", "--read-data", "--repo", url], 0);
        let out = t
            .env
            .cmd()
            .envs(t.s3.env())
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", t.s3.server.port),
            )
            .env_remove("VAULT_PASSWORD")
            .args(["audit", "--repo", url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "audit {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    t.restores_exactly(&["--repo", &t.sftp_url.clone()], "from-sftp");

    // The S3 server goes away: the backup still succeeds, exit 3 says a mirror lags.
    t.s3.server.stop();
    fs::write(t.src.join("docs/b.txt"), b"written while offsite was down").unwrap();
    t.backup(3);
    assert_eq!(
        t.json(&["snapshots"]).as_array().unwrap().len(),
        2,
        "data safe"
    );
    let status = t.json(&["status"]);
    let offsite = status["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "offsite")
        .unwrap()
        .clone();
    assert_eq!(offsite["reachable"], false, "{status}");
    // Back again: sync catches up.
    t.s3.server.start_again();
    assert_eq!(t.complete_copies(), 2, "offsite is behind");
    t.vault(&["sync"], 0);
    assert_eq!(t.complete_copies(), 3);
    t.vault(&["check", "--read-data", "--repo", &t.s3_url.clone()], 0);
}

#[test]
fn reads_fall_back_to_mirrors_and_repair_heals_the_primary() {
    let Some(t) = three() else { return };
    t.backup(0);
    let repo = t.env.repo();
    // Delete one pack, damage another, damage the index and a snapshot on the primary.
    let mut p = packs(&repo);
    p.sort_by_key(|f| std::cmp::Reverse(fs::metadata(f).unwrap().len()));
    fs::remove_file(&p[0]).unwrap();
    let mut b = fs::read(&p[1]).unwrap();
    b[10] ^= 1;
    fs::write(&p[1], b).unwrap();
    for dir in ["index", "snapshots"] {
        for f in walkdir(&repo.join(dir)) {
            fs::write(&f, b"damaged").unwrap();
        }
    }
    let _ = fs::remove_dir_all(t.env.path("cache")); // the cache would hide the damage
    let out = t.env.cmd().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("intact on mirror"),
        "check names the mirror to heal from: {err}"
    );
    // Every read still succeeds, from the mirrors.
    t.restores_exactly(&[], "restored");
    t.vault(&["ls", "latest"], 0);
    // repair copies back what was lost or damaged.
    let out = t.vault(&["repair", "--from", "offsite"], 0);
    assert!(out.contains("copied back"), "{out}");
    t.vault(&["check", "--read-data"], 0);
    let audit = t
        .env
        .cmd()
        .env_remove("VAULT_PASSWORD")
        .arg("audit")
        .output()
        .unwrap();
    assert!(audit.status.success());
}

#[test]
fn sync_deletes_on_mirrors_only_what_was_deliberately_removed() {
    let Some(t) = three() else { return };
    t.backup(0);
    fs::remove_file(t.src.join("big")).unwrap();
    fs::write(t.src.join("docs/c.txt"), b"gamma").unwrap();
    t.backup(0);
    let mirror_snaps = |url: &str| {
        t.json(&["snapshots", "--repo", url])
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(mirror_snaps(&t.s3_url), 2);

    // A snapshot file lost on the primary (not forgotten) stays on the mirrors.
    let first = t.json(&["snapshots"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let lost = t.env.repo().join("snapshots").join(&first);
    let kept = fs::read(&lost).unwrap();
    fs::remove_file(&lost).unwrap();
    t.vault(&["sync"], 0);
    assert_eq!(
        mirror_snaps(&t.s3_url),
        2,
        "a lost snapshot must not be deleted elsewhere"
    );
    fs::write(&lost, kept).unwrap();

    // Forget and prune on the primary: sync removes the snapshot and the packs only it
    // used, and the mirrors stay consistent.
    t.vault(&["forget", "-q", &first[..8], "--prune"], 0);
    let freed = packs(&t.env.repo()).len();
    t.vault(&["sync"], 0);
    assert_eq!(mirror_snaps(&t.s3_url), 1);
    assert_eq!(mirror_snaps(&t.sftp_url), 1);
    let friend = t.env.path("friend/vault");
    assert_eq!(
        packs(&friend).len(),
        freed,
        "the mirror dropped the pruned packs"
    );
    for url in [&t.s3_url, &t.sftp_url] {
        t.vault(&["check", "--read-data", "--repo", url], 0);
    }
    t.restores_exactly(&["--repo", &t.s3_url.clone()], "after-prune");
}

#[test]
fn lost_files_on_the_primary_never_delete_the_mirrors_copies() {
    let Some(t) = three() else { return };
    t.backup(0);
    let repo = t.env.repo();
    let mirror_packs = packs(&t.env.path("friend/vault")).len();
    // The primary loses every pack and its index files are damaged: nothing on it says
    // those packs were removed on purpose, so sync must keep the mirror's copies.
    for p in packs(&repo) {
        fs::remove_file(p).unwrap();
    }
    for f in walkdir(&repo.join("index")) {
        fs::write(&f, b"damaged").unwrap();
    }
    let _ = fs::remove_dir_all(t.env.path("cache"));
    // Exit 3: the damaged index files were not copied, and sync says so.
    t.vault(&["sync", "--mirror", "friend"], 3);
    assert_eq!(packs(&t.env.path("friend/vault")).len(), mirror_packs);
    t.vault(&["repair", "--from", "friend"], 0);
    t.vault(&["check", "--read-data"], 0);
}

#[test]
fn repair_from_a_mirror_does_not_bring_back_forgotten_snapshots() {
    let Some(t) = three() else { return };
    t.backup(0);
    fs::write(t.src.join("docs/a.txt"), b"second version").unwrap();
    t.backup(0);
    // Forget and prune without syncing: the mirrors still hold the old snapshot.
    let first = t.json(&["snapshots"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    t.vault(&["forget", "-q", &first[..8], "--prune"], 0);
    t.vault(&["repair", "--from", "offsite"], 0);
    assert_eq!(
        t.json(&["snapshots"]).as_array().unwrap().len(),
        1,
        "stays forgotten"
    );
    t.vault(&["check", "--read-data"], 0);
}

#[test]
fn mirror_on_a_three_node_garage_cluster_survives_a_node_loss() {
    let env = Env::new();
    let Some(mut garage) = common::servers::Garage::start(&env.path("garage")) else {
        return;
    };
    let url = garage.url("vault");
    let creds = garage.env();
    let run = |args: &[&str], code: i32| -> String {
        let out = env.cmd().envs(creds.clone()).args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "vault {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("data"), bytes(3, 3 << 20)).unwrap();
    run(&["init", "--pack-size", "1M"], 0);
    run(
        &[
            "mirror",
            "add",
            "cluster",
            &url,
            "--vendor",
            "garage",
            "--no-sync",
            "--generic-credentials",
        ],
        0,
    );
    run(&["backup", "-q", "--sync", src.to_str().unwrap()], 0);
    // One node of three goes down: replication keeps every object readable.
    garage.nodes[2].stop();
    run(&["check", "--read-data", "--repo", &url], 0);
    let target = env.path("r");
    run(
        &[
            "restore",
            "latest",
            "--verify",
            "--repo",
            &url,
            "--target",
            target.to_str().unwrap(),
        ],
        0,
    );
    assert_eq!(
        fs::read(Env::restored(&target, &src).join("data")).unwrap(),
        bytes(3, 3 << 20)
    );
}

#[test]
fn each_mirror_can_have_its_own_credentials() {
    let env = Env::new();
    let Some(s3) = S3::start(&env.path("s3")) else {
        return;
    };
    let src = env.source_with_file(bytes(1, 100_000));
    let url = s3.url("vault");
    // The usual AWS_* variables are wrong (another vendor's); the mirror's own win.
    let run = |args: &[&str]| {
        env.cmd()
            .env("AWS_ACCESS_KEY_ID", "someone-else")
            .env("AWS_SECRET_ACCESS_KEY", "wrong")
            .env(
                "VAULT_MIRROR_OFFSITE_AWS_ACCESS_KEY_ID",
                common::servers::S3_KEY,
            )
            .env(
                "VAULT_MIRROR_OFFSITE_AWS_SECRET_ACCESS_KEY",
                common::servers::S3_SECRET,
            )
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["init"]).status.success());
    assert!(
        run(&["mirror", "add", "offsite", &url, "--no-sync"])
            .status
            .success()
    );
    let out = run(&["backup", "-q", "--sync", src.to_str().unwrap()]);
    common::assert_ok(&out);
    let status: serde_json::Value =
        serde_json::from_slice(&run(&["--json", "status"]).stdout).unwrap();
    let offsite = &status["copies"][1];
    assert_eq!(offsite["complete"], true, "{status}");

    // list and remove: a removed mirror is no longer synced (its copy stays).
    let list: serde_json::Value =
        serde_json::from_slice(&run(&["--json", "mirror", "list"]).stdout).unwrap();
    assert_eq!(list[0]["name"], "offsite");
    assert!(run(&["mirror", "remove", "offsite"]).status.success());
    let out = run(&["sync"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mirrors"));
    // Opened directly, the copy takes the usual variables: give it the right ones.
    let copy = env
        .cmd()
        .envs(s3.env())
        .args(["snapshots", "--repo", &url])
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "the copy stays: {}",
        String::from_utf8_lossy(&copy.stderr)
    );
}

#[test]
fn profile_credentials_come_from_a_file_or_from_named_variables() {
    let env = Env::new();
    let Some(s3) = S3::start(&env.path("s3")) else {
        return;
    };
    let src = env.source_with_file(bytes(2, 50_000));
    let creds = env.path("offsite.env");
    fs::write(
        &creds,
        format!(
            "# offsite vendor\nexport AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY=\"{}\"\n",
            common::servers::S3_KEY,
            common::servers::S3_SECRET
        ),
    )
    .unwrap();
    let config = env.path("vault.toml");
    fs::write(
        &config,
        format!(
            r#"
[profiles.nightly]
repository = "{primary}"
sources = ["{src}"]
[profiles.nightly.credentials]
env = {{ AWS_ACCESS_KEY_ID = "PRIMARY_KEY", AWS_SECRET_ACCESS_KEY = "PRIMARY_SECRET" }}
[profiles.nightly.mirrors.offsite]
file = "{creds}"
"#,
            primary = s3.url("primary"),
            src = src.display(),
            creds = creds.display()
        ),
    )
    .unwrap();
    // The usual AWS_* variables are wrong: only the profile's sources work.
    let run = |args: &[&str]| {
        let mut c = env.cmd();
        c.env_remove("VAULT_REPOSITORY")
            .env("AWS_ACCESS_KEY_ID", "someone-else")
            .env("AWS_SECRET_ACCESS_KEY", "wrong")
            .env("PRIMARY_KEY", common::servers::S3_KEY)
            .env("PRIMARY_SECRET", common::servers::S3_SECRET)
            .args(["--config", config.to_str().unwrap(), "--profile", "nightly"])
            .args(args);
        c.output().unwrap()
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    ok(&["config", "check"]);
    ok(&["init"]);
    ok(&["mirror", "add", "offsite", &s3.url("offsite"), "--no-sync"]);
    ok(&["backup", "-q", "--sync"]);
    let status: serde_json::Value =
        serde_json::from_slice(&ok(&["--json", "status"]).stdout).unwrap();
    assert_eq!(status["copies"][1]["complete"], true, "{status}");

    // A variable the profile names but the environment lacks: one clear line.
    let out = env
        .cmd()
        .args(["--config", config.to_str().unwrap(), "--profile", "nightly"])
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PRIMARY_KEY is not set") && err.lines().count() == 1,
        "{err}"
    );
    // A malformed credentials file is named with its line, and the value never shown.
    fs::write(&creds, "AWS_ACCESS_KEY_ID=x\nthis-is-secret\n").unwrap();
    let out = run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("offsite.env line 2"), "{err}");
    assert!(!err.contains("this-is-secret"), "{err}");
}

/// A pack that reads damaged on the primary, and that the mirror lacks, stops the sync
/// before the index files and snapshots that refer to it: the mirror stays a complete
/// repository of what it had, and catches up once the pack reads right again.
#[test]
fn a_damaged_pack_the_mirror_lacks_is_never_referred_to_there() {
    let env = Env::new();
    let src = env.source_with_file(bytes(1, 300_000));
    let src = src.to_str().unwrap();
    let mirror = env.path("mirror");
    let mirror = mirror.to_str().unwrap();
    env.init(&[]);
    env.ok(&["mirror", "add", "copy", mirror, "--no-sync"]);
    env.ok(&["backup", "-q", src]);
    env.ok(&["sync", "-q"]);
    let before = walkdir(&env.repo().join("data"));
    fs::write(Path::new(src).join("g"), bytes(2, 300_000)).unwrap();
    env.ok(&["backup", "-q", src]);
    let new = walkdir(&env.repo().join("data"))
        .into_iter()
        .filter(|p| !before.contains(p))
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let good = fs::read(&new).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    fs::write(&new, bad).unwrap();

    let out = env.run(&["sync"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reads damaged here"), "{err}");
    let snaps = |repo: &str| {
        env.json(&["snapshots", "--repo", repo], 0)
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(snaps(mirror), 1, "the new snapshot waits for its pack");
    env.ok(&["check", "--read-data", "--repo", mirror]);

    fs::write(&new, good).unwrap();
    env.ok(&["sync", "-q"]);
    assert_eq!(snaps(mirror), 2);
    env.ok(&["check", "--read-data", "--repo", mirror]);
}
