//! The independent Python reader in `repo-format/reference/`, written from the format
//! specification alone, restores what vault wrote: the committed v1 fixture and a fresh
//! repository. If it does, the specification is complete enough to recover data without
//! vault.
//!
//! Needs `python3` with `cryptography` (>= 42), `blake3` and `zstandard`; without them the
//! tests are skipped with a message, except under CI=true, where they fail.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn reader_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("repo-format/reference/vault_reader.py")
}

/// Whether python3 and the reader's packages are available; panics under CI=true if not.
fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import cryptography, blake3, zstandard\n\
             from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("python3 with cryptography>=42, blake3 and zstandard is required under CI");
        }
        eprintln!(
            "skipping: python3 with cryptography>=42, blake3, zstandard not available \
             (pip install cryptography blake3 zstandard)"
        );
    }
    ok
}

/// Runs the reader; asserts success and returns stdout.
fn reader(repo: &Path, password_file: &Path, args: &[&OsStr]) -> String {
    reader_at(&reader_script(), repo, password_file, args)
}

fn reader_at(script: &Path, repo: &Path, password_file: &Path, args: &[&OsStr]) -> String {
    let out = Command::new("python3")
        .arg(script)
        .arg("--repo")
        .arg(repo)
        .arg("--password-file")
        .arg(password_file)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "vault_reader.py {:?} failed\nstdout: {}\nstderr: {}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn reference_reader_restores_fixture_v1() {
    if !python_ready() {
        return;
    }
    let env = Env::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let repo = fixtures.join("repo-v1"); // the reader never writes to the repository
    let password = fixtures.join("repo-v1.password");

    let listing = reader(&repo, &password, &[OsStr::new("snapshots")]);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 1, "{listing}");
    let fields: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(fields[0].len(), 64, "{listing}");
    assert_eq!(fields[2], "fixture", "{listing}");
    assert_eq!(fields[3], "/tmp/vault-fixture-v1", "{listing}");

    let target = env.path("r");
    reader(
        &repo,
        &password,
        &[
            OsStr::new("restore"),
            OsStr::new("latest"),
            target.as_os_str(),
        ],
    );
    common::assert_fixture_restored(&target.join("tmp/vault-fixture-v1"));
}

#[test]
fn reference_reader_restores_fixture_v3() {
    // Format 3 (a format record, marks, a revival, a deletion record naming a deleted
    // pack): the reader written from the spec restores both snapshots.
    restores_fixture("repo-v3");
}

#[test]
fn reference_reader_restores_fixture_v4() {
    // Format 4 (§20): contents sealed to the public key, trees and snapshots under host
    // keys (one host's written by a backup-role key), a tagged forget record.
    if !python_ready() {
        return;
    }
    restores_fixture("repo-v4");
    // A backup-role key's password opens no snapshot for it.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = Command::new("python3")
        .arg(reader_script())
        .arg("--repo")
        .arg(fixtures.join("repo-v4"))
        .arg("--password-file")
        .arg(fixtures.join("repo-v4.backup-password"))
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backup-role key"));
}

#[test]
fn reference_reader_restores_fixture_v5() {
    // Format 5: a format-3 repository after `vault key rotate`, sealed as format 4 under
    // a new master key, blob ids from the content key.
    if !python_ready() {
        return;
    }
    restores_fixture("repo-v5");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = Command::new("python3")
        .arg(reader_script())
        .arg("--repo")
        .arg(fixtures.join("repo-v5"))
        .arg("--password-file")
        .arg(fixtures.join("repo-v5.old-password"))
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the password before the rotation"
    );
}

/// The reader restores every snapshot of fixture `name` as `name.expected` lists.
fn restores_fixture(name: &str) {
    if !python_ready() {
        return;
    }
    let env = Env::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let repo = fixtures.join(name);
    let password = fixtures.join(format!("{name}.password"));
    let listing = reader(&repo, &password, &[OsStr::new("snapshots")]);
    let ids: Vec<(&str, &str)> = listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0], f[3])
        })
        .collect();
    assert_eq!(ids.len(), 2, "{listing}");
    for (id, path) in ids {
        let dir = path.rsplit('/').next().unwrap();
        let target = env.path(&format!("r-{dir}"));
        reader(
            &repo,
            &password,
            &[OsStr::new("restore"), OsStr::new(id), target.as_os_str()],
        );
        common::assert_fixture_dir_restored(
            &format!("{name}.expected"),
            &target.join(path.trim_start_matches('/')),
            dir,
        );
    }
}

fn build_tree(src: &Path) {
    fs::create_dir_all(src.join("a/b/c")).unwrap();
    fs::create_dir_all(src.join("empty-dir")).unwrap();
    fs::write(src.join("a/random.bin"), bytes(7, 1 << 20)).unwrap();
    fs::write(src.join("a/b/c/text.txt"), b"some text\n".repeat(50_000)).unwrap();
    fs::write(src.join("empty-file"), b"").unwrap();
    fs::write(src.join(os(b"caf\xe9.txt")), b"latin1 name").unwrap();
    fs::create_dir(src.join(os(b"dir-\xff"))).unwrap();
    fs::write(src.join(os(b"dir-\xff")).join(os(b"f\xfe")), b"inner").unwrap();
    symlink("a/random.bin", src.join("link-rel")).unwrap();
    symlink("/nonexistent/target", src.join("link-dangling")).unwrap();
    fs::write(src.join("a/hard1"), b"hard link content\n").unwrap();
    fs::hard_link(src.join("a/hard1"), src.join("a/b/hard2")).unwrap();
    // 4 MiB sparse file: data at the start and at the end, a hole in between.
    let f = fs::File::create(src.join("sparse.img")).unwrap();
    f.set_len(4 << 20).unwrap();
    f.write_all_at(&bytes(8, 10_000), 0).unwrap();
    f.write_all_at(b"the end", (4 << 20) - 7).unwrap();
    drop(f);
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    fs::set_permissions(src.join("a/random.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(src.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    set_xattr(&src.join("a/hard1"), "user.origin", b"test\xff");
}

#[test]
fn reference_reader_restores_what_vault_restores() {
    if !python_ready() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    env.init(&[]);
    let b = env.backup_json(&[src.to_str().unwrap()]);
    assert_eq!(b["summary"]["errors"], 0);
    let password = env.path("password");
    fs::write(&password, format!("{PASSWORD}\n")).unwrap();

    // The reader lists the snapshot vault lists.
    let snaps = env.json(&["snapshots"], 0);
    let id = snaps[0]["id"].as_str().unwrap().to_string();
    let listing = reader(&env.repo(), &password, &[OsStr::new("snapshots")]);
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(listing.starts_with(&format!("{id} ")), "{listing}");
    assert!(
        listing.trim_end().ends_with(&format!(" {}", src.display())),
        "{listing}"
    );

    // A key with several scrypt lanes (p > 1, what vault writes now) opens there too.
    let lanes = env.path("lanes-password");
    fs::write(&lanes, "another password").unwrap();
    let cost = vault::format::keyfile::KdfCost { log_n: 15, p: 4 };
    open_repo(&env)
        .add_key(b"another password", "lanes", cost)
        .unwrap();
    let listing = reader(&env.repo(), &lanes, &[OsStr::new("snapshots")]);
    assert!(listing.starts_with(&format!("{id} ")), "{listing}");

    let by_vault = env.path("by-vault");
    env.ok(&["restore", "latest", "--target", by_vault.to_str().unwrap()]);
    let by_reader = env.path("by-reader");
    reader(
        &env.repo(),
        &password,
        &[
            OsStr::new("restore"),
            OsStr::new(&id[..12]),
            by_reader.as_os_str(),
        ],
    );

    // Same tree, bytes and metadata (modes, mtimes, xattrs, link targets, hard-link groups)
    // as vault's own restore, ancestors of the backup path included; and as the source.
    assert_eq!(snapshot_of(&by_vault), snapshot_of(&by_reader));
    let restored = Env::restored(&by_reader, &src);
    assert_eq!(snapshot_of(&src), snapshot_of(&restored));

    // Spelled out, for the record.
    assert_eq!(
        fs::read(restored.join("a/random.bin")).unwrap(),
        bytes(7, 1 << 20)
    );
    assert_eq!(fs::metadata(restored.join("empty-file")).unwrap().len(), 0);
    assert_eq!(
        fs::read(restored.join(os(b"caf\xe9.txt"))).unwrap(),
        b"latin1 name"
    );
    assert_eq!(
        fs::read_link(restored.join("link-rel")).unwrap(),
        Path::new("a/random.bin")
    );
    let h1 = fs::metadata(restored.join("a/hard1")).unwrap();
    let h2 = fs::metadata(restored.join("a/b/hard2")).unwrap();
    assert_eq!(h1.ino(), h2.ino(), "hard links restored as hard links");
    let sparse = fs::read(restored.join("sparse.img")).unwrap();
    assert_eq!(sparse.len(), 4 << 20);
    assert_eq!(&sparse[..10_000], &bytes(8, 10_000)[..]);
    assert!(sparse[10_000..(4 << 20) - 7].iter().all(|&b| b == 0));
    assert_eq!(&sparse[(4 << 20) - 7..], b"the end");
    assert!(
        fs::symlink_metadata(restored.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn an_export_restores_with_its_own_copy_of_the_reader() {
    if !python_ready() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    build_tree(&src);
    env.init(&[]);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let archive = env.path("archive");
    env.ok(&["export", archive.to_str().unwrap()]);
    let password = env.path("password");
    fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let target = env.path("by-reader");
    reader_at(
        &archive.join("repo-format/reference/vault_reader.py"),
        &archive,
        &password,
        &[
            OsStr::new("restore"),
            OsStr::new("latest"),
            target.as_os_str(),
        ],
    );
    assert_eq!(
        snapshot_of(&src),
        snapshot_of(&Env::restored(&target, &src))
    );
}

/// The reader refuses a snapshot or index file whose bytes open but do not hash to its
/// name (spec §10 "Name mismatch"), as vault does: another object's bytes under the
/// name would otherwise be read as that object.
#[test]
fn reference_reader_refuses_misnamed_snapshots_and_index_files() {
    if !python_ready() {
        return;
    }
    let env = Env::new();
    let src = env.source_with_file(bytes(1, 20_000));
    env.init(&[]);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    fs::write(src.join("f"), bytes(2, 30_000)).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let password = env.path("password");
    fs::write(&password, PASSWORD).unwrap();
    let ids = |dir: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(env.repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let refuses = |what: &str, name: &Path| {
        let target = env.path("by-reader");
        let out = Command::new("python3")
            .arg(reader_script())
            .arg("--repo")
            .arg(env.repo())
            .arg("--password-file")
            .arg(&password)
            .args([
                OsStr::new("restore"),
                OsStr::new("latest"),
                target.as_os_str(),
            ])
            .output()
            .expect("run python3");
        let err = String::from_utf8_lossy(&out.stderr);
        let short = &name.file_name().unwrap().to_str().unwrap()[..8];
        assert_eq!(out.status.code(), Some(1), "the reader must refuse: {err}");
        assert!(
            err.contains(&format!(
                "{what} {short}: stored bytes do not match its name"
            )),
            "the reader must name {what} {short}: {err}"
        );
        assert!(!target.exists(), "nothing restored");
    };
    for dir in ["snapshots", "index"] {
        let files = ids(dir);
        assert!(files.len() >= 2, "{dir}: {files:?}");
        let (first, second) = (&files[0], &files[1]);
        let kept = fs::read(second).unwrap();
        fs::copy(first, second).unwrap();
        refuses(dir.trim_end_matches('s'), second);
        fs::write(second, kept).unwrap();
    }
    // Put back, both read again.
    reader(&env.repo(), &password, &[OsStr::new("snapshots")]);
}

/// The chunker the reader implements from §16 alone agrees with vault's on the stream of
/// the spec's test vectors (Appendix A), for both gear tables.
#[test]
fn reference_chunker_agrees_on_the_spec_vectors() {
    use vault::format::chunker::{Chunker, GearTables};
    use vault::format::config::ChunkerParams;
    use vault::format::crypto::MasterKey;
    if !python_ready() {
        return;
    }
    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import blake3, vault_reader as v
master = bytes(range(32))
data = blake3.blake3(b"vault chunker test vector stream").digest(length=1 << 20)
params = dict(min_size=2048, avg_size=8192, max_size=65536, normalization=1)
out = {"gear_key": v.gear_key(master).hex()}
for name, gear in (("xor", None), ("prf", "prf-v2")):
    g, g_ls = v.gear_tables(master, gear)
    out[name] = {"g": [g[0], g[1], g[255]], "g_ls": g_ls[255],
                 "ends": v.chunk_boundaries(data, dict(params, gear=gear), master)}
print(json.dumps(out))
"#;
    let dir = reader_script().parent().unwrap().to_path_buf();
    // -B: no __pycache__ written into the source tree.
    let out = Command::new("python3")
        .args(["-B", "-c", script])
        .arg(&dir)
        .output()
        .expect("run python3");
    assert_ok(&out);
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");

    let master = MasterKey::from_bytes(std::array::from_fn(|i| i as u8));
    let key = master.gear_key();
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(py["gear_key"], hex.as_str());
    let mut data = vec![0u8; 1 << 20];
    blake3::Hasher::new()
        .update(b"vault chunker test vector stream")
        .finalize_xof()
        .fill(&mut data);
    for (name, gear, tables) in [
        ("xor", None, GearTables::xor_seed(master.chunker_seed())),
        ("prf", Some("prf-v2"), GearTables::prf(&key)),
    ] {
        let g: Vec<u64> = [0, 1, 255].map(|i| tables.entry(i)).to_vec();
        assert_eq!(py[name]["g"], serde_json::json!(g), "{name}");
        assert_eq!(py[name]["g_ls"], tables.entry(255) << 1, "{name}");
        let p = ChunkerParams {
            algorithm: "fastcdc-v2020".into(),
            min_size: 2048,
            avg_size: 8192,
            max_size: 65536,
            normalization: 1,
            gear: gear.map(String::from),
        };
        let ends = Chunker::new(&p, &master.chunker_secret())
            .unwrap()
            .boundaries(&data);
        assert!(ends.len() > 100, "{name}: {} chunks", ends.len());
        assert_eq!(py[name]["ends"], serde_json::json!(ends), "{name}");
    }
}

/// The blob ids of the reader's chunks of a file (`vault_reader.py chunks`).
fn reader_chunk_ids(repo: &Path, password_file: &Path, file: &Path) -> Vec<vault::format::Id> {
    reader(
        repo,
        password_file,
        &[OsStr::new("chunks"), file.as_os_str()],
    )
    .lines()
    .map(|l| {
        let hex = l.split(' ').next().expect("an id");
        vault::format::Id::from_hex(hex).expect("64 hex digits")
    })
    .collect()
}

fn data_blob_ids(repo: &vault::repo::Repository) -> std::collections::HashSet<vault::format::Id> {
    let index = repo.index();
    index
        .blobs_in_packs(&index.pack_ids())
        .into_iter()
        .filter(|(_, e)| e.blob_type == vault::format::pack::BlobType::Data)
        .map(|(_pack, e)| e.id)
        .collect()
}

/// The reader, chunking with what the repository's config names (the PRF table in a new
/// repository, the XOR-seeded one in the v1 fixture), names exactly the blobs vault
/// stored for the same file.
#[test]
fn reference_chunker_names_the_blobs_vault_stored() {
    if !python_ready() {
        return;
    }
    // A new repository: the PRF table.
    let env = Env::new();
    env.init(&["--chunk-size", "8K"]);
    let src = env.source_with_file(bytes(21, 1 << 20));
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let password = env.path("password");
    fs::write(&password, PASSWORD).unwrap();
    let ids = reader_chunk_ids(&env.repo(), &password, &src.join("f"));
    assert!(ids.len() > 50, "{} chunks", ids.len());
    let repo = open_repo(&env);
    assert_eq!(repo.config.chunker.gear.as_deref(), Some("prf-v2"));
    assert_eq!(data_blob_ids(&repo), ids.into_iter().collect());

    // The v1 fixture: its config names no gear, the XOR-seeded table.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let fixture = env.path("fixture"); // a copy: opening it through the library may write
    copy_tree(&fixtures.join("repo-v1"), &fixture);
    let fixture_password = fixtures.join("repo-v1.password");
    let target = env.path("r");
    reader(
        &fixture,
        &fixture_password,
        &[
            OsStr::new("restore"),
            OsStr::new("latest"),
            target.as_os_str(),
        ],
    );
    let pw = fs::read_to_string(&fixture_password).unwrap();
    let backend = vault::repo::Backend::open(fixture.to_str().unwrap()).unwrap();
    let secret = vault::repo::Secret::Password(pw.trim_end_matches('\n').into());
    let mut repo = vault::repo::Repository::open(backend, &secret).expect("open the fixture");
    repo.cache = None;
    repo.load_index().expect("index");
    let stored = data_blob_ids(&repo);
    let mut chunks = 0;
    for name in ["docs/random.bin", "docs/lorem.txt"] {
        let file = target.join("tmp/vault-fixture-v1").join(name);
        let ids = reader_chunk_ids(&fixture, &fixture_password, &file);
        assert!(ids.iter().all(|id| stored.contains(id)), "{name}");
        chunks += ids.len();
    }
    assert!(chunks > 10, "{chunks} chunks");
}
