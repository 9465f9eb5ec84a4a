//! Reading a range of a stored file: which blobs hold it, found by binary search over
//! their offsets, so a read anywhere in a large file fetches only the blobs it covers.

use std::sync::Arc;

use anyhow::{Result, bail};

use crate::format::Id;
use crate::format::tree::Node;

/// Where a file's bytes are: its data extents (holes between them read as zeros) and the
/// blobs that hold the extents' bytes back to back.
pub struct Layout {
    pub size: u64,
    /// (offset in the file, length, offset in the data stream).
    extents: Vec<(u64, u64, u64)>,
    /// Each blob and where it starts in the data stream.
    blobs: Vec<(Id, u64)>,
}

impl Layout {
    /// `raw_len` gives a blob's plaintext length (from the index); None for a blob the
    /// index lacks.
    pub fn new(node: &Node, raw_len: &dyn Fn(&Id) -> Option<u64>) -> Result<Layout> {
        let extents = match node.checked_extents() {
            Ok(e) => e,
            Err(why) => bail!("damaged tree node ({why})"),
        };
        let mut data = 0u64;
        let extents: Vec<(u64, u64, u64)> = extents
            .into_iter()
            .map(|[off, len]| {
                let e = (off, len, data);
                data += len;
                e
            })
            .collect();
        let mut blobs = Vec::with_capacity(node.content.len());
        let mut at = 0u64;
        for id in &node.content {
            let Some(len) = raw_len(id) else {
                bail!("data blob {} is not in the index", id.short());
            };
            blobs.push((*id, at));
            at += len;
        }
        if at < data {
            bail!("snapshot content shorter than its size");
        }
        Ok(Layout {
            size: node.size,
            extents,
            blobs,
        })
    }

    /// Up to `len` bytes from `offset`; `fetch` gives a blob's plaintext.
    pub fn read(
        &self,
        offset: u64,
        len: u64,
        fetch: &mut dyn FnMut(&Id) -> Result<Arc<Vec<u8>>>,
    ) -> Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let first = self.extents.partition_point(|e| e.0 + e.1 <= offset);
        for &(off, elen, data_at) in &self.extents[first..] {
            if off >= end {
                break;
            }
            let a = off.max(offset);
            let b = (off + elen).min(end);
            let dst = &mut out[(a - offset) as usize..(b - offset) as usize];
            self.copy_data(data_at + (a - off), dst, fetch)?;
        }
        Ok(out)
    }

    /// The blobs holding the file's bytes from `offset` for `len` bytes (holes hold none).
    pub fn blobs_in(&self, offset: u64, len: u64) -> Vec<Id> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out: Vec<Id> = Vec::new();
        let first = self.extents.partition_point(|e| e.0 + e.1 <= offset);
        for &(off, elen, data_at) in &self.extents[first..] {
            if off >= end {
                break;
            }
            let a = data_at + (off.max(offset) - off);
            let b = data_at + ((off + elen).min(end) - off);
            let i = self.blobs.partition_point(|x| x.1 <= a).saturating_sub(1);
            for &(id, start) in &self.blobs[i..] {
                if start >= b {
                    break;
                }
                if out.last() != Some(&id) {
                    out.push(id);
                }
            }
        }
        out
    }

    /// Fills `dst` from the data stream at `pos`.
    fn copy_data(
        &self,
        mut pos: u64,
        dst: &mut [u8],
        fetch: &mut dyn FnMut(&Id) -> Result<Arc<Vec<u8>>>,
    ) -> Result<()> {
        let mut i = self.blobs.partition_point(|b| b.1 <= pos).saturating_sub(1);
        let mut done = 0usize;
        while done < dst.len() {
            let Some(&(id, start)) = self.blobs.get(i) else {
                bail!("snapshot content shorter than its size");
            };
            let blob = fetch(&id)?;
            let inner = (pos - start) as usize;
            let Some(avail) = blob.get(inner..) else {
                bail!("data blob {} shorter than the index says", id.short());
            };
            let n = avail.len().min(dst.len() - done);
            dst[done..done + n].copy_from_slice(&avail[..n]);
            done += n;
            pos += n as u64;
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tree::NodeType;
    use std::collections::HashMap;

    /// A sparse file: "abc" at 0, a hole, "defgh" at 10; blobs "ab", "cde", "fgh".
    #[test]
    fn reads_any_range_with_holes_as_zeros_and_only_the_blobs_it_needs() {
        let blobs: HashMap<Id, Vec<u8>> = [
            (Id([1; 32]), b"ab".to_vec()),
            (Id([2; 32]), b"cde".to_vec()),
            (Id([3; 32]), b"fgh".to_vec()),
        ]
        .into_iter()
        .collect();
        let mut n = Node::new(b"f".to_vec(), NodeType::File);
        n.size = 17;
        n.extents = Some(vec![[0, 3], [10, 5]]);
        n.content = vec![Id([1; 32]), Id([2; 32]), Id([3; 32])];
        let l = Layout::new(&n, &|id| blobs.get(id).map(|b| b.len() as u64)).unwrap();
        let mut whole = [0u8; 17];
        whole[..3].copy_from_slice(b"abc");
        whole[10..15].copy_from_slice(b"defgh");
        for off in 0..18u64 {
            for len in 0..20u64 {
                let mut fetched = Vec::new();
                let got = l
                    .read(off, len, &mut |id| {
                        fetched.push(*id);
                        Ok(Arc::new(blobs[id].clone()))
                    })
                    .unwrap();
                let end = (off + len).min(17).max(off.min(17));
                assert_eq!(
                    got,
                    &whole[off.min(17) as usize..end as usize],
                    "{off}+{len}"
                );
                if off >= 15 || (off >= 3 && off + len <= 10) {
                    assert!(fetched.is_empty(), "{off}+{len}: a hole reads no blob");
                }
            }
        }
        let mut fetched = Vec::new();
        l.read(13, 2, &mut |id| {
            fetched.push(*id);
            Ok(Arc::new(blobs[id].clone()))
        })
        .unwrap();
        assert_eq!(fetched, vec![Id([3; 32])], "the tail reads its blob alone");
        assert_eq!(l.blobs_in(13, 2), vec![Id([3; 32])]);
        assert_eq!(
            l.blobs_in(1, 12),
            vec![Id([1; 32]), Id([2; 32]), Id([3; 32])]
        );
        assert!(l.blobs_in(4, 5).is_empty(), "a hole");
        assert!(l.blobs_in(15, 10).is_empty(), "past the data");
    }

    #[test]
    fn a_blob_missing_from_the_index_is_an_error() {
        let mut n = Node::new(b"f".to_vec(), NodeType::File);
        n.size = 3;
        n.content = vec![Id([9; 32])];
        assert!(Layout::new(&n, &|_| None).is_err());
    }
}
