//! vault: encrypted, deduplicated, versioned backups.
//!
//! A program backs up and restores through a [`session::Session`], whose type tracks
//! how far it has come (open → locked → indexed), so the order the repository depends
//! on cannot be got wrong. Errors are [`error::Error`], with a kind to decide on;
//! warnings go to the [`report::Reporter`] the program supplies.
//!
//! ```
//! use std::sync::Arc;
//! use vault::ops::{backup, restore, select};
//! use vault::repo::lock::LockKind;
//! use vault::repo::repository::{InitOptions, Secret};
//! use vault::session::{Locking, Session};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let source = dir.path().join("documents");
//! std::fs::create_dir(&source)?;
//! std::fs::write(source.join("thesis.tex"), "\\chapter{One}")?;
//! let location = dir.path().join("repo").to_string_lossy().into_owned();
//! let report: vault::report::Report = Arc::new(vault::report::Silent);
//! let password = || Ok(b"correct horse battery staple");
//!
//! // init, then back up: lock, index (with packs an interrupted run left), back up.
//! Session::init(&location, password, &InitOptions::default(), report.clone())?;
//! let secret = || Ok(Secret::Password(password()?.to_vec()));
//! let take = Locking::Take { wait: None };
//! let mut session = Session::open(&location, secret, report.clone())?
//!     .lock(LockKind::Shared, "backup", take)?
//!     .index_for_backup(false)?;
//! let opts = backup::BackupOptions { paths: vec![source.clone()], ..Default::default() };
//! let done = session.backup(&opts, Default::default(), Arc::new(|_| {}))?;
//!
//! // snapshots, then restore into another directory.
//! let snapshots = session.snapshots(&select::Filter::default())?;
//! assert_eq!(snapshots.len(), 1);
//! let session = session.release().lock(LockKind::Shared, "restore", take)?.index()?;
//! let target = dir.path().join("restored");
//! let opts = restore::RestoreOptions { target: target.clone(), ..Default::default() };
//! session.restore(&done.snapshot.tree, &opts, Default::default())?;
//! let copy = target.join(source.strip_prefix("/")?).join("thesis.tex");
//! assert_eq!(std::fs::read_to_string(copy)?, "\\chapter{One}");
//! # Ok(())
//! # }
//! ```
//!
//! Layers, bottom to top: `format` (pure encoding and crypto), `repo` (storage, packs,
//! index, snapshots, locks), `fsmeta` (file-system metadata), `ops` (backup, restore, ...),
//! `cli` (argument parsing and output).

#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod error;
pub mod format;
pub mod fsmeta;
pub mod hooks;
pub mod meter;
pub mod ops;
pub mod repo;
pub mod report;
pub mod schedule;
pub mod secret;
pub mod session;
pub mod units;
