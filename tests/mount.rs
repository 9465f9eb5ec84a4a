//! `vault mount`, mounted for real through /dev/fuse: contents and metadata against the
//! source, the `at/` and `versions/` views, a backup appearing while mounted, a damaged
//! pack failing one file only, a large directory's listing and inodes, and unmounting on
//! SIGINT and on `fusermount3 -u`.
//!
//! Without /dev/fuse or fusermount3 the tests are skipped, unless CI=true, where that is
//! a failure.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Env, bytes, snapshot_of};

fn fuse_available() -> bool {
    let tool = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()));
    let ok = Path::new("/dev/fuse").exists() && tool;
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: /dev/fuse and fusermount3 (package fuse3) are needed"
        );
        eprintln!("skipped: no /dev/fuse or fusermount3");
    }
    ok
}

/// A running `vault mount`; unmounted when dropped.
struct Mounted {
    child: Option<Child>,
    at: PathBuf,
    stderr: PathBuf,
}

fn is_mounted(at: &Path) -> bool {
    let at = at.to_str().unwrap();
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(at))
}

fn mount(env: &Env) -> Mounted {
    mount_with(env, &[])
}

fn mount_with(env: &Env, extra: &[&str]) -> Mounted {
    let mut cmd = env.cmd();
    cmd.arg("mount").args(extra);
    mount_by(env, cmd, &env.path("mnt"))
}

/// Runs `cmd` (a `vault mount` with its options) on `at`; returns once it is mounted.
fn mount_by(env: &Env, mut cmd: std::process::Command, at: &Path) -> Mounted {
    fs::create_dir_all(at).unwrap();
    let at = at.canonicalize().unwrap();
    let stderr = env.path("mount.err");
    let child = cmd
        .env("TZ", "UTC")
        .arg(&at)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut m = Mounted {
        child: Some(child),
        at,
        stderr,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_mounted(&m.at) {
        if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("vault mount ended ({status}): {}", m.errors());
        }
        assert!(Instant::now() < deadline, "not mounted: {}", m.errors());
        std::thread::sleep(Duration::from_millis(50));
    }
    m
}

impl Mounted {
    fn errors(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `rel` inside the mount.
    fn p(&self, rel: &str) -> PathBuf {
        self.at.join(rel)
    }

    /// Where source path `src` is in the mount's view `view` (`latest`, `at/...`).
    fn src(&self, view: &str, src: &Path) -> PathBuf {
        self.at.join(view).join(src.strip_prefix("/").unwrap())
    }

    /// Sends `sig` and waits for the process to end; its exit status.
    fn signal_and_wait(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
        wait(&mut child, &self.errors())
    }
}

fn wait(child: &mut Child, errors: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "vault mount did not end: {errors}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.at)
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Lines of `text` that mention `what`.
fn mentions(text: &str, what: &str) -> usize {
    text.lines().filter(|l| l.contains(what)).count()
}

/// A source with a large file, a sparse file, a symlink, a hardlink pair, private modes
/// and (where the file system has them) an xattr.
fn rich_source(env: &Env) -> (PathBuf, bool) {
    let src = env.path("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("big"), bytes(1, 3 << 20)).unwrap();
    fs::write(src.join("small.txt"), "hello\n").unwrap();
    fs::write(src.join("sub/deeper/x"), "x").unwrap();
    fs::set_permissions(src.join("small.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(src.join("sub/deeper"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("small.txt", src.join("link")).unwrap();
    fs::hard_link(src.join("sub/deeper/x"), src.join("sub/hard")).unwrap();
    let sparse = fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    drop(sparse);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(src.join("sparse"))
        .unwrap();
    f.seek(SeekFrom::Start(5 << 20)).unwrap();
    std::io::Write::write_all(&mut f, b"data in the middle of holes").unwrap();
    drop(f);
    let xattrs = xattr::set(src.join("small.txt"), "user.vault.test", b"a value").is_ok();
    (src, xattrs)
}

/// Descriptions as `snapshot_of` makes them, without the hardlink grouping: the mount
/// gives each path its own inode number (the link count is checked on its own).
fn described(root: &Path) -> Vec<(Vec<u8>, String)> {
    snapshot_of(root)
        .into_iter()
        .map(|(k, v)| (k, v.split(" linkgroup=").next().unwrap().to_string()))
        .collect()
}

#[test]
fn files_read_as_stored_with_their_metadata() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let (src, xattrs) = rich_source(&env);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let m = mount(&env);
    let seen = m.src("latest", &src);
    assert_eq!(described(&seen), described(&src));
    if xattrs {
        let v = xattr::get(seen.join("small.txt"), "user.vault.test").unwrap();
        assert_eq!(v.as_deref(), Some(&b"a value"[..]));
    }
    assert_eq!(
        fs::read_link(seen.join("link")).unwrap(),
        Path::new("small.txt")
    );
    for p in ["sub/hard", "sub/deeper/x"] {
        assert_eq!(fs::metadata(seen.join(p)).unwrap().nlink(), 2, "{p}");
    }
    // One hard-link group is one inode, as `du`, `cp -a` and `rsync -H` expect.
    let ino = |p: &str| fs::metadata(seen.join(p)).unwrap().ino();
    assert_eq!(ino("sub/hard"), ino("sub/deeper/x"));
    assert_ne!(ino("sub/hard"), ino("small.txt"));
    let sparse = fs::metadata(seen.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 8 << 20);
    assert!(sparse.blocks() * 512 < 1 << 20, "holes take no blocks");
    // Random access, and the same bytes as `dump`.
    let mut f = fs::File::open(seen.join("big")).unwrap();
    f.seek(SeekFrom::Start(2_000_001)).unwrap();
    let mut piece = vec![0u8; 70_000];
    f.read_exact(&mut piece).unwrap();
    assert_eq!(piece, bytes(1, 3 << 20)[2_000_001..2_070_001]);
    let dumped = env.run(&["dump", "latest", src.join("sparse").to_str().unwrap()]);
    assert_eq!(dumped.stdout, fs::read(seen.join("sparse")).unwrap());
    // The views above the snapshots.
    let hosts: Vec<_> = fs::read_dir(m.p("hosts")).unwrap().collect();
    assert_eq!(hosts.len(), 1);
    let host = hosts[0].as_ref().unwrap().path();
    for view in ["latest", "snapshots"] {
        assert!(host.join(view).is_dir(), "hosts/NAME/{view}");
    }
    let ids: Vec<_> = fs::read_dir(m.p("ids")).unwrap().collect();
    assert_eq!(ids.len(), 1);
    let id = ids[0].as_ref().unwrap().file_name();
    let by_id = m.p("ids").join(&id).join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(by_id.join("small.txt")).unwrap(), b"hello\n");
    assert!(m.errors().lines().count() <= 1, "{}", m.errors());
}

/// A directory of many entries (its tree kept packed in blocks by the mount): every name
/// lists in order with its type, looks up and reads; the inode a listing shows is the
/// one a lookup handed out, a name looked up again keeps it, and the names of a
/// hard-linked file share one.
#[test]
fn a_large_directory_lists_looks_up_and_keeps_its_inodes() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let many = src.join("many");
    fs::create_dir_all(many.join("d")).unwrap();
    let names: Vec<String> = (0..300).map(|i| format!("f{i:04}")).collect();
    for (i, n) in names.iter().enumerate() {
        fs::write(many.join(n), format!("{i}\n")).unwrap();
    }
    fs::hard_link(many.join("f0007"), many.join("g-link")).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let m = mount(&env);
    let seen = m.src("latest", &many);
    let listed = |dir: &Path| -> Vec<(String, bool, u64)> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                (name, e.file_type().unwrap().is_dir(), e.ino())
            })
            .collect();
        v.sort();
        v
    };
    let first = listed(&seen);
    let mut want: Vec<String> = names.clone();
    want.extend(["d".to_string(), "g-link".to_string()]);
    want.sort();
    let got: Vec<&String> = first.iter().map(|e| &e.0).collect();
    assert_eq!(got, want.iter().collect::<Vec<_>>());
    assert!(first.iter().all(|(n, dir, _)| *dir == (n == "d")));
    // Out of order, so that the blocks are unpacked again and again.
    for (i, n) in names.iter().enumerate().rev().step_by(7) {
        assert_eq!(fs::read_to_string(seen.join(n)).unwrap(), format!("{i}\n"));
    }
    let ino = |n: &str| fs::metadata(seen.join(n)).unwrap().ino();
    let all: Vec<u64> = names.iter().map(|n| ino(n)).collect();
    let again: Vec<u64> = names.iter().map(|n| ino(n)).collect();
    assert_eq!(all, again, "a name looked up again keeps its inode");
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), names.len());
    assert_eq!(ino("g-link"), ino("f0007"));
    assert_ne!(ino("d"), ino("f0000"));
    for (n, _, shown) in listed(&seen) {
        assert_eq!(
            shown,
            ino(&n),
            "{n}: the listing shows the inode handed out"
        );
    }
    assert!(!m.errors().contains("vault: mount:"), "{}", m.errors());
}

/// Three snapshots at known times (UTC in the mount): v1, v2, then v2 again in the same
/// second as the second snapshot.
#[test]
fn at_and_versions_show_the_history() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let file = src.join("main.tex");
    let s = src.to_str().unwrap();
    fs::write(&file, "v1").unwrap();
    env.ok(&[
        "backup",
        "-q",
        "--tag",
        "first",
        "--time",
        "2020-11-01T10:00:00Z",
        s,
    ]);
    fs::write(&file, "v2").unwrap();
    env.ok(&["backup", "-q", "--time", "2020-11-02T10:00:00.100Z", s]);
    env.ok(&["backup", "-q", "--time", "2020-11-02T10:00:00.900Z", s]);
    let m = mount(&env);
    let read = |p: PathBuf| fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
    let rel = file.strip_prefix("/").unwrap();
    assert_eq!(read(m.p("at/2020-11-01T12:00:00Z").join(rel)), "v1");
    assert_eq!(read(m.p("at/2020-11-02").join(rel)), "v2");
    assert_eq!(read(m.p("at/now").join(rel)), "v2");
    assert!(!m.p("at/2020-10-01").exists(), "nothing that early");
    assert_eq!(read(m.p("tags/first/2020-11-01T10:00:00").join(rel)), "v1");

    let mut names: Vec<String> = fs::read_dir(m.p("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names[..2], ["2020-11-01T10:00:00", "2020-11-02T10:00:00"]);
    assert!(
        names[2].starts_with("2020-11-02T10:00:00 ") && names[2].len() == 19 + 1 + 8,
        "the same second gets the short id: {names:?}"
    );

    let versions = m.p("versions").join(rel);
    let mut found: Vec<String> = fs::read_dir(&versions)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    found.sort();
    assert_eq!(found, ["2020-11-01T10:00:00", "2020-11-02T10:00:00"]);
    assert_eq!(read(versions.join(&found[0])), "v1");
    assert_eq!(read(versions.join(&found[1])), "v2");
    // A directory in versions/ lists what it holds.
    let dir: Vec<_> = fs::read_dir(m.p("versions").join(src.strip_prefix("/").unwrap()))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(dir, ["main.tex"]);
}

#[test]
fn a_backup_made_while_mounted_appears() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file("first");
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let m = mount(&env);
    let listed = || fs::read_dir(m.p("snapshots")).unwrap().count();
    assert_eq!(listed(), 1);
    fs::write(src.join("new"), "made later").unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let new = m.src("latest", &src).join("new");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !new.exists() {
        assert!(Instant::now() < deadline, "the new snapshot never appeared");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(fs::read_to_string(&new).unwrap(), "made later");
    assert_eq!(listed(), 2);
}

/// Small files, stored side by side in bundles (more of them than the mount keeps
/// opened), read at once by several readers each going its own way through them: every
/// file reads byte for byte as its source.
#[test]
fn many_small_files_sharing_bundles_read_concurrently() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    // 0 to 40 KB each, 6.4 MB in all: several bundles of ~1 MiB.
    let content = |seed: u64| bytes(seed, (seed as usize * 7919) % 40_000);
    let mut names = Vec::new();
    for d in 0..8 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..80u64 {
            let name = format!("d{d}/f{f:03}");
            let seed = d * 1000 + f;
            fs::write(src.join(&name), content(seed)).unwrap();
            names.push((name, seed));
        }
    }
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let repo = common::open_repo(&env);
    let bundled = repo
        .index()
        .get(&repo.keys.blob_id(0, &content(1001)))
        .is_some_and(|(_, e)| e.bundled());
    assert!(bundled, "small files are stored in bundles");

    let m = mount(&env);
    let seen = m.src("latest", &src);
    std::thread::scope(|s| {
        for reader in 0..4usize {
            let (names, seen, content) = (&names, &seen, &content);
            s.spawn(move || {
                // Forward, backward, and two strides that cross bundles back and forth.
                let order: Vec<usize> = match reader {
                    0 => (0..names.len()).collect(),
                    1 => (0..names.len()).rev().collect(),
                    k => (0..names.len())
                        .map(|i| (i * (k * 97 + 1)) % names.len())
                        .collect(),
                };
                for i in order {
                    let (name, seed) = &names[i];
                    let got = fs::read(seen.join(name)).unwrap();
                    assert!(got == content(*seed), "{name} differs from its source");
                }
            });
        }
    });
    assert_eq!(mentions(&m.errors(), "mount:"), 0, "{}", m.errors());
}

/// Flips a bit in the middle of the pack holding the first blob of `src/a`, which holds
/// no blob of `src/b`; the blob's id. Both are 1 MiB files backed up with 512K chunks,
/// which are sealed alone, not bundled with others.
fn damage_the_pack_of_a(env: &Env, src: &Path) -> vault::format::Id {
    use vault::format::pack::BlobType;
    use vault::ops::walk::{self, Found};
    use vault::repo::FileKind;

    let repo = common::open_repo(env);
    let snaps = repo.snapshots().unwrap();
    let snap = snaps[0].1.as_ref().unwrap();
    let first_blob = |name: &str| match walk::find(&repo, &snap.tree, &src.join(name)).unwrap() {
        Found::Node(n) => n.content.clone(),
        Found::Root(_) => unreachable!(),
    };
    let (a, b) = (first_blob("a"), first_blob("b"));
    let (pack, entry) = repo.index().get(&a[0]).unwrap();
    assert_eq!(entry.blob_type, BlobType::Data);
    assert!(!entry.bundled());
    assert!(b.iter().all(|id| {
        let (p, e) = repo.index().get(id).unwrap();
        (p, e.offset) != (pack, entry.offset)
    }));
    let path = env.repo().join(FileKind::Data.path(&pack));
    let mut stored = fs::read(&path).unwrap();
    let at = entry.offset as usize + entry.length as usize / 2;
    stored[at] ^= 0x40;
    let mut perms = fs::metadata(&path).unwrap().permissions();
    perms.set_mode(0o600);
    fs::set_permissions(&path, perms).unwrap();
    fs::write(&path, stored).unwrap();
    a[0]
}

/// Two 1 MiB files, `a` and `b`, in `src`.
fn two_files(env: &Env) -> PathBuf {
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), bytes(7, 1 << 20)).unwrap();
    fs::write(src.join("b"), bytes(8, 1 << 20)).unwrap();
    src
}

#[test]
fn a_damaged_pack_fails_only_the_file_it_holds() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    env.init(&["--chunk-size", "512K"]);
    let src = two_files(&env);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let a = damage_the_pack_of_a(&env, &src);

    let m = mount(&env);
    let seen = m.src("latest", &src);
    for _ in 0..2 {
        let err = fs::read(seen.join("a")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }
    assert_eq!(fs::read(seen.join("b")).unwrap(), bytes(8, 1 << 20));
    // The listing reads no file data and still works.
    assert_eq!(fs::read_dir(&seen).unwrap().count(), 2);
    let errors = m.errors();
    assert_eq!(mentions(&errors, &a.short()), 1, "reported once: {errors}");
}

/// A repository reached over SFTP mounts, and where its copy of a pack is damaged, the
/// mirror's copy serves the file: reads fall over to mirrors as restore's do.
#[test]
fn a_remote_repository_mounts_and_its_mirror_stands_in() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    let Some(sftp) = common::servers::Sftp::start(&env.path("sshd")) else {
        return;
    };
    let url = sftp.url(&env.repo());
    let vault = |args: &[&str]| {
        let out = env
            .cmd()
            .env("VAULT_REPOSITORY", &url)
            .args(args)
            .output()
            .unwrap();
        common::assert_ok(&out);
    };
    vault(&["init", "--chunk-size", "512K"]);
    let mirror = env.path("mirror");
    vault(&["mirror", "add", "disk", mirror.to_str().unwrap()]);
    let src = two_files(&env);
    vault(&["backup", "-q", "--sync", src.to_str().unwrap()]);
    let a = damage_the_pack_of_a(&env, &src);

    let mut cmd = env.cmd();
    cmd.env("VAULT_REPOSITORY", &url).arg("mount");
    let m = mount_by(&env, cmd, &env.path("mnt"));
    let seen = m.src("latest", &src);
    assert_eq!(
        fs::read(seen.join("a")).unwrap(),
        bytes(7, 1 << 20),
        "{}",
        m.errors()
    );
    assert_eq!(fs::read(seen.join("b")).unwrap(), bytes(8, 1 << 20));
    let errors = m.errors();
    assert!(
        mentions(&errors, &a.short()) <= 1,
        "the damaged copy is reported at most once: {errors}"
    );
}

/// Flips a byte in the middle of the stored bundle holding `member`, in every copy of its
/// pack found under `root` (a repository or a mirror); returns the damaged pack's id.
fn damage_the_bundle_of(env: &Env, member: &vault::format::Id, root: &Path) -> String {
    let repo = common::open_repo(env);
    let (pack, entry) = repo.index().get(member).unwrap();
    assert!(entry.bundled(), "a small file's blob is a bundle member");
    let name = pack.to_hex();
    let mut found = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().unwrap() == name.as_str() {
                let mut stored = fs::read(&path).unwrap();
                stored[entry.offset as usize + entry.length as usize / 2] ^= 0x40;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
                fs::write(&path, stored).unwrap();
                found += 1;
            }
        }
    }
    assert_eq!(found, 1, "one copy of pack {name} under {}", root.display());
    pack.short()
}

/// Small files are read out of their opened bundle: where the repository's copy of a
/// bundle is damaged, the mirror's serves every member; where every copy is, each of its
/// members fails with EIO, each reported once, and a file stored apart still reads.
#[test]
fn a_damaged_bundle_falls_over_to_the_mirror_then_fails_only_its_members() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    env.init(&["--chunk-size", "512K"]);
    let mirror = env.path("mirror");
    env.ok(&["mirror", "add", "disk", mirror.to_str().unwrap()]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let small = |i: u64| bytes(100 + i, 3000 + i as usize * 500);
    for i in 0..8 {
        fs::write(src.join(format!("s{i}")), small(i)).unwrap();
    }
    fs::write(src.join("big"), bytes(9, 1 << 20)).unwrap();
    env.ok(&["backup", "-q", "--sync", src.to_str().unwrap()]);
    let member = {
        use vault::ops::walk::{self, Found};
        let repo = common::open_repo(&env);
        let snaps = repo.snapshots().unwrap();
        let snap = snaps[0].1.as_ref().unwrap();
        match walk::find(&repo, &snap.tree, &src.join("s0")).unwrap() {
            Found::Node(n) => n.content[0],
            Found::Root(_) => unreachable!(),
        }
    };
    let pack = damage_the_bundle_of(&env, &member, &env.repo());

    let read_all = |m: &Mounted| {
        let seen = m.src("latest", &src);
        (0..8)
            .map(|i| fs::read(seen.join(format!("s{i}"))).map(|b| b == small(i)))
            .collect::<Vec<_>>()
    };
    {
        let m = mount(&env);
        let got = read_all(&m);
        assert!(
            got.iter().all(|r| matches!(r, Ok(true))),
            "{got:?}\n{}",
            m.errors()
        );
    }

    damage_the_bundle_of(&env, &member, &mirror);
    let m = mount(&env);
    let seen = m.src("latest", &src);
    for _ in 0..2 {
        for r in read_all(&m) {
            let err = r.expect_err("a member of a bundle damaged everywhere");
            assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        }
    }
    assert_eq!(fs::read(seen.join("big")).unwrap(), bytes(9, 1 << 20));
    let errors = m.errors();
    // Each member's blob is named once, not again on the second pass.
    assert_eq!(mentions(&errors, &pack), 8, "{errors}");
}

/// No process left whose command line names the mount point.
fn processes_naming(at: &Path) -> Vec<String> {
    let at = at.to_str().unwrap();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmd = fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(at).then_some(cmd)
        })
        .collect()
}

#[test]
fn sigint_and_fusermount_unmount_cleanly() {
    if !fuse_available() {
        return;
    }
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file("content");
    env.ok(&["backup", "-q", src.to_str().unwrap()]);

    let mut m = mount(&env);
    assert!(m.src("latest", &src).join("f").is_file());
    let status = m.signal_and_wait(nix::sys::signal::Signal::SIGINT);
    assert_eq!(status.code(), Some(130), "{}", m.errors());
    assert!(!is_mounted(&m.at), "still mounted after SIGINT");
    assert!(
        processes_naming(&m.at).is_empty(),
        "{:?}",
        processes_naming(&m.at)
    );
    assert!(!m.errors().contains("could not release"), "{}", m.errors());
    // The lock went with it: an exclusive command runs at once.
    env.ok(&["prune", "-q"]);

    let mut m = mount(&env);
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&m.at)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut child = m.child.take().unwrap();
    let status = wait(&mut child, &m.errors());
    assert_eq!(status.code(), Some(0), "{}", m.errors());
    assert!(processes_naming(&m.at).is_empty());
}

/// `program` run as user nobody (through `setpriv`, as the tests run as root).
fn by_nobody(program: &str) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        program,
    ]);
    c
}

/// Whether user nobody can read `p`.
fn nobody_reads(p: &Path) -> bool {
    by_nobody("cat")
        .arg(p)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// A mount by root uses default_permissions: with --allow-other, other users read what
/// the stored modes let them read and nothing else, though the mounting process could;
/// without it, they cannot enter the mount at all.
#[test]
fn other_users_see_only_what_the_stored_modes_allow() {
    if !fuse_available() {
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test drops privileges with setpriv: run the tests as root"
    );
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(src.join("public"), "for all").unwrap();
    fs::write(src.join("secret"), "root only").unwrap();
    fs::set_permissions(src.join("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    assert!(nobody_reads(&src.join("public")) && !nobody_reads(&src.join("secret")));

    let m = mount_with(&env, &["--allow-other"]);
    let seen = m.src("latest", &src);
    assert!(nobody_reads(&seen.join("public")), "{}", m.errors());
    assert!(!nobody_reads(&seen.join("secret")));
    assert_eq!(fs::read(seen.join("secret")).unwrap(), b"root only");
    drop(m);

    let m = mount(&env);
    let seen = m.src("latest", &src);
    assert!(!nobody_reads(&seen.join("public")), "no --allow-other");
    assert_eq!(fs::read(seen.join("public")).unwrap(), b"for all");
}

/// Whether users who are not root may open /dev/fuse, as on a desktop system, where
/// udev's rule for fuse3 makes it 0666.
fn fuse_open_to_users() -> bool {
    let mode = fs::metadata("/dev/fuse").map_or(0, |m| m.mode());
    let ok = mode & 0o006 == 0o006;
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: /dev/fuse must be open to users (chmod 0666 /dev/fuse, as udev does)"
        );
        eprintln!("skipped: /dev/fuse is not open to users");
    }
    ok
}

/// `cmd` run as user nobody, with its own home, repository and cache.
fn as_nobody(mut cmd: std::process::Command, home: &Path) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    cmd.uid(65534)
        .gid(65534)
        .env("HOME", home)
        .env("VAULT_REPOSITORY", home.join("repo"))
        .env("VAULT_CACHE_DIR", home.join("cache"));
    cmd
}

/// A user who is not root mounts through the setuid fusermount3: the mount is theirs
/// (root cannot enter it without --allow-other), reads as stored, and they unmount it.
#[test]
fn a_user_who_is_not_root_mounts_and_unmounts() {
    if !fuse_available() || !fuse_open_to_users() {
        return;
    }
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = env.path("nobody");
    let src = home.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("notes"), "what nobody wrote\n").unwrap();
    fs::write(src.join("big"), bytes(3, 3 << 20)).unwrap();
    for p in [&home, &src] {
        nix::unistd::chown(p.as_path(), Some(65534.into()), Some(65534.into())).unwrap();
    }
    let vault = |args: &[&str]| {
        let mut cmd = as_nobody(env.cmd(), &home);
        common::assert_ok(&cmd.args(args).output().unwrap());
    };
    vault(&["init"]);
    vault(&["backup", "-q", src.to_str().unwrap()]);

    let mut cmd = as_nobody(env.cmd(), &home);
    cmd.arg("mount");
    let at = home.join("mnt");
    fs::create_dir_all(&at).unwrap();
    nix::unistd::chown(at.as_path(), Some(65534.into()), Some(65534.into())).unwrap();
    let mut m = mount_by(&env, cmd, &at);
    let line = fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == at.to_str())
        .unwrap()
        .to_string();
    assert!(line.contains("user_id=65534"), "{line}");
    let seen = m.src("latest", &src);
    let read = |p: &Path| {
        let out = by_nobody("cat").arg(p).output().unwrap();
        common::assert_ok(&out);
        out.stdout
    };
    assert_eq!(read(&seen.join("notes")), b"what nobody wrote\n");
    assert_eq!(read(&seen.join("big")), bytes(3, 3 << 20));
    let denied = fs::metadata(m.p("latest")).unwrap_err();
    assert_eq!(denied.raw_os_error(), Some(libc::EACCES), "{denied}");

    let out = by_nobody("fusermount3")
        .arg("-u")
        .arg(&at)
        .output()
        .unwrap();
    common::assert_ok(&out);
    let mut child = m.child.take().unwrap();
    let status = wait(&mut child, &m.errors());
    assert_eq!(status.code(), Some(0), "{}", m.errors());
    assert!(!is_mounted(&at));
}
