//! Restore into a target that already holds things: `--overwrite always|if-changed|
//! if-newer|never`, `--verify-content`, `--delete` and `--dry-run`, and a restore killed
//! at any instant resumed with `--overwrite if-changed`, which reads only what is missing.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::Value;

/// A tree with a multi-chunk file, small files, a symlink, a hard-link pair, a nested
/// directory and a private file; backed up. Returns the source.
fn backed_up(env: &Env) -> PathBuf {
    let src = env.path("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("big"), bytes(1, 3 << 20)).unwrap();
    for i in 0..12u64 {
        fs::write(
            src.join(format!("sub/small{i}")),
            bytes(100 + i, 5000 + i as usize),
        )
        .unwrap();
    }
    fs::write(src.join("sub/deeper/leaf"), bytes(7, 70_000)).unwrap();
    fs::write(src.join("private"), b"secret").unwrap();
    set_mode(&src.join("private"), 0o600);
    symlink("sub/small0", src.join("link")).unwrap();
    fs::hard_link(src.join("sub/small1"), src.join("hard")).unwrap();
    env.init(&[]);
    env.ok(&["backup", src.to_str().unwrap()]);
    src
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(p: &Path, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// `vault --json restore latest --target TARGET EXTRA...`: its result.
fn restore(env: &Env, target: &Path, extra: &[&str]) -> Value {
    let mut a = vec!["restore", "latest", "--target", target.to_str().unwrap()];
    a.extend_from_slice(extra);
    env.json(&a, 0)["result"].clone()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn if_changed_writes_only_what_differs_and_delete_removes_what_the_snapshot_lacks() {
    let env = Env::new();
    let src = backed_up(&env);
    let target = env.path("t");
    let first = restore(&env, &target, &[]);
    let all_blobs = n(&first, "blobs_read");
    assert!(all_blobs > 3, "{first}");
    let r = Env::restored(&target, &src);
    assert_eq!(snapshot_of(&r), snapshot_of(&src));

    // Run again over a complete restore: nothing is read, written or deleted.
    let again = restore(&env, &target, &["--overwrite", "if-changed", "--delete"]);
    assert_eq!(n(&again, "blobs_read"), 0, "{again}");
    assert_eq!(n(&again, "bytes_written"), 0, "{again}");
    assert_eq!(n(&again, "files"), 0, "{again}");
    assert_eq!(n(&again, "deleted"), 0, "{again}");
    assert_eq!(n(&again, "unchanged"), 17, "{again}");

    // Damage it: a few bytes inside the big file, a file gone, a mode changed, things the
    // snapshot does not hold (a symlink to a directory outside among them).
    let mut big = fs::read(r.join("big")).unwrap();
    big[2 << 20] ^= 0xff;
    fs::write(r.join("big"), &big).unwrap();
    fs::remove_file(r.join("sub/small3")).unwrap();
    set_mode(&r.join("private"), 0o644);
    fs::write(r.join("extra"), b"not in the snapshot").unwrap();
    fs::create_dir_all(r.join("sub/extra-dir/inner")).unwrap();
    fs::write(r.join("sub/extra-dir/inner/f"), b"x").unwrap();
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("keep"), b"outside the target").unwrap();
    symlink(&outside, r.join("sub/deeper/to-outside")).unwrap();

    // A dry run lists the changes and makes none.
    let before = snapshot_of(&target);
    let mut a = vec!["restore", "latest", "--target", target.to_str().unwrap()];
    a.extend(["--overwrite", "if-changed", "--delete", "--dry-run"]);
    let listed = env.ok(&a);
    assert_eq!(snapshot_of(&target), before, "a dry run changes nothing");
    for line in [
        format!("would write {}", src.join("big").display()),
        format!("would write {}", src.join("sub/small3").display()),
        format!("would delete {}", src.join("extra").display()),
        format!("would delete {}/", src.join("sub/extra-dir").display()),
        format!(
            "would delete {}",
            src.join("sub/deeper/to-outside").display()
        ),
    ] {
        assert!(listed.contains(&line), "{line:?} not in:\n{listed}");
    }
    let dry = env.json(&a, 0)["result"].clone();
    assert_eq!(n(&dry, "files"), 2, "{dry}");
    assert_eq!(n(&dry, "deleted"), 3, "{dry}");

    let fix = restore(&env, &target, &["--overwrite", "if-changed", "--delete"]);
    assert_eq!(snapshot_of(&r), snapshot_of(&src), "{fix}");
    assert_eq!(n(&fix, "files"), 2, "{fix}");
    assert_eq!(n(&fix, "deleted"), 3, "{fix}");
    // Two blobs: the one of the big file with the changed byte, and small3's.
    assert_eq!(n(&fix, "blobs_read"), 2, "{fix}");
    assert!(n(&fix, "bytes_written") < 3 << 20, "{fix}");
    assert_eq!(
        fs::read(outside.join("keep")).unwrap(),
        b"outside the target"
    );
}

#[test]
fn delete_stays_inside_the_selection() {
    let env = Env::new();
    let src = backed_up(&env);
    let target = env.path("t");
    restore(&env, &target, &[]);
    let r = Env::restored(&target, &src);
    fs::write(r.join("extra"), b"outside the include").unwrap();
    fs::write(r.join("sub/extra"), b"inside the include").unwrap();
    fs::write(r.join("sub/skip.tmp"), b"excluded").unwrap();
    fs::write(target.join("beside"), b"not in any restored path").unwrap();
    let sub = src.join("sub");
    let out = restore(
        &env,
        &target,
        &[
            "--overwrite",
            "if-changed",
            "--delete",
            "--include",
            sub.to_str().unwrap(),
            "--exclude",
            "*.tmp",
        ],
    );
    assert_eq!(n(&out, "deleted"), 1, "{out}");
    assert!(!r.join("sub/extra").exists());
    assert!(r.join("extra").exists());
    assert!(r.join("sub/skip.tmp").exists());
    assert!(target.join("beside").exists());
}

#[test]
fn if_changed_trusts_size_and_mtime_unless_asked_to_verify_content() {
    let env = Env::new();
    let src = backed_up(&env);
    let target = env.path("t");
    restore(&env, &target, &[]);
    let leaf = Env::restored(&target, &src).join("sub/deeper/leaf");
    let mtime = fs::metadata(&leaf).unwrap().modified().unwrap();
    let mut data = fs::read(&leaf).unwrap();
    data[10] ^= 1;
    fs::write(&leaf, &data).unwrap();
    set_mtime(&leaf, mtime);

    let quick = restore(&env, &target, &["--overwrite", "if-changed"]);
    assert_eq!(n(&quick, "blobs_read"), 0, "{quick}");
    assert_eq!(fs::read(&leaf).unwrap(), data, "same size and mtime: kept");

    let deep = restore(
        &env,
        &target,
        &["--overwrite", "if-changed", "--verify-content"],
    );
    assert_eq!(n(&deep, "files"), 1, "{deep}");
    assert!(n(&deep, "blobs_read") >= 1, "{deep}");
    assert_eq!(fs::read(&leaf).unwrap(), bytes(7, 70_000));
    assert_eq!(fs::metadata(&leaf).unwrap().modified().unwrap(), mtime);
}

#[test]
fn if_newer_never_and_a_bare_overwrite() {
    let env = Env::new();
    let src = backed_up(&env);
    let target = env.path("t");
    restore(&env, &target, &[]);
    let r = Env::restored(&target, &src);
    let future = SystemTime::now() + Duration::from_secs(3600);
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    fs::write(r.join("sub/small4"), b"newer here").unwrap();
    set_mtime(&r.join("sub/small4"), future);
    fs::write(r.join("sub/small5"), b"older here").unwrap();
    set_mtime(&r.join("sub/small5"), past);
    fs::remove_file(r.join("sub/small6")).unwrap();

    let newer = restore(&env, &target, &["--overwrite", "if-newer"]);
    assert_eq!(fs::read(r.join("sub/small4")).unwrap(), b"newer here");
    assert_eq!(fs::read(r.join("sub/small5")).unwrap(), bytes(105, 5005));
    assert_eq!(fs::read(r.join("sub/small6")).unwrap(), bytes(106, 5006));
    assert_eq!(n(&newer, "files"), 2, "{newer}");

    fs::write(r.join("sub/small5"), b"mine").unwrap();
    fs::remove_file(r.join("sub/small6")).unwrap();
    let never = restore(&env, &target, &["--overwrite", "never"]);
    assert_eq!(fs::read(r.join("sub/small5")).unwrap(), b"mine");
    assert_eq!(fs::read(r.join("sub/small6")).unwrap(), bytes(106, 5006));
    assert_eq!(n(&never, "files"), 1, "{never}");

    // A bare --overwrite is `always`: everything is written again.
    let always = restore(&env, &target, &["--overwrite"]);
    assert_eq!(n(&always, "files"), 17, "{always}");
    assert_eq!(n(&always, "unchanged"), 0, "{always}");
    assert_eq!(snapshot_of(&r), snapshot_of(&src));
}

/// Killed after its Nth blob written, for several N, a restore run again with
/// `--overwrite if-changed` ends byte-identical and reads at most the blobs not yet
/// written; one more run reads nothing.
#[test]
fn a_killed_restore_resumes_reading_only_what_is_missing() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("big"), bytes(1, 2 << 20)).unwrap();
    for i in 0..30u64 {
        fs::write(src.join(format!("d/f{i}")), bytes(50 + i, 20_000)).unwrap();
    }
    env.init(&[]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let full = restore(&env, &env.path("fresh"), &[]);
    let total = n(&full, "blobs_read");
    for k in [1, total / 3, total / 2, total - 1] {
        let target = env.path(&format!("t{k}"));
        let mut c = env.cmd();
        c.env("VAULT_RESTORE_CRASH_AFTER", k.to_string()).args([
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
        ]);
        let out = c.output().unwrap();
        assert_eq!(
            out.status.code(),
            None,
            "killed after {k} blob(s) (needs --features test-hooks)"
        );
        // The resumed restore killed too, in the middle of what it writes in place.
        let mut c = env.cmd();
        c.env("VAULT_RESTORE_CRASH_AFTER", "2").args([
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--overwrite",
            "if-changed",
        ]);
        let killed_again = c.output().unwrap().status.code().is_none();
        let resumed = restore(&env, &target, &["--overwrite", "if-changed"]);
        assert_eq!(
            snapshot_of(&Env::restored(&target, &src)),
            snapshot_of(&src),
            "after {k}"
        );
        let written_before = if killed_again { k + 2 } else { k };
        assert!(
            n(&resumed, "blobs_read") <= total.saturating_sub(written_before),
            "killed after {k} (and again: {killed_again}) of {total}: {resumed}"
        );
        let again = restore(&env, &target, &["--overwrite", "if-changed"]);
        assert_eq!(n(&again, "blobs_read"), 0, "{again}");
        assert_eq!(n(&again, "files"), 0, "{again}");
    }
}

/// `if-changed` writes in place only into a file nothing outside reaches: a hard link
/// planted where a file goes, to a file outside the target, is replaced, and the file
/// outside keeps its bytes and mode, even when the planted link's size and mtime match.
#[test]
fn if_changed_never_writes_through_a_planted_hard_link() {
    let env = Env::new();
    let src = backed_up(&env);
    let target = env.path("t");
    restore(&env, &target, &[]);
    let r = Env::restored(&target, &src);
    let outside = env.path("outside");
    fs::write(&outside, bytes(999, 70_000)).unwrap();
    set_mode(&outside, 0o644);
    let mtime = fs::metadata(r.join("sub/deeper/leaf"))
        .unwrap()
        .modified()
        .unwrap();
    set_mtime(&outside, mtime);
    fs::remove_file(r.join("sub/deeper/leaf")).unwrap();
    fs::hard_link(&outside, r.join("sub/deeper/leaf")).unwrap();
    for extra in [&[][..], &["--verify-content"][..]] {
        let mut a = vec!["--overwrite", "if-changed"];
        a.extend_from_slice(extra);
        restore(&env, &target, &a);
        assert_eq!(fs::read(&outside).unwrap(), bytes(999, 70_000));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o777, 0o644);
        assert_eq!(
            fs::read(r.join("sub/deeper/leaf")).unwrap(),
            bytes(7, 70_000)
        );
    }
    assert_eq!(snapshot_of(&r), snapshot_of(&src));
}

/// A sparse file with data written into one of its holes is brought back exact by
/// `if-changed`, holes included.
#[test]
fn if_changed_clears_data_written_into_a_hole() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(6 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes(5, 4096), 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &bytes(6, 4096), 4 << 20).unwrap();
    drop(f);
    env.init(&[]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("t");
    restore(&env, &target, &[]);
    let r = Env::restored(&target, &src).join("sparse");
    let f = fs::OpenOptions::new().write(true).open(&r).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"in the hole", 2 << 20).unwrap();
    drop(f);
    let out = restore(&env, &target, &["--overwrite", "if-changed"]);
    assert_eq!(n(&out, "files"), 1, "{out}");
    assert_eq!(fs::read(&r).unwrap(), fs::read(src.join("sparse")).unwrap());
    assert_eq!(
        snapshot_of(&Env::restored(&target, &src)),
        snapshot_of(&src)
    );
}

/// Restoring over a target brings xattrs in line too: a `user.` xattr the snapshot does
/// not have, added to an unchanged file and to a directory, is removed; one the snapshot
/// has, changed, gets its value back. A bare `--overwrite` before the snapshot's name
/// means `always` (the name is not taken for its value).
#[test]
fn restoring_over_a_target_brings_xattrs_in_line_and_a_bare_overwrite_means_always() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"with an xattr").unwrap();
    set_xattr(&src.join("d/f"), "user.kept", b"as backed up");
    env.init(&[]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("t");
    restore(&env, &target, &[]);
    let r = Env::restored(&target, &src);
    set_xattr(&r.join("d/f"), "user.planted", b"not in the snapshot");
    set_xattr(&r.join("d/f"), "user.kept", b"changed");
    set_xattr(&r.join("d"), "user.planted", b"not in the snapshot");
    let again = restore(&env, &target, &["--overwrite", "if-changed"]);
    assert_eq!(n(&again, "bytes_written"), 0, "{again}");
    assert_eq!(snapshot_of(&r), snapshot_of(&src));
    assert_eq!(xattr::get(r.join("d/f"), "user.planted").unwrap(), None);
    assert_eq!(xattr::get(r.join("d"), "user.planted").unwrap(), None);

    fs::write(r.join("d/f"), b"changed here").unwrap();
    let t = target.to_str().unwrap();
    env.ok(&["restore", "--overwrite", "latest", "--target", t]);
    assert_eq!(snapshot_of(&r), snapshot_of(&src));
    // A word that is not a snapshot is still refused, naming the snapshot.
    let out = env.run(&["restore", "--overwrite", "nosuch", "--target", t]);
    assert_ne!(out.status.code(), Some(0));
}

/// The data blobs whose places the index held, from the line `-v` prints for the last
/// index loaded (restore and dump load trees first, then what they read).
fn placed(env: &Env, args: &[&str]) -> u64 {
    let out = env.run(&[&["-v"], args].concat());
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .rfind(|l| l.contains("index: "))
        .unwrap_or_else(|| panic!("no index line in {err}"));
    let n = line
        .split("index: ")
        .nth(1)
        .and_then(|t| t.split(' ').next());
    n.and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable index line {line:?}"))
}

/// A restore or dump of a few files places those files' blobs only, and commands that
/// read no file (ls, find, diff, versions) place none: their memory follows what they
/// read, not how much the repository holds (issue 28). What they write is still whole.
#[test]
fn a_restore_of_one_file_places_only_the_blobs_it_reads() {
    let env = Env::new();
    let src = backed_up(&env);
    let s = src.to_str().unwrap();
    let everything = placed(&env, &["check"]);
    assert!(
        everything > 20,
        "{everything} blobs: the big file alone has more"
    );

    let leaf = src.join("sub/deeper/leaf");
    let one = env.path("one");
    let include = leaf.to_str().unwrap();
    let args = ["restore", "latest", "--include", include, "--target"];
    assert_eq!(
        placed(&env, &[&args[..], &[one.to_str().unwrap()]].concat()),
        1
    );
    let back = fs::read(Env::restored(&one, &leaf)).unwrap();
    assert_eq!(back, fs::read(&leaf).unwrap());

    let sub = format!("{s}/sub");
    let tar = env.path("sub.tar");
    let out = env.run(&["-v", "dump", "latest", &sub, "--archive", "tar"]);
    assert_ok(&out);
    fs::write(&tar, &out.stdout).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("index: 13 data blobs"),
        "12 small files and leaf: {err}"
    );
    let listed = std::process::Command::new("tar")
        .arg("tf")
        .arg(&tar)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 15);
    assert_eq!(placed(&env, &["dump", "latest", include]), 1);

    let whole = env.path("whole");
    let all = placed(
        &env,
        &["restore", "latest", "--target", whole.to_str().unwrap()],
    );
    assert_eq!(all, everything);
    assert_eq!(snapshot_of(&Env::restored(&whole, &src)), snapshot_of(&src));
    for cmd in [
        &["ls", "latest"][..],
        &["find", "leaf"],
        &["versions", include],
    ] {
        assert_eq!(placed(&env, cmd), 0, "{cmd:?}");
    }
}
