//! Errors of the pure format layer: anything that can go wrong decoding stored bytes.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("authentication failed (wrong key, or the bytes were modified)")]
    BadMac,
    #[error("truncated: {0}")]
    Truncated(&'static str),
    #[error("unsupported {what} version {version}")]
    Version { what: &'static str, version: u32 },
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("checksum mismatch")]
    Checksum,
    #[error("blob content does not match its id")]
    HashMismatch,
    /// A backup-role key met what only a full key (or another host's key) opens.
    #[error("a backup-role key cannot read {0}: that needs a full key")]
    NotPermitted(&'static str),
    /// A record that only a full key may write (forget, prune, mirror, format) carries
    /// no valid authentication by one: written by a backup-role key, or forged.
    #[error("not authenticated by a full key (written by a backup-role key, or forged)")]
    Unauthenticated,
}

impl FormatError {
    pub fn malformed(what: &'static str, why: impl ToString) -> Self {
        FormatError::Malformed {
            what,
            why: why.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, FormatError>;
