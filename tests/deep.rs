//! Deep and self-repeating trees: every walk (ls, find, diff, versions, check, prune,
//! export, verify) works at any depth with memory bounded by the depth, and backup saves
//! a directory chain deeper than PATH_MAX whole.
//!
//! A 30 000-deep snapshot is written with the library, as a key holder's crafted client
//! could: tree blobs chained `/d/d/.../d/f`, the leaf file's content taken from a real
//! backup.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use common::{Env, TreeWriter, crafted_dir as dir, open_repo as open};
use vault::format::Id;
use vault::format::tree::Node;
use vault::ops::walk::{self, Found};
use vault::repo::Repository;

const DEPTH: usize = 30_000;
const LEAF: &[u8] = b"the leaf's content, 30 000 levels down\n";

/// A chain of `depth` directories `d` above a tree holding `leaf`; returns the root tree.
fn chain(w: &TreeWriter, depth: usize, leaf: Vec<Node>) -> Id {
    let mut id = w.put(leaf);
    for _ in 0..depth {
        id = w.put(vec![dir(b"d", id)]);
    }
    id
}

/// Saves a copy of snapshot `like` with root tree `tree`; returns its id in hex.
fn snapshot(repo: &Repository, like: &Id, tree: Id, time: &str) -> String {
    let mut s = repo.load_snapshot(like).expect("snapshot");
    s.tree = tree;
    s.paths = vec!["/d".into()];
    s.parent = None;
    s.time = time.into();
    repo.save_snapshot(&s).expect("save snapshot").to_hex()
}

fn leaf_path(depth: usize) -> String {
    let mut p = "/d".repeat(depth);
    p.push_str("/f");
    p
}

struct Deep {
    env: Env,
    /// The full chain, with the leaf file.
    deep: String,
    /// The same chain without the leaf file.
    bare: String,
}

/// A repository with a real backup of one file: the repository, the snapshot and the
/// file's node, for crafted snapshots to copy.
fn backed_up_leaf() -> (Env, Repository, Id, Box<Node>) {
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file(LEAF);
    env.ok(&["backup", "-q", src.to_str().expect("utf-8")]);
    let repo = open(&env);
    let (orig, snap) = repo.snapshots().expect("list").remove(0);
    let snap = snap.expect("snapshot");
    let Found::Node(f) = walk::find(&repo, &snap.tree, &src.join("f")).expect("f") else {
        panic!("f is a file")
    };
    (env, repo, orig, f)
}

/// A repository with a real backup of one file, and two 30 000-deep snapshots.
fn deep_repo() -> Deep {
    let (env, repo, orig, f) = backed_up_leaf();
    let w = TreeWriter::new(&repo);
    let deep = chain(&w, DEPTH, vec![*f]);
    let bare = chain(&w, DEPTH, Vec::new());
    w.finish();
    let deep = snapshot(&repo, &orig, deep, "2030-01-01T00:00:00Z");
    let bare = snapshot(&repo, &orig, bare, "2030-01-02T00:00:00Z");
    Deep { env, deep, bare }
}

/// Runs vault and counts its output lines (holding only their tail); asserts exit 0.
fn count_lines(env: &Env, args: &[&str]) -> (usize, Vec<u8>) {
    let mut child = env
        .cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vault");
    let mut out = child.stdout.take().expect("stdout");
    let (mut lines, mut buf, mut last) = (0, vec![0u8; 1 << 16], Vec::new());
    loop {
        let n = out.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
        // The tail, long enough for the deepest path.
        last.extend_from_slice(&buf[..n]);
        if last.len() > 1 << 18 {
            last.drain(..last.len() - (1 << 17));
        }
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "vault {args:?}: {err}");
    (lines, last)
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    eprintln!("{what}: {:.2} s", t.elapsed().as_secs_f64());
    r
}

#[test]
fn ls_find_diff_versions_of_a_30000_deep_snapshot() {
    let d = timed("build", deep_repo);
    let env = &d.env;
    let (lines, last) = timed("ls", || count_lines(env, &["ls", &d.deep]));
    assert_eq!(lines, DEPTH + 1, "every directory and the leaf");
    assert!(last.ends_with(format!("{}\n", leaf_path(DEPTH)).as_bytes()));

    let found = timed("find", || env.json(&["find", "f"], 0));
    let groups = found.as_array().expect("groups");
    let deep: Vec<_> = groups.iter().filter(|g| g["snapshot"] == d.deep).collect();
    assert_eq!(deep.len(), 1, "{found}");
    let matches = deep[0]["matches"].as_array().expect("matches");
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0]["path"], leaf_path(DEPTH));

    let diff = timed("diff", || env.json(&["diff", &d.deep, &d.bare], 0));
    let changes = diff["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "only the leaf: {}", diff["stats"]);
    assert_eq!(changes[0]["change"], "removed");
    assert_eq!(changes[0]["path"], leaf_path(DEPTH));

    let versions = timed("versions", || env.json(&["versions", &leaf_path(DEPTH)], 0));
    let rows = versions.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{versions}");
    assert_eq!(rows[0]["first_snapshot"], d.deep);
    assert_eq!(rows[0]["size"], LEAF.len());

    let dump = env.ok(&["dump", &d.deep, &leaf_path(DEPTH)]);
    assert_eq!(dump.as_bytes(), LEAF);
}

#[test]
fn check_prune_export_of_a_30000_deep_snapshot() {
    let d = timed("build", deep_repo);
    let env = &d.env;
    timed("check", || env.ok(&["check"]));
    timed("check --read-data", || env.ok(&["check", "--read-data"]));
    let image = env.path("image.tar");
    timed("export image", || {
        env.ok(&[
            "export",
            "--image",
            image.to_str().expect("utf-8"),
            "--snapshots",
            &d.deep,
        ])
    });
    env.ok(&["export", "--verify-image", image.to_str().expect("utf-8")]);
    let exported = env.path("export");
    timed("export", || {
        env.ok(&["export", exported.to_str().expect("utf-8")])
    });
    env.ok(&["forget", &d.bare]);
    timed("prune", || env.ok(&["prune"]));
    env.ok(&["check", "--read-data"]);
    let (lines, _) = count_lines(env, &["ls", &d.deep]);
    assert_eq!(
        lines,
        DEPTH + 1,
        "prune kept every tree of the deep snapshot"
    );
}

#[test]
fn verify_of_a_30000_deep_snapshot() {
    let d = timed("build", deep_repo);
    let env = &d.env;
    let work = env.path("work");
    std::fs::create_dir(&work).expect("workdir");
    timed("verify", || {
        env.ok(&[
            "verify",
            &d.deep,
            "--sample",
            "1",
            "--workdir",
            work.to_str().expect("utf-8"),
        ])
    });
}

/// A small snapshot whose every level holds two directories sharing one subtree: 2^64
/// paths from 65 trees.
fn repeating_repo(levels: usize) -> (Env, String) {
    let (env, repo, orig, f) = backed_up_leaf();
    let w = TreeWriter::new(&repo);
    let mut id = w.put(vec![*f]);
    for _ in 0..levels {
        id = w.put(vec![dir(b"a", id), dir(b"b", id)]);
    }
    w.finish();
    let snap = snapshot(&repo, &orig, id, "2030-01-01T00:00:00Z");
    (env, snap)
}

#[test]
fn a_self_repeating_snapshot_checks_and_prunes_fast() {
    let (env, snap) = repeating_repo(64);
    let t = Instant::now();
    env.ok(&["check", "--read-data"]);
    env.ok(&["forget", &snap]);
    env.ok(&["prune"]);
    env.ok(&["check"]);
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
}

/// Peak resident memory of a running process, in kB.
fn peak_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Reads `n` lines of a never-ending listing, then the process's peak memory.
fn stream_then_peak(env: &Env, args: &[&str], n: usize) -> u64 {
    let mut child = env
        .cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vault");
    let mut out = child.stdout.take().expect("stdout");
    let (mut lines, mut buf) = (0, vec![0u8; 1 << 16]);
    while lines < n {
        let r = out.read(&mut buf).expect("read");
        assert!(r > 0, "vault {args:?} ended after {lines} lines");
        lines += buf[..r].iter().filter(|&&b| b == b'\n').count();
    }
    let peak = peak_kb(child.id());
    child.kill().expect("kill the listing");
    child.wait().expect("wait");
    peak
}

#[test]
fn listing_a_self_repeating_snapshot_streams_in_bounded_memory() {
    let (env, snap) = repeating_repo(40);
    // 2^40 paths: the listing runs for ever, so it must stream, not gather.
    let early = stream_then_peak(&env, &["ls", &snap], 100_000);
    let late = stream_then_peak(&env, &["ls", &snap], 1_000_000);
    eprintln!("ls peak after 100k lines: {early} kB, after 1M: {late} kB");
    assert!(late < early + 16 * 1024, "{early} kB then {late} kB");
    let early = stream_then_peak(&env, &["find", "f"], 50_000);
    let late = stream_then_peak(&env, &["find", "f"], 500_000);
    eprintln!("find peak after 50k lines: {early} kB, after 500k: {late} kB");
    assert!(late < early + 16 * 1024, "{early} kB then {late} kB");
}

/// Makes a chain of `depth` directories `d` below `top` with a file `f` at the bottom,
/// each level made relative to its parent's descriptor (the path is longer than PATH_MAX).
fn deep_chain(top: &Path, depth: usize, content: &[u8]) {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, mkdirat};
    use std::io::Write;
    let mut fd = nix::fcntl::open(top, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())
        .expect("open top");
    for _ in 0..depth {
        mkdirat(&fd, "d", Mode::from_bits_truncate(0o755)).expect("mkdirat");
        fd = openat(
            &fd,
            "d",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .expect("openat");
    }
    let f = openat(
        &fd,
        "f",
        OFlag::O_CREAT | OFlag::O_WRONLY,
        Mode::from_bits_truncate(0o644),
    )
    .expect("create f");
    std::fs::File::from(f).write_all(content).expect("write f");
}

/// Removes a chain deeper than PATH_MAX from the top, one level at a time: the level
/// below moves up in place of the one removed (the temporary directory's own removal
/// would need a descriptor per level).
fn remove_chain(top: &Path) {
    use nix::fcntl::{OFlag, open, openat, renameat};
    use nix::sys::stat::Mode;
    use nix::unistd::{UnlinkatFlags, unlinkat};
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
    let top = open(top, flags, Mode::empty()).expect("open top");
    while let Ok(d) = openat(&top, "d", flags, Mode::empty()) {
        let _ = unlinkat(&d, "f", UnlinkatFlags::NoRemoveDir);
        let below = renameat(&d, "d", &top, "next").is_ok();
        drop(d);
        unlinkat(&top, "d", UnlinkatFlags::RemoveDir).expect("rmdir");
        if !below {
            break;
        }
        renameat(&top, "next", &top, "d").expect("rename up");
    }
}

#[test]
fn a_20000_deep_directory_chain_backs_up_whole() {
    const REAL: usize = 20_000;
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    std::fs::create_dir(&src).expect("src");
    let content = b"at the bottom of 20 000 directories\n";
    timed("make chain", || deep_chain(&src, REAL, content));
    let out = timed("backup", || {
        env.backup_json(&[src.to_str().expect("utf-8")])
    });
    assert_eq!(out["summary"]["errors"], 0, "{out}");
    let leaf = format!("{}{}", src.display(), leaf_path(REAL));
    let (lines, last) = timed("ls", || {
        count_lines(&env, &["ls", "latest", src.to_str().expect("utf-8")])
    });
    assert_eq!(lines, REAL + 2, "src, every directory and the leaf");
    assert!(last.ends_with(format!("{leaf}\n").as_bytes()));
    let dump = env.ok(&["dump", "latest", &leaf]);
    assert_eq!(dump.as_bytes(), content);
    // A second backup finds the chain unchanged.
    let again = timed("backup again", || {
        env.backup_json(&[src.to_str().expect("utf-8")])
    });
    assert_eq!(again["summary"]["files_unchanged"], 1, "{again}");
    remove_chain(&src);
}
