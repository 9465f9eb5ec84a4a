//! Where secrets come from: --password-file, VAULT_PASSWORD_FILE, VAULT_PASSWORD_COMMAND,
//! VAULT_PASSWORD, a prompt on a terminal, or a raw key file (VAULT_KEY_FILE). Secrets never
//! appear in argv, logs or error messages.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine;
use zeroize::{Zeroize, Zeroizing};

use crate::format::crypto::MasterKey;
use crate::repo::Secret;
use crate::repo::repository::RawKeyFile;

/// A password, wiped from memory when dropped.
pub type Password = Zeroizing<Vec<u8>>;

fn trim_newline(mut v: Password) -> Password {
    while matches!(v.last(), Some(b'\n' | b'\r')) {
        v.pop();
    }
    v
}

fn read_password_file(path: &Path) -> Result<Password> {
    let v = std::fs::read(path).with_context(|| format!("password file {}", path.display()))?;
    Ok(trim_newline(Zeroizing::new(v)))
}

fn run_password_command(cmd: &str) -> Result<Password> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("VAULT_PASSWORD_COMMAND could not be started")?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        bail!(
            "VAULT_PASSWORD_COMMAND failed ({}); check the command",
            out.status
        );
    }
    Ok(trim_newline(stdout))
}

/// The password from the first source that is set; `what` names it in the prompt.
pub fn password(
    file: Option<&Path>,
    command: Option<&str>,
    what: &str,
    confirm: bool,
) -> Result<Password> {
    if let Some(f) = file {
        return read_password_file(f);
    }
    if let Some(cmd) = command.filter(|c| !c.is_empty()) {
        return run_password_command(cmd);
    }
    if let Some(p) = std::env::var_os("VAULT_PASSWORD") {
        use std::os::unix::ffi::OsStringExt;
        return Ok(Zeroizing::new(p.into_vec()));
    }
    prompt(what, confirm)
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
    let bytes = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("key file {}", path.display()))?,
    );
    let mut raw: RawKeyFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("key file {}: not a vault raw key file", path.display()))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(&raw.master_key);
    raw.master_key.zeroize();
    let decoded = Zeroizing::new(decoded.unwrap_or_default());
    let mut key = Zeroizing::new([0u8; 32]);
    if decoded.len() != key.len() {
        bail!("key file {}: damaged", path.display());
    }
    key.copy_from_slice(&decoded);
    Ok(MasterKey::from_bytes(*key))
}

/// The secret that opens an existing repository.
pub fn secret(password_file: Option<&Path>, command: Option<&str>, repo: &str) -> Result<Secret> {
    if let Some(k) = std::env::var_os("VAULT_KEY_FILE").filter(|v| !v.is_empty()) {
        return Ok(Secret::Master(raw_key(Path::new(&k))?));
    }
    let pw = password(password_file, command, &format!("repository {repo}"), false)?;
    Ok(Secret::Password(pw.to_vec()))
}

/// `Secret` is the repository layer's; its password is wiped here, where passwords are
/// made, so that every way a password reaches memory is in this file.
impl Drop for Secret {
    fn drop(&mut self) {
        if let Secret::Password(p) = self {
            p.zeroize();
        }
    }
}

impl zeroize::ZeroizeOnDrop for Secret {}

/// A new password (key add, key passwd): from its own file, or a confirmed prompt.
pub fn new_password(file: Option<&Path>, what: &str) -> Result<Password> {
    match file {
        Some(f) => read_password_file(f),
        None => prompt(what, true),
    }
}

#[cfg(test)]
mod tests {
    /// Zeroizing cannot be watched end to end without reading freed memory; what can be
    /// checked is that each type holding a password or key wipes it when dropped.
    #[test]
    fn secrets_zeroize_on_drop() {
        fn wipes<T: zeroize::ZeroizeOnDrop>() {}
        wipes::<super::Password>();
        wipes::<crate::repo::Secret>();
        wipes::<crate::format::crypto::MasterKey>();
    }
}
