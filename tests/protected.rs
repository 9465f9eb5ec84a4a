//! Protected mirrors: sync deletes nothing there, `vault maintain` deletes only what was
//! recorded gone a whole protection period ago by the mirror's own clock, everything
//! forgotten meanwhile restores from the mirror and comes back with `vault unforget`,
//! and an intruder holding the password cannot shorten the period.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::servers::{CREATE_ONLY_USER, Sftp, hand_over, open_path};
use common::{Env, bytes, snapshot_of, walkdir};

/// A repository with a protected mirror `safe` (1 h) and an ordinary one `plain`, two
/// snapshots of a changing source (the content of each kept aside), synced to both.
struct Setup {
    env: Env,
    src: PathBuf,
    safe: PathBuf,
    plain: PathBuf,
    /// Each snapshot's source as it was, by snapshot time order.
    versions: Vec<PathBuf>,
}

fn setup() -> Setup {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("docs")).unwrap();
    fs::write(src.join("big"), bytes(1, 1 << 20)).unwrap();
    fs::write(src.join("docs/a.txt"), b"first").unwrap();
    let (safe, plain) = (env.path("safe"), env.path("plain"));
    env.init(&["--pack-size", "256K"]);
    env.ok(&[
        "mirror",
        "add",
        "safe",
        safe.to_str().unwrap(),
        "--protect",
        "1h",
        "--no-sync",
    ]);
    env.ok(&[
        "mirror",
        "add",
        "plain",
        plain.to_str().unwrap(),
        "--no-sync",
    ]);
    let mut versions = Vec::new();
    for (i, text) in ["first", "second"].iter().enumerate() {
        fs::write(src.join("docs/a.txt"), text).unwrap();
        fs::write(src.join(format!("new{i}")), bytes(10 + i as u64, 300_000)).unwrap();
        env.ok(&["backup", src.to_str().unwrap(), "-q"]);
        let kept = env.path(&format!("version{i}"));
        // As it was, times and modes included.
        must(Command::new("cp").arg("-a").arg(&src).arg(&kept));
        versions.push(kept);
    }
    env.ok(&["sync"]);
    Setup {
        env,
        src,
        safe,
        plain,
        versions,
    }
}

impl Setup {
    /// Forgets every snapshot and prunes everything unused (two prunes: mark, delete).
    fn forget_everything(&self) {
        self.env.ok(&["forget", "--keep-last", "0"]);
        self.env.ok(&["prune", "--grace", "0s"]);
        self.env.ok(&["prune", "--grace", "0s"]);
        assert_eq!(self.env.files_in("snapshots"), 0);
    }

    /// Each version restores byte for byte from `repo`, oldest first.
    fn assert_restores_from(&self, repo: &Path) {
        let repo = repo.to_str().unwrap();
        let ids = snapshot_ids(&self.env, repo);
        assert_eq!(ids.len(), self.versions.len(), "snapshots at {repo}");
        for (i, (id, version)) in ids.iter().zip(&self.versions).enumerate() {
            let target = self.env.path(&format!("restored-{i}-{}", id));
            let _ = fs::remove_dir_all(&target);
            self.env.ok(&[
                "--repo",
                repo,
                "restore",
                id,
                "--target",
                target.to_str().unwrap(),
                "-q",
            ]);
            assert_eq!(
                snapshot_of(&Env::restored(&target, &self.src)),
                snapshot_of(version),
                "snapshot {id} from {repo}"
            );
        }
    }
}

/// Snapshot ids at `repo`, oldest first.
fn snapshot_ids(env: &Env, repo: &str) -> Vec<String> {
    let v = env.json(&["--repo", repo, "snapshots"], 0);
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| s["id"].as_str().expect("an id").to_string())
        .collect()
}

fn count(dir: &Path) -> usize {
    walkdir(dir).len()
}

/// Sets the modification time of every record that dates a deletion on a copy (forget
/// records, index files, deletion records, marks, revivals and key files) to `ago`: what the storage clock would say
/// after that much time.
fn age_records(copy: &Path, ago: &str) {
    for dir in [
        "forgotten",
        "index",
        "deletions",
        "marks",
        "revivals",
        "keys",
    ] {
        for f in walkdir(&copy.join(dir)) {
            must(Command::new("touch").args(["-d", ago]).arg(&f));
        }
    }
}

#[test]
fn a_protected_mirror_keeps_what_forget_and_prune_removed_until_its_period_has_passed() {
    let s = setup();
    let files_before = count(&s.safe);
    s.forget_everything();
    let out = s.env.ok(&["sync"]);
    assert!(
        out.contains("safe: protected;") && out.contains("vault maintain --mirror safe"),
        "{out}"
    );
    // The ordinary mirror followed the primary; the protected one lost nothing.
    assert_eq!(count(&s.plain.join("snapshots")), 0);
    assert_eq!(count(&s.plain.join("data")), 0);
    assert_eq!(count(&s.safe.join("snapshots")), 2);
    assert!(count(&s.safe) >= files_before, "nothing deleted on safe");
    s.env
        .ok(&["--repo", s.safe.to_str().unwrap(), "check", "--read-data"]);
    s.env.ok(&["--repo", s.safe.to_str().unwrap(), "audit"]);
    s.assert_restores_from(&s.safe);

    // Maintenance inside the period deletes nothing, and says what waits.
    let m = s.env.json(&["maintain", "--mirror", "safe"], 0);
    let r = &m["mirrors"][0]["report"];
    assert_eq!(r["deleted"], 0, "{m}");
    assert!(r["waiting"].as_u64().unwrap() >= 2 + 2, "{m}");
    assert!(r["next_due"].is_string(), "{m}");
    let status = s.env.json(&["status"], 0);
    let safe = status["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "safe")
        .expect("safe in status");
    assert_eq!(safe["protection"]["period"], 3600, "{status}");
    assert_eq!(safe["protection"]["waiting"], r["waiting"], "{status}");
    assert_eq!(safe["can_delete"], true, "{status}");
    s.assert_restores_from(&s.safe);

    // Once the records are older than the period (by the mirror's clock), maintenance
    // carries the deletions out and leaves a valid copy.
    age_records(&s.safe, "2 hours ago");
    let m = s.env.json(&["maintain", "--mirror", "safe"], 0);
    let r = &m["mirrors"][0]["report"];
    assert!(r["deleted"].as_u64().unwrap() >= 2 + 2, "{m}");
    assert_eq!(r["waiting"], 0, "{m}");
    assert_eq!(count(&s.safe.join("snapshots")), 0);
    assert_eq!(count(&s.safe.join("data")), 0);
    s.env
        .ok(&["--repo", s.safe.to_str().unwrap(), "check", "--read-data"]);
}

#[test]
fn unforget_brings_every_forgotten_snapshot_back_from_a_protected_mirror() {
    let s = setup();
    s.forget_everything();
    s.env.ok(&["sync"]);
    let dry = s.env.json(&["unforget", "--from", "safe", "--dry-run"], 0);
    assert_eq!(dry["snapshots"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!(s.env.files_in("snapshots"), 0, "a dry run writes nothing");
    let done = s.env.json(&["unforget", "--from", "safe"], 0);
    assert_eq!(done["snapshots"].as_array().unwrap().len(), 2, "{done}");
    assert!(done["blobs_copied"].as_u64().unwrap() > 0, "{done}");
    s.env.ok(&["check", "--read-data"]);
    s.assert_restores_from(&s.env.repo());
    // Nothing is left to bring back, and the primary's next prune keeps them.
    let again = s.env.json(&["unforget", "--from", "safe"], 0);
    assert_eq!(again["snapshots"].as_array().unwrap().len(), 0, "{again}");
    s.env.ok(&["prune", "--grace", "0s"]);
    s.env.ok(&["prune", "--grace", "0s"]);
    s.env.ok(&["check", "--read-data"]);
    s.assert_restores_from(&s.env.repo());
    // The copies brought back reach the mirrors too, and outlive the maintenance that
    // removes the forgotten originals.
    s.env.ok(&["sync"]);
    age_records(&s.safe, "2 hours ago");
    s.env.ok(&["maintain"]);
    s.assert_restores_from(&s.safe);
    s.assert_restores_from(&s.plain);
}

#[test]
fn a_forget_record_dated_in_the_past_still_waits_the_whole_period() {
    if !faketime_available() {
        return;
    }
    let s = setup();
    // An intruder's vault, its clock two days back, writes forget records that claim
    // to be old; the mirror receives them now.
    let mut c = s.env.cmd();
    c.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let status = Command::new("faketime")
        .args([
            "-f",
            "-2d",
            env!("CARGO_BIN_EXE_vault"),
            "forget",
            "--keep-last",
            "0",
        ])
        .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .status()
        .expect("faketime");
    assert!(status.success());
    s.env.ok(&["sync"]);
    let m = s.env.json(&["maintain", "--mirror", "safe"], 0);
    let r = &m["mirrors"][0]["report"];
    assert_eq!(r["deleted"], 0, "{m}");
    assert!(r["waiting"].as_u64().unwrap() >= 2, "{m}");
    assert_eq!(count(&s.safe.join("snapshots")), 2);
}

#[test]
fn a_redefinition_without_protection_is_not_trusted_by_the_maintaining_host() {
    let s = setup();
    // The intruder holds the password and runs as another host (its own trust state):
    // it redefines the mirror without protection and forgets everything. (Its own sync
    // to the copy is stopped by credentials that cannot delete there, not by vault:
    // tests/create_only.rs.)
    let intruder = |args: &[&str]| {
        let out = s
            .env
            .cmd()
            .env("VAULT_STATE_DIR", s.env.path("intruder-state"))
            .args(args)
            .output()
            .expect("run vault");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    intruder(&["mirror", "remove", "safe"]);
    intruder(&[
        "mirror",
        "add",
        "safe",
        s.safe.to_str().unwrap(),
        "--no-sync",
    ]);
    intruder(&["forget", "--keep-last", "0"]);
    // The host that maintains knows the definition it trusted: the new one is refused.
    let out = s.env.run(&["maintain", "--mirror", "safe"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("redefined"), "{err}");
    let out = s.env.run(&["sync"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("redefined"),
        "{out:?}"
    );
    assert_eq!(count(&s.safe.join("snapshots")), 2);
}

#[test]
fn protect_is_refused_for_the_primary_and_shown_in_the_mirror_list() {
    let s = setup();
    let out = s
        .env
        .run(&["mirror", "add", "primary", "/x", "--protect", "30d"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let list = s.env.ok(&["mirror", "list"]);
    assert!(list.contains("protected 1h"), "{list}");
    let out = s
        .env
        .run(&["mirror", "add", "x", "/y", "--protect", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

fn faketime_available() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v faketime"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found || std::env::var("CI").as_deref() != Ok("true"),
        "faketime (apt package faketime) is needed for this test under CI=true"
    );
    found
}

/// Runs `args` with the crash hook killing vault right after its `n`th storage write or
/// delete; whether it was killed (else it must have succeeded).
fn killed_after(env: &Env, args: &[&str], n: usize) -> bool {
    let out = env
        .cmd()
        .env("VAULT_CRASH_AFTER_WRITES", n.to_string())
        .args(args)
        .output()
        .expect("run vault");
    if out.status.signal() == Some(9) {
        return true;
    }
    assert!(
        out.status.success(),
        "{args:?} after {n} writes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// Runs `c` and asserts it succeeded.
fn must(c: &mut Command) {
    let status = c.status().expect("run a tool");
    assert!(status.success(), "{c:?}");
}

/// `cp -a from to`, `to` replaced.
fn reset(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    must(Command::new("cp").arg("-a").arg(from).arg(to));
}

#[test]
fn unforget_killed_after_any_write_leaves_a_valid_repository_and_completes_when_run_again() {
    let s = setup();
    s.forget_everything();
    s.env.ok(&["sync"]);
    let pristine = s.env.path("pristine");
    reset(&s.env.repo(), &pristine);
    let mut kills = 0;
    for n in 1.. {
        reset(&pristine, &s.env.repo());
        let _ = fs::remove_dir_all(s.env.path("cache"));
        if !killed_after(&s.env, &["unforget", "--from", "safe"], n) {
            break;
        }
        kills += 1;
        assert!(n < 200, "unforget never finished");
        s.env.ok(&["check", "--read-data"]);
        s.env.ok(&["unforget", "--from", "safe"]);
        s.env.ok(&["check", "--read-data"]);
        s.assert_restores_from(&s.env.repo());
    }
    assert!(kills >= 4, "only {kills} kill points");
    eprintln!("unforget killed at each of its {kills} writes");
}

#[test]
fn maintain_killed_after_any_delete_leaves_a_valid_mirror_and_completes_when_run_again() {
    let s = setup();
    // Keep one snapshot, so that the mirror must stay a restorable repository.
    s.env.ok(&["forget", "--keep-last", "1"]);
    s.env.ok(&["prune", "--grace", "0s"]);
    s.env.ok(&["prune", "--grace", "0s"]);
    s.env.ok(&["sync"]);
    age_records(&s.safe, "2 hours ago");
    let pristine = s.env.path("safe-pristine");
    reset(&s.safe, &pristine);
    let mut kills = 0;
    let safe = s.safe.to_str().unwrap();
    for n in 1.. {
        reset(&pristine, &s.safe);
        if !killed_after(&s.env, &["maintain", "--mirror", "safe"], n) {
            break;
        }
        kills += 1;
        assert!(n < 200, "maintain never finished");
        s.env.ok(&["--repo", safe, "check", "--read-data"]);
        s.env.ok(&["maintain", "--mirror", "safe"]);
        s.env.ok(&["--repo", safe, "check", "--read-data"]);
        assert_eq!(snapshot_ids(&s.env, safe).len(), 1);
    }
    assert!(kills >= 4, "only {kills} kill points");
    eprintln!("maintain killed at each of its {kills} writes and deletes");
}

/// The kill tests rely on VAULT_CRASH_AFTER_WRITES, which only a build with the test
/// hooks obeys.
#[test]
fn the_test_hooks_are_built() {
    if !cfg!(feature = "test-hooks") {
        panic!(
            "run the tests with --features test-hooks: without it vault ignores VAULT_CRASH_AFTER_WRITES"
        );
    }
}

/// An `ssh` for `VAULT_SSH` that logs in as `user`: how each machine's own ssh config
/// picks its account for a URL that names none.
fn ssh_as(env: &Env, user: &str) -> PathBuf {
    let path = env.path(&format!("ssh-as-{user}"));
    fs::write(&path, format!("#!/bin/sh\nexec ssh -l {user} \"$@\"\n")).unwrap();
    must(Command::new("chmod").arg("755").arg(&path));
    path
}

/// Every file under `dir` with the hash of its content.
fn contents(dir: &Path) -> std::collections::BTreeMap<PathBuf, blake3::Hash> {
    walkdir(dir)
        .into_iter()
        .map(|p| {
            let h = blake3::hash(&fs::read(&p).unwrap());
            (p, h)
        })
        .collect()
}

/// The acceptance test of protected copies: an intruder holding everything the backup
/// machine holds (the password, and its create-only credentials for the protected
/// copy) forgets everything, prunes, syncs, redefines the mirror without protection,
/// syncs again, then deletes, renames, overwrites and chmods every object it can reach
/// on the copy and wipes the primary. Afterwards every snapshot restores byte for byte
/// from the copy, a maintenance before the period deletes nothing, and the maintaining
/// machine rebuilds the primary with every snapshot.
#[test]
fn an_intruder_with_everything_the_backup_machine_holds_cannot_destroy_a_protected_copy() {
    let env = Env::new();
    let Some(server) = Sftp::start_create_only(&env.path("sshd")) else {
        return;
    };
    open_path(&env.dir);
    // One definition, two machines: the backup machine logs in as the create-only
    // user, the maintaining machine as the account that owns the storage.
    let e = &env;
    let machine = |ssh: PathBuf, state: &str| {
        let state = e.path(state);
        move |args: &[&str]| -> std::process::Output {
            e.cmd()
                .env("VAULT_SSH", &ssh)
                .env("VAULT_STATE_DIR", &state)
                .args(args)
                .output()
                .expect("run vault")
        }
    };
    let backup_host = machine(ssh_as(&env, CREATE_ONLY_USER), "state-backup");
    let admin_host = machine(ssh_as(&env, "root"), "state-admin");
    let ok = |out: std::process::Output, what: &str| -> String {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let copy = env.path("storage/vault-b");
    let url = server.url_without_user(&copy);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    ok(backup_host(&["init", "--pack-size", "256K"]), "init");
    ok(
        backup_host(&[
            "mirror",
            "add",
            "vault-b",
            &url,
            "--protect",
            "30d",
            "--no-sync",
        ]),
        "mirror add",
    );
    // The copy is made with full rights, then handed over to the create-only account.
    fs::create_dir_all(copy.parent().unwrap()).unwrap();
    must(Command::new("cp").arg("-a").arg(env.repo()).arg(&copy));
    hand_over(&copy);
    let mut versions = Vec::new();
    for g in 0..3u64 {
        fs::write(src.join(format!("file{g}")), bytes(20 + g, 200_000)).unwrap();
        fs::write(src.join("notes.txt"), format!("generation {g}")).unwrap();
        ok(
            backup_host(&["backup", src.to_str().unwrap(), "-q"]),
            "backup",
        );
        ok(backup_host(&["sync"]), "sync");
        let kept = env.path(&format!("version{g}"));
        must(Command::new("cp").arg("-a").arg(&src).arg(&kept));
        versions.push(kept);
    }
    ok(admin_host(&["mirror", "trust", "vault-b"]), "trust");
    let before = contents(&copy);

    // The attack, with the password and the backup machine's credentials.
    ok(backup_host(&["forget", "--keep-last", "0"]), "forget");
    ok(backup_host(&["prune", "--grace", "0s"]), "prune");
    ok(backup_host(&["prune", "--grace", "0s"]), "prune");
    ok(backup_host(&["sync"]), "sync");
    ok(
        backup_host(&["mirror", "remove", "vault-b"]),
        "mirror remove",
    );
    ok(
        backup_host(&["mirror", "add", "vault-b", &url, "--no-sync"]),
        "unprotected redefinition",
    );
    // Its vault tries to delete there now; the storage refuses, and it says so.
    let out = backup_host(&["sync"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("left for `vault maintain`"), "{said}");
    let _ = backup_host(&["maintain"]);
    let mut batch = String::new();
    for p in walkdir(&copy) {
        let p = p.display();
        batch += &format!("-rm {p}\n-rename {p} {p}.x\n-put /etc/hostname {p}\n-chmod 666 {p}\n");
    }
    for d in ["data", "index", "snapshots", "keys", "forgotten"] {
        batch += &format!("-rmdir {}\n", copy.join(d).display());
    }
    assert!(
        server.as_create_only(&format!("ls {}", copy.display())),
        "the intruder reaches the copy"
    );
    server.as_create_only(&batch);
    fs::remove_dir_all(env.repo()).unwrap();

    // Every object of the copy is there as it was.
    let after = contents(&copy);
    for (path, hash) in &before {
        assert_eq!(
            after.get(path),
            Some(hash),
            "{} changed or went",
            path.display()
        );
    }
    // Every snapshot restores from the copy, byte for byte.
    let restore_all = |repo: &str, tag: &str| {
        let out = ok(
            admin_host(&["--json", "--repo", repo, "snapshots"]),
            "snapshots",
        );
        let snaps: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ids: Vec<&str> = snaps
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), versions.len(), "snapshots at {repo}");
        for (i, (id, version)) in ids.iter().zip(&versions).enumerate() {
            let target = env.path(&format!("{tag}-{i}"));
            ok(
                admin_host(&[
                    "--repo",
                    repo,
                    "restore",
                    id,
                    "--target",
                    target.to_str().unwrap(),
                    "-q",
                ]),
                "restore",
            );
            assert_eq!(
                snapshot_of(&Env::restored(&target, &src)),
                snapshot_of(version),
                "{id}"
            );
        }
    };
    restore_all(&url, "from-copy");
    ok(
        admin_host(&["--repo", &url, "check", "--read-data"]),
        "check the copy",
    );

    // The maintaining machine rebuilds the primary from the copy, defines the mirror
    // protected again, and brings every snapshot back; maintenance deletes nothing.
    ok(admin_host(&["repair", "--from", &url]), "repair --from");
    let out = admin_host(&["maintain", "--mirror", "vault-b"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the redefinition is not trusted: {out:?}"
    );
    ok(
        admin_host(&["mirror", "remove", "vault-b"]),
        "mirror remove",
    );
    ok(
        admin_host(&[
            "mirror",
            "add",
            "vault-b",
            &url,
            "--protect",
            "30d",
            "--no-sync",
        ]),
        "mirror add",
    );
    let m: serde_json::Value = serde_json::from_str(&ok(
        admin_host(&["--json", "maintain", "--mirror", "vault-b"]),
        "maintain",
    ))
    .unwrap();
    assert_eq!(m["mirrors"][0]["report"]["deleted"], 0, "{m}");
    ok(admin_host(&["unforget", "--from", "vault-b"]), "unforget");
    ok(admin_host(&["check", "--read-data"]), "check");
    restore_all(env.repo().to_str().unwrap(), "rebuilt");
    let after = contents(&copy);
    assert!(
        before.keys().all(|p| after.contains_key(p)),
        "maintenance deleted nothing"
    );
}

/// A key rotation reseals everything, but a protected mirror keeps the objects sync
/// replaces there, sealed under the old key, for its period: `key rotate` names it (and
/// every export made before, an image of its own), not the ordinary mirror, and after
/// the period `vault maintain` deletes what the old key opened there.
#[test]
fn after_a_key_rotation_a_protected_mirror_keeps_the_old_objects_until_its_period_has_passed() {
    let s = setup();
    let safe = s.safe.to_str().unwrap();
    let export = s.env.path("export");
    s.env.ok(&["export", "-q", export.to_str().unwrap()]);
    let old_snapshots = walkdir(&s.safe.join("snapshots"));
    assert_eq!(old_snapshots.len(), 2);
    fs::write(s.env.path("same-password"), common::PASSWORD).unwrap();

    let out = s
        .env
        .cmd()
        .env("VAULT_NEW_PASSWORD_FILE", s.env.path("same-password"))
        .args(["key", "rotate", "--yes"])
        .output()
        .unwrap();
    common::assert_ok(&out);
    let told = String::from_utf8_lossy(&out.stdout);
    assert!(told.contains("still readable with the old key"), "{told}");
    assert!(
        told.contains("mirror safe")
            && told.contains("kept 1h more")
            && told.contains("vault maintain --mirror safe"),
        "{told}"
    );
    assert!(
        told.contains(&format!("at {}: an image made before", export.display())),
        "{told}"
    );
    assert!(
        !told.contains("mirror plain"),
        "an ordinary mirror keeps nothing: {told}"
    );

    s.env.ok(&["sync"]);
    let kept = |dir: &Path| {
        old_snapshots
            .iter()
            .filter(|p| dir.join(p.strip_prefix(&s.safe).unwrap()).exists())
            .count()
    };
    assert_eq!(
        kept(&s.safe),
        2,
        "the protected mirror keeps the old snapshots"
    );
    assert_eq!(kept(&s.plain), 0, "the ordinary one follows the primary");
    let m = s.env.json(&["maintain", "--mirror", "safe"], 0);
    assert_eq!(m["mirrors"][0]["report"]["deleted"], 0, "{m}");
    assert_eq!(kept(&s.safe), 2);
    assert_eq!(count(&s.safe.join("keys")), 2, "the old key file waits too");
    s.assert_restores_from(&s.safe);

    age_records(&s.safe, "2 hours ago");
    let m = s.env.json(&["maintain", "--mirror", "safe"], 0);
    assert!(
        m["mirrors"][0]["report"]["deleted"].as_u64().unwrap() > 0,
        "{m}"
    );
    assert_eq!(kept(&s.safe), 0, "deleted once the period has passed");
    assert_eq!(count(&s.safe.join("keys")), 1);
    s.env.ok(&["--repo", safe, "check", "--read-data"]);
    s.assert_restores_from(&s.safe);
}
