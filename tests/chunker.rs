//! End-to-end: which gear table a repository chunks with. New repositories name the PRF
//! table (`"gear": "prf-v2"`) in their config and their blobs follow it; repositories
//! whose config names none (everything written before it, the v1 fixture among them)
//! keep the XOR-seeded table and keep deduplicating against their existing blobs; a gear
//! this vault does not know is refused before anything is written.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use vault::format::Id;
use vault::format::chunker::{Chunker, GearTables};
use vault::format::pack::BlobType;
use vault::repo::Repository;

/// The data blob ids `data` chunks into under the repository's own chunker parameters,
/// with the PRF table and with the XOR-seeded table of its master key.
fn ids_by_table(repo: &Repository, data: &[u8]) -> (Vec<Id>, Vec<Id>) {
    let master = repo.master_key().expect("a full key");
    let p = &repo.config.chunker;
    let ids = |tables: GearTables| {
        let c = Chunker::with_tables(p, tables);
        let mut start = 0;
        c.boundaries(data)
            .into_iter()
            .map(|end| {
                let id = repo.keys.blob_id(BlobType::Data as u8, &data[start..end]);
                start = end;
                id
            })
            .collect::<Vec<Id>>()
    };
    (
        ids(GearTables::prf(&master.gear_key())),
        ids(GearTables::xor_seed(master.chunker_seed())),
    )
}

fn data_blobs(repo: &Repository) -> HashSet<Id> {
    let index = repo.index();
    index
        .blobs_in_packs(&index.pack_ids())
        .into_iter()
        .filter(|(_, e)| e.blob_type == BlobType::Data)
        .map(|(_pack, e)| e.id)
        .collect()
}

/// Reseals the repository's config without `chunker.gear`, as vault wrote it before the
/// PRF table existed.
fn drop_gear(env: &Env) {
    let repo = open_repo(env);
    let mut cfg = repo.config.clone();
    cfg.chunker.gear = None;
    fs::write(env.repo().join("config"), cfg.seal(&repo.keys)).expect("write config");
}

/// A megabyte of pseudo-random data backed up with 8 KiB chunks: about a hundred chunks,
/// every one of them where the PRF table puts it and none where the XOR table would.
#[test]
fn a_new_repository_chunks_with_the_prf_table() {
    let env = Env::new();
    env.init(&["--chunk-size", "8K"]);
    let data = bytes(11, 1 << 20);
    let src = env.source_with_file(&data);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);

    let repo = open_repo(&env);
    assert_eq!(repo.config.chunker.gear.as_deref(), Some("prf-v2"));
    let (prf, xor) = ids_by_table(&repo, &data);
    assert!(prf.len() > 50, "{} chunks", prf.len());
    let stored = data_blobs(&repo);
    assert_eq!(stored, prf.iter().copied().collect::<HashSet<_>>());
    let xor_stored = xor.iter().filter(|id| stored.contains(id)).count();
    assert_eq!(xor_stored, 0, "{xor_stored} chunks cut by the XOR table");
}

/// What vault wrote before the PRF table (a config without `gear`) keeps chunking with
/// the XOR-seeded table of the master key.
#[test]
fn a_repository_without_gear_keeps_the_xor_table() {
    let env = Env::new();
    env.init(&["--chunk-size", "8K"]);
    drop_gear(&env);
    let data = bytes(12, 1 << 20);
    let src = env.source_with_file(&data);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);

    let repo = open_repo(&env);
    assert_eq!(repo.config.chunker.gear, None);
    let (prf, xor) = ids_by_table(&repo, &data);
    let stored = data_blobs(&repo);
    assert_eq!(stored, xor.iter().copied().collect::<HashSet<_>>());
    assert_eq!(prf.iter().filter(|id| stored.contains(id)).count(), 0);
}

fn fixture_cmd(env: &Env, fixtures: &Path) -> Command {
    let mut c = env.cmd();
    c.env_remove("VAULT_PASSWORD")
        .env("VAULT_PASSWORD_FILE", fixtures.join("repo-v1.password"));
    c
}

/// The v1 fixture restores, and backing its restored files up again into (a copy of) it
/// adds no data blob: the old table still cuts them where it did when they were written.
#[test]
fn the_v1_fixture_keeps_its_table_and_deduplicates() {
    let env = Env::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    copy_tree(&fixtures.join("repo-v1"), &env.repo());
    let password = fs::read_to_string(fixtures.join("repo-v1.password")).expect("password");
    let open = || {
        let backend = vault::repo::Backend::open(env.repo().to_str().unwrap()).unwrap();
        let secret = vault::repo::Secret::Password(password.trim_end_matches('\n').into());
        let mut r = Repository::open(backend, &secret).expect("open the fixture");
        r.cache = None;
        r.load_index().expect("index");
        r
    };
    let before = open();
    assert_eq!(before.config.chunker.gear, None);
    let blobs_before = data_blobs(&before);

    let target = env.path("r");
    let out = fixture_cmd(&env, &fixtures)
        .args(["restore", "latest", "--verify", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert_ok(&out);
    let restored = target.join("tmp/vault-fixture-v1");
    assert_fixture_restored(&restored);
    // Its files are cut where the XOR table cuts them, and the PRF table would cut them
    // elsewhere (sparse.img aside: its stream is its data extents, not the whole file).
    let (mut xor_ids, mut prf_ids) = (HashSet::new(), HashSet::new());
    for f in walkdir(&restored).into_iter().filter(|p| p.is_file()) {
        if !f.ends_with("sparse.img") {
            let (prf, xor) = ids_by_table(&before, &fs::read(&f).unwrap());
            prf_ids.extend(prf);
            xor_ids.extend(xor);
        }
    }
    assert!(xor_ids.is_subset(&blobs_before));
    assert!(xor_ids.len() > 10, "{} chunks", xor_ids.len());
    let prf_only = prf_ids.difference(&blobs_before).count();
    assert!(
        prf_only >= 5,
        "{prf_only} chunks the PRF table cuts differently"
    );
    drop(before);

    let out = fixture_cmd(&env, &fixtures)
        .args(["backup", "-q"])
        .arg(&restored)
        .output()
        .unwrap();
    assert_ok(&out);
    let after = open();
    assert_eq!(data_blobs(&after), blobs_before, "new data blobs");
}

/// A key holder (or a newer vault) wrote a gear this vault does not know: every command
/// that opens the repository refuses it in one line, exit 1, and writes nothing; reading
/// it as the old table would silently stop deduplication.
#[test]
fn an_unknown_gear_is_refused_and_nothing_is_written() {
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file(b"some content");
    let repo = open_repo(&env);
    for gear in ["prf-v9", "PRF-V2", "", "prf-v2\nforged line"] {
        let mut cfg = repo.config.clone();
        cfg.chunker.gear = Some(gear.into());
        fs::write(env.repo().join("config"), cfg.seal(&repo.keys)).expect("write config");
        let before = common::stored_bytes(&env.repo());
        for args in [
            vec!["backup", src.to_str().unwrap()],
            vec!["snapshots"],
            vec!["check"],
        ] {
            let out = env.run(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                err.contains(&format!("chunker gear {gear:?} is unknown"))
                    && err.contains("upgrade vault"),
                "{args:?}: {err}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
        assert!(
            common::stored_bytes(&env.repo()) == before,
            "{gear:?}: the repository changed"
        );
    }
}
