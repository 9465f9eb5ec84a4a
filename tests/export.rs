//! Offline exports through the binary: a directory that restores with nothing else,
//! incremental re-export, subsets by policy, kill -9 at every write, a full disk.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, bytes, snapshot_of, walkdir};

fn source(env: &Env) -> PathBuf {
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("big"), bytes(5, 2 << 20)).unwrap();
    fs::write(src.join("d/small"), b"small").unwrap();
    src
}

fn sha256sum_ok(dir: &Path) -> bool {
    Command::new("sha256sum")
        .args(["-c", "--quiet", "MANIFEST"])
        .current_dir(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn directory_export_restores_without_the_repository() {
    let env = Env::new();
    env.init(&["--pack-size", "512K"]);
    let src = source(&env);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let dest = env.path("archive");
    let out = env.ok(&["export", dest.to_str().unwrap(), "--label", "drawer"]);
    assert!(out.contains("exported 1 snapshots"), "{out}");
    assert!(sha256sum_ok(&dest), "MANIFEST checks with coreutils");
    for f in [
        "README.txt",
        "repo-format/README.md",
        "repo-format/reference/vault_reader.py",
        "vault",
    ] {
        assert!(dest.join(f).is_file(), "{f} is in the export");
    }
    let status = env.json(&["status"], 0);
    assert!(
        status["summary"]
            .as_str()
            .unwrap()
            .contains("newest offline export: drawer, 0 days old"),
        "{status}"
    );

    // The original repository is gone; the export and its own binary are enough.
    fs::remove_dir_all(env.repo()).unwrap();
    fs::remove_dir_all(env.path("cache")).unwrap();
    let bin = dest.join("vault");
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .args(args)
            .env("VAULT_PASSWORD", common::PASSWORD)
            .env("VAULT_CACHE_DIR", "")
            .current_dir(&dest)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run(&["check", "--read-data", "--repo", "."]).contains("no errors"));
    let target = env.path("restored");
    run(&[
        "restore",
        "latest",
        "--verify",
        "--repo",
        ".",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        snapshot_of(&Env::restored(&target, &src)),
        snapshot_of(&src)
    );
}

fn data_packs(dir: &Path) -> Vec<PathBuf> {
    walkdir(&dir.join("data"))
}

#[test]
fn re_export_copies_only_what_is_missing_and_drops_what_is_unneeded() {
    let env = Env::new();
    env.init(&["--pack-size", "512K"]);
    let src = source(&env);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let dest = env.path("archive");
    let first = env.json(&["export", dest.to_str().unwrap()], 0);
    let packs_before = data_packs(&dest).len();
    // A small change: the second export copies a few objects, not the whole data again.
    fs::write(src.join("d/small"), b"changed").unwrap();
    fs::remove_file(src.join("big")).unwrap();
    fs::write(src.join("new"), bytes(9, 1 << 20)).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let second = env.json(&["export", dest.to_str().unwrap()], 0);
    assert!(
        second["report"]["bytes_copied"].as_u64().unwrap()
            < first["report"]["bytes_copied"].as_u64().unwrap(),
        "incremental: {second}"
    );
    assert!(data_packs(&dest).len() > packs_before);
    assert!(sha256sum_ok(&dest));
    // Only the newest by policy: the packs only the first snapshot used go.
    let third = env.json(
        &[
            "export",
            dest.to_str().unwrap(),
            "--snapshots",
            "--keep-last 1",
        ],
        0,
    );
    assert_eq!(third["report"]["snapshots_removed"], 1, "{third}");
    assert!(
        third["report"]["packs_removed"].as_u64().unwrap() > 0,
        "{third}"
    );
    assert_eq!(
        env.json(&["snapshots", "--repo", dest.to_str().unwrap()], 0)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        env.ok(&["check", "--read-data", "--repo", dest.to_str().unwrap()])
            .contains("no errors")
    );
    assert!(sha256sum_ok(&dest));
    env.expect(
        &[
            "export",
            dest.to_str().unwrap(),
            "--snapshots",
            "--keep-nonsense 3",
        ],
        2,
    );
    // Another repository's export is never overwritten.
    let other = Env::new();
    other.init(&[]);
    other.ok(&["backup", "-q", src.to_str().unwrap()]);
    let out = other.run(&["export", dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds another repository"));
}

#[test]
fn export_killed_after_any_write_leaves_a_trustworthy_destination() {
    let template = Env::new();
    template.init(&["--pack-size", "256K"]);
    let src = source(&template);
    template.ok(&["backup", "-q", src.to_str().unwrap()]);
    let dest_template = template.path("archive");
    template.ok(&["export", dest_template.to_str().unwrap()]);
    fs::write(src.join("d/more"), bytes(11, 700_000)).unwrap();
    template.ok(&["backup", "-q", src.to_str().unwrap()]);
    let mut points = 0;
    for n in 1..=60 {
        let dest = template.path(&format!("try{n}"));
        common::copy_tree(&dest_template, &dest);
        let out = template
            .cmd()
            .env("VAULT_CRASH_AFTER_WRITES", n.to_string())
            .args([
                "export",
                dest.to_str().unwrap(),
                "--snapshots",
                "--keep-last 1",
            ])
            .output()
            .unwrap();
        let killed = out.status.code().is_none();
        let repo = dest.to_str().unwrap();
        // Whatever the kill left is a valid repository, and a MANIFEST present is true.
        let check = template.run(&["check", "--read-data", "--repo", repo]);
        assert_eq!(
            check.status.code(),
            Some(0),
            "after a kill at write {n}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        if dest.join("MANIFEST").exists() {
            assert!(sha256sum_ok(&dest), "a MANIFEST that lies after write {n}");
        }
        template.ok(&[
            "restore",
            "latest",
            "--repo",
            repo,
            "--target",
            template.path(&format!("r{n}")).to_str().unwrap(),
        ]);
        let _ = fs::remove_dir_all(&dest);
        let _ = fs::remove_dir_all(template.path(&format!("r{n}")));
        if !killed {
            break;
        }
        points += 1;
    }
    assert!(points >= 8, "killed at only {points} points");
}

/// A tmpfs too small for the data, unmounted on drop.
struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_gives_one_clear_error() {
    let env = Env::new();
    env.init(&["--pack-size", "512K"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), bytes(3, 6 << 20)).unwrap();
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let disk = env.path("disk");
    fs::create_dir_all(&disk).unwrap();
    let status = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=2m",
            "vault-test",
            disk.to_str().unwrap(),
        ])
        .status()
        .expect("mount(8)");
    assert!(
        status.success(),
        "mounting a tmpfs needs root (tests run as root in CI)"
    );
    let _d = SmallDisk(disk.clone());
    let out = env.run(&["export", disk.join("archive").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(13), "storage failed: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let dest = format!(
        "export {}: out of space or over quota",
        disk.join("archive").display()
    );
    assert!(err.contains(&dest) && err.contains("free space"), "{err}");
    assert!(
        !disk.join("archive/MANIFEST").exists(),
        "an unfinished export has no MANIFEST"
    );
}

#[test]
fn image_export_in_volumes_unpacks_with_tar_and_restores() {
    let env = Env::new();
    env.init(&["--pack-size", "512K"]);
    let src = source(&env);
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let image = env.path("images/vault.tar");
    fs::create_dir_all(image.parent().unwrap()).unwrap();
    let out = env.json(
        &[
            "export",
            "--image",
            image.to_str().unwrap(),
            "--split",
            "8M",
        ],
        0,
    );
    let volumes = out["volumes"].as_array().unwrap().len();
    assert!(volumes > 1, "split into volumes: {out}");
    assert!(
        env.ok(&["export", "--verify-image", image.to_str().unwrap()])
            .contains("every file matches")
    );
    let status = env.json(&["status"], 0);
    assert!(
        status["summary"].as_str().unwrap().contains("vault.tar"),
        "{status}"
    );

    // Reassembled with cat and unpacked with tar: a directory export.
    let unpacked = env.path("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    let script = format!(
        "cat {0}.[0-9][0-9][0-9] | tar -x -C {1}",
        image.display(),
        unpacked.display()
    );
    assert!(
        Command::new("sh")
            .args(["-c", &script])
            .status()
            .unwrap()
            .success()
    );
    assert!(sha256sum_ok(&unpacked));
    let repo = unpacked.to_str().unwrap();
    assert!(
        env.ok(&["check", "--read-data", "--repo", repo])
            .contains("no errors")
    );
    let target = env.path("restored");
    env.ok(&[
        "restore",
        "latest",
        "--verify",
        "--repo",
        repo,
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        snapshot_of(&Env::restored(&target, &src)),
        snapshot_of(&src)
    );

    // A changed byte in any volume is found.
    let vol = PathBuf::from(format!("{}.000", image.display()));
    let mut b = fs::read(&vol).unwrap();
    let at = b.len() / 2;
    b[at] ^= 1;
    fs::write(&vol, b).unwrap();
    let out = env.run(&["export", "--verify-image", image.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

/// Some tests here rely on VAULT_CRASH_AFTER_WRITES, which only a build with the test hooks obeys.
#[test]
fn the_test_hooks_are_built() {
    if !cfg!(feature = "test-hooks") {
        panic!(
            "run the tests with --features test-hooks: without it vault ignores VAULT_CRASH_AFTER_WRITES"
        );
    }
}

/// On a terminal an export shows how far it has come, as a percentage of the packs to
/// copy with an ETA (paced here so that the line is drawn more than once).
#[test]
fn an_export_shows_percent_and_eta_on_a_terminal() {
    let env = Env::new();
    env.init(&["--pack-size", "1M"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        fs::write(src.join(format!("f{i}")), bytes(60 + i, 1 << 20)).unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    let dest = env.path("drawer");
    let args = ["--limit-upload", "2M", "export", dest.to_str().unwrap()];
    let Some(shown) = common::on_terminal(&env, &args, &[]) else {
        return;
    };
    assert!(common::drew_percent_and_eta(&shown), "{shown:?}");
    assert!(sha256sum_ok(&dest));
}
