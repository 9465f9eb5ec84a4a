//! Lock objects: who holds the repository, and how. A holder never rewrites one: each
//! refresh is a new object with a higher `seq` (spec §15).

use serde::{Deserialize, Serialize};

use super::crypto::Keys;
use super::error::{FormatError, Result};
use super::object::{self, Kind};

/// What a lock excludes. Exclusive conflicts with every lock, Prune with Prune and
/// Exclusive, Shared with Exclusive only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Prune,
    Exclusive,
}

impl LockKind {
    pub fn name(self) -> &'static str {
        match self {
            LockKind::Shared => "shared",
            LockKind::Prune => "prune",
            LockKind::Exclusive => "exclusive",
        }
    }

    /// Stored `kind`; None for a name this version does not know.
    fn parse(s: &str) -> Option<LockKind> {
        match s {
            "shared" => Some(LockKind::Shared),
            "prune" => Some(LockKind::Prune),
            "exclusive" => Some(LockKind::Exclusive),
            _ => None,
        }
    }

    pub fn conflicts_with(self, other: LockKind) -> bool {
        use LockKind::*;
        match (self, other) {
            (Exclusive, _) | (_, Exclusive) => true,
            (Prune, Prune) => true,
            (Shared, _) | (_, Shared) => false,
        }
    }
}

/// The `kind` of a holder's last object on storage that refuses deletes: the holder
/// let go (spec §15). Vaults that do not know it read it as exclusive (an unknown
/// kind), and those that know no `kind` by `exclusive`, which it sets: both keep out of
/// its way, the safe direction, until `vault unlock` or maintenance removes it.
pub const RELEASED: &str = "released";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub host: String,
    pub pid: u32,
    pub user: String,
    /// When this object was written, RFC 3339 UTC, by the holder's clock: for people
    /// only, never compared with another clock.
    pub time: String,
    /// True for prune and exclusive locks, so that a vault that knows no `kind` keeps
    /// out of their way.
    pub exclusive: bool,
    pub command: String,
    /// `shared`, `prune` or `exclusive`; absent in locks of older vaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// 128 random bits in hex, drawn once per process; absent in locks of older vaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// The holder machine's /proc/sys/kernel/random/boot_id ("" when unknown).
    #[serde(default)]
    pub boot_id: String,
    /// The holder's PID namespace, as readlink /proc/self/ns/pid ("" when unknown).
    #[serde(default)]
    pub pid_ns: String,
    /// When the holder took the lock, RFC 3339 UTC by its clock (for people only).
    #[serde(default)]
    pub started: String,
    /// Refresh counter: the holder's newest object has the highest.
    #[serde(default)]
    pub seq: u64,
}

impl Lock {
    /// What the lock excludes: an unknown `kind` counts as exclusive, a missing one
    /// follows `exclusive`.
    pub fn kind(&self) -> LockKind {
        match &self.kind {
            Some(k) => LockKind::parse(k).unwrap_or(LockKind::Exclusive),
            None if self.exclusive => LockKind::Exclusive,
            None => LockKind::Shared,
        }
    }

    /// Whether this object says its holder let go.
    pub fn is_released(&self) -> bool {
        self.kind.as_deref() == Some(RELEASED)
    }

    /// The object that says the holder of `self` let go: its `seq` is the caller's.
    pub fn released(&self) -> Lock {
        Lock {
            kind: Some(RELEASED.to_string()),
            exclusive: true,
            ..self.clone()
        }
    }

    pub fn seal(&self, keys: &Keys) -> Vec<u8> {
        object::seal_checksummed(
            keys,
            Kind::Lock,
            &serde_json::to_vec(self).expect("lock serializes"),
        )
    }

    pub fn open(keys: &Keys, stored: &[u8]) -> Result<Lock> {
        let body = object::open_checksummed(keys, Kind::Lock, stored)?;
        serde_json::from_slice(&body).map_err(|e| FormatError::malformed("lock", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_conflict_as_specified() {
        use LockKind::*;
        let all = [Shared, Prune, Exclusive];
        for a in all {
            for b in all {
                let want = a == Exclusive || b == Exclusive || (a == Prune && b == Prune);
                assert_eq!(a.conflicts_with(b), want, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn older_and_newer_locks_parse() {
        let old =
            r#"{"host":"h","pid":1,"user":"u","time":"t","exclusive":true,"command":"prune"}"#;
        let l: Lock = serde_json::from_str(old).unwrap();
        assert_eq!(
            (l.kind(), l.process.as_deref(), l.seq),
            (LockKind::Exclusive, None, 0)
        );
        let shared = old.replace("true", "false");
        let l: Lock = serde_json::from_str(&shared).unwrap();
        assert_eq!(l.kind(), LockKind::Shared);
        let newer = old.replace("}", r#","kind":"maintenance","process":"ab"}"#);
        let l: Lock = serde_json::from_str(&newer).unwrap();
        assert_eq!(
            l.kind(),
            LockKind::Exclusive,
            "an unknown kind excludes everything"
        );
        // A released holder, as a vault that knows no "released" (or no kind) reads it.
        let shared: Lock = serde_json::from_str(&shared).unwrap();
        let released = shared.released();
        assert!(released.is_released() && !shared.is_released());
        let json = serde_json::to_string(&released).unwrap();
        let mut older: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            serde_json::from_value::<Lock>(older.clone())
                .unwrap()
                .kind(),
            LockKind::Exclusive
        );
        older.as_object_mut().unwrap().remove("kind");
        assert_eq!(
            serde_json::from_value::<Lock>(older).unwrap().kind(),
            LockKind::Exclusive
        );
    }
}
