//! `vault copy --from`: the source opened with its own secret, its snapshots chosen as
//! other commands choose them, and the copies rendered.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;

use super::commands::{locking, mirrored, render, reporter};
use super::history::chosen;
use super::progress::{Progress, human_bytes, packs_tail};
use super::{CopyArgs, Global, password};
use crate::error::{VaultError, exit};
use crate::meter::Meter;
use crate::ops::backup::{self, copy::CopyResult};
use crate::repo::lock::LockKind;
use crate::session::Session;

pub fn copy(g: &Global, a: CopyArgs) -> Result<i32> {
    let secret = || {
        password::source_secret(
            a.from_password_file.as_deref(),
            a.from_password_command.as_deref(),
            &a.from,
        )
    };
    // The source first: a wrong --from or password fails before this repository is
    // locked or written.
    let src = Session::open(&a.from, secret, reporter())?.with_mirrors(g.quiet);
    let dest = mirrored(g)?;
    if src.repo().config.id == dest.repo().config.id {
        return Err(VaultError::Usage(format!(
            "vault copy: --from {} is this repository (or a mirror of it); mirrors are kept by vault sync",
            a.from
        ))
        .into());
    }
    let src = src
        .lock(LockKind::Shared, "copy (source)", locking(g))?
        .index()?;
    let snaps = chosen(src.repo(), &a.snapshots, &a.filter)?;
    let dest = if a.dry_run {
        dest.without_lock()
    } else {
        dest.lock(LockKind::Shared, "copy", locking(g))?
    };
    let mut dest = dest.index_for_backup(a.dry_run)?;

    let counters = Arc::new(backup::Counters::default());
    let c = counters.clone();
    let mut meter = Meter::new();
    let progress = Arc::new(Progress::start(g.quiet || g.json, move || {
        let total = Some(c.to_read.load(Ordering::Relaxed));
        let read = c.bytes_read.load(Ordering::Relaxed);
        format!(
            "copied {}; {} new{}",
            meter.line(read, total),
            human_bytes(c.bytes_added.load(Ordering::Relaxed)),
            packs_tail(read, total)
        )
    }));
    let p = progress.clone();
    let warn: backup::Warn = Arc::new(move |m: String| p.println(&format!("vault: {m}")));
    let r = dest.copy(&src, &snaps, a.dry_run, counters, warn);
    if let Ok(p) = Arc::try_unwrap(progress) {
        p.finish();
    }
    let done = r?;
    render(g, &done, || text(&done, a.dry_run))?;
    Ok(if done.errors > 0 {
        exit::PARTIAL
    } else {
        exit::OK
    })
}

fn text(done: &CopyResult, dry_run: bool) {
    let mut copied = 0;
    for c in &done.snapshots {
        let what = match (c.already, c.copy) {
            (true, Some(id)) => format!("already here as {}", id.short()),
            (_, Some(id)) => {
                copied += 1;
                format!("copied to {}", id.short())
            }
            _ => "would be copied".to_string(),
        };
        println!(
            "{} {} {} {}: {what}",
            c.source.short(),
            c.time,
            c.host,
            c.paths.join(" ")
        );
    }
    let here = done.snapshots.iter().filter(|c| c.already).count();
    if dry_run {
        let would = done.snapshots.len() - here;
        println!("would copy {would} snapshot(s), {here} already here; wrote nothing");
        return;
    }
    println!(
        "copied {copied} snapshot(s), {here} already here; {} file(s) read and cut anew, {} new ({} stored){}",
        done.files_read,
        human_bytes(done.bytes_added),
        human_bytes(done.bytes_stored),
        if done.errors > 0 {
            format!(
                "; {} file(s) left out (unreadable in the source)",
                done.errors
            )
        } else {
            String::new()
        }
    );
}
