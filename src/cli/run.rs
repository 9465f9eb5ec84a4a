//! `vault run PROFILE`: the nightly routine in one command. Backup, then forget by the
//! profile's retention, prune when due, sync the mirrors, export when due, and check a
//! rotating part of the data. A step that fails stops the routine; a partial step (exit
//! 3) does not. The exit code is the worst of the steps.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

use super::profile;
use super::{BackupArgs, CheckArgs, ExportArgs, Global, PruneArgs, PruneOpts};
use crate::config::Profile;
use crate::error::exit;
use crate::ops::subset::Subset;

/// What `run` remembers between runs, per profile (in the XDG state directory).
#[derive(Serialize, Deserialize, Default, Clone)]
struct RunState {
    last_prune: Option<String>,
    check_part: u32,
}

fn state_file() -> Option<PathBuf> {
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .map(|d| d.join("vault").join("run-state.json"))
}

fn load_state() -> BTreeMap<String, RunState> {
    state_file()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(all: &BTreeMap<String, RunState>) {
    if let (Some(p), Ok(b)) = (state_file(), serde_json::to_vec_pretty(all)) {
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let _ = std::fs::write(p, b);
    }
}

/// Whether something last done at `last` is due again after `every`.
fn due(every: &str, last: Option<&str>) -> Result<bool> {
    match every {
        "always" => return Ok(true),
        "never" => return Ok(false),
        _ => {}
    }
    let span = crate::ops::forget::parse_span(every).map_err(|e| anyhow!(e))?;
    let Some(last) = last.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return Ok(true);
    };
    let next = last
        .to_zoned(jiff::tz::TimeZone::UTC)
        .checked_add(span)?
        .timestamp();
    Ok(next <= jiff::Timestamp::now())
}

pub fn run(g: &Global, name: &str) -> Result<i32> {
    let p = profile::profile(g, name)?;
    let mut all = load_state();
    let mut state = all.get(name).cloned().unwrap_or_default();
    let mut report: Vec<String> = Vec::new();
    let mut code = exit::OK;
    let mut step = |what: &str, r: i32, report: &mut Vec<String>| {
        code = code.max(r);
        report.push(format!(
            "{what} {}",
            if r == exit::OK { "ok" } else { "partial" }
        ));
    };

    let r = super::commands::cmd_backup(g, backup_args(&p)?)?;
    step("backup", r, &mut report);

    if let Some(keep) = &p.retention {
        let r = super::retention::forget_by_policy(g, keep)?;
        step("forget", r, &mut report);
    }

    if due(
        p.prune.as_deref().unwrap_or("7d"),
        state.last_prune.as_deref(),
    )? {
        let args = PruneArgs {
            opts: PruneOpts {
                max_unused: crate::ops::prune::MaxUnused::Percent(5.0),
                max_repack: None,
                grace: std::time::Duration::from_secs(24 * 3600),
            },
            dry_run: false,
        };
        step("prune", super::retention::prune(g, args)?, &mut report);
        state.last_prune = Some(crate::repo::repository::now_rfc3339());
    } else {
        report.push("prune not due".into());
    }

    let session = super::commands::session(g)?;
    let repo = session.repo();
    let has_mirrors = repo.mirror_defs()?.iter().any(|d| d.name != "primary");
    if has_mirrors && p.sync != Some(false) {
        step("sync", super::mirrors::sync(g, None)?, &mut report);
    }

    if let Some(e) = &p.export {
        let dest = std::path::absolute(&e.destination).unwrap_or_default();
        let newest = repo
            .export_records()?
            .into_iter()
            .rfind(|r| std::path::Path::new(&r.destination) == dest)
            .map(|r| r.time);
        if due(e.every.as_deref().unwrap_or("30d"), newest.as_deref())? {
            let args = ExportArgs {
                dir: Some(e.destination.clone()),
                image: None,
                split: None,
                verify_image: None,
                snapshots: e.snapshots.clone(),
                label: None,
            };
            step("export", super::export::export(g, args)?, &mut report);
        } else {
            report.push("export not due".into());
        }
    }
    drop(session);

    let check = p.check.clone().unwrap_or_else(|| "1/7".into());
    if check != "never" {
        let subset = match check.parse::<Subset>().map_err(|e| anyhow!(e))? {
            // "1/7" means: a seventh per run, a different one each time.
            Subset::Part { of, .. } => {
                state.check_part = state.check_part % of + 1;
                Subset::Part {
                    n: state.check_part,
                    of,
                }
            }
            other => other,
        };
        let label = subset.describe();
        let args = CheckArgs {
            read_data: false,
            read_data_subset: Some(subset),
        };
        let r = super::integrity::check(g, args)?;
        code = code.max(r);
        report.push(format!(
            "check of {label} {}",
            if r == exit::OK { "ok" } else { "FOUND DAMAGE" }
        ));
    }
    all.insert(name.to_string(), state);
    save_state(&all);
    if !g.quiet && !g.json {
        println!("run {name}: {}", report.join(", "));
    }
    Ok(code)
}

fn backup_args(p: &Profile) -> Result<BackupArgs> {
    let mut a = BackupArgs::default();
    profile::fill_backup(&mut a, p);
    if a.paths.is_empty() {
        return Err(anyhow!("the profile has no sources to back up"));
    }
    Ok(a)
}
