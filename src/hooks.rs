//! What runs around a command, for machines nobody watches: a command before it (a
//! database dump, a mount check) whose failure skips it, one line per run in a log
//! file, and a monitoring hook (a mail or chat command) told the command, its exit code
//! and its message. A hook is often written by someone else, and vault's environment
//! holds the repository password and storage keys: it sees none of them.

use std::path::Path;

/// Appends one line for a run: time, command, exit code, message.
pub fn append_log(path: &Path, command: &str, code: i32, message: &str) -> std::io::Result<()> {
    use std::io::Write;
    let line = format!(
        "{} vault {command} exit {code}{}{message}\n",
        jiff::Timestamp::now(),
        if message.is_empty() { "" } else { ": " }
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
}

/// The only variables of vault's own environment a hook sees (besides VAULT_COMMAND,
/// VAULT_EXIT_CODE and VAULT_MESSAGE).
const HOOK_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ"];

fn hook_env_allowed(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    HOOK_ENV.contains(&name.as_ref()) || name.starts_with("LC_")
}

/// The shell command `cmd` as a hook of `command`, with only the allowed variables.
fn hook(cmd: &str, command: &str) -> std::process::Command {
    let mut c = std::process::Command::new("sh");
    c.args(["-c", cmd])
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| hook_env_allowed(k)))
        .env("VAULT_COMMAND", command);
    c
}

/// Runs the shell command `cmd` as a hook for `command`, which ended with `code` and
/// `message`; its exit status, or why it could not run.
pub fn run_hook(
    cmd: &str,
    command: &str,
    code: i32,
    message: &str,
) -> std::io::Result<std::process::ExitStatus> {
    hook(cmd, command)
        .env("VAULT_EXIT_CODE", code.to_string())
        .env("VAULT_MESSAGE", message)
        .status()
}

/// Runs the shell command `cmd` before `command` (`--before`); its exit status, or why
/// it could not run. What it prints goes to stderr, so that vault's stdout (`--json`)
/// stays vault's own.
pub fn run_before(cmd: &str, command: &str) -> std::io::Result<std::process::ExitStatus> {
    use std::os::fd::AsFd;
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    hook(cmd, command).stdout(stderr).status()
}
