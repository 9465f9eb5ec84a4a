//! `vault dump SNAPSHOT PATH --archive tar|zip` streams a directory through a pipe, and
//! GNU tar, bsdtar and unzip read it back: modes, owners and times, symlinks, hard links,
//! long and non-UTF-8 names (tar PAX), sparse and multi-chunk files.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const MTIME: &str = "@1700000000";

fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("{name} is not installed (.ci/run installs it)");
    }
    found
}

/// Sets the times of `p` without following a symlink.
fn touch(p: &Path) {
    let st = Command::new("touch")
        .args(["-h", "-d", MTIME])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A directory with everything an archive must carry; times in whole seconds (what tar
/// without PAX times and zip hold), children before their directories.
fn source(env: &Env) -> PathBuf {
    let src = env.path("thesis");
    let long_dir = src.join("d".repeat(120));
    fs::create_dir_all(&long_dir).unwrap();
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("main.tex"), b"\\documentclass{article}").unwrap();
    fs::set_permissions(src.join("main.tex"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(src.join("build.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(src.join("build.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(src.join("sub/deeper/data.bin"), bytes(3, 1_500_000)).unwrap();
    fs::write(src.join("sub/empty"), b"").unwrap();
    fs::write(long_dir.join("f".repeat(200)), b"a long name").unwrap();
    fs::write(src.join(os(b"caf\xe9-latin1")), b"not UTF-8").unwrap();
    symlink("sub/deeper/data.bin", src.join("link")).unwrap();
    symlink("../".repeat(40) + "etc/hostname", src.join("long-link")).unwrap();
    fs::hard_link(src.join("main.tex"), src.join("sub/hard")).unwrap();
    let sparse = fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 2 << 20).unwrap();
    drop(sparse);
    let mut all = every_path(&src);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in all.iter().chain([&src]) {
        touch(p);
    }
    src
}

/// Everything below `dir`, directories included, never through a symlink.
fn every_path(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

fn backed_up(env: &Env) -> PathBuf {
    let src = source(env);
    env.init(&[]);
    env.ok(&["backup", src.to_str().unwrap()]);
    src
}

/// Runs `vault dump latest PATH --archive FORMAT` into `reader`'s standard input.
fn pipe(env: &Env, path: &Path, format: &str, reader: &mut Command) -> (i32, String) {
    let mut vault = env
        .cmd()
        .args(["dump", "latest"])
        .arg(path)
        .args(["--archive", format])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = reader.stdin(vault.stdout.take().unwrap()).output().unwrap();
    assert!(
        out.status.success(),
        "{reader:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = vault.wait_with_output().unwrap();
    (
        v.status.code().unwrap(),
        String::from_utf8_lossy(&v.stderr).into_owned(),
    )
}

fn root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1)
}

#[test]
fn tar_reads_back_exactly_with_gnu_tar_and_bsdtar() {
    let env = Env::new();
    let src = backed_up(&env);
    let mut readers = vec![("gnu", "tar")];
    if tool("bsdtar") {
        readers.push(("bsd", "bsdtar"));
    }
    for (label, bin) in readers {
        let out = env.path(label);
        fs::create_dir_all(&out).unwrap();
        let mut c = Command::new(bin);
        c.arg("-x").arg("-p").arg("-f").arg("-").arg("-C").arg(&out);
        if bin == "tar" && root() {
            c.arg("--same-owner");
        }
        let (code, err) = pipe(&env, &src, "tar", &mut c);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            snapshot_of(&out.join("thesis")),
            snapshot_of(&src),
            "{label} tar"
        );
    }
}

#[test]
fn zip_reads_back_with_unzip() {
    if !tool("unzip") {
        return;
    }
    let env = Env::new();
    let src = backed_up(&env);
    let out = env.path("unzipped");
    fs::create_dir_all(&out).unwrap();
    let zip = env.path("t.zip");
    // unzip needs a seekable file; the dump is streamed into it through a pipe.
    let (code, err) = pipe(
        &env,
        &src,
        "zip",
        Command::new("sh").args(["-c", &format!("cat > {}", zip.display())]),
    );
    assert_eq!(code, 0, "{err}");
    let st = Command::new("unzip")
        .env("TZ", "UTC")
        .arg("-q")
        .arg(&zip)
        .arg("-d")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let got = out.join("thesis");
    for (rel, want) in [
        ("main.tex", b"\\documentclass{article}".to_vec()),
        ("sub/hard", b"\\documentclass{article}".to_vec()),
        ("sub/deeper/data.bin", bytes(3, 1_500_000)),
        ("sub/empty", Vec::new()),
    ] {
        assert_eq!(fs::read(got.join(rel)).unwrap(), want, "{rel}");
    }
    let mut sparse = vec![0u8; 4 << 20];
    sparse[2 << 20..(2 << 20) + 6].copy_from_slice(b"middle");
    assert_eq!(fs::read(got.join("sparse")).unwrap(), sparse);
    let long = got.join("d".repeat(120)).join("f".repeat(200));
    assert_eq!(fs::read(long).unwrap(), b"a long name");
    assert_eq!(
        fs::read_link(got.join("link")).unwrap(),
        Path::new("sub/deeper/data.bin")
    );
    let mode = |p: &str| fs::metadata(got.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("main.tex"), 0o640);
    assert_eq!(mode("build.sh"), 0o755);
    let mtime = fs::metadata(got.join("main.tex")).unwrap().mtime();
    assert!((mtime - 1_700_000_000).abs() <= 2, "{mtime}");
    // Zip names are UTF-8: the Latin-1 byte is replaced, the file is there.
    let names: Vec<_> = fs::read_dir(&got)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.as_bytes().starts_with(b"caf") && n.as_bytes().ends_with(b"-latin1")),
        "{names:?}"
    );
}

#[test]
fn single_files_dump_as_before_and_a_directory_needs_archive() {
    let env = Env::new();
    let src = backed_up(&env);
    let data = env
        .cmd()
        .args(["dump", "latest"])
        .arg(src.join("sub/deeper/data.bin"))
        .output()
        .unwrap();
    assert_eq!(data.status.code(), Some(0));
    assert_eq!(data.stdout, bytes(3, 1_500_000));
    let sparse = env
        .cmd()
        .args(["dump", "latest"])
        .arg(src.join("sparse"))
        .output()
        .unwrap();
    assert_eq!(sparse.stdout.len(), 4 << 20);
    assert_eq!(&sparse.stdout[2 << 20..(2 << 20) + 6], b"middle");
    let dir = env
        .cmd()
        .args(["dump", "latest"])
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(dir.status.code(), Some(1));
    // A single file as an archive: one entry named after it.
    let listed = env.path("one");
    fs::create_dir_all(&listed).unwrap();
    let mut c = Command::new("tar");
    c.args(["-x", "-f", "-", "-C"]).arg(&listed);
    let (code, err) = pipe(&env, &src.join("main.tex"), "tar", &mut c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        fs::read(listed.join("main.tex")).unwrap(),
        b"\\documentclass{article}"
    );
}
