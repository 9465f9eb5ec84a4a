//! The master index: every blob the repository holds, loaded from all index files.

use std::collections::{HashMap, HashSet};

use crate::format::Id;
use crate::format::index::IndexFile;
use crate::format::pack::{BlobEntry, BlobType};

/// Where a blob is, in 20 bytes (the id is the map key).
#[derive(Clone, Copy, Debug)]
pub struct Loc {
    pub pack: u32,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
    pub blob_type: BlobType,
    pub flags: u8,
}

#[derive(Default)]
pub struct MasterIndex {
    packs: Vec<Id>,
    pack_ids: HashMap<Id, u32>,
    blobs: HashMap<Id, Loc>,
    /// Index files that contributed, and those superseded by others.
    pub files: Vec<Id>,
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
            next
        });
        for b in blobs {
            self.blobs.entry(b.id).or_insert(Loc {
                pack: pi,
                offset: b.offset,
                length: b.length,
                raw_len: b.raw_len,
                blob_type: b.blob_type,
                flags: b.flags,
            });
        }
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
}
