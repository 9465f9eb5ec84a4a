//! The FUSE file system: resolves names through the views of `view.rs`, reads trees and
//! blobs through the session's repository (so damaged objects fall over to mirrors as
//! restore does), and answers the kernel.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr,
    Request,
};

use super::cache::Lru;
use super::catalog::{Catalog, Entry};
use super::content::Layout;
use super::view::{self, Inode, Inodes, Kind, NodeRef, Version, child_path};
use crate::format::Id;
use crate::format::pack::{self, BlobEntry, BlobType};
use crate::format::tree::{LazyTree, Node, NodeType};

use super::packed::PackedTree;
use crate::ops::{select, timespec, versions, walk};
use crate::repo::{FileKind, Repository};
use crate::session::Session;
use crate::session::state::Indexed;

/// How long the snapshot list is trusted before it is read again.
const REFRESH: Duration = Duration::from_secs(3);
/// How long the kernel may keep what it was told: a snapshot never changes; the
/// directories above them do.
const STEADY: Duration = Duration::from_secs(3600);
const CHANGING: Duration = Duration::from_secs(1);
/// How far ahead of a sequential reader blobs are fetched, and how many at most at once.
const PREFETCH_AHEAD: u64 = 4 << 20;
const PREFETCH_BLOBS: usize = 8;
/// Decrypted data blobs kept for reads that come back to them: the kernel reads a file
/// in pieces smaller than a blob, and a sequential reader's next blobs are fetched ahead.
/// That needs the blob being read, the window ahead and a blob beside them, and the page
/// cache keeps what was read (FOPEN_KEEP_CACHE): 8 MiB, or more for a repository whose
/// chunker makes blobs above 2 MiB. (Reading a 1 GiB file through the mount added 109 MB
/// to its memory with 64 MiB, 56 MB with 16 MiB and 33 MB with 8 MiB, each as fast:
/// benches/mount-memory.sh.)
const BLOB_CACHE_BYTES: u64 = 8 << 20;

fn blob_cache_bytes(max_blob: u64) -> u64 {
    BLOB_CACHE_BYTES.max(2 * max_blob + PREFETCH_AHEAD)
}
/// Opened bundles kept: small files are stored side by side in bundles of ~1 MiB, and a
/// reader of a directory's files comes to each bundle's members one after another.
/// Opening a bundle again for each member (decrypting and decompressing its megabyte to
/// take out a few kilobytes) made reading many small files 2.3x slower than restic's
/// mount; a few bundles are enough for several readers going through them at once.
const BUNDLE_CACHE_BYTES: u64 = 4 << 20;
/// Trees kept (packed), in bytes.
const TREE_CACHE_BYTES: u64 = 64 << 20;

/// A directory listing held from opendir to releasedir, so that the kernel's successive
/// readdir calls page through one consistent listing.
enum Listing {
    Tree(Arc<PackedTree>),
    Names(Vec<(Vec<u8>, NodeType)>),
}

impl Listing {
    fn len(&self) -> usize {
        match self {
            Listing::Tree(t) => t.len(),
            Listing::Names(v) => v.len(),
        }
    }

    /// Entry `i`: its name and type; None past the end or for a node that does not
    /// decode (left out of the listing; looking it up reports it).
    fn get(&self, i: usize) -> Option<(Vec<u8>, NodeType)> {
        match self {
            Listing::Tree(t) if i < t.len() => t.kind(i).map(|k| (t.name(i).to_vec(), k)),
            Listing::Tree(_) => None,
            Listing::Names(v) => v.get(i).cloned(),
        }
    }
}

/// Where a bundle is: its pack and its offset there.
type BundleAt = (Id, u32);

/// What reads share with the threads that fetch ahead of them.
struct Store {
    session: RwLock<Session<Indexed>>,
    blobs: Lru<Vec<u8>>,
    bundles: Lru<Vec<u8>, BundleAt>,
    /// Bundles being opened: the readers of their other members wait for them rather
    /// than open them too (readers going through one directory meet in its bundles).
    opening: Mutex<HashMap<BundleAt, Arc<Mutex<()>>>>,
    /// Blobs being fetched ahead of a sequential reader.
    prefetching: Mutex<HashSet<Id>>,
}

impl Store {
    fn session(&self) -> std::sync::RwLockReadGuard<'_, Session<Indexed>> {
        self.session.read().unwrap_or_else(|p| p.into_inner())
    }

    fn blob(&self, id: &Id) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.blobs.get(id) {
            return Ok(b);
        }
        let s = self.session();
        let repo = s.repo();
        if let Some((pack_id, entry)) = repo.index().get(id)
            && entry.bundled()
            && entry.blob_type == BlobType::Data
        {
            // Not kept on its own: its bundle is, and thousands of small files would
            // crowd the blob cache (whose eviction looks at every entry).
            return self.member(repo, &pack_id, &entry).map(Arc::new);
        }
        let b = Arc::new(repo.read_blob(BlobType::Data, id)?);
        self.blobs.put(*id, b.clone(), b.len() as u64);
        Ok(b)
    }

    /// A bundle member's plaintext, taken out of its bundle, which is opened once for
    /// all the members read while it stays in the cache.
    fn member(&self, repo: &Repository, pack_id: &Id, entry: &BlobEntry) -> Result<Vec<u8>> {
        let bundle = self.bundle(repo, pack_id, entry)?;
        match pack::member(&repo.keys, entry, &bundle) {
            Ok(data) => Ok(data.to_vec()),
            // The copy the bundle was opened from has this member damaged: read alone,
            // it falls over to the next copy.
            Err(_) => repo.read_blob(BlobType::Data, &entry.id),
        }
    }

    /// The plaintext of the bundle holding `entry`, from the cache, or opened by this
    /// thread or the one already opening it.
    fn bundle(&self, repo: &Repository, pack_id: &Id, entry: &BlobEntry) -> Result<Arc<Vec<u8>>> {
        let at = (*pack_id, entry.offset);
        if let Some(b) = self.bundles.get(&at) {
            return Ok(b);
        }
        let gate = locked(&self.opening).entry(at).or_default().clone();
        let held = locked(&gate);
        let found = match self.bundles.get(&at) {
            Some(b) => Ok(b), // opened while this thread waited
            None => {
                let opened = self.open_bundle(repo, pack_id, entry).map(Arc::new);
                if let Ok(b) = &opened {
                    self.bundles.put(at, b.clone(), b.len() as u64);
                }
                opened
            }
        };
        locked(&self.opening).remove(&at);
        drop(held);
        found
    }

    /// Reads and opens the bundle holding `entry`: each copy in turn, as `read_blob`
    /// does, until one holds the member intact.
    fn open_bundle(&self, repo: &Repository, pack_id: &Id, entry: &BlobEntry) -> Result<Vec<u8>> {
        let path = FileKind::Data.path(pack_id);
        repo.backend
            .read_with(|b| {
                let stored = b.read_range(&path, entry.offset.into(), entry.length.into())?;
                let bundle = pack::open_bundle(&repo.keys, entry, &stored)?;
                pack::member(&repo.keys, entry, &bundle)?;
                Ok(bundle)
            })
            .with_context(|| format!("data blob {} in pack {}", entry.id.short(), pack_id.short()))
    }

    /// Fetches `ids` into the cache on a thread of their own, at most `PREFETCH_BLOBS` at
    /// a time; a failure is left for the read that needs the blob to meet and report.
    fn prefetch(self: &Arc<Store>, ids: Vec<Id>) {
        let ids: Vec<Id> = {
            let mut busy = locked(&self.prefetching);
            ids.into_iter()
                .filter(|id| {
                    busy.len() < PREFETCH_BLOBS && self.blobs.get(id).is_none() && busy.insert(*id)
                })
                .collect()
        };
        if ids.is_empty() {
            return;
        }
        let store = self.clone();
        std::thread::spawn(move || {
            for id in ids {
                let _ = store.blob(&id);
                locked(&store.prefetching).remove(&id);
            }
        });
    }
}

pub struct VaultFs {
    store: Arc<Store>,
    host: String,
    catalog: Mutex<(Instant, Arc<Catalog>)>,
    inodes: Mutex<Inodes>,
    trees: Lru<PackedTree>,
    files: Mutex<HashMap<u64, Arc<Layout>>>,
    /// Where the last read of each open file ended.
    last_read: Mutex<HashMap<u64, u64>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
    reported: Mutex<HashSet<String>>,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn file_type(k: NodeType) -> FileType {
    match k {
        NodeType::File => FileType::RegularFile,
        NodeType::Dir => FileType::Directory,
        NodeType::Symlink => FileType::Symlink,
        NodeType::Fifo => FileType::NamedPipe,
        NodeType::Chardev => FileType::CharDevice,
        NodeType::Blockdev => FileType::BlockDevice,
        NodeType::Socket => FileType::Socket,
    }
}

/// Where a node is: its tree and its position there; None for a snapshot's root.
type Place = Option<(Id, u32)>;

/// Why a name resolves to nothing, or could not be resolved.
enum Miss {
    NotFound,
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Miss {
    fn from(e: anyhow::Error) -> Miss {
        Miss::Failed(e)
    }
}

impl VaultFs {
    pub fn new(session: Session<Indexed>) -> Result<VaultFs> {
        let host = crate::repo::repository::hostname();
        let warn = |m: String| session.reporter().warn(&m);
        let snaps = select::list(session.repo(), &select::Filter::default(), &warn)?;
        let blobs = blob_cache_bytes(session.repo().config.chunker.max_size.into());
        Ok(VaultFs {
            inodes: Mutex::new(Inodes::new(&host)),
            host,
            catalog: Mutex::new((Instant::now(), Arc::new(Catalog::new(snaps)))),
            store: Arc::new(Store {
                session: RwLock::new(session),
                blobs: Lru::new(blobs),
                bundles: Lru::new(BUNDLE_CACHE_BYTES),
                opening: Mutex::new(HashMap::new()),
                prefetching: Mutex::new(HashSet::new()),
            }),
            trees: Lru::new(TREE_CACHE_BYTES),
            files: Mutex::new(HashMap::new()),
            last_read: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            reported: Mutex::new(HashSet::new()),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            started: SystemTime::now(),
        })
    }

    pub fn snapshot_count(&self) -> usize {
        locked(&self.catalog).1.entries.len()
    }

    fn session(&self) -> std::sync::RwLockReadGuard<'_, Session<Indexed>> {
        self.store.session()
    }

    /// The snapshot list, read again when it is older than `REFRESH`; when snapshots came
    /// or went, the index is loaded again too, for the blobs new snapshots use.
    fn catalog(&self) -> Arc<Catalog> {
        let mut c = locked(&self.catalog);
        if c.0.elapsed() < REFRESH {
            return c.1.clone();
        }
        c.0 = Instant::now();
        let listed = {
            let s = self.session();
            let warn = |m: String| self.report_once(m);
            select::list(s.repo(), &select::Filter::default(), &warn)
        };
        match listed {
            Ok(snaps) => {
                let fresh = Catalog::new(snaps);
                if fresh.ids() != c.1.ids() {
                    let mut s = self
                        .store
                        .session
                        .write()
                        .unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = s.reload_index() {
                        self.report_once(format!("reading the index again: {}", e.one_line()));
                    }
                    c.1 = Arc::new(fresh);
                }
            }
            Err(e) => {
                self.report_once(format!("listing snapshots: {}", crate::error::one_line(&e)))
            }
        }
        c.1.clone()
    }

    /// Says `msg` on stderr unless it was said before: a damaged object read again and
    /// again is reported once.
    fn report_once(&self, msg: String) {
        if locked(&self.reported).insert(msg.clone()) {
            eprintln!("vault: mount: {msg}");
        }
    }

    fn io_error(&self, what: &str, e: &anyhow::Error) -> Errno {
        self.report_once(format!("{what}: {}", crate::error::one_line(e)));
        Errno::EIO
    }

    /// A tree kept packed, nodes decoded as they are asked for: a directory of 200 000
    /// entries costs a fifth of its JSON, not its decoded nodes; the JSON is let go once
    /// packed.
    fn tree(&self, id: &Id) -> Result<Arc<PackedTree>> {
        if let Some(t) = self.trees.get(id) {
            return Ok(t);
        }
        let json = self.session().repo().read_blob(BlobType::Tree, id)?;
        let t = LazyTree::decode(json)
            .map_err(|e| anyhow!(e))
            .and_then(|t| PackedTree::new(&t))
            .with_context(|| format!("tree {}", id.short()))?;
        let t = Arc::new(t);
        self.trees.put(*id, t.clone(), t.weight());
        Ok(t)
    }

    /// The node named `name` in `tree`, and its position.
    fn child(tree: &PackedTree, name: &[u8]) -> Result<Option<(Node, u32)>> {
        match tree.find(name) {
            Some(i) => Ok(Some((tree.node(i)?, i as u32))),
            None => Ok(None),
        }
    }

    /// The node at `path` (absolute) in the tree `root`, and where it is; None where the
    /// path is not there.
    fn find(&self, root: &Id, path: &[u8]) -> Result<Option<(Node, Place)>> {
        let mut at = *root;
        let mut tree = self.tree(root)?;
        let comps = walk::components(std::path::Path::new(OsStr::from_bytes(path)));
        let Some((last, dirs)) = comps.split_last() else {
            return Ok(Some((self.root_node(root, 0), None)));
        };
        for name in dirs {
            match Self::child(&tree, name)? {
                Some((n, _)) if n.kind == NodeType::Dir => match n.subtree {
                    Some(sub) => {
                        tree = self.tree(&sub)?;
                        at = sub;
                    }
                    None => return Ok(None),
                },
                _ => return Ok(None),
            }
        }
        Ok(Self::child(&tree, last)?.map(|(n, i)| (n, Some((at, i)))))
    }

    /// The whole node `r` stands for, decoded again from its tree.
    fn full_node(&self, r: &NodeRef) -> Result<Node> {
        match &r.at {
            Some((tree, i)) => {
                let i = *i;
                let t = self.tree(tree)?;
                if i as usize >= t.len() {
                    return Err(anyhow!("tree {} changed", tree.short()));
                }
                Ok(t.node(i as usize)?)
            }
            None => Ok(self.root_node(&r.snap, r.mtime_ns)),
        }
    }

    /// A snapshot's root directory, which has no node of its own in the tree.
    fn root_node(&self, tree: &Id, time_ns: i64) -> Node {
        let mut n = Node::new(Vec::new(), NodeType::Dir);
        n.mode = 0o555;
        n.uid = self.uid;
        n.gid = self.gid;
        n.mtime_ns = time_ns;
        n.ctime_ns = time_ns;
        n.subtree = Some(*tree);
        n
    }

    fn snapshot_root(&self, e: &Entry) -> Kind {
        let ns = i64::try_from(e.time.as_nanosecond()).unwrap_or(0);
        let root = self.root_node(&e.snap.tree, ns);
        Kind::Node(NodeRef::new(Arc::new(e.snap.tree), None, &root))
    }

    /// What `name` in the directory `parent` is.
    fn resolve(&self, parent: &Inode, name: &[u8]) -> Result<Kind, Miss> {
        let text = std::str::from_utf8(name).map_err(|_| Miss::NotFound)?;
        let found = |e: Option<&Entry>| e.map(|e| self.snapshot_root(e)).ok_or(Miss::NotFound);
        match &parent.kind {
            Kind::Root => match text {
                "latest" => found(self.catalog().latest(&self.host)),
                _ => Err(Miss::NotFound),
            },
            Kind::Snapshots(host) => {
                let cat = self.catalog();
                let e = cat.by_name(text);
                found(e.filter(|e| host.as_ref().is_none_or(|h| e.snap.host == *h)))
            }
            Kind::Hosts => {
                let known = self.catalog().hosts().iter().any(|h| h == text);
                known
                    .then(|| Kind::Host(text.to_string()))
                    .ok_or(Miss::NotFound)
            }
            Kind::Host(h) => match text {
                "latest" => found(self.catalog().latest(h)),
                "at" => Ok(Kind::At(h.clone())),
                "snapshots" => Ok(Kind::Snapshots(Some(h.clone()))),
                _ => Err(Miss::NotFound),
            },
            Kind::Tags => {
                let known = self.catalog().tags().iter().any(|t| t == text);
                known
                    .then(|| Kind::Tag(text.to_string()))
                    .ok_or(Miss::NotFound)
            }
            Kind::Tag(t) => {
                let cat = self.catalog();
                found(cat.by_name(text).filter(|e| e.snap.tags.contains(t)))
            }
            Kind::Ids => found(self.catalog().by_id_prefix(text)),
            Kind::At(h) => {
                let now = jiff::Zoned::now();
                let at = timespec::parse(text, &now).map_err(|_| Miss::NotFound)?;
                found(self.catalog().at(h, at))
            }
            Kind::VersionsDir(p) => self.resolve_version_path(&child_path(p, name)),
            Kind::VersionsOf(_) => {
                let versions = self.versions(parent)?;
                let v = versions.iter().find(|v| v.name == text);
                v.map(|v| Kind::Node(v.node.clone())).ok_or(Miss::NotFound)
            }
            Kind::Node(n) => self.resolve_in_tree(n, name),
        }
    }

    fn resolve_in_tree(&self, dir: &NodeRef, name: &[u8]) -> Result<Kind, Miss> {
        let Some(sub) = dir.subtree.clone().filter(|_| dir.kind == NodeType::Dir) else {
            return Err(Miss::NotFound);
        };
        let tree = self.tree(&sub)?;
        let (node, i) = Self::child(&tree, name)?.ok_or(Miss::NotFound)?;
        if !walk::safe_name(&node.name.0) {
            return Err(Miss::NotFound);
        }
        // The children share their directory's ids: one copy for a whole listing.
        Ok(Kind::Node(NodeRef::new(
            dir.snap.clone(),
            Some((sub, i)),
            &node,
        )))
    }

    /// `versions/PATH`: a directory where the newest snapshot of this host holding PATH
    /// has a directory, else the list of PATH's versions.
    fn resolve_version_path(&self, path: &[u8]) -> Result<Kind, Miss> {
        let cat = self.catalog();
        for e in cat.of_host(Some(&self.host)).rev() {
            match self.find(&e.snap.tree, path) {
                Ok(Some((n, _))) if n.kind == NodeType::Dir => {
                    return Ok(Kind::VersionsDir(path.to_vec()));
                }
                Ok(Some(_)) => return Ok(Kind::VersionsOf(path.to_vec())),
                Ok(None) => {}
                // A snapshot whose trees cannot be read has no say; the others do.
                Err(e) => self.report_once(crate::error::one_line(&e)),
            }
        }
        Err(Miss::NotFound)
    }

    /// The distinct versions of a file across this host's snapshots, oldest first; runs
    /// of equal content in consecutive snapshots are one version, as `vault versions`
    /// counts them.
    fn versions(&self, inode: &Inode) -> Result<Arc<Vec<Version>>> {
        let Kind::VersionsOf(path) = &inode.kind else {
            return Err(anyhow!("not a versions directory"));
        };
        let cat = self.catalog();
        if let Some((seen, v)) = locked(&inode.versions).as_deref()
            && Arc::ptr_eq(seen, &cat)
        {
            return Ok(v.clone());
        }
        let mut out: Vec<Version> = Vec::new();
        let mut last: Option<Id> = None;
        for e in cat.of_host(Some(&self.host)) {
            let (node, at) = match self.find(&e.snap.tree, path) {
                Ok(Some(found)) => found,
                Ok(None) => {
                    last = None;
                    continue;
                }
                Err(err) => {
                    self.report_once(crate::error::one_line(&err));
                    last = None;
                    continue;
                }
            };
            let cid = versions::content_id(&node, &e.snap.tree);
            if last == Some(cid) {
                continue;
            }
            last = Some(cid);
            out.push(Version {
                name: e.name.clone(),
                node: NodeRef::new(
                    Arc::new(e.snap.tree),
                    at.map(|(t, i)| (Arc::new(t), i)),
                    &node,
                ),
            });
        }
        let out = Arc::new(out);
        *locked(&inode.versions) = Some(Box::new((cat, out.clone())));
        Ok(out)
    }

    /// A directory's entries, for readdir.
    fn listing(&self, inode: &Inode) -> Result<Listing> {
        let dirs = |names: Vec<String>| {
            Listing::Names(
                names
                    .into_iter()
                    .map(|n| (n.into_bytes(), NodeType::Dir))
                    .collect(),
            )
        };
        Ok(match &inode.kind {
            Kind::Root => {
                let mut names: Vec<String> = Vec::new();
                if self.catalog().latest(&self.host).is_some() {
                    names.push("latest".into());
                }
                names.extend(view::TOP.iter().map(|(n, _)| n.to_string()));
                dirs(names)
            }
            Kind::Snapshots(h) => dirs(
                self.catalog()
                    .of_host(h.as_deref())
                    .map(|e| e.name.clone())
                    .collect(),
            ),
            Kind::Hosts => dirs(self.catalog().hosts()),
            Kind::Host(h) => {
                let mut names = vec!["at".to_string(), "snapshots".to_string()];
                if self.catalog().latest(h).is_some() {
                    names.insert(0, "latest".into());
                }
                dirs(names)
            }
            Kind::Tags => dirs(self.catalog().tags()),
            Kind::Tag(t) => dirs(
                self.catalog()
                    .entries
                    .iter()
                    .filter(|e| e.snap.tags.contains(t))
                    .map(|e| e.name.clone())
                    .collect(),
            ),
            Kind::Ids => dirs(ids(&self.catalog())),
            Kind::At(_) => Listing::Names(Vec::new()),
            Kind::VersionsDir(p) => {
                let cat = self.catalog();
                let mut found = None;
                for e in cat.of_host(Some(&self.host)).rev() {
                    if let Ok(Some((n, _))) = self.find(&e.snap.tree, p)
                        && n.kind == NodeType::Dir
                    {
                        found = n.subtree;
                        break;
                    }
                }
                match found {
                    Some(sub) => Listing::Tree(self.tree(&sub)?),
                    None => Listing::Names(Vec::new()),
                }
            }
            Kind::VersionsOf(_) => Listing::Names(
                self.versions(inode)?
                    .iter()
                    .map(|v| (v.name.clone().into_bytes(), v.node.kind))
                    .collect(),
            ),
            Kind::Node(n) => match n.subtree.as_deref().filter(|_| n.kind == NodeType::Dir) {
                Some(sub) => Listing::Tree(self.tree(sub)?),
                None => return Err(anyhow!("not a directory")),
            },
        })
    }

    fn attr(&self, ino: u64, kind: &Kind) -> FileAttr {
        let mut a = FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 1 << 16,
            flags: 0,
        };
        let Kind::Node(n) = kind else {
            return a;
        };
        a.kind = file_type(n.kind);
        a.perm = (n.mode & 0o7777) as u16;
        a.uid = n.uid;
        a.gid = n.gid;
        a.mtime = time_of(n.mtime_ns);
        a.atime = a.mtime;
        a.ctime = time_of(n.ctime_ns);
        a.crtime = a.mtime;
        a.rdev = n.rdev;
        match n.kind {
            NodeType::File => {
                a.size = n.size;
                a.nlink = n.links.max(1);
                a.blocks = n.stored.div_ceil(512);
            }
            NodeType::Symlink => {
                a.size = n.size;
                a.nlink = 1;
            }
            NodeType::Dir => {}
            _ => a.nlink = n.links.max(1),
        }
        a
    }

    fn ttl(kind: &Kind) -> Duration {
        if kind.changes() { CHANGING } else { STEADY }
    }

    fn inode(&self, ino: INodeNo) -> Result<Arc<Inode>, Errno> {
        locked(&self.inodes).get(ino.0).ok_or(Errno::ENOENT)
    }

    /// The whole node inode `ino` is, decoded again: for what `stat` does not show.
    fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        match &self.inode(ino)?.kind {
            Kind::Node(r) => self
                .full_node(r)
                .map_err(|e| self.io_error("reading a tree", &e)),
            _ => Err(Errno::EISDIR),
        }
    }

    fn open_file(&self, ino: INodeNo) -> Result<u64, Errno> {
        let node = self.node(ino)?;
        if node.kind != NodeType::File {
            return Err(Errno::EINVAL);
        }
        let layout = {
            let s = self.session();
            let index = s.repo().index();
            Layout::new(&node, &|id| {
                index.get(id).map(|(_, e)| u64::from(e.raw_len))
            })
        };
        let layout = layout.map_err(|e| self.io_error(&node.name.lossy(), &e))?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        locked(&self.files).insert(fh, Arc::new(layout));
        Ok(fh)
    }

    fn read_file(&self, fh: u64, ino: INodeNo, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let layout = locked(&self.files).get(&fh).cloned().ok_or(Errno::EBADF)?;
        let data = layout
            .read(offset, u64::from(size), &mut |id| self.store.blob(id))
            .map_err(|e| {
                let name = self.node(ino).map(|n| n.name.lossy()).unwrap_or_default();
                self.io_error(&name, &e)
            })?;
        // A read that goes on from where the last one ended is taken for a sequential
        // reader: the blobs of the next stretch are fetched while it uses this one.
        let end = offset + data.len() as u64;
        let mut last = locked(&self.last_read);
        if last.get(&fh) == Some(&offset) {
            self.store.prefetch(layout.blobs_in(end, PREFETCH_AHEAD));
        }
        last.insert(fh, end);
        Ok(data)
    }

    /// Whether inode `ino` may have xattrs (a node without any is known from its ref).
    fn may_have_xattrs(&self, ino: INodeNo) -> bool {
        self.inode(ino)
            .is_ok_and(|i| matches!(&i.kind, Kind::Node(r) if r.xattrs))
    }

    fn xattr_value(&self, ino: INodeNo, name: &OsStr) -> Result<Vec<u8>, Errno> {
        if !self.may_have_xattrs(ino) {
            return Err(Errno::NO_XATTR);
        }
        let node = self.node(ino).map_err(|_| Errno::NO_XATTR)?;
        let x = node
            .xattrs
            .iter()
            .find(|x| x.name.0 == name.as_bytes())
            .ok_or(Errno::NO_XATTR)?;
        B64.decode(&x.value).map_err(|_| Errno::EIO)
    }
}

/// Short ids, or the whole id where two snapshots share a short one.
fn ids(cat: &Catalog) -> Vec<String> {
    let mut count: HashMap<String, usize> = HashMap::new();
    for e in &cat.entries {
        *count.entry(e.id.short()).or_default() += 1;
    }
    cat.entries
        .iter()
        .map(|e| {
            let s = e.id.short();
            if count[&s] > 1 { e.id.to_hex() } else { s }
        })
        .collect()
}

fn reply_xattr(reply: ReplyXattr, data: &[u8], size: u32) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for VaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == view::ROOT
            && let Some((_, ino)) = view::TOP
                .iter()
                .find(|(n, _)| name.as_bytes() == n.as_bytes())
        {
            let a = self.attr(*ino, &Kind::Root);
            return reply.entry(&CHANGING, &a, Generation(0));
        }
        let dir = match self.inode(parent) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        match self.resolve(&dir, name.as_bytes()) {
            Ok(kind) => {
                let ttl = Self::ttl(&dir.kind).min(Self::ttl(&kind));
                let (ino, inode) = locked(&self.inodes).lookup(parent.0, name.as_bytes(), kind);
                reply.entry(&ttl, &self.attr(ino, &inode.kind), Generation(0));
            }
            Err(Miss::NotFound) => reply.error(Errno::ENOENT),
            Err(Miss::Failed(e)) => reply.error(self.io_error(&name.to_string_lossy(), &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        locked(&self.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inode(ino) {
            Ok(i) => reply.attr(&Self::ttl(&i.kind), &self.attr(ino.0, &i.kind)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino) {
            Ok(n) if n.kind == NodeType::Symlink => {
                reply.data(n.target.as_ref().map_or(&[][..], |t| &t.0))
            }
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.open_file(ino) {
            // A snapshot never changes: what the kernel cached stays good.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.read_file(fh.0, ino, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        locked(&self.files).remove(&fh.0);
        locked(&self.last_read).remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        match self.listing(&inode) {
            Ok(l) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                locked(&self.dirs).insert(fh, Arc::new(l));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(self.io_error("listing a directory", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(listing) = locked(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        // Offsets 1 and 2 are `.` and `..`; entry i of the listing is offset i + 3.
        let mut at = offset;
        if at == 0 {
            if reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            at = 1;
        }
        if at == 1 {
            if reply.add(ino, 2, FileType::Directory, "..") {
                return reply.ok();
            }
            at = 2;
        }
        let inodes = locked(&self.inodes);
        for i in (at as usize - 2)..listing.len() {
            let Some((name, kind)) = listing.get(i) else {
                continue;
            };
            if !walk::safe_name(&name) {
                continue;
            }
            let child = inodes.listed(ino.0, &name);
            if reply.add(
                INodeNo(child),
                i as u64 + 3,
                file_type(kind),
                OsStr::from_bytes(&name),
            ) {
                break;
            }
        }
        drop(inodes);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        locked(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.xattr_value(ino, name) {
            Ok(v) => reply_xattr(reply, &v, size),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut names = Vec::new();
        if self.may_have_xattrs(ino)
            && let Ok(n) = self.node(ino)
        {
            for x in &n.xattrs {
                names.extend_from_slice(&x.name.0);
                names.push(0);
            }
        }
        reply_xattr(reply, &names, size);
    }
}
