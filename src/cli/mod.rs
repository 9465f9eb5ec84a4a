//! The command line: argument definitions, repository opening, and dispatch. Each
//! command's body lives in `commands.rs`; the work itself in `ops`.

mod commands;
mod copy;
mod export;
mod history;
mod integrity;
mod logger;
pub mod man;
mod mirrors;
#[cfg(feature = "mount")]
mod mount;
pub mod password;
pub mod profile;
pub mod progress;
mod retention;
mod run;
mod schedule;
mod timetravel;

/// Forget's options from one string (`--snapshots`, profiles' retention); public for fuzzing.
pub use export::parse_selection;
/// The retention policy that forget's options describe; public for fuzzing.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::error::{self, exit};

#[derive(Parser, Debug)]
#[command(
    name = "vault",
    version,
    about = "Encrypted, deduplicated, versioned backups",
    long_about = "Encrypted, deduplicated, versioned backups.\n\nExample:\n  vault init && vault backup ~/Documents && vault snapshots",
    after_help = "Exit codes: 0 ok, 1 error (for check, audit and verify: damage found), 2 usage, 3 partial (some files skipped or not restored), 10 no repository (or no bucket), 11 locked, 12 wrong password, 13 storage failed (unreachable, credentials or permission refused, full, archived, server error)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Default)]
pub struct Global {
    /// Repository location (a directory or fs:///path); default: ~/.local/share/vault/repo
    #[arg(long, short = 'r', env = "VAULT_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// Read the password from this file (a trailing newline is not part of it)
    #[arg(long, env = "VAULT_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Run this command and use its output as the password
    #[arg(
        long,
        env = "VAULT_PASSWORD_COMMAND",
        global = true,
        value_name = "CMD"
    )]
    pub password_command: Option<String>,
    /// Take repository, password source, sources, excludes and tags from this profile of
    /// the config file
    #[arg(long, global = true, value_name = "NAME", env = "VAULT_PROFILE")]
    pub profile: Option<String>,
    /// Config file (default: ~/.config/vault/vault.toml, then /etc/vault/vault.toml)
    #[arg(long, global = true, value_name = "FILE", env = "VAULT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Say more on stderr: -v what changes (files, objects), -vv also what stays the
    /// same and each storage write and delete, -vvv also each read
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Do not lock the repository (for read-only media)
    #[arg(long, global = true)]
    pub no_lock: bool,
    /// Run this shell command before the command (a database dump, a check that a disk
    /// is mounted); if it fails (exit code not 0), the command is not run and vault exits
    /// with 15. Its environment is VAULT_COMMAND plus what --on-success's has; what it
    /// prints goes to stderr
    #[arg(long, global = true, value_name = "CMD")]
    pub before: Option<String>,
    /// Run this shell command after the command succeeds (exit 0). Its environment is
    /// VAULT_COMMAND, VAULT_EXIT_CODE and VAULT_MESSAGE, plus only PATH, HOME, USER,
    /// LOGNAME, LANG, LC_* and TZ from vault's own: no password, key or storage secret
    #[arg(long, global = true, value_name = "CMD")]
    pub on_success: Option<String>,
    /// Run this shell command after the command fails or is partial (exit code not 0);
    /// same environment as --on-success
    #[arg(long, global = true, value_name = "CMD")]
    pub on_failure: Option<String>,
    /// Append one line per run (time, command, exit code, message) to this file
    #[arg(long, global = true, value_name = "FILE", env = "VAULT_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// When the repository is locked, wait this long for it (e.g. 10m) before exit 11
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_wait)]
    pub lock_wait: Option<std::time::Duration>,
    /// Let credentials travel over plain http (s3 endpoint=http://, webdav://) to a host
    /// that is not loopback; with `mirror add` or `mirror trust`, recorded for that mirror
    #[arg(long, global = true, env = "VAULT_INSECURE_HTTP", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_http: bool,
    /// Cap what is written to each backend at RATE bytes per second: 500K, 10M, 1G
    /// (binary units; iB or B and /s may follow, as in 10MiB/s), or a bare number of
    /// KiB/s as restic's --limit-upload takes it; 0 for no limit. Applies to every
    /// backend of the command, a local directory too; a mirror's profile section may set
    /// its own
    #[arg(long, global = true, value_name = "RATE", env = "VAULT_LIMIT_UPLOAD")]
    pub limit_upload: Option<String>,
    /// Cap what is read from each backend at RATE bytes per second, as --limit-upload
    #[arg(long, global = true, value_name = "RATE", env = "VAULT_LIMIT_DOWNLOAD")]
    pub limit_download: Option<String>,
    /// Requests in flight per backend, 1 to 256 (default: 8 for s3, gcs, azblob, b2,
    /// WebDAV and SFTP, one per core from 2 to 8 for a local directory). Restore,
    /// sync, check --read-data, audit and repair index run that many transfers at once;
    /// backup uploads that many packs at once to a remote backend, holding at most
    /// 64 MiB of them
    #[arg(long, global = true, value_name = "N", env = "VAULT_CONNECTIONS")]
    pub connections: Option<String>,
}

impl Global {
    /// The limits the command line (or the environment, or the profile) sets for every
    /// backend of the command.
    pub fn limits(&self) -> Result<crate::repo::limits::Limits, error::VaultError> {
        crate::config::parse_limits(
            self.limit_upload.as_deref(),
            self.limit_download.as_deref(),
            self.connections.as_deref(),
            &|key| format!("--{key} (VAULT_{})", key.to_uppercase().replace('-', "_")),
        )
    }
}

/// Which snapshots: the library's filter, whose flags clap derives.
pub use crate::ops::select::Filter as SnapshotFilter;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository.
    ///
    /// Example: vault init --repo /srv/backup
    Init(InitArgs),
    /// Back up files and directories into a new snapshot.
    ///
    /// Example: vault backup ~/Documents ~/Photos --tag nightly --exclude '*.tmp' --exclude-caches
    Backup(Box<BackupArgs>),
    /// List snapshots.
    ///
    /// Example: vault snapshots --host laptop --json
    Snapshots(SnapshotsArgs),
    /// List files in a snapshot.
    ///
    /// Example: vault ls latest ~/Documents   or   vault ls --at "last monday" ~/thesis
    Ls(LsArgs),
    /// Restore a snapshot (or part of it) into a directory.
    ///
    /// Run as root, restore sets owners (uid and gid), setuid and setgid bits, modes,
    /// extended attributes, times, FIFOs and device nodes as the snapshot has them;
    /// --no-owner, --no-xattrs and --no-special leave them out. As another user, files
    /// belong to that user and lose setuid and setgid bits. Restore never follows a
    /// symlink it did not make: a symlink or other non-directory where a directory goes
    /// is an error, or is replaced with --overwrite. Files and directories are created
    /// private and given their modes once written, so none is ever more open than the
    /// snapshot says, even if the restore is killed.
    ///
    /// Without --overwrite, a restore that would replace anything is refused before it
    /// writes. --overwrite if-changed writes only the chunks that differ (a killed restore
    /// run again this way reads only what is missing), --overwrite never keeps whatever
    /// is there, and --delete removes what the snapshot does not hold inside the restored
    /// paths.
    ///
    /// Example: vault restore latest --target /tmp/r --include ~/Documents
    ///          vault restore --at yesterday --target /tmp/r
    ///          vault restore latest --target /srv/www --overwrite if-changed --delete
    Restore(RestoreArgs),
    /// Write one file from a snapshot to standard output, or a directory as a tar or zip
    /// archive.
    ///
    /// Example: vault dump --at 2026-11-02T14:00 ~/thesis/main.tex > old.tex
    ///          vault dump latest ~/thesis --archive tar | ssh host tar x
    Dump(DumpArgs),
    /// Every distinct version of a file or directory across snapshots.
    ///
    /// Example: vault versions ~/thesis/main.tex
    Versions(VersionsArgs),
    /// Mount every snapshot, and every version of every file, as a read-only file system
    /// (FUSE). Serves until Ctrl-C or `fusermount3 -u MOUNTPOINT`.
    ///
    /// latest/ is this host's newest snapshot; snapshots/ holds every snapshot by local
    /// time (a second one of the same second gets its short id after a space);
    /// hosts/NAME/{latest,at,snapshots}/, tags/TAG/ and ids/SHORTID/ choose by host, tag
    /// and id; at/TIME/ is the snapshot `--at TIME` chooses for this host (any --at
    /// expression as a name; at/ itself lists nothing); versions/PATH/ lists each distinct
    /// version of the file PATH of this host, named by the first snapshot holding it.
    /// Files read exactly as `dump` gives them, with their stored modes, owners, times,
    /// link counts and xattrs. A damaged object fails the reads that need it (EIO) and is
    /// reported once. Mounted with default_permissions: the stored modes decide who may
    /// read what. Prints nothing on stdout (--json has no effect).
    ///
    /// Example: vault mount ~/backups &   then   diff ~/backups/at/yesterday/etc/fstab /etc/fstab
    #[cfg(feature = "mount")]
    Mount(MountArgs),
    /// What changed between two snapshots: added, removed, modified, metadata.
    ///
    /// Example: vault diff 3fa2 latest   or   vault diff --at yesterday --at now
    Diff(DiffArgs),
    /// Which snapshots hold paths matching a glob.
    ///
    /// Example: vault find '*.tex' --path ~/thesis
    Find(FindArgs),
    /// Remove snapshots by a retention policy, or by id.
    ///
    /// Example: vault forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --dry-run
    Forget(Box<ForgetArgs>),
    /// Change snapshots' tags: --add, --remove, or --set (replaces them all).
    ///
    /// A snapshot never changes: each one whose tags change is written anew (same files,
    /// time and host; `original` names the old one) and the old one is forgotten, as
    /// forget does (sync carries both to the mirrors). Without SNAPSHOT, every snapshot
    /// the filters select is changed, all of them when no filter is given (as restic's
    /// tag). Killed at any instant, it leaves the old snapshot or the new one in view,
    /// never both; run it again to finish. Needs a full key.
    ///
    /// Example: vault tag --add keep --remove nightly 3fa2c1d0
    ///          vault tag --set archive --host laptop
    Tag(TagArgs),
    /// New snapshots without the paths matching --exclude; every other file keeps its
    /// stored blobs (only the trees on the way are written anew).
    ///
    /// Each new snapshot names its original, lists the patterns among its excludes and
    /// keeps its time, host and tags. Without SNAPSHOT, every snapshot the filters select
    /// (all when none is given); snapshots with nothing to leave out are left alone.
    /// --forget forgets the originals once every new snapshot is written; run prune to
    /// free the space. Patterns are backup's (gitignore style, anchored at /); a leading
    /// ~/ is the home directory.
    ///
    /// Example: vault rewrite --exclude '~/secret.pdf' --dry-run
    ///          vault rewrite --exclude '*.iso' --forget 3fa2c1d0
    Rewrite(RewriteArgs),
    /// Copy snapshots from another repository (another key) into this one.
    ///
    /// Each file's data is read from the source and cut, deduplicated and encrypted as a
    /// backup into this repository would: blob ids and chunk boundaries are keyed per
    /// repository, so every file is chunked anew, whatever the two chunkers' parameters.
    /// A snapshot with the same time, host and paths as one here is skipped, so a copy run
    /// again (or after a kill) copies only what is missing. The source's password:
    /// --from-password-file, --from-password-command, VAULT_FROM_PASSWORD or
    /// VAULT_FROM_KEY_FILE, else a prompt.
    ///
    /// Example: vault copy --from /srv/old-repo latest
    ///          vault copy --from sftp://nas/vault --host laptop --dry-run
    Copy(CopyArgs),
    /// Sizes: what the snapshots restore to, what their blobs take, per snapshot.
    ///
    /// --mode restore-size (default): every regular file of every selected snapshot, as
    /// a restore writes it. raw-data: the distinct blobs they reference, plaintext and
    /// stored, with the compression and deduplication ratios. per-snapshot: each one's
    /// restore size and the blobs no other selected snapshot references. Always: the
    /// repository's packs and indexed blobs. Reads trees and the index only.
    ///
    /// Example: vault stats --mode raw-data   or   vault stats latest --mode per-snapshot
    Stats(StatsArgs),
    /// Delete the data no snapshot uses and reclaim its space (exclusive lock).
    ///
    /// Example: vault prune --max-unused 5% --max-repack 1G
    Prune(PruneArgs),
    /// Manage the key files (passwords) that open the repository.
    ///
    /// Example: vault key add --label laptop
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check the repository: keys, index against packs, every snapshot's trees and blobs.
    ///
    /// Exit 0 when healthy, 1 when errors were found.
    /// Example: vault check --read-data-subset 1/7
    Check(CheckArgs),
    /// Check every stored object's integrity without the password.
    ///
    /// Hash-named objects must hash to their names, the config its checksum, and every pack
    /// and index file that a manifest lists must be present at its size. Exit 0 when
    /// healthy, 1 when errors were found.
    /// Example: vault audit --repo /srv/backup
    Audit(AuditArgs),
    /// Prove the backups restore: check, read a subset of the data, restore the latest
    /// snapshot (or a sample of its files) to a temporary directory and compare every byte.
    ///
    /// Exit 0 when everything verified, 1 otherwise.
    /// Example: vault verify --sample 200
    Verify(VerifyArgs),
    /// Repair a damaged repository: from a mirror (--from), or its index or snapshots.
    ///
    /// Example: vault repair --from offsite   or   vault repair index
    Repair(RepairArgs),
    /// Manage the mirrors: other backends that hold a copy of this repository.
    ///
    /// Example: vault mirror add offsite s3://bucket/vault --endpoint https://s3.wasabisys.com --vendor wasabi --region eu-central
    #[command(subcommand)]
    Mirror(MirrorCommand),
    /// Bring every mirror (or one) up to date with this repository.
    ///
    /// Exit 3 when a mirror could not be reached (it catches up next time), or when an
    /// object reads damaged here (a mirror lacking it gets nothing that refers to it).
    /// Example: vault sync --mirror offsite
    Sync(SyncArgs),
    /// Carry out on the mirrors the deletions forget and prune recorded: on a protected
    /// mirror only those recorded at least its protection period ago (by the mirror's
    /// clock). Needs credentials that can delete there; run it on a trusted machine.
    ///
    /// Exit 3 when a mirror could not be maintained.
    /// Example: vault maintain --mirror vault-b2 --dry-run
    Maintain(MaintainArgs),
    /// Bring forgotten snapshots back from a mirror that still holds them (a protected
    /// one keeps them for its protection period): the snapshots, and whatever data of
    /// theirs this repository no longer holds, are written here again.
    ///
    /// Example: vault unforget --from vault-b2          (every snapshot forgotten here)
    ///          vault unforget --from vault-b2 5f0c3a1e
    Unforget(UnforgetArgs),
    /// Every copy of the repository: reachable, complete, behind by how much; then how safe
    /// the data is (copies, vendors, regions, age of the newest offline export).
    ///
    /// Example: vault status --export-max-age 35d
    Status(StatusArgs),
    /// Write an offline copy that restores with nothing else: a directory (a complete
    /// repository plus the format spec, a reference reader, a README, the vault binary
    /// and a SHA-256 MANIFEST).
    ///
    /// Example: vault export /media/archive-2 --snapshots '--keep-monthly 12'
    ///          vault export --image /tmp/vault-2026-11.tar --split 4480M
    Export(ExportArgs),
    /// Run a profile's whole routine: backup, forget, prune when due, sync mirrors, export
    /// when due, check a rotating part of the data.
    ///
    /// Example: vault run nightly
    Run {
        /// Profile name in the config file
        profile: String,
    },
    /// Install, list or remove systemd timers (or print crontab lines) that run a profile.
    ///
    /// Example: vault schedule install nightly --at 02:30
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Validate the config file.
    ///
    /// Example: vault config check
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Raise the repository to this vault's format (3: prune runs beside backups).
    ///
    /// Writes one format record; nothing else changes. Vaults older than format 3 can no
    /// longer be trusted to prune it (they would delete at once, under a lock that newer
    /// backups do not wait for): upgrade every host first.
    ///
    /// Example: vault upgrade
    Upgrade,
    /// Print a shell completion script.
    ///
    /// Example: vault completions bash > /etc/bash_completion.d/vault
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Remove locks left by processes that died.
    ///
    /// Without options, only locks whose process is gone from this machine, boot and PID
    /// namespace; a lock from anywhere else is removed only with --stale, after watching
    /// it unchanged for 30 minutes, or with --remove-all.
    ///
    /// Example: vault unlock --stale
    Unlock(UnlockArgs),
    /// List the local caches of every repository used here, or clean them up.
    ///
    /// A cache holds copies of index files, snapshots and trees, so that commands need
    /// not download them again; it is never needed for correctness. --cleanup removes
    /// the caches of repositories not used for --max-age, and with --max-size the least
    /// recently used files of the others until they fit. No repository or password is
    /// needed.
    ///
    /// Example: vault cache --cleanup --max-age 30d --max-size 2G
    Cache(CacheArgs),
}

#[derive(Args, Debug)]
pub struct CacheArgs {
    /// Remove old caches (see --max-age) and trim the rest to --max-size
    #[arg(long)]
    pub cleanup: bool,
    /// With --cleanup: remove the caches of repositories not used for this long
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_wait, requires = "cleanup")]
    pub max_age: std::time::Duration,
    /// With --cleanup: then remove the least recently used files until all caches
    /// together hold at most SIZE (e.g. 2G, 500M)
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_size, requires = "cleanup")]
    pub max_size: Option<u64>,
    /// With --cleanup: say what would be removed, remove nothing
    #[arg(long, requires = "cleanup")]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Target pack file size
    #[arg(long, default_value = "16M", value_parser = progress::parse_size)]
    pub pack_size: u64,
    /// zstd compression level for data (1-22)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub compression: i32,
    /// Average chunk size (minimum is half, maximum eight times this). Smaller chunks store
    /// less for small edits inside large files (disk images, databases); chunks under
    /// 256K are compressed together in bundles, so they cost little compression
    #[arg(long, default_value = "128K", value_parser = progress::parse_size)]
    pub chunk_size: u64,
    /// Label of the first key
    #[arg(long, default_value = "initial")]
    pub label: String,
    /// Repository format: 3 (prune beside backups), 4 (3 with roles: backup-only keys,
    /// `vault key add --role backup`), or 2 or 1 for a repository that older vaults must
    /// read (1: no bundles; before 3, prune deletes at once under an exclusive lock).
    /// `vault upgrade` raises 1 and 2 to 3 later
    #[arg(long, default_value_t = crate::format::config::REPO_VERSION,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::format::config::NEWEST_INIT_VERSION)))]
    pub format_version: u32,
}

#[derive(Args, Debug, Default)]
pub struct BackupArgs {
    #[command(flatten)]
    pub opts: crate::ops::backup::BackupOptions,
    /// Back up standard input as one file
    #[arg(long, requires = "stdin_filename")]
    pub stdin: bool,
    /// Run the command given instead of paths (after --) and back up its output as one
    /// file; if it fails, the backup fails and no snapshot is made.
    /// Example: vault backup --stdin-from-command --stdin-filename db.sql -- pg_dump mydb
    #[arg(long, requires = "stdin_filename", conflicts_with = "stdin")]
    pub stdin_from_command: bool,
    /// Name of the file that holds standard input in the snapshot
    #[arg(long)]
    pub stdin_filename: Option<String>,
    /// Read and chunk everything but write nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Compare with this snapshot instead of the newest of the same host and paths
    #[arg(long)]
    pub parent: Option<String>,
    /// Bring every mirror up to date afterwards
    #[arg(long)]
    pub sync: bool,
    /// Record this snapshot time (RFC 3339); for tests and imports
    #[arg(long, hide = true)]
    pub time: Option<String>,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

/// Which snapshot: an id prefix or `latest` as a positional argument, or `--at TIME`.
#[derive(Args, Debug, Clone, Default)]
pub struct AtArg {
    /// The newest snapshot taken at or before TIME: 2026-11-02, 2026-11-02T14:00 (local
    /// unless an offset is given), now, today, yesterday, monday, last friday, 3h ago,
    /// 2 days ago, 1w. A bare day means its end. Defaults to this host's snapshots.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// [SNAPSHOT] [PATH]: SNAPSHOT is `latest` or an id prefix (omit it with --at); PATH
    /// is inside the snapshot (default: everything)
    #[arg(num_args = 0..=2, value_name = "SNAPSHOT|PATH")]
    pub args: Vec<std::ffi::OsString>,
    #[command(flatten)]
    pub at: AtArg,
    /// Only the entries directly below PATH
    #[arg(long)]
    pub no_recursive: bool,
    /// Show mode, owner, size and time
    #[arg(long, short = 'l')]
    pub long: bool,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot: `latest` or an id prefix (or give --at)
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub at: AtArg,
    #[command(flatten)]
    pub opts: crate::ops::restore::RestoreOptions,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// [SNAPSHOT] PATH: SNAPSHOT is `latest` or an id prefix (omit it with --at); PATH is
    /// the file inside the snapshot
    #[arg(num_args = 1..=2, required = true, value_name = "SNAPSHOT|PATH")]
    pub args: Vec<std::ffi::OsString>,
    /// Write PATH and everything below it as an archive (names start with PATH's last
    /// component): tar keeps modes, owners, times, symlinks, hard links and any name;
    /// zip keeps modes, times and symlinks (hard links become copies, FIFOs and devices
    /// are left out)
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub archive: Option<crate::ops::dump::Archive>,
    #[command(flatten)]
    pub at: AtArg,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct VersionsArgs {
    /// File or directory, as backed up
    pub path: PathBuf,
    /// Only snapshots taken at or before TIME (same forms as --at)
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[cfg(feature = "mount")]
#[derive(Args, Debug)]
pub struct MountArgs {
    /// An existing empty directory to mount on
    pub mountpoint: PathBuf,
    /// Let other users use the mount (allow_other; as a user, /etc/fuse.conf must have
    /// user_allow_other); the stored modes decide what they may read
    #[arg(long)]
    pub allow_other: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// Two snapshots (`latest` or id prefixes), or one with one --at, or none with two
    #[arg(num_args = 0..=2, value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// A snapshot by time (repeatable; same forms as everywhere)
    #[arg(long, value_name = "TIME")]
    pub at: Vec<String>,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// Glob: without `/` it matches file names (`*.tex`), with `/` whole paths
    pub pattern: String,
    /// Search only at or below this path
    #[arg(long = "path", value_name = "PATH")]
    pub below: Option<PathBuf>,
    /// Only snapshots from this host (repeatable)
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Only snapshots with this tag (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Only snapshots taken at or before TIME
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// Snapshots to change: `latest` or id prefixes (default: all the filters select)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub change: crate::ops::tag::TagChange,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct RewriteArgs {
    /// Snapshots to rewrite: `latest` or id prefixes (default: all the filters select)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub opts: crate::ops::rewrite::RewriteOptions,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Snapshots of the source to copy: `latest` or id prefixes (default: all the filters
    /// select)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// The repository to copy from (path or URL, as --repo)
    #[arg(long, value_name = "LOCATION")]
    pub from: String,
    /// Read the source's password from this file
    #[arg(long, env = "VAULT_FROM_PASSWORD_FILE", value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Run this command and use its output as the source's password
    #[arg(long, env = "VAULT_FROM_PASSWORD_COMMAND", value_name = "CMD")]
    pub from_password_command: Option<String>,
    /// Show what would be copied; write nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Snapshots to count: `latest` or id prefixes (default: all the filters select)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// What to count
    #[arg(long, value_enum, default_value = "restore-size")]
    pub mode: crate::ops::stats::Mode,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove (id prefixes), instead of a policy
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub keep: crate::ops::keep::KeepOptions,
    /// Show what would be removed; remove nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Prune afterwards
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_opts: crate::ops::prune::PruneOptions,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub opts: crate::ops::prune::PruneOptions,
    /// Show what would be deleted and repacked; change nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Add a key (a new password) that opens the repository.
    ///
    /// Example: VAULT_NEW_PASSWORD_FILE=pw vault key add --label laptop
    ///
    /// With --role backup (a repository of format 4) the key adds snapshots as one
    /// host but cannot read file contents, other hosts' snapshots, forget or prune.
    Add(KeyNewArgs),
    /// List key files: id, label, host, created.
    List,
    /// Remove a key file (never the last one).
    Remove {
        /// Key id (prefix)
        id: String,
    },
    /// Change the password of the key in use.
    Passwd(KeyAddArgs),
    /// Print the decrypted master key: as a raw key file for VAULT_KEY_FILE on
    /// unattended machines, or on paper, to type back when every password is lost.
    ///
    /// Example: vault key export --raw > /etc/vault/key && chmod 600 /etc/vault/key
    ///
    /// Example: vault key export --paper | lp
    Export {
        /// A raw key file (JSON)
        #[arg(long, required_unless_present = "paper", conflicts_with = "paper")]
        raw: bool,
        /// Four lines of hex, each with a check, and a check of the whole key (eight
        /// lines after a key rotation: the second four hold the content key)
        #[arg(long)]
        paper: bool,
    },
    /// Replace the master key: a new key file for this password (or a new one), every
    /// other key file removed, and everything the repository holds sealed again under
    /// the new key, so that an old key file, raw key, paper key or the old master key
    /// opens nothing here any more. Takes the exclusive lock; a killed rotation is
    /// finished by running it again with the same password.
    ///
    /// Example: VAULT_NEW_PASSWORD_FILE=pw vault key rotate --yes
    Rotate(KeyRotateArgs),
    /// Type a paper key (`key export --paper`, four or eight lines) back in: each line is
    /// checked as it is typed (or read from stdin), then written as a raw key file for
    /// VAULT_KEY_FILE.
    /// Needs no repository.
    ///
    /// Example: vault key import --paper --output ~/vault.key
    Import {
        /// The key is on paper (the only form imported)
        #[arg(long, required = true)]
        paper: bool,
        /// Write the raw key file here (mode 600; an existing file is refused) instead of
        /// to stdout
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct KeyRotateArgs {
    #[command(flatten)]
    pub key: KeyAddArgs,
    /// Remove the other key files without asking (needed when there is more than the
    /// one in use and no terminal to ask on)
    #[arg(long)]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct KeyAddArgs {
    /// Label for the key
    #[arg(long, default_value = "")]
    pub label: String,
    /// Read the new password from this file
    #[arg(long, env = "VAULT_NEW_PASSWORD_FILE")]
    pub new_password_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct KeyNewArgs {
    #[command(flatten)]
    pub key: KeyAddArgs,
    /// What the key may do: full (everything) or backup (add snapshots as one host;
    /// needs a repository of format 4)
    #[arg(long, value_enum, default_value_t = KeyRole::Full)]
    pub role: KeyRole,
    /// The host a backup-role key backs up as (default: this machine's name)
    #[arg(long, requires = "role")]
    pub host: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRole {
    Full,
    Backup,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also read, decrypt and hash every blob
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read only some packs: a percentage (10%), a part (n/N; runs 1/N .. N/N cover all)
    /// or a size (2G)
    #[arg(long, value_name = "SUBSET")]
    pub read_data_subset: Option<crate::ops::subset::Subset>,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Hash only some packs (every other object is always hashed): 10%, n/N or 2G
    #[arg(long, value_name = "SUBSET")]
    pub read_data_subset: Option<crate::ops::subset::Subset>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Snapshot to restore: `latest` or an id prefix
    #[arg(default_value = "latest")]
    pub snapshot: String,
    #[command(flatten)]
    pub opts: crate::ops::verify::VerifyOptions,
    #[command(flatten)]
    pub filter: SnapshotFilter,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RepairArgs {
    /// Copy back every object this repository lacks or holds damaged, from this mirror
    /// (a name from `vault mirror list`, or a location URL)
    #[arg(long, value_name = "MIRROR")]
    pub from: Option<String>,
    #[command(subcommand)]
    pub command: Option<RepairCommand>,
}

#[derive(Subcommand, Debug)]
pub enum MirrorCommand {
    /// Add a mirror and copy the repository to it.
    ///
    /// Credentials come from the environment, never from the URL or the repository.
    Add(MirrorAddArgs),
    /// List the mirrors, and whether this host trusts each.
    List,
    /// Stop mirroring to NAME (its copy stays where it is).
    Remove {
        /// Mirror name
        name: String,
    },
    /// Use mirror NAME on this host: its definition in force, as printed.
    ///
    /// Any key holder can write a mirror definition, so each host uses a mirror only
    /// after it was added or trusted there; a newer definition of the name (another URL)
    /// must be trusted again. Check the URL first.
    Trust {
        /// Mirror name
        name: String,
        /// Let the usual AWS_*, VAULT_WEBDAV_*, ... variables serve as its credentials
        /// when it has no VAULT_MIRROR_<NAME>_* ones
        #[arg(long)]
        generic_credentials: bool,
    },
    /// Stop using mirror NAME on this host (the repository keeps its definition).
    Untrust {
        /// Mirror name
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct MirrorAddArgs {
    /// A short name, e.g. offsite (`primary` describes this repository's own vendor and
    /// region for `vault status`)
    pub name: String,
    /// Location: s3://bucket/prefix, sftp://user@host:port/path, /local/path, ...
    pub url: String,
    /// S3 endpoint URL (for S3-compatible services)
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Region, e.g. eu-central (also what `vault status` counts)
    #[arg(long, default_value = "")]
    pub region: String,
    /// Who runs the storage, e.g. wasabi, hetzner, home (what `vault status` counts)
    #[arg(long, default_value = "")]
    pub vendor: String,
    /// Free-form label (repeatable)
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Only record the mirror; copy at the next `vault sync`
    #[arg(long)]
    pub no_sync: bool,
    /// Let the usual AWS_*, VAULT_WEBDAV_*, ... variables serve as its credentials on
    /// this host when it has no VAULT_MIRROR_<NAME>_* ones
    #[arg(long)]
    pub generic_credentials: bool,
    /// Protect the copy for PERIOD (s, m, h or d, e.g. 30d): sync never deletes anything
    /// there, and `vault maintain` deletes only what was recorded gone that long ago, so
    /// that everything forgotten meanwhile can be restored from it (`vault unforget`)
    #[arg(long, value_name = "PERIOD", value_parser = parse_wait)]
    pub protect: Option<std::time::Duration>,
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Write a systemd service and timer running `vault run PROFILE` (user units, or
    /// system units as root), or print a crontab line with --cron.
    Install {
        /// Profile name: 1 to 64 ASCII letters, digits, '-', '_' or '.', not starting
        /// with '-' or '.' (it becomes part of unit file names and command lines)
        profile: String,
        /// Time of day, HH:MM (local)
        #[arg(long, default_value = "02:30")]
        at: String,
        /// Print a crontab line instead of writing systemd units
        #[arg(long)]
        cron: bool,
        /// Where to write the units (default: ~/.config/systemd/user, or
        /// /etc/systemd/system as root)
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
    },
    /// List the vault timers.
    List {
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
    },
    /// Remove a profile's service and timer.
    Remove {
        /// Profile name (same characters as for install)
        profile: String,
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Parse the config file and every profile in it; name the wrong key and line.
    Check,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Warn when the newest offline export is older than this (e.g. 35d, 2w, 3m)
    #[arg(long, default_value = "35d", value_name = "SPAN")]
    pub export_max_age: String,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Destination directory (a mounted archive disk); an earlier export of this
    /// repository there is updated incrementally
    #[arg(required_unless_present_any = ["image", "verify_image"], conflicts_with_all = ["image", "verify_image"])]
    pub dir: Option<PathBuf>,
    /// Write a standard tar image instead (unpacks into the same directory export)
    #[arg(long, value_name = "FILE", conflicts_with = "verify_image")]
    pub image: Option<PathBuf>,
    /// Cut the image into volumes FILE.000, FILE.001, ... of at most SIZE (e.g. 4480M)
    #[arg(long, value_name = "SIZE", requires = "image", value_parser = progress::parse_size)]
    pub split: Option<u64>,
    /// Check an image (or its volumes) against the MANIFEST it carries; needs no password
    #[arg(long, value_name = "FILE")]
    pub verify_image: Option<PathBuf>,
    /// Which snapshots: forget-style policy options or ids, in one string, e.g.
    /// '--keep-monthly 12' (default: all)
    #[arg(long, value_name = "SELECTION", allow_hyphen_values = true)]
    pub snapshots: Option<String>,
    /// A label for `vault status` (default: the directory name)
    #[arg(long)]
    pub label: Option<String>,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Only this mirror
    #[arg(long, value_name = "NAME")]
    pub mirror: Option<String>,
}

#[derive(Args, Debug)]
pub struct MaintainArgs {
    /// Only this mirror (default: every mirror this host trusts)
    #[arg(long, value_name = "NAME")]
    pub mirror: Option<String>,
    /// Show what would be deleted; delete nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct UnforgetArgs {
    /// The mirror (a name this host trusts) that still holds the snapshots
    #[arg(long, value_name = "NAME")]
    pub from: String,
    /// Snapshot ids or id prefixes, as the mirror names them (default: every snapshot
    /// forgotten here that the mirror still holds)
    pub snapshots: Vec<String>,
    /// Show which snapshots would come back; write nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index from the headers of the packs (exclusive lock).
    ///
    /// Example: vault repair index
    Index,
    /// Write new snapshots without the files that can no longer be restored.
    ///
    /// Each repaired snapshot is tagged `repaired`; the originals stay until you forget them.
    /// Example: vault repair snapshots --read-data
    Snapshots(crate::ops::repair::RepairSnapshotsOptions),
}

#[derive(Args, Debug)]
pub struct UnlockArgs {
    /// Also watch the other locks for the stale threshold (30 min) and remove those
    /// that did not change meanwhile: locks of processes that died on another machine,
    /// in another container or PID namespace, or before a reboot. For tests,
    /// VAULT_LOCK_STALE_SECS and VAULT_LOCK_REFRESH_SECS shorten the threshold and the
    /// refresh interval (5 min)
    #[arg(long, conflicts_with = "remove_all")]
    pub stale: bool,
    /// Remove every lock, whether its process still runs or not
    #[arg(long)]
    pub remove_all: bool,
}

/// Durations as `--lock-wait` and `--grace` take them; public for fuzzing.
pub use crate::units::parse_wait;

/// `--overwrite` takes an optional value, and clap takes the next word for it, whatever it
/// is: `restore --overwrite latest` would fail on `latest`. A bare `--overwrite` followed
/// by a word that is not one of its values is made `--overwrite=always` first.
fn bare_overwrite(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use clap::ValueEnum;
    let mut args: Vec<std::ffi::OsString> = args.collect();
    let is_value = |a: &std::ffi::OsString| {
        crate::ops::restore::Overwrite::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .any(|v| v.matches(&a.to_string_lossy(), false))
    };
    for i in 0..args.len() {
        if args[i] == "--" {
            break; // what follows is not vault's options
        }
        let next_is_word = args
            .get(i + 1)
            .is_some_and(|n| !n.to_string_lossy().starts_with('-'));
        if args[i] == "--overwrite" && next_is_word && !is_value(&args[i + 1]) {
            args[i] = "--overwrite=always".into();
        }
    }
    args
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    use clap::{CommandFactory, FromArgMatches};
    let parsed = Cli::command()
        .try_get_matches_from(bare_overwrite(std::env::args_os()))
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    let (cli, matches) = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    logger::init(cli.global.verbose, cli.global.quiet);
    crate::repo::cleanup::on_signals(|| {
        progress::eprint_line("vault: interrupted: removing temporary objects and locks")
    });
    crate::repo::location::private_local_writes();
    let cli = match profile::apply(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vault: {}", error_line(&e));
            return error::exit_code(&e);
        }
    };
    if cli.global.insecure_http {
        crate::repo::location::allow_insecure_http();
    }
    match cli.global.limits() {
        Ok(l) => crate::repo::location::set_limits(l),
        Err(e) => {
            eprintln!("vault: {e}");
            return exit::USAGE;
        }
    }
    let hooks = (cli.global.on_success.clone(), cli.global.on_failure.clone());
    let log_file = cli.global.log_file.clone();
    let command = matches.subcommand_name().unwrap_or_default().to_string();
    let verbose = cli.global.verbose > 0;
    if let Some(msg) = before(cli.global.before.as_deref(), &command) {
        eprintln!("vault: {msg}");
        let code = exit::BEFORE_FAILED;
        after_run(
            log_file.as_deref(),
            hooks.1.as_deref(),
            &command,
            code,
            &msg,
        );
        return code;
    }
    let result = commands::run(cli);
    for line in crate::repo::cleanup::left_behind() {
        eprintln!("vault: warning: {line}");
    }
    if crate::repo::cleanup::stopping() {
        // The signal thread removes what is on storage and ends the process with the
        // signal's code; the command's own error ("interrupted") is not the story.
        loop {
            std::thread::park();
        }
    }
    let (code, message) = match result {
        Ok(code) => (code, String::new()),
        Err(e) => {
            let msg = error_line(&e);
            eprintln!("vault: {msg}");
            if verbose {
                for d in error::details(&e) {
                    eprintln!("vault: detail: {d}");
                }
            }
            (error::exit_code(&e), msg)
        }
    };
    #[cfg(feature = "test-hooks")]
    if let Some(s) = crate::repo::storage::faults::summary() {
        eprintln!("vault: {s}");
    }
    let hook = if code == exit::OK { hooks.0 } else { hooks.1 };
    after_run(
        log_file.as_deref(),
        hook.as_deref(),
        &command,
        code,
        &message,
    );
    code
}

/// Runs the `--before` command, if any; why the command must not run when it failed.
fn before(cmd: Option<&str>, command: &str) -> Option<String> {
    let failed = match crate::hooks::run_before(cmd?, command) {
        Ok(s) if s.success() => return None,
        Ok(s) => format!("exited with {s}"),
        Err(e) => format!("could not run: {e}"),
    };
    Some(format!(
        "the --before command {:?} {failed}: vault {command} was not run",
        cmd?
    ))
}

/// An error as the command line prints it: the library's message, then the advice for
/// its remedy, worded as the command to run.
fn error_line(e: &anyhow::Error) -> String {
    let line = error::one_line(e);
    match error::remedy(e) {
        Some(r) => line + &advice(&r),
        None => line,
    }
}

fn advice(r: &error::Remedy) -> String {
    use error::Remedy::*;
    match r {
        Init(at) => format!(
            ": create one with `vault init --repo {at}`, or check --repo / VAULT_REPOSITORY"
        ),
        CheckThenRepairFromMirror => "; run `vault check` and `vault repair --from MIRROR`".into(),
        CheckDataThenRepair => "; run `vault check --read-data` and repair first".into(),
        Check => "; run `vault check`".into(),
        CheckBeforePruning => ": run `vault check` before pruning".into(),
        RepairIndexBeforePruning => ": run `vault repair index` before pruning".into(),
        RepairSnapshotsFirst => "; run `vault check` and `vault repair snapshots` first".into(),
        ForgetOrRepair(id) => format!("; forget it (`vault forget {id}`) or repair first"),
        CheckData => " (run `vault check --read-data`)".into(),
        ListKeys => " (see `vault key list`)".into(),
        AddKeyFirst => ": add another with `vault key add` first".into(),
        AddPassword => ": use `vault key add` to add a password".into(),
        ListSnapshots { other_hosts: true } => {
            ": see `vault snapshots` (--host selects another machine's)".into()
        }
        ListSnapshots { other_hosts: false } => " (see `vault snapshots`)".into(),
        RestoreInstead => "; use `vault restore --include` instead".into(),
        OtherVersion(path) => {
            format!("; take the file from another snapshot (`vault versions {path}`)")
        }
    }
}

/// The log line and the hook, whose failures are reported but never change vault's exit
/// code.
fn after_run(
    log: Option<&std::path::Path>,
    hook: Option<&str>,
    command: &str,
    code: i32,
    message: &str,
) {
    if let Some(log) = log
        && let Err(e) = crate::hooks::append_log(log, command, code, message)
    {
        eprintln!("vault: warning: log file {}: {e}", log.display());
    }
    let Some(cmd) = hook else { return };
    match crate::hooks::run_hook(cmd, command, code, message) {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("vault: warning: hook {cmd:?} exited with {s}"),
        Err(e) => eprintln!("vault: warning: hook {cmd:?} could not run: {e}"),
    }
}
