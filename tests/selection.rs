//! Backup's selection options through the binary: lists of paths (--files-from and its
//! verbatim and raw forms), case-insensitive excludes, the size limit, tag files, ignore
//! files inherited down the tree, the same from a profile, and bad input that must stop
//! the backup before anything is written.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Output, Stdio};

use common::*;

/// Every entry under `root`, relative, directories with a trailing `/`, sorted by bytes.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let mut rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            if e.file_type().unwrap().is_dir() {
                rel.push(b'/');
                out.push(rel);
                walk(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    // Non-UTF-8 bytes shown escaped, so that a test can name them exactly.
    out.iter().map(|b| b.escape_ascii().to_string()).collect()
}

/// The latest snapshot restored into a fresh directory: the tree under `src` there.
fn restored_tree(env: &Env, name: &str, src: &Path) -> Vec<String> {
    let target = env.restore_verified(name);
    tree(&Env::restored(&target, src))
}

/// `vault ls latest` of the snapshot, as paths relative to `src` (directories with a
/// trailing `/`), `src` itself and its ancestors left out.
fn ls_tree(env: &Env, src: &Path) -> Vec<String> {
    let lines = env.ok(&["--json", "ls", "latest"]);
    let prefix = format!("{}/", src.display());
    let mut out: Vec<String> = lines
        .lines()
        .filter_map(|l| {
            let n: serde_json::Value =
                serde_json::from_str(l).expect("ls --json prints JSON lines");
            let path = n["path"].as_str()?.to_string();
            let rel = path.strip_prefix(&prefix)?;
            let dir = n["type"].as_str() == Some("dir");
            Some(format!("{rel}{}", if dir { "/" } else { "" }))
        })
        .collect();
    out.sort();
    out
}

fn write(p: &Path, content: impl AsRef<[u8]>) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn run_in(env: &Env, cwd: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut c = env.cmd();
    c.current_dir(cwd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("run vault");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn snapshot_excludes(env: &Env) -> Vec<String> {
    let v = env.json(&["snapshots"], 0);
    let snaps = v.as_array().expect("snapshots --json prints an array");
    let last = snaps.last().expect("a snapshot");
    last["excludes"]
        .as_array()
        .expect("excludes")
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn files_from_lists_comments_globs_verbatim_and_raw_names() {
    let env = Env::new();
    let src = env.path("src");
    for f in [
        "a/x.txt", "a/y.txt", "a/z.md", "b/one", "c/keep", "e/other", "#hash", "f/g h",
    ] {
        write(&src.join(f), f);
    }
    let odd = src.join(std::ffi::OsStr::from_bytes(b"d/\xffname"));
    write(&odd, "not UTF-8");
    // Relative lines are taken from the working directory, as restic does.
    write(
        &env.path("list.txt"),
        "# a comment\n\n  a/*.txt  \r\nc\nmissing\n[bc]/nothing*\n#hash\n",
    );
    write(&env.path("verbatim.txt"), "#hash\nf/g h\n\nalso-missing\n");
    let mut raw = b"d/\xffname\0".to_vec();
    raw.extend_from_slice(b"e/other\0");
    write(&env.path("raw.lst"), &raw);
    env.init(&[]);
    let list = env.path("list.txt");
    let verbatim = env.path("verbatim.txt");
    let out = run_in(
        &env,
        &src,
        &[
            "backup",
            "--files-from",
            list.to_str().unwrap(),
            "--files-from-verbatim",
            verbatim.to_str().unwrap(),
            "--files-from-raw",
            "-",
            "b",
        ],
        &raw,
    );
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("line 5: \"missing\" matches nothing, skipped"),
        "{err}"
    );
    assert!(
        err.contains("\"[bc]/nothing*\" matches nothing, skipped"),
        "{err}"
    );
    assert!(
        err.contains("also-missing does not exist, skipped"),
        "{err}"
    );
    let expected = [
        "#hash",
        "a/",
        "a/x.txt",
        "a/y.txt",
        "b/",
        "b/one",
        "c/",
        "c/keep",
        "d/",
        "d/\\xffname",
        "e/",
        "e/other",
        "f/",
        "f/g h",
    ];
    assert_eq!(restored_tree(&env, "r", &src), expected);
    let v = env.json(&["snapshots"], 0);
    let paths = &v.as_array().unwrap()[0]["paths"];
    assert_eq!(paths.as_array().unwrap().len(), 8, "{paths}");
}

#[test]
fn iexclude_size_limit_and_their_record() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a.ISO"), "x");
    write(&src.join("b.iso"), "x");
    write(&src.join("Keep.Iso"), "x");
    write(&src.join("c.Bak"), "x");
    write(&src.join("d.tmp"), "x");
    write(&src.join("D.TMP"), "x");
    write(&src.join("big"), vec![7u8; 2049]);
    write(&src.join("limit"), vec![7u8; 2048]);
    // Directories are not affected by the size limit, however much they hold.
    write(&src.join("dir/small"), "s");
    for i in 0..40 {
        write(&src.join(format!("dir/sub/f{i:02}")), vec![1u8; 100]);
    }
    write(&env.path("ipatterns"), "# case does not matter\n*.BAK\n");
    env.init(&[]);
    let s = src.to_str().unwrap();
    let ifile = env.path("ipatterns");
    env.ok(&[
        "backup",
        s,
        "--exclude",
        "*.tmp",
        "--iexclude",
        "*.iso",
        "--iexclude",
        "!keep.iso",
        "--iexclude-file",
        ifile.to_str().unwrap(),
        "--exclude-larger-than",
        "2k",
    ]);
    let mut expected = vec![
        "D.TMP".to_string(),
        "Keep.Iso".into(),
        "dir/".into(),
        "dir/small".into(),
        "dir/sub/".into(),
        "limit".into(),
    ];
    expected.extend((0..40).map(|i| format!("dir/sub/f{i:02}")));
    expected.sort();
    assert_eq!(ls_tree(&env, &src), expected);
    assert_eq!(restored_tree(&env, "r", &src), expected);
    assert_eq!(
        snapshot_excludes(&env),
        [
            "*.tmp",
            "--iexclude=*.iso",
            "--iexclude=!keep.iso",
            "--iexclude=*.BAK",
            "--exclude-larger-than=2K"
        ]
    );
}

#[test]
fn exclude_if_present_with_and_without_header() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("tagged/.nobackup"), "");
    write(&src.join("tagged/data"), "d");
    write(&src.join("tagged/sub/deep"), "d");
    write(
        &src.join("cache/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
    );
    write(&src.join("cache/blob"), "b");
    // Not the signature: a cache directory tag must start with it.
    write(&src.join("fake/CACHEDIR.TAG"), "Signature: 0000\n");
    write(&src.join("fake/blob"), "b");
    write(&src.join("hdr/MARK"), "xyz and more");
    write(&src.join("hdr/blob"), "b");
    write(&src.join("hdrbad/MARK"), "abc");
    write(&src.join("hdrbad/blob"), "b");
    write(&src.join("short/MARK"), "xy");
    write(&src.join("short/blob"), "b");
    write(&src.join("plain"), "p");
    env.init(&[]);
    let s = src.to_str().unwrap();
    env.ok(&[
        "backup",
        s,
        "--exclude-if-present",
        ".nobackup",
        "--exclude-if-present",
        "MARK:xyz",
        "--exclude-caches",
    ]);
    let expected = [
        "cache/",
        "cache/CACHEDIR.TAG",
        "fake/",
        "fake/CACHEDIR.TAG",
        "fake/blob",
        "hdr/",
        "hdr/MARK",
        "hdrbad/",
        "hdrbad/MARK",
        "hdrbad/blob",
        "plain",
        "short/",
        "short/MARK",
        "short/blob",
        "tagged/",
        "tagged/.nobackup",
    ];
    assert_eq!(ls_tree(&env, &src), expected);
    assert_eq!(restored_tree(&env, "r", &src), expected);
    assert_eq!(
        snapshot_excludes(&env),
        [
            "--exclude-if-present=.nobackup",
            "--exclude-if-present=MARK:xyz",
            "--exclude-caches"
        ]
    );
}

#[test]
fn ignore_files_nest_and_negate_as_gitignore() {
    let env = Env::new();
    let src = env.path("src");
    write(
        &src.join(".vaultignore"),
        "*.log\nbuild/\n/top-only.txt\n# comment\n",
    );
    write(&src.join("top-only.txt"), "t");
    write(&src.join("a.log"), "l");
    write(&src.join("x.tmp"), "t");
    write(&src.join("build/out"), "o");
    write(&src.join("sub/.vaultignore"), "!keep.log\n*.tmp\n");
    write(&src.join("sub/top-only.txt"), "t");
    write(&src.join("sub/b.log"), "l");
    write(&src.join("sub/keep.log"), "k");
    write(&src.join("sub/build/out"), "o");
    write(&src.join("sub/deeper/keep.log"), "k");
    write(&src.join("sub/deeper/x.tmp"), "t");
    write(&src.join("sub/deeper/y.txt"), "y");
    // A second name: its rules join the directory's, and the deepest file decides.
    write(&src.join("sub/deeper/more/.extraignore"), "keep.log\n");
    write(&src.join("sub/deeper/more/keep.log"), "k");
    write(&src.join("sub/deeper/more/z.txt"), "z");
    // A line that is not a valid pattern is reported and left out, the rest applies.
    write(&src.join("other/.vaultignore"), "{a,b\n*.bin\n");
    write(&src.join("other/x.bin"), "b");
    write(&src.join("other/y.txt"), "y");
    env.init(&[]);
    let s = src.to_str().unwrap();
    let out = env.run(&[
        "backup",
        s,
        "--ignore-file",
        ".vaultignore",
        "--ignore-file",
        ".extraignore",
    ]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains("other/.vaultignore line 1: \"{a,b\" is not a valid pattern"),
        "{}",
        stderr(&out)
    );
    let expected = [
        ".vaultignore",
        "other/",
        "other/.vaultignore",
        "other/y.txt",
        "sub/",
        "sub/.vaultignore",
        "sub/deeper/",
        "sub/deeper/keep.log",
        "sub/deeper/more/",
        "sub/deeper/more/.extraignore",
        "sub/deeper/more/z.txt",
        "sub/deeper/y.txt",
        "sub/keep.log",
        "sub/top-only.txt",
        "x.tmp",
    ];
    assert_eq!(ls_tree(&env, &src), expected);
    assert_eq!(restored_tree(&env, "r", &src), expected);
    assert_eq!(
        snapshot_excludes(&env),
        ["--ignore-file=.vaultignore", "--ignore-file=.extraignore"]
    );

    // A source below an ignore file: the file's rules apply to it too.
    let sub = src.join("sub");
    env.ok(&[
        "backup",
        sub.to_str().unwrap(),
        "--ignore-file",
        ".vaultignore",
    ]);
    assert_eq!(
        ls_tree(&env, &sub),
        [
            ".vaultignore",
            "deeper/",
            "deeper/keep.log",
            "deeper/more/",
            "deeper/more/.extraignore",
            "deeper/more/keep.log",
            "deeper/more/z.txt",
            "deeper/y.txt",
            "keep.log",
            "top-only.txt",
        ]
    );
}

#[test]
fn a_profile_sets_every_selection_option() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a.ISO"), "x");
    write(&src.join("big"), vec![0u8; 5000]);
    write(&src.join("n/.nobackup"), "");
    write(&src.join("n/data"), "d");
    write(&src.join("i/.vaultignore"), "*.o\n");
    write(&src.join("i/x.o"), "o");
    write(&src.join("i/x.c"), "c");
    write(&src.join("e.tmp"), "t");
    write(&src.join("E.BAK"), "b");
    write(&env.path("other/listed"), "l");
    write(&env.path("excl"), "*.tmp\n");
    write(&env.path("iexcl"), "*.bak\n");
    write(
        &env.path("list"),
        format!("{}\n", env.path("other/listed").display()),
    );
    let config = env.path("vault.toml");
    let toml = |size: &str| {
        format!(
            r#"[profiles.p]
sources = ["{src}"]
files-from = ["{list}"]
iexclude = ["*.iso"]
exclude-file = ["{excl}"]
iexclude-file = ["{iexcl}"]
exclude-larger-than = "{size}"
exclude-if-present = [".nobackup"]
ignore-file = [".vaultignore"]
"#,
            src = src.display(),
            list = env.path("list").display(),
            excl = env.path("excl").display(),
            iexcl = env.path("iexcl").display(),
        )
    };
    fs::write(&config, toml("4K")).unwrap();
    env.init(&[]);
    let cfg = config.to_str().unwrap();
    env.ok(&["--config", cfg, "--profile", "p", "backup"]);
    assert_eq!(
        ls_tree(&env, &src),
        ["i/", "i/.vaultignore", "i/x.c", "n/", "n/.nobackup"]
    );
    let target = env.restore_verified("r");
    assert!(Env::restored(&target, &env.path("other/listed")).is_file());

    fs::write(&config, toml("4Q")).unwrap();
    let before = walkdir(&env.repo());
    let out = env.run(&["--config", cfg, "--profile", "p", "backup"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        "vault: profile p: exclude-larger-than: size \"4Q\": unknown unit \"Q\" (use K, M, G or T)"
    );
    assert_eq!(walkdir(&env.repo()), before, "nothing written");
}

/// Every kind of bad input: exit 2, one line naming it, and the repository as it was
/// (no snapshot, no lock, no pack).
#[test]
fn bad_input_writes_nothing() {
    let env = Env::new();
    let src = env.source_with_file("data");
    let s = src.to_str().unwrap();
    env.init(&[]);
    env.ok(&["backup", s]);
    write(&env.path("bad-glob"), "[\n");
    write(&env.path("bad-pattern"), "ok\n{a,b\n");
    write(&env.path("raw-cut"), b"a\0b");
    write(&env.path("raw-empty"), b"a\0\0");
    write(
        &env.path("all-missing"),
        "/nonexistent/one\n/nonexistent/two\n",
    );
    let p = |n: &str| env.path(n).display().to_string();
    let missing = p("no-such-list");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--files-from".into(), missing.clone()],
            format!("--files-from {missing}: cannot read it"),
        ),
        (
            vec!["--files-from-verbatim".into(), missing.clone()],
            format!("--files-from-verbatim {missing}: cannot read it"),
        ),
        (
            vec!["--exclude-file".into(), missing.clone()],
            format!("--exclude-file {missing}: cannot read it"),
        ),
        (
            vec!["--iexclude-file".into(), missing.clone()],
            format!("--iexclude-file {missing}: cannot read it"),
        ),
        (
            vec!["--files-from".into(), p("bad-glob")],
            format!(
                "--files-from {} line 1: \"[\" is not a valid pattern",
                p("bad-glob")
            ),
        ),
        (
            vec!["--iexclude-file".into(), p("bad-pattern")],
            format!(
                "--iexclude-file {} line 2: \"{{a,b\": not a valid pattern",
                p("bad-pattern")
            ),
        ),
        (
            vec!["--iexclude".into(), "{a,b".into()],
            "--iexclude \"{a,b\": not a valid pattern".into(),
        ),
        (
            vec!["--files-from-raw".into(), p("raw-cut")],
            format!(
                "--files-from-raw {}: the last name has no NUL byte",
                p("raw-cut")
            ),
        ),
        (
            vec!["--files-from-raw".into(), p("raw-empty")],
            format!("--files-from-raw {}: an empty name", p("raw-empty")),
        ),
        (
            vec!["--exclude-if-present".into(), ":HEADER".into()],
            "--exclude-if-present \":HEADER\": give a file name".into(),
        ),
        (
            vec!["--ignore-file".into(), "a/b".into()],
            "--ignore-file \"a/b\": give a file name".into(),
        ),
        (
            vec!["--exclude-larger-than".into(), "12X".into()],
            "'--exclude-larger-than <SIZE>': size \"12X\": unknown unit".into(),
        ),
        (
            vec![
                "--files-from".into(),
                "-".into(),
                "--exclude-file".into(),
                "-".into(),
            ],
            "standard input (-) can be read once".into(),
        ),
    ];
    let before = walkdir(&env.repo());
    for (args, says) in cases {
        let mut a = vec!["backup", s];
        a.extend(args.iter().map(String::as_str));
        let out = run_in(&env, env.dir.path(), &a, b"");
        assert_eq!(out.status.code(), Some(2), "{a:?}: {}", stderr(&out));
        let err = stderr(&out);
        let first = err.lines().next().unwrap_or_default();
        assert!(first.contains(&says), "{a:?}: {err}");
        if !args.contains(&"--exclude-larger-than".to_string()) {
            assert_eq!(err.lines().count(), 1, "one line: {err}");
        }
        assert_eq!(
            walkdir(&env.repo()),
            before,
            "{a:?} wrote to the repository"
        );
    }

    // Lists whose every path is missing name nothing to back up.
    let out = env.run(&["backup", "--files-from", &p("all-missing")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("nothing to back up: the --files-from lists name no path that exists"),
        "{}",
        stderr(&out)
    );
    assert_eq!(walkdir(&env.repo()), before);
    let snaps = env.json(&["snapshots"], 0);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
}
