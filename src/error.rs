//! Errors, and the rules they follow.
//!
//! - Inside the library, errors travel as `anyhow::Error` with context naming the object
//!   or file at each layer; the message is for people, one line once flattened
//!   ([`one_line`]).
//! - What a caller must decide on travels as a type: the errors that choose an outcome
//!   ([`VaultError`], the storage's [`RemoteError`], damaged bytes) are created as such
//!   deep down, and [`Error`] at the library boundary names their [`ErrorKind`]. Every
//!   function of the library's front door ([`crate::session`]) returns [`Result`].
//! - A kind is decided by the innermost-first cause that has one, read from the outside
//!   in: the first typed cause in the chain wins, so a wrapper never hides it.
//! - Warnings are not errors: they go to the caller's [`crate::report::Reporter`].
//! - The library names things and says what is wrong; what the user can do about it is
//!   data, a [`Remedy`] (carried by [`Advised`], or implied by the error's type). The
//!   command line maps kinds to exit codes (README "Exit codes") and words remedies as
//!   advice.
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
    /// The key's role does not allow the command (a backup-role key, §20).
    pub const NOT_PERMITTED: i32 = 14;
    /// The `--before` command failed, so the command was not run.
    pub const BEFORE_FAILED: i32 = 15;
}

#[derive(Debug, Error)]
pub enum VaultError {
    #[error("no repository at {0} (no config file)")]
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
    /// The key opened the repository once, but a key rotation replaced it (or is
    /// replacing it).
    #[error("{0}")]
    KeyRetired(String),
    #[error("{0}")]
    Usage(String),
    /// What a backup-role key may not do or read.
    #[error("{0}: this is a backup-role key; use a full key (its password or key file)")]
    NotPermitted(String),
}

/// What the user can do about an error. The library names the remedy; a front end words
/// it (the command line as the command to run).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Remedy {
    /// Create a repository at this location, or give another.
    Init(String),
    /// Check the repository, then copy the damaged object back from a mirror.
    CheckThenRepairFromMirror,
    /// Check the repository (reading its data), then repair it.
    CheckDataThenRepair,
    /// Check the repository.
    Check,
    /// Check the repository before pruning.
    CheckBeforePruning,
    /// Rebuild the index from the packs before pruning.
    RepairIndexBeforePruning,
    /// Check, then repair the snapshots, before trying again.
    RepairSnapshotsFirst,
    /// Forget this snapshot, or repair first.
    ForgetOrRepair(String),
    /// Read the blob's data with a check.
    CheckData,
    /// List the keys.
    ListKeys,
    /// Add another key first.
    AddKeyFirst,
    /// Add a key with a password.
    AddPassword,
    /// List the snapshots; `other_hosts`: the host filter may be what hides them.
    ListSnapshots { other_hosts: bool },
    /// Restore the directory instead.
    RestoreInstead,
    /// Take this path from another snapshot.
    OtherVersion(String),
}

/// An error whose remedy is data: the message says what is wrong, the remedy what to do.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct Advised {
    pub message: String,
    pub remedy: Remedy,
}

impl Advised {
    /// The error for `message` with `remedy`.
    pub fn error(message: impl Into<String>, remedy: Remedy) -> anyhow::Error {
        Advised {
            message: message.into(),
            remedy,
        }
        .into()
    }
}

/// The remedy for `err`: its innermost cause's that has one (the most specific).
pub fn remedy(err: &anyhow::Error) -> Option<Remedy> {
    err.chain().filter_map(remedy_of_cause).last()
}

fn remedy_of_cause(cause: &(dyn std::error::Error + 'static)) -> Option<Remedy> {
    if let Some(a) = cause.downcast_ref::<Advised>() {
        return Some(a.remedy.clone());
    }
    if let Some(VaultError::NoRepository(at)) = cause.downcast_ref::<VaultError>() {
        return Some(Remedy::Init(at.clone()));
    }
    if cause.is::<crate::repo::repository::Misnamed>() {
        return Some(Remedy::CheckThenRepairFromMirror);
    }
    None
}

/// What went wrong, as a caller decides on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Nothing at the location is a repository (no config file, no bucket).
    NoRepository,
    /// `init` found a repository already there.
    AlreadyExists,
    /// Another process holds a conflicting lock, or this one lost its own.
    Locked,
    /// No key file opens with the password or key given.
    WrongPassword,
    /// An argument, option or location the caller gave is not valid.
    InvalidInput,
    /// A copy's storage failed: unreachable, refused, full, archived, a server error.
    Storage,
    /// Stored bytes failed their checks (authentication, hash, name, structure).
    Damaged,
    /// The process is being interrupted; nothing more is written.
    Interrupted,
    /// The key's role does not allow it: a backup-role key asked to forget, prune,
    /// restore or read another host's snapshots.
    NotPermitted,
    /// Anything else: a local file-system error, an unforeseen failure.
    Other,
}

impl ErrorKind {
    /// The kind `err` carries: its first typed cause's, else `Other`.
    pub fn of(err: &anyhow::Error) -> ErrorKind {
        err.chain()
            .find_map(kind_of_cause)
            .unwrap_or(ErrorKind::Other)
    }

    /// The command line's exit code for this kind (README "Exit codes").
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::NoRepository => exit::NO_REPOSITORY,
            ErrorKind::Locked => exit::LOCKED,
            ErrorKind::WrongPassword => exit::WRONG_PASSWORD,
            ErrorKind::InvalidInput => exit::USAGE,
            ErrorKind::Storage => exit::STORAGE,
            ErrorKind::NotPermitted => exit::NOT_PERMITTED,
            _ => exit::ERROR,
        }
    }
}

fn kind_of_cause(cause: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    if let Some(e) = cause.downcast_ref::<Error>() {
        return Some(e.kind);
    }
    if let Some(r) = cause.downcast_ref::<RemoteError>() {
        return Some(match r.kind.exit_code() {
            exit::NO_REPOSITORY => ErrorKind::NoRepository,
            exit::USAGE => ErrorKind::InvalidInput,
            exit::STORAGE => ErrorKind::Storage,
            _ => ErrorKind::Other,
        });
    }
    if let Some(v) = cause.downcast_ref::<VaultError>() {
        return Some(match v {
            VaultError::NoRepository(_) => ErrorKind::NoRepository,
            VaultError::Locked(_) | VaultError::LockLapsed(_) => ErrorKind::Locked,
            VaultError::WrongPassword(_) | VaultError::KeyRetired(_) => ErrorKind::WrongPassword,
            VaultError::Usage(_) => ErrorKind::InvalidInput,
            VaultError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            VaultError::NotPermitted(_) => ErrorKind::NotPermitted,
        });
    }
    if cause.is::<crate::repo::repository::ReplacedKey>() {
        return Some(ErrorKind::WrongPassword);
    }
    if let Some(crate::format::FormatError::NotPermitted(_)) = cause.downcast_ref() {
        return Some(ErrorKind::NotPermitted);
    }
    if cause.is::<crate::repo::backend::Interrupted>() {
        return Some(ErrorKind::Interrupted);
    }
    if cause.is::<crate::format::error::FormatError>()
        || cause.is::<crate::repo::repository::Misnamed>()
    {
        return Some(ErrorKind::Damaged);
    }
    None
}

/// The error of the library's front door: a kind to decide on, and the whole story
/// (every layer's context) to show.
pub struct Error {
    kind: ErrorKind,
    inner: anyhow::Error,
}

/// The result of the library's front door.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message in one line, each cause once.
    pub fn one_line(&self) -> String {
        one_line(&self.inner)
    }

    /// What the user can do about it, when the library knows.
    pub fn remedy(&self) -> Option<Remedy> {
        remedy(&self.inner)
    }
}

impl From<anyhow::Error> for Error {
    fn from(inner: anyhow::Error) -> Error {
        // Already typed further in: keep it whole rather than wrap it again.
        let inner = match inner.downcast::<Error>() {
            Ok(e) => return e,
            Err(inner) => inner,
        };
        Error {
            kind: ErrorKind::of(&inner),
            inner,
        }
    }
}

impl From<VaultError> for Error {
    fn from(e: VaultError) -> Error {
        anyhow::Error::from(e).into()
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {:?}", self.kind, self.inner)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.one_line())
    }
}

impl std::error::Error for Error {
    // The whole chain stays reachable, so that a cause's type can still be asked for
    // (`one_line` leaves out the repeated text).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.inner.as_ref())
    }
}

/// The exit code for `err` (README "Exit codes").
pub fn exit_code(err: &anyhow::Error) -> i32 {
    ErrorKind::of(err).exit_code()
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
