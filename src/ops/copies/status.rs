//! Whether the copies are enough: each copy's facts, and the rule they are judged by —
//! at least 3 complete copies, with 2 vendors and 2 regions among them, and an offline
//! export that is not too old.

use std::collections::BTreeSet;

use anyhow::Result;
use serde::Serialize;

use super::PRIMARY;
use super::judge::{judged, report_untrusted};
use super::state;
use super::trust::Verdict;
use crate::error::one_line;
use crate::format::mirror::MirrorDef;
use crate::ops::sync;
use crate::repo::{Backend, Repository};
use crate::report::Reporter;

pub const MIN_COPIES: usize = 3;
pub const MIN_VENDORS: usize = 2;
pub const MIN_REGIONS: usize = 2;

/// One copy: the primary first, then each mirror in force.
#[derive(Serialize, Debug, Clone)]
pub struct CopyStatus {
    pub name: String,
    pub url: String,
    pub vendor: String,
    pub region: String,
    /// None for the primary.
    #[serde(flatten)]
    pub mirror: Option<MirrorFacts>,
    pub reachable: bool,
    /// Holds every object the primary holds.
    pub complete: bool,
    /// Its packs need a warm-up before a restore; None when it was not opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_objects: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_bytes: Option<u64>,
    /// Why it is unreachable (or untrusted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the credentials this host holds could delete there (a probe object
    /// written and deleted under `tmp/`); None when it was not reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_delete: Option<bool>,
    /// A protected mirror: what its protection keeps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protection: Option<Protection>,
}

/// What a protected mirror keeps that the primary removed.
#[derive(Serialize, Debug, Clone)]
pub struct Protection {
    /// The period, seconds.
    pub period: u64,
    /// Deletions recorded that the period still holds back, or that could not be
    /// counted (`error`).
    pub waiting: u64,
    /// When the oldest of them was recorded there, on its clock, and when it is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_waiting: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_due: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// S3 Object Lock retention mode its uploads are given (`GOVERNANCE`,
    /// `COMPLIANCE`), when its location sets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<&'static str>,
}

/// What only a mirror has.
#[derive(Serialize, Debug, Clone)]
pub struct MirrorFacts {
    /// Untrusted mirrors are never contacted.
    pub trusted: bool,
    /// RFC 3339: its last complete sync from this machine.
    pub last_sync: Option<String>,
}

/// The newest offline export.
#[derive(Serialize, Debug, Clone)]
pub struct ExportAge {
    pub label: String,
    pub destination: String,
    /// Whole days since it was made.
    pub days: i64,
    /// Older than the age the caller allows.
    pub too_old: bool,
}

/// Where the copies fall short of the rule, in the order they are judged.
#[derive(Serialize, Debug, Clone)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shortfall {
    FewCopies { complete: usize },
    SingleVendor,
    SingleRegion,
    NoExport,
    OldExport(ExportAge),
}

#[derive(Serialize, Debug, Clone)]
pub struct Status {
    pub copies: Vec<CopyStatus>,
    /// Complete copies, and the distinct vendors and regions recorded for them.
    pub complete: usize,
    pub vendors: usize,
    pub regions: usize,
    pub export: Option<ExportAge>,
    pub shortfalls: Vec<Shortfall>,
}

/// Judges the copies of `repo`, asking each trusted mirror what it lacks (a listing:
/// cold copies answer it too) and whether this host could delete there. Untrusted
/// mirrors are reported and never contacted. With a protected mirror the index is
/// loaded, to count what its protection keeps.
pub fn status(
    repo: &mut Repository,
    export_max_age: jiff::Span,
    report: &dyn Reporter,
) -> Result<Status> {
    let defs = repo.mirror_defs()?;
    let judged = judged(repo)?;
    let any_protected = judged
        .iter()
        .any(|(d, v)| d.protect > 0 && matches!(v, Verdict::Trusted(_)));
    if any_protected {
        repo.load_index()?;
    }
    let repo = &*repo;
    let last = state::load(repo);
    let primary = repo.backend.alone();
    let primary_def = defs.iter().find(|d| d.name == PRIMARY);
    let mut copies = vec![CopyStatus {
        name: PRIMARY.into(),
        url: repo.location().to_string(),
        vendor: primary_def.map(|d| d.vendor.clone()).unwrap_or_default(),
        region: primary_def.map(|d| d.region.clone()).unwrap_or_default(),
        mirror: None,
        reachable: true,
        complete: true,
        cold: Some(primary.is_cold()),
        missing_objects: None,
        missing_bytes: None,
        error: None,
        can_delete: Some(can_delete(&primary)),
        protection: None,
    }];
    for (d, verdict) in &judged {
        let facts = MirrorFacts {
            trusted: matches!(verdict, Verdict::Trusted(_)),
            last_sync: last.get(&d.name).cloned(),
        };
        let row = match verdict {
            Verdict::Trusted(access) => mirror_status(repo, d, *access, facts),
            Verdict::Untrusted { redefined } => {
                report_untrusted(d, *redefined, report);
                let why = format!(
                    "untrusted on this host: check its URL, then `vault mirror trust {}`",
                    d.name
                );
                unreachable(d, facts, None, why)
            }
        };
        copies.push(row);
    }
    Ok(judge(copies, newest_export(repo, export_max_age)?))
}

/// A trusted mirror's row: what it lacks, or why it could not tell.
fn mirror_status(
    repo: &Repository,
    d: &MirrorDef,
    access: crate::repo::location::Access,
    facts: MirrorFacts,
) -> CopyStatus {
    let mut cold = None;
    let mut probed = None;
    let behind = Backend::open_mirror(&d.url, &d.name, access).and_then(|m| {
        cold = Some(m.is_cold());
        let b = sync::behind(&repo.backend.alone(), &m)?;
        probed = Some((
            can_delete(&m),
            (d.protect > 0).then(|| protection(repo, &m, d)),
        ));
        Ok(b)
    });
    let (can_delete, protection) = probed.unzip();
    match behind {
        Ok(b) => CopyStatus {
            name: d.name.clone(),
            url: d.url.clone(),
            vendor: d.vendor.clone(),
            region: d.region.clone(),
            mirror: Some(facts),
            reachable: true,
            complete: b.objects == 0,
            cold,
            missing_objects: Some(b.objects),
            missing_bytes: Some(b.bytes),
            error: None,
            can_delete,
            protection: protection.flatten(),
        },
        Err(e) => unreachable(d, facts, cold, one_line(&e)),
    }
}

/// A mirror's row when it cannot be asked: neither complete nor counted.
fn unreachable(d: &MirrorDef, facts: MirrorFacts, cold: Option<bool>, why: String) -> CopyStatus {
    CopyStatus {
        name: d.name.clone(),
        url: d.url.clone(),
        vendor: d.vendor.clone(),
        region: d.region.clone(),
        mirror: Some(facts),
        reachable: false,
        complete: false,
        cold,
        missing_objects: None,
        missing_bytes: None,
        error: Some(why),
        can_delete: None,
        protection: None,
    }
}

/// Whether `backend` lets this host delete: a probe object under `tmp/`, written and
/// deleted. Where the delete is refused the probe stays, for maintenance to remove.
fn can_delete(backend: &Backend) -> bool {
    let path = format!("tmp/{}.probe", crate::format::Id::random().to_hex());
    backend.write(&path, Vec::new()).is_ok() && backend.delete(&path).is_ok()
}

/// What the protection of mirror `m` keeps, counted as `vault maintain --dry-run` would.
fn protection(repo: &Repository, m: &Backend, d: &MirrorDef) -> Protection {
    let period = d.protect;
    let mut p = Protection {
        period,
        waiting: 0,
        oldest_waiting: None,
        next_due: None,
        error: None,
        object_lock: crate::repo::location::object_lock_mode(&d.url)
            .ok()
            .flatten()
            .map(|mode| mode.wire()),
    };
    match super::maintain::plan(repo, m, period, true) {
        Ok(done) => {
            p.waiting = done.waiting;
            p.oldest_waiting = done.oldest_waiting;
            p.next_due = done.next_due;
        }
        Err(e) => p.error = Some(one_line(&e)),
    }
    p
}

/// Applies the rule to the rows.
fn judge(copies: Vec<CopyStatus>, export: Option<ExportAge>) -> Status {
    let complete: Vec<&CopyStatus> = copies.iter().filter(|c| c.complete).collect();
    let distinct = |field: fn(&CopyStatus) -> &str| -> usize {
        complete
            .iter()
            .map(|c| field(c))
            .filter(|v| !v.is_empty())
            .collect::<BTreeSet<&str>>()
            .len()
    };
    let vendors = distinct(|c| &c.vendor);
    let regions = distinct(|c| &c.region);
    let mut shortfalls = Vec::new();
    if complete.len() < MIN_COPIES {
        shortfalls.push(Shortfall::FewCopies {
            complete: complete.len(),
        });
    }
    if vendors < MIN_VENDORS {
        shortfalls.push(Shortfall::SingleVendor);
    }
    if regions < MIN_REGIONS {
        shortfalls.push(Shortfall::SingleRegion);
    }
    match &export {
        None => shortfalls.push(Shortfall::NoExport),
        Some(e) if e.too_old => shortfalls.push(Shortfall::OldExport(e.clone())),
        Some(_) => {}
    }
    let complete = complete.len();
    Status {
        copies,
        complete,
        vendors,
        regions,
        export,
        shortfalls,
    }
}

/// The newest offline export on record, and whether it is older than `max_age`.
fn newest_export(repo: &Repository, max_age: jiff::Span) -> Result<Option<ExportAge>> {
    let Some(newest) = repo.export_records()?.pop() else {
        return Ok(None);
    };
    let now = jiff::Zoned::now();
    let when = newest
        .time
        .parse::<jiff::Timestamp>()
        .map(|t| t.to_zoned(now.time_zone().clone()))
        .ok();
    let days = when
        .as_ref()
        .map(|w| (now.timestamp().as_second() - w.timestamp().as_second()) / 86_400)
        .unwrap_or(0);
    let too_old = when
        .as_ref()
        .and_then(|w| w.checked_add(max_age).ok())
        .is_some_and(|limit| limit < now);
    Ok(Some(ExportAge {
        label: newest.label,
        destination: newest.destination,
        days,
        too_old,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(name: &str, vendor: &str, region: &str, complete: bool) -> CopyStatus {
        CopyStatus {
            name: name.into(),
            url: String::new(),
            vendor: vendor.into(),
            region: region.into(),
            mirror: None,
            reachable: true,
            complete,
            cold: None,
            missing_objects: None,
            missing_bytes: None,
            error: None,
            can_delete: None,
            protection: None,
        }
    }

    fn kinds(s: &Status) -> Vec<String> {
        let v = serde_json::to_value(&s.shortfalls).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .map(|f| f["kind"].as_str().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn three_copies_two_vendors_two_regions_and_a_fresh_export_suffice() {
        let fresh = ExportAge {
            label: "l".into(),
            destination: "/d".into(),
            days: 1,
            too_old: false,
        };
        let s = judge(
            vec![
                copy("primary", "a", "r1", true),
                copy("m1", "b", "r2", true),
                copy("m2", "b", "r2", true),
            ],
            Some(fresh),
        );
        assert!(s.shortfalls.is_empty());
        assert_eq!((s.complete, s.vendors, s.regions), (3, 2, 2));
    }

    #[test]
    fn only_complete_copies_with_recorded_places_count() {
        let s = judge(
            vec![
                copy("primary", "a", "", true),
                copy("m1", "b", "r2", false),
                copy("m2", "a", "", true),
            ],
            None,
        );
        assert_eq!((s.complete, s.vendors, s.regions), (2, 1, 0));
        assert_eq!(
            kinds(&s),
            ["few_copies", "single_vendor", "single_region", "no_export"]
        );
    }
}
