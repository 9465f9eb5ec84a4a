//! Shared helpers for end-to-end tests: a scratch directory, a repository in it, and the
//! real vault binary run with a test password.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod proxy;
pub mod servers;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        // Backups store the source's ancestors too, so a test that expects a second
        // backup to add nothing needs them unchanged: in a directory of their own, not in
        // /tmp itself, whose mtime every compiler and process making a temporary file
        // changes.
        let base = std::env::temp_dir().join("vault-tests");
        std::fs::create_dir_all(&base).expect("create the tests' directory");
        Env {
            dir: tempfile::Builder::new()
                .prefix("vault-test")
                .tempdir_in(&base)
                .expect("tempdir"),
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A directory `src` holding one file, `f`, with `content`.
    pub fn source_with_file(&self, content: impl AsRef<[u8]>) -> PathBuf {
        let src = self.path("src");
        std::fs::create_dir_all(&src).expect("create src");
        std::fs::write(src.join("f"), content).expect("write src/f");
        src
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// The vault binary with this test's repository, password and cache.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vault"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("VAULT_REPOSITORY", self.repo())
            .env("VAULT_PASSWORD", PASSWORD)
            .env("VAULT_KDF_LOG_N", "15")
            .env("VAULT_CACHE_DIR", self.path("cache"));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run vault")
    }

    /// Runs and asserts the exit code; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.expect(args, 0)
    }

    pub fn expect(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "vault {:?}\nstdout: {}\nstderr: {}",
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs with --json, asserts the exit code, parses stdout.
    pub fn json(&self, args: &[&str], code: i32) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.expect(&a, code)).expect("JSON output")
    }

    /// Restores the latest snapshot into a fresh directory with --verify; returns it.
    pub fn restore_verified(&self, name: &str) -> PathBuf {
        let target = self.path(name);
        self.ok(&[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--verify",
        ]);
        target
    }

    pub fn init(&self, extra: &[&str]) {
        let mut a = vec!["init"];
        a.extend_from_slice(extra);
        self.ok(&a);
    }

    pub fn backup_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["backup", "--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("backup --json prints JSON")
    }

    /// Where a restored source path lands under `target`.
    pub fn restored(target: &Path, src: &Path) -> PathBuf {
        target.join(src.strip_prefix("/").unwrap())
    }

    /// Adds a backup-role key for `host` (format 4) whose password is `password`; the
    /// file that holds the password.
    pub fn add_backup_key(&self, host: &str, password: &str) -> PathBuf {
        let pw = self.path(&format!("backup-password-{host}"));
        std::fs::write(&pw, password).expect("write the backup key's password");
        self.ok(&[
            "key",
            "add",
            "--role",
            "backup",
            "--host",
            host,
            "--label",
            host,
            "--new-password-file",
            pw.to_str().unwrap(),
        ]);
        pw
    }

    pub fn files_in(&self, sub: &str) -> usize {
        walkdir(&self.repo().join(sub)).len()
    }
}

/// Asserts that a command exited 0, showing its stderr otherwise.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file below `dir` with its bytes, sorted by path.
pub fn files_with_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = walkdir(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

pub fn walkdir(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walkdir(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Every file below `dir` with its bytes: equal before and after means nothing was
/// written there.
pub fn stored_bytes(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    walkdir(dir)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).ok()))
        .collect()
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Everything about a tree that a restore must reproduce, keyed by relative raw path.
pub fn snapshot_of(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    visit(root, root, &mut out, &mut inodes);
    out
}

fn visit(
    root: &Path,
    p: &Path,
    out: &mut BTreeMap<Vec<u8>, String>,
    inodes: &mut BTreeMap<(u64, u64), Vec<u8>>,
) {
    let mut names: Vec<_> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let path = p.join(&name);
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let md = std::fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let mut xattrs: Vec<String> = xattr_list(&path);
        xattrs.sort();
        let mut desc = format!(
            "mode={:o} uid={} gid={} mtime={}.{} xattrs={:?}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec(),
            xattrs
        );
        if ft.is_symlink() {
            desc += &format!(" link={:?}", std::fs::read_link(&path).unwrap());
        } else if ft.is_file() {
            let data = std::fs::read(&path).unwrap();
            desc += &format!(" size={} hash={}", md.size(), blake3::hash(&data).to_hex());
            if md.nlink() > 1 {
                let first = inodes
                    .entry((md.dev(), md.ino()))
                    .or_insert_with(|| rel.clone());
                desc += &format!(" linkgroup={:?}", String::from_utf8_lossy(first));
            }
        }
        if ft.is_dir() {
            // Directory mtimes change as entries are created; compare them all the same,
            // since restore sets them last.
            visit(root, &path, out, inodes);
        }
        out.insert(rel, desc);
    }
}

fn xattr_list(p: &Path) -> Vec<String> {
    xattr::list(p)
        .map(|l| {
            l.map(|n| {
                let v = xattr::get(p, &n).ok().flatten().unwrap_or_default();
                format!("{}={}", n.to_string_lossy(), String::from_utf8_lossy(&v))
            })
            .collect()
        })
        .unwrap_or_default()
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    xattr::set(p, name, value)
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

pub fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// Checks a restore of the committed fixture repository (`root` is where its backed-up
/// directory landed) against `tests/fixtures/repo-v1.expected`.
pub fn assert_fixture_restored(root: &Path) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let expected = std::fs::read_to_string(fixtures.join("repo-v1.expected")).unwrap();
    let mut n = 0;
    for line in expected.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let rel = hex::decode(parts[1]).unwrap();
        let p = root.join(OsStr::from_bytes(&rel));
        match parts[0] {
            "file" => assert_eq!(
                blake3::hash(&std::fs::read(&p).unwrap()).to_hex().as_str(),
                parts[2],
                "{}",
                p.display()
            ),
            "link" => assert_eq!(
                std::fs::read_link(&p).unwrap().as_os_str(),
                OsStr::from_bytes(&hex::decode(parts[2]).unwrap())
            ),
            _ => unreachable!(),
        }
        n += 1;
    }
    assert_eq!(n, 6);
    let sparse = std::fs::metadata(root.join("sparse.img")).unwrap();
    assert_eq!(sparse.len(), 10 << 20);
}

/// Checks what a snapshot of `tests/fixtures/repo-v3` restored at `root` (the restore of
/// `/tmp/vault-fixture-v3/<dir>`) against `repo-v3.expected`; returns how many entries.
pub fn assert_fixture_v3_restored(root: &Path, dir: &str) -> usize {
    assert_fixture_dir_restored("repo-v3.expected", root, dir)
}

/// The files below `dir` of a fixture's source, as `expected` (in tests/fixtures) lists
/// them, are under `root`; returns how many.
pub fn assert_fixture_dir_restored(expected: &str, root: &Path, dir: &str) -> usize {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let expected = std::fs::read_to_string(fixtures.join(expected)).unwrap();
    let mut n = 0;
    for line in expected.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let Some(rel) = parts[1].strip_prefix(&format!("{dir}/")) else {
            continue;
        };
        let p = root.join(rel);
        match parts[0] {
            "file" => assert_eq!(
                blake3::hash(&std::fs::read(&p).unwrap()).to_hex().as_str(),
                parts[2],
                "{}",
                p.display()
            ),
            "link" => assert_eq!(std::fs::read_link(&p).unwrap().as_os_str(), parts[2]),
            _ => unreachable!(),
        }
        n += 1;
    }
    assert!(n > 0, "nothing expected below {dir}");
    n
}

/// Copies a directory tree, empty directories and file modes included.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// `n` small files that differ from each other in a few bytes but hardly compress one by
/// one (hex of random bytes): only compressing them side by side finds what they share.
pub fn similar_small_files(dir: &Path, n: usize) -> u64 {
    std::fs::create_dir_all(dir).expect("create dir");
    let shared: String = bytes(5, 1500).iter().map(|b| format!("{b:02x}")).collect();
    let mut total = 0;
    for i in 0..n {
        let content = format!("file {i}\n{shared}\nend {i}\n");
        total += content.len() as u64;
        std::fs::write(dir.join(format!("page{i:04}.txt")), content).expect("write file");
    }
    total
}

/// How many blobs the repository's index places inside bundles, and how many it holds.
pub fn bundled_blobs(repo: &Path, password: &str) -> (usize, usize) {
    use vault::repo::{Backend, Repository, Secret};
    let backend = Backend::open(repo.to_str().expect("UTF-8 path")).expect("open backend");
    let mut r = Repository::open(backend, &Secret::Password(password.into())).expect("open");
    r.cache = None;
    r.load_index().expect("load index");
    let all = r.index().blobs_in_packs(&r.index().pack_ids());
    (all.iter().filter(|(_, e)| e.bundled()).count(), all.len())
}

use vault::format::Id;
use vault::format::pack::{BlobType, seal_blob};
use vault::format::tree::{Node, NodeType, Tree};
use vault::repo::packer::Packer;
use vault::repo::{Backend, Repository, Secret};

/// The test's repository opened through the library, without a cache, index loaded.
pub fn open_repo(env: &Env) -> Repository {
    let backend = Backend::open(env.repo().to_str().expect("utf-8")).expect("backend");
    let mut repo = Repository::open(backend, &Secret::Password(PASSWORD.into())).expect("open");
    repo.cache = None;
    repo.load_index().expect("index");
    repo
}

/// Writes crafted tree (and data) blobs into packs and finally an index, as a key
/// holder's own client could.
pub struct TreeWriter<'a> {
    repo: &'a Repository,
    packer: Packer,
}

impl<'a> TreeWriter<'a> {
    pub fn new(repo: &'a Repository) -> TreeWriter<'a> {
        let packer = Packer::new(&repo.backend, &repo.keys, repo.config.pack_size, false);
        TreeWriter { repo, packer }
    }

    pub fn put(&self, nodes: Vec<Node>) -> Id {
        let mut tree = Tree { nodes };
        let bytes = tree.encode();
        let id = self.repo.keys.blob_id(BlobType::Tree as u8, &bytes);
        let level = self.repo.config.compression_level;
        let blob = seal_blob(&self.repo.keys, BlobType::Tree, id, &bytes, level);
        self.packer.add(blob).expect("add tree");
        id
    }

    /// Stores `data` as one data blob; returns the file node `name` holding it.
    pub fn file(&self, name: &[u8], data: &[u8]) -> Node {
        let id = self.repo.keys.blob_id(BlobType::Data as u8, data);
        let level = self.repo.config.compression_level;
        let blob = seal_blob(&self.repo.keys, BlobType::Data, id, data, level);
        self.packer.add(blob).expect("add data");
        let mut n = Node::new(name.to_vec(), NodeType::File);
        n.mode = 0o644;
        n.size = data.len() as u64;
        n.content = vec![id];
        n
    }

    pub fn finish(self) {
        self.packer.finish().expect("finish packs");
    }
}

/// A directory node named `name` whose listing is tree `sub`.
pub fn crafted_dir(name: &[u8], sub: Id) -> Node {
    let mut n = Node::new(name.to_vec(), NodeType::Dir);
    n.mode = 0o755;
    n.mtime_ns = 1_700_000_000_000_000_000;
    n.subtree = Some(sub);
    n
}

/// Runs vault with `args` on a pseudo-terminal (script(1)), with `env`'s environment
/// plus `extra`; asserts it succeeds and returns what the terminal showed. None where
/// script(1) is missing outside CI.
pub fn on_terminal(env: &Env, args: &[&str], extra: &[(&str, &str)]) -> Option<String> {
    let Some(script) = ["/usr/bin/script", "/bin/script"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        assert!(
            std::env::var("CI").is_err(),
            "script(1) missing: apt-get install bsdutils"
        );
        return None;
    };
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let line = format!("{} {}", env!("CARGO_BIN_EXE_vault"), quoted.join(" "));
    let out = Command::new(script)
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .envs(
            env.cmd()
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .envs(extra.iter().copied())
        .env("TERM", "xterm")
        .output()
        .expect("run script(1)");
    assert_ok(&out);
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a terminal's output drew a progress line with a percentage and an ETA.
pub fn drew_percent_and_eta(shown: &str) -> bool {
    shown.contains('%') && shown.contains("ETA ")
}
