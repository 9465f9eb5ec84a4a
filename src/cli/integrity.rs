//! The integrity commands: check, audit, verify, repair.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use serde_json::json;

use super::commands::{location, locking, render, session, warn_stderr, with_progress};
use super::progress::{Granular, Meter, human_bytes};
use super::{AuditArgs, CheckArgs, Global, RepairArgs, RepairCommand, VerifyArgs};
use crate::error::{VaultError, exit};
use crate::ops::problem::Problem;
use crate::ops::subset::Subset;
use crate::ops::{audit, check, repair, restore, select, verify};
use crate::repo::Repository;
use crate::repo::limits::transferred;
use crate::repo::lock::LockKind;
use crate::session::Session;
use crate::session::state::Indexed;

/// Opens the repository with its index read from storage, never from the local cache
/// (what is checked must be what is stored), locked shared for `command`.
fn open_to_check(g: &Global, command: &str) -> Result<Session<Indexed>> {
    Ok(session(g)?
        .uncached()
        .lock(LockKind::Shared, command, locking(g))?
        .index_to_check()?)
}

fn print_findings(g: &Global, problems: &[Problem], warnings: &[String]) {
    if g.json {
        return;
    }
    for p in problems {
        eprintln!("vault: error: {}", p.line());
    }
    if !g.quiet {
        for w in warnings {
            eprintln!("vault: warning: {w}");
        }
    }
}

/// What was left unread on a cold copy, in one line.
fn print_skipped(g: &Global, skipped: &Option<String>) {
    if let Some(note) = skipped.as_ref().filter(|_| !g.json && !g.quiet) {
        eprintln!("vault: note: {note}");
    }
}

/// Check judges this copy alone; for each damaged object it also says which mirror holds
/// it intact, so the way out (`vault repair --from`) is plain.
fn note_intact_copies(repo: &Repository, problems: &mut [Problem]) {
    let intact = crate::ops::copies::intact_copies(repo, problems, &super::mirrors::warn);
    for (p, name) in problems.iter_mut().zip(intact) {
        if let Some(name) = name {
            p.what = format!(
                "{} (intact on mirror {name}: `vault repair --from {name}`)",
                p.what
            );
        }
    }
}

/// The start of check's and audit's summary line.
fn head(problems: usize) -> String {
    if problems == 0 {
        "no errors".into()
    } else {
        format!("{problems} error(s) found")
    }
}

fn verdict(problems: usize) -> i32 {
    if problems == 0 { exit::OK } else { exit::ERROR }
}

pub fn check(g: &Global, a: CheckArgs) -> Result<i32> {
    let session = open_to_check(g, "check")?;
    let repo = session.repo();
    let subset = if a.read_data {
        Some(Subset::All)
    } else {
        a.read_data_subset
    };
    let opts = check::CheckOptions {
        read_data: subset.clone(),
    };
    let counters = Arc::new(check::Counters::default());
    let c = counters.clone();
    let (mut meter, mut granular) = (Meter::new(), Granular::default());
    let mut r = with_progress(
        g,
        move || {
            let total = c.bytes_to_read.load(Ordering::Relaxed);
            let read = if total > 0 {
                let done =
                    granular.done(transferred().0, c.bytes_read.load(Ordering::Relaxed), total);
                format!(
                    ", {} packs read, {}",
                    c.packs_read.load(Ordering::Relaxed),
                    meter.line(done, Some(total))
                )
            } else {
                String::new()
            };
            format!("{} trees{read}", c.trees.load(Ordering::Relaxed))
        },
        || check::check(repo, &opts, &counters),
    )?;
    note_intact_copies(repo, &mut r.problems);
    print_findings(g, &r.problems, &r.warnings);
    print_skipped(g, &r.skipped);
    render(g, &json!({"healthy": r.healthy(), "report": r}), || {
        let s = &r.stats;
        let read = match &subset {
            _ if r.skipped.is_some() => "; trees and data not read (cold copy)".to_string(),
            Some(sub) => format!(
                "; read {} ({} packs, {})",
                sub.describe(),
                s.packs_read,
                human_bytes(s.bytes_read)
            ),
            None => String::new(),
        };
        let head = head(r.problems.len());
        let marks = if s.packs_marked + s.packs_deleting > 0 {
            format!(
                " ({} marked by prune, {} being deleted)",
                s.packs_marked, s.packs_deleting
            )
        } else {
            String::new()
        };
        println!(
            "check: {head}: {} snapshots, {} trees, {} packs{marks}, {} blobs, {} index files, {} keys{read}",
            s.snapshots, s.trees, s.packs, s.blobs, s.index_files, s.keys
        );
    })?;
    Ok(verdict(r.problems.len()))
}

pub fn audit(g: &Global, a: AuditArgs) -> Result<i32> {
    let (loc, _) = location(g)?;
    let counters = Arc::new(audit::Counters::default());
    let c = counters.clone();
    let (mut meter, mut read) = (Meter::new(), Granular::default());
    let line = move || {
        let total = c.bytes_to_read.load(Ordering::Relaxed);
        let done = read.done(transferred().0, c.bytes_read.load(Ordering::Relaxed), total);
        format!(
            "{} objects hashed, {}",
            c.objects.load(Ordering::Relaxed),
            meter.line(done, Some(total))
        )
    };
    let subset = a.read_data_subset.unwrap_or(Subset::All);
    let r = with_progress(g, line, || audit::audit_location(&loc, &subset, &counters))?;
    print_findings(g, &r.problems, &r.warnings);
    render(
        g,
        &json!({"healthy": r.problems.is_empty(), "report": r}),
        || {
            for e in &r.extra {
                println!("extra: {e} (not a vault object)");
            }
            let head = head(r.problems.len());
            println!(
                "audit: {head}: {} objects, {} hashed ({}), {} manifests listing {} packs",
                r.stats.objects,
                r.stats.objects_hashed,
                human_bytes(r.stats.bytes_read),
                r.stats.manifests,
                r.stats.packs_listed
            );
        },
    )?;
    Ok(verdict(r.problems.len()))
}

pub fn verify(g: &Global, a: VerifyArgs) -> Result<i32> {
    let session = open_to_check(g, "verify")?;
    let repo = session.repo();
    let snaps = select::list(repo, &a.filter, &warn_stderr)?;
    let chosen = if snaps.is_empty() && a.snapshot == "latest" {
        None
    } else {
        let (id, s) = select::select(repo, &a.snapshot, &a.filter, &|_| {})?;
        Some((id, s.tree))
    };
    let opts = a.opts;
    let cc = Arc::new(check::Counters::default());
    let rc = Arc::new(restore::Counters::default());
    let (c1, c2) = (cc.clone(), rc.clone());
    let (mut reading, mut restoring) = (Meter::new(), Meter::new());
    let mut read = Granular::default();
    let r = with_progress(
        g,
        move || {
            let restored = c2.bytes.load(Ordering::Relaxed);
            let total = c2.total.load(Ordering::Relaxed);
            if restored == 0 && total == 0 {
                // Still checking.
                let to_read = c1.bytes_to_read.load(Ordering::Relaxed);
                let objects = c1.bytes_read.load(Ordering::Relaxed);
                format!(
                    "{} trees checked, {} packs read, {}",
                    c1.trees.load(Ordering::Relaxed),
                    c1.packs_read.load(Ordering::Relaxed),
                    reading.line(read.done(transferred().0, objects, to_read), Some(to_read))
                )
            } else {
                format!(
                    "{} files restored to compare, {}",
                    c2.files.load(Ordering::Relaxed),
                    restoring.line(restored, Some(total))
                )
            }
        },
        || verify::verify(repo, chosen, &opts, &cc, rc),
    )?;
    print_findings(g, &r.check.problems, &r.check.warnings);
    print_skipped(g, &r.check.skipped);
    for e in &r.restore_errors {
        if !g.json {
            eprintln!("vault: error: restore: {e}");
        }
    }
    render(g, &r, || {
        let restored = match &r.snapshot {
            Some(id) if r.restore_skipped => {
                format!("snapshot {} not restored (cold copy)", &id[..8])
            }
            Some(id) => format!(
                "restored {} of snapshot {} ({} files, {}){}",
                if opts.sample.is_some() {
                    "a sample"
                } else {
                    "all"
                },
                &id[..8],
                r.files_restored,
                human_bytes(r.bytes_restored),
                if r.restore_errors.is_empty() {
                    ", every byte matched".to_string()
                } else {
                    format!(", {} not restored or different", r.restore_errors.len())
                }
            ),
            None => "no snapshot to restore".to_string(),
        };
        println!(
            "verify: {}: check {} ({} snapshots, read {} = {} packs); {restored}",
            if r.ok { "OK" } else { "FAILED" },
            if r.check.healthy() {
                "passed".to_string()
            } else {
                format!("found {} error(s)", r.check.problems.len())
            },
            r.check.stats.snapshots,
            opts.read_data.describe(),
            r.check.stats.packs_read,
        );
    })?;
    Ok(if r.ok { exit::OK } else { exit::ERROR })
}

pub fn repair(g: &Global, r: RepairArgs) -> Result<i32> {
    let r = match (r.from, r.command) {
        (Some(from), _) => return super::mirrors::repair_from(g, &from),
        (None, Some(c)) => c,
        (None, None) => {
            return Err(VaultError::Usage(
                "repair what? `vault repair --from MIRROR`, `vault repair index` or `vault repair snapshots`".into(),
            )
            .into());
        }
    };
    let session = session(g)?.uncached();
    match r {
        RepairCommand::Index => {
            let res = session
                .lock(LockKind::Exclusive, "repair index", locking(g))?
                .repair_index()?;
            for u in &res.unreadable_headers {
                eprintln!("vault: warning: {u}");
            }
            render(g, &res, || {
                println!(
                    "repair index: {} packs, {} blobs in {} new index file(s); {} old removed",
                    res.packs, res.blobs, res.index_files_written, res.index_files_removed
                );
            })?;
            Ok(exit::OK)
        }
        RepairCommand::Snapshots(opts) => {
            let session = if opts.dry_run {
                session.without_lock()
            } else {
                session.lock(LockKind::Shared, "repair snapshots", locking(g))?
            };
            let session = session.index()?;
            let repo = session.repo();
            let res = repair::repair_snapshots(repo, &opts)?;
            for u in &res.unreadable {
                eprintln!("vault: warning: cannot repair: {u}");
            }
            render(g, &res, || {
                for s in &res.repaired {
                    let new = match &s.repaired {
                        Some(id) => format!("-> {}", &id[..8]),
                        None => "(dry run)".to_string(),
                    };
                    println!("snapshot {} {new}: dropped", &s.original[..8]);
                    for d in &s.dropped {
                        println!("  {d}");
                    }
                }
                println!(
                    "repair snapshots: {} checked, {} {}",
                    res.snapshots_checked,
                    res.repaired.len(),
                    if opts.dry_run {
                        "would be repaired"
                    } else {
                        "repaired (tagged `repaired`; originals kept)"
                    }
                );
            })?;
            Ok(exit::OK)
        }
    }
}
