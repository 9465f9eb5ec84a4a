//! Restore, streamed and bounded. The snapshot is walked depth-first with an explicit
//! stack, the target alongside it through directory descriptors, and files are written a
//! window at a time: each window's packs are read once, several at a time, in ranges.
//! Memory is the depth of the tree plus one window, whatever the tree's shape.
//!
//! A hostile target cannot redirect it. Every entry is reached relative to a directory
//! restore opened itself with O_NOFOLLOW, so a symlink planted at any component, or
//! swapped in while restore runs, is never followed; a non-directory to overwrite is
//! unlinked and created anew (O_EXCL), never written through. Files are created with
//! their owner bits only, directories 0700, and their modes, owners, xattrs and times are
//! applied through the open descriptor once the contents are written (directories after
//! everything in them), so nothing is ever more open than the snapshot says, even after
//! a kill.
//!
//! Into a target that holds entries already, [`Overwrite`] decides per entry. With
//! `if-changed` an existing regular file is kept or written in place only when nothing
//! outside can reach it (no link but the snapshot's own, owned by the restoring user or
//! the snapshot's owner); it is set to its owner bits first, its bytes are hashed at the
//! snapshot's blob boundaries, and only the blobs that differ are read and written. A
//! file restore was writing when killed has the mtime of that moment, not the
//! snapshot's, so a run with `if-changed` compares it and writes what is missing.
//! `--delete` removes, at the end of each restored directory, the names the snapshot
//! does not hold there and the selection covers: through the directory's descriptor, a
//! directory by a walk that never follows a symlink, anything else by unlinking it.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::bounded;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

use super::walk;
use crate::format::Id;
use crate::format::pack::{self, BlobEntry, BlobType};
use crate::format::tree::{Node, NodeType};
use crate::fsmeta::{self, Apply};
use crate::repo::{FileKind, Repository};

/// What a restore writes where: one type for programs and the command line (clap derives
/// its flags under the `cli` feature).
#[derive(Default, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RestoreOptions {
    /// Directory to restore into (snapshot paths are recreated below it)
    #[cfg_attr(feature = "cli", arg(long, short = 't'))]
    pub target: PathBuf,
    /// Restore only paths matching this pattern or below it (repeatable)
    #[cfg_attr(feature = "cli", arg(long = "include", short = 'i'))]
    pub includes: Vec<String>,
    /// Leave out paths matching this pattern (repeatable)
    #[cfg_attr(feature = "cli", arg(long = "exclude", short = 'e'))]
    pub excludes: Vec<String>,
    /// What to do with entries already in the target: without this flag a restore that
    /// would replace anything is refused; a bare --overwrite means `always`
    #[cfg_attr(
        feature = "cli",
        arg(long, value_enum, num_args = 0..=1, default_missing_value = "always", value_name = "WHEN")
    )]
    pub overwrite: Option<Overwrite>,
    /// With --overwrite if-changed: compare the contents of files whose size and mtime
    /// match the snapshot's too (chunk hashes), instead of taking them as unchanged
    #[cfg_attr(feature = "cli", arg(long))]
    pub verify_content: bool,
    /// Remove entries the snapshot does not hold, inside the restored paths only (symlinks
    /// are removed themselves, never followed)
    #[cfg_attr(feature = "cli", arg(long))]
    pub delete: bool,
    /// List what would be written and deleted, and change nothing
    #[cfg_attr(feature = "cli", arg(long))]
    pub dry_run: bool,
    /// Re-read every restored file and compare it with the snapshot
    #[cfg_attr(feature = "cli", arg(long))]
    pub verify: bool,
    /// Restore exactly these snapshot paths (and the directories above them) instead of
    /// matching patterns; for sampling, where names may hold glob characters.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub only: Option<HashSet<PathBuf>>,
    /// Leave restored files owned by the restoring user, and drop setuid and setgid bits
    /// (the default when not run as root)
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_owner: bool,
    /// Do not restore extended attributes
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_xattrs: bool,
    /// Do not restore FIFOs or device nodes
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_special: bool,
}

/// What restore does with an entry the target already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Overwrite {
    /// Replace every existing entry
    Always,
    /// Rewrite only what differs from the snapshot: a file whose size and mtime match is
    /// kept (its contents are compared too with --verify-content); of any other file only
    /// the chunks whose hashes differ are written. Metadata is always brought in line
    IfChanged,
    /// Replace an entry only when the snapshot's mtime is newer than its own
    IfNewer,
    /// Leave every existing entry as it is (resumes an interrupted restore)
    Never,
}

#[derive(Default)]
pub struct Counters {
    pub files: AtomicU64,
    /// Bytes of the files restored so far: data written, holes and hard links included.
    pub bytes: AtomicU64,
    /// What `bytes` will reach, 0 until known: for the caller to set, from the snapshot's
    /// summary for a whole snapshot, or from [`planned_bytes`] on a thread of its own.
    pub total: AtomicU64,
    /// Data blobs read from the repository.
    pub blobs_read: AtomicU64,
    /// Bytes of data written into the target (holes and chunks found in place left out).
    pub bytes_written: AtomicU64,
}

#[derive(Default, Debug, serde::Serialize)]
pub struct RestoreResult {
    /// Non-directories written (made, replaced or patched).
    pub files: u64,
    pub dirs: u64,
    /// The sizes of the files written.
    pub bytes: u64,
    /// Existing entries left as they were (unchanged, or kept by the --overwrite mode);
    /// with if-changed their metadata was brought in line.
    pub unchanged: u64,
    /// Entries the snapshot does not hold, removed with --delete (a directory counts once).
    pub deleted: u64,
    /// Data blobs read from the repository.
    pub blobs_read: u64,
    /// Bytes of data written into the target.
    pub bytes_written: u64,
    /// With --dry-run: what would change, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// One line per file or directory that could not be restored (or verified).
    pub errors: Vec<String>,
}

/// One change a dry run lists.
#[derive(Debug, serde::Serialize)]
pub struct Change {
    /// "write" or "delete".
    pub action: &'static str,
    pub path: PathBuf,
}

/// A full disk (or quota) ends the whole restore: every later write would fail the same
/// way, and a thousand "not restored" lines would hide the one thing to do.
fn no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

fn no_space_error(path: &Path, target: &Path, e: &std::io::Error) -> anyhow::Error {
    anyhow!(
        "restore stopped: writing {}: {e}; files not completely written were removed: free space on the file system of {} or restore elsewhere, then run the restore again",
        path.display(),
        target.display()
    )
}

struct Target {
    file: usize,
    stream_offset: u64,
}

struct Matcher {
    only: Option<(HashSet<PathBuf>, HashSet<PathBuf>)>,
    includes: Option<Gitignore>,
    literal_includes: Vec<PathBuf>,
    excludes: Gitignore,
}

fn build(patterns: &[String]) -> Result<Gitignore> {
    let mut b = GitignoreBuilder::new("/");
    for p in patterns {
        b.add_line(None, p)
            .with_context(|| format!("pattern {p:?} is not a valid glob"))?;
    }
    Ok(b.build()?)
}

impl Matcher {
    fn new(opts: &RestoreOptions) -> Result<Matcher> {
        let literal = opts
            .includes
            .iter()
            .all(|p| !p.contains(['*', '?', '[', '!']));
        let only = opts.only.as_ref().map(|paths| {
            let dirs = paths
                .iter()
                .flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf))
                .collect();
            (paths.clone(), dirs)
        });
        Ok(Matcher {
            only,
            includes: if opts.includes.is_empty() {
                None
            } else {
                Some(build(&opts.includes)?)
            },
            literal_includes: if literal {
                opts.includes.iter().map(PathBuf::from).collect()
            } else {
                Vec::new()
            },
            excludes: build(&opts.excludes)?,
        })
    }

    fn excluded(&self, p: &Path, dir: bool) -> bool {
        self.excludes
            .matched_path_or_any_parents(p, dir)
            .is_ignore()
    }

    fn included(&self, p: &Path, dir: bool) -> bool {
        if let Some((paths, _)) = &self.only {
            return paths.contains(p);
        }
        self.includes
            .as_ref()
            .is_none_or(|g| g.matched_path_or_any_parents(p, dir).is_ignore())
    }

    /// Whether a directory that is not itself included may hold included paths.
    fn may_contain(&self, dir: &Path) -> bool {
        if let Some((_, dirs)) = &self.only {
            return dirs.contains(dir);
        }
        self.literal_includes.is_empty() || self.literal_includes.iter().any(|i| i.starts_with(dir))
    }
}

/// A directory of the target that restore holds open, with the identity it had when
/// opened: a directory reopened through ".." must be the same one.
struct Dir {
    file: File,
    dev: u64,
    ino: u64,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl Dir {
    fn from_fd(fd: std::os::fd::OwnedFd) -> nix::Result<Dir> {
        let st = nix::sys::stat::fstat(&fd)?;
        Ok(Dir {
            file: File::from(fd),
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// The directory `name` in `self`, never through a symlink.
    fn open(&self, name: &OsStr) -> nix::Result<Dir> {
        Dir::from_fd(nix::fcntl::openat(
            &self.file,
            name,
            DIR_FLAGS,
            Mode::empty(),
        )?)
    }

    /// The target itself: the one path restore follows as given.
    fn open_target(path: &Path) -> Result<Dir> {
        let fd = nix::fcntl::open(path, DIR_FLAGS.difference(OFlag::O_NOFOLLOW), Mode::empty())
            .with_context(|| format!("restore target {}", path.display()))?;
        Ok(Dir::from_fd(fd)?)
    }

    fn unlink(&self, name: &OsStr) -> nix::Result<()> {
        nix::unistd::unlinkat(&self.file, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
    }
}

/// Removes a non-directory at `name` so that something new can be made there; a
/// directory is kept (and reported), never emptied.
fn replace(dir: &Dir, name: &OsStr) -> std::io::Result<()> {
    let st = nix::sys::stat::fstatat(&dir.file, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if fsmeta::is_dir(&st) {
        return Err(std::io::Error::other(
            "a directory is in the way; not replaced",
        ));
    }
    Ok(dir.unlink(name)?)
}

/// Makes one entry with `make`; with `overwrite`, a non-directory already there is
/// replaced, without it the existing entry is reported and left alone.
fn make_entry(
    dir: &Dir,
    name: &OsStr,
    overwrite: bool,
    make: impl Fn() -> nix::Result<()>,
) -> std::io::Result<()> {
    match make() {
        Err(Errno::EEXIST) if overwrite => {
            replace(dir, name)?;
            Ok(make()?)
        }
        Err(Errno::EEXIST) => Err(std::io::Error::other(
            "something appeared there during the restore; not overwritten",
        )),
        r => Ok(r?),
    }
}

/// A new regular file, readable and writable through the returned descriptor only: its
/// mode is the snapshot's owner bits until the contents are in.
fn create_file(dir: &Dir, name: &OsStr, mode: u32, overwrite: bool) -> std::io::Result<File> {
    let flags =
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let made = Mutex::new(None);
    make_entry(dir, name, overwrite, || {
        let fd = nix::fcntl::openat(
            &dir.file,
            name,
            flags,
            Mode::from_bits_truncate((mode & 0o700) as libc::mode_t),
        )?;
        *made.lock().expect("poisoned") = Some(File::from(fd));
        Ok(())
    })?;
    Ok(made.into_inner().expect("poisoned").expect("made"))
}

/// The directory `name` in `dir`: made 0700, or opened if one is there. A non-directory
/// in its place is replaced with `overwrite`, an error without.
fn make_dir(dir: &Dir, name: &OsStr, overwrite: bool) -> std::io::Result<Dir> {
    match nix::sys::stat::mkdirat(&dir.file, name, Mode::S_IRWXU) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    match dir.open(name) {
        Err(Errno::ENOTDIR | Errno::ELOOP) if overwrite => {
            replace(dir, name)?;
            nix::sys::stat::mkdirat(&dir.file, name, Mode::S_IRWXU)?;
            Ok(dir.open(name)?)
        }
        Err(Errno::ENOTDIR | Errno::ELOOP) => Err(std::io::Error::other(
            "a non-directory (perhaps a symlink) is in the way; not followed or replaced",
        )),
        r => Ok(r?),
    }
}

/// What restore does at the name of one non-directory, from what is there and the
/// --overwrite mode.
enum Action {
    /// Nothing there (or no --overwrite, where something appearing is an error): make it.
    Create,
    /// Remove what is there and make it anew.
    Replace,
    /// Leave what is there as it is.
    Keep,
    /// The contents are the snapshot's: bring only the metadata in line (a regular file
    /// through the descriptor given, anything else by name).
    Meta(Option<File>),
    /// A regular file restore may write in place: compare its chunks, write what differs.
    Patch(File),
}

fn mtime_ns(st: &FileStat) -> i64 {
    st.st_mtime * 1_000_000_000 + st.st_mtime_nsec
}

/// Whether an existing regular file may be kept or written in place rather than
/// replaced: no name outside what restore makes may reach it (one link, or no more than
/// the snapshot's own hard links), and it belongs to the restoring user or, when restore
/// sets owners, to the snapshot's, so nobody else can hold it open for what is written.
fn in_place_ok(st: &FileStat, node: &Node, apply: Apply) -> bool {
    #[allow(clippy::unnecessary_cast)] // nlink_t is narrower on some targets
    let nlink = st.st_nlink as u64;
    let links = nlink == 1 || (node.links > 1 && nlink <= node.links);
    let euid = nix::unistd::geteuid().as_raw();
    links && (st.st_uid == euid || (apply.owners && st.st_uid == node.uid))
}

/// Opens the regular file `name` in `dir` without following a symlink, only if it is
/// still the one `st` describes; None when it cannot be opened so (then it is replaced).
fn open_existing(dir: &Dir, name: &OsStr, st: &FileStat, flags: OFlag) -> Option<File> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(&dir.file, name, flags, Mode::empty()).ok()?;
    let now = nix::sys::stat::fstat(&fd).ok()?;
    ((now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)).then(|| File::from(fd))
}

/// Decides what to do at the name of `node` in `dir`.
fn decide(
    dir: &Dir,
    node: &Node,
    mode: Option<Overwrite>,
    verify_content: bool,
    apply: Apply,
) -> std::io::Result<Action> {
    // Without --overwrite the target was checked before: anything there now appeared
    // meanwhile, and making the entry (O_EXCL) reports it.
    let Some(mode) = mode else {
        return Ok(Action::Create);
    };
    let st = match nix::sys::stat::fstatat(&dir.file, name_of(node), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => return Ok(Action::Create),
        Err(e) => return Err(e.into()),
        Ok(st) => st,
    };
    Ok(match mode {
        Overwrite::Never => Action::Keep,
        Overwrite::Always => Action::Replace,
        Overwrite::IfNewer if node.mtime_ns > mtime_ns(&st) => Action::Replace,
        Overwrite::IfNewer => Action::Keep,
        Overwrite::IfChanged => if_changed(dir, node, &st, verify_content, apply)?,
    })
}

fn if_changed(
    dir: &Dir,
    node: &Node,
    st: &FileStat,
    verify_content: bool,
    apply: Apply,
) -> std::io::Result<Action> {
    let name = name_of(node);
    let fmt = st.st_mode & libc::S_IFMT;
    let same = match node.kind {
        NodeType::File => {
            if fmt != libc::S_IFREG || !in_place_ok(st, node, apply) {
                return Ok(Action::Replace);
            }
            let quick = st.st_size as u64 == node.size && mtime_ns(st) == node.mtime_ns;
            if quick && !verify_content {
                return Ok(match open_existing(dir, name, st, OFlag::O_RDONLY) {
                    Some(f) => Action::Meta(Some(f)),
                    None => Action::Replace,
                });
            }
            return Ok(match open_existing(dir, name, st, OFlag::O_RDWR) {
                Some(f) => Action::Patch(f),
                None => Action::Replace,
            });
        }
        NodeType::Symlink => {
            fmt == libc::S_IFLNK
                && nix::fcntl::readlinkat(&dir.file, name)?.as_bytes()
                    == node.target.as_ref().map(|t| &t.0[..]).unwrap_or_default()
        }
        NodeType::Fifo => fmt == libc::S_IFIFO,
        NodeType::Chardev => fmt == libc::S_IFCHR && st.st_rdev == node.rdev,
        NodeType::Blockdev => fmt == libc::S_IFBLK && st.st_rdev == node.rdev,
        NodeType::Dir | NodeType::Socket => false,
    };
    Ok(if same {
        Action::Meta(None)
    } else {
        Action::Replace
    })
}

/// What an existing file holds of a snapshot file: for each of its blobs (of the raw
/// lengths `lens`), whether the file holds it already at its place, judged by the keyed
/// hash of the bytes there, as backup computes blob ids; and whether any hole of the
/// snapshot file holds data in the existing one.
fn held_blobs(
    repo: &Repository,
    file: &File,
    node: &Node,
    extents: &[[u64; 2]],
    lens: &[u64],
) -> std::io::Result<(Vec<bool>, bool)> {
    let len = file.metadata()?.len();
    let mut held = Vec::with_capacity(lens.len());
    let mut stream = 0u64;
    let mut buf = Vec::new();
    for (id, &n) in node.content.iter().zip(lens) {
        buf.resize(n as usize, 0);
        let ok = read_stream(file, extents, stream, &mut buf).is_ok()
            && repo.keys.blob_id(0, &buf) == *id;
        held.push(ok);
        stream += n;
    }
    // The gaps between extents, up to what the file holds.
    let mut dirty = false;
    let mut pos = 0u64;
    let gaps = extents
        .iter()
        .map(|&[off, n]| (off, off + n))
        .chain(std::iter::once((node.size, node.size)));
    for (start, end) in gaps {
        let (a, b) = (pos.min(len), start.min(len));
        if a < b && !zeros_at(file, a, b)? {
            dirty = true;
            break;
        }
        pos = end;
    }
    Ok((held, dirty))
}

fn zeros_at(file: &File, mut from: u64, to: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 1 << 16];
    while from < to {
        let n = (to - from).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], from)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        from += n as u64;
    }
    Ok(true)
}

/// The entries of `dir`, each with whether it is a directory (never following a
/// symlink), read through a descriptor of its own.
fn list_dir(dir: &Dir) -> std::io::Result<Vec<(std::ffi::OsString, bool)>> {
    let own = File::from(nix::fcntl::openat(
        &dir.file,
        ".",
        DIR_FLAGS,
        Mode::empty(),
    )?);
    fsmeta::remove::entries(&own)
}

/// The entries of the restored directory `dir` (snapshot path `path`) that the snapshot
/// does not hold (`names`) and the selection covers: what --delete removes.
fn extra_entries(
    m: &Matcher,
    dir: &Dir,
    path: &Path,
    names: &HashSet<Vec<u8>>,
) -> std::io::Result<Vec<(std::ffi::OsString, bool, PathBuf)>> {
    let mut out = Vec::new();
    for (name, is_dir) in list_dir(dir)? {
        if names.contains(name.as_bytes()) {
            continue;
        }
        let p = path.join(&name);
        if m.included(&p, is_dir) && !m.excluded(&p, is_dir) {
            out.push((name, is_dir, p));
        }
    }
    Ok(out)
}

/// Removes one entry --delete found: a directory with everything below it, anything else
/// (a symlink included) by unlinking the name itself.
fn remove_entry(dir: &Dir, name: &OsStr, is_dir: bool) -> std::io::Result<()> {
    if is_dir {
        fsmeta::remove::remove_tree_at(&dir.file, name)
    } else {
        Ok(dir.unlink(name)?)
    }
}

fn names_of(entries: &[Node]) -> HashSet<Vec<u8>> {
    entries.iter().map(|n| n.name.0.clone()).collect()
}

fn name_of(node: &Node) -> &OsStr {
    OsStr::from_bytes(&node.name.0)
}

/// What a walk of the selection meets next.
enum Step<D> {
    /// An entry whose name restore will not make (see `walk::safe_name`), in the
    /// directory at the walk's path.
    Unsafe(Node),
    /// A non-directory the selection includes, and its snapshot path.
    Entry(Node, PathBuf),
    /// A directory the selection includes, or may include something below; the walk
    /// goes into it only when given its entries ([`Selection::enter`]).
    Dir {
        node: Node,
        path: PathBuf,
        included: bool,
    },
    /// A directory entered is done: what its user kept for it, and its snapshot path.
    Left(D, PathBuf),
}

/// One directory of a walk: its remaining entries, and what the walk's user keeps for it.
struct Level<D> {
    entries: std::vec::IntoIter<Node>,
    dir: D,
}

/// The snapshot walked depth first as far as the patterns select it, with an explicit
/// stack (a tree tens of thousands of directories deep must not recurse), one path
/// that grows and shrinks with it, and per directory entered a `D` of its user's:
/// restore's place in the target, the open directory an overwrite check stats in.
struct Selection<'m, D> {
    m: &'m Matcher,
    levels: Vec<Level<D>>,
    /// The snapshot path of the top level.
    path: PathBuf,
}

impl<'m, D> Selection<'m, D> {
    /// A walk of the root tree's `entries`, the root's own `dir` beside them.
    fn new(m: &'m Matcher, entries: Vec<Node>, dir: D) -> Self {
        Selection {
            m,
            levels: vec![Level {
                entries: entries.into_iter(),
                dir,
            }],
            path: PathBuf::from("/"),
        }
    }

    fn leave(&mut self) -> Step<D> {
        let level = self.levels.pop().expect("a level to leave");
        let up = self.path.parent().unwrap_or(Path::new("/")).to_path_buf();
        Step::Left(level.dir, std::mem::replace(&mut self.path, up))
    }

    /// Goes into the directory at `path` (the last [`Step::Dir`]), whose entries are
    /// `entries`.
    fn enter(&mut self, entries: Vec<Node>, path: PathBuf, dir: D) {
        self.levels.push(Level {
            entries: entries.into_iter(),
            dir,
        });
        self.path = path;
    }

    /// The snapshot path of the directory the walk is in.
    fn path(&self) -> &Path {
        &self.path
    }

    /// Directories entered and not left, the root's included.
    fn depth(&self) -> usize {
        self.levels.len()
    }

    /// What is kept for the directory at depth `i` (0: the root).
    fn level(&self, i: usize) -> &D {
        &self.levels[i].dir
    }

    fn level_mut(&mut self, i: usize) -> &mut D {
        &mut self.levels[i].dir
    }

    /// What is kept for the directory the walk is in (the walk is not over).
    fn current(&self) -> &D {
        &self.levels.last().expect("a directory the walk is in").dir
    }

    /// What is kept for the directory the walk is in, if any.
    fn top_mut(&mut self) -> Option<&mut D> {
        self.levels.last_mut().map(|l| &mut l.dir)
    }
}

impl<D> Iterator for Selection<'_, D> {
    type Item = Step<D>;

    /// The next entry the selection keeps, or a directory left; None once the root is.
    fn next(&mut self) -> Option<Step<D>> {
        loop {
            let top = self.levels.last_mut()?;
            let Some(node) = top.entries.next() else {
                return Some(self.leave());
            };
            if !walk::safe_name(&node.name.0) {
                return Some(Step::Unsafe(node));
            }
            let path = self.path.join(name_of(&node));
            let is_dir = node.kind == NodeType::Dir;
            if self.m.excluded(&path, is_dir) {
                continue;
            }
            let included = self.m.included(&path, is_dir);
            if is_dir && (included || self.m.may_contain(&path)) {
                return Some(Step::Dir {
                    node,
                    path,
                    included,
                });
            }
            if !is_dir && included {
                return Some(Step::Entry(node, path));
            }
        }
    }
}

/// A file whose contents this window writes.
struct WinFile {
    path: PathBuf,
    dir: Arc<Dir>,
    file: File,
    node: Node,
    extents: Vec<[u64; 2]>,
    /// Blob placements not yet written; a file is complete at zero.
    pending: AtomicUsize,
    /// Made by this restore, so its holes and unwritten ranges read as zeros; a file
    /// written in place is not, and all-zero data is written into it.
    fresh: bool,
}

/// A hard link made in this window, to a file that may still fail.
struct WinLink {
    path: PathBuf,
    dir: Arc<Dir>,
    key: (u64, u64),
}

/// A directory whose metadata waits until everything in it is written.
struct WinDir {
    path: PathBuf,
    dir: Arc<Dir>,
    node: Node,
}

type PackPlan = HashMap<Id, Vec<(BlobEntry, Vec<Target>)>>;

/// What restore holds between two flushes.
#[derive(Default)]
struct Window {
    files: Vec<WinFile>,
    links: Vec<WinLink>,
    dirs: Vec<WinDir>,
    by_pack: PackPlan,
    blob_slot: HashMap<Id, (Id, usize)>,
    placements: usize,
    bytes: u64,
}

impl Window {
    /// Files (each an open descriptor) and directories held; blob placements and bytes
    /// planned. Large enough that each pack range is read once in the common case.
    const FILES: usize = 384;
    const DIRS: usize = 256;
    const PLACEMENTS: usize = 1 << 16;
    const BYTES: u64 = 256 << 20;

    fn full(&self) -> bool {
        self.files.len() >= Self::FILES
            || self.dirs.len() >= Self::DIRS
            || self.placements >= Self::PLACEMENTS
            || self.bytes >= Self::BYTES
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not in the target yet: made when something in it is restored.
    Pending,
    Made,
    Failed,
}

/// One directory of the walk: its place in the target.
struct Frame {
    /// The directory's own node; None for the snapshot's root (the target itself).
    node: Option<Node>,
    state: State,
    /// Open while among the deepest [`Restorer::OPEN_DIRS`] made directories.
    dir: Option<Arc<Dir>>,
    ident: (u64, u64),
    /// With --delete: the names the snapshot holds in the directory.
    names: Option<HashSet<Vec<u8>>>,
}

struct Restorer<'a> {
    repo: &'a Repository,
    opts: &'a RestoreOptions,
    apply: Apply,
    counters: Arc<Counters>,
    target: Arc<Dir>,
    walk: Selection<'a, Frame>,
    window: Window,
    /// The first restored name of each hard-linked inode, as (dev, inode).
    links: HashMap<(u64, u64), PathBuf>,
    failed_links: HashSet<(u64, u64)>,
    result: RestoreResult,
    lost: Vec<String>,
}

pub fn restore(
    repo: &Repository,
    root: &Id,
    opts: &RestoreOptions,
    counters: Arc<Counters>,
) -> Result<RestoreResult> {
    let m = Matcher::new(opts)?;
    let root_tree = repo
        .load_tree(root)
        .context("the snapshot's root tree is unreadable")?;
    if opts.overwrite.is_none() {
        refuse_existing(repo, root_tree.nodes.clone(), &m, &opts.target)?;
    }
    let as_root = nix::unistd::geteuid().is_root();
    let apply = Apply {
        owners: as_root && !opts.no_owner,
        xattrs: !opts.no_xattrs,
        // Only an entry that was there before can carry xattrs the snapshot lacks.
        drop_other_xattrs: opts.overwrite.is_some(),
    };
    if opts.dry_run {
        return dry_run(repo, root_tree.nodes, &m, opts, apply);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.target)
        .with_context(|| format!("restore target {}", opts.target.display()))?;
    raise_fd_limit();
    let target = Arc::new(Dir::open_target(&opts.target)?);
    let root = Frame {
        node: None,
        state: State::Made,
        ident: (target.dev, target.ino),
        dir: Some(target.clone()),
        names: opts.delete.then(|| names_of(&root_tree.nodes)),
    };
    let mut r = Restorer {
        repo,
        opts,
        apply,
        counters,
        target,
        walk: Selection::new(&m, root_tree.nodes, root),
        window: Window::default(),
        links: HashMap::new(),
        failed_links: HashSet::new(),
        result: RestoreResult::default(),
        lost: Vec::new(),
    };
    r.run()?;
    let mut result = r.result;
    result.errors.append(&mut r.lost);
    result.blobs_read = r.counters.blobs_read.load(Ordering::Relaxed);
    result.bytes_written = r.counters.bytes_written.load(Ordering::Relaxed);
    Ok(result)
}

/// A directory of a dry run's walk: the target's, when there is one, and with --delete
/// the names the snapshot holds in it.
struct DryDir {
    dir: Option<Dir>,
    names: HashSet<Vec<u8>>,
}

/// What a restore with `opts` would write and delete, walked beside the target through
/// descriptors as restore walks it, reading (and hashing, for if-changed) but changing
/// nothing.
fn dry_run(
    repo: &Repository,
    root: Vec<Node>,
    m: &Matcher,
    opts: &RestoreOptions,
    apply: Apply,
) -> Result<RestoreResult> {
    let mut r = RestoreResult::default();
    let top = DryDir {
        dir: Dir::open_target(&opts.target).ok(),
        names: names_of(&root),
    };
    let mut walk = Selection::new(m, root, top);
    while let Some(step) = walk.next() {
        match step {
            Step::Entry(node, path) => {
                let special = matches!(
                    node.kind,
                    NodeType::Fifo | NodeType::Chardev | NodeType::Blockdev
                );
                if node.kind == NodeType::Socket || (special && opts.no_special) {
                    continue;
                }
                let writes = match &walk.current().dir {
                    None => true,
                    Some(dir) => dry_writes(repo, dir, &node, opts, apply)?,
                };
                if writes {
                    r.files += 1;
                    r.bytes += node.size;
                    r.changes.push(Change {
                        action: "write",
                        path,
                    });
                } else {
                    r.unchanged += 1;
                }
            }
            Step::Dir { node, path, .. } => {
                let entries = match node.subtree {
                    Some(id) => repo.load_tree(&id).map(|t| t.nodes).unwrap_or_default(),
                    None => Vec::new(),
                };
                let dir = walk
                    .current()
                    .dir
                    .as_ref()
                    .and_then(|d| d.open(name_of(&node)).ok());
                let names = names_of(&entries);
                walk.enter(entries, path, DryDir { dir, names });
            }
            Step::Left(d, path) => {
                if let (true, Some(dir)) = (opts.delete, &d.dir) {
                    for (_, is_dir, p) in extra_entries(m, dir, &path, &d.names)? {
                        r.deleted += 1;
                        let mut path = p.into_os_string();
                        if is_dir {
                            path.push("/");
                        }
                        r.changes.push(Change {
                            action: "delete",
                            path: path.into(),
                        });
                    }
                }
            }
            Step::Unsafe(_) => {}
        }
    }
    Ok(r)
}

/// Whether a restore would write the non-directory `node` into `dir`.
fn dry_writes(
    repo: &Repository,
    dir: &Dir,
    node: &Node,
    opts: &RestoreOptions,
    apply: Apply,
) -> Result<bool> {
    Ok(
        match decide(dir, node, opts.overwrite, opts.verify_content, apply)? {
            Action::Create | Action::Replace => true,
            Action::Keep | Action::Meta(_) => false,
            Action::Patch(file) => {
                let extents = node
                    .checked_extents()
                    .map_err(|why| anyhow!("damaged tree node: {why}"))?;
                let lens = blob_lens(repo, node)?;
                let (held, dirty) = held_blobs(repo, &file, node, &extents, &lens)?;
                dirty || file.metadata()?.len() != node.size || held.contains(&false)
            }
        },
    )
}

/// The raw length of each of a file's blobs, from the index.
fn blob_lens(repo: &Repository, node: &Node) -> Result<Vec<u64>> {
    let index = repo.index();
    node.content
        .iter()
        .map(|id| {
            index
                .raw_len(id)
                .map(u64::from)
                .ok_or_else(|| anyhow!("data blob {} is missing from the index", id.short()))
        })
        .collect()
}

/// The size of every file a restore of the tree `root` with `opts` makes (what
/// `Counters::bytes` reaches), from walking the trees as restore does: for a progress
/// display beside the restore. None when `stop` is set first, or the root tree does not
/// read (an unreadable subtree counts as empty, as restore leaves it).
pub fn planned_bytes(
    repo: &Repository,
    root: &Id,
    opts: &RestoreOptions,
    stop: &AtomicBool,
) -> Option<u64> {
    let mut total = 0u64;
    walk_files(repo, root, opts, stop, |node| total += node.size, |_| true)?;
    Some(total)
}

/// Every data blob a restore of the tree `root` with `opts` may read, found by walking
/// the trees as restore does (an index of trees only is enough): what
/// `Repository::load_index_keeping` keeps. None when the root tree does not read.
///
/// A tree met a second time is not walked again: every blob below it is taken instead
/// (more than the selection may need, never less), each distinct tree read once, so a
/// crafted snapshot whose trees repeat each other costs a read a tree, not a walk of
/// every path (restore then walks those paths until the disk is full, as it should).
pub fn wanted_blobs(repo: &Repository, root: &Id, opts: &RestoreOptions) -> Option<Vec<Id>> {
    let mut wanted = Vec::new();
    let (mut seen, mut again) = (HashSet::new(), Vec::new());
    let stop = AtomicBool::new(false);
    walk_files(
        repo,
        root,
        opts,
        &stop,
        |node| wanted.extend_from_slice(&node.content),
        |tree| {
            seen.insert(*tree) || {
                again.push(*tree);
                false
            }
        },
    )?;
    super::walk::data_below(repo, again, &mut wanted);
    Some(wanted)
}

/// Calls `file` with each regular file a restore of `root` with `opts` selects, entering
/// the directories whose trees `enter` takes.
fn walk_files(
    repo: &Repository,
    root: &Id,
    opts: &RestoreOptions,
    stop: &AtomicBool,
    mut file: impl FnMut(&Node),
    mut enter: impl FnMut(&Id) -> bool,
) -> Option<()> {
    let m = Matcher::new(opts).ok()?;
    let root = repo.load_tree(root).ok()?.nodes;
    let mut walk = Selection::new(&m, root, ());
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let Some(step) = walk.next() else {
            return Some(());
        };
        match step {
            Step::Dir { node, path, .. } => {
                let tree = node.subtree.filter(|id| enter(id));
                if let Some(t) = tree.and_then(|id| repo.load_tree(&id).ok()) {
                    walk.enter(t.nodes, path, ());
                }
            }
            Step::Entry(node, _) if node.kind == NodeType::File => file(&node),
            _ => {}
        }
    }
}

/// Each window holds a descriptor per file: allow as many as the hard limit permits.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < 4096 {
            lim.rlim_cur = lim.rlim_max.min(4096);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

impl Restorer<'_> {
    /// Made directories kept open below the top of the stack; the others are reopened
    /// through ".." on the way back up, so any depth costs a fixed number of descriptors.
    const OPEN_DIRS: usize = 64;

    fn run(&mut self) -> Result<()> {
        while let Some(step) = self.walk.next() {
            match step {
                Step::Unsafe(node) => self.lost.push(format!(
                    "{}: not restored: the snapshot holds an unsafe name {:?} here (skipped)",
                    self.walk.path().display(),
                    node.name.lossy()
                )),
                Step::Dir {
                    node,
                    path,
                    included,
                } => self.enter(node, path, included)?,
                Step::Entry(node, path) => self.entry(node, &path)?,
                Step::Left(frame, path) => self.leave(frame, path)?,
            }
            if self.window.full() {
                self.flush()?;
            }
        }
        self.flush()
    }

    /// Makes a non-directory the selection includes, unless restore leaves its kind out.
    fn entry(&mut self, node: Node, path: &Path) -> Result<()> {
        let special = matches!(
            node.kind,
            NodeType::Fifo | NodeType::Chardev | NodeType::Blockdev
        );
        if node.kind == NodeType::Socket || (special && self.opts.no_special) {
            return Ok(());
        }
        let Some(dir) = self.parent_dir(path)? else {
            return Ok(());
        };
        if let Err(e) = self.make(&dir, node, path) {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && no_space(io)
            {
                return Err(self.stop_full(path, io));
            }
            self.result.errors.push(format!(
                "{}: not restored: {}",
                path.display(),
                crate::error::one_line(&e)
            ));
        }
        Ok(())
    }

    /// Descends into a directory; it is made at once when included, else when something
    /// below it is. An unreadable tree leaves it empty and is reported.
    fn enter(&mut self, node: Node, path: PathBuf, included: bool) -> Result<()> {
        let entries = match node.subtree {
            Some(sub) => match self.repo.load_tree(&sub) {
                Ok(t) => t.nodes,
                Err(e) => {
                    self.lost.push(format!(
                        "{}: not restored: {}",
                        path.display(),
                        crate::error::one_line(
                            &e.context(format!("contents of {}", path.display()))
                        )
                    ));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let frame = Frame {
            node: Some(node),
            state: State::Pending,
            dir: None,
            ident: (0, 0),
            names: self.opts.delete.then(|| names_of(&entries)),
        };
        self.walk.enter(entries, path, frame);
        if included {
            self.made_to(self.walk.depth() - 1)?;
        }
        Ok(())
    }

    /// The directory that holds the next entry, made if it was pending; None when it
    /// could not be made (already reported).
    fn parent_dir(&mut self, path: &Path) -> Result<Option<Arc<Dir>>> {
        let top = self.walk.depth() - 1;
        match self.made_to(top)? {
            true => Ok(self.walk.level(top).dir.clone()),
            false => {
                self.result.errors.push(format!(
                    "{}: not restored: its directory could not be made",
                    path.display()
                ));
                Ok(None)
            }
        }
    }

    /// Makes every pending directory of the walk up to depth `level`; whether it exists.
    fn made_to(&mut self, level: usize) -> Result<bool> {
        let first = (0..=level)
            .find(|&i| self.walk.level(i).state != State::Made)
            .unwrap_or(level + 1);
        for i in first..=level {
            if self.walk.level(i).state == State::Failed {
                return Ok(false);
            }
            let parent = self
                .walk
                .level(i - 1)
                .dir
                .clone()
                .expect("the parent is open");
            let node = self
                .walk
                .level(i)
                .node
                .as_ref()
                .expect("a directory's node");
            match make_dir(&parent, name_of(node), self.replaces()) {
                Ok(d) => {
                    let frame = self.walk.level_mut(i);
                    frame.state = State::Made;
                    frame.ident = (d.dev, d.ino);
                    frame.dir = Some(Arc::new(d));
                    if i >= Self::OPEN_DIRS {
                        self.walk.level_mut(i - Self::OPEN_DIRS).dir = None;
                    }
                }
                Err(e) => {
                    let dir_path = self.ancestor_path(i);
                    if no_space(&e) {
                        return Err(self.stop_full(&dir_path, &e));
                    }
                    self.walk.level_mut(i).state = State::Failed;
                    self.result
                        .errors
                        .push(format!("{}: not restored: {e}", dir_path.display()));
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The snapshot path of the directory at depth `i` (the deepest is the walk's path).
    fn ancestor_path(&self, i: usize) -> PathBuf {
        let up = self.walk.depth() - 1 - i;
        self.walk
            .path()
            .ancestors()
            .nth(up)
            .unwrap_or(Path::new("/"))
            .to_path_buf()
    }

    /// Leaves a directory, at `path`: its metadata waits in the window for what is in it.
    fn leave(&mut self, frame: Frame, path: PathBuf) -> Result<()> {
        if let (State::Made, Some(names), Some(dir)) = (frame.state, &frame.names, &frame.dir) {
            self.delete_extra(dir, &path, names);
        }
        let (Some(node), State::Made) = (frame.node, frame.state) else {
            return Ok(());
        };
        let dir = frame.dir.expect("the top directory is open");
        if let Some(parent) = self.walk.top_mut()
            && parent.dir.is_none()
        {
            let up = dir.open(OsStr::new("..")).map_err(anyhow::Error::from);
            match up {
                Ok(d) if (d.dev, d.ino) == parent.ident => parent.dir = Some(Arc::new(d)),
                _ => bail!(
                    "restore stopped: the directory above {} was moved or replaced while restoring",
                    path.display()
                ),
            }
        }
        self.window.dirs.push(WinDir { path, dir, node });
        Ok(())
    }

    /// With --delete: removes what the snapshot does not hold from the restored
    /// directory `dir`, at snapshot path `path`.
    fn delete_extra(&mut self, dir: &Dir, path: &Path, names: &HashSet<Vec<u8>>) {
        let extra = match extra_entries(self.walk.m, dir, path, names) {
            Ok(e) => e,
            Err(e) => {
                self.result
                    .errors
                    .push(format!("{}: not listed for --delete: {e}", path.display()));
                return;
            }
        };
        for (name, is_dir, p) in extra {
            match remove_entry(dir, &name, is_dir) {
                Ok(()) => {
                    self.result.deleted += 1;
                    log::info!("deleted {}", p.display());
                }
                Err(e) => self
                    .result
                    .errors
                    .push(format!("{}: not deleted: {e}", p.display())),
            }
        }
    }

    /// Whether an existing entry in the way may be replaced.
    fn replaces(&self) -> bool {
        self.opts.overwrite.is_some_and(|m| m != Overwrite::Never)
    }

    /// An existing entry left in place: counted as restored for the progress display.
    fn kept(&mut self, node: &Node, path: &Path) {
        self.result.unchanged += 1;
        self.counters.files.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes.fetch_add(node.size, Ordering::Relaxed);
        log::debug!("unchanged {}", path.display());
    }

    /// An existing entry whose contents are the snapshot's: its metadata is brought in
    /// line, through `file` for a regular file.
    fn kept_meta(&mut self, dir: &Dir, node: &Node, path: &Path, file: Option<&File>) {
        self.kept(node, path);
        let r = match file {
            Some(f) => fsmeta::apply_fd(f, node, self.apply),
            None => fsmeta::apply_special(&dir.file, name_of(node), node, self.apply),
        };
        if let Err(e) = r {
            self.metadata_error(path, &e);
        }
    }

    /// What to do with the existing entry at `node`'s place: None when it is settled
    /// already (kept as it is, or its metadata brought in line), else what remains.
    fn settle(&mut self, dir: &Dir, node: &Node, path: &Path) -> Result<Option<Action>> {
        let o = &self.opts;
        match decide(dir, node, o.overwrite, o.verify_content, self.apply)? {
            Action::Keep => self.kept(node, path),
            Action::Meta(f) => self.kept_meta(dir, node, path, f.as_ref()),
            other => return Ok(Some(other)),
        }
        Ok(None)
    }

    /// Makes one non-directory entry in `dir`.
    fn make(&mut self, dir: &Arc<Dir>, node: Node, path: &Path) -> Result<()> {
        let name = name_of(&node);
        let overwrite = self.replaces();
        if node.kind != NodeType::File && self.settle(dir, &node, path)?.is_none() {
            return Ok(());
        }
        match node.kind {
            NodeType::File => return self.make_file(dir, node, path),
            NodeType::Symlink => {
                let t = node
                    .target
                    .as_ref()
                    .ok_or_else(|| anyhow!("symlink without target"))?;
                let t = OsStr::from_bytes(&t.0);
                make_entry(dir, name, overwrite, || {
                    nix::unistd::symlinkat(t, &dir.file, name)
                })?;
            }
            NodeType::Fifo => make_entry(dir, name, overwrite, || {
                nix::unistd::mkfifoat(&dir.file, name, Mode::S_IRUSR | Mode::S_IWUSR)
            })?,
            NodeType::Chardev | NodeType::Blockdev => {
                let kind = if node.kind == NodeType::Chardev {
                    nix::sys::stat::SFlag::S_IFCHR
                } else {
                    nix::sys::stat::SFlag::S_IFBLK
                };
                make_entry(dir, name, overwrite, || {
                    nix::sys::stat::mknodat(
                        &dir.file,
                        name,
                        kind,
                        Mode::S_IRUSR | Mode::S_IWUSR,
                        node.rdev as _,
                    )
                })?;
            }
            NodeType::Dir | NodeType::Socket => unreachable!("handled by the walk"),
        }
        self.result.files += 1;
        self.counters.files.fetch_add(1, Ordering::Relaxed);
        log::info!("restored {}", path.display());
        if let Err(e) = fsmeta::apply_special(&dir.file, name, &node, self.apply) {
            self.metadata_error(path, &e);
        }
        Ok(())
    }

    fn metadata_error(&mut self, path: &Path, e: &anyhow::Error) {
        self.result.errors.push(format!(
            "{}: metadata: {}",
            path.display(),
            crate::error::one_line(e)
        ));
    }

    fn make_file(&mut self, dir: &Arc<Dir>, node: Node, path: &Path) -> Result<()> {
        let name = name_of(&node);
        let extents = node
            .checked_extents()
            .map_err(|why| anyhow!("damaged tree node: {why}"))?;
        // Hard links are known by (dev, inode); inode 0 means "not recorded".
        let key = (node.dev, node.inode);
        if node.links > 1 && node.inode != 0 {
            if let Some(first) = self.links.get(&key) {
                if self.failed_links.contains(&key) {
                    bail!("hard link to a file that failed");
                }
                let (from, from_name) = self.open_parent(first)?;
                if self.linked_already(dir, name, &from, &from_name) {
                    self.kept(&node, path);
                    return Ok(());
                }
                make_entry(dir, name, self.replaces(), || {
                    nix::unistd::linkat(
                        &from.file,
                        from_name.as_os_str(),
                        &dir.file,
                        name,
                        AtFlags::empty(),
                    )
                })?;
                self.window.links.push(WinLink {
                    path: path.to_path_buf(),
                    dir: dir.clone(),
                    key,
                });
                self.counters.bytes.fetch_add(node.size, Ordering::Relaxed);
                return Ok(());
            }
            self.links.insert(key, path.to_path_buf());
        }
        let index = self.repo.index();
        let mut planned = Vec::with_capacity(node.content.len());
        for id in &node.content {
            let (pack_id, entry) = index
                .get(id)
                .ok_or_else(|| anyhow!("data blob {} is missing from the index", id.short()))?;
            planned.push((*id, pack_id, entry));
        }
        drop(index);
        let Some(action) = self.settle(dir, &node, path)? else {
            return Ok(());
        };
        let (file, held) = match action {
            Action::Keep | Action::Meta(_) => unreachable!("settled"),
            Action::Create | Action::Replace => {
                (create_file(dir, name, node.mode, self.replaces())?, None)
            }
            Action::Patch(file) => {
                let lens: Vec<u64> = planned.iter().map(|p| u64::from(p.2.raw_len)).collect();
                let (held, dirty) = held_blobs(self.repo, &file, &node, &extents, &lens)?;
                let len = file.metadata()?.len();
                if !dirty && len == node.size && !held.contains(&false) {
                    self.kept_meta(dir, &node, path, Some(&file));
                    return Ok(());
                }
                // Nothing more open than the snapshot's owner bits while it is written.
                fsmeta_owner_only(&file, node.mode)?;
                if dirty {
                    // Data where the snapshot has holes: written anew from nothing.
                    file.set_len(0)?;
                    (file, None)
                } else {
                    (file, Some(held))
                }
            }
        };
        let fresh = held.is_none();
        if let Err(e) = file.set_len(node.size) {
            let _ = dir.unlink(name);
            return Err(e.into());
        }
        let w = &mut self.window;
        let at = w.files.len();
        let mut offset = 0u64;
        let mut pending = 0usize;
        for (i, (id, pack_id, entry)) in planned.into_iter().enumerate() {
            if held.as_ref().is_some_and(|h| h[i]) {
                // Already in place: counts as restored for the progress display.
                offset += u64::from(entry.raw_len);
                self.counters
                    .bytes
                    .fetch_add(u64::from(entry.raw_len), Ordering::Relaxed);
                continue;
            }
            pending += 1;
            let slot = *w.blob_slot.entry(id).or_insert_with(|| {
                let v = w.by_pack.entry(pack_id).or_default();
                v.push((entry, Vec::new()));
                (pack_id, v.len() - 1)
            });
            w.by_pack.get_mut(&slot.0).expect("pack planned")[slot.1]
                .1
                .push(Target {
                    file: at,
                    stream_offset: offset,
                });
            offset += u64::from(entry.raw_len);
        }
        // The holes of a sparse file are restored by its length alone.
        self.counters
            .bytes
            .fetch_add(node.size.saturating_sub(offset), Ordering::Relaxed);
        w.placements += pending;
        w.bytes += node.size;
        w.files.push(WinFile {
            path: path.to_path_buf(),
            dir: dir.clone(),
            file,
            pending: AtomicUsize::new(pending),
            extents,
            node,
            fresh,
        });
        Ok(())
    }

    /// Whether `name` in `dir` is already a hard link to `from_name` in `from` (the
    /// first name restore gave the inode); false also when nothing is there, or when
    /// no --overwrite asks to look.
    fn linked_already(&self, dir: &Dir, name: &OsStr, from: &Dir, from_name: &Path) -> bool {
        if self.opts.overwrite.is_none() {
            return false;
        }
        let there = nix::sys::stat::fstatat(&dir.file, name, AtFlags::AT_SYMLINK_NOFOLLOW);
        let Ok(there) = there else {
            return false;
        };
        if self.opts.overwrite == Some(Overwrite::Never) {
            return true;
        }
        let first = nix::sys::stat::fstatat(
            &from.file,
            from_name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        first.is_ok_and(|f| (f.st_dev, f.st_ino) == (there.st_dev, there.st_ino))
    }

    /// The directory holding the restored snapshot path `p`, reached from the target
    /// without following any symlink, and the name in it.
    fn open_parent(&self, p: &Path) -> Result<(Dir, PathBuf)> {
        let comps = walk::components(p);
        let (last, dirs) = comps.split_last().ok_or_else(|| anyhow!("no name"))?;
        let mut dir = self.target.open(OsStr::new("."))?;
        for c in dirs {
            dir = dir.open(OsStr::from_bytes(c))?;
        }
        Ok((dir, PathBuf::from(OsStr::from_bytes(last))))
    }

    /// A full disk ends the restore: the window's files are not complete, so they go.
    fn stop_full(&mut self, path: &Path, e: &std::io::Error) -> anyhow::Error {
        for f in &self.window.files {
            let _ = f.dir.unlink(name_of(&f.node));
        }
        self.window.files.clear();
        no_space_error(path, &self.opts.target, e)
    }

    /// Writes the window's files, then applies their metadata and that of the
    /// directories left since the last flush, deepest first.
    fn flush(&mut self) -> Result<()> {
        let w = std::mem::take(&mut self.window);
        let errors = Mutex::new(HashMap::<usize, String>::new());
        let full = Mutex::new(None);
        write_packs(
            self.repo,
            &w.files,
            &self.opts.target,
            w.by_pack,
            &errors,
            &self.counters,
            &full,
        );
        if let Some(e) = full.into_inner().expect("full poisoned") {
            for f in &w.files {
                if f.pending.load(Ordering::Relaxed) > 0 {
                    let _ = f.dir.unlink(name_of(&f.node));
                }
            }
            return Err(e);
        }
        let mut errors = errors.into_inner().expect("errors poisoned");
        for (i, f) in w.files.iter().enumerate() {
            if !errors.contains_key(&i)
                && self.opts.verify
                && let Err(e) = verify_file(self.repo, f)
            {
                errors.insert(i, crate::error::one_line(&e));
            }
            if let Some(e) = errors.get(&i) {
                // Never leave a partly written file that looks complete.
                let _ = f.dir.unlink(name_of(&f.node));
                if f.node.links > 1 && f.node.inode != 0 {
                    self.failed_links.insert((f.node.dev, f.node.inode));
                }
                self.result
                    .errors
                    .push(format!("{}: not restored: {e}", f.path.display()));
                continue;
            }
            self.result.files += 1;
            self.result.bytes += f.node.size;
            self.counters.files.fetch_add(1, Ordering::Relaxed);
            log::info!("restored {}", f.path.display());
            if let Err(e) = fsmeta::apply_fd(&f.file, &f.node, self.apply) {
                self.metadata_error(&f.path, &e);
            }
        }
        drop(w.files);
        for l in &w.links {
            if self.failed_links.contains(&l.key) {
                if let Some(name) = l.path.file_name() {
                    let _ = l.dir.unlink(name);
                }
                self.result.errors.push(format!(
                    "{}: not restored: hard link to a file that failed",
                    l.path.display()
                ));
            } else {
                self.result.files += 1;
            }
        }
        for d in &w.dirs {
            self.result.dirs += 1;
            if let Err(e) = fsmeta::apply_fd(&d.dir.file, &d.node, self.apply) {
                self.metadata_error(&d.path, &e);
            }
        }
        Ok(())
    }
}

/// Without --overwrite, a restore that would replace anything is refused before it
/// writes: the snapshot is walked beside the target (through descriptors, never through
/// a symlink), and each non-directory it would make that exists already, or a
/// non-directory where it would make a directory, counts.
fn refuse_existing(repo: &Repository, root: Vec<Node>, m: &Matcher, target: &Path) -> Result<()> {
    let Ok(top) = Dir::open_target(target) else {
        return Ok(()); // no target yet: nothing in the way
    };
    let mut found: Vec<PathBuf> = Vec::new();
    let mut walk = Selection::new(m, root, top);
    while let Some(step) = walk.next() {
        match step {
            Step::Entry(node, path) => {
                let (dir, name) = (walk.current(), name_of(&node));
                let there = nix::sys::stat::fstatat(&dir.file, name, AtFlags::AT_SYMLINK_NOFOLLOW);
                if node.kind != NodeType::Socket && there.is_ok() {
                    found.push(path);
                }
            }
            Step::Dir {
                node,
                path,
                included,
            } => match walk.current().open(name_of(&node)) {
                Ok(sub) => {
                    let entries = match node.subtree {
                        Some(id) => repo.load_tree(&id).map(|t| t.nodes).unwrap_or_default(),
                        None => Vec::new(),
                    };
                    walk.enter(entries, path, sub);
                }
                Err(Errno::ENOTDIR | Errno::ELOOP) if included => found.push(path),
                Err(_) => {}
            },
            Step::Unsafe(_) | Step::Left(..) => {}
        }
    }
    if let Some(first) = found.first() {
        bail!(
            "{} would be overwritten ({} existing file(s) in {}): restore elsewhere or pass --overwrite",
            local(target, first).display(),
            found.len(),
            target.display()
        );
    }
    Ok(())
}

fn local(target: &Path, snap_path: &Path) -> PathBuf {
    target.join(snap_path.strip_prefix("/").unwrap_or(snap_path))
}

/// Writes `data`, which starts at `stream_offset` of a file's data stream, into the file's
/// extents. In a `fresh` file all-zero data is skipped: it was created at full size, so
/// its holes stay.
fn write_stream(
    file: &fs::File,
    extents: &[[u64; 2]],
    stream_offset: u64,
    data: &[u8],
    fresh: bool,
) -> std::io::Result<()> {
    if fresh && data.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let mut s = 0u64; // stream offset where the current extent starts
    let mut rest = data;
    let mut pos = stream_offset;
    for &[off, len] in extents {
        if rest.is_empty() {
            break;
        }
        if pos < s + len {
            let within = pos - s;
            let n = rest.len().min((len - within) as usize);
            file.write_all_at(&rest[..n], off + within)?;
            rest = &rest[n..];
            pos += n as u64;
        }
        s += len;
    }
    if !rest.is_empty() {
        return Err(std::io::Error::other(
            "blob data runs past the file's extents",
        ));
    }
    Ok(())
}

/// Reads each pack once, in ranges that cover its needed blobs, on several threads.
/// Stops early once `full` holds a disk-full error.
fn write_packs(
    repo: &Repository,
    files: &[WinFile],
    target: &Path,
    by_pack: PackPlan,
    errors: &Mutex<HashMap<usize, String>>,
    counters: &Counters,
    full: &Mutex<Option<anyhow::Error>>,
) {
    if by_pack.is_empty() {
        return;
    }
    // A thread per request the backend takes at once (one per core on a local disk,
    // more on a remote backend to hide each request's latency: `--connections`). Each
    // thread holds one range (at most 2 MiB) and its blobs.
    let workers = repo.backend.connections().clamp(1, by_pack.len());
    let (tx, rx) = bounded::<(Id, Vec<(BlobEntry, Vec<Target>)>)>(workers);
    let ctx = GroupCtx {
        repo,
        files,
        target,
        errors,
        counters,
        full,
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            let rx = rx.clone();
            let ctx = &ctx;
            s.spawn(move || {
                for (pack_id, mut blobs) in rx {
                    blobs.sort_by_key(|(e, _)| e.offset);
                    for group in coalesce(&blobs) {
                        if ctx.full.lock().expect("full poisoned").is_some() {
                            break;
                        }
                        ctx.restore_group(&pack_id, group);
                    }
                }
            });
        }
        for job in by_pack {
            if full.lock().expect("full poisoned").is_some() || tx.send(job).is_err() {
                break;
            }
        }
        drop(tx);
    });
}

/// Groups blobs sorted by offset into ranges worth one read each (gaps under 1 MiB are
/// read through rather than paying another request). A range holds at most 2 MiB, which
/// bounds restore's memory to that much per thread: on the bench, 8 MiB ranges on four
/// threads peaked at 140 MB, 2 MiB on two at 92 MB, in the same time.
fn coalesce(blobs: &[(BlobEntry, Vec<Target>)]) -> Vec<&[(BlobEntry, Vec<Target>)]> {
    const GAP: u64 = 1 << 20;
    const MAX: u64 = 2 << 20;
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=blobs.len() {
        let split = i == blobs.len() || {
            let prev_end = u64::from(blobs[i - 1].0.offset) + u64::from(blobs[i - 1].0.length);
            let cur = u64::from(blobs[i].0.offset);
            cur > prev_end + GAP
                || cur + u64::from(blobs[i].0.length) - u64::from(blobs[start].0.offset) > MAX
        };
        if split {
            out.push(&blobs[start..i]);
            start = i;
        }
    }
    out
}

/// What the writing threads share.
struct GroupCtx<'a> {
    repo: &'a Repository,
    files: &'a [WinFile],
    target: &'a Path,
    errors: &'a Mutex<HashMap<usize, String>>,
    counters: &'a Counters,
    full: &'a Mutex<Option<anyhow::Error>>,
}

impl GroupCtx<'_> {
    fn fail(&self, targets: &[Target], msg: &str) {
        let mut e = self.errors.lock().expect("poisoned");
        for t in targets {
            e.entry(t.file).or_insert_with(|| msg.to_string());
        }
    }

    /// Reads one range of a pack and writes each of its blobs wherever it goes.
    fn restore_group(&self, pack_id: &Id, group: &[(BlobEntry, Vec<Target>)]) {
        let repo = self.repo;
        let first = u64::from(group[0].0.offset);
        let last = group.last().expect("non-empty group");
        let end = u64::from(last.0.offset) + u64::from(last.0.length);
        let bytes = repo
            .backend
            .read_range(&FileKind::Data.path(pack_id), first, end - first);
        let mut opener = pack::BlobOpener::default();
        for (entry, targets) in group {
            let opened = match &bytes {
                Ok(b) => {
                    let o = (u64::from(entry.offset) - first) as usize;
                    opener
                        .open(&repo.keys, entry, &b[o..o + entry.length as usize])
                        .map_err(anyhow::Error::from)
                }
                Err(e) => Err(anyhow!(
                    "pack {} unreadable: {}",
                    pack_id.short(),
                    crate::error::one_line(e)
                )),
            };
            // Bytes damaged on the way read right the next time, and a damaged or missing
            // copy here may be intact on a mirror: read_blob tries both before giving up.
            let opened = match opened {
                Err(_) => repo.read_blob(BlobType::Data, &entry.id).or(opened),
                ok => ok,
            };
            let data = match opened {
                Ok(d) => {
                    self.counters.blobs_read.fetch_add(1, Ordering::Relaxed);
                    d
                }
                Err(e) => {
                    self.fail(
                        targets,
                        &format!(
                            "data blob {} in pack {}: {}",
                            entry.id.short(),
                            pack_id.short(),
                            crate::error::one_line(&e)
                        ),
                    );
                    continue;
                }
            };
            for t in targets {
                if !self.write(t, &data) {
                    return;
                }
            }
        }
    }

    /// Writes one placement; false once the disk is full.
    fn write(&self, t: &Target, data: &[u8]) -> bool {
        let fp = &self.files[t.file];
        if self.errors.lock().expect("poisoned").contains_key(&t.file) {
            return true;
        }
        match write_stream(&fp.file, &fp.extents, t.stream_offset, data, fp.fresh) {
            Ok(()) => {
                fp.pending.fetch_sub(1, Ordering::Relaxed);
                self.counters
                    .bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                self.counters
                    .bytes_written
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                crash_hook();
            }
            Err(e) if no_space(&e) => {
                self.full
                    .lock()
                    .expect("full poisoned")
                    .get_or_insert_with(|| no_space_error(&fp.path, self.target, &e));
                return false;
            }
            Err(e) => self.fail(
                std::slice::from_ref(t),
                &format!("writing {}: {e}", fp.path.display()),
            ),
        }
        true
    }
}

/// Restricts a file about to be written in place to its owner bits (of the snapshot's
/// mode), as a file restore creates is until complete.
fn fsmeta_owner_only(file: &File, mode: u32) -> std::io::Result<()> {
    let bits = Mode::from_bits_truncate((mode & 0o700) as libc::mode_t);
    Ok(nix::sys::stat::fchmod(file, bits)?)
}

/// The restore crash hook, a test hook: with VAULT_RESTORE_CRASH_AFTER=N the process
/// kills itself with SIGKILL right after the Nth blob written into the target, as
/// `kill -9` at that instant would.
#[cfg(feature = "test-hooks")]
fn crash_hook() {
    use std::sync::LazyLock;
    static AFTER: LazyLock<Option<u64>> = LazyLock::new(|| {
        std::env::var("VAULT_RESTORE_CRASH_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    static WRITES: AtomicU64 = AtomicU64::new(0);
    if let Some(n) = *AFTER
        && WRITES.fetch_add(1, Ordering::SeqCst) + 1 >= n
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
    }
}

#[cfg(not(feature = "test-hooks"))]
fn crash_hook() {}

/// Re-reads a restored file through its descriptor and checks every blob's keyed hash.
fn verify_file(repo: &Repository, f: &WinFile) -> Result<()> {
    let md = f.file.metadata()?;
    if md.len() != f.node.size {
        bail!(
            "verify: {} has size {}, snapshot says {}",
            f.path.display(),
            md.len(),
            f.node.size
        );
    }
    let index = repo.index();
    let mut stream = 0u64;
    for id in &f.node.content {
        let len = u64::from(
            index
                .raw_len(id)
                .ok_or_else(|| anyhow!("blob {} not in index", id.short()))?,
        );
        let mut buf = vec![0u8; len as usize];
        read_stream(&f.file, &f.extents, stream, &mut buf)?;
        if repo.keys.blob_id(0, &buf) != *id {
            bail!(
                "verify: {} differs from the snapshot at offset {}",
                f.path.display(),
                stream
            );
        }
        stream += len;
    }
    Ok(())
}

fn read_stream(
    file: &fs::File,
    extents: &[[u64; 2]],
    stream_offset: u64,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let mut s = 0u64;
    let mut done = 0usize;
    let mut pos = stream_offset;
    for &[off, len] in extents {
        if done == buf.len() {
            break;
        }
        if pos < s + len {
            let within = pos - s;
            let n = (buf.len() - done).min((len - within) as usize);
            file.read_exact_at(&mut buf[done..done + n], off + within)?;
            done += n;
            pos += n as u64;
        }
        s += len;
    }
    if done != buf.len() {
        return Err(std::io::Error::other("file shorter than its snapshot"));
    }
    Ok(())
}
