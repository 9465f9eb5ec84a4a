//! vault: encrypted, deduplicated, versioned backups.
//!
//! Layers, bottom to top: `format` (pure encoding and crypto), `repo` (storage, packs,
//! index, snapshots, locks), `fsmeta` (file-system metadata), `ops` (backup, restore, ...),
//! `cli` (argument parsing and output).

#[cfg(feature = "cli")]
pub mod cli;
pub mod error;
pub mod format;
pub mod fsmeta;
pub mod ops;
pub mod repo;
pub mod report;
pub mod session;
pub mod units;
