//! The records of two-phase prune (repository version 3) and of format versions. All are
//! small sealed JSON objects named by the hash of their bytes, written once and never
//! rewritten, so that every writer stays create-only:
//!
//! * a **mark** lists packs one prune found unused; a later prune deletes them once the
//!   grace period has passed since the mark, if they are still unused and not revived;
//! * a **revival** names (mark, pack) pairs that a backup (or prune) relies on again: that
//!   mark no longer counts for those packs;
//! * a **deletion** lists packs a prune is about to delete. It is written before the prune
//!   looks one last time for snapshots and revivals, and a backup looks for deletions after
//!   it wrote its revivals and its snapshot: one of the two always sees the other;
//! * a **format record** raises the repository's format version (`vault upgrade`): the
//!   config is written once, so a version reached later is recorded beside it.

use serde::{Deserialize, Serialize};

use super::crypto::Keys;
use super::error::{FormatError, Result};
use super::id::Id;
use super::mirror::{open_json, seal_json};
use super::object::Kind;

pub const RECORD_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MarkRecord {
    pub version: u32,
    /// RFC 3339, the writer's clock; ages are measured on the storage's clock where it
    /// reports one (§17).
    pub time: String,
    pub packs: Vec<Id>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Revived {
    pub mark: Id,
    pub packs: Vec<Id>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RevivalRecord {
    pub version: u32,
    pub time: String,
    pub revived: Vec<Revived>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DeletionRecord {
    pub version: u32,
    pub time: String,
    pub packs: Vec<Id>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FormatRecord {
    /// The repository format version this record raises the repository to.
    pub version: u32,
    pub time: String,
    #[serde(default)]
    pub features: Vec<String>,
}

fn known(what: &'static str, version: u32) -> Result<()> {
    if version == RECORD_VERSION {
        Ok(())
    } else {
        Err(FormatError::Version { what, version })
    }
}

macro_rules! record {
    ($t:ty, $kind:expr, $what:literal) => {
        impl $t {
            pub fn seal(&self, keys: &Keys) -> Vec<u8> {
                seal_json(keys, $kind, self)
            }

            pub fn open(keys: &Keys, stored: &[u8]) -> Result<$t> {
                let r: $t = open_json(keys, $kind, $what, stored)?;
                known($what, r.version)?;
                Ok(r)
            }
        }
    };
}

record!(MarkRecord, Kind::Mark, "mark record");
record!(RevivalRecord, Kind::Revival, "revival record");
record!(DeletionRecord, Kind::Deletion, "deletion record");

impl FormatRecord {
    pub fn seal(&self, keys: &Keys) -> Vec<u8> {
        seal_json(keys, Kind::Format, self)
    }

    /// Any version opens: a reader compares it with the versions it knows.
    pub fn open(keys: &Keys, stored: &[u8]) -> Result<FormatRecord> {
        open_json(keys, Kind::Format, "format record", stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::crypto::MasterKey;

    #[test]
    fn records_round_trip_and_kinds_do_not_mix() {
        let keys = MasterKey::generate().derive();
        let m = MarkRecord {
            version: RECORD_VERSION,
            time: "2026-12-03T00:00:00Z".into(),
            packs: vec![Id([1; 32])],
        };
        let sealed = m.seal(&keys);
        assert_eq!(MarkRecord::open(&keys, &sealed).unwrap(), m);
        assert!(DeletionRecord::open(&keys, &sealed).is_err());
        assert!(RevivalRecord::open(&keys, &sealed).is_err());
        let d = DeletionRecord {
            version: RECORD_VERSION,
            time: m.time.clone(),
            packs: m.packs.clone(),
        };
        assert!(MarkRecord::open(&keys, &d.seal(&keys)).is_err());
        let later = MarkRecord { version: 2, ..m };
        assert!(matches!(
            MarkRecord::open(&keys, &later.seal(&keys)),
            Err(FormatError::Version { .. })
        ));
        let f = FormatRecord {
            version: 9,
            time: "t".into(),
            features: vec![],
        };
        assert_eq!(
            FormatRecord::open(&keys, &f.seal(&keys)).unwrap().version,
            9
        );
    }
}
