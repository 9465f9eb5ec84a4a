//! Listing a snapshot's contents.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::walk::{self, Found};
use crate::format::Id;
use crate::format::tree::{Node, NodeType};
use crate::repo::Repository;

#[derive(Serialize)]
pub struct Listed {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: NodeType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub group: String,
    pub size: u64,
    pub mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Listed {
    pub fn new(path: &Path, n: &Node) -> Listed {
        Listed {
            path: path.to_string_lossy().into_owned(),
            kind: n.kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            user: n.user.to_string(),
            group: n.group.to_string(),
            size: n.size,
            mtime: fmt_ns(n.mtime_ns),
            target: n.target.as_ref().map(|t| t.lossy()),
        }
    }
}

pub fn fmt_ns(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(ns.into())
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|_| ns.to_string())
}

/// Calls `out` for `path` itself (when it is a node) and everything below it, or only its
/// direct children when not `recursive`.
pub fn ls(
    repo: &Repository,
    root: &Id,
    path: &Path,
    recursive: bool,
    out: &mut dyn FnMut(&Path, &Node),
) -> Result<()> {
    let start: PathBuf = path.to_path_buf();
    let subtree = match walk::find(repo, root, path)? {
        Found::Root(id) => Some(id),
        Found::Node(n) => {
            out(&start, &n);
            match (n.kind, n.subtree) {
                (NodeType::Dir, Some(id)) => Some(id),
                _ => None,
            }
        }
    };
    if let Some(id) = subtree {
        let base = if start.as_os_str().is_empty() {
            PathBuf::from("/")
        } else {
            start
        };
        walk::walk(repo, &id, &base, &mut |p, n| {
            out(p, n);
            Ok(recursive)
        })?;
    }
    Ok(())
}
