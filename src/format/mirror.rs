//! Mirror definitions, forget records and export records: small sealed JSON objects, named by the hash of
//! their bytes like snapshots, and never rewritten.
//!
//! A mirror definition names one other backend that holds a copy of the repository; the
//! newest definition of a name wins, and one with `removed` ends the mirror. A forget
//! record lists snapshots that `forget` removed on purpose: sync deletes a snapshot from
//! a mirror only when an authentic record says so, so nobody who can merely delete files
//! on one backend can make sync delete them everywhere.

use serde::{Deserialize, Serialize};

use super::crypto::Keys;
use super::error::{FormatError, Result};
use super::id::Id;
use super::object::{self, Kind};

pub const MIRROR_VERSION: u32 = 1;
/// A protected mirror's definition: a version older vaults skip, so that none of them
/// carries deletions to a copy whose protection it does not know.
pub const MIRROR_VERSION_PROTECTED: u32 = 2;
pub const FORGET_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MirrorDef {
    pub version: u32,
    pub name: String,
    /// Location URL, without secrets (credentials come from the environment).
    pub url: String,
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// RFC 3339; the newest definition of a name wins.
    pub created: String,
    #[serde(default)]
    pub removed: bool,
    /// Protection period in seconds; 0: none. Sync deletes nothing on a protected copy;
    /// `vault maintain` deletes there only what was recorded gone this long ago.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub protect: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ForgetRecord {
    pub version: u32,
    pub time: String,
    pub snapshots: Vec<Id>,
}

/// One offline export: when, where to, which snapshots; `status` reports the newest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExportRecord {
    pub version: u32,
    pub time: String,
    pub label: String,
    pub destination: String,
    pub snapshots: Vec<Id>,
    #[serde(default)]
    pub image: bool,
}

pub const EXPORT_VERSION: u32 = 1;

impl ExportRecord {
    pub fn seal(&self, keys: &Keys) -> Vec<u8> {
        seal_json(keys, Kind::Export, self)
    }

    pub fn open(keys: &Keys, stored: &[u8]) -> Result<ExportRecord> {
        let r: ExportRecord = open_json(keys, Kind::Export, "export record", stored)?;
        check_version("export record", r.version, EXPORT_VERSION)?;
        Ok(r)
    }
}

pub(super) fn seal_json<T: Serialize>(keys: &Keys, kind: Kind, v: &T) -> Vec<u8> {
    object::seal(keys, kind, &serde_json::to_vec(v).expect("serializes"))
}

/// A record of a version this reader does not know is refused, not misread.
fn check_version(what: &'static str, version: u32, known: u32) -> Result<()> {
    if version == known {
        Ok(())
    } else {
        Err(FormatError::Version { what, version })
    }
}

pub(super) fn open_json<T: for<'de> Deserialize<'de>>(
    keys: &Keys,
    kind: Kind,
    what: &'static str,
    stored: &[u8],
) -> Result<T> {
    let body = object::open(keys, kind, stored)?;
    serde_json::from_slice(&body).map_err(|e| FormatError::malformed(what, e))
}

impl MirrorDef {
    pub fn seal(&self, keys: &Keys) -> Vec<u8> {
        seal_json(keys, Kind::Mirror, self)
    }

    /// What a host's trust binds to: the hash of the definition's content (name, URL,
    /// vendor, region, labels, time), so that a newer definition of the same name, which
    /// any key holder can write, is a different definition to trust.
    pub fn fingerprint(&self) -> Id {
        Id::of_stored(&serde_json::to_vec(self).expect("serializes"))
    }

    pub fn open(keys: &Keys, stored: &[u8]) -> Result<MirrorDef> {
        let d: MirrorDef = open_json(keys, Kind::Mirror, "mirror definition", stored)?;
        let known = if d.protect > 0 {
            MIRROR_VERSION_PROTECTED
        } else {
            MIRROR_VERSION
        };
        check_version("mirror definition", d.version, known)?;
        Ok(d)
    }

    /// The version a definition with this protection is written with.
    pub fn version_for(protect: u64) -> u32 {
        if protect > 0 {
            MIRROR_VERSION_PROTECTED
        } else {
            MIRROR_VERSION
        }
    }
}

impl ForgetRecord {
    pub fn seal(&self, keys: &Keys) -> Vec<u8> {
        seal_json(keys, Kind::Forget, self)
    }

    pub fn open(keys: &Keys, stored: &[u8]) -> Result<ForgetRecord> {
        let r: ForgetRecord = open_json(keys, Kind::Forget, "forget record", stored)?;
        check_version("forget record", r.version, FORGET_VERSION)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::crypto::MasterKey;

    #[test]
    fn round_trips_and_kinds_do_not_mix() {
        let keys = MasterKey::generate().derive();
        let d = MirrorDef {
            version: MIRROR_VERSION,
            name: "offsite".into(),
            url: "s3://b/v".into(),
            vendor: "wasabi".into(),
            region: "eu".into(),
            labels: vec![],
            created: "2026-11-21T00:00:00Z".into(),
            removed: false,
            protect: 0,
        };
        let sealed = d.seal(&keys);
        assert_eq!(MirrorDef::open(&keys, &sealed).unwrap(), d);
        assert!(ForgetRecord::open(&keys, &sealed).is_err());
        let f = ForgetRecord {
            version: FORGET_VERSION,
            time: "t".into(),
            snapshots: vec![Id::of_stored(b"s")],
        };
        assert_eq!(ForgetRecord::open(&keys, &f.seal(&keys)).unwrap(), f);
    }

    #[test]
    fn protection_takes_version_2_and_leaves_unprotected_bytes_alone() {
        let keys = MasterKey::generate().derive();
        let mut d = MirrorDef {
            version: MIRROR_VERSION,
            name: "b2".into(),
            url: "/x".into(),
            vendor: String::new(),
            region: String::new(),
            labels: vec![],
            created: "2026-11-21T00:00:00Z".into(),
            removed: false,
            protect: 0,
        };
        // Definitions written before protection existed keep their fingerprint.
        let json = serde_json::to_string(&d).unwrap();
        assert!(!json.contains("protect"), "{json}");
        d.protect = 30 * 86400;
        assert!(
            MirrorDef::open(&keys, &d.seal(&keys)).is_err(),
            "v1 with protect"
        );
        d.version = MirrorDef::version_for(d.protect);
        assert_eq!(MirrorDef::open(&keys, &d.seal(&keys)).unwrap(), d);
        d.protect = 0;
        assert!(
            MirrorDef::open(&keys, &d.seal(&keys)).is_err(),
            "v2 without"
        );
    }
}
