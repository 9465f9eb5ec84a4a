//! Running unattended: verbosity levels, progress only on a terminal, machine-readable
//! schedule output, and the export-age warning of `status`.

mod common;

use std::fs;

use common::{Env, bytes};

fn stderr_of(env: &Env, args: &[&str]) -> String {
    let out = env.run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn verbosity_levels_show_changes_then_everything() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/a"), b"a").unwrap();
    fs::write(src.join("b"), b"b").unwrap();
    let s = src.to_str().unwrap();

    assert_eq!(
        stderr_of(&env, &["backup", s]),
        "",
        "silent when all is well"
    );
    fs::write(src.join("b"), b"bb").unwrap();
    fs::write(src.join("c"), b"c").unwrap();
    let v = stderr_of(&env, &["backup", "-v", s]);
    assert!(v.contains(&format!("modified {s}/b")), "{v}");
    assert!(v.contains(&format!("new {s}/c")), "{v}");
    assert!(!v.contains("unchanged") && !v.contains("write "), "{v}");

    fs::write(src.join("c"), b"cc").unwrap();
    let vv = stderr_of(&env, &["backup", "-vv", s]);
    assert!(vv.contains(&format!("unchanged {s}/d/a")), "{vv}");
    assert!(vv.contains("write ") && vv.contains("/snapshots/"), "{vv}");
    assert!(!vv.contains("read "), "reads only at -vvv: {vv}");
    let vvv = stderr_of(&env, &["snapshots", "-vvv"]);
    assert!(vvv.contains("read ") && vvv.contains("/keys/"), "{vvv}");
    assert!(!vvv.contains(common::PASSWORD));

    let target = env.path("r");
    let r = stderr_of(
        &env,
        &[
            "restore",
            "latest",
            "-v",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert!(r.contains(&format!("restored {s}/d/a")), "{r}");

    // --quiet and -v contradict each other: a usage error, nothing done.
    let out = env.run(&["backup", "-q", "-v", s]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn progress_is_drawn_on_a_terminal_only() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..200 {
        fs::write(src.join(format!("f{i}")), bytes(i, 20_000)).unwrap();
    }
    // Without a terminal: no control characters at all (a cron mail stays readable).
    let out = env.run(&["backup", src.to_str().unwrap()]);
    assert!(out.status.success());
    let plain = [out.stdout, out.stderr].concat();
    assert!(
        !plain.iter().any(|b| *b == 0x1b || *b == b'\r'),
        "{}",
        String::from_utf8_lossy(&plain)
    );
    // On a terminal (script(1) gives it a pseudo-terminal): the bar is drawn.
    fs::write(src.join("f0"), b"changed").unwrap();
    let Some(shown) = common::on_terminal(&env, &["backup", src.to_str().unwrap()], &[]) else {
        return;
    };
    assert!(shown.contains('\u{1b}'), "no bar drawn: {shown:?}");
    assert!(shown.contains("snapshot "), "{shown:?}");
}

#[test]
fn schedule_prints_json_on_request() {
    let env = Env::new();
    let config = env.path("vault.toml");
    fs::write(
        &config,
        format!(
            "[profiles.nightly]\nrepository = \"{}\"\nsources = [\"/etc\"]\n",
            env.repo().display()
        ),
    )
    .unwrap();
    let units = env.path("units");
    let (c, u) = (config.to_str().unwrap(), units.to_str().unwrap());
    let installed = env.json(
        &[
            "--config",
            c,
            "schedule",
            "install",
            "nightly",
            "--at",
            "03:15",
            "--unit-dir",
            u,
        ],
        0,
    );
    let written = installed["written"].as_array().unwrap();
    assert_eq!(written.len(), 2, "{installed}");
    for w in written {
        let path = w["path"].as_str().unwrap();
        assert_eq!(
            fs::read_to_string(path).unwrap(),
            w["contents"].as_str().unwrap()
        );
    }
    assert!(
        installed["then"]
            .as_str()
            .unwrap()
            .contains("enable --now vault-nightly.timer")
    );
    let cron = env.json(
        &[
            "--config", c, "schedule", "install", "nightly", "--at", "03:15", "--cron",
        ],
        0,
    );
    assert!(
        cron["crontab"].as_str().unwrap().starts_with("15 3 * * * "),
        "{cron}"
    );
    let list = env.json(&["--config", c, "schedule", "list", "--unit-dir", u], 0);
    assert_eq!(list["timers"][0]["profile"], "nightly", "{list}");
    assert_eq!(list["timers"][0]["on_calendar"], "*-*-* 03:15:00", "{list}");
    let removed = env.json(
        &[
            "--config",
            c,
            "schedule",
            "remove",
            "nightly",
            "--unit-dir",
            u,
        ],
        0,
    );
    assert_eq!(removed["removed"].as_array().unwrap().len(), 2, "{removed}");
    let list = env.json(&["--config", c, "schedule", "list", "--unit-dir", u], 0);
    assert!(list.get("timers").is_none(), "{list}");
}

#[test]
fn status_warns_when_the_offline_export_is_missing_or_old() {
    let env = Env::new();
    env.init(&[]);
    let src = env.source_with_file(b"data");
    env.ok(&["backup", "-q", src.to_str().unwrap()]);
    let both = |args: &[&str]| {
        let out = env.run(args);
        assert!(out.status.success());
        String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned()
    };
    let status = both(&["status"]);
    assert!(status.contains("no offline export yet"), "{status}");
    assert!(status.contains("no offline export on record"), "{status}");

    let disk = env.path("archive");
    env.ok(&["export", "-q", disk.to_str().unwrap()]);
    let fresh = both(&["status"]);
    assert!(fresh.contains("newest offline export: "), "{fresh}");
    assert!(
        fresh.contains("0 days old") && !fresh.contains("refresh it"),
        "{fresh}"
    );
    // The same export judged against a zero maximum age is overdue.
    let overdue = both(&["status", "--export-max-age", "0d"]);
    assert!(
        overdue.contains("is 0 days old: refresh it with `vault export")
            && overdue.contains(disk.to_str().unwrap()),
        "{overdue}"
    );
}
