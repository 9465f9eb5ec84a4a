//! forget and prune.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Result, anyhow};
use serde_json::json;

use super::commands::{ensure_held, filter, open_indexed, print_json, take_lock, warn_stderr};
use super::progress::{Progress, human_bytes};
use super::{ForgetArgs, Global, PruneArgs, PruneOpts};
use crate::error::{VaultError, exit};
use crate::format::Id;
use crate::ops::forget::{self, Policy};
use crate::ops::{prune as prune_op, select};
use crate::repo::lock::LockKind;
use crate::repo::{FileKind, Repository};

fn span(flag: &str, v: &Option<String>) -> Result<Option<jiff::Span>> {
    v.as_deref()
        .map(|s| {
            forget::parse_span(s).map_err(|e| VaultError::Usage(format!("--{flag}: {e}")).into())
        })
        .transpose()
}

pub fn policy(a: &ForgetArgs) -> Result<Policy> {
    let mut p = Policy {
        last: a.keep_last,
        within: span("keep-within", &a.keep_within)?,
        tags: a.keep_tag.clone(),
        ..Default::default()
    };
    let counts = [
        a.keep_hourly,
        a.keep_daily,
        a.keep_weekly,
        a.keep_monthly,
        a.keep_yearly,
    ];
    let spans = [
        &a.keep_within_hourly,
        &a.keep_within_daily,
        &a.keep_within_weekly,
        &a.keep_within_monthly,
        &a.keep_within_yearly,
    ];
    for ((period, n), s) in forget::PERIODS.iter().zip(counts).zip(spans) {
        if let Some(n) = n {
            p.periods.insert(*period, n);
        }
        if let Some(sp) = span(&format!("keep-within-{}", period.name()), s)? {
            p.within_periods.insert(*period, sp);
        }
    }
    Ok(p)
}

/// Snapshots named by id prefixes; each must name exactly one.
pub(super) fn by_ids(repo: &Repository, ids: &[String]) -> Result<Vec<Id>> {
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
                [] => Err(anyhow!(
                    "snapshot {spec}: no such snapshot (see `vault snapshots`)"
                )),
                _ => Err(VaultError::Usage(format!(
                    "snapshot {spec:?}: matches {} snapshots; give more digits",
                    hits.len()
                ))
                .into()),
            }
        })
        .collect()
}

pub fn forget(g: &Global, a: ForgetArgs) -> Result<i32> {
    let repo = open_indexed(g)?;
    let p = policy(&a)?;
    if p.is_empty() == a.ids.is_empty() {
        return Err(VaultError::Usage(
            "give either snapshot ids or a policy (--keep-last, --keep-daily, --keep-within, ...), not both or neither".into(),
        )
        .into());
    }
    let _lock = if a.dry_run {
        None
    } else {
        take_lock(g, &repo, LockKind::Shared, "forget")?
    };
    let remove: Vec<Id> = if a.ids.is_empty() {
        let snaps = select::list(&repo, &filter(&a.filter), &warn_stderr)?;
        let groups = forget::apply(&p, &snaps, a.group_by, &jiff::tz::TimeZone::system());
        report_groups(g, &groups, a.dry_run)?;
        groups
            .iter()
            .flat_map(|gr| &gr.snapshots)
            .filter(|d| !d.keep)
            .filter_map(|d| Id::from_hex(&d.id))
            .collect()
    } else {
        by_ids(&repo, &a.ids)?
    };
    if !a.dry_run && !remove.is_empty() {
        ensure_held(&_lock)?;
        // The record first: it is what lets sync remove these from the mirrors too.
        repo.save_forget_record(&remove)?;
        for id in &remove {
            repo.backend.delete(&FileKind::Snapshot.path(id))?;
        }
    }
    if !g.quiet && !g.json {
        let verb = if a.dry_run { "would remove" } else { "removed" };
        println!("{verb} {} snapshot(s)", remove.len());
    }
    if a.prune {
        drop(_lock);
        return run_prune(g, &a.prune_opts, a.dry_run);
    }
    Ok(exit::OK)
}

fn report_groups(g: &Global, groups: &[forget::Group], dry_run: bool) -> Result<()> {
    if g.json {
        return print_json(&json!({"dry_run": dry_run, "groups": groups}));
    }
    if g.quiet {
        return Ok(());
    }
    for gr in groups {
        let mut what = BTreeMap::new();
        if let Some(h) = &gr.host {
            what.insert("host", h.clone());
        }
        if let Some(p) = &gr.paths {
            what.insert("paths", p.join(" "));
        }
        if let Some(t) = &gr.tags {
            what.insert("tags", t.join(","));
        }
        let head: Vec<String> = what.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "{}:",
            if head.is_empty() {
                "all snapshots".into()
            } else {
                head.join(", ")
            }
        );
        for d in &gr.snapshots {
            let when = d
                .time
                .parse::<jiff::Timestamp>()
                .map(select::local_time)
                .unwrap_or_else(|_| d.time.clone());
            println!(
                "  {:<6}  {}  {}  {}",
                if d.keep { "keep" } else { "remove" },
                &d.id[..8],
                when,
                d.reasons.join(", ")
            );
        }
    }
    Ok(())
}

pub fn prune(g: &Global, a: PruneArgs) -> Result<i32> {
    run_prune(g, &a.opts, a.dry_run)
}

fn run_prune(g: &Global, o: &PruneOpts, dry_run: bool) -> Result<i32> {
    let mut repo = open_indexed(g)?;
    // Two-phase prune runs beside backups; only other prunes and exclusive operations
    // wait for it. Before format 3, prune deletes at once and excludes everything.
    let kind = if repo.two_phase() {
        LockKind::Prune
    } else {
        LockKind::Exclusive
    };
    let _lock = take_lock(g, &repo, kind, "prune")?;
    if repo.two_phase() {
        refuse_older_vaults(&repo)?;
    }
    // What it decides from must be read after the lock is held (two-phase prune reads
    // the index again itself, after listing the snapshots).
    if !repo.two_phase() {
        repo.load_index()?;
    }
    let opts = prune_op::PruneOptions {
        max_unused: o.max_unused,
        max_repack: o.max_repack,
        dry_run,
        grace: o.grace,
    };
    let counters = Arc::new(prune_op::Counters::default());
    let c = counters.clone();
    let progress = Progress::start(g.quiet || g.json, move || {
        format!(
            "{} trees read, {} packs repacked",
            c.trees.load(Ordering::Relaxed),
            c.packs_repacked.load(Ordering::Relaxed)
        )
    });
    let held = || ensure_held(&_lock);
    let r = prune_op::prune(&mut repo, &opts, &counters, &held);
    progress.finish();
    let s = r?;
    if g.json {
        print_json(&json!({"dry_run": dry_run, "stats": s}))?;
    } else if !g.quiet && s.two_phase {
        print_two_phase(&s, dry_run);
    } else if !g.quiet {
        println!(
            "prune{}: {} snapshots use {} blobs; {} of {} packs deleted, {} repacked ({}) into {} new; {} {}; {} unused left",
            if dry_run { " (dry run)" } else { "" },
            s.snapshots,
            s.blobs_used,
            s.packs_deleted,
            s.packs,
            s.packs_repacked,
            human_bytes(s.bytes_repacked),
            s.packs_written,
            human_bytes(s.bytes_freed),
            if dry_run { "would be freed" } else { "freed" },
            human_bytes(s.bytes_unused_after)
        );
    }
    Ok(exit::OK)
}

/// Two-phase prune's summary; a dry run also says each pack's state.
fn print_two_phase(s: &prune_op::PruneStats, dry_run: bool) {
    let verb = |done: &'static str, would: &'static str| if dry_run { would } else { done };
    if dry_run {
        for l in &s.plan {
            let mut line = format!(
                "  {}  {:>9}  {}",
                &l.pack.to_hex()[..8],
                human_bytes(l.size),
                l.state.describe()
            );
            if let Some(t) = &l.since {
                line.push_str(&format!(", since {t}"));
            }
            if let Some(t) = &l.after {
                line.push_str(&format!(", next step after {t}"));
            }
            println!("{line}");
        }
    }
    println!(
        "prune{}: {} snapshots use {} blobs in {} packs; {} {} ({}), {} {}, {} {}, {} {}; {} unused left (marked packs go once the grace period has passed)",
        if dry_run { " (dry run)" } else { "" },
        s.snapshots,
        s.blobs_used,
        s.packs,
        s.packs_deleted,
        verb("packs deleted", "packs would be deleted"),
        human_bytes(s.bytes_freed),
        s.packs_repacked,
        verb("repacked", "would be repacked"),
        s.packs_marked,
        verb("marked", "would be marked"),
        s.packs_revived,
        verb("revived", "would be revived"),
        human_bytes(s.bytes_unused_after)
    );
}

pub fn upgrade(g: &Global) -> Result<i32> {
    let mut repo = super::commands::open(g)?;
    let _lock = take_lock(g, &repo, LockKind::Exclusive, "upgrade")?;
    let before = repo.upgrade()?;
    if g.json {
        print_json(&json!({"format": repo.format, "was": before}))?;
    } else if !g.quiet {
        match before {
            Some(v) => println!(
                "repository upgraded from format {v} to {}: prune now runs beside backups",
                repo.format
            ),
            None => println!("repository is already format {}", repo.format),
        }
    }
    Ok(exit::OK)
}

/// A vault older than format 3 backs up without confirming its packs, relying on prune's
/// exclusive lock: two-phase prune does not run beside one.
fn refuse_older_vaults(repo: &crate::repo::Repository) -> Result<()> {
    let locks = crate::repo::lock::list_locks(&repo.backend, &repo.keys)?;
    let older = |l: &&crate::repo::lock::LockInfo| {
        (l.from_older_vault() || l.lock.is_none()) && !l.is_dead()
    };
    match locks.iter().find(older) {
        Some(l) => Err(VaultError::Locked(format!(
            "{} is from a vault older than format 3 (or unreadable), which relies on prune not running beside it; wait for it, and upgrade vault on that host",
            l.describe()
        ))
        .into()),
        None => Ok(()),
    }
}
