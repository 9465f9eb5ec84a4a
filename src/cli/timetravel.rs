//! Choosing snapshots by time, and the commands that look across time: versions, diff,
//! find.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use super::commands::{print_json, reading_trees, warn_stderr};
use super::progress::human_bytes;
use super::{AtArg, DiffArgs, FindArgs, Global, SnapshotFilter, VersionsArgs};
use crate::error::{VaultError, exit};
use crate::format::Id;
use crate::format::snapshot::Snapshot;
use crate::ops::{diff, find, select, timespec, versions};
use crate::repo::Repository;
use crate::repo::repository::hostname;

fn parse_time(spec: &str) -> Result<jiff::Timestamp> {
    Ok(timespec::parse(spec, &jiff::Zoned::now()).map_err(VaultError::Usage)?)
}

/// Picks the snapshot named by `spec` (`latest`, an id prefix) or by `--at`; says on
/// stderr which one `--at` chose.
pub(super) fn choose(
    g: &Global,
    repo: &Repository,
    spec: Option<&str>,
    at: &AtArg,
    f: &SnapshotFilter,
    covers: &[PathBuf],
) -> Result<(Id, Snapshot)> {
    let which = match (spec, &at.at) {
        (Some(_), Some(_)) => {
            return Err(VaultError::Usage("give a snapshot or --at, not both".into()).into());
        }
        (Some(s), None) => select::Which::Named(s),
        (None, Some(t)) => select::Which::At(parse_time(t)?),
        (None, None) => {
            return Err(VaultError::Usage(
                "which snapshot? give `latest`, an id prefix, or --at TIME".into(),
            )
            .into());
        }
    };
    let (id, snap) = select::choose(repo, which, f, covers, &warn_stderr)?;
    if let (select::Which::At(t), Some(spec)) = (which, &at.at)
        && !g.quiet
        && !g.json
    {
        let when = snap
            .timestamp()
            .map(select::local_time)
            .unwrap_or_else(|_| snap.time.clone());
        eprintln!(
            "vault: --at {spec:?} ({}): snapshot {} of {when}",
            select::local_time(t),
            id.short()
        );
    }
    Ok((id, snap))
}

/// Splits `[SNAPSHOT] [PATH]` positionals: with --at every positional is a path.
pub(super) fn split_args(
    args: Vec<OsString>,
    at: &AtArg,
    need_path: bool,
) -> Result<(Option<String>, Option<PathBuf>)> {
    let usage = |m: &str| -> anyhow::Error { VaultError::Usage(m.to_string()).into() };
    let mut it = args.into_iter();
    let snapshot = if at.at.is_some() {
        None
    } else {
        let s = it
            .next()
            .ok_or_else(|| usage("which snapshot? give `latest`, an id prefix, or --at TIME"))?;
        Some(
            s.into_string()
                .map_err(|_| usage("a snapshot id is ASCII hex or `latest`"))?,
        )
    };
    let path = it.next().map(|p| absolute(Path::new(&p)));
    if it.next().is_some() {
        return Err(usage("too many arguments: with --at, give only the path"));
    }
    if need_path && path.is_none() {
        return Err(usage("which file? give its path as it was backed up"));
    }
    Ok((snapshot, path))
}

pub(super) fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Snapshots matching `f` (this host by default), oldest first, up to `until`.
fn history(
    repo: &Repository,
    f: select::Filter,
    until: Option<&str>,
) -> Result<Vec<(Id, Snapshot)>> {
    let limit = until.map(parse_time).transpose()?;
    let mut snaps = select::list(repo, &f, &warn_stderr)?;
    if let Some(t) = limit {
        snaps.retain(|(_, s)| s.timestamp().is_ok_and(|st| st <= t));
    }
    Ok(snaps)
}

pub fn cmd_versions(g: &Global, a: VersionsArgs) -> Result<i32> {
    let session = reading_trees(g, "versions")?;
    let repo = session.repo();
    let path = absolute(&a.path);
    let fl = a.filter.across_time(std::slice::from_ref(&path));
    let snaps = history(repo, fl, a.until.as_deref())?;
    let rows = versions::versions(repo, &snaps, &path)?;
    if rows.is_empty() {
        return Err(anyhow::anyhow!(
            "{}: in no snapshot of host {} (see `vault find`, or --host for another machine)",
            path.display(),
            a.filter.hosts.first().cloned().unwrap_or_else(hostname)
        ));
    }
    if g.json {
        print_json(&serde_json::to_value(&rows)?)?;
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<8}  {:<19}  {:<19}  {:>5}  {:>10}  {:<19}  Type",
        "First", "First seen", "Last seen", "Snaps", "Size", "Modified"
    )?;
    for v in &rows {
        let t = |s: &str| {
            s.parse::<jiff::Timestamp>()
                .map(|t| {
                    t.to_zoned(jiff::tz::TimeZone::system())
                        .strftime("%Y-%m-%d %H:%M:%S")
                        .to_string()
                })
                .unwrap_or_else(|_| s.to_string())
        };
        writeln!(
            out,
            "{:<8}  {:<19}  {:<19}  {:>5}  {:>10}  {:<19}  {:?}",
            &v.first_snapshot[..8],
            t(&v.first_seen),
            t(&v.last_seen),
            v.snapshots,
            human_bytes(v.size),
            v.mtime,
            v.kind
        )?;
    }
    if !g.quiet {
        writeln!(
            out,
            "{} version(s) in {} snapshot(s)",
            rows.len(),
            snaps.len()
        )?;
    }
    Ok(exit::OK)
}

pub fn cmd_diff(g: &Global, a: DiffArgs) -> Result<i32> {
    let session = reading_trees(g, "diff")?;
    let repo = session.repo();
    if a.snapshots.len() + a.at.len() != 2 {
        return Err(VaultError::Usage(
            "diff needs two snapshots: `vault diff A B`, `vault diff A --at TIME` or `vault diff --at T1 --at T2`".into(),
        )
        .into());
    }
    let mut chosen = Vec::new();
    for s in &a.snapshots {
        chosen.push(select::select(repo, s, &a.filter, &warn_stderr)?);
    }
    for t in &a.at {
        let at = AtArg {
            at: Some(t.clone()),
        };
        chosen.push(choose(g, repo, None, &at, &a.filter, &[])?);
    }
    let (ia, sa) = &chosen[0];
    let (ib, sb) = &chosen[1];
    let mut changes = Vec::new();
    let mut out = std::io::stdout().lock();
    let stats = diff::diff(repo, &sa.tree, &sb.tree, &mut |c| {
        if g.json {
            changes.push(c);
        } else {
            let size = match (c.size_before, c.size_after) {
                (Some(x), Some(y)) if x != y => {
                    format!("  ({} -> {})", human_bytes(x), human_bytes(y))
                }
                (None, Some(y)) => format!("  ({})", human_bytes(y)),
                _ => String::new(),
            };
            let _ = writeln!(out, "{}  {}{size}", c.change.sign(), c.path);
        }
    })?;
    if g.json {
        print_json(&json!({
            "from": ia.to_hex(), "to": ib.to_hex(), "changes": changes, "stats": stats,
        }))?;
    } else if !g.quiet {
        writeln!(
            out,
            "{} -> {}: {} added, {} removed, {} modified, {} metadata only, {} type changed; +{} -{}",
            ia.short(),
            ib.short(),
            stats.added,
            stats.removed,
            stats.modified,
            stats.metadata,
            stats.type_changed,
            human_bytes(stats.bytes_added),
            human_bytes(stats.bytes_removed)
        )?;
    }
    Ok(exit::OK)
}

pub fn cmd_find(g: &Global, a: FindArgs) -> Result<i32> {
    let session = reading_trees(g, "find")?;
    let repo = session.repo();
    let pattern = find::Pattern::new(&a.pattern)
        .map_err(|e| VaultError::Usage(crate::error::one_line(&e)))?;
    let below = a.below.as_deref().map(absolute);
    let fl = select::Filter {
        hosts: a.hosts.clone(),
        tags: a.tags.clone(),
        covers: below.iter().cloned().collect(),
        ..Default::default()
    };
    let snaps = history(repo, fl, a.until.as_deref())?;
    let mut finder = find::Finder::new(repo, &pattern);
    let mut groups = Vec::new();
    let mut out = std::io::stdout().lock();
    let mut total = 0;
    for (id, s) in &snaps {
        let below = below.as_deref().unwrap_or(Path::new("/"));
        if g.json {
            let hits = finder.find(&s.tree, below)?;
            total += hits.len();
            if !hits.is_empty() {
                groups.push(
                    json!({"snapshot": id.to_hex(), "time": s.time, "host": s.host, "matches": hits}),
                );
            }
            continue;
        }
        // Printed as found: a snapshot may hold more matches than fit in memory.
        let mut first = true;
        finder.each(&s.tree, below, &mut |m| {
            if first {
                first = false;
                let when = s
                    .timestamp()
                    .map(select::local_time)
                    .unwrap_or_else(|_| s.time.clone());
                writeln!(out, "snapshot {} of {when} ({}):", id.short(), s.host)?;
            }
            total += 1;
            writeln!(
                out,
                "  {}  {:>10}  {}",
                m.mtime,
                human_bytes(m.size),
                m.path
            )?;
            Ok(())
        })?;
    }
    if g.json {
        print_json(&serde_json::Value::Array(groups))?;
    } else if !g.quiet {
        writeln!(
            out,
            "{total} match(es) in {} snapshot(s) searched",
            snaps.len()
        )?;
    }
    Ok(exit::OK)
}
