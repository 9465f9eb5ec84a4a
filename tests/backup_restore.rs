//! End-to-end: backup then restore through the binary reproduces the source exactly.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use common::*;

fn build_tree(src: &Path) {
    fs::create_dir_all(src.join("docs/empty")).unwrap();
    fs::create_dir_all(src.join("deep/a/b/c")).unwrap();
    fs::write(src.join("docs/cv.pdf"), bytes(1, 300_000)).unwrap();
    fs::write(src.join("docs/notes.txt"), b"notes\n".repeat(1000)).unwrap();
    fs::write(src.join("deep/a/b/c/leaf"), b"leaf").unwrap();
    fs::write(src.join("empty-file"), b"").unwrap();
    // Non-UTF-8 names, as a file and as a directory.
    fs::write(src.join(os(b"caf\xe9-latin1.txt")), b"latin1 name").unwrap();
    fs::create_dir(src.join(os(b"dir-\xff\xfe"))).unwrap();
    fs::write(src.join(os(b"dir-\xff\xfe")).join("inner"), b"inner").unwrap();
    symlink("docs/notes.txt", src.join("link-rel")).unwrap();
    symlink("/nonexistent/target", src.join("link-dangling")).unwrap();
    fs::hard_link(src.join("docs/notes.txt"), src.join("hardlink-to-notes")).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    fs::set_permissions(src.join("docs/cv.pdf"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(src.join("deep/a"), fs::Permissions::from_mode(0o750)).unwrap();
    set_xattr(&src.join("docs/cv.pdf"), "user.origin", b"scanner");
    set_xattr(&src.join("docs"), "user.dirattr", b"\x00\x01binary");
}

#[test]
fn restore_equals_source_bytes_and_metadata() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    env.init(&[]);
    let b = env.backup_json(&[src.to_str().unwrap()]);
    assert_eq!(b["summary"]["errors"], 0);
    let target = env.restore_verified("restore");
    let restored = Env::restored(&target, &src);
    assert_eq!(snapshot_of(&src), snapshot_of(&restored));
    // The hardlink is a hardlink again.
    let a = fs::metadata(restored.join("docs/notes.txt")).unwrap();
    let h = fs::metadata(restored.join("hardlink-to-notes")).unwrap();
    assert_eq!(a.ino(), h.ino());

    // ls shows the non-UTF-8 name; dump returns exact bytes.
    let ls = env.run(&["ls", "latest", src.to_str().unwrap()]);
    assert!(
        ls.stdout.windows(4).any(|w| w == b"\xff\xfe/i"),
        "ls lists raw names"
    );
    let dumped = env.run(&["dump", "latest", src.join("docs/cv.pdf").to_str().unwrap()]);
    assert_eq!(dumped.status.code(), Some(0));
    assert_eq!(dumped.stdout, bytes(1, 300_000));
}

/// An unchanged file's xattrs come from the parent snapshot, so a change to them alone
/// (which moves the ctime) must still be seen by the next backup.
#[test]
fn xattrs_changed_between_backups_are_backed_up() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    env.init(&[]);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    set_xattr(&src.join("docs/cv.pdf"), "user.origin", b"rescanned");
    set_xattr(&src.join("docs/cv.pdf"), "user.added", b"later");
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let target = env.restore_verified("restore");
    assert_eq!(
        snapshot_of(&src),
        snapshot_of(&Env::restored(&target, &src))
    );
    let got = xattr::get(
        Env::restored(&target, &src).join("docs/cv.pdf"),
        "user.added",
    );
    assert_eq!(got.unwrap().as_deref(), Some(&b"later"[..]));
}

#[test]
fn restore_refuses_to_overwrite_and_filters() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    env.init(&[]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("r");
    let docs = src.join("docs");
    env.ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--include",
        docs.to_str().unwrap(),
        "--exclude",
        "*.txt",
    ]);
    let r = Env::restored(&target, &src);
    assert!(r.join("docs/cv.pdf").exists());
    assert!(!r.join("docs/notes.txt").exists(), "excluded");
    assert!(!r.join("deep").exists(), "not included");
    // A second restore into the same place refuses and writes nothing.
    fs::write(r.join("docs/cv.pdf"), b"mine").unwrap();
    let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--overwrite"));
    assert_eq!(fs::read(r.join("docs/cv.pdf")).unwrap(), b"mine");
    assert!(!r.join("deep").exists(), "nothing written on refusal");
    env.ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
    ]);
    assert_eq!(fs::read(r.join("docs/cv.pdf")).unwrap(), bytes(1, 300_000));
}

/// Small files are compressed side by side in bundles, which finds what they share; each
/// still restores on its own, and a whole restore is exact.
#[test]
fn small_files_are_compressed_together() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let total = similar_small_files(&src, 400);
    let b = env.backup_json(&[src.to_str().unwrap()]);
    let stored = b["summary"]["bytes_stored"].as_u64().unwrap();
    // One by one, hex compresses about 2x; side by side, the 400 files are nearly one.
    assert!(stored * 20 < total, "{total} bytes stored as {stored}");
    let (bundled, blobs) = bundled_blobs(&env.repo(), PASSWORD);
    assert!(
        bundled >= 400 && bundled < blobs,
        "{bundled} of {blobs} blobs bundled"
    );
    let target = env.restore_verified("r");
    assert_eq!(
        snapshot_of(&Env::restored(&target, &src)),
        snapshot_of(&src)
    );
    let one = src.join("page0123.txt");
    let dumped = env.ok(&["dump", "latest", one.to_str().unwrap()]);
    assert_eq!(dumped.as_bytes(), fs::read(&one).unwrap());
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
}

#[test]
fn unchanged_second_backup_reads_nothing_and_dedups() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let big = bytes(7, 6 << 20);
    fs::write(src.join("a.bin"), &big).unwrap();
    fs::write(src.join("copy.bin"), &big).unwrap();
    env.init(&["--chunk-size", "256K"]);
    // The snapshot holds the source's ancestors: the tests' shared directory changes
    // whenever a test running alongside makes or removes its own, and this test's own
    // directory when the first backup makes the cache in it, which may be after its
    // walk read that directory.
    let shared = || {
        let dir = env.dir.path();
        let mtime = |p: &std::path::Path| fs::metadata(p).unwrap().modified().unwrap();
        (mtime(dir), mtime(dir.parent().unwrap()))
    };
    let before = shared();
    let first = env.backup_json(&[src.to_str().unwrap()]);
    let added = first["summary"]["bytes_added"].as_u64().unwrap();
    assert!(
        added < (6 << 20) + (64 << 10),
        "identical files stored once, added {added}"
    );
    let second = env.backup_json(&[src.to_str().unwrap()]);
    assert_eq!(second["summary"]["bytes_read"], 0, "no file content read");
    assert_eq!(second["summary"]["files_unchanged"], 2);
    let added = second["summary"]["bytes_added"].as_u64().unwrap();
    if shared() == before {
        assert_eq!(added, 0);
    } else {
        assert!(
            added < 4096,
            "only the ancestors' directory listings: {added}"
        );
    }
    assert_eq!(second["parent"], first["snapshot"]);
    // A third file sharing most content with the first adds only the changed chunks.
    let mut edited = big.clone();
    edited[3 << 20] ^= 0xff;
    fs::write(src.join("edited.bin"), &edited).unwrap();
    let third = env.backup_json(&[src.to_str().unwrap()]);
    let added = third["summary"]["bytes_added"].as_u64().unwrap();
    assert!(
        added < 3 << 20,
        "edit re-stores only nearby chunks, added {added}"
    );
    let snaps: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 3);
}

/// How many snapshots hold each distinct tree of directory `dir`, oldest first. Its
/// own tree, not the snapshot's root: the root also holds the ancestors' metadata, which
/// other tests change as they make their directories next to them.
fn tree_versions(env: &Env, dir: &Path) -> Vec<u64> {
    let out = env.ok(&["versions", dir.to_str().unwrap(), "--json"]);
    let versions: serde_json::Value = serde_json::from_str(&out).unwrap();
    versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["snapshots"].as_u64().unwrap())
        .collect()
}

/// Files edited in place leave their directories' metadata as it was, so the directories
/// above them scan as unchanged and the backup lets go of their parent trees; once an
/// edited file's tree turns out to differ, theirs are built again from the parent
/// snapshot's. Every entry must come through: the restore is exact, and a backup with
/// nothing changed writes the source's tree again.
#[test]
fn edits_below_unchanged_directories_keep_every_other_entry() {
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    // Next to the directory whose tree will change: taken from the parent tree again.
    fs::write(src.join("deep/a/b/sibling"), b"sibling").unwrap();
    let wide = src.join("deep/a/wide"); // stat'ed on several threads
    fs::create_dir_all(&wide).unwrap();
    for f in 0..1500 {
        fs::write(wide.join(format!("w{f:04}")), format!("wide {f}")).unwrap();
    }
    env.init(&[]);
    let s = src.to_str().unwrap();
    let first = env.backup_json(&[s]);
    let edit_in_place = |p: &Path, with: &[u8]| {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().write(true).open(p).unwrap();
        f.write_all(with).unwrap();
    };
    edit_in_place(&src.join("deep/a/b/c/leaf"), b"LEAF");
    edit_in_place(&wide.join("w0700"), b"WIDE");
    // A directory whose mode alone changed: its parent's new tree is built from the
    // parent tree it kept.
    fs::set_permissions(src.join("docs"), fs::Permissions::from_mode(0o700)).unwrap();

    let second = env.backup_json(&[s]);
    assert_eq!(second["summary"]["files_changed"], 2);
    assert_eq!(
        second["summary"]["bytes_read"],
        4 + 8,
        "the edited files alone"
    );
    let files = first["summary"]["files_new"].as_u64().unwrap();
    assert_eq!(second["summary"]["files_unchanged"], files - 2);
    let third = env.backup_json(&[s]);
    assert_eq!(third["summary"]["bytes_read"], 0);
    assert_eq!(
        tree_versions(&env, &src),
        [1, 2],
        "the source's tree changed once, then nothing changed"
    );

    let target = env.restore_verified("r");
    assert_eq!(
        snapshot_of(&Env::restored(&target, &src)),
        snapshot_of(&src)
    );
}

/// Directories are scanned ahead of the walk on several threads; the trees must come out
/// as one thread would make them. A tree wider than the scanners may run ahead (8192
/// entries), with excluded names and symlinks at every level, sibling directories large
/// enough to be stat'ed on several threads and one larger than the scanners' whole bound,
/// backed up twice: the second run reads nothing and writes the very same tree, and
/// the restore is exact.
#[test]
fn parallel_scan_builds_the_same_trees_every_time() {
    let env = Env::new();
    let src = env.path("src");
    for a in 0..12 {
        for b in 0..9 {
            let d = src.join(format!("d{a:02}/e{b}"));
            fs::create_dir_all(d.join("deep/deeper")).unwrap();
            for f in 0..90 {
                fs::write(d.join(format!("f{f:03}")), format!("{a} {b} {f}")).unwrap();
            }
            fs::write(d.join("skip.tmp"), "excluded").unwrap();
            fs::write(d.join("deep/deeper/leaf"), format!("leaf {a} {b}")).unwrap();
            std::os::unix::fs::symlink("../f000", d.join("deep/link")).unwrap();
        }
    }
    let wide = [
        ("big0", 1500),
        ("big1", 1500),
        ("big2", 2000),
        ("huge", 8300),
    ];
    for (name, n) in wide {
        let d = src.join("wide").join(name);
        fs::create_dir_all(&d).unwrap();
        for f in 0..n {
            fs::write(d.join(format!("w{f:05}")), format!("{name} {f}")).unwrap();
        }
        for f in 0..10 {
            fs::write(d.join(format!("x{f}.tmp")), "excluded").unwrap();
        }
        std::os::unix::fs::symlink("w00000", d.join("link")).unwrap();
    }
    let files = 12 * 9 * 91 + wide.iter().map(|(_, n)| n + 1).sum::<i32>();
    env.init(&[]);
    let s = src.to_str().unwrap();
    let first = env.backup_json(&[s, "--exclude", "*.tmp"]);
    assert_eq!(first["summary"]["files_new"], files - 4); // symlinks are not new files
    let second = env.backup_json(&[s, "--exclude", "*.tmp"]);
    assert_eq!(second["summary"]["bytes_read"], 0);
    assert_eq!(second["summary"]["files_unchanged"], files - 4);
    assert_eq!(tree_versions(&env, &src), [2], "the same tree both times");
    let target = env.restore_verified("r");
    let mut want = snapshot_of(&src);
    want.retain(|k, _| !k.ends_with(b".tmp"));
    assert_eq!(snapshot_of(&Env::restored(&target, &src)), want);
}

/// A disk image or database edited in place in a few scattered blocks: the default
/// chunk size keeps what a nightly backup stores near the edits (1 MiB chunks, as
/// restic's and the old default, stored 10-20 MiB here).
#[test]
fn scattered_edits_in_a_large_file_store_little_by_default() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let mut img = bytes(11, 48 << 20);
    fs::write(src.join("disk.img"), &img).unwrap();
    env.init(&[]);
    env.backup_json(&[src.to_str().unwrap()]);
    for i in 0..10 {
        let at = (i * 4 + 1) << 20;
        img[at..at + 4096].copy_from_slice(&bytes(100 + i as u64, 4096));
    }
    fs::write(src.join("disk.img"), &img).unwrap();
    let second = env.backup_json(&[src.to_str().unwrap()]);
    let added = second["summary"]["bytes_added"].as_u64().unwrap();
    assert!(
        added < 5 << 20,
        "ten 4 KiB edits re-store only the chunks around them, added {added}"
    );
    let target = env.restore_verified("r");
    assert_eq!(
        fs::read(Env::restored(&target, &src).join("disk.img")).unwrap(),
        img
    );
}

#[test]
fn sparse_5gib_file_round_trips_with_holes() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let f = fs::File::create(src.join("disk.img")).unwrap();
    f.set_len(5 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(&bytes(3, 100_000), 3 << 30).unwrap();
    f.write_all_at(b"end", (5 << 30) - 3).unwrap();
    drop(f);
    env.init(&[]);
    let b = env.backup_json(&[src.to_str().unwrap()]);
    assert!(b["summary"]["bytes_added"].as_u64().unwrap() < 1 << 20);
    let target = env.restore_verified("r");
    let r = Env::restored(&target, &src).join("disk.img");
    let md = fs::metadata(&r).unwrap();
    assert_eq!(md.len(), 5 << 30);
    assert!(
        md.blocks() * 512 < 64 << 20,
        "holes restored as holes ({} blocks)",
        md.blocks()
    );
    let g = fs::File::open(&r).unwrap();
    let mut buf = vec![0u8; 100_000];
    g.read_exact_at(&mut buf, 3 << 30).unwrap();
    assert_eq!(buf, bytes(3, 100_000));
    let mut end = [0u8; 3];
    g.read_exact_at(&mut end, (5 << 30) - 3).unwrap();
    assert_eq!(&end, b"end");
}

#[test]
fn hundred_thousand_tiny_files() {
    let env = Env::new();
    let src = env.path("src");
    for d in 0..100 {
        let dir = src.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..1000 {
            fs::write(dir.join(format!("f{i:04}")), format!("{d}/{i}\n")).unwrap();
        }
    }
    env.init(&[]);
    let b = env.backup_json(&[src.to_str().unwrap()]);
    assert_eq!(b["summary"]["files_new"], 100_000);
    let again = env.backup_json(&[src.to_str().unwrap()]);
    assert_eq!(again["summary"]["files_unchanged"], 100_000);
    assert_eq!(again["summary"]["bytes_read"], 0);
    let target = env.path("r");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let r = Env::restored(&target, &src);
    assert_eq!(walkdir(&r).len(), 100_000);
    assert_eq!(
        fs::read_to_string(r.join("d042/f0999")).unwrap(),
        "42/999\n"
    );
}

#[test]
fn excludes_caches_stdin_and_tags() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::write(
        src.join("cache/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    fs::write(src.join("cache/blob"), b"cached").unwrap();
    fs::write(src.join("keep/a.tmp"), b"tmp").unwrap();
    fs::write(src.join("keep/a.txt"), b"txt").unwrap();
    env.init(&[]);
    env.ok(&[
        "backup",
        src.to_str().unwrap(),
        "--exclude",
        "*.tmp",
        "--exclude-caches",
        "--tag",
        "nightly",
    ]);
    let ls = env.ok(&["ls", "latest", "--tag", "nightly"]);
    assert!(ls.contains("keep/a.txt"));
    assert!(!ls.contains("a.tmp"), "excluded by pattern");
    assert!(
        ls.contains("cache/CACHEDIR.TAG") && !ls.contains("cache/blob"),
        "cache dir emptied"
    );

    let mut c = env.cmd();
    c.args(["backup", "--stdin", "--stdin-filename", "db.sql", "--json"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&bytes(9, 2_000_000))
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let dumped = env.run(&["dump", "latest", "/db.sql", "--path", "/db.sql"]);
    assert_eq!(dumped.stdout, bytes(9, 2_000_000));
    let snaps: serde_json::Value =
        serde_json::from_str(&env.ok(&["snapshots", "--json", "--tag", "nightly"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
}

/// `--stdin-from-command`: the command's output is the file; a command that fails
/// (or cannot start) fails the backup, and no snapshot is made (restic 0.17's flag).
#[test]
fn stdin_from_command_backs_up_its_output_and_fails_with_it() {
    let env = Env::new();
    env.init(&[]);
    let data = env.path("data");
    fs::write(&data, bytes(4, 1_500_000)).unwrap();
    let d = data.to_str().unwrap();
    let out = env.json(
        &[
            "backup",
            "--stdin-from-command",
            "--stdin-filename",
            "dump.bin",
            "--",
            "cat",
            d,
        ],
        0,
    );
    assert_eq!(out["summary"]["bytes_total"], 1_500_000, "{out}");
    let dumped = env.run(&["dump", "latest", "/dump.bin", "--path", "/dump.bin"]);
    assert_eq!(dumped.stdout, bytes(4, 1_500_000));
    let count = || env.json(&["snapshots"], 0).as_array().unwrap().len();
    assert_eq!(count(), 1);

    // Output, then failure: not a snapshot of half a dump.
    let from = |command: &[&str]| {
        let mut a = vec![
            "backup",
            "--stdin-from-command",
            "--stdin-filename",
            "x",
            "--",
        ];
        a.extend_from_slice(command);
        env.run(&a)
    };
    let fails = format!("cat '{d}'; exit 3");
    let out = from(&["sh", "-c", &fails]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exit status: 3") && err.contains("no snapshot was made"),
        "{err}"
    );
    let out = from(&["/nonexistent-program"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not start it"));
    assert_eq!(count(), 1, "no snapshot from a failed command");
    env.expect(
        &["backup", "--stdin-from-command", "--stdin-filename", "x"],
        2,
    );
    env.ok(&["check", "--read-data"]);
}
