//! `vault versions PATH`: every distinct content a path had across snapshots, oldest
//! first; runs of identical content in consecutive snapshots collapse into one row.
//! Reads only trees (from the local cache when it has them), never file data.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::ls::fmt_ns;
use super::walk::{self, Found};
use crate::format::Id;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Node, NodeType};
use crate::repo::Repository;

#[derive(Debug, Serialize)]
pub struct Version {
    #[serde(rename = "type")]
    pub kind: NodeType,
    pub size: u64,
    pub mtime: String,
    /// Identifies the content: equal for equal content, in any snapshot.
    pub content_id: String,
    pub first_snapshot: String,
    pub first_seen: String,
    pub last_snapshot: String,
    pub last_seen: String,
    /// How many snapshots hold this version.
    pub snapshots: u64,
}

/// What makes two versions the same: file data, directory tree, link target, device.
pub(crate) fn content_id(node: &Node, root: &Id) -> Id {
    let mut h = blake3::Hasher::new();
    h.update(&[node.kind as u8]);
    match node.kind {
        NodeType::File => {
            h.update(&node.size.to_le_bytes());
            for b in &node.content {
                h.update(&b.0);
            }
        }
        NodeType::Dir => {
            h.update(&node.subtree.unwrap_or(*root).0);
        }
        NodeType::Symlink => {
            h.update(node.target.as_ref().map_or(&[][..], |t| &t.0));
        }
        _ => {
            h.update(&node.rdev.to_le_bytes());
        }
    }
    Id(*h.finalize().as_bytes())
}

/// `snaps` oldest first. A snapshot without the path ends the current run.
pub fn versions(repo: &Repository, snaps: &[(Id, Snapshot)], path: &Path) -> Result<Vec<Version>> {
    let mut out: Vec<Version> = Vec::new();
    let mut open = false;
    for (id, snap) in snaps {
        let node = match walk::find(repo, &snap.tree, path) {
            Ok(Found::Node(n)) => *n,
            Ok(Found::Root(root)) => {
                let mut n = Node::new(Vec::new(), NodeType::Dir);
                n.subtree = Some(root);
                n
            }
            Err(_) => {
                open = false;
                continue;
            }
        };
        let cid = content_id(&node, &snap.tree).to_hex();
        let time = snap.time.clone();
        match out.last_mut() {
            Some(v) if open && v.content_id == cid => {
                v.last_snapshot = id.to_hex();
                v.last_seen = time;
                v.snapshots += 1;
            }
            _ => out.push(Version {
                kind: node.kind,
                size: node.size,
                mtime: fmt_ns(node.mtime_ns),
                content_id: cid,
                first_snapshot: id.to_hex(),
                first_seen: time.clone(),
                last_snapshot: id.to_hex(),
                last_seen: time,
                snapshots: 1,
            }),
        }
        open = true;
    }
    Ok(out)
}
