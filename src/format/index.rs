//! Index files: which pack holds each blob, at which offset. Binary body inside a sealed
//! object of kind `index`:
//! `"vidx" || version u8 || n_superseded u32 || ids || n_packs u32 ||
//!  per pack: pack id || n_blobs u32 || per blob: type u8, flags u8, id, offset u32,
//!  length u32, raw_len u32` (all integers little-endian). Version 2, written when any
//!  blob is a bundle member, adds `inner u32` to each blob.

use super::crypto::Keys;
use super::error::{FormatError, Result};
use super::id::Id;
use super::object::{self, Kind};
use super::pack::{BlobEntry, BlobType};

const MAGIC: &[u8; 4] = b"vidx";
const VERSION: u8 = 1;
/// Index files that place blobs inside bundles (repository version 2).
const VERSION_BUNDLES: u8 = 2;
const BLOB_LEN: usize = 46;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackBlobs {
    pub pack: Id,
    pub blobs: Vec<BlobEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// Index files this one replaces (written by prune and repair); readers ignore those.
    pub supersedes: Vec<Id>,
    pub packs: Vec<PackBlobs>,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(FormatError::Truncated("index"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn id(&mut self) -> Result<Id> {
        Ok(Id::from_slice(self.take(32)?).expect("32 bytes"))
    }
    /// A count of items of `item_len` bytes, checked against the bytes left so a corrupt
    /// count cannot make us allocate without bound.
    fn count(&mut self, item_len: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_len) > self.b.len() {
            return Err(FormatError::Truncated("index count exceeds its data"));
        }
        Ok(n)
    }
}

/// Adds one index file's listing of a pack to `packs`. A pack that several index files
/// list keeps every blob any of them gives: one file listing it short (written by a
/// backup-role key, §20, or damaged in a way that still opens) must not make the
/// others' entries vanish, nor the pack look unused to prune.
pub fn merge_listing(packs: &mut std::collections::HashMap<Id, PackBlobs>, p: PackBlobs) {
    use std::collections::hash_map::Entry;
    match packs.entry(p.pack) {
        Entry::Vacant(v) => {
            v.insert(p);
        }
        Entry::Occupied(mut o) => {
            let have: std::collections::HashSet<(Id, u32)> =
                o.get().blobs.iter().map(|e| (e.id, e.offset)).collect();
            let more: Vec<BlobEntry> = p
                .blobs
                .into_iter()
                .filter(|e| !have.contains(&(e.id, e.offset)))
                .collect();
            o.get_mut().blobs.extend(more);
        }
    }
}

impl IndexFile {
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let bundles = self
            .packs
            .iter()
            .flat_map(|p| &p.blobs)
            .any(|e| e.bundled());
        let mut b =
            Vec::with_capacity(16 + self.blob_count() * (BLOB_LEN + 4) + self.packs.len() * 36);
        b.extend_from_slice(MAGIC);
        // Index files without bundles stay version 1, readable by every vault.
        b.push(if bundles { VERSION_BUNDLES } else { VERSION });
        b.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for id in &self.supersedes {
            b.extend_from_slice(&id.0);
        }
        b.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            b.extend_from_slice(&p.pack.0);
            b.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
            for e in &p.blobs {
                b.push(e.blob_type as u8);
                b.push(e.flags);
                b.extend_from_slice(&e.id.0);
                b.extend_from_slice(&e.offset.to_le_bytes());
                b.extend_from_slice(&e.length.to_le_bytes());
                b.extend_from_slice(&e.raw_len.to_le_bytes());
                if bundles {
                    b.extend_from_slice(&e.inner.to_le_bytes());
                }
            }
        }
        b
    }

    pub fn decode(body: &[u8]) -> Result<IndexFile> {
        let mut r = Reader { b: body };
        if r.take(4)? != MAGIC {
            return Err(FormatError::malformed("index", "bad magic"));
        }
        let version = r.take(1)?[0];
        if version != VERSION && version != VERSION_BUNDLES {
            return Err(FormatError::Version {
                what: "index",
                version: version.into(),
            });
        }
        let n = r.count(32)?;
        let supersedes = (0..n).map(|_| r.id()).collect::<Result<_>>()?;
        let n = r.count(36)?;
        let mut packs = Vec::with_capacity(n);
        for _ in 0..n {
            let pack = r.id()?;
            let bundles = version == VERSION_BUNDLES;
            let m = r.count(BLOB_LEN + if bundles { 4 } else { 0 })?;
            let mut blobs = Vec::with_capacity(m);
            for _ in 0..m {
                let t = r.take(2)?;
                let entry = BlobEntry {
                    blob_type: BlobType::from_u8(t[0])?,
                    flags: t[1],
                    id: r.id()?,
                    offset: r.u32()?,
                    length: r.u32()?,
                    raw_len: r.u32()?,
                    inner: if bundles { r.u32()? } else { 0 },
                };
                if !entry.bundled() && entry.inner != 0 {
                    return Err(FormatError::malformed(
                        "index",
                        "an offset inside a single blob",
                    ));
                }
                blobs.push(entry);
            }
            packs.push(PackBlobs { pack, blobs });
        }
        if !r.b.is_empty() {
            return Err(FormatError::malformed("index", "trailing bytes"));
        }
        // Version 2 exactly when some entry is a bundle member: one encoding per index.
        let bundles = packs
            .iter()
            .flat_map(|p: &PackBlobs| &p.blobs)
            .any(|e| e.bundled());
        if bundles != (version == VERSION_BUNDLES) {
            return Err(FormatError::malformed(
                "index",
                "bundle members and index version disagree",
            ));
        }
        Ok(IndexFile { supersedes, packs })
    }

    /// Seals the index file; in format 4 one that supersedes others carries an admin
    /// tag (§20), as only prune and repair, with a full key, replace index files.
    pub fn seal(&self, keys: &Keys) -> Vec<u8> {
        if self.supersedes.is_empty() {
            object::seal(keys, Kind::Index, &self.encode())
        } else {
            object::seal_admin(keys, Kind::Index, &self.encode())
        }
    }

    pub fn open(keys: &Keys, stored: &[u8]) -> Result<IndexFile> {
        let (body, authenticated) = object::open_authenticated(keys, Kind::Index, stored)?;
        let mut file = IndexFile::decode(&body)?;
        // A backup-role key's index file lists blobs like any other, but may not make
        // others' entries vanish: its `supersedes` is not believed.
        if !authenticated {
            file.supersedes.clear();
        }
        Ok(file)
    }

    /// [`IndexFile::open`] for bytes the caller gives up: decrypted where they lie.
    pub fn open_owned(keys: &Keys, stored: Vec<u8>) -> Result<IndexFile> {
        if keys.roles().is_some() {
            return IndexFile::open(keys, &stored);
        }
        IndexFile::decode(&object::open_owned(keys, Kind::Index, stored)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let idx = IndexFile {
            supersedes: vec![Id::random()],
            packs: vec![PackBlobs {
                pack: Id::random(),
                blobs: vec![BlobEntry {
                    blob_type: BlobType::Tree,
                    flags: 1,
                    id: Id::random(),
                    offset: 7,
                    length: 9,
                    raw_len: 11,
                    inner: 0,
                }],
            }],
        };
        let enc = idx.encode();
        assert_eq!(IndexFile::decode(&enc).unwrap(), idx);
        assert_eq!(enc[4], VERSION, "no bundles: version 1");
        // The same index as version 2 (its one blob's `inner` appended) is not canonical.
        let mut v2 = enc.clone();
        v2[4] = VERSION_BUNDLES;
        v2.extend_from_slice(&0u32.to_le_bytes());
        assert!(IndexFile::decode(&v2).is_err());
        for cut in 0..enc.len() {
            assert!(IndexFile::decode(&enc[..cut]).is_err());
        }
    }

    #[test]
    fn bundle_members_keep_their_inner_offsets() {
        let member = |inner| BlobEntry {
            blob_type: BlobType::Data,
            flags: crate::format::pack::FLAG_BUNDLE,
            id: Id::random(),
            offset: 0,
            length: 90,
            raw_len: 40,
            inner,
        };
        let idx = IndexFile {
            supersedes: Vec::new(),
            packs: vec![PackBlobs {
                pack: Id::random(),
                blobs: vec![member(0), member(40)],
            }],
        };
        let enc = idx.encode();
        assert_eq!(enc[4], VERSION_BUNDLES);
        assert_eq!(IndexFile::decode(&enc).unwrap(), idx);
    }
}
