//! What a backup is asked to do.

use std::path::PathBuf;

use crate::format::Id;

#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    pub host: Option<String>,
    pub excludes: Vec<String>,
    pub exclude_files: Vec<PathBuf>,
    pub exclude_caches: bool,
    pub one_file_system: bool,
    /// Back up standard input as one file of this name.
    pub stdin_filename: Option<String>,
    pub dry_run: bool,
    /// Snapshot time override (tests and imports).
    pub time: Option<jiff::Timestamp>,
    pub parent: Option<Id>,
}
