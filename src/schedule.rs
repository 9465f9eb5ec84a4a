//! Scheduling a profile's routine: systemd timers (or crontab lines) that run `vault run
//! PROFILE` every night. The timer is persistent (a machine that was off catches up at
//! boot) and randomly delayed, so many machines do not hit one repository at the same
//! second. What goes into a unit or a crontab line is quoted here, by the rules of
//! systemd, cron and the shell, so that no profile name or path becomes code.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use crate::error::VaultError;

/// Where units go: `given`, else the system's as root, else the user's.
pub fn unit_dir(given: Option<PathBuf>) -> Result<PathBuf> {
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

/// A time of day, HH:MM.
pub fn parse_at(at: &str) -> Result<(u8, u8)> {
    let bad = || VaultError::Usage(format!("--at {at:?}: give HH:MM, e.g. 02:30"));
    let (h, m) = at.split_once(':').ok_or_else(bad)?;
    let (h, m): (u8, u8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad().into());
    }
    Ok((h, m))
}

/// Profile names end up in unit file names, unit text and shell lines: only characters
/// that mean nothing to systemd, cron or a shell are accepted.
pub fn check_profile_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        return Ok(());
    }
    Err(VaultError::Usage(format!(
        "profile name {name:?} cannot be scheduled: use 1 to 64 ASCII letters, digits, \
         '-', '_' or '.', not starting with '-' or '.' (rename the profile in the config file)"
    ))
    .into())
}

/// The command the scheduler runs, one argument per item: this binary, the config file
/// given (else the default one is found at run time), the profile.
pub fn command_line(config: Option<&Path>, profile: &str) -> Result<Vec<String>> {
    let exe = std::env::current_exe().context("finding the vault binary")?;
    let mut argv = vec![text_arg(&exe, "the vault binary's path")?];
    if let Some(c) = config {
        argv.push("--config".into());
        argv.push(text_arg(&std::path::absolute(c)?, "--config")?);
    }
    argv.extend(["run".to_string(), profile.to_string()]);
    Ok(argv)
}

/// A path as it can be written into a unit or crontab line: UTF-8, no control character
/// (a newline would end the line, whatever the quoting).
fn text_arg(p: &Path, what: &str) -> Result<String> {
    match p.to_str() {
        Some(s) if !s.chars().any(char::is_control) => Ok(s.to_string()),
        _ => Err(VaultError::Usage(format!(
            "{what} {p:?} cannot be scheduled: it is not UTF-8 or holds a control character; \
             move it to a plain path"
        ))
        .into()),
    }
}

/// Characters no systemd, cron or shell rule gives a meaning to in the middle of a word.
fn plain(arg: &str) -> bool {
    !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:=@+,-".contains(&b))
}

/// The ExecStart= value for `argv`: each argument double-quoted with C escapes when it
/// is not plain, `%` (specifiers) doubled everywhere and `$` (variable expansion) in the
/// arguments. systemd expands no variable in the program's path, and refuses one
/// holding a quote or backslash, so such a path is refused here instead.
pub fn exec_start(argv: &[String]) -> Result<String> {
    let (exe, args) = argv.split_first().ok_or_else(|| anyhow!("no command"))?;
    if exe.contains(['"', '\'', '\\', '$']) {
        return Err(VaultError::Usage(format!(
            "the vault binary's path {exe:?} holds a quote, backslash or '$', which systemd \
             cannot run: install vault in another directory, or use --cron"
        ))
        .into());
    }
    let mut line = systemd_quote(exe, false);
    for a in args {
        line.push(' ');
        line.push_str(&systemd_quote(a, true));
    }
    Ok(line)
}

fn systemd_quote(arg: &str, dollars: bool) -> String {
    if plain(arg) {
        return arg.to_string();
    }
    let mut q = String::from("\"");
    for c in arg.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            '%' => q.push_str("%%"),
            '$' if dollars => q.push_str("$$"),
            _ => q.push(c),
        }
    }
    q.push('"');
    q
}

/// One word of a crontab command: single-quoted for `sh -c` when it is not plain. Cron
/// turns an unescaped `%` into a newline, so each `%` goes outside the quotes as `\%`
/// (cron drops the backslash, the shell then sees a bare `%`).
fn cron_quote(arg: &str) -> String {
    if plain(arg) {
        return arg.to_string();
    }
    let mut q = String::from("'");
    for c in arg.chars() {
        match c {
            '\'' => q.push_str("'\\''"),
            '%' => q.push_str("'\\%'"),
            _ => q.push(c),
        }
    }
    q.push('\'');
    q
}

pub fn crontab_command(argv: &[String]) -> String {
    argv.iter()
        .map(|a| cron_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What scheduling did.
#[derive(Serialize, Default)]
pub struct Outcome {
    /// Files written (path, contents) or removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub written: Vec<Written>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crontab: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timers: Vec<Timer>,
    /// The command to run next, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then: Option<String>,
}

#[derive(Serialize)]
pub struct Written {
    pub path: PathBuf,
    pub contents: String,
}

#[derive(Serialize)]
pub struct Timer {
    pub profile: String,
    pub on_calendar: String,
    pub path: PathBuf,
}

/// Removes `profile`'s service and timer from `dir`.
pub fn remove(dir: &Path, profile: &str) -> Result<Outcome> {
    check_profile_name(profile)?;
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

/// A crontab line running `profile` daily at `at` (HH:MM), with the config file `config`.
pub fn crontab(config: Option<&Path>, profile: &str, at: &str) -> Result<Outcome> {
    check_profile_name(profile)?;
    let (h, m) = parse_at(at)?;
    let argv = command_line(config, profile)?;
    Ok(Outcome {
        crontab: Some(format!("{m} {h} * * * {}", crontab_command(&argv))),
        ..Outcome::default()
    })
}

/// Writes a systemd service and timer into `dir` running `profile` daily at `at` (HH:MM),
/// with the config file `config`.
pub fn install(dir: &Path, config: Option<&Path>, profile: &str, at: &str) -> Result<Outcome> {
    check_profile_name(profile)?;
    let (h, m) = parse_at(at)?;
    let cmd = exec_start(&command_line(config, profile)?)?;
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

/// The vault timers in `dir`, by profile.
pub fn list(dir: &Path) -> Result<Vec<Timer>> {
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
