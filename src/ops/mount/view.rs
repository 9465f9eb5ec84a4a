//! What the mount shows: the directories above the snapshots (`latest`, `snapshots`,
//! `hosts`, `tags`, `ids`, `at`, `versions`), the snapshots' own trees, and the table of
//! inode numbers handed to the kernel.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use hashbrown::hash_table::{Entry, HashTable};

use super::catalog::Catalog;

use crate::format::Id;
use crate::format::tree::{Node, NodeType};

/// Fixed inode numbers of the top directories; those of everything else are handed out
/// as the kernel looks names up, and taken back when it forgets them.
pub const ROOT: u64 = 1;
pub const SNAPSHOTS: u64 = 2;
pub const HOSTS: u64 = 3;
pub const TAGS: u64 = 4;
pub const IDS: u64 = 5;
pub const AT: u64 = 6;
pub const VERSIONS: u64 = 7;
const FIRST_DYNAMIC: u64 = 16;

/// The names in the mount's root besides `latest`, with their inodes.
pub const TOP: [(&str, u64); 6] = [
    ("snapshots", SNAPSHOTS),
    ("hosts", HOSTS),
    ("tags", TAGS),
    ("ids", IDS),
    ("at", AT),
    ("versions", VERSIONS),
];

/// What an inode is.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Root,
    /// Snapshots by name: of one host, or of all (None).
    Snapshots(Option<String>),
    Hosts,
    /// `hosts/NAME`: its `latest`, `at` and `snapshots`.
    Host(String),
    Tags,
    /// `tags/TAG`: the snapshots with that tag, by name.
    Tag(String),
    /// `ids`: the snapshots by short id (any unique prefix of 4 digits or more looks up).
    Ids,
    /// `at`: a directory per `--at` expression, looked up only; for this host.
    At(String),
    /// `versions/PATH` where PATH is a directory in some snapshot of this host.
    VersionsDir(Vec<u8>),
    /// `versions/PATH` where PATH is a file: one entry per distinct version.
    VersionsOf(Vec<u8>),
    /// A node of a snapshot's tree; a snapshot's root is a directory made up for it.
    Node(NodeRef),
}

/// A node of a snapshot's tree as the inode table keeps it: what `stat` shows, and where
/// the node is, to decode it again for what is asked for rarely (content, symlink target,
/// xattrs). A listed directory of 200 000 entries leaves 200 000 of these, not decoded
/// nodes with their content ids; their snapshot's and tree's ids are shared (`Arc`), not
/// copied into each, and the numbers stat shows as 32 bits are kept so.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRef {
    /// The snapshot's root tree: a hard-link group is one within a snapshot.
    pub snap: Arc<Id>,
    /// The tree holding the node and its position there; None for a snapshot's root.
    pub at: Option<(Arc<Id>, u32)>,
    pub subtree: Option<Arc<Id>>,
    pub kind: NodeType,
    /// Whether it has xattrs: `ls -l` asks every file for two, and a node without any
    /// is answered without decoding it again.
    pub xattrs: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// As stat shows them: the link count clamped, the device number cut to 32 bits.
    pub links: u32,
    pub rdev: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// Symlinks: the target's length.
    pub size: u64,
    /// Bytes of data stored (holes left out).
    pub stored: u64,
    pub dev: u64,
    pub inode: u64,
}

impl NodeRef {
    pub fn new(snap: Arc<Id>, at: Option<(Arc<Id>, u32)>, n: &Node) -> NodeRef {
        let size = match n.kind {
            NodeType::Symlink => n.target.as_ref().map_or(0, |t| t.0.len() as u64),
            _ => n.size,
        };
        NodeRef {
            snap,
            at,
            subtree: n.subtree.map(Arc::new),
            kind: n.kind,
            xattrs: !n.xattrs.is_empty(),
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            links: n.links.min(u64::from(u32::MAX)) as u32,
            rdev: n.rdev as u32,
            mtime_ns: n.mtime_ns,
            ctime_ns: n.ctime_ns,
            size,
            stored: n.data_extents().iter().map(|e| e[1]).sum(),
            dev: n.dev,
            inode: n.inode,
        }
    }

    /// The hard-link group it belongs to (as restore groups them, repo-format §9.5):
    /// every name of the group is one inode, as on the disk it was read from.
    fn hard_link(&self) -> Option<(Id, u64, u64)> {
        (self.kind == NodeType::File && self.links > 1 && self.inode != 0)
            .then_some((*self.snap, self.dev, self.inode))
    }
}

impl Kind {
    /// Whether what it shows may change while mounted (new snapshots, `at/yesterday`
    /// moving on): the kernel is told to ask again soon.
    pub fn changes(&self) -> bool {
        !matches!(self, Kind::Node(_))
    }

    fn hard_link(&self) -> Option<(Id, u64, u64)> {
        match self {
            Kind::Node(r) => r.hard_link(),
            _ => None,
        }
    }

    /// Whether an inode that is `self` may stand for `other`: the same thing, or another
    /// name of the same hard-linked file.
    fn same(&self, other: &Kind) -> bool {
        self == other
            || self
                .hard_link()
                .is_some_and(|l| other.hard_link() == Some(l))
    }
}

/// One version of a file in `versions/PATH/`: named after the first snapshot holding it.
pub struct Version {
    pub name: String,
    pub node: NodeRef,
}

pub type Versions = (Arc<Catalog>, Arc<Vec<Version>>);

pub struct Inode {
    pub kind: Kind,
    /// For `VersionsOf`: its versions, as found in that list of snapshots (found again
    /// when snapshots come or go). Boxed: every other inode holds only the None.
    pub versions: Mutex<Option<Box<Versions>>>,
}

/// A (parent inode, name) an inode was looked up by.
type Name = (u64, Box<[u8]>);

struct Slot {
    inode: Arc<Inode>,
    lookups: u64,
    /// The name it was first looked up by (a hard link's others are in `Inodes::more`):
    /// each name is kept here only, the table by name holds its hash.
    name: Name,
}

/// The inodes the kernel holds. Memory stays bounded by what the kernel keeps: an inode is
/// dropped when the kernel forgets every lookup of it.
pub struct Inodes {
    slots: HashMap<u64, Slot>,
    /// The inode each (parent, name) stands for, as (hash of the two, inode); a name is
    /// matched against its slot's, so a hash shared by two names is no confusion.
    by_name: HashTable<(u64, u64)>,
    hasher: RandomState,
    /// The inode of each hard-link group held.
    links: HashMap<(Id, u64, u64), u64>,
    /// The names a hard-linked file was looked up by besides its first.
    more: HashMap<u64, Vec<Name>>,
    next: u64,
    fixed: HashMap<u64, Arc<Inode>>,
}

fn inode(kind: Kind) -> Arc<Inode> {
    Arc::new(Inode {
        kind,
        versions: Mutex::new(None),
    })
}

impl Inodes {
    pub fn new(host: &str) -> Inodes {
        let fixed = [
            (ROOT, Kind::Root),
            (SNAPSHOTS, Kind::Snapshots(None)),
            (HOSTS, Kind::Hosts),
            (TAGS, Kind::Tags),
            (IDS, Kind::Ids),
            (AT, Kind::At(host.to_string())),
            (VERSIONS, Kind::VersionsDir(b"/".to_vec())),
        ]
        .into_iter()
        .map(|(ino, k)| (ino, inode(k)))
        .collect();
        Inodes {
            slots: HashMap::new(),
            by_name: HashTable::new(),
            hasher: RandomState::new(),
            links: HashMap::new(),
            more: HashMap::new(),
            next: FIRST_DYNAMIC,
            fixed,
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.fixed
            .get(&ino)
            .or_else(|| self.slots.get(&ino).map(|s| &s.inode))
            .cloned()
    }

    fn hash(&self, parent: u64, name: &[u8]) -> u64 {
        self.hasher.hash_one((parent, name))
    }

    /// Whether inode `ino` was looked up as `name` in `parent`.
    fn named(&self, ino: u64, parent: u64, name: &[u8]) -> bool {
        let is = |n: &Name| n.0 == parent && *n.1 == *name;
        self.slots.get(&ino).is_some_and(|s| is(&s.name))
            || self.more.get(&ino).is_some_and(|m| m.iter().any(is))
    }

    /// The inode `name` in `parent` was last looked up as, if still held.
    fn by_name(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let h = self.hash(parent, name);
        let named = |&(eh, ino): &(u64, u64)| eh == h && self.named(ino, parent, name);
        self.by_name.find(h, named).map(|e| e.1)
    }

    /// Makes `name` in `parent` stand for `ino` (which was looked up by that name).
    fn name(&mut self, parent: u64, name: &[u8], ino: u64) {
        let h = self.hash(parent, name);
        // Taken out for the while, for the match below to read the names.
        let mut table = std::mem::take(&mut self.by_name);
        let named = |&(eh, held): &(u64, u64)| eh == h && self.named(held, parent, name);
        match table.entry(h, named, |e| e.0) {
            Entry::Occupied(mut e) => e.get_mut().1 = ino,
            Entry::Vacant(e) => {
                e.insert((h, ino));
            }
        }
        self.by_name = table;
    }

    /// The inode for `name` in `parent` being `kind`, counted as one more lookup: the one
    /// already handed out when it is still the same thing (or another name of the same
    /// hard-linked file), else a new one.
    pub fn lookup(&mut self, parent: u64, name: &[u8], kind: Kind) -> (u64, Arc<Inode>) {
        let held = self.by_name(parent, name).filter(|ino| {
            self.slots
                .get(ino)
                .is_some_and(|s| s.inode.kind.same(&kind))
        });
        let link = kind.hard_link();
        let held = held.or_else(|| link.and_then(|l| self.links.get(&l).copied()));
        if let Some(ino) = held
            && let Some(slot) = self.slots.get_mut(&ino)
        {
            slot.lookups += 1;
            let node = slot.inode.clone();
            if !self.named(ino, parent, name) {
                self.more
                    .entry(ino)
                    .or_default()
                    .push((parent, name.into()));
            }
            self.name(parent, name, ino);
            return (ino, node);
        }
        let ino = self.next;
        self.next += 1;
        let node = inode(kind);
        self.slots.insert(
            ino,
            Slot {
                inode: node.clone(),
                lookups: 1,
                name: (parent, name.into()),
            },
        );
        self.name(parent, name, ino);
        if let Some(l) = link {
            self.links.insert(l, ino);
        }
        (ino, node)
    }

    pub fn forget(&mut self, ino: u64, n: u64) {
        let Some(slot) = self.slots.get_mut(&ino) else {
            return;
        };
        slot.lookups = slot.lookups.saturating_sub(n);
        if slot.lookups > 0 {
            return;
        }
        let Some(slot) = self.slots.remove(&ino) else {
            return;
        };
        let more = self.more.remove(&ino).unwrap_or_default();
        for (parent, name) in std::iter::once(&slot.name).chain(&more) {
            let h = self.hash(*parent, name);
            if let Ok(e) = self.by_name.find_entry(h, |e| *e == (h, ino)) {
                e.remove();
            }
        }
        if let Some(l) = slot.inode.kind.hard_link()
            && self.links.get(&l) == Some(&ino)
        {
            self.links.remove(&l);
        }
    }

    /// The inode number a directory listing shows for `name` in `parent`: the one handed
    /// out if any, else a stand-in (a listing hands out no inode).
    pub fn listed(&self, parent: u64, name: &[u8]) -> u64 {
        self.by_name(parent, name).unwrap_or(u64::MAX >> 1)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

/// `path` (absolute, `/` for the root) with `name` appended.
pub fn child_path(path: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = path.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_are_reused_while_held_and_dropped_when_forgotten() {
        let mut t = Inodes::new("h");
        let k = Kind::Host("a".into());
        let (a, _) = t.lookup(HOSTS, b"a", k.clone());
        let (a2, _) = t.lookup(HOSTS, b"a", k.clone());
        assert_eq!(a, a2);
        assert_eq!(t.listed(HOSTS, b"a"), a);
        // The same name now meaning something else gets a new inode.
        let (b, _) = t.lookup(HOSTS, b"a", Kind::Host("b".into()));
        assert_ne!(a, b);
        t.forget(a, 2);
        assert!(t.get(a).is_none());
        assert!(t.get(b).is_some());
        t.forget(b, 1);
        assert_eq!(t.len(), 0);
        assert!(t.get(ROOT).is_some(), "fixed inodes stay");
        t.forget(ROOT, 1);
        assert!(t.get(ROOT).is_some());
    }

    #[test]
    fn names_of_one_hard_link_group_are_one_inode_until_forgotten() {
        let mut t = Inodes::new("h");
        let mut n = Node::new(b"a".to_vec(), NodeType::File);
        n.links = 2;
        n.inode = 77;
        let file = |tree: u8, n: &Node| {
            Kind::Node(NodeRef::new(
                Arc::new(Id([9; 32])),
                Some((Arc::new(Id([tree; 32])), 0)),
                n,
            ))
        };
        let (a, _) = t.lookup(20, b"a", file(1, &n));
        let (b, _) = t.lookup(21, b"b", file(2, &n));
        assert_eq!(a, b);
        assert_eq!(t.listed(21, b"b"), a);
        n.links = 1;
        let (c, _) = t.lookup(22, b"c", file(3, &n));
        assert_ne!(a, c, "links 1: not grouped");
        t.forget(a, 2);
        assert!(t.get(a).is_none());
        assert_eq!(t.listed(20, b"a"), u64::MAX >> 1, "both names let go");
        assert_eq!(t.listed(21, b"b"), u64::MAX >> 1);
    }

    /// What each inode the kernel holds costs: `ls -l` of a directory of 200 000 entries
    /// holds 200 000 of them.
    #[test]
    fn an_inode_is_small() {
        assert!(std::mem::size_of::<NodeRef>() <= 104);
        assert!(
            std::mem::size_of::<Inode>() <= 120,
            "{}",
            std::mem::size_of::<Inode>()
        );
        assert!(std::mem::size_of::<Slot>() <= 40);
    }

    #[test]
    fn child_paths() {
        assert_eq!(child_path(b"/", b"home"), b"/home");
        assert_eq!(child_path(b"/home", b"me"), b"/home/me");
    }
}
