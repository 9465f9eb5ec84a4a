//! Errors that decide the exit code. Everything else travels as `anyhow::Error` with
//! context; `exit_code` looks through the chain for one of these.

use thiserror::Error;

use crate::repo::remote::RemoteError;

/// Exit codes, identical across commands (README "Exit codes").
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const PARTIAL: i32 = 3;
    pub const NO_REPOSITORY: i32 = 10;
    pub const LOCKED: i32 = 11;
    pub const WRONG_PASSWORD: i32 = 12;
    /// A copy's storage failed: unreachable (refused, host not found, timeout, TLS, host
    /// key), refused the credentials or the operation, full, archived, or a server error.
    pub const STORAGE: i32 = 13;
}

#[derive(Debug, Error)]
pub enum VaultError {
    #[error(
        "no repository at {0} (no config file): create one with `vault init --repo {0}`, or check --repo / VAULT_REPOSITORY"
    )]
    NoRepository(String),
    #[error("repository {0} already exists: choose another location or use it as it is")]
    AlreadyExists(String),
    #[error("repository is locked: {0}")]
    Locked(String),
    /// The own lock went unrefreshed too long: stopped before publishing.
    #[error("{0}")]
    LockLapsed(String),
    #[error("wrong password for repository {0}: no key file opens with it")]
    WrongPassword(String),
    #[error("{0}")]
    Usage(String),
}

pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(r) = cause.downcast_ref::<RemoteError>() {
            return r.kind.exit_code();
        }
        if let Some(v) = cause.downcast_ref::<VaultError>() {
            return match v {
                VaultError::NoRepository(_) => exit::NO_REPOSITORY,
                VaultError::Locked(_) | VaultError::LockLapsed(_) => exit::LOCKED,
                VaultError::WrongPassword(_) => exit::WRONG_PASSWORD,
                VaultError::Usage(_) => exit::USAGE,
                VaultError::AlreadyExists(_) => exit::ERROR,
            };
        }
    }
    exit::ERROR
}

/// The storage library's full reports of the storage failures in `err` (for -v): the
/// one-line message leaves them out.
pub fn details(err: &anyhow::Error) -> Vec<String> {
    err.chain()
        .filter_map(|c| c.downcast_ref::<RemoteError>())
        .map(|r| r.detail.clone())
        .collect()
}

/// One line: the outermost context, then each cause, separated by ": ".
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}
