//! Claims of repo-format/THREAT-MODEL.md that no other test shows: what the storage
//! provider can read in a repository, and what an old key still opens.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::{Env, PASSWORD};
use vault::format::Id;

/// Whether `needle` occurs anywhere in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every stored path, relative to the repository, with `/` separators.
fn stored_paths(repo: &Path) -> Vec<String> {
    common::walkdir(repo)
        .iter()
        .map(|p| p.strip_prefix(repo).unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The names the storage provider sees are the format's fixed names or ids, nothing
/// chosen by the user.
fn is_layout_name(path: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match path.split('/').collect::<Vec<_>>()[..] {
        ["config"] => true,
        [
            "keys" | "index" | "snapshots" | "manifests" | "marks" | "revivals" | "deletions"
            | "format",
            id,
        ] => hex(id, 64),
        ["data", fan, id] => hex(fan, 2) && hex(id, 64) && id.starts_with(fan),
        _ => false,
    }
}

#[test]
fn storage_holds_no_names_contents_hashes_or_metadata() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let dir = src.join("medical-records-mrk1");
    fs::create_dir_all(&dir).unwrap();
    // Highly compressible, so that anything stored in the clear would stay visible.
    let content = b"CONFIDENTIAL PAYROLL mrk2 ".repeat(4000);
    fs::write(dir.join("salaries-mrk3.txt"), &content).unwrap();
    symlink("/target-of-link-mrk4", dir.join("link")).unwrap();
    let out = env
        .cmd()
        .args(["-vvv", "backup", "--host", "host-mrk5", "--tag", "tag-mrk6"])
        .arg(&src)
        .output()
        .unwrap();
    common::assert_ok(&out);
    // The password is not in anything vault printed, even at the most verbose level.
    let printed = [out.stdout, out.stderr].concat();
    assert!(!contains(&printed, PASSWORD.as_bytes()), "password printed");

    let plain_hash = Id::of_stored(&content);
    let markers: Vec<Vec<u8>> = [
        "mrk1",
        "mrk2",
        "mrk3",
        "mrk4",
        "mrk5",
        "tag-mrk6",
        PASSWORD,
        &plain_hash.to_hex(),
        src.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([plain_hash.0.to_vec(), content[..64].to_vec()])
    .collect();
    let repo = env.repo();
    let paths = stored_paths(&repo);
    assert!(paths.len() >= 6, "a repository was written: {paths:?}");
    for path in &paths {
        assert!(is_layout_name(path), "{path}: not an id or a fixed name");
        let bytes = fs::read(repo.join(path)).unwrap();
        for m in &markers {
            assert!(
                !contains(&bytes, m),
                "{path} holds {:?} in the clear",
                String::from_utf8_lossy(m)
            );
        }
    }
}

#[test]
fn a_copy_of_a_replaced_key_file_still_opens_with_its_old_password() {
    let env = Env::new();
    env.init(&[]);
    env.ok(&["backup", env.source_with_file(b"kept").to_str().unwrap()]);
    let keys = env.repo().join("keys");
    let old = fs::read_dir(&keys).unwrap().next().unwrap().unwrap().path();
    let stolen = fs::read(&old).unwrap();
    fs::write(env.path("pw2"), "a new password").unwrap();
    env.ok(&[
        "key",
        "passwd",
        "--new-password-file",
        env.path("pw2").to_str().unwrap(),
    ]);
    // The old password no longer opens the repository as it is stored...
    env.expect(&["snapshots"], 12);
    // ...but whoever kept the old key file can still unwrap the unchanged master key:
    // a password change is not a revocation.
    fs::write(keys.join(Id::of_stored(&stolen).to_hex()), &stolen).unwrap();
    let listed = env.json(&["snapshots"], 0);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}
