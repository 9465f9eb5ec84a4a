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

/// Blobs per index file when a whole index is rewritten, and at most (give or take a
/// pack) in one a backup writes: keeps each file a few MiB.
pub(crate) const BLOBS_PER_INDEX: usize = 100_000;

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

/// Every blob the repository holds, as one table sorted by id.
///
/// A hash map of the bench's 115 000 blobs took 15 MB (it had just doubled) and 20 ms of
/// hashing to build; the sorted table takes 56 bytes a blob and one sort. Blob ids are
/// keyed hashes, evenly spread, so the top bits of an id say where in the table it is:
/// `starts` holds the first position of each run of ids sharing their top bits, and a
/// lookup searches only that run (a handful of entries).
#[derive(Default)]
pub struct MasterIndex {
    packs: Vec<Id>,
    pack_ids: HashMap<Id, u32>,
    /// Per pack (by position in `packs`): its size and blob count as its index entry says.
    pack_info: Vec<(u64, u32)>,
    blobs: Vec<(Id, Loc)>,
    /// Data blobs known only to exist, by the first half of their ids, sorted (see
    /// [`IndexBuilder::data_ids_only`]).
    data_ids: Vec<[u8; 16]>,
    /// `starts[b]..starts[b + 1]`: the blobs whose ids' top `bits` bits are `b`.
    starts: Vec<u32>,
    bits: u32,
    /// Index files that contributed, and those superseded by others.
    pub files: Vec<Id>,
    /// Packs that no readable index file lists, known from their own headers.
    pub unindexed: Vec<PackBlobs>,
}

/// Collects index files and pack headers, then sorts them into a [`MasterIndex`].
#[derive(Default)]
pub struct IndexBuilder {
    mi: MasterIndex,
    keep: Keep,
    /// Per pack (by position): the tier it was added in; of a blob stored twice, the
    /// copy in the lowest tier is kept, then the one in the pack added first.
    tiers: Vec<u8>,
}

/// The tier of packs added without one: after every tier an index file's packs get.
const LAST_TIER: u8 = u8::MAX;

/// What a builder keeps of data blobs (trees are always kept with their places).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Keep {
    /// Every data blob, with its place.
    #[default]
    All,
    /// Only that each exists (see [`IndexBuilder::data_ids_only`]).
    Ids,
    /// None.
    Nothing,
    /// The places of those in the first `n` entries of the table, sorted, put there
    /// before any pack was added (see [`IndexBuilder::only`]).
    Wanted(usize),
}

/// The place of a wanted blob no pack has given yet.
const UNSET: u32 = u32::MAX;

impl IndexBuilder {
    /// A builder with room for `blobs` entries (the table's final size, if known, spares
    /// it growing by doubling).
    pub fn with_capacity(blobs: usize) -> IndexBuilder {
        let mut b = IndexBuilder::default();
        b.mi.blobs.reserve_exact(blobs);
        b
    }

    /// A builder that keeps of data blobs only that they exist, by the first 16 bytes of
    /// their ids: 16 bytes a blob instead of 56, for a backup, which never reads a data
    /// blob and only asks whether one is stored. Two blobs' keyed ids sharing 128 bits
    /// are as unlikely as a collision of the ids themselves is assumed to be. Trees keep
    /// their places, to be read.
    pub fn data_ids_only(blobs: usize) -> IndexBuilder {
        let mut b = IndexBuilder {
            keep: Keep::Ids,
            ..IndexBuilder::default()
        };
        b.mi.data_ids.reserve_exact(blobs);
        b
    }

    /// A builder that keeps trees only: enough to walk snapshots, to learn which data
    /// blobs a command will read (see [`IndexBuilder::only`]).
    pub fn trees_only(_blobs: usize) -> IndexBuilder {
        IndexBuilder {
            keep: Keep::Nothing,
            ..IndexBuilder::default()
        }
    }

    /// A builder that keeps the places of the data blobs in `wanted` only (and trees),
    /// for a command that knows what it will read: its memory follows what it reads, not
    /// the repository's size.
    pub fn only(mut wanted: Vec<Id>) -> IndexBuilder {
        wanted.sort_unstable();
        wanted.dedup();
        let unset = Loc {
            pack: UNSET,
            offset: 0,
            length: 0,
            raw_len: 0,
            inner: 0,
            blob_type: BlobType::Data,
            flags: 0,
        };
        let mut b = IndexBuilder {
            keep: Keep::Wanted(wanted.len()),
            ..IndexBuilder::default()
        };
        b.mi.blobs = wanted.into_iter().map(|id| (id, unset)).collect();
        b
    }

    /// This builder emptied for another pass over the index files: it keeps what it was
    /// made to keep, and nothing any pack gave.
    pub fn restart(self) -> IndexBuilder {
        let Keep::Wanted(n) = self.keep else {
            return IndexBuilder {
                keep: self.keep,
                ..IndexBuilder::default()
            };
        };
        let mut blobs = self.mi.blobs;
        blobs.truncate(n);
        for (_, l) in &mut blobs {
            l.pack = UNSET;
        }
        IndexBuilder {
            mi: MasterIndex {
                blobs,
                ..MasterIndex::default()
            },
            keep: self.keep,
            tiers: Vec::new(),
        }
    }

    /// Records that index file `id` contributed, its packs being added one by one.
    pub fn add_file_id(&mut self, id: Id) {
        self.mi.files.push(id);
    }

    pub fn add_file(&mut self, id: Id, file: &IndexFile) {
        self.mi.files.push(id);
        for p in &file.packs {
            self.add_pack(p.pack, &p.blobs);
        }
    }

    /// Adds a pack's blobs in the last tier: after every pack added with a tier.
    pub fn add_pack(&mut self, pack: Id, blobs: &[BlobEntry]) {
        self.add_pack_in(pack, blobs, LAST_TIER);
    }

    /// Adds a pack's blobs; of a blob stored twice, the copy in the lower `tier` is the
    /// one kept, so that index files may be added in any order.
    pub fn add_pack_in(&mut self, pack: Id, blobs: &[BlobEntry], tier: u8) {
        let mi = &mut self.mi;
        let next = mi.packs.len() as u32;
        let tiers = &mut self.tiers;
        let pi = *mi.pack_ids.entry(pack).or_insert_with(|| {
            mi.packs.push(pack);
            mi.pack_info
                .push((pack::stored_size(blobs), blobs.len() as u32));
            tiers.push(tier);
            next
        });
        let t = &mut self.tiers[pi as usize];
        *t = (*t).min(tier);
        for b in blobs {
            let loc = Loc {
                pack: pi,
                offset: b.offset,
                length: b.length,
                raw_len: b.raw_len,
                inner: b.inner,
                blob_type: b.blob_type,
                flags: b.flags,
            };
            match (self.keep, b.blob_type) {
                (Keep::All, _) | (_, BlobType::Tree) => mi.blobs.push((b.id, loc)),
                (Keep::Ids, BlobType::Data) => mi.data_ids.push(half(&b.id)),
                (Keep::Nothing, BlobType::Data) => {}
                (Keep::Wanted(n), BlobType::Data) => {
                    let Ok(i) = mi.blobs[..n].binary_search_by(|(x, _)| x.cmp(&b.id)) else {
                        continue;
                    };
                    let have = &mut mi.blobs[i].1;
                    // Packs get their positions in the order they are added, so of two
                    // in one tier the one added first is kept, as `finish` does.
                    let rank = |l: &Loc| (self.tiers[l.pack as usize], l.pack);
                    if have.pack == UNSET || rank(&loc) < rank(have) {
                        *have = loc;
                    }
                }
            }
        }
    }

    pub fn add_unindexed(&mut self, pack: Id, blobs: Vec<BlobEntry>) {
        self.add_pack(pack, &blobs);
        self.mi.unindexed.push(PackBlobs { pack, blobs });
    }

    pub fn pack_ids(&self) -> HashSet<Id> {
        self.mi.pack_ids()
    }

    /// The index files added so far.
    pub fn files(&self) -> &[Id] {
        &self.mi.files
    }

    pub fn finish(self) -> MasterIndex {
        let (mut mi, tiers) = (self.mi, self.tiers);
        mi.blobs.retain(|(_, l)| l.pack != UNSET);
        mi.data_ids.sort_unstable();
        mi.data_ids.dedup();
        mi.data_ids.shrink_to_fit();
        // Of a blob stored twice, the copy kept is in the lowest tier, then in the pack
        // added first.
        let rank = |l: &Loc| (tiers[l.pack as usize], l.pack);
        mi.blobs
            .sort_unstable_by(|a, b| a.0.cmp(&b.0).then(rank(&a.1).cmp(&rank(&b.1))));
        mi.blobs.dedup_by(|later, first| later.0 == first.0);
        mi.blobs.shrink_to_fit();
        // About four blobs a run: the table costs a byte a blob.
        mi.bits = (mi.blobs.len() / 4).max(1).ilog2().min(24);
        mi.starts = vec![0; (1 << mi.bits) + 1];
        for (id, _) in &mi.blobs {
            mi.starts[top_bits(id, mi.bits) + 1] += 1;
        }
        for b in 1..mi.starts.len() {
            mi.starts[b] += mi.starts[b - 1];
        }
        mi
    }
}

fn half(id: &Id) -> [u8; 16] {
    let mut h = [0; 16];
    h.copy_from_slice(&id.0[..16]);
    h
}

fn top_bits(id: &Id, bits: u32) -> usize {
    let head = u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]);
    (u64::from(head) >> (32 - bits)) as usize
}

impl MasterIndex {
    fn loc(&self, id: &Id) -> Option<&Loc> {
        if self.blobs.is_empty() {
            return None;
        }
        let b = top_bits(id, self.bits);
        let run = &self.blobs[self.starts[b] as usize..self.starts[b + 1] as usize];
        let i = run.binary_search_by(|(x, _)| x.cmp(id)).ok()?;
        Some(&run[i].1)
    }

    /// Where a blob is; None for a data blob in an index built with
    /// [`IndexBuilder::data_ids_only`].
    pub fn get(&self, id: &Id) -> Option<(Id, BlobEntry)> {
        let l = self.loc(id)?;
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
        self.loc(id).is_some() || self.data_ids.binary_search(&half(id)).is_ok()
    }

    /// How many data blobs and trees the index knows the places of.
    pub fn placed(&self) -> (usize, usize) {
        let trees = self
            .blobs
            .iter()
            .filter(|(_, l)| l.blob_type == BlobType::Tree)
            .count();
        (self.blobs.len() - trees, trees)
    }

    pub fn raw_len(&self, id: &Id) -> Option<u32> {
        self.loc(id).map(|l| l.raw_len)
    }

    pub fn len(&self) -> usize {
        self.blobs.len() + self.data_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: Id, offset: u32) -> BlobEntry {
        BlobEntry {
            blob_type: BlobType::Data,
            flags: 0,
            id,
            offset,
            length: 10,
            raw_len: 7,
            inner: 0,
        }
    }

    fn file(packs: Vec<(Id, Vec<BlobEntry>)>) -> IndexFile {
        IndexFile {
            supersedes: Vec::new(),
            packs: packs
                .into_iter()
                .map(|(pack, blobs)| PackBlobs { pack, blobs })
                .collect(),
        }
    }

    #[test]
    fn finds_every_blob_and_nothing_else() {
        for n in [0usize, 1, 3, 8, 100, 5000] {
            let ids: Vec<Id> = (0..n).map(|_| Id::random()).collect();
            let (p1, p2) = (Id::random(), Id::random());
            let half = n / 2;
            let mut b = IndexBuilder::default();
            b.add_file(
                Id::random(),
                &file(vec![
                    (p1, ids[..half].iter().map(|id| entry(*id, 1)).collect()),
                    (p2, ids[half..].iter().map(|id| entry(*id, 2)).collect()),
                ]),
            );
            let mi = b.finish();
            assert_eq!(mi.len(), n);
            for (i, id) in ids.iter().enumerate() {
                let (pack, e) = mi.get(id).expect("indexed blob found");
                assert_eq!(pack, if i < half { p1 } else { p2 });
                assert_eq!((e.id, e.raw_len), (*id, 7));
            }
            for _ in 0..100 {
                assert!(!mi.contains(&Id::random()));
            }
            // Ids at the edges of the id space, where the lookup table starts and ends.
            assert!(!mi.contains(&Id([0; 32])) && !mi.contains(&Id([0xff; 32])));
        }
    }

    #[test]
    fn a_blob_stored_twice_is_found_in_the_pack_added_first() {
        let id = Id::random();
        let (p1, p2) = (Id::random(), Id::random());
        let mut b = IndexBuilder::default();
        b.add_file(Id::random(), &file(vec![(p1, vec![entry(id, 5)])]));
        b.add_unindexed(p2, vec![entry(id, 9)]);
        let mi = b.finish();
        assert_eq!(mi.len(), 1);
        let (pack, e) = mi.get(&id).unwrap();
        assert_eq!((pack, e.offset), (p1, 5));
        assert_eq!(mi.unindexed.len(), 1);
        assert_eq!(mi.packs().count(), 2);
    }

    #[test]
    fn a_backup_index_knows_data_blobs_exist_and_where_trees_are() {
        let data: Vec<Id> = (0..500).map(|_| Id::random()).collect();
        let trees: Vec<Id> = (0..20).map(|_| Id::random()).collect();
        let (p1, p2) = (Id::random(), Id::random());
        let tree_entries = trees.iter().map(|id| BlobEntry {
            blob_type: BlobType::Tree,
            ..entry(*id, 3)
        });
        let mut b = IndexBuilder::data_ids_only(data.len());
        b.add_file(
            Id::random(),
            &file(vec![
                (p1, data.iter().map(|id| entry(*id, 1)).collect()),
                (p2, tree_entries.collect()),
            ]),
        );
        // Stored twice: counted once.
        b.add_unindexed(Id::random(), vec![entry(data[0], 4)]);
        let mi = b.finish();
        assert_eq!(mi.len(), data.len() + trees.len());
        for id in &data {
            assert!(mi.contains(id));
            assert!(mi.get(id).is_none(), "a data blob's place is not kept");
        }
        for id in &trees {
            assert_eq!(mi.get(id).expect("a tree is found").0, p2);
        }
        for _ in 0..100 {
            assert!(!mi.contains(&Id::random()));
        }
        assert_eq!(mi.packs().count(), 3);
    }

    #[test]
    fn an_index_of_wanted_blobs_places_those_and_every_tree_and_nothing_else() {
        let data: Vec<Id> = (0..300).map(|_| Id::random()).collect();
        let tree = Id::random();
        let tree_entry = BlobEntry {
            blob_type: BlobType::Tree,
            ..entry(tree, 3)
        };
        let (p1, p2) = (Id::random(), Id::random());
        let absent = Id::random();
        let mut wanted: Vec<Id> = data.iter().step_by(7).copied().collect();
        wanted.push(absent);
        wanted.push(data[0]); // named twice
        let mut b = IndexBuilder::only(wanted);
        let listing = file(vec![
            (p1, data[..150].iter().map(|id| entry(*id, 1)).collect()),
            (p2, data[150..].iter().map(|id| entry(*id, 2)).collect()),
        ]);
        b.add_file(Id::random(), &listing);
        b.add_pack(p2, &[tree_entry]);
        // A pass read again (a superseded file was met): what it gave is forgotten.
        let mut b = b.restart();
        assert!(b.files().is_empty());
        b.add_file(Id::random(), &listing);
        b.add_pack(p2, &[tree_entry]);
        let mi = b.finish();
        for (i, id) in data.iter().enumerate() {
            let found = mi.get(id);
            assert_eq!(found.is_some(), i % 7 == 0, "blob {i}");
            if let Some((pack, e)) = found {
                assert_eq!((pack, e.offset), if i < 150 { (p1, 1) } else { (p2, 2) });
            }
        }
        assert!(!mi.contains(&absent));
        assert_eq!(mi.get(&tree).map(|(p, _)| p), Some(p2));
        assert_eq!(mi.placed(), (data.len().div_ceil(7), 1));
    }

    #[test]
    fn of_a_blob_stored_twice_the_lower_tier_wins_whatever_was_added_first() {
        let id = Id::random();
        let (marked, in_force) = (Id::random(), Id::random());
        for wanted in [None, Some(vec![id])] {
            let mut b = match &wanted {
                None => IndexBuilder::default(),
                Some(w) => IndexBuilder::only(w.clone()),
            };
            b.add_pack_in(marked, &[entry(id, 5)], 1);
            b.add_pack_in(in_force, &[entry(id, 9)], 0);
            let (pack, e) = b.finish().get(&id).unwrap();
            assert_eq!((pack, e.offset), (in_force, 9), "wanted: {wanted:?}");
        }
    }
}
