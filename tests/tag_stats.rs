//! `vault tag` and `vault stats` through the binary. Tag writes a new snapshot and
//! forgets the old one; killed after any of its writes it leaves one snapshot in view,
//! and running it again finishes. Stats' restore size is compared with `du` of real
//! restores, its stored bytes with what the packs' own headers say.

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, bytes, open_repo, walkdir};

const NOT_PERMITTED: i32 = 14;
const USAGE: i32 = 2;

fn source(env: &Env) -> PathBuf {
    let src = env.path("src");
    fs::create_dir_all(src.join("docs/deep")).unwrap();
    fs::write(src.join("big"), bytes(1, 600_000)).unwrap();
    fs::write(src.join("docs/a.txt"), b"alpha").unwrap();
    fs::write(src.join("docs/deep/b.txt"), b"beta").unwrap();
    src
}

/// The snapshots in view: (id, tags, original).
fn listed(env: &Env) -> Vec<(String, Vec<String>, Option<String>)> {
    env.json(&["snapshots"], 0)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let tags = s["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            let original = s["original"].as_str().map(str::to_string);
            (s["id"].as_str().unwrap().to_string(), tags, original)
        })
        .collect()
}

fn snapshot_files(repo: &Path) -> HashSet<String> {
    fs::read_dir(repo.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn tags(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

/// Restores snapshot `id` into a new directory `name` and checks every byte against `src`.
fn restores_exactly(env: &Env, id: &str, name: &str, src: &Path) {
    let target = env.path(name);
    env.ok(&["restore", id, "--target", target.to_str().unwrap(), "-q"]);
    assert_eq!(
        common::snapshot_of(&Env::restored(&target, src)),
        common::snapshot_of(src),
        "restore of {id} differs from the source"
    );
}

#[test]
fn tag_adds_removes_and_sets_by_writing_a_new_snapshot() {
    let env = Env::new();
    env.init(&["--pack-size", "256K"]);
    let src = source(&env);
    env.ok(&[
        "backup",
        src.to_str().unwrap(),
        "--tag",
        "nightly",
        "--tag",
        "x",
        "-q",
    ]);
    let [(first, t0, None)] = &listed(&env)[..] else {
        panic!("one snapshot")
    };
    assert_eq!(*t0, tags(&["nightly", "x"]));

    // Bad input writes nothing, not even a lock.
    let before = walkdir(&env.repo());
    env.expect(&["tag", &first[..8]], USAGE);
    env.expect(&["tag", "--set", "a", "--add", "b", &first[..8]], USAGE);
    env.expect(&["tag", "--add", "", &first[..8]], USAGE);
    assert_eq!(walkdir(&env.repo()), before);

    let out = env.json(
        &["tag", "--add", "keep", "--remove", "nightly", &first[..8]],
        0,
    );
    assert_eq!(out["changed"][0]["old"].as_str().unwrap(), first);
    let new = out["changed"][0]["new"].as_str().unwrap().to_string();
    assert_eq!(
        listed(&env),
        [(new.clone(), tags(&["x", "keep"]), Some(first.clone()))]
    );
    assert_eq!(snapshot_files(&env.repo()), HashSet::from([new.clone()]));
    restores_exactly(&env, &new[..8], "r1", &src);
    // The forget went through the repository's forget record, as `vault forget` writes.
    assert_eq!(
        fs::read_dir(env.repo().join("forgotten")).unwrap().count(),
        1
    );

    // Already so: nothing changes, nothing is written.
    let out = env.json(&["tag", "--add", "keep", "latest"], 0);
    assert_eq!(out["changed"].as_array().unwrap().len(), 0);
    assert_eq!(out["unchanged"][0].as_str().unwrap(), new);
    assert_eq!(snapshot_files(&env.repo()), HashSet::from([new.clone()]));

    env.ok(&["tag", "--set", "a", "--set", "b", "latest", "-q"]);
    assert_eq!(listed(&env)[0].1, tags(&["a", "b"]));
    env.ok(&["tag", "--set", "", "latest", "-q"]);
    let [(last, t, Some(orig))] = &listed(&env)[..] else {
        panic!("one snapshot")
    };
    assert!(t.is_empty(), "--set '' removes every tag");
    assert_ne!(orig, &new);
    restores_exactly(&env, &last[..8], "r2", &src);
    env.ok(&["check", "--read-data", "-q"]);
}

#[test]
fn tag_without_ids_changes_what_the_filters_select() {
    let env = Env::new();
    env.init(&["--pack-size", "256K"]);
    let src = source(&env);
    for host in ["h1", "h2", "h1"] {
        env.ok(&["backup", "--host", host, src.to_str().unwrap(), "-q"]);
    }
    let out = env.json(&["tag", "--add", "one", "--host", "h1"], 0);
    assert_eq!(out["changed"].as_array().unwrap().len(), 2);
    let l = env.json(&["snapshots"], 0);
    let by_host = |h: &str| -> Vec<serde_json::Value> {
        l.as_array()
            .unwrap()
            .iter()
            .filter(|s| s["host"] == h)
            .map(|s| s["tags"].clone())
            .collect()
    };
    assert_eq!(
        by_host("h1"),
        [serde_json::json!(["one"]), serde_json::json!(["one"])]
    );
    assert_eq!(by_host("h2"), [serde_json::json!([])]);
    // No ids and no filter: every snapshot, as restic's tag.
    let out = env.json(&["tag", "--add", "all"], 0);
    assert_eq!(out["changed"].as_array().unwrap().len(), 3);
    assert_eq!(listed(&env).len(), 3);
    // A retention policy sees each snapshot once.
    let plan = env.json(&["forget", "--keep-last", "1", "--dry-run"], 0);
    let n: usize = plan["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["snapshots"].as_array().unwrap().len())
        .sum();
    assert_eq!(n, 3);
}

/// Runs `args` killed after its 1st, 2nd, ... storage write, each time on a fresh copy
/// of the repository as it is now, until a run completes; `after` looks at each run
/// (the write count, whether it completed). Fails if no run completes within `most`.
fn kill_sweep(env: &Env, args: &[&str], most: u32, mut after: impl FnMut(u32, bool)) {
    let pristine = env.path("pristine");
    common::copy_tree(&env.repo(), &pristine);
    for n in 1..most {
        fs::remove_dir_all(env.repo()).unwrap();
        common::copy_tree(&pristine, &env.repo());
        let out = env
            .cmd()
            .env("VAULT_CRASH_AFTER_WRITES", n.to_string())
            .args(args)
            .output()
            .unwrap();
        let done = out.status.success();
        if !done {
            assert_eq!(
                out.status.signal(),
                Some(9),
                "killed after write {n}: {out:?}"
            );
        }
        after(n, done);
        if done {
            return;
        }
    }
    panic!("{args:?} never ran to the end");
}

/// Kills tag right after each of its storage writes and deletes in turn: the listing
/// shows one snapshot, old or new (never both, never none), and running tag again,
/// check, forget and prune are clean.
#[test]
fn tag_killed_after_any_write_leaves_one_snapshot() {
    let env = Env::new();
    env.init(&["--pack-size", "256K"]);
    let src = source(&env);
    env.ok(&["backup", src.to_str().unwrap(), "--tag", "old", "-q"]);
    kill_sweep(
        &env,
        &["tag", "--set", "new", "latest", "-q"],
        20,
        |n, done| {
            if done {
                assert!(
                    n > 3,
                    "a lock, the new snapshot, the forget record, a delete"
                );
                return;
            }
            let l = listed(&env);
            assert_eq!(l.len(), 1, "after write {n}: {l:?}");
            assert!(
                l[0].1 == tags(&["old"]) || l[0].1 == tags(&["new"]),
                "{l:?}"
            );
            env.ok(&["unlock", "-q"]);
            // Running it again finishes: one snapshot, with the new tags, alone on disk.
            env.ok(&["tag", "--set", "new", "latest", "-q"]);
            let l = listed(&env);
            assert_eq!(l.len(), 1);
            assert_eq!(l[0].1, tags(&["new"]));
            assert_eq!(snapshot_files(&env.repo()), HashSet::from([l[0].0.clone()]));
            env.ok(&["check", "-q"]);
            env.ok(&["prune", "-q"]);
            restores_exactly(&env, &l[0].0[..8], &format!("r{n}"), &src);
        },
    );
}

/// Killed between the new snapshot and the forget, the old snapshot stays on disk but
/// out of view; forgetting the new one forgets it too (it must not come back).
#[test]
fn forgetting_a_retagged_snapshot_forgets_what_it_hides() {
    let env = Env::new();
    env.init(&["--pack-size", "256K"]);
    let src = source(&env);
    env.ok(&["backup", src.to_str().unwrap(), "-q"]);
    // Writes: the lock, then the new snapshot; killed there.
    let out = env
        .cmd()
        .env("VAULT_CRASH_AFTER_WRITES", "2")
        .args(["tag", "--add", "t", "latest"])
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9));
    assert_eq!(snapshot_files(&env.repo()).len(), 2, "both on disk");
    let l = listed(&env);
    assert_eq!(l.len(), 1, "one in view");
    assert_eq!(l[0].1, tags(&["t"]));
    env.ok(&["unlock", "-q"]);
    // Backup's parent is the one in view, and a mount would list only it (the same list).
    let b = env.backup_json(&[src.to_str().unwrap()]);
    assert_eq!(b["parent"].as_str().unwrap(), l[0].0);
    env.ok(&["forget", &l[0].0[..8], "-q"]);
    assert_eq!(
        listed(&env).len(),
        1,
        "only the new backup; the hidden one did not return"
    );
    assert_eq!(snapshot_files(&env.repo()).len(), 1);
    env.ok(&["prune", "-q"]);
    env.ok(&["check", "--read-data", "-q"]);
}

#[test]
fn sync_carries_the_new_snapshot_and_the_forget_to_a_mirror() {
    let env = Env::new();
    env.init(&["--pack-size", "256K"]);
    let mirror = env.path("mirror");
    env.ok(&["mirror", "add", "m", mirror.to_str().unwrap(), "--no-sync"]);
    let src = source(&env);
    env.ok(&["backup", src.to_str().unwrap(), "-q"]);
    env.ok(&["sync", "-q"]);
    let old = listed(&env)[0].0.clone();
    assert_eq!(snapshot_files(&mirror), HashSet::from([old.clone()]));
    env.ok(&["tag", "--add", "kept", "latest", "-q"]);
    env.ok(&["sync", "-q"]);
    let new = listed(&env)[0].0.clone();
    assert_eq!(snapshot_files(&mirror), HashSet::from([new.clone()]));
    let there = env.json(&["snapshots", "--repo", mirror.to_str().unwrap()], 0);
    assert_eq!(there[0]["tags"], serde_json::json!(["kept"]));
    env.ok(&["check", "--repo", mirror.to_str().unwrap(), "-q"]);
}

#[test]
fn a_backup_role_key_cannot_tag() {
    let env = Env::new();
    env.init(&["--format-version", "4", "--pack-size", "256K"]);
    let src = source(&env);
    env.ok(&["backup", "--host", "laptop", src.to_str().unwrap(), "-q"]);
    env.add_backup_key("laptop", "backup only");
    let stored = |p: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<_> = walkdir(p)
            .into_iter()
            .filter(|f| f.is_file())
            .map(|f| (f.clone(), fs::read(&f).unwrap()))
            .collect();
        v.sort();
        v
    };
    let before = stored(&env.repo());
    for args in [&["tag", "--add", "x", "latest"][..], &["tag", "--set", "y"]] {
        let out = env
            .cmd()
            .env("VAULT_PASSWORD", "backup only")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(NOT_PERMITTED), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    assert_eq!(stored(&env.repo()), before, "a refused tag writes nothing");
}

// ---- stats ----

/// File bytes of a restore as `du -b --apparent-size` counts them, less what it counts
/// for directories themselves (their own size, 4096 or so apiece, which stats leaves
/// out: a restore writes file bytes, not directory blocks). The corpus has no symlinks
/// (du counts a link's target length) and no hard links (du counts them once).
fn du_file_bytes(dir: &Path) -> u64 {
    let du = Command::new("du")
        .args(["-s", "-b", "--apparent-size"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(du.status.success());
    let total: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let find = Command::new("find")
        .arg(dir)
        .args(["-type", "d", "-printf", "%s\n"])
        .output()
        .unwrap();
    let dirs: u64 = String::from_utf8_lossy(&find.stdout)
        .lines()
        .map(|l| l.parse::<u64>().unwrap())
        .sum();
    total - dirs
}

fn num(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("a number: {v}"))
}

#[test]
fn stats_match_du_of_restores_and_the_packs() {
    let env = Env::new();
    env.init(&["--pack-size", "256K"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("d/e")).unwrap();
    fs::write(src.join("random"), bytes(1, 700_000)).unwrap();
    // The same content twice (deduplicated), and text that compresses.
    fs::write(src.join("d/copy1"), bytes(2, 300_000)).unwrap();
    fs::write(src.join("d/e/copy2"), bytes(2, 300_000)).unwrap();
    let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    fs::write(src.join("d/text"), &text).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    env.ok(&["backup", src.to_str().unwrap(), "-q"]);
    // Second snapshot: one file gone, one new.
    fs::remove_file(src.join("random")).unwrap();
    fs::write(src.join("new"), bytes(3, 200_000)).unwrap();
    env.ok(&["backup", src.to_str().unwrap(), "-q"]);
    let ids: Vec<String> = listed(&env).into_iter().map(|s| s.0).collect();

    let mut du_each = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let t = env.path(&format!("restore{i}"));
        env.ok(&["restore", &id[..8], "--target", t.to_str().unwrap(), "-q"]);
        du_each.push(du_file_bytes(&t));
    }
    assert_eq!(du_each[0], 700_000 + 600_000 + text.len() as u64);

    let rs = env.json(&["stats"], 0);
    assert_eq!(rs["mode"], "restore-size");
    assert_eq!(num(&rs["snapshots"]), 2);
    assert_eq!(num(&rs["restore_size"]), du_each.iter().sum::<u64>());
    assert_eq!(num(&rs["files"]), 5 + 5);
    let one = env.json(&["stats", &ids[1][..8]], 0);
    assert_eq!(num(&one["restore_size"]), du_each[1]);

    // Raw data: every blob stored is referenced here (nothing forgotten), so the blobs'
    // stored bytes are what the packs' own headers list, bundles once each.
    let raw = env.json(&["stats", "--mode", "raw-data"], 0);
    let r = &raw["raw_data"];
    let repo = open_repo(&env);
    let mut units = HashSet::new();
    let (mut stored, mut blobs, mut pack_bytes, mut data_packs) = (0u64, 0u64, 0u64, Vec::new());
    for p in walkdir(&env.repo().join("data"))
        .into_iter()
        .filter(|p| p.is_file())
    {
        let id = vault::format::Id::from_hex(p.file_name().unwrap().to_str().unwrap()).unwrap();
        pack_bytes += fs::metadata(&p).unwrap().len();
        let header = repo.read_pack_header(&id).unwrap();
        if header
            .iter()
            .all(|e| e.blob_type == vault::format::pack::BlobType::Data)
        {
            data_packs.push(p.clone());
        }
        for e in header {
            blobs += 1;
            if units.insert((id, e.offset)) {
                stored += u64::from(e.length);
            }
        }
    }
    assert_eq!(num(&r["stored_bytes"]), stored);
    assert_eq!(num(&r["blobs"]), blobs);
    assert_eq!(num(&r["missing_blobs"]), 0);
    assert_eq!(num(&raw["repository"]["pack_bytes"]), pack_bytes);
    assert_eq!(num(&raw["repository"]["blobs"]), blobs);
    assert!(stored < pack_bytes, "headers take the rest");
    // Distinct data: random + copy (once) + text + new.
    let data_raw = 700_000 + 300_000 + text.len() as u64 + 200_000;
    let tree_raw = num(&r["raw_bytes"]) - data_raw;
    assert!(tree_raw > 0 && tree_raw < 20_000, "trees: {tree_raw}");
    let dedup = r["dedup_ratio"].as_f64().unwrap();
    let want = num(&rs["restore_size"]) as f64 / data_raw as f64;
    assert!((dedup - want).abs() < 1e-9, "{dedup} vs {want}");
    assert!(r["compression_ratio"].as_f64().unwrap() > 1.0);

    // Per snapshot: each one's restore size, and what only it references.
    let per = env.json(&["stats", "--mode", "per-snapshot"], 0);
    let rows = per["per_snapshot"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["id"].as_str().unwrap(), ids[i]);
        assert_eq!(num(&row["restore_size"]), du_each[i]);
    }
    let only = |i: usize| num(&rows[i]["unique_raw_bytes"]);
    // Unique: the file only it has, plus its own trees (root and the changed directory).
    assert!(
        only(0) >= 700_000 && only(0) < 700_000 + 20_000,
        "{}",
        only(0)
    );
    assert!(
        only(1) >= 200_000 && only(1) < 200_000 + 20_000,
        "{}",
        only(1)
    );

    // Only trees and the index are read: with every data-only pack moved away, the
    // figures are the same.
    assert!(!data_packs.is_empty());
    let aside = env.path("aside");
    fs::create_dir_all(&aside).unwrap();
    for (i, p) in data_packs.iter().enumerate() {
        fs::rename(p, aside.join(i.to_string())).unwrap();
    }
    let again = env.json(&["stats", "--mode", "per-snapshot"], 0);
    assert_eq!(again["per_snapshot"], per["per_snapshot"]);
    assert_eq!(again["raw_data"], per["raw_data"]);
    assert_eq!(again["restore_size"], per["restore_size"]);
}

// ---- rewrite ----

/// Blobs of each type the index lists.
fn blob_counts(env: &Env) -> (usize, usize) {
    let repo = open_repo(env);
    let all = repo.index().blobs_in_packs(&repo.index().pack_ids());
    let data = all
        .iter()
        .filter(|(_, e)| e.blob_type == vault::format::pack::BlobType::Data)
        .count();
    (data, all.len() - data)
}

fn data_bytes(env: &Env) -> u64 {
    walkdir(&env.repo().join("data"))
        .iter()
        .filter(|p| p.is_file())
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn rewrite_leaves_out_paths_and_uploads_no_data() {
    let env = Env::new();
    env.init(&["--pack-size", "256K"]);
    let src = source(&env);
    fs::write(src.join("secret.pdf"), bytes(7, 300_000)).unwrap();
    env.ok(&["backup", src.to_str().unwrap(), "-q"]);
    let old = listed(&env)[0].0.clone();
    let secret = src.join("secret.pdf");
    // HOME is the test's directory: `~/src/secret.pdf` is the source's file.
    let pattern = "~/src/secret.pdf";

    let before = walkdir(&env.repo());
    let dry = env.json(&["rewrite", "--exclude", pattern, "--dry-run"], 0);
    assert!(dry["rewritten"][0]["rewritten"].is_null());
    assert_eq!(
        dry["rewritten"][0]["removed"],
        serde_json::json!([secret.to_str().unwrap()])
    );
    assert_eq!(num(&dry["rewritten"][0]["removed_bytes"]), 300_000);
    assert_eq!(walkdir(&env.repo()), before, "a dry run writes nothing");
    env.expect(&["rewrite", "latest"], USAGE);
    env.expect(&["rewrite", "--exclude", "{a", "latest"], USAGE);
    assert_eq!(walkdir(&env.repo()), before);

    let (data_blobs, tree_blobs) = blob_counts(&env);
    let bytes_before = data_bytes(&env);
    let out = env.json(&["rewrite", "--exclude", pattern], 0);
    let new = out["rewritten"][0]["rewritten"]
        .as_str()
        .unwrap()
        .to_string();
    // Only the trees from the root down to the file's directory are new: no data blob,
    // and a few KiB of packs.
    let (data_after, trees_after) = blob_counts(&env);
    assert_eq!(data_after, data_blobs, "no data blob uploaded");
    assert_eq!(
        trees_after - tree_blobs,
        num(&out["trees_written"]) as usize
    );
    assert!(trees_after > tree_blobs);
    let added = data_bytes(&env) - bytes_before;
    assert_eq!(added, num(&out["bytes_written"]));
    assert!(added < 16_384, "{added} bytes of packs for a few trees");

    // The original stays (the trees differ) until forgotten; the new one says what it
    // left out.
    let l = env.json(&["snapshots"], 0);
    assert_eq!(l.as_array().unwrap().len(), 2);
    let s = l
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == new.as_str())
        .unwrap();
    assert_eq!(s["original"].as_str().unwrap(), old);
    let abs = format!("{}/src/secret.pdf", env.dir.path().display());
    assert!(
        s["excludes"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(abs))
    );

    let t = env.path("r-new");
    env.ok(&["restore", &new[..8], "--target", t.to_str().unwrap(), "-q"]);
    let got = Env::restored(&t, &src);
    assert!(
        !got.join("secret.pdf").exists(),
        "left out of the new snapshot"
    );
    fs::remove_file(&secret).unwrap();
    assert_eq!(common::snapshot_of(&got), common::snapshot_of(&src));
    env.expect(&["dump", &new[..8], secret.to_str().unwrap()], 1);

    // --forget: every snapshot rewritten, the originals forgotten; prune frees the file.
    let out = env.json(&["rewrite", "--exclude", "*.txt", "--forget"], 0);
    assert_eq!(out["rewritten"].as_array().unwrap().len(), 2);
    let l = listed(&env);
    assert_eq!(l.len(), 2);
    assert_eq!(snapshot_files(&env.repo()).len(), 2);
    // The rewrite of the first original still holds the secret: forget it too.
    let with_secret = out["rewritten"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["original"] == old.as_str())
        .unwrap()["rewritten"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&["forget", &with_secret[..8], "-q"]);
    env.ok(&["prune", "--grace", "0s", "-q"]);
    env.ok(&["prune", "--grace", "0s", "-q"]);
    env.ok(&["check", "--read-data", "-q"]);
    let (data_end, _) = blob_counts(&env);
    assert!(
        data_end < data_blobs,
        "the secret's blobs are gone after prune"
    );
    let t = env.path("r-last");
    env.ok(&["restore", "latest", "--target", t.to_str().unwrap(), "-q"]);
    let got = Env::restored(&t, &src);
    assert!(got.join("big").exists() && !got.join("docs/a.txt").exists());
    assert!(!got.join("secret.pdf").exists());
}

/// rewrite --forget killed after each write: the original or its rewrite (or both) is
/// always there, and check is clean.
#[test]
fn rewrite_killed_after_any_write_never_loses_a_snapshot() {
    let env = Env::new();
    env.init(&["--pack-size", "256K"]);
    let src = source(&env);
    env.ok(&["backup", src.to_str().unwrap(), "-q"]);
    let old = listed(&env)[0].0.clone();
    let args = ["rewrite", "--exclude", "/**/deep", "--forget", "-q"];
    kill_sweep(&env, &args, 30, |n, done| {
        let l = listed(&env);
        assert!(
            l.iter()
                .any(|s| s.0 == old || s.2.as_deref() == Some(old.as_str())),
            "after write {n}: {l:?}"
        );
        if done {
            assert_eq!(l.len(), 1);
            assert_eq!(l[0].2.as_deref(), Some(old.as_str()));
            return;
        }
        env.ok(&["unlock", "-q"]);
        env.ok(&["check", "-q"]);
    });
}
