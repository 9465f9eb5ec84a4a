//! `vault stats`: how much the snapshots hold, and what that takes in the repository.
//! Only trees (through the tree cache) and the index are read, never file data.
//!
//! - restore size: the bytes of every regular file of every snapshot, as a restore
//!   writes them (a file in two snapshots counts twice; symlinks, directories and
//!   special files count nothing).
//! - raw data: the distinct blobs (file chunks and trees) the snapshots reference, their
//!   plaintext bytes and what they take in packs, once each.
//! - per snapshot: each snapshot's restore size, and the blobs no other selected
//!   snapshot references (what forgetting it alone would free, before prune).

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use serde::Serialize;

use crate::format::Id;
use crate::format::snapshot::Snapshot;
use crate::format::tree::NodeType;
use crate::repo::{FileKind, Repository};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    RestoreSize,
    RawData,
    PerSnapshot,
}

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub mode: Mode,
    pub snapshots: u64,
    /// Regular files, counted in every snapshot that holds them.
    pub files: u64,
    /// Their bytes: what restoring every selected snapshot writes.
    pub restore_size: u64,
    /// Raw-data and per-snapshot modes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_data: Option<RawData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_snapshot: Option<Vec<PerSnapshot>>,
    pub repository: RepositoryTotals,
}

#[derive(Debug, Default, Serialize)]
pub struct RawData {
    /// Distinct blobs referenced: file chunks and trees.
    pub blobs: u64,
    pub data_blobs: u64,
    pub tree_blobs: u64,
    /// Their plaintext bytes (after decompression).
    pub raw_bytes: u64,
    /// What they take in packs, compressed and encrypted (a bundle of small blobs counted
    /// once).
    pub stored_bytes: u64,
    /// raw_bytes / stored_bytes.
    pub compression_ratio: f64,
    /// restore_size / plaintext bytes of the data blobs: how much deduplication saves.
    pub dedup_ratio: f64,
    /// Referenced blobs the index does not list (`vault check` says more).
    pub missing_blobs: u64,
}

#[derive(Debug, Serialize)]
pub struct PerSnapshot {
    pub id: Id,
    pub time: String,
    pub files: u64,
    pub restore_size: u64,
    /// Blobs no other selected snapshot references, and their plaintext bytes.
    pub unique_blobs: u64,
    pub unique_raw_bytes: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct RepositoryTotals {
    /// Pack files stored, and their bytes.
    pub packs: u64,
    pub pack_bytes: u64,
    /// Blobs the index lists.
    pub blobs: u64,
}

/// Which snapshots reference a blob: one (by position), or several.
#[derive(Clone, Copy, PartialEq)]
enum Owner {
    One(usize),
    Many,
}

pub fn stats(repo: &Repository, snaps: &[(Id, Snapshot)], mode: Mode) -> Result<Stats> {
    let mut st = Stats {
        mode,
        snapshots: snaps.len() as u64,
        ..Default::default()
    };
    let mut sizes = Sizes::default();
    let mut per = Vec::new();
    for (id, s) in snaps {
        let (files, bytes) = sizes.of(repo, s.tree)?;
        st.files += files;
        st.restore_size += bytes;
        per.push(PerSnapshot {
            id: *id,
            time: s.time.clone(),
            files,
            restore_size: bytes,
            unique_blobs: 0,
            unique_raw_bytes: 0,
        });
    }
    if mode != Mode::RestoreSize {
        let mut owners: HashMap<Id, Owner> = HashMap::new();
        let mut data: HashSet<Id> = HashSet::new();
        for (i, (_, s)) in snaps.iter().enumerate() {
            for (blob, is_data) in referenced(repo, s.tree)? {
                if is_data {
                    data.insert(blob);
                }
                owners
                    .entry(blob)
                    .and_modify(|o| {
                        if *o != Owner::One(i) {
                            *o = Owner::Many
                        }
                    })
                    .or_insert(Owner::One(i));
            }
        }
        let index = repo.index();
        let mut raw = RawData::default();
        let mut units: HashSet<(Id, u32)> = HashSet::new();
        let mut data_raw = 0u64;
        for (blob, owner) in &owners {
            let Some((pack, e)) = index.get(blob) else {
                raw.missing_blobs += 1;
                continue;
            };
            raw.blobs += 1;
            raw.raw_bytes += u64::from(e.raw_len);
            if data.contains(blob) {
                raw.data_blobs += 1;
                data_raw += u64::from(e.raw_len);
            } else {
                raw.tree_blobs += 1;
            }
            if units.insert((pack, e.offset)) {
                raw.stored_bytes += u64::from(e.length);
            }
            if let Owner::One(i) = owner {
                per[*i].unique_blobs += 1;
                per[*i].unique_raw_bytes += u64::from(e.raw_len);
            }
        }
        raw.compression_ratio = ratio(raw.raw_bytes, raw.stored_bytes);
        raw.dedup_ratio = ratio(st.restore_size, data_raw);
        st.raw_data = Some(raw);
    }
    if mode == Mode::PerSnapshot {
        st.per_snapshot = Some(per);
    }
    let packs = repo.backend.list_sized(FileKind::Data)?;
    st.repository = RepositoryTotals {
        packs: packs.len() as u64,
        pack_bytes: packs.iter().map(|(_, n)| n).sum(),
        blobs: repo.index().len() as u64,
    };
    Ok(st)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Every blob under `root` (trees included), each once, with whether it is file data.
fn referenced(repo: &Repository, root: Id) -> Result<Vec<(Id, bool)>> {
    let mut seen: HashSet<Id> = HashSet::new();
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(t) = todo.pop() {
        if !seen.insert(t) {
            continue;
        }
        out.push((t, false));
        for n in repo.load_tree(&t)?.nodes {
            if let Some(sub) = n.subtree {
                todo.push(sub);
            }
            for c in n.content {
                if seen.insert(c) {
                    out.push((c, true));
                }
            }
        }
    }
    Ok(out)
}

/// (files, bytes) below each tree, each tree read once however many snapshots and
/// directories share it.
#[derive(Default)]
pub(crate) struct Sizes {
    done: HashMap<Id, (u64, u64)>,
}

impl Sizes {
    pub(crate) fn of(&mut self, repo: &Repository, root: Id) -> Result<(u64, u64)> {
        // Depth first without recursion (trees may be deep): a tree's own files and its
        // subtrees on the way down, its totals on the way back up, once its subtrees have
        // theirs.
        let mut open: HashMap<Id, ((u64, u64), Vec<Id>)> = HashMap::new();
        let mut stack = vec![(root, false)];
        while let Some((t, up)) = stack.pop() {
            if up {
                if let Some(((files, bytes), subs)) = open.remove(&t) {
                    let (mut f, mut b) = (files, bytes);
                    for s in subs {
                        let (sf, sb) = self.done.get(&s).copied().unwrap_or_default();
                        f += sf;
                        b += sb;
                    }
                    self.done.insert(t, (f, b));
                }
                continue;
            }
            if self.done.contains_key(&t) || open.contains_key(&t) {
                continue;
            }
            let tree = repo.load_tree(&t)?;
            let (mut files, mut bytes, mut subs) = (0, 0, Vec::new());
            for n in &tree.nodes {
                match n.kind {
                    NodeType::File => {
                        files += 1;
                        bytes += n.size;
                    }
                    NodeType::Dir => subs.extend(n.subtree),
                    _ => {}
                }
            }
            stack.push((t, true));
            stack.extend(subs.iter().map(|s| (*s, false)));
            open.insert(t, ((files, bytes), subs));
        }
        Ok(self.done.get(&root).copied().unwrap_or_default())
    }
}
