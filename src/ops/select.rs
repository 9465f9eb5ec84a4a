//! Choosing a snapshot: `latest` or an id prefix, narrowed by host, path and tag.

use std::path::PathBuf;

use anyhow::{Result, bail};
use jiff::Timestamp;

use crate::error::{Advised, Remedy, VaultError};
use crate::format::Id;
use crate::format::snapshot::Snapshot;
use crate::repo::repository::is_misnamed;
use crate::repo::{FileKind, Repository};

/// Which snapshots: one type for programs and the command line (clap derives its flags
/// under the `cli` feature).
#[derive(Default, Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Filter {
    /// Only snapshots from this host (repeatable)
    #[cfg_attr(feature = "cli", arg(long = "host"))]
    pub hosts: Vec<String>,
    /// Only snapshots that include this backed-up path (repeatable)
    #[cfg_attr(feature = "cli", arg(long = "path"))]
    pub paths: Vec<String>,
    /// Only snapshots with this tag (repeatable)
    #[cfg_attr(feature = "cli", arg(long = "tag"))]
    pub tags: Vec<String>,
    /// Paths the snapshot must contain: each lies at or below one of its backed-up paths.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub covers: Vec<PathBuf>,
}

impl Filter {
    /// This filter for a look across time (`--at`, a file's versions): this host
    /// unless it names hosts, and only snapshots that hold every path in `covers`.
    pub fn across_time(&self, covers: &[PathBuf]) -> Filter {
        let mut f = self.clone();
        if f.hosts.is_empty() {
            f.hosts.push(crate::repo::repository::hostname());
        }
        f.covers = covers.to_vec();
        f
    }

    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.host))
            && self.paths.iter().all(|p| s.paths.contains(p))
            && self.tags.iter().all(|t| s.tags.contains(t))
            && self
                .covers
                .iter()
                .all(|c| s.paths.iter().any(|p| c.starts_with(p)))
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.hosts.is_empty() {
            parts.push(format!("host {}", self.hosts.join("/")));
        }
        if !self.paths.is_empty() {
            parts.push(format!("paths {}", self.paths.join(" ")));
        }
        if !self.tags.is_empty() {
            parts.push(format!("tags {}", self.tags.join(",")));
        }
        for c in &self.covers {
            parts.push(format!("holding {}", c.display()));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
}

/// Local wall-clock text for a snapshot time.
pub fn local_time(ts: Timestamp) -> String {
    ts.to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// The newest snapshot taken at or before `at` among those matching `filter`.
pub fn at_time(
    repo: &Repository,
    at: Timestamp,
    filter: &Filter,
    warn: &dyn Fn(String),
) -> Result<(Id, Snapshot)> {
    let all = list(repo, filter, warn)?;
    let stamp = |s: &Snapshot| s.timestamp().ok();
    if let Some(hit) = all
        .iter()
        .rev()
        .find(|(_, s)| stamp(s).is_some_and(|t| t <= at))
    {
        return Ok(hit.clone());
    }
    match all.first() {
        Some((id, s)) => bail!(
            "no snapshot at or before {}{}: the oldest is {} of {}",
            local_time(at),
            filter.describe(),
            id.short(),
            stamp(s).map(local_time).unwrap_or_else(|| s.time.clone())
        ),
        None => Err(Advised::error(
            format!("no snapshots{}", filter.describe()),
            Remedy::ListSnapshots { other_hosts: true },
        )),
    }
}

/// Readable snapshots matching `filter`, oldest first; damaged ones are reported by `warn`.
/// A misnamed snapshot or index file (another object's bytes under its name) fails the
/// whole listing: skipped like a damaged one, it would leave an older snapshot to pass
/// for `latest`, or another's content to pass for the one asked for.
pub fn list(
    repo: &Repository,
    filter: &Filter,
    warn: &dyn Fn(String),
) -> Result<Vec<(Id, Snapshot)>> {
    repo.refuse_misnamed()?;
    let mut out = Vec::new();
    for (id, s) in repo.snapshots()? {
        match s {
            Ok(s) if filter.matches(&s) => out.push((id, s)),
            Ok(_) => {}
            Err(e) if is_misnamed(&e) => return Err(e),
            Err(e) => warn(crate::error::one_line(&e)),
        }
    }
    Ok(out)
}

pub fn select(
    repo: &Repository,
    spec: &str,
    filter: &Filter,
    warn: &dyn Fn(String),
) -> Result<(Id, Snapshot)> {
    let all = list(repo, filter, warn)?;
    if spec == "latest" {
        return match all.into_iter().next_back() {
            Some(x) => Ok(x),
            None => Err(Advised::error(
                format!("no snapshot matches{}", filter.describe()),
                Remedy::ListSnapshots { other_hosts: false },
            )),
        };
    }
    let spec_l = spec.to_ascii_lowercase();
    if spec_l.is_empty() || !spec_l.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(VaultError::Usage(format!(
            "snapshot {spec:?}: give `latest` or a snapshot id (prefix)"
        ))
        .into());
    }
    let named = |id: &Id| id.to_hex().starts_with(&spec_l);
    let mut hits: Vec<&(Id, Snapshot)> = all.iter().filter(|(id, _)| named(id)).collect();
    if hits.is_empty() {
        hits = all.iter().filter(|(_, s)| replaces(s, &spec_l)).collect();
        if let [(id, _)] = hits.as_slice() {
            warn(written_again_note(spec, id));
        }
    }
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(no_such_snapshot(spec)),
        _ => bail!(
            "snapshot {spec}: prefix matches {} snapshots; give more digits",
            hits.len()
        ),
    }
}

fn no_such_snapshot(spec: &str) -> anyhow::Error {
    let msg = format!("snapshot {spec}: no such snapshot");
    Advised::error(msg, Remedy::ListSnapshots { other_hosts: false })
}

/// The one snapshot whose `original` starts with `prefix`: the copy `vault key rotate`
/// or `vault tag` wrote of a snapshot that is gone, so that an id kept from before
/// still names it.
fn written_again(repo: &Repository, spec: &str, prefix: &str) -> Result<Id> {
    let hits: Vec<Id> = repo
        .snapshots()?
        .into_iter()
        .filter_map(|(id, s)| s.ok().filter(|s| replaces(s, prefix)).map(|_| id))
        .collect();
    match hits.as_slice() {
        [one] => {
            log::warn!("{}", written_again_note(spec, one));
            Ok(*one)
        }
        _ => Err(no_such_snapshot(spec)),
    }
}

/// Whether `s` was written in place of a snapshot whose id starts with `prefix`.
fn replaces(s: &Snapshot, prefix: &str) -> bool {
    s.original
        .as_ref()
        .is_some_and(|o| o.to_hex().starts_with(prefix))
}

fn written_again_note(spec: &str, id: &Id) -> String {
    format!(
        "snapshot {spec} was written again as {} (by key rotate or tag)",
        id.short()
    )
}

/// Snapshots named by id prefixes; each must name exactly one.
pub fn by_ids(repo: &Repository, ids: &[String]) -> Result<Vec<Id>> {
    let all = repo.backend.list(FileKind::Snapshot)?;
    ids.iter()
        .map(|spec| {
            let s = spec.to_ascii_lowercase();
            let hits: Vec<&Id> = all
                .iter()
                .filter(|id| id.to_hex().starts_with(&s))
                .collect();
            match hits.as_slice() {
                [one] if !s.is_empty() => Ok(**one),
                [] if !s.is_empty() => written_again(repo, spec, &s),
                _ => Err(VaultError::Usage(format!(
                    "snapshot {spec:?}: matches {} snapshots; give more digits",
                    hits.len()
                ))
                .into()),
            }
        })
        .collect()
}

/// Which snapshot a command means: named (`latest`, an id prefix), or the one in force at
/// a time (`--at yesterday`).
#[derive(Clone, Copy, Debug)]
pub enum Which<'a> {
    Named(&'a str),
    At(Timestamp),
}

/// The snapshot `which` names among those `filter` selects. A choice by time covers this
/// host unless the filter names hosts, and only snapshots that hold every path in
/// `covers` (so that `--at` finds the newest one that has the file asked for).
pub fn choose(
    repo: &Repository,
    which: Which,
    filter: &Filter,
    covers: &[PathBuf],
    warn: &dyn Fn(String),
) -> Result<(Id, Snapshot)> {
    match which {
        Which::Named(spec) => select(repo, spec, filter, warn),
        Which::At(t) => at_time(repo, t, &filter.across_time(covers), warn),
    }
}

/// The snapshots a selection names, oldest first: those the ids name, or else those the
/// policy `keep` keeps among those `filter` matches (as forget would keep them).
pub fn by_selection(
    repo: &Repository,
    ids: &[String],
    keep: &crate::ops::keep::KeepOptions,
    filter: &Filter,
    warn: &dyn Fn(String),
) -> Result<Vec<(Id, Snapshot)>> {
    let all = list(repo, &Filter::default(), warn)?;
    let kept: Vec<Id> = if ids.is_empty() {
        let pool: Vec<(Id, Snapshot)> = all
            .iter()
            .filter(|(_, s)| filter.matches(s))
            .cloned()
            .collect();
        let tz = jiff::tz::TimeZone::system();
        let groups = crate::ops::forget::apply(&keep.policy()?, &pool, keep.group_by, &tz);
        crate::ops::forget::decided(&groups, true)
    } else {
        by_ids(repo, ids)?
    };
    Ok(all
        .into_iter()
        .filter(|(id, _)| kept.contains(id))
        .collect())
}
