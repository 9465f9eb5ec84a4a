//! Applying a profile (`crate::config`) to the command line: what the flags left unset.

use anyhow::Result;

use super::{Cli, Command};
use crate::config::{self, Profile, section_limits, text};
use crate::error::VaultError;

/// Profile `name` of the config file `--config` names (or the default one).
pub fn profile(g: &super::Global, name: &str) -> Result<Profile> {
    config::profile(g.config.as_deref(), name)
}

/// Fills what the command line left unset from the profile (`--profile`, or `run NAME`).
pub fn apply(mut cli: Cli) -> Result<Cli> {
    if let Command::Run { profile } = &cli.command {
        cli.global.profile = Some(profile.clone());
    }
    let Some(name) = cli.global.profile.clone() else {
        return Ok(cli);
    };
    let p = profile(&cli.global, &name)?;
    config::provide_credentials(&name, &p)?;
    // Checked here, to name the profile; the flags (or variables) override them.
    section_limits(p.limits(), &format!("profile {name}: "))?;
    let in_profile = |e: VaultError| VaultError::Usage(format!("profile {name}: {e}"));
    p.backup_options().map_err(in_profile)?;
    let g = &mut cli.global;
    let or = |flag: &mut Option<String>, from: Option<String>| {
        if flag.is_none() {
            *flag = from;
        }
    };
    or(&mut g.limit_upload, text(&p.limit_upload));
    or(&mut g.limit_download, text(&p.limit_download));
    or(&mut g.connections, text(&p.connections));
    or(&mut g.repo, p.repository.clone());
    or(&mut g.password_command, p.password_command.clone());
    or(&mut g.before, p.before.clone());
    or(&mut g.on_success, p.on_success.clone());
    or(&mut g.on_failure, p.on_failure.clone());
    if g.password_file.is_none() {
        g.password_file = p.password_file.clone();
    }
    g.insecure_http |= p.insecure_http;
    if let Command::Backup(a) = &mut cli.command {
        p.fill_backup(&mut a.opts).map_err(in_profile)?;
    }
    Ok(cli)
}
