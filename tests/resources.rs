//! Resource tests: very many files, a very large sparse file, and a disk that fills up
//! during restore. Each vault process is run on its own so that its peak memory (max RSS
//! from wait4) can be held to a bound.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use common::{Env, bytes};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// One finished vault run: its output, peak resident memory and wall time.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    max_rss: u64,
    secs: f64,
}

impl Run {
    fn assert_code(&self, code: i32, what: &str) {
        assert_eq!(
            self.status.code(),
            Some(code),
            "{what}\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `vault args` and reaps it with wait4, which reports that one child's peak RSS
/// (getrusage(RUSAGE_CHILDREN) would mix in every other test's children).
fn measure(env: &Env, args: &[&str], label: &str) -> Run {
    let mut cmd = env.cmd();
    cmd.args(args);
    measure_cmd(cmd, label)
}

#[allow(clippy::zombie_processes)] // reaped by wait4, which std's Child cannot do
fn measure_cmd(mut cmd: Command, label: &str) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vault");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it in for the one child named.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let run = Run {
        status: ExitStatus::from_raw(status),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        // Linux reports ru_maxrss in KiB.
        max_rss: ru.ru_maxrss as u64 * 1024,
        secs: start.elapsed().as_secs_f64(),
    };
    eprintln!(
        "{label}: {:.1} s, peak RSS {:.1} MiB, exit {:?}",
        run.secs,
        run.max_rss as f64 / MIB as f64,
        run.status.code()
    );
    run
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// A tmpfs mounted for the test, unmounted (lazily, should a file still be open) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, options: &str) -> Tmpfs {
        fs::create_dir_all(&at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "vault-test", s(&at)])
            .status()
            .expect("mount(8)");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (tests run as root in CI)"
        );
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Creates empty files `f0000000`… in `dir`, on two threads.
fn empty_files(dir: &Path, count: usize) {
    fs::create_dir_all(dir).unwrap();
    std::thread::scope(|sc| {
        for t in 0..2 {
            sc.spawn(move || {
                for i in (t..count).step_by(2) {
                    fs::File::create(dir.join(format!("f{i:07}"))).unwrap();
                }
            });
        }
    });
}

/// Counts the entries of `dir`, asserting that each is an empty file named as
/// `empty_files` names them.
fn count_empty(dir: &Path, count: usize) -> usize {
    let mut seen = vec![false; count];
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let i: usize = name[1..].parse().unwrap_or(usize::MAX);
        assert!(i < count && !seen[i], "unexpected entry {name}");
        seen[i] = true;
        let md = e.metadata().unwrap();
        assert!(md.is_file() && md.len() == 0, "{}", e.path().display());
    }
    seen.iter().filter(|s| **s).count()
}

fn summary(run: &Run) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(&run.stdout).expect("--json output")["summary"]
        .clone()
}

/// The files: one directory of FLAT entries (a single tree blob of about 40 MB of JSON)
/// and DIRS directories of PER_DIR, a million in all.
const FLAT: usize = 200_000;
const DIRS: usize = 800;
const PER_DIR: usize = 1_000;

#[test]
fn a_million_empty_files_back_up_and_restore_in_bounded_memory() {
    let total = FLAT + DIRS * PER_DIR;
    assert_eq!(total, 1_000_000);
    let env = Env::new();
    // tmpfs: creating a million files on a busy disk takes minutes, in memory seconds.
    let src_fs = Tmpfs::mount(env.path("src"), "size=64m,nr_inodes=1100000");
    let src = src_fs.0.clone();
    let t = Instant::now();
    empty_files(&src.join("flat"), FLAT);
    std::thread::scope(|sc| {
        for half in 0..2 {
            let src = &src;
            sc.spawn(move || {
                for d in (half..DIRS).step_by(2) {
                    let dir = src.join(format!("d{d:03}"));
                    fs::create_dir(&dir).unwrap();
                    for i in 0..PER_DIR {
                        fs::File::create(dir.join(format!("f{i:07}"))).unwrap();
                    }
                }
            });
        }
    });
    eprintln!(
        "created {total} empty files in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    env.init(&[]);

    let b = measure(&env, &["backup", "--json", s(&src)], "backup");
    b.assert_code(0, "backup");
    assert_eq!(summary(&b)["files_new"], total);
    let again = measure(&env, &["backup", "--json", s(&src)], "second backup");
    again.assert_code(0, "second backup");
    assert_eq!(summary(&again)["files_unchanged"], total);
    assert_eq!(summary(&again)["files_new"], 0);
    assert_eq!(summary(&again)["bytes_read"], 0, "no file opened");
    // Only the trees above the source (whose directory times the test itself moves)
    // may be new; the 801 below it are unchanged.
    let blobs = summary(&again)["blobs_added"].as_u64().unwrap();
    assert!(blobs <= 4, "{blobs} blobs added by a backup of nothing new");
    drop(src_fs); // the restore's million inodes need the memory more

    let dst = Tmpfs::mount(env.path("r"), "size=64m,nr_inodes=1100000");
    let r = measure(
        &env,
        &["restore", "latest", "--target", s(&dst.0)],
        "restore",
    );
    r.assert_code(0, "restore");
    let t = Instant::now();
    let restored = Env::restored(&dst.0, &src);
    assert_eq!(count_empty(&restored.join("flat"), FLAT), FLAT);
    for d in 0..DIRS {
        let dir = restored.join(format!("d{d:03}"));
        assert_eq!(count_empty(&dir, PER_DIR), PER_DIR, "{}", dir.display());
    }
    eprintln!("checked the restore in {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(
        fs::read_dir(&restored).unwrap().count(),
        DIRS + 1,
        "nothing else restored"
    );

    // Backup builds one tree per directory and streams directories to the tree writer,
    // so its peak follows the largest directory: the flat one's 200 000 nodes, at about
    // 1.5 KiB each while in flight (node, reply channel, then its JSON), plus a 50 MiB
    // base. Holding all million nodes at that cost would need 1.5 GiB.
    assert!(
        b.max_rss < 600 * MIB,
        "backup peaked at {} MiB for {total} files",
        b.max_rss / MIB
    );
    assert!(
        again.max_rss < 400 * MIB,
        "second backup peaked at {} MiB for {total} files",
        again.max_rss / MIB
    );
    // Restore plans every entry before writing (about 500 bytes each: path, node), so
    // its peak grows with the snapshot, not with the largest directory; this bound only
    // catches that cost growing. Planning in bounded batches would bring it under the
    // backup's bound.
    assert!(
        r.max_rss < 800 * MIB,
        "restore peaked at {} MiB for {total} files",
        r.max_rss / MIB
    );
}

/// Data at a few offsets of a 50 GiB file, holes everywhere else: backup reads only the
/// data, and restore writes only the data, leaving the holes as holes.
#[test]
fn a_50gib_sparse_file_round_trips_with_holes_in_bounded_memory() {
    const SIZE: u64 = 50 * GIB;
    let regions: [(u64, Vec<u8>); 5] = [
        (0, b"start".to_vec()),
        (7 * GIB + 12_345, bytes(1, 100_000)),
        // Several chunks long, so one stream crosses chunk boundaries inside an extent.
        (25 * GIB, bytes(2, 12 << 20)),
        (49 * GIB + 4096, bytes(3, 4096)),
        (SIZE - 3, b"end".to_vec()),
    ];
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let f = fs::File::create(src.join("disk.img")).unwrap();
    f.set_len(SIZE).unwrap();
    for (off, data) in &regions {
        f.write_all_at(data, *off).unwrap();
    }
    drop(f);
    env.init(&[]);
    let b = measure(&env, &["backup", "--json", s(&src)], "sparse backup");
    b.assert_code(0, "sparse backup");
    let added = summary(&b)["bytes_added"].as_u64().unwrap();
    assert!(added < 32 * MIB, "only the data is stored ({added} bytes)");
    let target = env.path("r");
    let r = measure(
        &env,
        &["restore", "latest", "--target", s(&target), "--verify"],
        "sparse restore --verify",
    );
    r.assert_code(0, "sparse restore");
    let restored = Env::restored(&target, &src).join("disk.img");
    let g = fs::File::open(&restored).unwrap();
    let md = g.metadata().unwrap();
    assert_eq!(md.len(), SIZE);
    assert!(
        md.blocks() * 512 < 64 * MIB,
        "holes restored as holes ({} blocks allocated)",
        md.blocks()
    );
    for (off, data) in &regions {
        let mut buf = vec![0u8; data.len()];
        g.read_exact_at(&mut buf, *off).unwrap();
        assert!(buf == *data, "data at {off}");
    }
    // Every allocated range must hold one of the regions (rounded out to whole pages):
    // anything else would be zeros written where a hole belongs.
    let mut pos = 0i64;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&g);
    loop {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data after pos
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        assert!(hole > data);
        let (d, h) = (data as u64, hole as u64);
        assert!(
            regions
                .iter()
                .any(|(off, v)| { d < off + v.len() as u64 && h > *off }),
            "allocated range {d}..{h} holds none of the written data"
        );
        pos = hole;
    }
    // Whole-file reads or buffers would show as gigabytes here.
    for (run, what) in [(&b, "backup"), (&r, "restore")] {
        assert!(
            run.max_rss < 300 * MIB,
            "sparse {what} peaked at {} MiB",
            run.max_rss / MIB
        );
        assert!(run.secs < 120.0, "sparse {what} took {:.0} s", run.secs);
    }
}

/// Every file in a repository with its size and content hash, to show it unmodified.
fn repo_state(env: &Env) -> Vec<(PathBuf, String)> {
    let mut v: Vec<_> = common::walkdir(&env.repo())
        .into_iter()
        .map(|p| {
            let h = blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string();
            (p, h)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_disk_filling_up_during_restore_stops_with_one_clear_error() {
    let env = Env::new();
    env.init(&["--pack-size", "4M"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // 40 MiB that does not compress, for a 16 MiB disk.
    for i in 0..5u64 {
        fs::write(src.join(format!("part{i}")), bytes(10 + i, 8 << 20)).unwrap();
    }
    fs::write(src.join("small"), b"fits").unwrap();
    env.ok(&["backup", "-q", s(&src)]);
    let before = repo_state(&env);
    let disk = Tmpfs::mount(env.path("disk"), "size=16m");
    let r = measure(
        &env,
        &["restore", "latest", "--target", s(&disk.0)],
        "restore onto a full disk",
    );
    assert_eq!(r.status.code(), Some(1), "exit code 1\n{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
    let line = r.stderr.trim_end();
    eprintln!("{line}");
    assert!(
        line.contains("No space left on device"),
        "says what happened: {line}"
    );
    assert!(line.contains(s(&disk.0)), "names the target: {line}");
    assert!(
        line.contains("free space") && line.contains("restore elsewhere"),
        "says what to do: {line}"
    );
    assert!(!line.contains("panicked"), "{line}");
    // No file is left looking restored with wrong content: what remains is complete.
    let restored = Env::restored(&disk.0, &src);
    for p in common::walkdir(&restored) {
        let name = p.file_name().unwrap().to_str().unwrap();
        let got = fs::read(&p).unwrap();
        let want = fs::read(src.join(name)).unwrap();
        assert!(got == want, "{} left with wrong content", p.display());
    }
    assert_eq!(repo_state(&env), before, "the repository is unchanged");
    // Nor is the repository left locked: a restore with room succeeds.
    let t = env.restore_verified("roomy");
    assert_eq!(
        fs::read(Env::restored(&t, &src).join("part4")).unwrap(),
        bytes(14, 8 << 20)
    );
}

/// The scrypt parameters of the repository's one key file: (log_n, r, p).
fn kdf_of_only_key(env: &Env) -> (u64, u64, u64) {
    let keys: Vec<_> = fs::read_dir(env.repo().join("keys"))
        .expect("keys/")
        .map(|e| e.expect("key entry").path())
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let kf: serde_json::Value =
        serde_json::from_slice(&fs::read(&keys[0]).expect("key file")).expect("key JSON");
    let field = |f: &str| kf["kdf"][f].as_u64().expect("kdf field");
    (field("log_n"), field("r"), field("p"))
}

/// Every command opened with a password pays the KDF's memory: new keys hold it at the
/// format's 32 MiB floor (lanes buy the time), so opening stays below the smallest peer
/// opened with a password (restic, 54-71 MB here). A key from before, at 256 MiB, is
/// what `key passwd` moves to the new cost.
#[test]
fn a_password_opens_in_the_kdf_floors_memory_and_key_passwd_moves_old_keys_there() {
    let env = Env::new();
    let calibrated = |args: &[&str]| {
        let mut c = env.cmd();
        c.env_remove("VAULT_KDF_LOG_N").args(args);
        c
    };
    // The cost vault wrote before: N = 2^18 (256 MiB).
    let mut old = env.cmd();
    old.env("VAULT_KDF_LOG_N", "18").arg("init");
    measure_cmd(old, "init at 2^18").assert_code(0, "init");
    assert_eq!(kdf_of_only_key(&env), (18, 8, 1));
    let before = measure(&env, &["snapshots"], "open at 2^18");
    before.assert_code(0, "snapshots");
    assert!(
        before.max_rss > 256 * MIB,
        "the measure must see the KDF: {} bytes",
        before.max_rss
    );

    let pw = env.path("same-password");
    fs::write(&pw, common::PASSWORD).expect("password file");
    let mut passwd = calibrated(&["key", "passwd"]);
    passwd.env("VAULT_NEW_PASSWORD_FILE", &pw);
    measure_cmd(passwd, "key passwd").assert_code(0, "key passwd");
    let (log_n, r, p) = kdf_of_only_key(&env);
    assert_eq!((log_n, r), (15, 8), "32 MiB");
    assert!((1..=16).contains(&p), "lanes {p}");

    let after = measure(&env, &["snapshots"], "open at the floor");
    after.assert_code(0, "snapshots");
    assert!(
        after.max_rss < 64 * MIB,
        "opening with a password peaked at {:.1} MiB",
        after.max_rss as f64 / MIB as f64
    );

    // A new repository gets the same cost at init.
    let fresh = Env::new();
    let mut init = fresh.cmd();
    init.env_remove("VAULT_KDF_LOG_N").arg("init");
    measure_cmd(init, "init calibrated").assert_code(0, "init");
    assert_eq!(kdf_of_only_key(&fresh).0, 15);
}
