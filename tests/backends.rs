//! Repositories on real remote servers on loopback: S3, SFTP and WebDAV servers,
//! through every command that reads or writes. The servers are started here; `.ci/run`
//! installs them.

mod common;

use std::fs;

use common::servers::{S3, Sftp, WebDav};
use common::{Env, bytes, snapshot_of};

/// The whole life of a repository at `url`: init, backups, restore, check, audit,
/// forget and prune, check again.
fn full_cycle(env: &Env, url: &str, extra_env: &[(&str, &str)]) {
    let run = |args: &[&str]| -> String {
        let out = env
            .cmd()
            .envs(extra_env.iter().copied())
            .env("VAULT_REPOSITORY", url)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "vault {args:?} on {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("big"), bytes(1, 3 << 20)).unwrap();
    fs::write(src.join("d/small"), b"small").unwrap();
    run(&["init", "--pack-size", "1M"]);
    run(&["backup", "-q", src.to_str().unwrap()]);
    fs::write(src.join("d/small"), b"changed").unwrap();
    run(&["backup", "-q", src.to_str().unwrap()]);
    let target = env.path("restored");
    run(&[
        "restore",
        "latest",
        "--verify",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        snapshot_of(&Env::restored(&target, &src)),
        snapshot_of(&src)
    );
    assert!(run(&["check", "--read-data"]).contains("no errors"));
    assert!(run(&["audit"]).contains("no errors"));
    run(&["forget", "-q", "--keep-last", "1", "--prune"]);
    assert!(run(&["check", "--read-data"]).contains("no errors"));
    assert!(run(&["verify"]).contains("verify: OK"));
}

#[test]
fn s3_repository_end_to_end() {
    let env = Env::new();
    let Some(s3) = S3::start(&env.path("s3")) else {
        return;
    };
    full_cycle(&env, &s3.url("vault"), &s3.env());
}

#[test]
fn sftp_repository_end_to_end() {
    let env = Env::new();
    let Some(sftp) = Sftp::start(&env.path("sshd")) else {
        return;
    };
    let url = sftp.url(&env.path("remote/vault"));
    full_cycle(&env, &url, &[]);
    // Writes went through temporary names: nothing half-written is left behind.
    let tmp = env.path("remote/vault/tmp");
    assert_eq!(fs::read_dir(tmp).unwrap().count(), 0);
}

#[test]
fn webdav_repository_end_to_end() {
    let env = Env::new();
    let Some(dav) = WebDav::start(&env.path("dav")) else {
        return;
    };
    full_cycle(&env, &dav.url("vault"), &[]);
    assert_eq!(fs::read_dir(env.path("dav/vault/tmp")).unwrap().count(), 0);
}

#[test]
fn unreachable_backend_fails_with_one_clear_line() {
    let env = Env::new();
    let Some(mut s3) = S3::start(&env.path("s3")) else {
        return;
    };
    let url = s3.url("vault");
    s3.server.stop();
    let out = env
        .cmd()
        .envs(s3.env())
        .args(["snapshots", "--repo", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(13), "storage failed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("connection refused"), "{err}");
    assert!(
        err.contains("s3://bucket/vault"),
        "names the repository: {err}"
    );
    assert!(
        !err.contains(common::servers::S3_SECRET),
        "no secrets in errors"
    );
}
