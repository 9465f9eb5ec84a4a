//! What a backup is asked to do: one type for programs using the library, the command
//! line (clap derives its flags under the `cli` feature; `vault backup` adds only what
//! turns into the fields it skips) and profiles ([`crate::config::Profile::backup_options`]).

use std::path::PathBuf;

use crate::format::Id;

#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct BackupOptions {
    /// Files and directories to back up
    pub paths: Vec<PathBuf>,
    /// Tag the snapshot (repeatable)
    #[cfg_attr(feature = "cli", arg(long = "tag"))]
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's)
    #[cfg_attr(feature = "cli", arg(long))]
    pub host: Option<String>,
    /// Exclude paths matching this gitignore-style pattern (repeatable)
    #[cfg_attr(feature = "cli", arg(long = "exclude", short = 'e'))]
    pub excludes: Vec<String>,
    /// Read exclude patterns from a file, one per line (repeatable)
    #[cfg_attr(feature = "cli", arg(long = "exclude-file"))]
    pub exclude_files: Vec<PathBuf>,
    /// Skip the contents of directories holding a valid CACHEDIR.TAG
    #[cfg_attr(feature = "cli", arg(long))]
    pub exclude_caches: bool,
    /// Do not cross file-system boundaries
    #[cfg_attr(feature = "cli", arg(long, short = 'x'))]
    pub one_file_system: bool,
    // The command line's own flags for these follow its paths and filters, so that its
    // help keeps their order; it fills them in.
    /// Back up standard input as one file of this name.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub stdin_filename: Option<String>,
    /// Read and chunk everything but write nothing.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub dry_run: bool,
    /// Snapshot time override (tests and imports).
    #[cfg_attr(feature = "cli", arg(skip))]
    pub time: Option<jiff::Timestamp>,
    /// Compare with this snapshot instead of the newest of the same host and paths.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub parent: Option<Id>,
    /// With `stdin_filename`: run this program (and arguments) and back up its output
    /// instead of standard input; its failure fails the backup, and no snapshot is made.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub stdin_command: Vec<String>,
}
