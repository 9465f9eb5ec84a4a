//! `vault forget`: which snapshots a retention policy keeps, and why. Snapshots are
//! grouped (by host and paths unless told otherwise); within a group, newest first, each
//! rule keeps what it asks for, and a snapshot is kept when any rule keeps it.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};
use serde::Serialize;

use crate::format::Id;
use crate::format::snapshot::Snapshot;

/// Calendar buckets for the `--keep-<period>` rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

pub const PERIODS: [Period; 5] = [
    Period::Hourly,
    Period::Daily,
    Period::Weekly,
    Period::Monthly,
    Period::Yearly,
];

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }

    /// The bucket a local time falls in: same key, same period.
    fn bucket(self, t: &Zoned) -> Bucket {
        let d = t.date();
        match self {
            Period::Hourly => (i32::from(d.year()), d.day_of_year().into(), t.hour().into()),
            Period::Daily => (i32::from(d.year()), d.day_of_year().into(), 0),
            Period::Weekly => {
                let w = d.iso_week_date();
                (i32::from(w.year()), w.week().into(), 0)
            }
            Period::Monthly => (i32::from(d.year()), d.month().into(), 0),
            Period::Yearly => (i32::from(d.year()), 0, 0),
        }
    }
}

/// A calendar period as comparable numbers (year, day/week/month, hour).
type Bucket = (i32, i32, i32);

#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub last: Option<usize>,
    /// `--keep-hourly` .. `--keep-yearly`: how many periods, newest first.
    pub periods: BTreeMap<Period, usize>,
    /// Keep everything within this span of the group's newest snapshot.
    pub within: Option<Span>,
    /// `--keep-within-<period>`: one per period within this span of the newest snapshot.
    pub within_periods: BTreeMap<Period, Span>,
    pub tags: Vec<String>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.periods.is_empty()
            && self.within.is_none()
            && self.within_periods.is_empty()
            && self.tags.is_empty()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

impl std::str::FromStr for GroupBy {
    type Err = String;

    fn from_str(s: &str) -> Result<GroupBy, String> {
        let mut g = GroupBy::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" | "path" => g.paths = true,
                "tags" | "tag" => g.tags = true,
                other => return Err(format!("--group-by {other:?}: use host, paths and/or tags")),
            }
        }
        Ok(g)
    }
}

#[derive(Debug, Serialize)]
pub struct Decision {
    pub id: String,
    pub time: String,
    pub keep: bool,
    /// The rules that keep it ("last", "daily", "within", "tag important", ...).
    pub reasons: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Group {
    pub host: Option<String>,
    pub paths: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    /// Newest first.
    pub snapshots: Vec<Decision>,
}

/// The snapshots of `groups` that their policy keeps (`keep`), or removes.
pub fn decided(groups: &[Group], keep: bool) -> Vec<Id> {
    groups
        .iter()
        .flat_map(|g| &g.snapshots)
        .filter(|d| d.keep == keep)
        .filter_map(|d| Id::from_hex(&d.id))
        .collect()
}

fn group_key(
    s: &Snapshot,
    by: GroupBy,
) -> (Option<String>, Option<Vec<String>>, Option<Vec<String>>) {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    (
        by.host.then(|| s.host.clone()),
        by.paths.then(|| sorted(&s.paths)),
        by.tags.then(|| sorted(&s.tags)),
    )
}

/// Applies `policy` to `snaps` in groups; `tz` decides where days begin.
pub fn apply(policy: &Policy, snaps: &[(Id, Snapshot)], by: GroupBy, tz: &TimeZone) -> Vec<Group> {
    type Key = (Option<String>, Option<Vec<String>>, Option<Vec<String>>);
    let mut groups: BTreeMap<Key, Vec<(Id, &Snapshot, Timestamp)>> = BTreeMap::new();
    for (id, s) in snaps {
        // An unparsable time sorts as the oldest possible, and is never kept by time rules.
        let t = s.timestamp().unwrap_or(Timestamp::MIN);
        groups
            .entry(group_key(s, by))
            .or_default()
            .push((*id, s, t));
    }
    groups
        .into_iter()
        .map(|((host, paths, tags), mut members)| {
            members.sort_by(|a, b| b.2.cmp(&a.2).then(b.0.cmp(&a.0)));
            Group {
                host,
                paths,
                tags,
                snapshots: decide(policy, &members, tz),
            }
        })
        .collect()
}

fn decide(policy: &Policy, members: &[(Id, &Snapshot, Timestamp)], tz: &TimeZone) -> Vec<Decision> {
    let newest = members.first().map(|m| m.2.to_zoned(tz.clone()));
    let since = |span: &Span| {
        newest
            .as_ref()
            .and_then(|n| n.checked_sub(*span).ok())
            .map(|z| z.timestamp())
    };
    let within = policy.within.as_ref().and_then(since);
    let within_periods: Vec<(Period, Option<Timestamp>)> = policy
        .within_periods
        .iter()
        .map(|(p, span)| (*p, since(span)))
        .collect();
    // Per rule: how many kept so far and the last bucket kept.
    let mut counts: BTreeMap<Period, (usize, Option<Bucket>)> = BTreeMap::new();
    let mut within_last: BTreeMap<Period, Option<Bucket>> = BTreeMap::new();
    let mut out = Vec::with_capacity(members.len());
    for (i, (id, s, t)) in members.iter().enumerate() {
        let local = t.to_zoned(tz.clone());
        let mut reasons = Vec::new();
        if policy.last.is_some_and(|n| i < n) {
            reasons.push("last".to_string());
        }
        for (&p, &n) in &policy.periods {
            let b = p.bucket(&local);
            let (kept, last) = counts.entry(p).or_insert((0, None));
            if *kept < n && *last != Some(b) {
                *kept += 1;
                *last = Some(b);
                reasons.push(p.name().to_string());
            }
        }
        if within.is_some_and(|w| *t >= w) {
            reasons.push("within".to_string());
        }
        for (p, limit) in &within_periods {
            let b = p.bucket(&local);
            let last = within_last.entry(*p).or_insert(None);
            if limit.is_some_and(|w| *t >= w) && *last != Some(b) {
                *last = Some(b);
                reasons.push(format!("within-{}", p.name()));
            }
        }
        for tag in &policy.tags {
            if s.tags.contains(tag) {
                reasons.push(format!("tag {tag}"));
            }
        }
        out.push(Decision {
            id: id.to_hex(),
            time: s.time.clone(),
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

/// Parses spans like `30d`, `2w`, `6m` (months), `1y`, `12h`, `1y6m`.
pub fn parse_span(s: &str) -> Result<Span, String> {
    let bad =
        || format!("duration {s:?}: use a number and a unit, e.g. 30d, 2w, 6m, 1y, 12h, 1y6m");
    let mut span = Span::new();
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit_len = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len() - digits);
        let unit = &rest[digits..digits + unit_len];
        span = match unit {
            "h" => span.try_hours(n),
            "d" => span.try_days(n),
            "w" => span.try_weeks(n),
            "m" => span.try_months(n),
            "y" => span.try_years(n),
            _ => return Err(bad()),
        }
        .map_err(|e| e.to_string())?;
        rest = &rest[digits + unit_len..];
    }
    Ok(span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::snapshot::{SNAPSHOT_VERSION, Summary};

    fn snap(time: &str, host: &str, tags: &[&str]) -> (Id, Snapshot) {
        let s = Snapshot {
            version: SNAPSHOT_VERSION,
            time: time.parse::<Timestamp>().unwrap().to_string(),
            host: host.into(),
            user: "u".into(),
            paths: vec!["/data".into()],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            parent: None,
            tree: Id::default(),
            excludes: vec![],
            program: "test".into(),
            summary: Summary::default(),
            original: None,
        };
        (Id::of_stored(time.as_bytes()), s)
    }

    /// One snapshot a day at 22:00 UTC for `days` days ending 2026-11-21.
    fn nightly(days: i64) -> Vec<(Id, Snapshot)> {
        let end: Timestamp = "2026-11-21T22:00:00Z".parse().unwrap();
        (0..days)
            .map(|d| snap(&(end - Span::new().hours(24 * d)).to_string(), "h", &[]))
            .collect()
    }

    fn kept(policy: &Policy, snaps: &[(Id, Snapshot)], tz: &TimeZone) -> Vec<String> {
        let g = apply(policy, snaps, "host,paths".parse().unwrap(), tz);
        g.iter()
            .flat_map(|g| &g.snapshots)
            .filter(|d| d.keep)
            .map(|d| d.time[..10].to_string())
            .collect()
    }

    #[test]
    fn keep_last_and_daily_weekly_monthly() {
        let snaps = nightly(100);
        let utc = TimeZone::UTC;
        let p = Policy {
            last: Some(3),
            ..Default::default()
        };
        assert_eq!(
            kept(&p, &snaps, &utc),
            ["2026-11-21", "2026-11-20", "2026-11-19"]
        );
        let mut p = Policy::default();
        p.periods.insert(Period::Weekly, 3);
        // ISO weeks: Sat 11-21 (week 47), then the newest of weeks 46 and 45 (Sundays).
        assert_eq!(
            kept(&p, &snaps, &utc),
            ["2026-11-21", "2026-11-15", "2026-11-08"]
        );
        let mut p = Policy::default();
        p.periods.insert(Period::Monthly, 4);
        assert_eq!(
            kept(&p, &snaps, &utc),
            ["2026-11-21", "2026-10-31", "2026-09-30", "2026-08-31"]
        );
        let mut p = Policy::default();
        p.periods.insert(Period::Yearly, 5);
        assert_eq!(kept(&p, &snaps, &utc), ["2026-11-21"]);
    }

    #[test]
    fn hourly_keeps_the_newest_of_each_hour() {
        let snaps = vec![
            snap("2026-11-21T10:50:00Z", "h", &[]),
            snap("2026-11-21T10:10:00Z", "h", &[]),
            snap("2026-11-21T09:59:00Z", "h", &[]),
            snap("2026-11-21T07:00:00Z", "h", &[]),
        ];
        let mut p = Policy::default();
        p.periods.insert(Period::Hourly, 2);
        let g = apply(&p, &snaps, GroupBy::default(), &TimeZone::UTC);
        let times: Vec<&str> = g[0]
            .snapshots
            .iter()
            .filter(|d| d.keep)
            .map(|d| &d.time[11..16])
            .collect();
        assert_eq!(times, ["10:50", "09:59"]);
    }

    #[test]
    fn rules_combine_and_give_reasons() {
        let snaps = nightly(10);
        let mut p = Policy {
            last: Some(1),
            ..Default::default()
        };
        p.periods.insert(Period::Daily, 2);
        let g = apply(&p, &snaps, GroupBy::default(), &TimeZone::UTC);
        let d = &g[0].snapshots;
        assert_eq!(d[0].reasons, ["last", "daily"]);
        assert_eq!(d[1].reasons, ["daily"]);
        assert!(!d[2].keep && d[2].reasons.is_empty());
    }

    #[test]
    fn within_is_relative_to_the_newest_snapshot() {
        let snaps = nightly(10);
        let p = Policy {
            within: Some(parse_span("3d").unwrap()),
            ..Default::default()
        };
        assert_eq!(
            kept(&p, &snaps, &TimeZone::UTC).len(),
            4,
            "3 days back, inclusive"
        );
        let mut p = Policy::default();
        p.within_periods
            .insert(Period::Weekly, parse_span("3w").unwrap());
        assert_eq!(
            kept(&p, &snaps, &TimeZone::UTC),
            ["2026-11-21", "2026-11-15"]
        );
    }

    #[test]
    fn time_zone_decides_the_day() {
        // 22:00 UTC is already the next day in Tokyo: two snapshots 2 hours apart around
        // midnight fall in one UTC day but two Tokyo days.
        let snaps = vec![
            snap("2026-11-21T14:30:00Z", "h", &[]),
            snap("2026-11-21T15:30:00Z", "h", &[]),
        ];
        let mut p = Policy::default();
        p.periods.insert(Period::Daily, 5);
        assert_eq!(kept(&p, &snaps, &TimeZone::UTC).len(), 1);
        let tokyo = TimeZone::posix("JST-9").unwrap();
        assert_eq!(kept(&p, &snaps, &tokyo).len(), 2);
    }

    #[test]
    fn groups_and_tags() {
        let mut snaps = nightly(3);
        snaps.push(snap("2026-11-01T00:00:00Z", "other", &["important"]));
        snaps.push(snap("2026-10-01T00:00:00Z", "other", &[]));
        let p = Policy {
            last: Some(1),
            tags: vec!["important".into()],
            ..Default::default()
        };
        let g = apply(&p, &snaps, "host".parse().unwrap(), &TimeZone::UTC);
        assert_eq!(g.len(), 2);
        let other = g
            .iter()
            .find(|g| g.host.as_deref() == Some("other"))
            .unwrap();
        assert_eq!(other.snapshots[0].reasons, ["last", "tag important"]);
        assert!(!other.snapshots[1].keep);
        assert_eq!(
            kept(&p, &snaps, &TimeZone::UTC).len(),
            2,
            "the newest of each host"
        );
        // Without grouping, "last 1" keeps one snapshot overall, and the tag another.
        let all = apply(&p, &snaps, GroupBy::default(), &TimeZone::UTC);
        assert_eq!(all[0].snapshots.iter().filter(|d| d.keep).count(), 2);
    }

    #[test]
    fn spans() {
        assert_eq!(parse_span("30d").unwrap().get_days(), 30);
        assert_eq!(parse_span("1y6m").unwrap().get_months(), 6);
        assert!(parse_span("").is_err());
        assert!(parse_span("5x").is_err());
        assert!(parse_span("d").is_err());
    }
}
