//! Where secrets come from: --password-file, VAULT_PASSWORD_FILE, VAULT_PASSWORD_COMMAND,
//! VAULT_PASSWORD, a prompt on a terminal, or a raw key file (VAULT_KEY_FILE). Secrets never
//! appear in argv, logs or error messages.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine;

use crate::format::crypto::MasterKey;
use crate::repo::Secret;
use crate::repo::repository::RawKeyFile;

fn trim_newline(mut v: Vec<u8>) -> Vec<u8> {
    while matches!(v.last(), Some(b'\n' | b'\r')) {
        v.pop();
    }
    v
}

fn read_password_file(path: &Path) -> Result<Vec<u8>> {
    let v = std::fs::read(path).with_context(|| format!("password file {}", path.display()))?;
    Ok(trim_newline(v))
}

fn run_password_command(cmd: &str) -> Result<Vec<u8>> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("VAULT_PASSWORD_COMMAND could not be started")?;
    if !out.status.success() {
        bail!(
            "VAULT_PASSWORD_COMMAND failed ({}); check the command",
            out.status
        );
    }
    Ok(trim_newline(out.stdout))
}

/// The password from the first source that is set; `what` names it in the prompt.
pub fn password(
    file: Option<&Path>,
    command: Option<&str>,
    what: &str,
    confirm: bool,
) -> Result<Vec<u8>> {
    if let Some(f) = file {
        return read_password_file(f);
    }
    if let Some(cmd) = command.filter(|c| !c.is_empty()) {
        return run_password_command(cmd);
    }
    if let Some(p) = std::env::var_os("VAULT_PASSWORD") {
        use std::os::unix::ffi::OsStringExt;
        return Ok(p.into_vec());
    }
    prompt(what, confirm)
}

pub fn prompt(what: &str, confirm: bool) -> Result<Vec<u8>> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password for {what}: set VAULT_PASSWORD_FILE, VAULT_PASSWORD_COMMAND or VAULT_PASSWORD (or --password-file), or run on a terminal"
        );
    }
    let p = rpassword::prompt_password(format!("password for {what}: "))
        .context("reading the password")?;
    if confirm {
        let again =
            rpassword::prompt_password("repeat the password: ").context("reading the password")?;
        if again != p {
            bail!("the passwords differ; nothing was written");
        }
    }
    if p.is_empty() {
        bail!("empty password; nothing was written");
    }
    Ok(p.into_bytes())
}

/// A raw master key file written by `vault key export --raw`.
pub fn raw_key(path: &Path) -> Result<MasterKey> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(path).with_context(|| format!("key file {}", path.display()))?;
    if md.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "vault: warning: key file {} is readable by others; chmod 600 it",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("key file {}", path.display()))?;
    let raw: RawKeyFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("key file {}: not a vault raw key file", path.display()))?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(raw.master_key)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .with_context(|| format!("key file {}: damaged", path.display()))?;
    Ok(MasterKey::from_bytes(key))
}

/// The secret that opens an existing repository.
pub fn secret(password_file: Option<&Path>, command: Option<&str>, repo: &str) -> Result<Secret> {
    if let Some(k) = std::env::var_os("VAULT_KEY_FILE").filter(|v| !v.is_empty()) {
        return Ok(Secret::Master(raw_key(Path::new(&k))?));
    }
    Ok(Secret::Password(password(
        password_file,
        command,
        &format!("repository {repo}"),
        false,
    )?))
}

/// A new password (key add, key passwd): from its own file, or a confirmed prompt.
pub fn new_password(file: Option<&Path>, what: &str) -> Result<Vec<u8>> {
    match file {
        Some(f) => read_password_file(f),
        None => prompt(what, true),
    }
}
