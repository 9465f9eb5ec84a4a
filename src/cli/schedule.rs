//! `vault schedule`: installs, lists or removes the timers (`crate::schedule`) that run a
//! profile, and prints what it did.

use anyhow::Result;

use super::{Global, ScheduleCommand};
use crate::error::exit;
use crate::schedule::{self, Outcome, unit_dir};

pub fn schedule(g: &Global, s: ScheduleCommand) -> Result<i32> {
    let config = g.config.as_deref();
    let outcome = match s {
        ScheduleCommand::Install {
            profile,
            at,
            cron,
            unit_dir: dir,
        } => {
            schedule::check_profile_name(&profile)?;
            super::profile::profile(g, &profile)?; // the profile must exist
            if cron {
                schedule::crontab(config, &profile, &at)?
            } else {
                schedule::install(&unit_dir(dir)?, config, &profile, &at)?
            }
        }
        ScheduleCommand::List { unit_dir: dir } => Outcome {
            timers: schedule::list(&unit_dir(dir)?)?,
            ..Outcome::default()
        },
        ScheduleCommand::Remove {
            profile,
            unit_dir: dir,
        } => schedule::remove(&unit_dir(dir)?, &profile)?,
    };
    if g.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else if !g.quiet || outcome.crontab.is_some() {
        print_text(&outcome);
    }
    Ok(exit::OK)
}

fn print_text(o: &Outcome) {
    for w in &o.written {
        println!("wrote {}:\n{}", w.path.display(), w.contents);
    }
    for p in &o.removed {
        println!("removed {}", p.display());
    }
    if let Some(line) = &o.crontab {
        println!("{line}");
    }
    for t in &o.timers {
        println!("{:<16}  {}", t.profile, t.on_calendar);
    }
    if let Some(then) = &o.then {
        println!("then: {then}");
    }
}
