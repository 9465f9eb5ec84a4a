//! Removing a directory tree of any depth. Recursive removal (std's, rm's) holds a
//! descriptor or a stack frame per level, so a tree deeper than the descriptor limit
//! stays behind; this walk keeps an explicit stack and a fixed number of descriptors.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Type;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

const DIR: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Descriptors kept open below the deepest level; the others are reopened through ".."
/// (and checked to be the same directory) on the way back up.
const KEEP: usize = 32;

struct Level {
    name: OsString,
    dir: Option<File>,
    ident: (u64, u64),
    /// Entries still to remove, each with whether it is a directory.
    entries: Vec<(OsString, bool)>,
}

/// The entries of the open directory `dir`, each with whether it is a directory (a
/// symlink is not), read through a descriptor of its own.
pub fn entries(dir: &File) -> io::Result<Vec<(OsString, bool)>> {
    let mut entries = Vec::new();
    let mut listing = nix::dir::Dir::from_fd(dir.try_clone()?.into())?;
    for e in listing.iter() {
        let e = e?;
        let n = OsStr::from_bytes(e.file_name().to_bytes());
        if n == "." || n == ".." {
            continue;
        }
        let is_dir = match e.file_type() {
            Some(t) => t == Type::Directory,
            None => nix::sys::stat::fstatat(dir, n, AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| super::is_dir(&st)),
        };
        entries.push((n.to_os_string(), is_dir));
    }
    Ok(entries)
}

fn level(name: OsString, dir: File) -> io::Result<Level> {
    let st = nix::sys::stat::fstat(&dir)?;
    Ok(Level {
        name,
        entries: entries(&dir)?,
        dir: Some(dir),
        ident: (st.st_dev, st.st_ino),
    })
}

fn open_at(dir: &File, name: &OsStr) -> io::Result<File> {
    Ok(File::from(nix::fcntl::openat(
        dir,
        name,
        DIR,
        Mode::empty(),
    )?))
}

/// Removes `path` and everything below it, without following symlinks.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let top = File::from(nix::fcntl::open(path, DIR, Mode::empty())?);
    remove_below(top)?;
    std::fs::remove_dir(path)
}

/// Removes the directory `name` in `parent` and everything below it, reached without
/// following any symlink (a symlink at `name` is an error).
pub fn remove_tree_at(parent: &File, name: &OsStr) -> io::Result<()> {
    remove_below(open_at(parent, name)?)?;
    Ok(nix::unistd::unlinkat(
        parent,
        name,
        UnlinkatFlags::RemoveDir,
    )?)
}

/// Empties the directory `top`.
fn remove_below(top: File) -> io::Result<()> {
    let mut stack = vec![level(OsString::new(), top)?];
    while let Some(cur) = stack.last_mut() {
        let dir = cur.dir.as_ref().expect("the deepest level is open");
        match cur.entries.pop() {
            Some((name, true)) => {
                let sub = level(name.clone(), open_at(dir, &name)?)?;
                stack.push(sub);
                if stack.len() > KEEP {
                    let i = stack.len() - 1 - KEEP;
                    stack[i].dir = None;
                }
            }
            Some((name, false)) => {
                nix::unistd::unlinkat(dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir)?
            }
            None => {
                let done = stack.pop().expect("a level");
                let Some(parent) = stack.last_mut() else {
                    return Ok(());
                };
                let child = done.dir.expect("the deepest level is open");
                if parent.dir.is_none() {
                    let up = open_at(&child, OsStr::new(".."))?;
                    let st = nix::sys::stat::fstat(&up)?;
                    if (st.st_dev, st.st_ino) != parent.ident {
                        return Err(io::Error::other("a directory moved while being removed"));
                    }
                    parent.dir = Some(up);
                }
                drop(child);
                let pdir = parent.dir.as_ref().expect("reopened");
                nix::unistd::unlinkat(pdir, done.name.as_os_str(), UnlinkatFlags::RemoveDir)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_a_tree_deeper_than_the_descriptor_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        std::fs::create_dir(&top).unwrap();
        std::fs::write(top.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("/", top.join("link-to-root")).unwrap();
        let mut dir = File::open(&top).unwrap();
        for _ in 0..3000 {
            nix::sys::stat::mkdirat(&dir, "d", Mode::S_IRWXU).unwrap();
            nix::unistd::mkfifoat(&dir, "fifo", Mode::S_IRWXU).unwrap();
            dir = open_at(&dir, OsStr::new("d")).unwrap();
        }
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert!(Path::new("/").exists());
    }
}
