//! Mirror definitions are sealed, but any key holder can write one: a host uses a mirror
//! only once it was added or trusted there, a mirror gets only its own credentials unless
//! the user opted in, and credentials never travel over plain http to a host that is not
//! loopback unless the user said so. The attacker's server here is a listener on
//! loopback that records every request it receives.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Env, bytes, walkdir};

/// An HTTP server that answers 403 to everything and keeps each request's head
/// (request line and headers), so a test can say what a client sent it.
struct Capture {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Capture {
    fn start() -> Capture {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let h = h.clone();
                std::thread::spawn(move || serve(conn, &h));
            }
        });
        Capture { port, heads }
    }

    /// Every request received so far (a connection that sent nothing counts as one).
    fn requests(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn all(&self) -> String {
        self.requests().join("\n")
    }
}

fn serve(mut conn: TcpStream, heads: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    loop {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte) {
                Ok(1) => buf.push(byte[0]),
                _ => break,
            }
        }
        if buf.is_empty() {
            return;
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<u64>().ok())?
            })
            .unwrap_or(0);
        heads.lock().unwrap().push(head);
        let _ = std::io::copy(&mut (&mut conn).take(len), &mut std::io::sink());
        let reply = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        if conn.write_all(reply).is_err() {
            return;
        }
    }
}

/// The generic credentials every command of the victim runs with: no mirror may get them.
const GENERIC: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "GENERICKEYID7F3A"),
    ("AWS_SECRET_ACCESS_KEY", "generic-aws-secret-5c1e"),
    ("VAULT_WEBDAV_USER", "generic-user"),
    ("VAULT_WEBDAV_PASSWORD", "generic-webdav-pw-91c2"),
];

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Asserts that nothing of the generic credentials reached the server.
fn no_generic_credentials(cap: &Capture) {
    let seen = cap.all();
    for (_, secret) in GENERIC {
        assert!(!seen.contains(secret), "{secret} was sent:\n{seen}");
    }
    assert!(
        !seen.contains(&basic(GENERIC[2].1, GENERIC[3].1)),
        "the generic WebDAV login was sent:\n{seen}"
    );
}

/// The victim host: the test's own HOME, with the generic credentials set.
fn victim(env: &Env, args: &[&str]) -> Output {
    env.cmd().envs(GENERIC).args(args).output().unwrap()
}

/// Another host holding the password: another HOME, so another local state and cache.
fn other_host(env: &Env) -> Command {
    let mut c = env.cmd();
    c.env("HOME", env.path("attacker"))
        .env("VAULT_CACHE_DIR", env.path("attacker-cache"));
    c
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn expect(out: Output, want: i32, what: &str) -> Output {
    assert_eq!(code(&out), Some(want), "{what}: {}", stderr(&out));
    out
}

/// A repository with one snapshot; returns the source.
fn repo_with_a_snapshot(env: &Env) -> PathBuf {
    let src = env.source_with_file(bytes(5, 200_000));
    env.init(&[]);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    src
}

fn untrusted_warning(out: &Output, name: &str) {
    let err = stderr(out);
    let line = err
        .lines()
        .find(|l| l.contains(&format!("mirror {name} ")))
        .unwrap_or_else(|| panic!("no warning naming mirror {name}: {err}"));
    assert!(
        line.contains(&format!("`vault mirror trust {name}`")) && line.contains("URL"),
        "{line}"
    );
}

/// Moves every pack of the primary aside, so that reads must go to a mirror.
fn hide_packs(env: &Env) -> Vec<(PathBuf, PathBuf)> {
    let moved: Vec<(PathBuf, PathBuf)> = walkdir(&env.repo().join("data"))
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, env.path(&format!("hidden-pack-{i}"))))
        .collect();
    for (from, to) in &moved {
        std::fs::rename(from, to).unwrap();
    }
    moved
}

fn unhide(moved: &[(PathBuf, PathBuf)]) {
    for (from, to) in moved {
        std::fs::rename(to, from).unwrap();
    }
}

#[test]
fn a_forged_mirror_is_never_contacted_until_trusted_and_never_gets_generic_credentials() {
    let env = Env::new();
    let src = repo_with_a_snapshot(&env);
    let cap = Capture::start();
    let url = format!("webdav://127.0.0.1:{}/evil", cap.port);
    // Another key holder defines a mirror: the definition is sealed and authentic.
    expect(
        other_host(&env)
            .args(["mirror", "add", "evil", &url, "--no-sync"])
            .output()
            .unwrap(),
        0,
        "the other host adds its mirror",
    );
    assert!(cap.requests().is_empty());

    let out = victim(&env, &["sync"]);
    assert!(
        cap.requests().is_empty(),
        "sync contacted it:\n{}",
        cap.all()
    );
    let out = expect(out, 3, "sync skips the untrusted mirror");
    untrusted_warning(&out, "evil");
    let out = expect(victim(&env, &["--json", "status"]), 0, "status");
    untrusted_warning(&out, "evil");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &status["copies"][1];
    assert_eq!(
        (row["name"].as_str(), &row["trusted"]),
        (Some("evil"), &serde_json::json!(false))
    );
    assert_eq!(row["complete"], false, "{status}");
    std::fs::write(src.join("g"), b"more").unwrap();
    let out = victim(&env, &["backup", "-q", "--sync", src.to_str().unwrap()]);
    let out = expect(out, 3, "backup --sync skips the untrusted mirror");
    let err = stderr(&out);
    assert_eq!(
        err.lines().filter(|l| l.contains("mirror evil (")).count(),
        1,
        "one warning line: {err}"
    );
    let list: serde_json::Value = serde_json::from_slice(
        &expect(victim(&env, &["--json", "mirror", "list"]), 0, "list").stdout,
    )
    .unwrap();
    assert_eq!(list[0]["trusted"], false, "{list}");
    // Reads that fail here do not fall back to it either.
    let moved = hide_packs(&env);
    let target = env.path("r1");
    let out = victim(
        &env,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_ne!(code(&out), Some(0));
    untrusted_warning(&out, "evil");
    // Nor does check ask it whether it holds the missing packs.
    let out = victim(&env, &["check"]);
    assert_ne!(code(&out), Some(0));
    untrusted_warning(&out, "evil");
    let out = expect(
        victim(&env, &["repair", "--from", "evil"]),
        2,
        "repair --from evil",
    );
    untrusted_warning(&out, "evil");
    assert!(
        cap.requests().is_empty(),
        "an untrusted mirror was contacted:\n{}",
        cap.all()
    );

    // Trusted: the user sees what they trust; it is used, without the generic credentials.
    let out = expect(victim(&env, &["mirror", "trust", "evil"]), 0, "trust");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&url),
        "{out:?}"
    );
    let out = victim(
        &env,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_ne!(code(&out), Some(0), "the server holds nothing");
    assert!(
        !cap.requests().is_empty(),
        "reads now fall back to the mirror"
    );
    unhide(&moved);
    expect(
        victim(&env, &["sync"]),
        3,
        "sync tries it (the server refuses)",
    );
    no_generic_credentials(&cap);
    assert!(
        !cap.all().to_ascii_lowercase().contains("authorization:"),
        "{}",
        cap.all()
    );
    // Its own credentials are the ones it gets.
    let out = env
        .cmd()
        .envs(GENERIC)
        .env("VAULT_MIRROR_EVIL_VAULT_WEBDAV_USER", "evil-own-user")
        .env("VAULT_MIRROR_EVIL_VAULT_WEBDAV_PASSWORD", "evil-own-pw")
        .arg("sync")
        .output()
        .unwrap();
    expect(out, 3, "sync with its own credentials");
    assert!(
        cap.all().contains(&basic("evil-own-user", "evil-own-pw")),
        "{}",
        cap.all()
    );
    no_generic_credentials(&cap);
}

#[test]
fn an_s3_mirror_gets_only_its_own_keys_unless_the_user_opts_in() {
    let env = Env::new();
    repo_with_a_snapshot(&env);
    let cap = Capture::start();
    let url = format!(
        "s3://bucket/evil?endpoint=http://127.0.0.1:{}&region=us-east-1",
        cap.port
    );
    expect(
        other_host(&env)
            .args(["mirror", "add", "evil3", &url, "--no-sync"])
            .output()
            .unwrap(),
        0,
        "the other host adds its mirror",
    );
    expect(victim(&env, &["sync"]), 3, "untrusted");
    assert!(cap.requests().is_empty(), "{}", cap.all());
    expect(victim(&env, &["mirror", "trust", "evil3"]), 0, "trust");
    expect(victim(&env, &["sync"]), 3, "the server refuses");
    assert!(!cap.requests().is_empty());
    no_generic_credentials(&cap);
    let out = env
        .cmd()
        .envs(GENERIC)
        .env("VAULT_MIRROR_EVIL3_AWS_ACCESS_KEY_ID", "OWNKEYIDEVIL3")
        .env("VAULT_MIRROR_EVIL3_AWS_SECRET_ACCESS_KEY", "own-secret")
        .arg("sync")
        .output()
        .unwrap();
    expect(out, 3, "sync with its own keys");
    assert!(
        cap.all().contains("Credential=OWNKEYIDEVIL3/"),
        "{}",
        cap.all()
    );
    no_generic_credentials(&cap);
    // The user opts in: now the generic keys may serve it.
    expect(
        victim(&env, &["mirror", "trust", "evil3", "--generic-credentials"]),
        0,
        "trust with the generic credentials",
    );
    expect(victim(&env, &["sync"]), 3, "sync with the generic keys");
    assert!(
        cap.all().contains("Credential=GENERICKEYID7F3A/"),
        "{}",
        cap.all()
    );
}

#[test]
fn a_redefined_mirror_is_untrusted_again() {
    let env = Env::new();
    repo_with_a_snapshot(&env);
    let copy = env.path("copy");
    env.ok(&["mirror", "add", "copy", copy.to_str().unwrap(), "-q"]);
    env.ok(&["sync", "-q"]);
    // Another key holder points the same name elsewhere.
    let cap = Capture::start();
    let url = format!("webdav://127.0.0.1:{}/elsewhere", cap.port);
    for args in [
        vec!["mirror", "remove", "copy"],
        vec!["mirror", "add", "copy", &url, "--no-sync"],
    ] {
        expect(
            other_host(&env).args(&args).output().unwrap(),
            0,
            "redefine",
        );
    }
    let out = expect(victim(&env, &["sync"]), 3, "sync");
    untrusted_warning(&out, "copy");
    assert!(stderr(&out).contains("redefined"), "{}", stderr(&out));
    let out = expect(victim(&env, &["status"]), 0, "status");
    untrusted_warning(&out, "copy");
    assert!(cap.requests().is_empty(), "{}", cap.all());
    expect(victim(&env, &["mirror", "trust", "copy"]), 0, "trust again");
    expect(victim(&env, &["sync"]), 3, "now used");
    assert!(!cap.requests().is_empty());
    // Untrusted once more: skipped again.
    expect(victim(&env, &["mirror", "untrust", "copy"]), 0, "untrust");
    let before = cap.requests().len();
    let out = expect(victim(&env, &["sync"]), 3, "sync");
    untrusted_warning(&out, "copy");
    assert_eq!(cap.requests().len(), before);
}

/// Runs `args` and says how long it took.
fn timed(mut c: Command, args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = c.args(args).output().unwrap();
    (out, start.elapsed())
}

#[test]
fn credentials_never_go_over_plain_http_to_another_host_without_the_flag() {
    let env = Env::new();
    // TEST-NET-1: nothing answers there, so only a refusal before connecting is fast.
    let webdav = "webdav://192.0.2.1:8080/vault";
    let s3 = "s3://bucket/vault?endpoint=http://192.0.2.1:9000&region=us-east-1";
    for (repo, vars) in [(webdav, &GENERIC[2..]), (s3, &GENERIC[..2])] {
        let mut c = env.cmd();
        c.envs(vars.iter().copied());
        let (out, took) = timed(c, &["--repo", repo, "snapshots"]);
        assert_eq!(code(&out), Some(2), "{repo}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(repo) && err.contains("--insecure-http"),
            "{err}"
        );
        assert!(took < Duration::from_secs(5), "{repo}: took {took:?}");
    }
    // A mirror: refused when added, and nothing recorded.
    env.init(&[]);
    let mirror_creds = [
        ("VAULT_MIRROR_FAR_VAULT_WEBDAV_USER", "far-user"),
        ("VAULT_MIRROR_FAR_VAULT_WEBDAV_PASSWORD", "far-pw-2d8e"),
    ];
    let mut c = env.cmd();
    c.envs(mirror_creds);
    let (out, took) = timed(c, &["mirror", "add", "far", webdav, "--no-sync"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--insecure-http"), "{}", stderr(&out));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(env.json(&["mirror", "list"], 0), serde_json::json!([]));

    // 0.0.0.0 is not loopback by name, but Linux delivers it to this machine: the
    // capturing listener shows what would have gone over the wire.
    let cap = Capture::start();
    let far = format!("webdav://0.0.0.0:{}/far", cap.port);
    let mut c = env.cmd();
    c.envs(mirror_creds);
    let (out, _) = timed(c, &["mirror", "add", "far", &far, "--no-sync"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    let mut c = env.cmd();
    c.envs(mirror_creds);
    let (out, _) = timed(
        c,
        &["mirror", "add", "far", &far, "--no-sync", "--insecure-http"],
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(cap.requests().is_empty());
    // Recorded for the mirror: later commands need no flag.
    let mut c = env.cmd();
    c.envs(mirror_creds);
    let (out, _) = timed(c, &["sync"]);
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    assert!(!stderr(&out).contains("refusing"), "{}", stderr(&out));
    assert!(
        cap.all().contains(&basic("far-user", "far-pw-2d8e")),
        "{}",
        cap.all()
    );
    // Trusted again without the flag: refused again, nothing sent.
    env.ok(&["mirror", "trust", "far", "-q"]);
    let before = cap.requests().len();
    let mut c = env.cmd();
    c.envs(mirror_creds);
    let (out, _) = timed(c, &["sync"]);
    assert_eq!(code(&out), Some(3));
    assert!(stderr(&out).contains("refusing"), "{}", stderr(&out));
    assert_eq!(cap.requests().len(), before);

    // The primary with VAULT_INSECURE_HTTP=1 goes ahead (and meets the listener).
    let primary = format!("webdav://0.0.0.0:{}/primary", cap.port);
    let mut c = env.cmd();
    c.envs(GENERIC[2..].iter().copied())
        .env("VAULT_INSECURE_HTTP", "1");
    let (out, _) = timed(c, &["--repo", &primary, "snapshots"]);
    assert_ne!(code(&out), Some(0));
    assert!(!stderr(&out).contains("refusing"), "{}", stderr(&out));
    assert!(cap.all().contains("/primary/"), "{}", cap.all());
    // Loopback needs no flag.
    let local = format!("webdav://127.0.0.1:{}/local", cap.port);
    let mut c = env.cmd();
    c.envs(GENERIC[2..].iter().copied());
    let (out, _) = timed(c, &["--repo", &local, "snapshots"]);
    assert!(!stderr(&out).contains("refusing"), "{}", stderr(&out));
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn trust_lives_in_local_state_not_in_the_cache() {
    let env = Env::new();
    let no_cache = |args: &[&str]| -> Output {
        env.cmd()
            .env("VAULT_CACHE_DIR", "")
            .args(args)
            .output()
            .unwrap()
    };
    expect(no_cache(&["init"]), 0, "init");
    let copy = env.path("copy");
    expect(
        no_cache(&["mirror", "add", "copy", copy.to_str().unwrap(), "--no-sync"]),
        0,
        "add",
    );
    let cap = Capture::start();
    let url = format!("webdav://127.0.0.1:{}/evil", cap.port);
    let mut other = other_host(&env);
    other.env("VAULT_CACHE_DIR", "");
    expect(
        other
            .args(["mirror", "add", "evil", &url, "--no-sync"])
            .output()
            .unwrap(),
        0,
        "the other host adds its mirror",
    );
    // Without a cache, the mirror added here is still trusted and the other one is not.
    let out = expect(no_cache(&["sync"]), 3, "sync");
    untrusted_warning(&out, "evil");
    assert!(
        stderr(&out).lines().all(|l| !l.contains("mirror copy ")),
        "{}",
        stderr(&out)
    );
    assert!(
        copy.join("config").exists(),
        "the trusted mirror was synced"
    );
    assert!(cap.requests().is_empty());
    assert!(!env.path("cache").exists());

    // Where it lives: ~/.local/state/vault/<repository id>/mirrors.json, private.
    let files: Vec<PathBuf> = walkdir(&env.path(".local/state/vault"))
        .into_iter()
        .filter(|p| p.ends_with("mirrors.json"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let file = &files[0];
    assert_eq!(mode(file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    // VAULT_STATE_DIR moves it: there, nothing is trusted yet.
    let out = env
        .cmd()
        .env("VAULT_CACHE_DIR", "")
        .env("VAULT_STATE_DIR", env.path("state2"))
        .arg("sync")
        .output()
        .unwrap();
    let out = expect(out, 3, "sync with another state directory");
    untrusted_warning(&out, "copy");
    untrusted_warning(&out, "evil");
    // A damaged state file: one line naming it, nothing used.
    std::fs::write(file, "{ not json").unwrap();
    let out = expect(no_cache(&["sync"]), 2, "a damaged state file");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(cap.requests().is_empty());
}

#[test]
fn a_profile_trusts_by_name_optionally_pinned_to_a_url() {
    let env = Env::new();
    repo_with_a_snapshot(&env);
    let cap = Capture::start();
    let url = format!(
        "s3://bucket/evil?endpoint=http://127.0.0.1:{}&region=us-east-1",
        cap.port
    );
    expect(
        other_host(&env)
            .args(["mirror", "add", "offsite", &url, "--no-sync"])
            .output()
            .unwrap(),
        0,
        "the other host adds its mirror",
    );
    let config = env.path("vault.toml");
    let with_profile = |section: &str| -> Output {
        std::fs::write(&config, format!("[profiles.p.mirrors.offsite]\n{section}")).unwrap();
        env.cmd()
            .envs(GENERIC)
            .args([
                "--config",
                config.to_str().unwrap(),
                "--profile",
                "p",
                "sync",
            ])
            .output()
            .unwrap()
    };
    // Pinned to another URL: the definition in force is not the one the user meant.
    let out = expect(
        with_profile("trust = true\nurl = \"s3://bucket/mine?region=eu\"\n"),
        3,
        "a pinned URL that differs",
    );
    untrusted_warning(&out, "offsite");
    assert!(cap.requests().is_empty(), "{}", cap.all());
    // Trusted by name: used, still without the generic keys.
    expect(with_profile("trust = true\n"), 3, "the server refuses");
    assert!(!cap.requests().is_empty());
    no_generic_credentials(&cap);
    // The profile opts in to the generic keys.
    let pinned = format!("trust = true\nurl = \"{url}\"\ngeneric-credentials = true\n");
    expect(with_profile(&pinned), 3, "the server refuses");
    assert!(
        cap.all().contains("Credential=GENERICKEYID7F3A/"),
        "{}",
        cap.all()
    );
}
