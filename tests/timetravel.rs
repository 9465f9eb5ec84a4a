//! Time travel through the binary: `--at` in every form that names a fixed instant, time
//! zones, versions, diff and find, on snapshots with controlled times.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::Env;

/// Four snapshots of one host in November 2020 (far enough back for any clock), one of
/// another host:
/// S1 11-01 10:00Z: thesis/main.tex "v1", thesis/notes.txt, other/a.txt, other/x (file)
/// S2 11-02 10:00Z: + thesis/fig.png
/// S3 11-03 23:30Z: main.tex "v2", notes.txt removed, a.txt chmod 600, other/x a directory
/// S4 11-04 12:00Z: main.tex "v1" again
/// S5 11-05 12:00Z: host "elsewhere"
struct History {
    env: Env,
    src: PathBuf,
    ids: Vec<String>,
}

fn history() -> History {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let w = |p: &str, c: &str| {
        let p = src.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, c).unwrap();
    };
    w("thesis/main.tex", "v1");
    w("thesis/notes.txt", "notes");
    w("other/a.txt", "a");
    w("other/x", "a file for now");
    for d in 0..10 {
        w(&format!("big/d{d}/f"), "unchanged");
    }
    let mut ids = Vec::new();
    let mut backup = |time: &str, extra: &[&str]| {
        let mut args = vec!["--time", time, src.to_str().unwrap()];
        args.extend_from_slice(extra);
        let v = env.backup_json(&args);
        ids.push(v["snapshot"].as_str().unwrap().to_string());
    };
    backup("2020-11-01T10:00:00Z", &[]);
    w("thesis/fig.png", "png");
    backup("2020-11-02T10:00:00Z", &[]);
    w("thesis/main.tex", "v2");
    fs::remove_file(src.join("thesis/notes.txt")).unwrap();
    fs::set_permissions(src.join("other/a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(src.join("other/x")).unwrap();
    w("other/x/y", "now a directory");
    backup("2020-11-03T23:30:00Z", &[]);
    w("thesis/main.tex", "v1");
    backup("2020-11-04T12:00:00Z", &[]);
    backup("2020-11-05T12:00:00Z", &["--host", "elsewhere"]);
    History { env, src, ids }
}

impl History {
    fn p(&self, rel: &str) -> String {
        self.src.join(rel).to_str().unwrap().to_string()
    }

    /// Runs with a time zone (a POSIX rule: no tz database needed); returns
    /// (exit code, stdout, stderr).
    fn tz(&self, tz: &str, args: &[&str]) -> (i32, String, String) {
        let out = self.env.cmd().env("TZ", tz).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Which snapshot `--at spec` chooses, by index into `ids`.
    fn chosen(&self, tz: &str, spec: &str, extra: &[&str]) -> usize {
        let mut args = vec!["ls", "--at", spec];
        args.extend_from_slice(extra);
        let (code, _, err) = self.tz(tz, &args);
        assert_eq!(code, 0, "--at {spec}: {err}");
        self.ids
            .iter()
            .position(|id| err.contains(&format!("snapshot {}", &id[..8])))
            .unwrap_or_else(|| panic!("--at {spec} chose no known snapshot: {err}"))
    }
}

#[test]
fn at_selects_the_newest_snapshot_at_or_before_the_time() {
    let h = history();
    let utc = "UTC0";
    assert_eq!(
        h.chosen(utc, "2020-11-02", &[]),
        1,
        "a bare day means its end"
    );
    assert_eq!(
        h.chosen(utc, "2020-11-02T10:00:00Z", &[]),
        1,
        "exactly on S2"
    );
    assert_eq!(h.chosen(utc, "2020-11-02T09:59:59Z", &[]), 0);
    assert_eq!(h.chosen(utc, "2020-11-03 23:29", &[]), 1);
    assert_eq!(h.chosen(utc, "2020-11-03 23:30", &[]), 2);
    assert_eq!(h.chosen(utc, "now", &[]), 3, "this host by default");
    assert_eq!(h.chosen(utc, "now", &["--host", "elsewhere"]), 4);
    assert_eq!(h.chosen(utc, "2 weeks ago", &[]), 3);
    // The end of 11-03 in New York (UTC-5) is after S3; in Tokyo (UTC+9) before it.
    assert_eq!(h.chosen("EST5EDT,M3.2.0,M11.1.0", "2020-11-03", &[]), 2);
    assert_eq!(h.chosen("JST-9", "2020-11-03", &[]), 1);
    // Local unless an offset is given: 11-03 20:00 in Tokyo is 11:00Z, before S3.
    assert_eq!(h.chosen("JST-9", "2020-11-03T20:00", &[]), 1);
    assert_eq!(h.chosen("JST-9", "2020-11-03T23:45:00Z", &[]), 2);

    let (code, _, err) = h.tz(utc, &["ls", "--at", "2020-10-31"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no snapshot at or before") && err.contains(&h.ids[0][..8]),
        "names the oldest: {err}"
    );
    let (code, _, err) = h.tz(utc, &["ls", "--at", "the day after tomorrow"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = h.tz(utc, &["ls", "latest", &h.p("thesis"), "--at", "now"]);
    assert_eq!(code, 2, "a snapshot and --at together are ambiguous: {err}");
}

#[test]
fn at_works_for_ls_dump_and_restore() {
    let h = history();
    let (code, out, _) = h.tz("UTC0", &["ls", "--at", "2020-11-02", &h.p("thesis")]);
    assert_eq!(code, 0);
    assert!(
        out.contains("fig.png") && out.contains("notes.txt"),
        "{out}"
    );
    let (_, out, _) = h.tz(
        "UTC0",
        &["dump", "--at", "2020-11-04T00:00Z", &h.p("thesis/main.tex")],
    );
    assert_eq!(out, "v2");
    assert_eq!(
        h.env.ok(&["dump", &h.ids[0][..8], &h.p("thesis/main.tex")]),
        "v1"
    );

    let target = h.env.path("r");
    let (code, _, err) = h.tz(
        "UTC0",
        &[
            "restore",
            "--at",
            "2020-11-02T12:00",
            "--include",
            &h.p("thesis"),
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let r = |rel: &str| Env::restored(&target, &h.src.join(rel));
    assert_eq!(fs::read_to_string(r("thesis/main.tex")).unwrap(), "v1");
    assert!(r("thesis/fig.png").exists());
    assert!(!r("other").exists(), "only the included path");
}

#[test]
fn versions_collapse_identical_consecutive_contents() {
    let h = history();
    let v: serde_json::Value =
        serde_json::from_str(&h.env.ok(&["versions", "--json", &h.p("thesis/main.tex")])).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3, "v1 (S1-S2), v2 (S3), v1 again (S4): {v}");
    assert_eq!(rows[0]["snapshots"], 2);
    assert_eq!(rows[0]["first_snapshot"], h.ids[0].as_str());
    assert_eq!(rows[0]["last_snapshot"], h.ids[1].as_str());
    assert_eq!(rows[1]["first_snapshot"], h.ids[2].as_str());
    assert_eq!(
        rows[0]["content_id"], rows[2]["content_id"],
        "same content, same id"
    );
    assert_ne!(rows[0]["content_id"], rows[1]["content_id"]);
    assert_eq!(rows[1]["size"], 2);

    // Directories too; --until cuts the history.
    let v: serde_json::Value = serde_json::from_str(&h.env.ok(&[
        "versions",
        "--json",
        "--until",
        "2020-11-02",
        &h.p("thesis"),
    ]))
    .unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    // The other host's history is separate.
    let v: serde_json::Value = serde_json::from_str(&h.env.ok(&[
        "versions",
        "--json",
        "--host",
        "elsewhere",
        &h.p("thesis/main.tex"),
    ]))
    .unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    let out = h.env.run(&["versions", &h.p("thesis/never.tex")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in no snapshot"));
}

#[test]
fn diff_classifies_every_change_and_skips_shared_trees() {
    let h = history();
    let v: serde_json::Value =
        serde_json::from_str(
            &h.env
                .ok(&["diff", "--json", &h.ids[0][..8], &h.ids[2][..8]]),
        )
        .unwrap();
    let change = |rel: &str| -> String {
        let path = h.p(rel);
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["path"] == path.as_str())
            .map(|c| c["change"].as_str().unwrap().to_string())
            .unwrap_or_else(|| "none".into())
    };
    assert_eq!(change("thesis/main.tex"), "modified");
    assert_eq!(change("thesis/notes.txt"), "removed");
    assert_eq!(change("thesis/fig.png"), "added");
    assert_eq!(change("other/a.txt"), "metadata");
    assert_eq!(change("other/x"), "type");
    assert_eq!(change("other/x/y"), "added");
    assert_eq!(change("big/d0/f"), "none");
    assert_eq!(v["stats"]["added"], 2);
    assert_eq!(v["stats"]["removed"], 1);

    // S1 -> S2 touched only thesis/: the big/ subtrees are never read.
    let v: serde_json::Value =
        serde_json::from_str(
            &h.env
                .ok(&["diff", "--json", &h.ids[0][..8], &h.ids[1][..8]]),
        )
        .unwrap();
    assert_eq!(v["changes"].as_array().unwrap().len(), 1, "{v}");
    let depth = h.src.join("thesis").components().count() as u64;
    assert!(
        v["stats"]["trees_read"].as_u64().unwrap() <= 2 * depth,
        "read trees it did not need: {v}"
    );

    // By time, and the human form.
    let (code, out, err) = h.tz("UTC0", &["diff", "--at", "2020-11-03", "--at", "now"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("M  {}", h.p("thesis/main.tex"))),
        "{out}"
    );
    assert!(out.contains("1 modified"), "{out}");
    assert_eq!(h.env.run(&["diff", "latest"]).status.code(), Some(2));
}

#[test]
fn find_groups_matches_by_snapshot() {
    let h = history();
    let v: serde_json::Value =
        serde_json::from_str(&h.env.ok(&["find", "--json", "*.tex"])).unwrap();
    let groups = v.as_array().unwrap();
    assert_eq!(groups.len(), 5, "every snapshot holds main.tex");
    assert_eq!(
        groups[0]["matches"][0]["path"],
        h.p("thesis/main.tex").as_str()
    );

    let v: serde_json::Value = serde_json::from_str(&h.env.ok(&[
        "find",
        "--json",
        "fig.*",
        "--path",
        &h.p("thesis"),
        "--host",
        &vault::repo::repository::hostname(),
    ]))
    .unwrap();
    let snaps: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(snaps, vec![&h.ids[1], &h.ids[2], &h.ids[3]]);

    // A pattern with a slash matches whole paths.
    let v: serde_json::Value =
        serde_json::from_str(&h.env.ok(&["find", "--json", "**/other/x/*"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3, "S3, S4, S5 hold other/x/y");
    let out = h.env.ok(&["find", "nothing-matches-*"]);
    assert!(out.contains("0 match(es)"), "{out}");
}
