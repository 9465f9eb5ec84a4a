//! Where the secret that opens a repository comes from: a password file, a command whose
//! output is the password, a password given directly, or a raw master key file (`vault key
//! export --raw`). The caller decides which sources are set (the command line from its
//! flags and variables) and asks on a terminal itself when none is. Secrets never appear
//! in argv, logs or error messages: errors name the file or the source, never a value.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use zeroize::{Zeroize, Zeroizing};

use crate::format::crypto::MasterKey;
use crate::repo::Secret;
use crate::repo::repository::RawKeyFile;

/// A password, wiped from memory when dropped.
pub type Password = Zeroizing<Vec<u8>>;

/// The sources of a repository's secret, tried in this order: the key file, the password
/// file, the password command, the password itself.
#[derive(Default)]
pub struct SecretSource {
    /// A raw master key file; opens without a password.
    pub key_file: Option<PathBuf>,
    /// A file holding the password (a trailing newline is not part of it).
    pub password_file: Option<PathBuf>,
    /// A shell command printing the password; empty means unset.
    pub password_command: Option<String>,
    pub password: Option<Password>,
}

impl SecretSource {
    /// The password from the first password source that is set (the key file aside), or
    /// None when none is.
    pub fn password(&self) -> Result<Option<Password>> {
        if let Some(f) = &self.password_file {
            return read_password_file(f).map(Some);
        }
        if let Some(cmd) = self.password_command.as_deref().filter(|c| !c.is_empty()) {
            return run_password_command(cmd).map(Some);
        }
        Ok(self.password.clone())
    }

    /// The secret that opens an existing repository, or None when no source is set.
    pub fn secret(&self) -> Result<Option<Secret>> {
        if let Some(k) = &self.key_file {
            return Ok(Some(Secret::Master(raw_key(k)?)));
        }
        Ok(self.password()?.map(|pw| Secret::Password(pw.to_vec())))
    }
}

fn trim_newline(mut v: Password) -> Password {
    while matches!(v.last(), Some(b'\n' | b'\r')) {
        v.pop();
    }
    v
}

/// The password in `path`, without its trailing newline.
pub fn read_password_file(path: &Path) -> Result<Password> {
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

/// A raw master key file written by `vault key export --raw`.
pub fn raw_key(path: &Path) -> Result<MasterKey> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(path).with_context(|| format!("key file {}", path.display()))?;
    if md.permissions().mode() & 0o077 != 0 {
        // At error level, so that --quiet (a cron job) still shows a secret others read.
        log::error!(
            "warning: key file {} is readable by others; chmod 600 it",
            path.display()
        );
    }
    let bytes = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("key file {}", path.display()))?,
    );
    let raw: RawKeyFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("key file {}: not a vault raw key file", path.display()))?;
    raw.master()
        .map_err(|_| anyhow::anyhow!("key file {}: damaged", path.display()))
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

    /// A raw key of format 5 carries the content key and says version 2; one without
    /// stays version 1, as older vaults wrote it. Each reads back as it was written.
    #[test]
    fn a_raw_key_keeps_its_content_key() {
        use crate::format::crypto::MasterKey;
        use crate::repo::repository::RawKeyFile;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        for (key, version) in [
            (MasterKey::from_bytes([1; 32]), 1),
            (MasterKey::from_bytes([2; 32]).with_content([1; 32]), 2),
        ] {
            let raw = RawKeyFile::of(&key, "id");
            assert_eq!(raw.vault_raw_key, version);
            std::fs::write(&path, serde_json::to_vec(&raw).unwrap()).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let back = super::raw_key(&path).unwrap();
            assert_eq!(back.as_bytes(), key.as_bytes());
            assert_eq!(back.content_bytes(), key.content_bytes());
            assert_eq!(*back.id_key(), *key.id_key());
        }
        std::fs::write(
            &path,
            br#"{"vault_raw_key":2,"repository":"","master_key":"AAAA","content_key":"AAAA"}"#,
        )
        .unwrap();
        let e = super::raw_key(&path).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
    }
}
