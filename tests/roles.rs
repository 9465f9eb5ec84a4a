//! Roles (format 4, spec §20): a backup-role key adds snapshots as its host and reads
//! its own trees to find its parent, but cannot read any file contents, another
//! host's snapshots or trees, forget, prune or delete on a mirror; and what it forges
//! of a full key's records is not believed.

mod common;

use std::fs;
use std::path::PathBuf;

use common::{Env, PASSWORD, bytes, snapshot_of};
use vault::format::FormatError;
use vault::format::Id;
use vault::format::index::{IndexFile, PackBlobs};
use vault::format::mirror::ForgetRecord;
use vault::format::object::{self, Kind};
use vault::format::pack::{BlobType, open_blob};
use vault::format::prune::MarkRecord;
use vault::repo::{Backend, FileKind, Repository, Secret};

const BACKUP_PASSWORD: &str = "the laptop's backup-only password";
/// The exit code of what a key's role does not allow (README "Exit codes").
const NOT_PERMITTED: i32 = 14;

/// A format 4 repository: the full key backs up `server`'s files as host "server", a
/// backup-role key for host "laptop" backs up the laptop's files twice.
struct Setup {
    env: Env,
    server_src: PathBuf,
    laptop_src: PathBuf,
}

fn setup() -> Setup {
    let env = Env::new();
    env.init(&["--format-version", "4", "--pack-size", "256K"]);
    let server_src = env.path("server");
    let laptop_src = env.path("laptop");
    for (dir, seed) in [(&server_src, 1), (&laptop_src, 2)] {
        fs::create_dir_all(dir.join("docs")).unwrap();
        fs::write(dir.join("big"), bytes(seed, 700_000)).unwrap();
        fs::write(dir.join("docs/secret.txt"), format!("secret of {seed}")).unwrap();
    }
    // Shared content: deduplicated across hosts, still unreadable to the laptop's key.
    fs::write(server_src.join("shared"), bytes(9, 300_000)).unwrap();
    fs::write(laptop_src.join("shared"), bytes(9, 300_000)).unwrap();
    env.ok(&[
        "backup",
        "--host",
        "server",
        server_src.to_str().unwrap(),
        "-q",
    ]);
    env.add_backup_key("laptop", BACKUP_PASSWORD);
    Setup {
        env,
        server_src,
        laptop_src,
    }
}

impl Setup {
    /// Runs vault with the backup-role key's password.
    fn laptop(&self, args: &[&str], code: i32) -> String {
        let out = self
            .env
            .cmd()
            .env("VAULT_PASSWORD", BACKUP_PASSWORD)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "vault {args:?} with the backup key\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if code == NOT_PERMITTED {
            assert!(
                stderr.contains("backup-role key") && stderr.lines().count() == 1,
                "one line naming the role: {stderr}"
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn laptop_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.laptop(&a, 0)).unwrap()
    }

    fn laptop_backup(&self) -> serde_json::Value {
        self.laptop_json(&["backup", self.laptop_src.to_str().unwrap()])
    }

    fn open(&self, password: &str) -> Repository {
        let backend = Backend::open(self.env.repo().to_str().unwrap()).unwrap();
        let mut repo = Repository::open(backend, &Secret::Password(password.into())).unwrap();
        repo.cache = None;
        repo.load_index().unwrap();
        repo
    }

    /// Every stored file of the repository, with its bytes.
    fn stored(&self) -> Vec<(PathBuf, Vec<u8>)> {
        common::files_with_bytes(&self.env.repo())
    }
}

#[test]
fn a_backup_key_adds_snapshots_and_finds_its_parent() {
    let s = setup();
    let first = s.laptop_backup();
    assert_eq!(first["summary"]["files_new"], 3);
    // The shared file's blobs were the server's: deduplicated, not stored again.
    assert!(first["summary"]["bytes_added"].as_u64().unwrap() < 800_000);
    // Its own trees read back: the second backup reads no file again.
    let second = s.laptop_backup();
    assert_eq!(second["summary"]["files_unchanged"], 3);
    assert_eq!(second["summary"]["bytes_read"], 0);
    assert_eq!(second["parent"], first["snapshot"]);
    // It lists its own host's snapshots only; a full key lists all three.
    let own = s.laptop_json(&["snapshots"]);
    let hosts: Vec<&str> = own
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["laptop", "laptop"]);
    assert_eq!(s.env.json(&["snapshots"], 0).as_array().unwrap().len(), 3);
    // A full key restores what the backup key wrote, byte for byte.
    let target = s.env.path("restored");
    let id = second["snapshot"].as_str().unwrap();
    s.env
        .ok(&["restore", id, "--target", target.to_str().unwrap()]);
    assert_eq!(
        snapshot_of(&Env::restored(&target, &s.laptop_src)),
        snapshot_of(&s.laptop_src)
    );
    s.env.ok(&["check", "--read-data"]);
    // It may not back up as another host.
    s.laptop(
        &["backup", "--host", "server", s.laptop_src.to_str().unwrap()],
        NOT_PERMITTED,
    );
}

#[test]
fn a_backup_key_can_neither_read_contents_nor_remove_anything() {
    let s = setup();
    s.laptop_backup();
    let before = s.stored();
    let keys = s.env.json(&["key", "list"], 0);
    let initial = keys[0]["id"].as_str().unwrap().to_string();
    let target = s.env.path("t");
    let t = target.to_str().unwrap();
    let mirror = s.env.path("m");
    let m = mirror.to_str().unwrap();
    for args in [
        vec!["restore", "latest", "--target", t],
        vec!["dump", "latest", "/"],
        vec!["check"],
        vec!["check", "--read-data"],
        vec!["verify"],
        vec!["forget", "--keep-last", "0"],
        vec!["prune"],
        vec!["repair", "index"],
        vec!["upgrade"],
        vec!["export", t],
        vec!["mirror", "add", "m", m, "--no-sync"],
        vec!["key", "export", "--raw"],
        vec!["key", "remove", &initial],
        vec!["maintain"],
    ] {
        s.laptop(&args, NOT_PERMITTED);
    }
    assert!(!target.exists() && !mirror.exists());
    // Nothing written but released locks: no record, no key, no snapshot.
    let after: Vec<_> = s
        .stored()
        .into_iter()
        .filter(|(p, _)| !p.starts_with(s.env.repo().join("locks")))
        .collect();
    let before: Vec<_> = before
        .into_iter()
        .filter(|(p, _)| !p.starts_with(s.env.repo().join("locks")))
        .collect();
    assert_eq!(after, before);
}

/// The role table of §20, blob by blob: what the laptop's key opens of what is stored.
#[test]
fn what_each_role_decrypts() {
    let s = setup();
    let laptop_snapshot = Id::from_hex(s.laptop_backup()["snapshot"].as_str().unwrap()).unwrap();
    let full = s.open(PASSWORD);
    let laptop = s.open(BACKUP_PASSWORD);
    let laptop_root = full.load_snapshot(&laptop_snapshot).unwrap().tree;
    let own_trees = tree_ids(&full, laptop_root);
    let (mut data, mut own, mut others) = (0, 0, 0);
    let index = laptop.index();
    for (pack, e) in index.blobs_in_packs(&index.pack_ids()) {
        let bytes = fs::read(s.env.repo().join(FileKind::Data.path(&pack))).unwrap();
        {
            let unit = &bytes[e.offset as usize..(e.offset + e.length) as usize];
            // A full key opens everything.
            open_blob(&full.keys, &e, unit).unwrap();
            let got = open_blob(&laptop.keys, &e, unit);
            match e.blob_type {
                BlobType::Data => {
                    data += 1;
                    assert_eq!(got, Err(FormatError::NotPermitted("file contents")));
                }
                BlobType::Tree if own_trees.contains(&e.id) => {
                    own += 1;
                    got.unwrap();
                }
                BlobType::Tree => {
                    others += 1;
                    assert!(matches!(got, Err(FormatError::NotPermitted(_))), "{got:?}");
                }
            }
        }
    }
    assert!(data > 0 && own > 0 && others > 0, "{data} {own} {others}");
    // Snapshots: its own, not the server's.
    let all = full.snapshots().unwrap();
    assert_eq!(all.len(), 2);
    let server = all.iter().find(|(id, _)| *id != laptop_snapshot).unwrap().0;
    let err = laptop.load_snapshot(&server).unwrap_err();
    assert!(vault::repo::repository::not_permitted(&err), "{err:#}");
    laptop.load_snapshot(&laptop_snapshot).unwrap();
    // The index, locks and the config: readable, to deduplicate and take part.
    assert!(!laptop.index().is_empty());
}

fn tree_ids(repo: &Repository, root: Id) -> std::collections::HashSet<Id> {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        if seen.insert(id) {
            let tree = repo.load_tree(&id).unwrap();
            todo.extend(tree.nodes.iter().filter_map(|n| n.subtree));
        }
    }
    seen
}

/// An intruder with the backup key writes, with the keys it holds, what would make
/// every snapshot vanish: a forget record naming them all, a mark of every pack, an
/// index file superseding all others, and one with a made-up admin tag. A full key
/// believes none of it: every snapshot stays, prune deletes nothing a snapshot uses.
#[test]
fn records_forged_with_a_backup_key_are_not_believed() {
    let s = setup();
    s.laptop_backup();
    let laptop = s.open(BACKUP_PASSWORD);
    let snapshots: Vec<Id> = s
        .env
        .json(&["snapshots"], 0)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Id::from_hex(s["id"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(snapshots.len(), 2);
    let write = |kind: FileKind, bytes: Vec<u8>| {
        let id = Id::of_stored(&bytes);
        laptop.backend.write(&kind.path(&id), bytes).unwrap();
    };
    let forget = ForgetRecord {
        version: 1,
        time: "2020-01-01T00:00:00Z".into(),
        snapshots: snapshots.clone(),
    };
    write(FileKind::Forget, forget.seal(&laptop.keys));
    // The same, shaped as an admin record with a made-up tag.
    let mut tagged = object::seal(
        &laptop.keys,
        Kind::Forget,
        &serde_json::to_vec(&forget).unwrap(),
    );
    tagged[0] = object::OBJECT_ADMIN;
    tagged.extend_from_slice(&[7u8; 32]);
    write(FileKind::Forget, tagged);
    let packs: Vec<Id> = laptop.index().pack_ids().into_iter().collect();
    let mark = MarkRecord {
        version: 1,
        time: "2020-01-01T00:00:00Z".into(),
        packs: packs.clone(),
    };
    write(FileKind::Mark, mark.seal(&laptop.keys));
    let superseding = IndexFile {
        supersedes: laptop.backend.list(FileKind::Index).unwrap(),
        packs: vec![PackBlobs {
            pack: packs[0],
            blobs: Vec::new(),
        }],
    };
    write(FileKind::Index, superseding.seal(&laptop.keys));
    // The library refuses to write these for it at all.
    assert!(laptop.save_forget_record(&snapshots).is_err());

    assert_eq!(s.env.json(&["snapshots"], 0).as_array().unwrap().len(), 2);
    s.env.ok(&["prune", "--grace", "0s"]);
    s.env.ok(&["prune", "--grace", "0s"]);
    assert_eq!(s.env.json(&["snapshots"], 0).as_array().unwrap().len(), 2);
    // Check may name the short listing (by which listing of the pack it meets first),
    // never data missing; repair drops the listing.
    let out = s.env.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("missing"), "{err}");
    if out.status.code() != Some(0) {
        assert!(err.contains("the index says"), "{err}");
    }
    s.env.ok(&["repair", "index"]);
    s.env.ok(&["check", "--read-data"]);
    let target = s.env.path("r");
    s.env.ok(&[
        "restore",
        "latest",
        "--host",
        "server",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        snapshot_of(&Env::restored(&target, &s.server_src)),
        snapshot_of(&s.server_src)
    );
}

/// Sync with a backup-role key copies new snapshots to a mirror but carries out no
/// deletion there, even on an unprotected mirror: the records that would justify one
/// are a full key's to vouch for. A full key's sync then does.
#[test]
fn a_backup_key_syncs_without_deleting() {
    let s = setup();
    let mirror = s.env.path("mirror");
    s.env.ok(&["mirror", "add", "m", mirror.to_str().unwrap()]);
    let old = s.laptop_backup()["snapshot"].as_str().unwrap().to_string();
    fs::write(s.laptop_src.join("docs/new.txt"), "new").unwrap();
    s.laptop_backup();
    s.laptop(&["sync"], 0);
    let on_mirror = |id: &str| mirror.join("snapshots").join(id).exists();
    assert!(on_mirror(&old));
    s.env.ok(&["forget", &old]);
    s.laptop(&["sync"], 0);
    assert!(on_mirror(&old), "a backup-role sync deleted on the mirror");
    s.env.ok(&["sync"]);
    assert!(!on_mirror(&old));
}

#[test]
fn a_backup_role_needs_format_4() {
    let env = Env::new();
    env.init(&[]);
    let pw = env.path("pw");
    fs::write(&pw, BACKUP_PASSWORD).unwrap();
    let out = env.run(&[
        "key",
        "add",
        "--role",
        "backup",
        "--new-password-file",
        pw.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("format 4"));
    assert_eq!(env.files_in("keys"), 1);
}

/// A backup-role key file holds no master key: nothing in it derives one.
#[test]
fn a_backup_key_file_holds_no_master_key() {
    let s = setup();
    let full = s.open(PASSWORD);
    let laptop = s.open(BACKUP_PASSWORD);
    assert!(laptop.master_key().is_err());
    assert!(laptop.raw_key_export().is_err());
    let master = full.master_key().unwrap();
    let kf_id = laptop.key_id.unwrap();
    let bytes = fs::read(s.env.repo().join(FileKind::Key.path(&kf_id))).unwrap();
    let payload = vault::format::keyfile::KeyFile::parse(&bytes)
        .unwrap()
        .open(BACKUP_PASSWORD.as_bytes())
        .unwrap();
    assert!(payload.master_key.is_empty());
    let text = serde_json::to_string(&payload).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    assert!(!text.contains(&b64.encode(master.as_bytes())));
    assert!(!text.contains(&hex(master.as_bytes())));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
