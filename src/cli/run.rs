//! `vault run PROFILE`: the nightly routine in one command. Backup, then forget by the
//! profile's retention, prune when due, sync the mirrors, export when due, and check a
//! rotating part of the data. A step that fails stops the routine; a partial step (exit
//! 3) does not. The exit code is the worst of the steps. Each step is the command of the
//! same name; when one is due is `ops::routine`'s rule.

use anyhow::{Result, anyhow};

use super::{BackupArgs, CheckArgs, ExportArgs, Global, PruneArgs};
use crate::error::exit;
use crate::ops::routine::{self, RunStates};

pub fn run(g: &Global, name: &str) -> Result<i32> {
    let p = super::profile::profile(g, name)?;
    let states = RunStates::load();
    let mut state = states.get(name);
    let mut report: Vec<String> = Vec::new();
    let mut code = exit::OK;
    let mut step = |what: &str, r: i32, report: &mut Vec<String>| {
        code = code.max(r);
        report.push(format!(
            "{what} {}",
            if r == exit::OK { "ok" } else { "partial" }
        ));
    };

    let backup = BackupArgs {
        opts: p.backup_options()?,
        ..Default::default()
    };
    if !backup.opts.names_paths() {
        return Err(anyhow!("the profile has no sources to back up"));
    }
    step(
        "backup",
        super::commands::cmd_backup(g, backup)?,
        &mut report,
    );

    if let Some(keep) = &p.retention {
        let r = super::retention::forget_by_policy(g, keep)?;
        step("forget", r, &mut report);
    }

    if state.prune_due(&p)? {
        let args = PruneArgs {
            opts: Default::default(),
            dry_run: false,
        };
        step("prune", super::retention::prune(g, args)?, &mut report);
        state.pruned();
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
        if routine::export_due(repo, e)? {
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

    if let Some(subset) = state.next_check(&p)? {
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
    states.save(name, state);
    if !g.quiet && !g.json {
        println!("run {name}: {}", report.join(", "));
    }
    Ok(code)
}
