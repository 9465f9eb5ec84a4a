//! mirror, sync, status and repair --from: the commands that keep several copies. The
//! rules are `ops::copies`'; this file renders what they return.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use serde_json::json;

use super::commands::{location, locking, mirrored, print_json, session, warn_stderr};
use super::progress::{Granular, Meter, Progress, human_bytes};
use super::{Global, MaintainArgs, MirrorAddArgs, MirrorCommand, UnforgetArgs};
use crate::error::{VaultError, exit};
use crate::format::mirror::MirrorDef;
use crate::ops::copies::{self, MirrorSync, Shortfall, SyncProgress};
use crate::ops::sync;
use crate::repo::Repository;
use crate::repo::location::Access;
use crate::repo::lock::LockKind;
use crate::session::Session;
use crate::session::state::Open;

/// The library's warnings, as every command prints them.
pub(super) fn warn(message: &str) {
    warn_stderr(message.to_string());
}

/// What `mirror add` / `mirror trust` record for the mirror, from their flags.
fn access_from(g: &Global, generic_credentials: bool) -> Access {
    Access {
        generic_credentials,
        insecure_http: g.insecure_http,
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

pub fn mirror(g: &Global, m: MirrorCommand) -> Result<i32> {
    let session = session(g)?;
    let repo = session.repo();
    match m {
        MirrorCommand::Add(a) => add(g, session, a),
        MirrorCommand::List => list(g, repo),
        MirrorCommand::Trust {
            name,
            generic_credentials,
        } => trust(g, repo, &name, generic_credentials),
        MirrorCommand::Untrust { name } => untrust(g, repo, &name),
        MirrorCommand::Remove { name } => {
            let def = copies::remove(repo, &name)?;
            if g.json {
                print_json(&json!({"removed": name, "url": def.url}))?;
            } else if !g.quiet {
                println!(
                    "removed mirror {name} (its copy at {} is left as it is)",
                    def.url
                );
            }
            Ok(exit::OK)
        }
    }
}

fn add(g: &Global, session: Session<Open>, a: MirrorAddArgs) -> Result<i32> {
    let access = access_from(g, a.generic_credentials);
    let new = copies::NewMirror {
        name: a.name,
        url: a.url,
        endpoint: a.endpoint,
        vendor: a.vendor,
        region: a.region,
        labels: a.labels,
        protect: a.protect.map_or(0, |p| p.as_secs()),
    };
    let def = copies::add(session.repo(), new, access)?;
    let no_sync = a.no_sync || def.name == copies::PRIMARY;
    if g.json && no_sync {
        print_json(&json!({"added": def.name, "url": def.url}))?;
    } else if !g.quiet && !g.json {
        println!("added mirror {} at {}", def.name, def.url);
    }
    if no_sync {
        return Ok(exit::OK);
    }
    drop(session);
    sync(g, Some(&def.name))
}

fn list(g: &Global, repo: &Repository) -> Result<i32> {
    let listed = copies::list(repo)?;
    if g.json {
        print_json(&json!(listed))?;
        return Ok(exit::OK);
    }
    for copies::Listed {
        def: d, trusted, ..
    } in &listed
    {
        let mut text = match trusted {
            None => String::new(),
            Some(true) => "trusted".to_string(),
            Some(false) => format!("UNTRUSTED (`vault mirror trust {}`)", d.name),
        };
        if d.protect > 0 {
            text += &format!(", protected {}", crate::units::human_period(d.protect));
        }
        println!(
            "{:<12}  {:<10}  {:<12}  {}  {text}",
            d.name, d.vendor, d.region, d.url
        );
    }
    Ok(exit::OK)
}

/// `mirror trust NAME`: the definition in force, as the user sees it printed.
fn trust(g: &Global, repo: &Repository, name: &str, generic: bool) -> Result<i32> {
    let access = access_from(g, generic);
    let def = copies::trust(repo, name, access)?;
    if g.json {
        print_json(&json!({
            "trusted": def.name, "url": def.url, "vendor": def.vendor, "region": def.region,
            "protect": def.protect,
            "generic_credentials": access.generic_credentials,
            "insecure_http": access.insecure_http,
        }))?;
    } else if !g.quiet {
        println!("{}", trusted_line(&def, access));
    }
    Ok(exit::OK)
}

fn trusted_line(def: &MirrorDef, access: Access) -> String {
    format!(
        "trusted mirror {} at {} (vendor {}, region {}{}){}{}",
        def.name,
        def.url,
        or_none(&def.vendor),
        or_none(&def.region),
        if def.protect > 0 {
            format!(", protected {}", crate::units::human_period(def.protect))
        } else {
            String::new()
        },
        if access.generic_credentials {
            "; it may use the generic credentials"
        } else {
            ""
        },
        if access.insecure_http {
            "; credentials may go to it over plain http"
        } else {
            ""
        }
    )
}

fn untrust(g: &Global, repo: &Repository, name: &str) -> Result<i32> {
    let u = copies::untrust(repo, name)?;
    if g.json {
        print_json(
            &json!({"untrusted": name, "was_trusted": u.was_trusted, "profile_trusts": u.profile_trusts}),
        )?;
    } else if !g.quiet {
        println!(
            "{}{}",
            if u.was_trusted {
                format!("mirror {name} is no longer trusted on this host")
            } else {
                format!("mirror {name} was not trusted on this host")
            },
            if u.profile_trusts {
                " (but the profile in use trusts it: edit its `trust` key)"
            } else {
                ""
            }
        );
    }
    Ok(exit::OK)
}

/// Counters for copying objects, and a progress line that shows them on a terminal.
pub(super) fn copy_progress(g: &Global) -> (Arc<sync::Counters>, Progress) {
    let counters = Arc::new(sync::Counters::default());
    let c = counters.clone();
    let (mut meter, mut written) = (Meter::new(), Granular::default());
    let progress = Progress::start(g.quiet || g.json, move || {
        let total = c.total.load(Ordering::Relaxed);
        let moved = crate::repo::limits::transferred().1;
        let done = written.done(moved, c.bytes.load(Ordering::Relaxed), total);
        format!(
            "{} objects copied, {}",
            c.objects.load(Ordering::Relaxed),
            meter.line(done, Some(total))
        )
    });
    (counters, progress)
}

/// Shows each mirror's sync as it ends.
struct SyncLines<'a> {
    g: &'a Global,
    progress: Option<Progress>,
}

impl SyncProgress for SyncLines<'_> {
    fn start(&mut self, _mirror: &str) -> Arc<sync::Counters> {
        let (counters, progress) = copy_progress(self.g);
        self.progress = Some(progress);
        counters
    }

    fn end(&mut self, m: &MirrorSync) {
        if let Some(p) = self.progress.take() {
            p.finish();
        }
        let secs = m.seconds;
        match &m.result {
            Ok(rep) => {
                if !self.g.quiet && !self.g.json {
                    println!(
                        "{}: copied {} objects ({}) in {secs:.1}s ({:.0} objects/s, {}/s), deleted {}; up to date",
                        m.mirror,
                        rep.copied,
                        human_bytes(rep.bytes),
                        rep.copied as f64 / secs,
                        human_bytes((rep.bytes as f64 / secs) as u64),
                        rep.deleted
                    );
                }
                if rep.waiting > 0 && !self.g.quiet && !self.g.json {
                    println!(
                        "{}: protected; {} objects the primary removed are kept there until `vault maintain --mirror {}`",
                        m.mirror, rep.waiting, m.mirror
                    );
                }
                for bad in &rep.damaged_at_source {
                    warn_stderr(format!(
                        "{bad} is damaged here and was not copied to {}: `vault repair --from {}`",
                        m.mirror, m.mirror
                    ));
                }
            }
            Err(e) => {
                eprintln!(
                    "vault: mirror {} skipped: {}; it catches up at the next sync",
                    m.mirror,
                    crate::error::one_line(e)
                );
                for detail in crate::error::details(e) {
                    log::info!("detail: {detail}");
                }
            }
        }
    }
}

pub fn sync(g: &Global, only: Option<&str>) -> Result<i32> {
    let s = session(g)?
        .lock(LockKind::Shared, "sync", locking(g))?
        .index()?;
    let mut lines = SyncLines { g, progress: None };
    let outcome = copies::sync_mirrors(s.repo(), only, &warn, &mut lines)?;
    if g.json {
        print_json(&json!({ "mirrors": outcome.mirrors }))?;
    }
    Ok(if outcome.complete() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

pub fn status(g: &Global, export_max_age: &str) -> Result<i32> {
    let max_age = crate::ops::forget::parse_span(export_max_age)
        .map_err(|e| VaultError::Usage(format!("--export-max-age: {e}")))?;
    let s = session(g)?.status(max_age)?;
    let warnings: Vec<String> = s.shortfalls.iter().map(shortfall_line).collect();
    let summary = s.to_string();
    if g.json {
        print_json(&json!({"copies": s.copies, "summary": summary, "warnings": warnings}))?;
        return Ok(exit::OK);
    }
    for c in &s.copies {
        println!(
            "{:<12}  {:<10}  {:<12}  {}\n              {}",
            c.name,
            c.vendor,
            c.region,
            c.state(),
            c.url
        );
    }
    println!("{summary}");
    for w in warnings {
        warn_stderr(w);
    }
    Ok(exit::OK)
}

fn shortfall_line(f: &Shortfall) -> String {
    match f {
        Shortfall::FewCopies { complete } => format!(
            "only {complete} complete cop{}: keep at least 3 (add mirrors, then `vault sync`)",
            if *complete == 1 { "y" } else { "ies" }
        ),
        Shortfall::SingleVendor => "a single vendor (or none recorded) holds the complete copies: one account closure loses them all (`vault mirror add ... --vendor`)".into(),
        Shortfall::SingleRegion => "a single region (or none recorded) holds the complete copies: one disaster loses them all (`--region`)".into(),
        Shortfall::NoExport => "no offline export on record: `vault export /media/archive-disk`".into(),
        Shortfall::OldExport(e) => format!(
            "the newest offline export ({}) is {} days old: refresh it with `vault export {}`",
            e.label, e.days, e.destination
        ),
    }
}

/// Copies back what this repository lacks or holds damaged, from a mirror named in its
/// list or given by URL (the only way when this repository no longer opens).
pub fn repair_from(g: &Global, from: &str) -> Result<i32> {
    let (loc, _) = location(g)?;
    let opened = session(g);
    let source = copies::repair_source(opened.as_ref().map(|s| s.repo()), &loc, from)?;
    // A repository that does not open cannot hold a lock either.
    let locked = match opened {
        Ok(s) => Some(s.lock(LockKind::Shared, "repair", locking(g))?),
        Err(_) => None,
    };
    let secret = |at: &str| {
        super::password::secret(
            g.password_file.as_deref(),
            g.password_command.as_deref(),
            at,
        )
    };
    let r = match locked {
        Some(mut s) => s.repair_from(&source, &secret)?,
        None => copies::repair_from(&loc, None, &source, &secret, &warn)?,
    };
    for bad in &r.damaged_at_source {
        warn_stderr(format!("{bad} is damaged on {from} too: not copied"));
    }
    if g.json {
        print_json(&serde_json::to_value(&r)?)?;
    } else if !g.quiet {
        println!(
            "repair from {from}: copied back {} objects ({})",
            r.copied,
            human_bytes(r.bytes)
        );
    }
    Ok(if r.damaged_at_source.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

pub fn maintain(g: &Global, a: &MaintainArgs) -> Result<i32> {
    let s = session(g)?
        .lock(LockKind::Shared, "maintain", locking(g))?
        .index()?;
    let results = copies::maintain(s.repo(), a.mirror.as_deref(), a.dry_run, &warn)?;
    if g.json {
        let v: Vec<_> = results
            .iter()
            .map(|(name, r)| match r {
                Ok(m) => json!({"mirror": name, "ok": true, "report": m}),
                Err(e) => json!({"mirror": name, "ok": false, "error": crate::error::one_line(e)}),
            })
            .collect();
        print_json(&json!({ "mirrors": v }))?;
    }
    let mut code = exit::OK;
    for (name, r) in &results {
        match r {
            Ok(m) if !g.quiet && !g.json => println!("{}", maintained_line(m)),
            Ok(_) => {}
            Err(e) => {
                code = exit::PARTIAL;
                if !g.json {
                    eprintln!(
                        "vault: mirror {name} not maintained: {}",
                        crate::error::one_line(e)
                    );
                }
            }
        }
    }
    Ok(code)
}

fn maintained_line(m: &copies::Maintained) -> String {
    let verb = if m.dry_run { "would delete" } else { "deleted" };
    let mut line = format!("{}: {verb} {} objects", m.mirror, m.deleted);
    if m.protect > 0 {
        line += &format!(
            "; protected {}: {} wait",
            crate::units::human_period(m.protect),
            m.waiting
        );
        if let (Some(oldest), Some(due)) = (&m.oldest_waiting, &m.next_due) {
            line += &format!(" (oldest recorded {oldest}, due {due})");
        }
    }
    if let Some(n) = m.lock_extended {
        let verb = if m.dry_run {
            "would extend"
        } else {
            "extended"
        };
        line += &format!("; Object Lock {verb} on {n} objects");
    }
    line
}

pub fn unforget(g: &Global, a: &UnforgetArgs) -> Result<i32> {
    let session = mirrored(g)?;
    let session = if a.dry_run {
        session.without_lock()
    } else {
        session.lock(LockKind::Shared, "unforget", locking(g))?
    };
    let mut session = session.index_for_backup(a.dry_run)?;
    let done = session.unforget(&a.from, &a.snapshots, a.dry_run)?;
    if g.json {
        print_json(&json!(done))?;
        return Ok(exit::OK);
    }
    if done.snapshots.is_empty() && !g.quiet {
        println!("no forgotten snapshots at {} to bring back", a.from);
    }
    for b in &done.snapshots {
        if g.quiet {
            continue;
        }
        let what = format!(
            "{} of {} at {} ({})",
            b.from.short(),
            b.host,
            b.time,
            b.paths.join(", ")
        );
        match &b.id {
            Some(id) => println!("brought back snapshot {what} as {}", id.short()),
            None => println!("would bring back snapshot {what}"),
        }
    }
    if !done.dry_run && !g.quiet && !done.snapshots.is_empty() {
        println!(
            "{} blobs ({}) written again",
            done.blobs_copied,
            human_bytes(done.bytes_written)
        );
    }
    Ok(exit::OK)
}
