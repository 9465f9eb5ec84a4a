//! File-system metadata: turning lstat results into tree nodes, finding the data extents
//! of sparse files, and applying a node's metadata to a restored path.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
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
pub mod remove;
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
    match xattr::list(path) {
        Ok(list) => xattrs_of(list, |name| xattr::get(path, name)),
        Err(_) => Vec::new(),
    }
}

/// The xattrs `names` lists, each value read with `get` (one that vanished is left out),
/// sorted by name as trees store them.
fn xattrs_of(
    names: impl Iterator<Item = std::ffi::OsString>,
    get: impl Fn(&OsStr) -> std::io::Result<Option<Vec<u8>>>,
) -> Vec<Xattr> {
    let mut out: Vec<Xattr> = names
        .filter_map(|name| {
            let value = get(&name).ok().flatten()?;
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

/// Which of a node's metadata a restore applies.
#[derive(Clone, Copy, Debug)]
pub struct Apply {
    /// Set owners (root only, and not with `--no-owner`). Without owners, setuid and
    /// setgid bits are dropped too: a restored program must not run as its restorer.
    pub owners: bool,
    pub xattrs: bool,
    /// Also remove the `user.` xattrs the node does not have (restoring over existing
    /// entries). Other namespaces are left alone: `security.` labels and ACLs in
    /// `system.` are the target system's policy, not the file's contents.
    pub drop_other_xattrs: bool,
}

impl Apply {
    fn mode(&self, node: &Node) -> u32 {
        if self.owners {
            node.mode & 0o7777
        } else {
            node.mode & 0o1777
        }
    }
}

fn time_of(node: &Node) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(
        node.mtime_ns.div_euclid(1_000_000_000),
        node.mtime_ns.rem_euclid(1_000_000_000),
    )
}

fn owner_ids(node: &Node) -> (Option<nix::unistd::Uid>, Option<nix::unistd::Gid>) {
    (
        Some(nix::unistd::Uid::from_raw(node.uid)),
        Some(nix::unistd::Gid::from_raw(node.gid)),
    )
}

fn xattr_values<'a>(node: &'a Node, problems: &mut Vec<String>) -> Vec<(&'a OsStr, Vec<u8>)> {
    node.xattrs
        .iter()
        .filter_map(|x| match B64.decode(&x.value) {
            Ok(v) => Some((OsStr::from_bytes(&x.name.0), v)),
            Err(_) => {
                problems.push(format!("xattr {}: value is not base64", x.name.lossy()));
                None
            }
        })
        .collect()
}

fn first_problem(problems: Vec<String>) -> Result<()> {
    match problems.into_iter().next() {
        None => Ok(()),
        Some(p) => anyhow::bail!("{p}"),
    }
}

/// Removes the `user.` xattrs of `file` that `keep` does not name.
fn drop_other_xattrs(file: &File, keep: &[(&OsStr, Vec<u8>)], problems: &mut Vec<String>) {
    use xattr::FileExt;
    let Ok(names) = file.list_xattr() else {
        return; // a file system without xattrs has none to drop
    };
    for name in names {
        let other = name.as_bytes().starts_with(b"user.") && !keep.iter().any(|(k, _)| *k == name);
        if other && let Err(e) = file.remove_xattr(&name) {
            problems.push(format!(
                "xattr {}: not removed: {e}",
                name.to_string_lossy()
            ));
        }
    }
}

/// Applies owners, xattrs, mode and times to a restored file or directory through its
/// open descriptor: whatever its name now points to, these reach only the object restore
/// made. Owners go first, since chown clears setuid bits. Returns the first problem after
/// trying everything.
pub fn apply_fd(file: &File, node: &Node, how: Apply) -> Result<()> {
    let mut problems = Vec::new();
    if how.owners {
        let (u, g) = owner_ids(node);
        if let Err(e) = nix::unistd::fchown(file, u, g) {
            problems.push(format!("chown: {e}"));
        }
    }
    if how.xattrs {
        use xattr::FileExt;
        let values = xattr_values(node, &mut problems);
        if how.drop_other_xattrs {
            drop_other_xattrs(file, &values, &mut problems);
        }
        for (name, value) in values {
            if let Err(e) = file.set_xattr(name, &value) {
                problems.push(format!("xattr {}: {e}", name.to_string_lossy()));
            }
        }
    }
    let mode = nix::sys::stat::Mode::from_bits_truncate(how.mode(node) as libc::mode_t);
    if let Err(e) = nix::sys::stat::fchmod(file, mode) {
        problems.push(format!("chmod: {e}"));
    }
    let t = time_of(node);
    if let Err(e) = nix::sys::stat::futimens(file, &t, &t) {
        problems.push(format!("times: {e}"));
    }
    first_problem(problems)
}

/// Applies a symlink's, FIFO's or device's metadata. Such an entry cannot be opened for
/// writing (a FIFO would block), so it is pinned with an O_PATH descriptor that does not
/// follow it, checked to be the kind restore made, and changed through that descriptor
/// (via its /proc/self/fd name where the kernel has no descriptor call). A symlink's own
/// times and xattrs are set with no-follow calls relative to its directory.
pub fn apply_special(dir: &File, name: &OsStr, node: &Node, how: Apply) -> Result<()> {
    use nix::fcntl::{AtFlags, OFlag};
    let pinned = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .context("opening it")?;
    let st = nix::sys::stat::fstat(&pinned).context("stat")?;
    if kind_of(&st) != node.kind {
        anyhow::bail!("replaced by something else while restoring");
    }
    let is_link = node.kind == NodeType::Symlink;
    let proc_self = format!("/proc/self/fd/{}", pinned.as_raw_fd());
    let in_dir = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    let mut problems = Vec::new();
    if how.owners {
        let (u, g) = owner_ids(node);
        if let Err(e) = nix::unistd::fchownat(
            &pinned,
            "",
            u,
            g,
            AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            problems.push(format!("chown: {e}"));
        }
    }
    if how.xattrs {
        for (xname, value) in xattr_values(node, &mut problems) {
            let r = if is_link {
                xattr::set(&in_dir, xname, &value)
            } else {
                xattr::set_deref(&proc_self, xname, &value)
            };
            if let Err(e) = r {
                problems.push(format!("xattr {}: {e}", xname.to_string_lossy()));
            }
        }
    }
    let t = time_of(node);
    let times = if is_link {
        nix::sys::stat::utimensat(
            dir,
            name,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
    } else {
        let mode = nix::sys::stat::Mode::from_bits_truncate(how.mode(node) as libc::mode_t);
        if let Err(e) = nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            proc_self.as_str(),
            mode,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        ) {
            problems.push(format!("chmod: {e}"));
        }
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            proc_self.as_str(),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )
    };
    if let Err(e) = times {
        problems.push(format!("times: {e}"));
    }
    first_problem(problems)
}
