//! Paths longer than PATH_MAX (a directory chain thousands deep is legal) cannot be
//! given to one system call. Backup reaches them through descriptors of their ancestors:
//! one opened every [`ANCHOR_STEP`] bytes of path, each relative to the one before, and
//! kept for the next call (a depth-first walk asks for the same ancestors again and
//! again). Shorter paths take no part in this: their calls are as they were.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::FileStat;
use crate::format::tree::{NodeType, Xattr};

/// Paths of this length or more are reached through an ancestor's descriptor.
const LONG_PATH: usize = 4000;
/// Ancestors are opened at the first component boundary past each multiple of this.
const ANCHOR_STEP: usize = 1024;
/// Ancestor descriptors kept, the most recently used: bounds the descriptors held.
const ANCHORS_KEPT: usize = 32;

type Anchors = std::sync::Mutex<Vec<(Vec<u8>, std::sync::Arc<std::os::fd::OwnedFd>)>>;
static ANCHORS: Anchors = std::sync::Mutex::new(Vec::new());

/// Whether `path` is too long for one system call and goes through [`anchor`].
pub fn is_long(path: &Path) -> bool {
    path.as_os_str().len() >= LONG_PATH
}

/// The prefix lengths where ancestors of `bytes` are anchored, each under
/// [`ANCHOR_STEP`] plus one name past the one before and before the last component.
fn anchor_points(bytes: &[u8]) -> Vec<usize> {
    let last = bytes.iter().rposition(|&b| b == b'/').unwrap_or(0);
    let mut points = Vec::new();
    let mut want = ANCHOR_STEP;
    while want < last {
        let Some(at) = bytes[want..=last].iter().position(|&b| b == b'/') else {
            break;
        };
        let at = want + at;
        points.push(at);
        want = at + ANCHOR_STEP;
    }
    points
}

/// A descriptor of an ancestor of the long path `path` and `path` relative to it, short
/// enough for one system call.
fn anchor(path: &Path) -> std::io::Result<(std::sync::Arc<std::os::fd::OwnedFd>, PathBuf)> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::Mode;
    use std::sync::Arc;
    let bytes = path.as_os_str().as_bytes();
    let points = anchor_points(bytes);
    let Some(&deepest) = points.last() else {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    };
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut anchors = ANCHORS.lock().unwrap_or_else(|e| e.into_inner());
    // The deepest ancestor already open, then each one below it, each from the last.
    let mut from: Option<(usize, Arc<std::os::fd::OwnedFd>)> = None;
    for (i, &p) in points.iter().enumerate().rev() {
        if let Some(k) = anchors.iter().position(|(a, _)| a[..] == bytes[..p]) {
            let kept = anchors.remove(k);
            from = Some((i, kept.1.clone()));
            anchors.push(kept);
            break;
        }
    }
    let (mut at, mut fd) = match from {
        Some((i, fd)) => (i, fd),
        None => {
            let first = Path::new(OsStr::from_bytes(&bytes[..points[0]]));
            (0, Arc::new(open(first, flags, Mode::empty())?))
        }
    };
    if at == 0 && !anchors.iter().any(|(a, _)| a[..] == bytes[..points[0]]) {
        keep(&mut anchors, bytes[..points[0]].to_vec(), fd.clone());
    }
    while at + 1 < points.len() {
        let rel = OsStr::from_bytes(&bytes[points[at] + 1..points[at + 1]]);
        fd = Arc::new(openat(&*fd, rel, flags, Mode::empty())?);
        at += 1;
        keep(&mut anchors, bytes[..points[at]].to_vec(), fd.clone());
    }
    let rel = PathBuf::from(OsStr::from_bytes(&bytes[deepest + 1..]));
    Ok((fd, rel))
}

fn keep(
    anchors: &mut Vec<(Vec<u8>, std::sync::Arc<std::os::fd::OwnedFd>)>,
    prefix: Vec<u8>,
    fd: std::sync::Arc<std::os::fd::OwnedFd>,
) {
    if anchors.len() >= ANCHORS_KEPT {
        anchors.remove(0);
    }
    anchors.push((prefix, fd));
}

/// Opens `path` with `flags` (O_CLOEXEC added), whatever its length.
pub fn open_any(path: &Path, flags: nix::fcntl::OFlag) -> std::io::Result<File> {
    use nix::fcntl::{OFlag, open, openat};
    use nix::sys::stat::Mode;
    let flags = flags | OFlag::O_CLOEXEC;
    let fd = if is_long(path) {
        let (dir, rel) = anchor(path)?;
        openat(&*dir, &rel, flags, Mode::empty())?
    } else {
        open(path, flags, Mode::empty())?
    };
    Ok(File::from(fd))
}

/// The lstat of `path`, whatever its length.
pub fn lstat_any(path: &Path) -> std::io::Result<FileStat> {
    use nix::fcntl::AtFlags;
    if is_long(path) {
        let (dir, rel) = anchor(path)?;
        Ok(nix::sys::stat::fstatat(
            &*dir,
            &rel,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?)
    } else {
        Ok(nix::sys::stat::lstat(path)?)
    }
}

/// The names in directory `path` with their inode numbers, whatever its length.
pub fn list_dir_any(path: &Path) -> std::io::Result<Vec<(std::ffi::OsString, u64)>> {
    use std::os::unix::fs::DirEntryExt;
    if !is_long(path) {
        return std::fs::read_dir(path).map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| (e.file_name(), e.ino())))
                .collect()
        });
    }
    use nix::fcntl::OFlag;
    use std::os::fd::IntoRawFd;
    let fd = open_any(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?.into_raw_fd();
    // SAFETY: `fd` is an open directory descriptor we own; fdopendir takes it over.
    let dir = unsafe { libc::fdopendir(fd) };
    if dir.is_null() {
        let e = std::io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the descriptor is still ours to close.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let mut out = Vec::new();
    loop {
        // SAFETY: errno is this thread's; cleared to tell the end from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dir` is a valid stream until closedir; the entry it returns is valid
        // until the next readdir on it, and copied out before that.
        let e = unsafe { libc::readdir64(dir) };
        if e.is_null() {
            let err = std::io::Error::last_os_error();
            // SAFETY: closes the stream and its descriptor, once.
            unsafe { libc::closedir(dir) };
            return match err.raw_os_error() {
                Some(0) | None => Ok(out),
                Some(_) => Err(err),
            };
        }
        // SAFETY: as above; d_name is NUL-terminated.
        let (name, ino) = unsafe {
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr()).to_bytes();
            (name.to_vec(), (*e).d_ino)
        };
        if name != b"." && name != b".." {
            out.push((std::ffi::OsString::from_vec(name), ino));
        }
    }
}

/// The target of symlink `path`, whatever its length.
pub(super) fn read_link_any(path: &Path) -> std::io::Result<std::ffi::OsString> {
    if is_long(path) {
        let (dir, rel) = anchor(path)?;
        Ok(nix::fcntl::readlinkat(&*dir, &rel)?)
    } else {
        std::fs::read_link(path).map(|p| p.into_os_string())
    }
}

/// Extended attributes of a file or directory at a long path, read through a descriptor
/// opened without following links and without blocking; other kinds are not opened (a
/// device's open can act on it), so theirs are not read there.
pub(super) fn read_xattrs_long(path: &Path, kind: NodeType) -> Vec<Xattr> {
    use nix::fcntl::OFlag;
    use xattr::FileExt;
    if !matches!(kind, NodeType::File | NodeType::Dir) {
        return Vec::new();
    }
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let Ok(file) = open_any(path, flags) else {
        return Vec::new();
    };
    match file.list_xattr() {
        Ok(list) => super::xattrs_of(list, |name| file.get_xattr(name)),
        Err(_) => Vec::new(),
    }
}
