//! Bandwidth limits and connections, end to end on local repositories (a local path is
//! limited like any backend: a slow NAS mount wants it too). Timings are asserted only
//! as lower bounds on the limited runs: the machine may be slow, never faster than the
//! limit allows.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{Env, bytes, snapshot_of, walkdir};

const MIB: usize = 1 << 20;

/// A repository holding one backup of 8 MiB that does not compress.
fn eight_mib(env: &Env) -> std::path::PathBuf {
    env.init(&[]);
    let src = env.source_with_file(bytes(7, 8 * MIB));
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    src
}

fn timed(env: &Env, args: &[&str]) -> Duration {
    let start = Instant::now();
    env.ok(args);
    start.elapsed()
}

#[test]
fn limit_download_paces_a_restore() {
    let env = Env::new();
    let src = eight_mib(&env);
    let free = env.path("free");
    let free_took = timed(
        &env,
        &[
            "restore",
            "latest",
            "-q",
            "--target",
            free.to_str().unwrap(),
        ],
    );
    let paced = env.path("paced");
    let paced_took = timed(
        &env,
        &[
            "--limit-download",
            "2M",
            "restore",
            "latest",
            "-q",
            "--target",
            paced.to_str().unwrap(),
        ],
    );
    // 8 MiB at 2 MiB/s, less the bucket's eighth of a second: 3.9 s at least.
    assert!(
        paced_took >= Duration::from_secs(3),
        "--limit-download 2M restored 8 MiB in {paced_took:?}"
    );
    assert!(
        free_took * 2 < paced_took,
        "unlimited {free_took:?}, limited {paced_took:?}"
    );
    for target in [&free, &paced] {
        assert_eq!(
            snapshot_of(&Env::restored(target, &src)),
            snapshot_of(&src),
            "{}",
            target.display()
        );
    }
    eprintln!("restore of 8 MiB: {free_took:?} unlimited, {paced_took:?} at 2 MiB/s");
}

#[test]
fn limit_upload_paces_a_backup() {
    let env = Env::new();
    env.init(&[]);
    let free = env.path("free");
    fs::create_dir_all(&free).unwrap();
    fs::write(free.join("f"), bytes(1, 8 * MIB)).unwrap();
    let free_took = timed(&env, &["backup", "-q", free.to_str().unwrap()]);
    let paced = env.path("paced");
    fs::create_dir_all(&paced).unwrap();
    fs::write(paced.join("f"), bytes(2, 8 * MIB)).unwrap();
    // As the variable, which the flag's documentation names too.
    let start = Instant::now();
    let out = env
        .cmd()
        .env("VAULT_LIMIT_UPLOAD", "2MiB/s")
        .args(["backup", "-q", paced.to_str().unwrap()])
        .output()
        .unwrap();
    let paced_took = start.elapsed();
    common::assert_ok(&out);
    assert!(
        paced_took >= Duration::from_secs(3),
        "VAULT_LIMIT_UPLOAD=2MiB/s backed up 8 MiB in {paced_took:?}"
    );
    assert!(
        free_took * 2 < paced_took,
        "unlimited {free_took:?}, limited {paced_took:?}"
    );
    env.ok(&["check", "--read-data", "-q"]);
    eprintln!("backup of 8 MiB: {free_took:?} unlimited, {paced_took:?} at 2 MiB/s");
}

/// One request at a time still does everything: backup, check, restore, sync, audit.
#[test]
fn one_connection_works_end_to_end() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    for i in 0..20 {
        let dir = src.join(format!("d{}", i % 4));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}")), bytes(i, 3000 * (i as usize + 1))).unwrap();
    }
    fs::write(src.join("big"), bytes(99, 3 * MIB)).unwrap();
    fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["--connections", "1"];
        v.extend_from_slice(args);
        v
    }
    env.ok(&with(&["backup", "-q", src.to_str().unwrap()]));
    env.ok(&with(&["check", "--read-data", "-q"]));
    env.ok(&with(&["audit", "-q"]));
    let target = env.path("r");
    env.ok(&with(&[
        "restore",
        "latest",
        "-q",
        "--target",
        target.to_str().unwrap(),
    ]));
    assert_eq!(
        snapshot_of(&Env::restored(&target, &src)),
        snapshot_of(&src)
    );
    let mirror = env.path("mirror");
    env.ok(&with(&[
        "mirror",
        "add",
        "copy",
        mirror.to_str().unwrap(),
        "-q",
    ]));
    let mut c = env.cmd();
    c.env("VAULT_CONNECTIONS", "1")
        .args(["check", "--read-data", "-q", "--repo"])
        .arg(&mirror);
    common::assert_ok(&c.output().unwrap());
}

/// A value that is not a rate (or a connection count) fails at once, in one line naming
/// where it came from and what is accepted, with the usage exit code, and writes nothing.
#[test]
fn bad_limits_fail_in_one_line_and_write_nothing() {
    let env = Env::new();
    let src = env.source_with_file(b"data");
    let src = src.to_str().unwrap();
    let one_line = |out: std::process::Output, names: &str, accepted: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(names) && err.contains(accepted),
            "{names}: {err}"
        );
        assert!(out.stdout.is_empty());
    };
    one_line(
        env.run(&["--limit-upload", "10Q", "init"]),
        "--limit-upload",
        "500K, 10M or 1G",
    );
    assert!(!env.repo().exists(), "init wrote a repository");

    env.init(&[]);
    env.ok(&["backup", "-q", src]);
    let before = walkdir(&env.repo());
    one_line(
        env.run(&["backup", src, "--limit-download", "fast"]),
        "--limit-download",
        "bare number of KiB/s",
    );
    one_line(
        env.run(&["backup", src, "--connections", "0"]),
        "--connections",
        "from 1 to 256",
    );
    let mut c = env.cmd();
    c.env("VAULT_LIMIT_UPLOAD", "10Q").args(["backup", src]);
    one_line(c.output().unwrap(), "--limit-upload", "500K");

    // In a profile, per repository and per mirror: named by profile, section and key.
    let config = env.path("vault.toml");
    let write_config = |extra: &str| {
        fs::write(
            &config,
            format!(
                "[profiles.p]\nrepository = \"{}\"\nsources = [\"{src}\"]\n{extra}",
                env.repo().display()
            ),
        )
        .unwrap();
    };
    let run = |args: &[&str]| {
        env.cmd()
            .args(["--config", config.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    write_config("limit-download = \"2 parsecs\"\n");
    one_line(
        run(&["--profile", "p", "backup"]),
        "profile p: limit-download",
        "500K",
    );
    write_config("[profiles.p.mirrors.offsite]\nlimit-upload = \"10Q\"\n");
    one_line(
        run(&["run", "p"]),
        "profile p: mirrors.offsite.limit-upload",
        "500K",
    );
    one_line(
        run(&["config", "check"]),
        "mirrors.offsite.limit-upload",
        "500K",
    );
    write_config("[profiles.p.mirrors.offsite]\nconnections = 1000\n");
    one_line(
        run(&["config", "check"]),
        "mirrors.offsite.connections",
        "from 1 to 256",
    );
    assert_eq!(walkdir(&env.repo()), before, "something was written");

    // Good values pass, in every form.
    write_config(
        "limit-upload = 800\nlimit-download = \"10MiB/s\"\nconnections = 4\n\
         [profiles.p.mirrors.offsite]\nlimit-upload = \"0\"\nconnections = \"2\"\n",
    );
    common::assert_ok(&run(&["config", "check"]));
    common::assert_ok(&run(&["--profile", "p", "snapshots"]));
}

/// A mirror's own limit in the profile applies to it alone, over the command's: the sync
/// to it is paced, the backup to the primary is not.
#[test]
fn a_mirror_has_its_own_limit() {
    let env = Env::new();
    let src = env.source_with_file(bytes(3, 8 * MIB));
    let mirror = env.path("mirror");
    let config = env.path("vault.toml");
    fs::write(
        &config,
        format!(
            "[profiles.p]\nrepository = \"{}\"\nsources = [\"{}\"]\nprune = \"never\"\ncheck = \"never\"\n\
             [profiles.p.mirrors.slow]\nlimit-upload = \"2M\"\n",
            env.repo().display(),
            src.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let start = Instant::now();
        let out = env
            .cmd()
            .args(["--config", config.to_str().unwrap(), "--profile", "p"])
            .args(args)
            .output()
            .unwrap();
        common::assert_ok(&out);
        start.elapsed()
    };
    run(&["init"]);
    run(&[
        "mirror",
        "add",
        "slow",
        mirror.to_str().unwrap(),
        "--no-sync",
    ]);
    let backup = run(&["backup", "-q"]);
    let sync = run(&["sync", "-q"]);
    assert!(
        sync >= Duration::from_secs(3),
        "the mirror's limit-upload 2M synced 8 MiB in {sync:?}"
    );
    assert!(backup * 2 < sync, "backup {backup:?}, sync {sync:?}");
    env.ok(&[
        "check",
        "--read-data",
        "-q",
        "--repo",
        mirror.to_str().unwrap(),
    ]);
    // The mirror's "0" lifts the command's limit for it alone.
    fs::write(
        &config,
        fs::read_to_string(&config)
            .unwrap()
            .replace("limit-upload = \"2M\"", "limit-upload = 0"),
    )
    .unwrap();
    let src2 = env.path("src/g");
    fs::write(&src2, bytes(4, 8 * MIB)).unwrap();
    let backup = run(&[
        "--limit-upload",
        "2M",
        "--limit-download",
        "0",
        "backup",
        "-q",
    ]);
    assert!(backup >= Duration::from_secs(3), "{backup:?}");
    let sync = run(&["--limit-upload", "2M", "sync", "-q"]);
    assert!(
        sync * 2 < backup,
        "sync to a mirror without limit took {sync:?}, the limited backup {backup:?}"
    );
    env.ok(&[
        "check",
        "--read-data",
        "-q",
        "--repo",
        mirror.to_str().unwrap(),
    ]);
}

/// A remote repository at `url` paced both ways, with one connection enough for a
/// restore and sixteen for a check.
fn paced_over(env: &Env, name: &str, url: &str, vars: &[(&str, &str)]) {
    let src = env.path(&format!("src-{name}"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), bytes(5, 8 * MIB)).unwrap();
    let run = |args: &[&str]| {
        let start = Instant::now();
        let out = env
            .cmd()
            .envs(vars.iter().copied())
            .env("VAULT_REPOSITORY", url)
            .args(args)
            .output()
            .unwrap();
        common::assert_ok(&out);
        start.elapsed()
    };
    run(&["init"]);
    let up = run(&[
        "--limit-upload",
        "2M",
        "backup",
        "-q",
        src.to_str().unwrap(),
    ]);
    assert!(
        up >= Duration::from_secs(3),
        "{name}: 8 MiB up at 2 MiB/s in {up:?}"
    );
    let target = env.path(&format!("r-{name}"));
    let down = run(&[
        "--limit-download",
        "2M",
        "--connections",
        "1",
        "restore",
        "latest",
        "-q",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert!(
        down >= Duration::from_secs(3),
        "{name}: 8 MiB down at 2 MiB/s in {down:?}"
    );
    assert_eq!(
        snapshot_of(&Env::restored(&target, &src)),
        snapshot_of(&src)
    );
    run(&["--connections", "16", "check", "--read-data", "-q"]);
    eprintln!("{name}: 8 MiB up in {up:?}, down in {down:?}, at 2 MiB/s");
}

/// Over HTTP to an object store: writes go in multipart parts of at least 5 MiB.
#[test]
fn an_s3_repository_is_paced_too() {
    let env = Env::new();
    let Some(s3) = common::servers::S3::start(&env.path("s3")) else {
        return;
    };
    paced_over(&env, "s3", &s3.url("vault"), &s3.env());
}

/// WebDAV takes an object in one request: paced whole.
#[test]
fn a_webdav_repository_is_paced_too() {
    let env = Env::new();
    let Some(dav) = common::servers::WebDav::start(&env.path("dav")) else {
        return;
    };
    paced_over(&env, "webdav", &dav.url("vault"), &[]);
}

/// SFTP is a stream: paced in small pieces, as a local file is.
#[test]
fn an_sftp_repository_is_paced_too() {
    let env = Env::new();
    let Some(sftp) = common::servers::Sftp::start(&env.path("sshd")) else {
        return;
    };
    let url = sftp.url(&env.path("remote/vault"));
    paced_over(&env, "sftp", &url, &[]);
}
