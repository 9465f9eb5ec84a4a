//! The snapshots a mount shows, each under a name made of its local time.

use std::collections::HashMap;

use jiff::Timestamp;

use crate::format::Id;
use crate::format::snapshot::Snapshot;

/// One snapshot with the name it has in `snapshots/`, `hosts/NAME/snapshots/` and
/// `tags/TAG/`.
pub struct Entry {
    pub id: Id,
    pub snap: Snapshot,
    pub time: Timestamp,
    pub name: String,
}

/// The readable snapshots, oldest first.
pub struct Catalog {
    pub entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

/// Local wall-clock time to the second, as a file name (no `/`, no time zone).
pub fn time_name(t: Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

impl Catalog {
    /// `snaps` oldest first. The first snapshot of a second is named by the second alone;
    /// any later one of the same second gets its short id after a space, so names stay
    /// put as snapshots are added (a new one is never older than those listed).
    pub fn new(snaps: Vec<(Id, Snapshot)>) -> Catalog {
        let mut entries = Vec::with_capacity(snaps.len());
        let mut by_name = HashMap::with_capacity(snaps.len());
        for (id, snap) in snaps {
            let Ok(time) = snap.timestamp() else {
                continue;
            };
            let mut name = time_name(time);
            if by_name.contains_key(&name) {
                name = format!("{name} {}", id.short());
            }
            if by_name.contains_key(&name) {
                name = format!("{name} {}", id.to_hex());
            }
            by_name.insert(name.clone(), entries.len());
            entries.push(Entry {
                id,
                snap,
                time,
                name,
            });
        }
        Catalog { entries, by_name }
    }

    pub fn ids(&self) -> Vec<Id> {
        self.entries.iter().map(|e| e.id).collect()
    }

    pub fn by_name(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The snapshots of `host`, or of every host for None.
    pub fn of_host<'a>(
        &'a self,
        host: Option<&str>,
    ) -> impl DoubleEndedIterator<Item = &'a Entry> + use<'a> {
        let host = host.map(str::to_string);
        self.entries
            .iter()
            .filter(move |e| host.as_ref().is_none_or(|h| e.snap.host == *h))
    }

    pub fn latest(&self, host: &str) -> Option<&Entry> {
        self.of_host(Some(host)).next_back()
    }

    /// The newest snapshot of `host` taken at or before `at`, as `--at` chooses.
    pub fn at(&self, host: &str, at: Timestamp) -> Option<&Entry> {
        self.of_host(Some(host)).rev().find(|e| e.time <= at)
    }

    pub fn hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.iter().map(|e| e.snap.host.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn tags(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .entries
            .iter()
            .flat_map(|e| e.snap.tags.iter().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The snapshot whose id starts with `prefix` (at least 4 hex digits), if only one does.
    pub fn by_id_prefix(&self, prefix: &str) -> Option<&Entry> {
        let p = prefix.to_ascii_lowercase();
        if p.len() < 4 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut hits = self
            .entries
            .iter()
            .filter(|e| e.id.to_hex().starts_with(&p));
        let first = hits.next()?;
        hits.next().is_none().then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(time: &str, host: &str) -> Snapshot {
        let json = format!(
            r#"{{"version":1,"time":"{time}","host":"{host}","user":"u","paths":["/"],"tree":"{}","program":"t"}}"#,
            "00".repeat(32)
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn same_second_snapshots_get_distinct_stable_names() {
        let a = Id([1; 32]);
        let b = Id([2; 32]);
        let c = Id([3; 32]);
        let cat = Catalog::new(vec![
            (a, snap("2026-11-30T02:30:01.100Z", "h")),
            (b, snap("2026-11-30T02:30:01.700Z", "h")),
            (c, snap("2026-11-30T03:00:00Z", "other")),
        ]);
        let names: Vec<&str> = cat.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names[1], format!("{} {}", names[0], b.short()));
        assert!(!names[0].contains(' '));
        assert_eq!(cat.by_name(names[1]).unwrap().id, b);
        assert_eq!(cat.latest("h").unwrap().id, b);
        assert_eq!(cat.hosts(), vec!["h".to_string(), "other".to_string()]);
        assert_eq!(cat.by_id_prefix("0101").unwrap().id, a);
        assert!(cat.by_id_prefix("01").is_none());
        let t: Timestamp = "2026-11-30T02:30:01.500Z".parse().unwrap();
        assert_eq!(cat.at("h", t).unwrap().id, a);
    }
}
