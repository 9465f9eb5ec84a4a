//! What a backup is asked to do: one type for programs using the library, the command
//! line (clap derives its flags under the `cli` feature; `vault backup` adds only what
//! turns into the fields it skips) and profiles ([`crate::config::Profile::backup_options`]).

use std::path::{Path, PathBuf};

use crate::error::VaultError;
use crate::format::Id;
use crate::ops::exclude::{Selection, SelectionSpec, read_patterns};

#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct BackupOptions {
    /// Files and directories to back up
    pub paths: Vec<PathBuf>,
    /// Back up the paths listed in FILE too, one per line: blank lines and lines starting
    /// with # are skipped, glob patterns (* ? [...]) expanded; - reads standard input
    /// (repeatable)
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub files_from: Vec<PathBuf>,
    /// Back up the paths listed in FILE too, one per line, taken as they are: no comments,
    /// no patterns (repeatable)
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub files_from_verbatim: Vec<PathBuf>,
    /// Back up the paths listed in FILE too, each ended by a NUL byte (find -print0), any
    /// bytes but NUL (repeatable)
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub files_from_raw: Vec<PathBuf>,
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
    #[cfg_attr(feature = "cli", arg(long = "exclude-file", value_name = "FILE"))]
    pub exclude_files: Vec<PathBuf>,
    /// As --exclude, matching without regard to case (repeatable)
    #[cfg_attr(feature = "cli", arg(long = "iexclude", value_name = "PATTERN"))]
    pub iexcludes: Vec<String>,
    /// As --exclude-file, matching without regard to case (repeatable)
    #[cfg_attr(feature = "cli", arg(long = "iexclude-file", value_name = "FILE"))]
    pub iexclude_files: Vec<PathBuf>,
    /// Skip files larger than SIZE (binary units: 1K is 1024 bytes; 500M, 2G);
    /// directories are not affected
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "SIZE", value_parser = crate::units::parse_size)
    )]
    pub exclude_larger_than: Option<u64>,
    /// Skip the contents of directories holding a file of this name, but that file; with
    /// :HEADER only when the file starts with HEADER (repeatable)
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILENAME[:HEADER]"))]
    pub exclude_if_present: Vec<String>,
    /// Skip the contents of directories holding a valid CACHEDIR.TAG (--exclude-if-present
    /// 'CACHEDIR.TAG:Signature: 8a477f597d28d172789f06886806bc55')
    #[cfg_attr(feature = "cli", arg(long))]
    pub exclude_caches: bool,
    /// Read files of this name found in the tree as gitignore rules for their directory
    /// and below, inherited down the tree as .gitignore files are (repeatable)
    #[cfg_attr(feature = "cli", arg(long = "ignore-file", value_name = "NAME"))]
    pub ignore_files: Vec<String>,
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

impl BackupOptions {
    /// Whether the options name paths to back up, themselves or in lists.
    pub fn names_paths(&self) -> bool {
        !self.paths.is_empty() || self.lists()
    }

    fn lists(&self) -> bool {
        !(self.files_from.is_empty()
            && self.files_from_verbatim.is_empty()
            && self.files_from_raw.is_empty())
    }

    /// Reads the files the options name — the lists' paths into `paths`, the exclude
    /// files' patterns into `excludes` and `iexcludes` — and checks every pattern, size,
    /// tag and name, so that bad input fails before a repository is opened, and standard
    /// input is read once. Returns a warning for each listed path skipped (it does not
    /// exist, or a pattern matches nothing). Resolved options resolve to themselves.
    pub fn resolve(&mut self) -> Result<Vec<String>, VaultError> {
        if self.stdin_filename.is_some() && self.lists() {
            return Err(VaultError::Usage(
                "--stdin and --files-from (-verbatim, -raw) cannot be used together".into(),
            ));
        }
        let inputs = [
            &self.files_from,
            &self.files_from_verbatim,
            &self.files_from_raw,
            &self.exclude_files,
            &self.iexclude_files,
        ];
        if inputs
            .iter()
            .flat_map(|f| f.iter())
            .filter(|f| *f == Path::new("-"))
            .count()
            > 1
        {
            return Err(VaultError::Usage(
                "standard input (-) can be read once: give it to one --files-from or exclude-file option".into(),
            ));
        }
        let mut warnings = Vec::new();
        let lists = [
            &self.files_from[..],
            &self.files_from_verbatim[..],
            &self.files_from_raw[..],
        ];
        let listed = super::lists::read_lists(lists, &mut warnings)?;
        if self.lists() && listed.is_empty() && self.paths.is_empty() {
            return Err(VaultError::Usage(
                "nothing to back up: the --files-from lists name no path that exists".into(),
            ));
        }
        self.paths.extend(listed);
        self.files_from.clear();
        self.files_from_verbatim.clear();
        self.files_from_raw.clear();
        for f in std::mem::take(&mut self.exclude_files) {
            let patterns = read_patterns(&f, "--exclude-file", false)?;
            self.excludes.extend(patterns);
        }
        for f in std::mem::take(&mut self.iexclude_files) {
            let patterns = read_patterns(&f, "--iexclude-file", true)?;
            self.iexcludes.extend(patterns);
        }
        self.selection()?;
        Ok(warnings)
    }

    /// What the options leave out below the sources (their files read: see
    /// [`BackupOptions::resolve`]).
    pub(super) fn selection(&self) -> Result<Selection, VaultError> {
        Selection::new(&SelectionSpec {
            excludes: &self.excludes,
            iexcludes: &self.iexcludes,
            larger_than: self.exclude_larger_than,
            if_present: &self.exclude_if_present,
            exclude_caches: self.exclude_caches,
            ignore_files: &self.ignore_files,
            one_file_system: self.one_file_system,
        })
    }
}
