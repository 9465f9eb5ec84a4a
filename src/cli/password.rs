//! The command line's secret sources: --password-file, VAULT_PASSWORD_FILE,
//! VAULT_PASSWORD_COMMAND, VAULT_PASSWORD, a raw key file (VAULT_KEY_FILE), read by
//! `crate::secret`; and, when none is set, a prompt on a terminal.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use crate::repo::Secret;
pub use crate::secret::Password;
use crate::secret::{SecretSource, read_password_file};

/// The sources the flags and the environment set.
fn source(file: Option<&Path>, command: Option<&str>) -> SecretSource {
    source_from_env("VAULT_", file, command)
}

/// The sources set by the flags and by the environment variables `{prefix}KEY_FILE` and
/// `{prefix}PASSWORD` (`VAULT_FROM_` for the repository `vault copy` reads).
fn source_from_env(prefix: &str, file: Option<&Path>, command: Option<&str>) -> SecretSource {
    use std::os::unix::ffi::OsStringExt;
    SecretSource {
        key_file: std::env::var_os(format!("{prefix}KEY_FILE"))
            .filter(|v| !v.is_empty())
            .map(Into::into),
        password_file: file.map(Path::to_path_buf),
        password_command: command.map(str::to_string),
        password: std::env::var_os(format!("{prefix}PASSWORD"))
            .map(|p| Zeroizing::new(p.into_vec())),
    }
}

/// The password from the first source that is set; `what` names it in the prompt.
pub fn password(
    file: Option<&Path>,
    command: Option<&str>,
    what: &str,
    confirm: bool,
) -> Result<Password> {
    match source(file, command).password()? {
        Some(p) => Ok(p),
        None => prompt(what, confirm),
    }
}

pub fn prompt(what: &str, confirm: bool) -> Result<Password> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password for {what}: set VAULT_PASSWORD_FILE, VAULT_PASSWORD_COMMAND or VAULT_PASSWORD (or --password-file), or run on a terminal"
        );
    }
    let p = Zeroizing::new(
        rpassword::prompt_password(format!("password for {what}: "))
            .context("reading the password")?,
    );
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("repeat the password: ").context("reading the password")?,
        );
        if again != p {
            bail!("the passwords differ; nothing was written");
        }
    }
    if p.is_empty() {
        bail!("empty password; nothing was written");
    }
    Ok(Zeroizing::new(p.as_bytes().to_vec()))
}

/// The secret that opens an existing repository.
pub fn secret(password_file: Option<&Path>, command: Option<&str>, repo: &str) -> Result<Secret> {
    match source(password_file, command).secret()? {
        Some(s) => Ok(s),
        None => Ok(Secret::Password(
            prompt(&format!("repository {repo}"), false)?.to_vec(),
        )),
    }
}

/// The secret that opens the repository `vault copy --from` reads: its own flags and
/// `VAULT_FROM_KEY_FILE` / `VAULT_FROM_PASSWORD`, never this repository's.
pub fn source_secret(
    password_file: Option<&Path>,
    command: Option<&str>,
    repo: &str,
) -> Result<Secret> {
    match source_from_env("VAULT_FROM_", password_file, command).secret()? {
        Some(s) => Ok(s),
        None => Ok(Secret::Password(
            prompt(&format!("source repository {repo}"), false)?.to_vec(),
        )),
    }
}

/// A new password (key add, key passwd): from its own file, or a confirmed prompt.
pub fn new_password(file: Option<&Path>, what: &str) -> Result<Password> {
    match file {
        Some(f) => read_password_file(f),
        None => prompt(what, true),
    }
}
