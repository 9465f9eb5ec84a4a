//! forget and prune.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use serde_json::json;

use super::commands::{locking, mirrored, print_json, session, with_progress};
use super::progress::human_bytes;
use super::{ForgetArgs, Global, PruneArgs, SnapshotFilter};
use crate::error::{VaultError, exit};
use crate::format::Id;
use crate::ops::forget::{self, GroupBy, Policy};
use crate::ops::keep::KeepOptions;
use crate::ops::{prune as prune_op, select};
use crate::repo::lock::LockKind;

/// What a forget removes: the snapshots a policy does not keep, or those named.
enum Removal<'a> {
    Policy(Policy, GroupBy, &'a SnapshotFilter),
    Ids(&'a [String]),
}

const EITHER: &str = "give either snapshot ids or a policy (--keep-last, --keep-daily, --keep-within, ...), not both or neither";

pub fn forget(g: &Global, a: ForgetArgs) -> Result<i32> {
    // Bad input fails before anything is written (a lock included).
    let policy = a.keep.policy()?;
    if policy.is_empty() == a.ids.is_empty() {
        return Err(VaultError::Usage(EITHER.into()).into());
    }
    let removal = if a.ids.is_empty() {
        Removal::Policy(policy, a.keep.group_by, &a.filter)
    } else {
        Removal::Ids(&a.ids)
    };
    let code = forget_now(g, removal, a.dry_run)?;
    if a.prune {
        return run_prune(g, &a.prune_opts, a.dry_run);
    }
    Ok(code)
}

/// `vault run`'s forget: the profile's retention over every snapshot.
pub(super) fn forget_by_policy(g: &Global, keep: &KeepOptions) -> Result<i32> {
    let policy = keep.policy()?;
    if policy.is_empty() {
        return Err(VaultError::Usage(EITHER.into()).into());
    }
    let all = SnapshotFilter::default();
    forget_now(g, Removal::Policy(policy, keep.group_by, &all), false)
}

fn forget_now(g: &Global, removal: Removal, dry_run: bool) -> Result<i32> {
    let s = mirrored(g)?;
    let s = if dry_run {
        s.without_lock()
    } else {
        s.lock(LockKind::Shared, "forget", locking(g))?
    };
    // Not needed to choose, but read so that a damaged or forged index refuses forget
    // before it removes anything. Data blobs' places are not kept: forget's memory
    // does not grow with the data stored.
    let s = s.index_trees()?;
    let remove: Vec<Id> = match removal {
        Removal::Policy(p, group_by, f) => {
            let groups = s.plan_forget(&p, f, group_by)?;
            report_groups(g, &groups, dry_run)?;
            forget::decided(&groups, false)
        }
        Removal::Ids(ids) => select::by_ids(s.repo(), ids)?,
    };
    if !dry_run {
        s.forget(&remove)?;
    }
    if !g.quiet && !g.json {
        let verb = if dry_run { "would remove" } else { "removed" };
        println!("{verb} {} snapshot(s)", remove.len());
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

fn run_prune(g: &Global, o: &prune_op::PruneOptions, dry_run: bool) -> Result<i32> {
    let s = mirrored(g)?;
    let opts = prune_op::PruneOptions {
        dry_run,
        ..o.clone()
    };
    let counters = Arc::new(prune_op::Counters::default());
    let c = counters.clone();
    let s = with_progress(
        g,
        move || {
            format!(
                "{} trees read, {} packs repacked",
                c.trees.load(Ordering::Relaxed),
                c.packs_repacked.load(Ordering::Relaxed)
            )
        },
        || s.prune(&opts, &counters, locking(g)),
    )?;
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
    let mut s = session(g)?.lock(LockKind::Exclusive, "upgrade", locking(g))?;
    let before = s.upgrade()?;
    let repo = s.repo();
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
