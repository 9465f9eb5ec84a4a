//! The format layer: every byte vault stores, as pure functions with no I/O.
//! `repo-format/` specifies the same bytes in prose.

pub mod chunker;
pub mod config;
pub mod crypto;
pub mod error;
pub mod id;
pub mod index;
pub mod keyfile;
pub mod lock;
pub mod manifest;
pub mod mirror;
pub mod object;
pub mod pack;
pub mod paper;
pub mod prune;
pub mod roles;
pub mod snapshot;
pub mod tree;

pub use error::FormatError;
pub use id::Id;
