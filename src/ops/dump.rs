//! Writing one file of a snapshot to a stream.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::walk::{self, Found};
use crate::error::{Advised, Remedy};
use crate::format::Id;
use crate::format::pack::BlobType;
use crate::format::tree::NodeType;
use crate::repo::Repository;

/// Streams the file at `path` to `out`, holes as zeros; memory stays at one blob.
pub fn dump(repo: &Repository, root: &Id, path: &Path, out: &mut dyn Write) -> Result<u64> {
    let node = match walk::find(repo, root, path)? {
        Found::Node(n) if n.kind == NodeType::File => *n,
        Found::Node(n) if n.kind == NodeType::Symlink => {
            let t = n.target.map(|t| t.0).unwrap_or_default();
            out.write_all(&t)?;
            return Ok(t.len() as u64);
        }
        _ => {
            let msg = format!("{}: is a directory or special file", path.display());
            return Err(Advised::error(msg, Remedy::RestoreInstead));
        }
    };
    let extents = match node.checked_extents() {
        Ok(e) => e,
        Err(why) => {
            let msg = format!("{}: damaged tree node ({why})", path.display());
            let remedy = Remedy::OtherVersion(path.display().to_string());
            return Err(Advised::error(msg, remedy));
        }
    };
    let zeros = vec![0u8; 1 << 16];
    let mut pos = 0u64;
    let mut blobs = node.content.iter();
    let mut pending: Vec<u8> = Vec::new();
    let mut pending_at = 0usize;
    for [off, len] in extents {
        write_zeros(out, &zeros, off - pos)?;
        let mut left = len;
        while left > 0 {
            if pending_at == pending.len() {
                let Some(id) = blobs.next() else {
                    bail!("{}: snapshot content shorter than its size", path.display());
                };
                pending = repo.read_blob(BlobType::Data, id)?;
                pending_at = 0;
            }
            let n = ((pending.len() - pending_at) as u64).min(left) as usize;
            out.write_all(&pending[pending_at..pending_at + n])
                .context("writing output")?;
            pending_at += n;
            left -= n as u64;
        }
        pos = off + len;
    }
    write_zeros(out, &zeros, node.size - pos)?;
    out.flush().context("writing output")?;
    Ok(node.size)
}

fn write_zeros(out: &mut dyn Write, zeros: &[u8], mut n: u64) -> Result<()> {
    while n > 0 {
        let k = n.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..k]).context("writing output")?;
        n -= k as u64;
    }
    Ok(())
}
