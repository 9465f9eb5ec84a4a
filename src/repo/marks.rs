//! Two-phase prune's state as the repository records it (spec §12a, §17 "Prune"), and the
//! repository's format version (config and format records, §18).
//!
//! A pack is *marked* while some mark record names it and no revival names that (mark,
//! pack) pair; it is *being deleted* once a deletion record names it. Everything here is
//! read from create-only records, so any number of hosts can write beside each other.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Result, anyhow};

use super::backend::{Backend, FileKind, is_not_found, is_storage_error};
use super::repository::{Named, Repository, now_rfc3339};
use crate::format::Id;
use crate::format::config::{NEWEST_VERSION, REPO_VERSION};
use crate::format::crypto::Keys;
use crate::format::prune::{
    DeletionRecord, FormatRecord, MarkRecord, RECORD_VERSION, RevivalRecord, Revived,
};

/// The first format version whose prune is two-phase.
pub const TWO_PHASE_VERSION: u32 = 3;

#[derive(Default, Clone, Debug)]
pub struct PruneState {
    pub marks: BTreeMap<Id, MarkRecord>,
    pub revivals: BTreeMap<Id, RevivalRecord>,
    pub deletions: BTreeMap<Id, DeletionRecord>,
}

impl PruneState {
    /// The (mark, pack) pairs some revival names.
    pub fn revived(&self) -> HashSet<(Id, Id)> {
        self.revivals
            .values()
            .flat_map(|r| &r.revived)
            .flat_map(|r| r.packs.iter().map(|p| (r.mark, *p)))
            .collect()
    }

    /// Every marked pack with the marks in force on it.
    pub fn marked(&self) -> HashMap<Id, Vec<Id>> {
        let revived = self.revived();
        let mut out: HashMap<Id, Vec<Id>> = HashMap::new();
        for (mark, rec) in &self.marks {
            for p in &rec.packs {
                if !revived.contains(&(*mark, *p)) {
                    out.entry(*p).or_default().push(*mark);
                }
            }
        }
        out
    }

    /// Every pack a deletion record names: gone, or about to go.
    pub fn deleting(&self) -> HashSet<Id> {
        self.deletions
            .values()
            .flat_map(|d| d.packs.iter().copied())
            .collect()
    }
}

const MARK: Named = Named {
    kind: FileKind::Mark,
    cache: "marks",
    what: "mark record",
};
const REVIVAL: Named = Named {
    kind: FileKind::Revival,
    cache: "revivals",
    what: "revival record",
};
const DELETION: Named = Named {
    kind: FileKind::Deletion,
    cache: "deletions",
    what: "deletion record",
};

impl Repository {
    /// Whether this repository's prune is two-phase (format 3 or later).
    pub fn two_phase(&self) -> bool {
        self.format >= TWO_PHASE_VERSION
    }

    /// The marks, revivals and deletions on record (none before format 3).
    pub fn prune_state(&self) -> Result<PruneState> {
        if !self.two_phase() {
            return Ok(PruneState::default());
        }
        Ok(PruneState {
            marks: self.records(MARK, MarkRecord::open)?,
            revivals: self.records(REVIVAL, RevivalRecord::open)?,
            deletions: self.records(DELETION, DeletionRecord::open)?,
        })
    }

    /// Only the deletion records: what a backup looks at after it wrote its snapshot.
    pub fn deletion_records(&self) -> Result<BTreeMap<Id, DeletionRecord>> {
        self.records(DELETION, DeletionRecord::open)
    }

    /// Every record of one kind that opens. A damaged one is skipped (check reports it);
    /// one the storage would not hand over fails the call, since what it says is unknown.
    fn records<T>(
        &self,
        named: Named,
        open: fn(&Keys, &[u8]) -> crate::format::error::Result<T>,
    ) -> Result<BTreeMap<Id, T>> {
        let mut out = BTreeMap::new();
        for (id, size) in self.backend.list_sized(named.kind)? {
            match self.open_named(named, &id, Some(size), |b| open(&self.keys, &b)) {
                Ok(r) => {
                    out.insert(id, r);
                }
                Err(e) if is_not_found(&e) => {} // deleted since the listing
                Err(e) if is_storage_error(&e) => {
                    return Err(e.context(format!("reading {} {}", named.what, id.short())));
                }
                Err(e) => log::warn!("{} skipped: {}", named.what, crate::error::one_line(&e)),
            }
        }
        Ok(out)
    }

    pub fn save_mark(&self, packs: Vec<Id>) -> Result<Id> {
        let r = MarkRecord {
            version: RECORD_VERSION,
            time: now_rfc3339(),
            packs,
        };
        self.save_sealed(FileKind::Mark, r.seal(&self.keys))
    }

    pub fn save_revival(&self, revived: Vec<Revived>) -> Result<Id> {
        let r = RevivalRecord {
            version: RECORD_VERSION,
            time: now_rfc3339(),
            revived,
        };
        self.save_sealed(FileKind::Revival, r.seal(&self.keys))
    }

    pub fn save_deletion(&self, packs: Vec<Id>) -> Result<Id> {
        let r = DeletionRecord {
            version: RECORD_VERSION,
            time: now_rfc3339(),
            packs,
        };
        self.save_sealed(FileKind::Deletion, r.seal(&self.keys))
    }

    /// Raises the repository to this vault's format version with a format record;
    /// returns the version it had, or None when it was already there.
    pub fn upgrade(&mut self) -> Result<Option<u32>> {
        if self.format >= REPO_VERSION {
            return Ok(None);
        }
        self.backend.create_layout()?;
        let r = FormatRecord {
            version: REPO_VERSION,
            time: now_rfc3339(),
            features: vec!["two-phase-prune".into()],
        };
        self.save_sealed(FileKind::Format, r.seal(&self.keys))?;
        let old = self.format;
        self.format = REPO_VERSION;
        Ok(Some(old))
    }
}

/// The repository's format version: the config's, raised by the highest format record
/// that opens. A version this vault does not know refuses the repository rather than
/// have it misread or pruned by the rules of an older format.
pub(super) fn format_version(backend: &Backend, keys: &Keys, config_version: u32) -> Result<u32> {
    let mut version = config_version;
    for id in backend.list(FileKind::Format)? {
        let bytes = match backend.read(&FileKind::Format.path(&id)) {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e.context(format!("reading format record {}", id.short()))),
        };
        if Id::of_stored(&bytes) != id {
            continue; // damaged or misnamed: audit and check report it
        }
        if let Ok(r) = FormatRecord::open(keys, &bytes) {
            version = version.max(r.version);
        }
    }
    if version > NEWEST_VERSION {
        return Err(anyhow!(
            "repository format {version} is newer than this vault knows ({NEWEST_VERSION}): use a newer vault"
        ));
    }
    Ok(version)
}
