//! File-system metadata: turning lstat results into tree nodes, finding the data extents
//! of sparse files, and applying a node's metadata to a restored path.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::format::tree::{Node, NodeType, Owner, RawBytes, Xattr};

/// Caches uid/gid to name lookups, which hit NSS and are slow per file.
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, Owner>,
    groups: HashMap<u32, Owner>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Owner {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| Owner::new(&u.name))
                    .unwrap_or_default()
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> Owner {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| Owner::new(&g.name))
                    .unwrap_or_default()
            })
            .clone()
    }
}

/// An entry's lstat, as `fstatat` gives it relative to its directory.
pub use nix::sys::stat::FileStat;

fn kind_of(st: &FileStat) -> NodeType {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => NodeType::Dir,
        libc::S_IFLNK => NodeType::Symlink,
        libc::S_IFIFO => NodeType::Fifo,
        libc::S_IFCHR => NodeType::Chardev,
        libc::S_IFBLK => NodeType::Blockdev,
        libc::S_IFSOCK => NodeType::Socket,
        _ => NodeType::File,
    }
}

mod longpath;
pub use longpath::{is_long, list_dir_any, lstat_any, open_any};
use longpath::{read_link_any, read_xattrs_long};

pub fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// The node for `path` from its lstat result, with xattrs and symlink target. File content
/// is filled in by the caller.
/// The node for `path`. Extended attributes are taken from `known` when it is the
/// node of this same inode from an earlier backup with the same ctime: setting or
/// removing an xattr changes the ctime, so they cannot differ, and an unchanged tree
/// then costs no xattr calls.
pub fn node_from(
    path: &Path,
    name: &OsStr,
    st: &FileStat,
    names: &mut Names,
    known: Option<&Node>,
) -> Result<Node> {
    let kind = kind_of(st);
    let mut n = Node::new(name.as_bytes().to_vec(), kind);
    n.mode = st.st_mode & 0o7777;
    n.uid = st.st_uid;
    n.gid = st.st_gid;
    n.user = names.user(st.st_uid);
    n.group = names.group(st.st_gid);
    n.mtime_ns = ns(st.st_mtime, st.st_mtime_nsec);
    n.ctime_ns = ns(st.st_ctime, st.st_ctime_nsec);
    n.inode = st.st_ino;
    n.dev = st.st_dev;
    match kind {
        NodeType::File => {
            n.size = u64::try_from(st.st_size).unwrap_or(0);
            #[allow(clippy::useless_conversion)] // nlink_t is narrower on some targets
            {
                n.links = u64::from(st.st_nlink);
            }
        }
        NodeType::Symlink => {
            let t = read_link_any(path)
                .with_context(|| format!("{}: reading symlink", path.display()))?;
            n.target = Some(RawBytes(t.as_os_str().as_bytes().to_vec()));
        }
        NodeType::Chardev | NodeType::Blockdev => n.rdev = st.st_rdev,
        _ => {}
    }
    n.xattrs = match known {
        Some(k) if k.kind == kind && k.inode == n.inode && k.ctime_ns == n.ctime_ns => {
            k.xattrs.clone()
        }
        _ if is_long(path) => read_xattrs_long(path, kind),
        _ => read_xattrs(path),
    };
    Ok(n)
}

/// Extended attributes of `path` (not following symlinks). File systems without xattr
/// support simply have none.
pub fn read_xattrs(path: &Path) -> Vec<Xattr> {
    let Ok(list) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<Xattr> = list
        .filter_map(|name| {
            let value = xattr::get(path, &name).ok().flatten()?;
            Some(Xattr {
                name: RawBytes(name.as_bytes().to_vec()),
                value: B64.encode(value),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The data extents of a sparse file, found with SEEK_DATA/SEEK_HOLE; None when the file
/// is not sparse (fully allocated), so callers read it as one stream.
pub fn sparse_extents(file: &File, md: &Metadata) -> Option<Vec<[u64; 2]>> {
    let size = md.size();
    if size == 0 || md.blocks().saturating_mul(512) >= size {
        return None;
    }
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut pos: i64 = 0;
    let end = i64::try_from(size).ok()?;
    while pos < end {
        // SAFETY: lseek on a file descriptor we own has no memory-safety preconditions.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole remains
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        if hole > data {
            extents.push([data as u64, (hole - data) as u64]);
        }
        pos = hole;
    }
    // SAFETY: as above; rewind for the reader.
    unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    if extents.len() == 1 && extents[0] == [0, size] {
        return None;
    }
    Some(extents)
}

/// Applies ownership (when root), mode, xattrs and times to a restored path.
/// Returns the first problem, if any, after trying everything.
pub fn apply(path: &Path, node: &Node, as_root: bool) -> Result<()> {
    use nix::unistd::{Gid, Uid};
    let mut problems = Vec::new();
    let is_link = node.kind == NodeType::Symlink;
    // Fifos and devices are never opened here: opening a FIFO blocks until a writer comes.
    if as_root {
        let r = nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(Uid::from_raw(node.uid)),
            Some(Gid::from_raw(node.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if let Err(e) = r {
            problems.push(format!("chown: {e}"));
        }
    }
    for x in &node.xattrs {
        let Ok(value) = B64.decode(&x.value) else {
            problems.push("xattr value is not base64".to_string());
            continue;
        };
        if let Err(e) = xattr::set(path, OsStr::from_bytes(&x.name.0), &value) {
            problems.push(format!("xattr {}: {e}", x.name.lossy()));
        }
    }
    if !is_link
        && let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode))
    {
        problems.push(format!("chmod: {e}"));
    }
    // utimensat on the path itself: never opens it (a FIFO would block) nor follows links.
    let t = nix::sys::time::TimeSpec::new(
        node.mtime_ns.div_euclid(1_000_000_000),
        node.mtime_ns.rem_euclid(1_000_000_000),
    );
    let r = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
    if let Err(e) = r {
        problems.push(format!("times: {e}"));
    }
    match problems.first() {
        None => Ok(()),
        Some(p) => anyhow::bail!("{}: {}", path.display(), p),
    }
}
