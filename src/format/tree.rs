//! Trees: one directory's entries, serialized deterministically as JSON so that an
//! unchanged directory always yields the same tree blob. Names, symlink targets and xattr
//! names are raw bytes: a JSON string when they are UTF-8, `{"b64": ...}` otherwise.

use std::cell::RefCell;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
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
        let mut t: Tree =
            serde_json::from_slice(bytes).map_err(|e| FormatError::malformed("tree", e))?;
        // Grown by doubling, a large directory's nodes took up to twice their room, and a
        // parent tree stays in memory while its directory is walked.
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

#[cfg(test)]
mod tests {
    use super::*;

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
