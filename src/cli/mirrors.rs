//! mirror, sync, status and repair --from: the commands that keep several copies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Result, anyhow};
use serde_json::json;

use super::commands::{location, open, print_json, take_lock, warn_stderr};
use super::progress::{Granular, Meter, Progress, human_bytes};
use super::trust::{Store, Verdict};
use super::{Global, MirrorAddArgs, MirrorCommand};
use crate::error::{VaultError, exit};
use crate::format::mirror::{MIRROR_VERSION, MirrorDef};
use crate::ops::sync;
use crate::repo::location::Access;
use crate::repo::lock::LockKind;
use crate::repo::repository::now_rfc3339;
use crate::repo::{Backend, Repository};

/// The name that describes the primary itself (vendor, region) rather than a mirror.
const PRIMARY: &str = "primary";

/// The mirrors in force (not `primary`), each with this host's verdict on it.
fn judged(repo: &Repository) -> Result<Vec<(MirrorDef, Verdict)>> {
    let store = Store::load(&repo.config.id)?;
    Ok(repo
        .mirror_defs()?
        .into_iter()
        .filter(|d| d.name != PRIMARY)
        .map(|d| {
            let v = store.verdict(&d);
            (d, v)
        })
        .collect())
}

/// Why an untrusted mirror is not used, and what the user does about it: one line.
fn untrusted_line(d: &MirrorDef, redefined: bool) -> String {
    let why = if redefined {
        "was redefined since this host trusted it"
    } else {
        "is not trusted on this host"
    };
    format!(
        "mirror {} ({}) {why} and is skipped: check its URL, then `vault mirror trust {}`",
        d.name, d.url, d.name
    )
}

/// Names already reported as untrusted by this process: one line each, even when a
/// command both reads through the mirrors and syncs.
static REPORTED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());

fn report_untrusted(d: &MirrorDef, redefined: bool) {
    let first = REPORTED
        .lock()
        .map(|mut r| r.insert(d.name.clone()))
        .unwrap_or(true);
    if first {
        warn_stderr(untrusted_line(d, redefined));
    }
}

/// The mirrors this host trusts, with what each may be sent; each untrusted one is
/// reported on stderr and left out. `any_untrusted` tells whether one was.
pub(super) fn trusted_mirrors(repo: &Repository) -> Result<(Vec<(MirrorDef, Access)>, bool)> {
    let mut trusted = Vec::new();
    let mut any_untrusted = false;
    for (d, v) in judged(repo)? {
        match v {
            Verdict::Trusted(access) => trusted.push((d, access)),
            Verdict::Untrusted { redefined } => {
                report_untrusted(&d, redefined);
                any_untrusted = true;
            }
        }
    }
    Ok((trusted, any_untrusted))
}

/// The trusted mirrors that open, by name (mirrors that do not open are left out).
pub(super) fn trusted_backends(repo: &Repository) -> Vec<(String, Backend)> {
    let Ok((mirrors, _)) = trusted_mirrors(repo) else {
        return Vec::new();
    };
    mirrors
        .into_iter()
        .filter_map(|(d, a)| {
            Backend::open_mirror(&d.url, &d.name, a)
                .ok()
                .map(|b| (d.name, b))
        })
        .collect()
}

/// Reads fall back to the trusted mirrors, per object. Mirrors that cannot be opened are
/// reported and left out; a failure to read the definitions or the trust only warns.
pub(super) fn attach(repo: &mut Repository, g: &Global) {
    let mirrors = match trusted_mirrors(repo) {
        Ok((m, _)) => m,
        Err(e) => {
            warn_stderr(format!(
                "cannot read the mirror list: {}",
                crate::error::one_line(&e)
            ));
            return;
        }
    };
    let mut backends = Vec::new();
    for (d, access) in &mirrors {
        match Backend::open_mirror(&d.url, &d.name, *access) {
            Ok(b) => backends.push(b),
            Err(e) if !g.quiet => {
                warn_stderr(format!("mirror {}: {}", d.name, crate::error::one_line(&e)))
            }
            Err(_) => {}
        }
    }
    if !backends.is_empty() {
        repo.backend = repo.backend.clone().with_fallbacks(backends);
    }
}

/// What `mirror add` / `mirror trust` record for the mirror, from their flags.
fn access_from(g: &Global, generic_credentials: bool) -> Access {
    Access {
        generic_credentials,
        insecure_http: g.insecure_http,
    }
}

/// `mirror trust NAME`: the definition in force, as the user sees it printed.
fn trust(g: &Global, repo: &Repository, name: &str, generic: bool) -> Result<i32> {
    let def = in_force(repo, name)?;
    let access = access_from(g, generic);
    Backend::open_mirror(&def.url, &def.name, access)?; // a refused location fails here
    let mut store = Store::load(&repo.config.id)?;
    store.trust(&def, access);
    store.save()?;
    if g.json {
        print_json(&json!({
            "trusted": def.name, "url": def.url, "vendor": def.vendor, "region": def.region,
            "generic_credentials": access.generic_credentials,
            "insecure_http": access.insecure_http,
        }))?;
    } else if !g.quiet {
        println!(
            "trusted mirror {} at {} (vendor {}, region {}){}{}",
            def.name,
            def.url,
            or_none(&def.vendor),
            or_none(&def.region),
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
        );
    }
    Ok(exit::OK)
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

fn untrust(g: &Global, repo: &Repository, name: &str) -> Result<i32> {
    let mut store = Store::load(&repo.config.id)?;
    let was = store.untrust(name);
    if was {
        store.save()?;
    }
    let by_profile = repo
        .mirror_defs()?
        .iter()
        .any(|d| d.name == name && Store::by_profile(d));
    if g.json {
        print_json(&json!({"untrusted": name, "was_trusted": was, "profile_trusts": by_profile}))?;
    } else if !g.quiet {
        println!(
            "{}{}",
            if was {
                format!("mirror {name} is no longer trusted on this host")
            } else {
                format!("mirror {name} was not trusted on this host")
            },
            if by_profile {
                " (but the profile in use trusts it: edit its `trust` key)"
            } else {
                ""
            }
        );
    }
    Ok(exit::OK)
}

/// The definition of `name` in force, a mirror rather than `primary`.
fn in_force(repo: &Repository, name: &str) -> Result<MirrorDef> {
    if name == PRIMARY {
        return Err(VaultError::Usage(
            "`primary` describes this repository itself, not a mirror".into(),
        )
        .into());
    }
    repo.mirror_defs()?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| anyhow!("no mirror named {name} (see `vault mirror list`)"))
}

/// The definition of `name`, refused unless this host trusts it; with what it may be sent.
fn trusted_def(repo: &Repository, name: &str) -> Result<(MirrorDef, Access)> {
    let def = in_force(repo, name)?;
    match Store::load(&repo.config.id)?.verdict(&def) {
        Verdict::Trusted(a) => Ok((def, a)),
        Verdict::Untrusted { redefined } => {
            Err(VaultError::Usage(untrusted_line(&def, redefined)).into())
        }
    }
}

/// The location URL to record: the user's URL with --endpoint and --region folded in.
fn mirror_url(a: &MirrorAddArgs) -> Result<String> {
    if !a.url.contains("://") {
        return Ok(std::path::absolute(&a.url)?.to_string_lossy().into_owned());
    }
    let mut u = url::Url::parse(&a.url)
        .map_err(|e| VaultError::Usage(format!("mirror URL {:?}: {e}", a.url)))?;
    if u.password().is_some() {
        return Err(VaultError::Usage(
            "never put a password in a mirror URL: credentials come from the environment".into(),
        )
        .into());
    }
    if u.scheme() == "s3" {
        let mut pairs = u.query_pairs_mut();
        if let Some(e) = &a.endpoint {
            pairs.append_pair("endpoint", e);
        }
        if !a.region.is_empty() {
            pairs.append_pair("region", &a.region);
        }
    }
    Ok(u.to_string())
}

pub fn mirror(g: &Global, m: MirrorCommand) -> Result<i32> {
    let repo = open(g)?;
    match m {
        MirrorCommand::Add(a) => {
            if repo.mirror_defs()?.iter().any(|d| d.name == a.name) {
                return Err(VaultError::Usage(format!(
                    "mirror {} exists: remove it first, or choose another name",
                    a.name
                ))
                .into());
            }
            let url = mirror_url(&a)?;
            let access = access_from(g, a.generic_credentials);
            if a.name != PRIMARY {
                // A malformed or refused location fails here, not at sync.
                Backend::open_mirror(&url, &a.name, access)?;
            }
            let def = MirrorDef {
                version: MIRROR_VERSION,
                name: a.name.clone(),
                url,
                vendor: a.vendor,
                region: a.region,
                labels: a.labels,
                created: now_rfc3339(),
                removed: false,
            };
            if a.name != PRIMARY {
                // The user adds it here: this host uses it. Recorded first, so that a
                // state that cannot be written leaves nothing in the repository.
                let mut store = Store::load(&repo.config.id)?;
                store.trust(&def, access);
                store.save()?;
            }
            repo.save_mirror_def(&def)?;
            if g.json && (a.no_sync || a.name == PRIMARY) {
                print_json(&json!({"added": def.name, "url": def.url}))?;
            } else if !g.quiet && !g.json {
                println!("added mirror {} at {}", def.name, def.url);
            }
            if a.no_sync || a.name == PRIMARY {
                return Ok(exit::OK);
            }
            drop(repo);
            sync(g, Some(&a.name))
        }
        MirrorCommand::List => {
            let defs = repo.mirror_defs()?;
            let store = Store::load(&repo.config.id)?;
            let mut rows = Vec::new();
            for d in &defs {
                let mut row = serde_json::to_value(d)?;
                let (trusted, text) = match store.verdict(d) {
                    _ if d.name == PRIMARY => (json!(null), "".to_string()),
                    Verdict::Trusted(a) => {
                        row["generic_credentials"] = json!(a.generic_credentials);
                        row["insecure_http"] = json!(a.insecure_http);
                        (json!(true), "trusted".to_string())
                    }
                    Verdict::Untrusted { .. } => (
                        json!(false),
                        format!("UNTRUSTED (`vault mirror trust {}`)", d.name),
                    ),
                };
                row["trusted"] = trusted;
                if !g.json {
                    println!(
                        "{:<12}  {:<10}  {:<12}  {}  {text}",
                        d.name, d.vendor, d.region, d.url
                    );
                }
                rows.push(row);
            }
            if g.json {
                print_json(&json!(rows))?;
            }
            Ok(exit::OK)
        }
        MirrorCommand::Trust {
            name,
            generic_credentials,
        } => trust(g, &repo, &name, generic_credentials),
        MirrorCommand::Untrust { name } => untrust(g, &repo, &name),
        MirrorCommand::Remove { name } => {
            let Some(mut def) = repo.mirror_defs()?.into_iter().find(|d| d.name == name) else {
                return Err(anyhow!("no mirror named {name} (see `vault mirror list`)"));
            };
            def.removed = true;
            def.created = now_rfc3339();
            repo.save_mirror_def(&def)?;
            let mut store = Store::load(&repo.config.id)?;
            if store.untrust(&name) {
                store.save()?;
            }
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

/// Per mirror: when it was last brought up to date from this machine.
fn state_path(repo: &Repository) -> Option<std::path::PathBuf> {
    repo.cache.as_ref().map(|c| c.dir().join("sync-state.json"))
}

fn load_state(repo: &Repository) -> BTreeMap<String, String> {
    state_path(repo)
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(repo: &Repository, state: &BTreeMap<String, String>) {
    if let (Some(p), Ok(b)) = (state_path(repo), serde_json::to_vec(state)) {
        let _ = std::fs::write(p, b);
    }
}

pub fn sync(g: &Global, only: Option<&str>) -> Result<i32> {
    let mut repo = open(g)?;
    let _lock = take_lock(g, &repo, LockKind::Shared, "sync")?;
    repo.load_index()?;
    let (defs, any_untrusted) = match only {
        Some(n) => (vec![trusted_def(&repo, n)?], false),
        None => trusted_mirrors(&repo)?,
    };
    if defs.is_empty() && !any_untrusted {
        return Err(anyhow!(
            "no mirrors: add one with `vault mirror add NAME URL`"
        ));
    }
    let mut state = load_state(&repo);
    // A mirror in force that this host does not use is a copy that does not keep up.
    let mut code = if any_untrusted {
        exit::PARTIAL
    } else {
        exit::OK
    };
    let mut results = Vec::new();
    for (d, access) in &defs {
        let (counters, progress) = copy_progress(g);
        let started = std::time::Instant::now();
        let r = Backend::open_mirror(&d.url, &d.name, *access)
            .and_then(|b| sync::sync(&repo, &b, &counters));
        progress.finish();
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        match r {
            Ok(rep) => {
                state.insert(d.name.clone(), now_rfc3339());
                if !g.quiet && !g.json {
                    println!(
                        "{}: copied {} objects ({}) in {secs:.1}s ({:.0} objects/s, {}/s), deleted {}; up to date",
                        d.name,
                        rep.copied,
                        human_bytes(rep.bytes),
                        rep.copied as f64 / secs,
                        human_bytes((rep.bytes as f64 / secs) as u64),
                        rep.deleted
                    );
                }
                for bad in &rep.damaged_at_source {
                    warn_stderr(format!(
                        "{bad} is damaged here and was not copied to {}: `vault repair --from {}`",
                        d.name, d.name
                    ));
                    code = exit::PARTIAL;
                }
                results.push(json!({"mirror": d.name, "ok": true, "seconds": secs, "report": rep}));
            }
            Err(e) => {
                let why = crate::error::one_line(&e);
                eprintln!(
                    "vault: mirror {} skipped: {why}; it catches up at the next sync",
                    d.name
                );
                for detail in crate::error::details(&e) {
                    log::info!("detail: {detail}");
                }
                results.push(json!({"mirror": d.name, "ok": false, "error": why}));
                code = exit::PARTIAL;
            }
        }
    }
    save_state(&repo, &state);
    if g.json {
        print_json(&json!({ "mirrors": results }))?;
    }
    Ok(code)
}

pub fn status(g: &Global, export_max_age: &str) -> Result<i32> {
    let max_age = crate::ops::forget::parse_span(export_max_age)
        .map_err(|e| VaultError::Usage(format!("--export-max-age: {e}")))?;
    let repo = open(g)?;
    let defs = repo.mirror_defs()?;
    let judged = judged(&repo)?;
    let state = load_state(&repo);
    let primary_def = defs.iter().find(|d| d.name == PRIMARY);
    let primary = repo.backend.alone();
    let mut rows = vec![json!({
        "name": "primary", "url": repo.location(), "reachable": true, "complete": true,
        "cold": primary.is_cold(),
        "vendor": primary_def.map(|d| d.vendor.clone()).unwrap_or_default(),
        "region": primary_def.map(|d| d.region.clone()).unwrap_or_default(),
    })];
    for (d, verdict) in &judged {
        let mut row = json!({
            "name": d.name, "url": d.url, "vendor": d.vendor, "region": d.region,
            "last_sync": state.get(&d.name), "trusted": matches!(verdict, Verdict::Trusted(_)),
        });
        let access = match verdict {
            Verdict::Trusted(a) => *a,
            Verdict::Untrusted { redefined } => {
                // Never contacted: neither complete nor counted.
                report_untrusted(d, *redefined);
                row["reachable"] = json!(false);
                row["complete"] = json!(false);
                row["error"] = json!(format!(
                    "untrusted on this host: check its URL, then `vault mirror trust {}`",
                    d.name
                ));
                rows.push(row);
                continue;
            }
        };
        // Listing only: a cold copy answers it like any other.
        let b = Backend::open_mirror(&d.url, &d.name, access).and_then(|m| {
            row["cold"] = json!(m.is_cold());
            sync::behind(&primary, &m)
        });
        match b {
            Ok(behind) => {
                row["reachable"] = json!(true);
                row["complete"] = json!(behind.objects == 0);
                row["missing_objects"] = json!(behind.objects);
                row["missing_bytes"] = json!(behind.bytes);
            }
            Err(e) => {
                row["reachable"] = json!(false);
                row["complete"] = json!(false);
                row["error"] = json!(crate::error::one_line(&e));
            }
        }
        rows.push(row);
    }
    let complete: Vec<&serde_json::Value> = rows.iter().filter(|r| r["complete"] == true).collect();
    let distinct = |field: &str| -> BTreeSet<String> {
        complete
            .iter()
            .filter_map(|r| r[field].as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (vendors, regions) = (distinct("vendor"), distinct("region"));
    let mut warnings = Vec::new();
    if complete.len() < 3 {
        warnings.push(format!(
            "only {} complete cop{}: keep at least 3 (add mirrors, then `vault sync`)",
            complete.len(),
            if complete.len() == 1 { "y" } else { "ies" }
        ));
    }
    if vendors.len() < 2 {
        warnings.push("a single vendor (or none recorded) holds the complete copies: one account closure loses them all (`vault mirror add ... --vendor`)".into());
    }
    if regions.len() < 2 {
        warnings.push("a single region (or none recorded) holds the complete copies: one disaster loses them all (`--region`)".into());
    }
    let export = export_age(&repo, max_age, &mut warnings)?;
    let summary = format!(
        "{} complete cop{}, {} vendor{}, {} region{}, {export}",
        complete.len(),
        if complete.len() == 1 { "y" } else { "ies" },
        vendors.len(),
        if vendors.len() == 1 { "" } else { "s" },
        regions.len(),
        if regions.len() == 1 { "" } else { "s" },
    );
    if g.json {
        print_json(&json!({"copies": rows, "summary": summary, "warnings": warnings}))?;
        return Ok(exit::OK);
    }
    for r in &rows {
        let state = if r["trusted"] == false {
            r["error"].as_str().unwrap_or("untrusted").to_string()
        } else if r["reachable"] != true {
            format!("unreachable: {}", r["error"].as_str().unwrap_or(""))
        } else if r["complete"] == true {
            "complete".to_string()
        } else {
            format!(
                "behind by {} objects ({})",
                r["missing_objects"],
                human_bytes(r["missing_bytes"].as_u64().unwrap_or(0))
            )
        };
        let state = if r["cold"] == true {
            format!("{state}; cold: its packs need a warm-up before a restore")
        } else {
            state
        };
        let last = r["last_sync"]
            .as_str()
            .map(|t| format!("; last sync {t}"))
            .unwrap_or_default();
        println!(
            "{:<12}  {:<10}  {:<12}  {state}{last}\n              {}",
            r["name"].as_str().unwrap_or(""),
            r["vendor"].as_str().unwrap_or(""),
            r["region"].as_str().unwrap_or(""),
            r["url"].as_str().unwrap_or("")
        );
    }
    println!("{summary}");
    for w in &warnings {
        warn_stderr(w.clone());
    }
    Ok(exit::OK)
}

/// Opens a mirror as a repository of its own (same password), with its index.
fn open_source(g: &Global, source: &Backend) -> Result<Repository> {
    let secret = super::password::secret(
        g.password_file.as_deref(),
        g.password_command.as_deref(),
        source.location(),
    )?;
    let mut repo = Repository::open(source.clone(), &secret)?;
    repo.cache = None;
    repo.load_index()?;
    Ok(repo)
}

/// "newest offline export: LABEL, N days old", warning when older than `max_age`.
fn export_age(
    repo: &Repository,
    max_age: jiff::Span,
    warnings: &mut Vec<String>,
) -> Result<String> {
    let Some(newest) = repo.export_records()?.pop() else {
        warnings.push("no offline export on record: `vault export /media/archive-disk`".into());
        return Ok("no offline export yet".into());
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
    if too_old {
        warnings.push(format!(
            "the newest offline export ({}) is {days} days old: refresh it with `vault export {}`",
            newest.label, newest.destination
        ));
    }
    Ok(format!(
        "newest offline export: {}, {days} day{} old",
        newest.label,
        if days == 1 { "" } else { "s" }
    ))
}

/// Copies back what this repository lacks or holds damaged, from a mirror named in its
/// list or given by URL (the only way when this repository no longer opens).
pub fn repair_from(g: &Global, from: &str) -> Result<i32> {
    let (loc, _) = location(g)?;
    let opened = open(g);
    let mut access = Access::default();
    let url = if from.contains("://") || from.starts_with('/') {
        from.to_string()
    } else {
        let repo = opened.as_ref().map_err(|e| {
            anyhow!(
                "{}: cannot read its mirror list ({}); give the mirror's URL to --from",
                loc,
                crate::error::one_line(e)
            )
        })?;
        let (def, a) = trusted_def(repo, from)?;
        access = a;
        def.url
    };
    let _lock = match &opened {
        Ok(repo) => take_lock(g, repo, LockKind::Shared, "repair")?,
        Err(_) => None, // a repository that does not open cannot hold a lock either
    };
    let opened = opened.map(|r| {
        // The lock guard keeps its own handle; this one reads the target's own objects.
        let mut r = r;
        r.backend = r.backend.alone();
        r
    });
    let source = if from.contains("://") || from.starts_with('/') {
        Backend::open(&url)?
    } else {
        Backend::open_mirror(&url, from, access)?
    };
    let target = Backend::open(&loc)?;
    // What the repository removed on purpose must not come back: the source's own
    // forget records and index say what that is.
    let target_repo = opened.ok().and_then(|mut r| {
        r.cache = None;
        r.load_index().ok().map(|_| r)
    });
    let skip = match open_source(g, &source) {
        Ok(src) => sync::removed_on_purpose(&src, target_repo.as_ref())?,
        Err(e) => {
            warn_stderr(format!(
                "{from} cannot be opened ({}): copying back everything it holds",
                crate::error::one_line(&e)
            ));
            Default::default()
        }
    };
    let counters = sync::Counters::default();
    let r = sync::heal(&target, &source, &skip, &counters)?;
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
