//! The master index: every blob the repository holds, loaded from all index files.

use std::collections::{HashMap, HashSet};

use anyhow::Result;

use super::backend::{Backend, FileKind};
use crate::format::Id;
use crate::format::crypto::Keys;
use crate::format::index::{IndexFile, PackBlobs};
use crate::format::manifest::Manifest;
use crate::format::pack::{self, BlobEntry, BlobType};

/// An index file sealed and ready to store: its id, its bytes, its manifest's bytes.
pub struct SealedIndex {
    pub id: Id,
    pub bytes: Vec<u8>,
    pub manifest: Vec<u8>,
}

pub fn seal_index(keys: &Keys, file: &IndexFile) -> SealedIndex {
    let bytes = file.seal(keys);
    let id = Id::of_stored(&bytes);
    let manifest = Manifest {
        index: (id, bytes.len() as u64),
        packs: file
            .packs
            .iter()
            .map(|p| (p.pack, pack::stored_size(&p.blobs)))
            .collect(),
    }
    .encode();
    SealedIndex {
        id,
        bytes,
        manifest,
    }
}

/// The index files that describe exactly `packs` (no supersedes), sealed.
pub fn seal_index_set(keys: &Keys, packs: Vec<PackBlobs>) -> Vec<SealedIndex> {
    chunk_index(packs)
        .into_iter()
        .map(|packs| {
            seal_index(
                keys,
                &IndexFile {
                    supersedes: Vec::new(),
                    packs,
                },
            )
        })
        .collect()
}

/// Writes an index file, then its manifest (a kill in between leaves an index without a
/// manifest, which audit reports as uncovered, never as missing).
pub fn save_index_file(backend: &Backend, keys: &Keys, file: &IndexFile) -> Result<Id> {
    let s = seal_index(keys, file);
    backend.write(&FileKind::Index.path(&s.id), s.bytes)?;
    backend.write(&FileKind::Manifest.path(&s.id), s.manifest)?;
    Ok(s.id)
}

/// Deletes an index file, its manifest first, so that a kill in between never leaves a
/// manifest promising packs that are about to go.
pub fn delete_index_file(backend: &Backend, id: &Id) -> Result<()> {
    let m = FileKind::Manifest.path(id);
    if let Err(e) = backend.delete(&m)
        && !super::backend::is_not_found(&e)
    {
        return Err(e);
    }
    backend.delete(&FileKind::Index.path(id))
}

/// Blobs per index file when a whole index is rewritten: keeps each file a few MiB.
const BLOBS_PER_INDEX: usize = 100_000;

/// Replaces the index files `old` by new ones listing exactly `packs`; returns how many
/// files were written and removed. Only the last new file supersedes the old ones, so
/// until it exists the old index still describes every pack, and a kill at any point
/// leaves a valid index. Old files (manifest first) and manifests whose index file was
/// lost earlier go last.
pub fn replace_index(
    backend: &Backend,
    keys: &Keys,
    packs: Vec<PackBlobs>,
    old: &[Id],
) -> Result<(u64, u64)> {
    let mut files = chunk_index(packs);
    if files.is_empty() && !old.is_empty() {
        files.push(Vec::new()); // an empty index file still has to supersede the old ones
    }
    let last = files.len().saturating_sub(1);
    let mut written = 0;
    for (i, packs) in files.into_iter().enumerate() {
        let supersedes = if i == last { old.to_vec() } else { Vec::new() };
        save_index_file(backend, keys, &IndexFile { supersedes, packs })?;
        written += 1;
    }
    for id in old {
        delete_index_file(backend, id)?;
    }
    let present: HashSet<Id> = backend.list(FileKind::Index)?.into_iter().collect();
    for m in backend.list(FileKind::Manifest)? {
        if !present.contains(&m) {
            backend.delete(&FileKind::Manifest.path(&m))?;
        }
    }
    Ok((written, old.len() as u64))
}

fn chunk_index(packs: Vec<PackBlobs>) -> Vec<Vec<PackBlobs>> {
    let mut files = vec![Vec::new()];
    let mut n = 0;
    for p in packs {
        if n > 0 && n + p.blobs.len() > BLOBS_PER_INDEX {
            files.push(Vec::new());
            n = 0;
        }
        n += p.blobs.len();
        files.last_mut().expect("one file").push(p);
    }
    files.retain(|f| !f.is_empty());
    files
}

/// Where a blob is, in 24 bytes (the id is the map key).
#[derive(Clone, Copy, Debug)]
pub struct Loc {
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
    pub inner: u32,
    pub blob_type: BlobType,
    pub flags: u8,
}

#[derive(Default)]
pub struct MasterIndex {
    packs: Vec<Id>,
    pack_ids: HashMap<Id, u32>,
    /// Per pack (by position in `packs`): its size and blob count as its index entry says.
    pack_info: Vec<(u64, u32)>,
    blobs: HashMap<Id, Loc>,
    /// Index files that contributed, and those superseded by others.
    pub files: Vec<Id>,
    /// Packs that no readable index file lists, known from their own headers.
    pub unindexed: Vec<PackBlobs>,
}

impl MasterIndex {
    pub fn add_file(&mut self, id: Id, file: &IndexFile) {
        self.files.push(id);
        for p in &file.packs {
            self.add_pack(p.pack, &p.blobs);
        }
    }

    pub fn add_pack(&mut self, pack: Id, blobs: &[BlobEntry]) {
        let next = self.packs.len() as u32;
        let pi = *self.pack_ids.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            self.pack_info
                .push((pack::stored_size(blobs), blobs.len() as u32));
            next
        });
        for b in blobs {
            self.blobs.entry(b.id).or_insert(Loc {
                pack: pi,
                offset: b.offset,
                length: b.length,
                raw_len: b.raw_len,
                inner: b.inner,
                blob_type: b.blob_type,
                flags: b.flags,
            });
        }
    }

    pub fn add_unindexed(&mut self, pack: Id, blobs: Vec<BlobEntry>) {
        self.add_pack(pack, &blobs);
        self.unindexed.push(PackBlobs { pack, blobs });
    }

    pub fn get(&self, id: &Id) -> Option<(Id, BlobEntry)> {
        let l = self.blobs.get(id)?;
        Some((
            self.packs[l.pack as usize],
            BlobEntry {
                blob_type: l.blob_type,
                flags: l.flags,
                id: *id,
                offset: l.offset,
                length: l.length,
                raw_len: l.raw_len,
                inner: l.inner,
            },
        ))
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn raw_len(&self, id: &Id) -> Option<u32> {
        self.blobs.get(id).map(|l| l.raw_len)
    }

    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    pub fn pack_ids(&self) -> HashSet<Id> {
        self.packs.iter().copied().collect()
    }

    /// Every indexed pack with its expected size and blob count.
    pub fn packs(&self) -> impl Iterator<Item = (Id, u64, u32)> + '_ {
        self.packs
            .iter()
            .zip(&self.pack_info)
            .map(|(id, (size, n))| (*id, *size, *n))
    }

    /// The blobs the index places in any of `packs`, in one pass over the index.
    pub fn blobs_in_packs(&self, packs: &HashSet<Id>) -> Vec<(Id, BlobEntry)> {
        let wanted: HashSet<u32> = packs
            .iter()
            .filter_map(|p| self.pack_ids.get(p).copied())
            .collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        self.blobs
            .iter()
            .filter(|(_, l)| wanted.contains(&l.pack))
            .filter_map(|(id, _)| self.get(id))
            .collect()
    }
}
