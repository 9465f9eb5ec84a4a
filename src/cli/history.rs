//! tag, rewrite and stats.

use anyhow::Result;

use super::commands::{locking, mirrored, reading, render, warn_stderr};
use super::progress::human_bytes;
use super::{Global, RewriteArgs, SnapshotFilter, StatsArgs, TagArgs};
use crate::error::exit;
use crate::format::Id;
use crate::format::snapshot::Snapshot;
use crate::ops::{select, stats as stats_op};
use crate::repo::Repository;
use crate::repo::lock::LockKind;

/// The snapshots `specs` name (`latest`, id prefixes) among those `filter` selects, or
/// all it selects when none is named; oldest first, each once.
pub(super) fn chosen(
    repo: &Repository,
    specs: &[String],
    filter: &SnapshotFilter,
) -> Result<Vec<(Id, Snapshot)>> {
    if specs.is_empty() {
        return select::list(repo, filter, &warn_stderr);
    }
    let mut out: Vec<(Id, Snapshot)> = Vec::new();
    for spec in specs {
        let hit = select::select(repo, spec, filter, &warn_stderr)?;
        if !out.iter().any(|(id, _)| *id == hit.0) {
            out.push(hit);
        }
    }
    Ok(out)
}

pub fn tag(g: &Global, a: TagArgs) -> Result<i32> {
    // Bad input fails before anything is written (a lock included).
    a.change.validate()?;
    let s = mirrored(g)?.lock(LockKind::Shared, "tag", locking(g))?;
    let snaps = chosen(s.repo(), &a.snapshots, &a.filter)?;
    let done = s.tag(&snaps, &a.change)?;
    render(g, &done, || {
        for c in &done.changed {
            println!(
                "{} -> {}  tags: {}",
                c.old.short(),
                c.new.short(),
                c.tags.join(",")
            );
        }
        println!(
            "{} snapshot(s) changed, {} already so",
            done.changed.len(),
            done.unchanged.len()
        );
    })?;
    Ok(exit::OK)
}

pub fn stats(g: &Global, a: StatsArgs) -> Result<i32> {
    let s = reading(g, "stats")?;
    let snaps = chosen(s.repo(), &a.snapshots, &a.filter)?;
    let st = stats_op::stats(s.repo(), &snaps, a.mode)?;
    render(g, &st, || {
        println!("snapshots:       {}", st.snapshots);
        println!("files:           {}", st.files);
        println!(
            "restore size:    {} ({} bytes)",
            human_bytes(st.restore_size),
            st.restore_size
        );
        if let Some(r) = &st.raw_data {
            println!(
                "distinct blobs:  {} ({} data, {} trees)",
                r.blobs, r.data_blobs, r.tree_blobs
            );
            println!(
                "raw data:        {} ({} bytes)",
                human_bytes(r.raw_bytes),
                r.raw_bytes
            );
            println!(
                "stored:          {} ({} bytes)",
                human_bytes(r.stored_bytes),
                r.stored_bytes
            );
            println!("compression:     {:.2}x", r.compression_ratio);
            println!("deduplication:   {:.2}x", r.dedup_ratio);
            if r.missing_blobs > 0 {
                println!("missing blobs:   {} (run vault check)", r.missing_blobs);
            }
        }
        if let Some(per) = &st.per_snapshot {
            println!();
            println!(
                "{:<8}  {:>10}  {:>8}  {:>12}",
                "ID", "Restore", "Files", "Unique"
            );
            for p in per {
                println!(
                    "{:<8}  {:>10}  {:>8}  {:>12}",
                    p.id.short(),
                    human_bytes(p.restore_size),
                    p.files,
                    human_bytes(p.unique_raw_bytes)
                );
            }
            println!();
        }
        println!(
            "repository:      {} in {} pack(s), {} blob(s) indexed",
            human_bytes(st.repository.pack_bytes),
            st.repository.packs,
            st.repository.blobs
        );
    })?;
    Ok(exit::OK)
}

pub fn rewrite(g: &Global, mut a: RewriteArgs) -> Result<i32> {
    // `~/` as the shell would have expanded it unquoted.
    if let Some(home) = std::env::var_os("HOME") {
        for p in &mut a.opts.excludes {
            if let Some(rest) = p.strip_prefix("~/") {
                *p = format!("{}/{rest}", home.to_string_lossy().trim_end_matches('/'));
            }
        }
    }
    // Bad input fails before anything is written (a lock included).
    crate::ops::rewrite::matcher(&a.opts.excludes)?;
    let s = mirrored(g)?;
    let s = if a.opts.dry_run {
        s.without_lock()
    } else {
        s.lock(LockKind::Shared, "rewrite", locking(g))?
    };
    let s = s.index()?;
    let snaps = chosen(s.repo(), &a.snapshots, &a.filter)?;
    let done = s.rewrite(&snaps, &a.opts)?;
    render(g, &done, || {
        for r in &done.rewritten {
            let new = r
                .rewritten
                .map(|n| n.short())
                .unwrap_or_else(|| "(dry run)".into());
            println!(
                "{} -> {}: {} path(s), {} left out",
                r.original.short(),
                new,
                r.removed.len(),
                human_bytes(r.removed_bytes)
            );
            for p in &r.removed {
                println!("  - {p}");
            }
        }
        let verb = if a.opts.dry_run {
            "would rewrite"
        } else {
            "rewrote"
        };
        println!(
            "{verb} {} snapshot(s), {} unchanged{}",
            done.rewritten.len(),
            done.unchanged.len(),
            if a.opts.forget && !a.opts.dry_run {
                "; originals forgotten (run vault prune to free their space)"
            } else {
                ""
            }
        );
    })?;
    Ok(exit::OK)
}
