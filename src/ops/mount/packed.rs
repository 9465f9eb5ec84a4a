//! A tree as the mount keeps it between lookups: its names and node types plain, for
//! lookups and listings, and its nodes' JSON compressed in blocks, decoded when a node
//! is asked for. A directory of 200 000 files is about 55 MB of JSON (a content id in
//! hex, owner names, times per node); packed it is a fifth of that, and it stays in
//! memory for as long as `ls -l` looks its names up one by one.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};

use crate::format::tree::{self, LazyTree, Node, NodeType};

/// Nodes per compressed block: a lookup decompresses one block (some 16 KB of JSON), and
/// names looked up in order (as `ls -l` does) find it already decompressed.
const BLOCK: usize = 64;
/// zstd's level for the blocks: fast, and JSON this repetitive packs well at any level.
const LEVEL: i32 = 1;

pub struct PackedTree {
    /// The names one after the other, and where each ends.
    names: Vec<u8>,
    name_ends: Vec<u32>,
    /// Each node's type; None for one whose JSON does not decode (listings leave it out,
    /// and looking it up reports it).
    kinds: Vec<Option<NodeType>>,
    /// Where each node's JSON ends in its block's.
    ends: Vec<u32>,
    blocks: Vec<Box<[u8]>>,
    /// The block last decompressed.
    last: Mutex<Option<(usize, Arc<Vec<u8>>)>>,
}

/// A length as the packed tree keeps it; a tree too large for that is refused.
fn len32(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| anyhow!("tree too large to mount ({n} bytes of names)"))
}

impl PackedTree {
    pub fn new(t: &LazyTree) -> Result<PackedTree> {
        let mut p = PackedTree {
            names: Vec::new(),
            name_ends: Vec::with_capacity(t.len()),
            kinds: Vec::with_capacity(t.len()),
            ends: Vec::with_capacity(t.len()),
            blocks: Vec::with_capacity(t.len().div_ceil(BLOCK)),
            last: Mutex::new(None),
        };
        let mut block = Vec::new();
        for i in 0..t.len() {
            p.names.extend_from_slice(t.name(i));
            p.name_ends.push(len32(p.names.len())?);
            p.kinds.push(tree::node_type(t.raw(i)).ok());
            block.extend_from_slice(t.raw(i));
            p.ends.push(len32(block.len())?);
            if (i + 1) % BLOCK == 0 || i + 1 == t.len() {
                let packed = zstd::bulk::compress(&block, LEVEL).context("packing a tree")?;
                p.blocks.push(packed.into_boxed_slice());
                block.clear();
            }
        }
        p.names.shrink_to_fit();
        Ok(p)
    }

    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    /// What it takes in memory, near enough.
    pub fn weight(&self) -> u64 {
        let packed: usize = self.blocks.iter().map(|b| b.len() + 16).sum();
        (packed + self.names.len() + self.len() * 9) as u64
    }

    pub fn name(&self, i: usize) -> &[u8] {
        let start = i.checked_sub(1).map_or(0, |p| self.name_ends[p] as usize);
        &self.names[start..self.name_ends[i] as usize]
    }

    pub fn kind(&self, i: usize) -> Option<NodeType> {
        self.kinds.get(i).copied().flatten()
    }

    /// The position of the node named `name` (the names are sorted, as LazyTree checked).
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        tree::find_sorted(self.len(), |i| self.name(i), name)
    }

    /// Node `i`, decoded.
    pub fn node(&self, i: usize) -> Result<Node> {
        let b = i / BLOCK;
        let json = self.block(b)?;
        let first = b * BLOCK;
        let start = if i == first {
            0
        } else {
            self.ends[i - 1] as usize
        };
        let raw = json
            .get(start..self.ends[i] as usize)
            .ok_or_else(|| anyhow!("packed tree block {b} shorter than its nodes"))?;
        Ok(tree::decode_node(raw)?)
    }

    /// Block `b` decompressed: the last one asked for is kept.
    fn block(&self, b: usize) -> Result<Arc<Vec<u8>>> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, json)) = &*last
            && *at == b
        {
            return Ok(json.clone());
        }
        let end = (b * BLOCK + BLOCK).min(self.len()) - 1;
        let packed = self
            .blocks
            .get(b)
            .ok_or_else(|| anyhow!("no packed tree block {b}"))?;
        let json =
            zstd::bulk::decompress(packed, self.ends[end] as usize).context("unpacking a tree")?;
        let json = Arc::new(json);
        *last = Some((b, json.clone()));
        Ok(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tree::Tree;

    #[test]
    fn a_packed_tree_gives_back_every_node_name_and_type() {
        let mut t = Tree::default();
        for i in 0..(3 * BLOCK + 5) {
            let kind = if i % 7 == 0 {
                NodeType::Dir
            } else {
                NodeType::File
            };
            let mut n = Node::new(format!("n{i:05}").into_bytes(), kind);
            n.size = i as u64;
            t.nodes.push(n);
        }
        t.nodes.push(Node::new(vec![b'z', 0xff], NodeType::Symlink));
        let json = t.encode();
        let lazy = LazyTree::decode(json.clone()).unwrap();
        let p = PackedTree::new(&lazy).unwrap();
        assert_eq!(p.len(), t.nodes.len());
        // Out of order too: each block is decompressed again when it is not the last.
        for i in (0..t.nodes.len()).rev().chain(0..t.nodes.len()) {
            let n = &t.nodes[i];
            assert_eq!(&p.node(i).unwrap(), n);
            assert_eq!(p.name(i), n.name.0.as_slice());
            assert_eq!(p.kind(i), Some(n.kind));
            assert_eq!(p.find(&n.name.0), Some(i));
        }
        assert_eq!(p.find(b"n"), None);
        assert_eq!(p.find(b"zz"), None);
        assert!(p.weight() < json.len() as u64, "packed is smaller");
        let empty = PackedTree::new(&LazyTree::decode(Tree::default().encode()).unwrap());
        assert_eq!(empty.unwrap().len(), 0);
    }
}
