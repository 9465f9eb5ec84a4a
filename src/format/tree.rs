//! Trees: one directory's entries, serialized deterministically as JSON so that an
//! unchanged directory always yields the same tree blob. Names, symlink targets and xattr
//! names are raw bytes: a JSON string when they are UTF-8, `{"b64": ...}` otherwise.

use std::cell::RefCell;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::DeserializeSeed;
use serde::{Deserialize, Serialize};

use super::error::{FormatError, Result};
use super::id::Id;

/// Bytes that round-trip exactly, whatever their encoding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RawBytes(pub Vec<u8>);

/// The form of a name that is not UTF-8.
#[derive(Serialize, Deserialize)]
struct Base64 {
    b64: String,
}

impl Serialize for RawBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(v) => s.serialize_str(v),
            Err(_) => Base64 {
                b64: B64.encode(&self.0),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RawBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // A visitor rather than an untagged enum, which buffers every value before it
        // tries the variants: every name in every tree comes through here.
        struct Raw;
        impl<'de> serde::de::Visitor<'de> for Raw {
            type Value = RawBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"a string or {"b64": ...}"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<RawBytes, E> {
                Ok(RawBytes(v.as_bytes().to_vec()))
            }
            fn visit_string<E: serde::de::Error>(
                self,
                v: String,
            ) -> std::result::Result<RawBytes, E> {
                Ok(RawBytes(v.into_bytes()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<RawBytes, A::Error> {
                let Base64 { b64 } =
                    Base64::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                B64.decode(b64)
                    .map(RawBytes)
                    .map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(Raw)
    }
}

impl RawBytes {
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// A user or group name, shared: nearly every node of a tree carries one of a few, and
/// a string of its own each cost two allocations a node, in the trees a backup holds
/// while it walks.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Owner(Arc<str>);

impl Owner {
    pub fn new(name: &str) -> Owner {
        Owner(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same name as one decoded lately on this thread, shared with it.
    fn interned(name: &str) -> Owner {
        const RECENT: usize = 8;
        thread_local! {
            static SEEN: RefCell<Vec<Owner>> = const { RefCell::new(Vec::new()) };
        }
        SEEN.with_borrow_mut(|seen| {
            if let Some(o) = seen.iter().find(|o| o.as_str() == name) {
                return o.clone();
            }
            let o = Owner::new(name);
            if seen.len() == RECENT {
                seen.remove(0);
            }
            seen.push(o.clone());
            o
        })
    }
}

impl From<&str> for Owner {
    fn from(name: &str) -> Owner {
        Owner::new(name)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Owner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Owner;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a user or group name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Owner, E> {
                Ok(Owner::interned(v))
            }
        }
        d.deserialize_str(Name)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    File,
    Dir,
    Symlink,
    Fifo,
    Chardev,
    Blockdev,
    Socket,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Xattr {
    pub name: RawBytes,
    pub value: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: RawBytes,
    #[serde(rename = "type")]
    pub kind: NodeType,
    /// Permission bits including setuid, setgid and sticky (st_mode & 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Owner::is_empty")]
    pub user: Owner,
    #[serde(default, skip_serializing_if = "Owner::is_empty")]
    pub group: Owner,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub links: u64,
    /// Data blob ids, in order; their plaintexts concatenated are the file's data extents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// Sparse files only: `[offset, length]` of each data extent; the rest are holes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<[u64; 2]>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RawBytes>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

impl Node {
    pub fn new(name: Vec<u8>, kind: NodeType) -> Node {
        Node {
            name: RawBytes(name),
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: Owner::default(),
            group: Owner::default(),
            mtime_ns: 0,
            ctime_ns: 0,
            size: 0,
            inode: 0,
            dev: 0,
            links: 0,
            content: Vec::new(),
            extents: None,
            subtree: None,
            target: None,
            rdev: 0,
            xattrs: Vec::new(),
        }
    }

    /// The data extents of a file: one covering everything unless the file is sparse.
    pub fn data_extents(&self) -> Vec<[u64; 2]> {
        match &self.extents {
            Some(e) => e.clone(),
            None if self.size > 0 => vec![[0, self.size]],
            None => Vec::new(),
        }
    }

    /// The data extents, refused unless sorted, disjoint and inside the size: readers
    /// subtract positions to fill holes, which would wrap (and write for ever) on any
    /// other layout, so anything else is a damaged or forged node.
    pub fn checked_extents(&self) -> std::result::Result<Vec<[u64; 2]>, &'static str> {
        let extents = self.data_extents();
        let mut pos = 0u64;
        for &[off, len] in &extents {
            if off < pos {
                return Err("its extents overlap or are out of order");
            }
            match off.checked_add(len) {
                Some(end) if end <= self.size => pos = end,
                _ => return Err("its extents reach past its size"),
            }
        }
        Ok(extents)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Serializes with nodes sorted by raw name, the canonical form.
    pub fn encode(&mut self) -> Vec<u8> {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        serde_json::to_vec(self).expect("tree serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Tree> {
        // Room for the nodes is made once: grown by doubling, a large directory's nodes
        // took up to twice their room, next to its JSON.
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let mut t = Room(named_objects(bytes))
            .deserialize(&mut de)
            .and_then(|t| de.end().map(|()| t))
            .map_err(|e| FormatError::malformed("tree", e))?;
        t.nodes.shrink_to_fit();
        if t.nodes.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(FormatError::malformed(
                "tree",
                "names not sorted or not unique",
            ));
        }
        Ok(t)
    }

    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.0.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// A tree kept as its JSON, each node decoded when it is asked for. A backup holds the
/// parent snapshot's tree of each directory it scans and looks its entries up by name:
/// decoded whole, a large directory's nodes took more room than its JSON, and the two
/// were held at once, which made the peak of a no-change backup's memory.
pub struct LazyTree {
    json: Vec<u8>,
    /// Each node's JSON, in order.
    nodes: Vec<LazyNode>,
    /// The nodes' names, one after the other.
    names: Vec<u8>,
}

#[derive(Clone, Copy)]
struct LazyNode {
    start: usize,
    end: usize,
    /// Where its name ends in `names`, and the next node's starts.
    name_end: usize,
}

impl LazyTree {
    /// Checks a tree as [`Tree::decode`] does, but for each node's fields, which
    /// [`LazyTree::node`] checks when it decodes the node.
    pub fn decode(json: Vec<u8>) -> Result<LazyTree> {
        match LazyTree::index(json) {
            Ok(t) => Ok(t),
            // Not as vault writes trees (other spacing, other order): decoded whole, and
            // kept as vault would write it.
            Err(json) => LazyTree::index(Tree::decode(&json)?.encode())
                .map_err(|_| FormatError::malformed("tree", "does not encode canonically")),
        }
    }

    /// Finds the nodes in a tree's JSON as vault writes it: `{"nodes":[...]}` without
    /// spaces, each node's name first, the names sorted and unique. Gives the JSON back
    /// when it is not so.
    fn index(json: Vec<u8>) -> std::result::Result<LazyTree, Vec<u8>> {
        const HEAD: &[u8] = br#"{"nodes":["#;
        if !json.starts_with(HEAD) {
            return Err(json);
        }
        let mut t = LazyTree {
            json: Vec::new(),
            nodes: Vec::with_capacity(named_objects(&json)),
            names: Vec::new(),
        };
        let mut at = HEAD.len();
        if json.get(at) == Some(&b']') {
            at += 1;
        } else {
            loop {
                let Some((end, name)) = node_at(&json, at) else {
                    return Err(json);
                };
                if let Some(last) = t.nodes.len().checked_sub(1)
                    && t.name(last) >= name.0.as_slice()
                {
                    return Err(json); // not sorted, or a name twice
                }
                t.names.extend_from_slice(&name.0);
                let name_end = t.names.len();
                t.nodes.push(LazyNode {
                    start: at,
                    end,
                    name_end,
                });
                at = end + 1;
                match json.get(end) {
                    Some(b',') => {}
                    Some(b']') => break,
                    _ => return Err(json),
                }
            }
        }
        if json.get(at..) != Some(b"}".as_slice()) {
            return Err(json);
        }
        t.json = json;
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The name of node `i`.
    pub fn name(&self, i: usize) -> &[u8] {
        let start = i.checked_sub(1).map_or(0, |p| self.nodes[p].name_end);
        &self.names[start..self.nodes[i].name_end]
    }

    /// The JSON of node `i`, as [`decode_node`] takes it.
    pub fn raw(&self, i: usize) -> &[u8] {
        let n = self.nodes[i];
        &self.json[n.start..n.end]
    }

    /// The position of the node named `name`.
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        find_sorted(self.nodes.len(), |i| self.name(i), name)
    }

    /// The node at position `i`, decoded.
    pub fn node(&self, i: usize) -> Result<Node> {
        decode_node(self.raw(i))
    }
}

/// The position of `name` among `len` names sorted bytewise, `name_at` giving each.
pub fn find_sorted<'a>(
    len: usize,
    name_at: impl Fn(usize) -> &'a [u8],
    name: &[u8],
) -> Option<usize> {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match name_at(mid).cmp(name) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(mid),
        }
    }
    None
}

/// One node of a tree from its JSON.
pub fn decode_node(json: &[u8]) -> Result<Node> {
    serde_json::from_slice(json).map_err(|e| FormatError::malformed("tree node", e))
}

/// The type of the node whose JSON this is, read without decoding the rest into memory.
pub fn node_type(json: &[u8]) -> Result<NodeType> {
    #[derive(Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: NodeType,
    }
    serde_json::from_slice::<Typed>(json)
        .map(|t| t.kind)
        .map_err(|e| FormatError::malformed("tree node", e))
}

/// How many objects in a tree's JSON start with a name, a little more than its nodes
/// (xattrs do too, and are rare): room for its nodes. None takes fewer than 24 bytes,
/// which bounds what crafted JSON can make room for.
fn named_objects(json: &[u8]) -> usize {
    memchr::memmem::find_iter(json, br#"{"name":"#)
        .count()
        .min(json.len() / 24)
}

/// The end of the node whose JSON starts at `at`, and its name, read from its start,
/// where vault writes it; None when the node is not so.
fn node_at(json: &[u8], at: usize) -> Option<(usize, RawBytes)> {
    let node = json.get(at..)?;
    let named = node.strip_prefix(br#"{"name":"#)?;
    let name = RawBytes::deserialize(&mut serde_json::Deserializer::from_slice(named)).ok()?;
    let mut values =
        serde_json::Deserializer::from_slice(node).into_iter::<serde::de::IgnoredAny>();
    values.next()?.ok()?;
    Some((at + values.byte_offset(), name))
}

/// Decodes a [`Tree`] into a nodes vector with room for this many.
struct Room(usize);

impl<'de> serde::de::DeserializeSeed<'de> for Room {
    type Value = Tree;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Tree, D::Error> {
        d.deserialize_struct("Tree", &["nodes"], self)
    }
}

impl<'de> serde::de::Visitor<'de> for Room {
    type Value = Tree;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(r#"a tree, {"nodes": [...]}"#)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Tree, A::Error> {
        let mut nodes = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "nodes" if nodes.is_some() => {
                    return Err(serde::de::Error::duplicate_field("nodes"));
                }
                "nodes" => nodes = Some(map.next_value_seed(NodesRoom(self.0))?),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let nodes = nodes.ok_or_else(|| serde::de::Error::missing_field("nodes"))?;
        Ok(Tree { nodes })
    }
}

/// The nodes of a tree, into a vector with room for this many.
struct NodesRoom(usize);

impl<'de> serde::de::DeserializeSeed<'de> for NodesRoom {
    type Value = Vec<Node>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Vec<Node>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NodesRoom {
    type Value = Vec<Node>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of nodes")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Vec<Node>, A::Error> {
        let mut nodes = Vec::with_capacity(self.0);
        while let Some(n) = seq.next_element()? {
            nodes.push(n);
        }
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree kept as its JSON finds each node where the decoded tree has it and decodes
    /// it the same, whatever its name; JSON not as vault writes it is read all the same;
    /// what Tree::decode refuses, it refuses.
    #[test]
    fn a_lazy_tree_finds_and_decodes_each_node_as_the_tree_holds_it() {
        let mut t = Tree {
            nodes: (0..300u64)
                .map(|i| {
                    let mut n = Node::new(format!("n{i:03}").into_bytes(), NodeType::File);
                    n.size = i;
                    n.content = vec![Id::random()];
                    n
                })
                .collect(),
        };
        t.nodes.push(Node::new(vec![b'z', 0xff], NodeType::Dir));
        t.nodes
            .push(Node::new("quote\"d \\ é".into(), NodeType::Symlink));
        t.nodes[5].xattrs = vec![Xattr {
            name: RawBytes(b"user.a".to_vec()),
            value: "eA==".into(),
        }];
        let enc = t.encode(); // sorted now
        let lazy = LazyTree::decode(enc.clone()).unwrap();
        assert_eq!(lazy.len(), t.nodes.len());
        for (i, n) in t.nodes.iter().enumerate() {
            assert_eq!(lazy.find(&n.name.0), Some(i));
            assert_eq!(&lazy.node(i).unwrap(), n);
        }
        assert_eq!(lazy.find(b"n0000"), None);
        assert_eq!(lazy.find(b""), None);
        assert_eq!(lazy.find(b"zz"), None);

        let spaced = serde_json::to_vec_pretty(&t).unwrap();
        let relaxed = LazyTree::decode(spaced).unwrap();
        assert_eq!(relaxed.find(&[b'z', 0xff]), Some(t.nodes.len() - 1));
        assert_eq!(relaxed.node(7).unwrap(), t.nodes[7]);
        assert!(
            LazyTree::decode(Tree::default().encode())
                .unwrap()
                .is_empty()
        );

        let mut twice = t.clone();
        twice.nodes.insert(1, t.nodes[0].clone());
        assert!(LazyTree::decode(serde_json::to_vec(&twice).unwrap()).is_err());
        twice.nodes.swap(0, 2);
        assert!(LazyTree::decode(serde_json::to_vec(&twice).unwrap()).is_err());
        assert!(LazyTree::decode(enc[..enc.len() - 1].to_vec()).is_err());
        assert!(LazyTree::decode([&enc[..], b"x"].concat()).is_err());
    }

    #[test]
    fn non_utf8_names_round_trip() {
        let mut t = Tree {
            nodes: vec![
                Node::new(vec![b'b', 0xff, 0xfe], NodeType::File),
                Node::new(b"a".to_vec(), NodeType::Dir),
            ],
        };
        let enc = t.encode();
        let s = String::from_utf8(enc.clone()).unwrap();
        assert!(s.contains("{\"b64\":"));
        let dec = Tree::decode(&enc).unwrap();
        assert_eq!(dec, t);
        assert_eq!(dec.nodes[0].name.0, b"a");
        assert!(dec.find(&[b'b', 0xff, 0xfe]).is_some());
        assert_eq!(t.clone().encode(), enc, "encoding is deterministic");
    }

    #[test]
    fn owners_are_plain_strings_and_shared_once_decoded() {
        let mut t = Tree {
            nodes: ["a", "b"]
                .map(|n| {
                    let mut node = Node::new(n.as_bytes().to_vec(), NodeType::File);
                    node.user = Owner::new("alice");
                    node
                })
                .to_vec(),
        };
        let enc = t.encode();
        let s = String::from_utf8(enc.clone()).unwrap();
        assert!(
            s.contains(r#""user":"alice""#) && !s.contains("group"),
            "{s}"
        );
        let dec = Tree::decode(&enc).unwrap();
        assert_eq!(dec, t);
        assert_eq!(dec.nodes[1].group.as_str(), "");
        assert!(Arc::ptr_eq(&dec.nodes[0].user.0, &dec.nodes[1].user.0));
    }
}
