//! Restore into a hostile target: symlinks planted at any component of the restore path,
//! or swapped in while it runs, are never followed; nothing restored is ever more open
//! than its snapshot mode, while the restore runs or after it is killed; and the options
//! that leave owners, xattrs and special files out do so.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A source with a private directory, a public one and a few files; backed up.
fn backed_up(env: &Env) -> PathBuf {
    let src = env.path("src");
    fs::create_dir_all(src.join("private/inner")).unwrap();
    fs::create_dir_all(src.join("public")).unwrap();
    fs::write(src.join("private/key"), b"secret key").unwrap();
    fs::write(src.join("private/inner/deep"), b"deeper secret").unwrap();
    fs::write(src.join("public/readme"), b"hello").unwrap();
    chmod(&src.join("private/key"), 0o600);
    chmod(&src.join("private/inner/deep"), 0o600);
    chmod(&src.join("private/inner"), 0o700);
    chmod(&src.join("private"), 0o700);
    env.init(&[]);
    env.ok(&["backup", src.to_str().unwrap()]);
    src
}

/// Everything below `dir`, as (path, lstat mode).
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(md) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if md.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), md.mode()));
        }
    }
    out
}

fn restore_args<'a>(target: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["restore", "latest", "--target", target.to_str().unwrap()];
    a.extend_from_slice(extra);
    a
}

/// A symlink planted where a directory of the restore path goes sends nothing outside:
/// without --overwrite the restore is refused before it writes, with it the symlink is
/// replaced by the real directory.
#[test]
fn a_symlink_planted_at_a_component_is_never_followed() {
    let env = Env::new();
    let src = backed_up(&env);
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    chmod(&outside, 0o755);
    // One planted at the first component (TARGET/tmp) and one deep down.
    for plant in [
        PathBuf::from("tmp"),
        src.join("private").strip_prefix("/").unwrap().to_path_buf(),
    ] {
        let target = env.path(&format!("t-{}", plant.components().count()));
        let at = target.join(&plant);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        symlink(&outside, &at).unwrap();
        let err = env.expect(&restore_args(&target, &[]), 1);
        let _ = err;
        assert!(modes(&outside).is_empty(), "restore wrote through {at:?}");
        env.ok(&restore_args(&target, &["--overwrite"]));
        assert!(
            modes(&outside).is_empty(),
            "--overwrite wrote through {at:?}"
        );
        assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o7777, 0o755);
        let md = fs::symlink_metadata(&at).unwrap();
        assert!(
            md.is_dir(),
            "the symlink at {at:?} is replaced by a directory"
        );
        assert_eq!(
            fs::read(Env::restored(&target, &src).join("private/key")).unwrap(),
            b"secret key"
        );
    }
}

/// With --overwrite, a symlink (or a hard link) planted where a file goes is replaced,
/// never written through: the file it points to keeps its content and mode.
#[test]
fn overwrite_replaces_a_planted_link_instead_of_writing_through_it() {
    let env = Env::new();
    let src = backed_up(&env);
    let victim = env.path("victim");
    fs::write(&victim, b"do not touch").unwrap();
    chmod(&victim, 0o640);
    let hard_victim = env.path("hard-victim");
    fs::write(&hard_victim, b"nor this").unwrap();
    let target = env.path("t");
    let restored = Env::restored(&target, &src);
    fs::create_dir_all(restored.join("private")).unwrap();
    fs::create_dir_all(restored.join("public")).unwrap();
    symlink(&victim, restored.join("private/key")).unwrap();
    fs::hard_link(&hard_victim, restored.join("public/readme")).unwrap();
    let out = env.run(&restore_args(&target, &[]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would be overwritten (2 existing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.ok(&restore_args(&target, &["--overwrite"]));
    assert_eq!(fs::read(&victim).unwrap(), b"do not touch");
    assert_eq!(fs::metadata(&victim).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(fs::read(&hard_victim).unwrap(), b"nor this");
    let key = restored.join("private/key");
    assert!(fs::symlink_metadata(&key).unwrap().file_type().is_file());
    assert_eq!(fs::read(&key).unwrap(), b"secret key");
    assert_eq!(fs::metadata(&key).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(fs::read(restored.join("public/readme")).unwrap(), b"hello");
}

/// An attacker who can write in the target swaps the directories restore is filling for
/// symlinks to a directory of theirs, as fast as they can, during many restores: nothing
/// ever lands there.
#[test]
fn symlinks_swapped_in_while_restoring_are_never_followed() {
    let env = Env::new();
    let src = env.path("src");
    for d in 0..8 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..60 {
            fs::write(dir.join(format!("f{f}")), bytes(d * 100 + f, 2000)).unwrap();
        }
    }
    env.init(&[]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    let mut swaps = 0usize;
    for round in 0..6 {
        let target = env.path(&format!("t{round}"));
        let restored = Env::restored(&target, &src);
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = {
            let (stop, restored, outside) = (stop.clone(), restored.clone(), outside.clone());
            std::thread::spawn(move || {
                let mut n = 0usize;
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let d = restored.join(format!("d{}", i % 8));
                    i += 1;
                    if fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir())
                        && fs::rename(&d, restored.join(format!("moved{i}"))).is_ok()
                        && symlink(&outside, &d).is_ok()
                    {
                        n += 1;
                    }
                }
                n
            })
        };
        let out = env.run(&restore_args(&target, &["--overwrite"]));
        stop.store(true, Ordering::Relaxed);
        swaps += attacker.join().unwrap();
        assert!(
            matches!(out.status.code(), Some(0 | 1 | 3)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            modes(&outside).is_empty(),
            "round {round}: restore wrote into the attacker's directory: {:?}",
            modes(&outside)
        );
    }
    assert!(swaps > 0, "the attacker never got to swap a directory");
}

/// The snapshot's modes by restored path, for the source's own entries.
fn snapshot_modes(src: &Path, target: &Path) -> Vec<(PathBuf, u32)> {
    modes(src)
        .into_iter()
        .map(|(p, m)| (Env::restored(target, &p), m & 0o7777))
        .collect()
}

fn assert_never_wider(seen: &[(PathBuf, u32)], expected: &[(PathBuf, u32)], when: &str) {
    for (p, m) in seen {
        if let Some((_, want)) = expected.iter().find(|(q, _)| q == p) {
            assert_eq!(
                m & 0o777 & !want,
                0,
                "{when}: {p:?} was {:o}, its snapshot mode is {want:o}",
                m & 0o777
            );
        }
    }
}

/// A source whose restore takes a while: a private directory with large files.
fn slow_source(env: &Env) -> PathBuf {
    let src = env.path("src");
    let private = src.join("private");
    fs::create_dir_all(&private).unwrap();
    for i in 0..24 {
        let f = private.join(format!("key{i:02}"));
        fs::write(&f, bytes(i, 3 << 20)).unwrap();
        chmod(&f, 0o600);
    }
    fs::write(src.join("world-readable"), b"open").unwrap();
    chmod(&src.join("world-readable"), 0o644);
    chmod(&private, 0o700);
    src
}

/// Polls every mode in the target while a restore runs, then kills another restore
/// half-way: at no instant, and not after the kill, is anything more open than the
/// snapshot says.
#[test]
fn nothing_is_more_open_than_its_snapshot_mode_during_or_after_a_killed_restore() {
    let env = Env::new();
    let src = slow_source(&env);
    env.init(&[]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("t");
    let expected = snapshot_modes(&src, &target);
    let mut child = env
        .cmd()
        .args(restore_args(&target, &[]))
        .spawn()
        .expect("start restore");
    let mut polls = 0;
    let mut seen_private = false;
    while child.try_wait().unwrap().is_none() {
        let seen = modes(&target);
        seen_private |= seen.iter().any(|(p, _)| p.ends_with("private/key00"));
        assert_never_wider(&seen, &expected, "while restoring");
        polls += 1;
    }
    assert!(child.wait().unwrap().success());
    assert!(
        polls > 3 && seen_private,
        "the poll saw the restore ({polls} polls)"
    );
    assert_never_wider(&modes(&target), &expected, "after the restore");
    // The finished restore has exactly the snapshot's modes.
    for (p, want) in &expected {
        assert_eq!(
            fs::symlink_metadata(p).unwrap().mode() & 0o7777,
            *want,
            "{p:?}"
        );
    }

    let killed = env.path("killed");
    let expected = snapshot_modes(&src, &killed);
    let mut child = env
        .cmd()
        .args(restore_args(&killed, &[]))
        .spawn()
        .expect("start restore");
    let start = Instant::now();
    while !Env::restored(&killed, &src).join("private/key03").exists()
        && start.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let after = modes(&killed);
    assert!(
        after.iter().any(|(p, _)| p.ends_with("private")),
        "killed before anything was restored"
    );
    assert_never_wider(&after, &expected, "after kill -9");
}

/// As root, restore sets owners and setuid bits by default; --no-owner leaves files to
/// the restoring user without setuid/setgid, --no-xattrs and --no-special leave those out.
#[test]
fn no_owner_no_xattrs_and_no_special_leave_those_out() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to own files as another user");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests as root"
        );
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let prog = src.join("prog");
    fs::write(&prog, b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(&prog, Some(1234), Some(2345)).unwrap();
    chmod(&prog, 0o6755);
    set_xattr(&prog, "user.note", b"kept");
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    env.init(&[]);
    env.ok(&["backup", src.to_str().unwrap()]);

    let full = env.path("full");
    env.ok(&restore_args(&full, &[]));
    let r = Env::restored(&full, &src);
    let md = fs::metadata(r.join("prog")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1234, 2345, 0o6755)
    );
    assert_eq!(
        xattr::get(r.join("prog"), "user.note").unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    assert!(fs::symlink_metadata(r.join("fifo")).is_ok());

    let plain = env.path("plain");
    env.ok(&restore_args(
        &plain,
        &["--no-owner", "--no-xattrs", "--no-special"],
    ));
    let r = Env::restored(&plain, &src);
    let md = fs::metadata(r.join("prog")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (0, 0, 0o0755));
    assert_eq!(xattr::get(r.join("prog"), "user.note").unwrap(), None);
    assert!(fs::symlink_metadata(r.join("fifo")).is_err());
    assert_eq!(fs::read(r.join("prog")).unwrap(), b"#!/bin/sh\n");
}

/// A tmpfs mounted for one test (root only), gone with it.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                options,
                "vault-test",
                at.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(mounted.success(), "mount a tmpfs (tests run as root in CI)");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Writes a snapshot whose trees a key holder crafted: a file `f` of 256 KiB at the
/// bottom, and above it `depth` levels that each hold a directory of each of `names`,
/// all with the same subtree. With two names it expands to 2^depth files from a few
/// kilobytes of trees.
fn crafted_snapshot(env: &Env, depth: usize, names: &[&[u8]]) -> String {
    use vault::format::snapshot::{SNAPSHOT_VERSION, Snapshot};
    let repo = open_repo(env);
    let w = TreeWriter::new(&repo);
    let mut id = w.put(vec![w.file(b"f", &bytes(depth as u64, 256 << 10))]);
    for _ in 0..depth {
        id = w.put(names.iter().map(|n| crafted_dir(n, id)).collect());
    }
    let root = w.put(vec![crafted_dir(b"x", id)]);
    w.finish();
    let snap = Snapshot {
        version: SNAPSHOT_VERSION,
        time: vault::repo::repository::now_rfc3339(),
        host: "crafted".into(),
        user: "mallory".into(),
        paths: vec!["/x".into()],
        tags: Vec::new(),
        parent: None,
        tree: root,
        excludes: Vec::new(),
        program: "crafted".into(),
        summary: Default::default(),
        original: None,
    };
    repo.save_snapshot(&snap).unwrap().to_hex()
}

/// A legitimately repeated subtree restores whole; a crafted one that expands to 2^40
/// files fills the disk and stops there with one clear line, in bounded memory, instead
/// of planning forever.
#[test]
fn a_self_repeating_tree_restores_until_the_disk_is_full_then_stops() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small file system needs root");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests as root"
        );
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let small = crafted_snapshot(&env, 3, &[b"a", b"b"]);
    let target = env.path("small");
    env.ok(&["restore", &small, "--target", target.to_str().unwrap()]);
    let files = common::walkdir(&target.join("x"));
    let leaves: Vec<_> = files.iter().filter(|p| p.ends_with("f")).collect();
    assert_eq!(leaves.len(), 8, "2^3 copies of f: {files:?}");
    for f in leaves {
        assert_eq!(fs::read(f).unwrap(), bytes(3, 256 << 10));
    }

    let huge = crafted_snapshot(&env, 40, &[b"a", b"b"]);
    let disk = env.path("disk");
    let _unmount = Tmpfs::mount(&disk, "size=24m");
    let mut child = env
        .cmd()
        .args(["restore", &huge, "--target", disk.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if let Ok(st) = fs::read_to_string(format!("/proc/{}/status", child.id())) {
            let rss = st
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
                .unwrap_or(0);
            peak_kib = peak_kib.max(rss);
        }
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("the restore did not stop on a full disk within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("free space"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        peak_kib < 200 * 1024,
        "memory stayed bounded: {peak_kib} KiB"
    );
    // What is left is complete: every file there has all its content.
    for p in common::walkdir(&disk).iter().filter(|p| p.ends_with("f")) {
        assert_eq!(fs::read(p).unwrap(), bytes(40, 256 << 10), "{p:?}");
    }
    eprintln!("stopped after {:?}, peak {peak_kib} KiB", start.elapsed());
}

/// A chain of 30 000 directories (a path of 60 000 bytes, far past PATH_MAX) restores
/// whole: restore goes down and back up through directory descriptors, not paths.
#[test]
fn a_30000_deep_tree_restores_whole() {
    let env = Env::new();
    env.init(&[]);
    let start = Instant::now();
    let deep = crafted_snapshot(&env, 30_000, &[b"d"]);
    eprintln!("crafted in {:?}", start.elapsed());
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a file system that can drop 30 000 levels at once needs root");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests as root"
        );
        return;
    }
    // On a tmpfs: removing 30 000 levels from ext4 takes a minute, unmounting none.
    let target = env.path("t");
    let _unmount = Tmpfs::mount(&target, "size=64m");
    let start = Instant::now();
    let out = env.ok(&["restore", &deep, "--target", target.to_str().unwrap()]);
    eprintln!("restored in {:?}: {out}", start.elapsed());
    assert!(out.contains("1 files, 30001 dirs"), "{out}");
    // Walk down by descriptor, as no path can reach the bottom.
    let mut dir = fs::File::open(target.join("x")).unwrap();
    let mut depth = 0;
    loop {
        let fd = nix::fcntl::openat(
            &dir,
            "d",
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_NOFOLLOW,
            nix::sys::stat::Mode::empty(),
        );
        match fd {
            Ok(fd) => {
                dir = fs::File::from(fd);
                depth += 1;
            }
            Err(_) => break,
        }
    }
    assert_eq!(depth, 30_000);
    eprintln!("walked in {:?}", start.elapsed());
    let leaf = nix::fcntl::openat(
        &dir,
        "f",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(leaf), &mut got).unwrap();
    assert_eq!(got, bytes(30_000, 256 << 10));
    // The directories got their mode (0755) on the way back up, the deepest included.
    assert_eq!(
        fs::metadata(target.join("x/d")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(nix::sys::stat::fstat(&dir).unwrap().st_mode & 0o7777, 0o755);
}
