//! `vault schedule`: systemd timers (or crontab lines) that run a profile every night.
//! The timer is persistent (a machine that was off catches up at boot) and randomly
//! delayed, so many machines do not hit one repository at the same second.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use super::{Global, ScheduleCommand};
use crate::error::{VaultError, exit};

fn unit_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d);
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/etc/systemd/system"));
    }
    dirs::config_dir()
        .map(|d| d.join("systemd").join("user"))
        .ok_or_else(|| anyhow!("no XDG config directory: give --unit-dir"))
}

fn parse_at(at: &str) -> Result<(u8, u8)> {
    let bad = || VaultError::Usage(format!("--at {at:?}: give HH:MM, e.g. 02:30"));
    let (h, m) = at.split_once(':').ok_or_else(bad)?;
    let (h, m): (u8, u8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad().into());
    }
    Ok((h, m))
}

/// The command the scheduler runs: this binary, the config in use, the profile.
fn command_line(g: &Global, profile: &str) -> Result<String> {
    let exe = std::env::current_exe().context("finding the vault binary")?;
    let mut cmd = format!("{} run {profile}", exe.display());
    if let Some(c) = &g.config {
        cmd = format!(
            "{} --config {} run {profile}",
            exe.display(),
            std::path::absolute(c)?.display()
        );
    }
    Ok(cmd)
}

/// What a schedule command did, printed as text or `--json`.
#[derive(Serialize, Default)]
struct Outcome {
    /// Files written (path, contents) or removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    written: Vec<Written>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    removed: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crontab: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    timers: Vec<Timer>,
    /// The command to run next, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    then: Option<String>,
}

#[derive(Serialize)]
struct Written {
    path: PathBuf,
    contents: String,
}

#[derive(Serialize)]
struct Timer {
    profile: String,
    on_calendar: String,
    path: PathBuf,
}

pub fn schedule(g: &Global, s: ScheduleCommand) -> Result<i32> {
    let outcome = match s {
        ScheduleCommand::Install {
            profile,
            at,
            cron,
            unit_dir: dir,
        } => {
            super::profile::profile(g, &profile)?; // the profile must exist
            let (h, m) = parse_at(&at)?;
            let cmd = command_line(g, &profile)?;
            if cron {
                Outcome {
                    crontab: Some(format!("{m} {h} * * * {cmd}")),
                    ..Outcome::default()
                }
            } else {
                install(&unit_dir(dir)?, &profile, h, m, &cmd)?
            }
        }
        ScheduleCommand::List { unit_dir: dir } => Outcome {
            timers: list(&unit_dir(dir)?)?,
            ..Outcome::default()
        },
        ScheduleCommand::Remove {
            profile,
            unit_dir: dir,
        } => remove(&unit_dir(dir)?, &profile)?,
    };
    if g.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else if !g.quiet || outcome.crontab.is_some() {
        print_text(&outcome);
    }
    Ok(exit::OK)
}

fn print_text(o: &Outcome) {
    for w in &o.written {
        println!("wrote {}:\n{}", w.path.display(), w.contents);
    }
    for p in &o.removed {
        println!("removed {}", p.display());
    }
    if let Some(line) = &o.crontab {
        println!("{line}");
    }
    for t in &o.timers {
        println!("{:<16}  {}", t.profile, t.on_calendar);
    }
    if let Some(then) = &o.then {
        println!("then: {then}");
    }
}

fn remove(dir: &Path, profile: &str) -> Result<Outcome> {
    let mut removed = Vec::new();
    for ext in ["timer", "service"] {
        let p = dir.join(format!("vault-{profile}.{ext}"));
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("{}", p.display()))?;
            removed.push(p);
        }
    }
    if removed.is_empty() {
        return Err(anyhow!(
            "no vault timer for profile {profile} in {}",
            dir.display()
        ));
    }
    Ok(Outcome {
        removed,
        then: Some(format!("systemctl {}daemon-reload", user_flag(dir))),
        ..Outcome::default()
    })
}

fn user_flag(dir: &Path) -> &'static str {
    if dir.starts_with("/etc") {
        ""
    } else {
        "--user "
    }
}

fn install(dir: &Path, profile: &str, h: u8, m: u8, cmd: &str) -> Result<Outcome> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let service = format!(
        "[Unit]\nDescription=vault backup routine for profile {profile}\n\
         Wants=network-online.target\nAfter=network-online.target\n\n\
         [Service]\nType=oneshot\nExecStart={cmd}\nNice=10\nIOSchedulingClass=idle\n"
    );
    let timer = format!(
        "[Unit]\nDescription=Run vault profile {profile} every day\n\n\
         [Timer]\nOnCalendar=*-*-* {h:02}:{m:02}:00\nPersistent=true\nRandomizedDelaySec=15min\n\n\
         [Install]\nWantedBy=timers.target\n"
    );
    let mut written = Vec::new();
    for (ext, contents) in [("service", service), ("timer", timer)] {
        let path = dir.join(format!("vault-{profile}.{ext}"));
        std::fs::write(&path, &contents).with_context(|| format!("{}", path.display()))?;
        written.push(Written { path, contents });
    }
    Ok(Outcome {
        written,
        then: Some(format!(
            "systemctl {u}daemon-reload && systemctl {u}enable --now vault-{profile}.timer",
            u = user_flag(dir)
        )),
        ..Outcome::default()
    })
}

fn list(dir: &Path) -> Result<Vec<Timer>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(profile) = name
            .strip_prefix("vault-")
            .and_then(|n| n.strip_suffix(".timer"))
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let when = text
                .lines()
                .find_map(|l| l.strip_prefix("OnCalendar="))
                .unwrap_or("?")
                .to_string();
            out.push(Timer {
                profile: profile.to_string(),
                on_calendar: when,
                path: e.path(),
            });
        }
    }
    out.sort_by(|a, b| a.profile.cmp(&b.profile));
    Ok(out)
}
