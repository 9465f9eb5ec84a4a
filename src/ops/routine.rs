//! A profile's routine (`vault run`): what it remembers between runs, and when each of
//! its steps is due. Backup and forget run every time; prune, export and check by these
//! rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::config::{ExportConfig, Profile};
use crate::ops::subset::Subset;
use crate::repo::Repository;

/// How often a profile prunes, exports and checks when it does not say.
pub const PRUNE_EVERY: &str = "7d";
pub const EXPORT_EVERY: &str = "30d";
pub const CHECK: &str = "1/7";

/// What the routine remembers of one profile.
#[derive(Serialize, Deserialize, Default, Clone)]
pub struct RunState {
    last_prune: Option<String>,
    check_part: u32,
}

/// Every profile's state, in the XDG state directory (a missing or unreadable file is a
/// first run: everything is due).
pub struct RunStates {
    path: Option<PathBuf>,
    all: BTreeMap<String, RunState>,
}

impl RunStates {
    pub fn load() -> RunStates {
        let path = dirs::state_dir()
            .or_else(dirs::data_local_dir)
            .map(|d| d.join("vault").join("run-state.json"));
        let all = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        RunStates { path, all }
    }

    pub fn get(&self, profile: &str) -> RunState {
        self.all.get(profile).cloned().unwrap_or_default()
    }

    /// Records `state` for `profile`; a state that cannot be written only makes the next
    /// run do more.
    pub fn save(mut self, profile: &str, state: RunState) {
        self.all.insert(profile.to_string(), state);
        if let (Some(p), Ok(b)) = (self.path, serde_json::to_vec_pretty(&self.all)) {
            if let Some(d) = p.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            let _ = std::fs::write(p, b);
        }
    }
}

impl RunState {
    pub fn prune_due(&self, p: &Profile) -> Result<bool> {
        due(
            p.prune.as_deref().unwrap_or(PRUNE_EVERY),
            self.last_prune.as_deref(),
        )
    }

    pub fn pruned(&mut self) {
        self.last_prune = Some(crate::repo::repository::now_rfc3339());
    }

    /// What this run checks, or None: a part "n/N" means a different part each run, so
    /// that N runs read everything.
    pub fn next_check(&mut self, p: &Profile) -> Result<Option<Subset>> {
        let check = p.check.as_deref().unwrap_or(CHECK);
        if check == "never" {
            return Ok(None);
        }
        Ok(Some(
            match check.parse::<Subset>().map_err(|e| anyhow!(e))? {
                Subset::Part { of, .. } => {
                    self.check_part = self.check_part % of + 1;
                    Subset::Part {
                        n: self.check_part,
                        of,
                    }
                }
                other => other,
            },
        ))
    }
}

/// Whether the export `e` is due: none to its destination yet, or the newest too old.
pub fn export_due(repo: &Repository, e: &ExportConfig) -> Result<bool> {
    let dest = std::path::absolute(&e.destination).unwrap_or_default();
    let newest = repo
        .export_records()?
        .into_iter()
        .rfind(|r| Path::new(&r.destination) == dest)
        .map(|r| r.time);
    due(
        e.every.as_deref().unwrap_or(EXPORT_EVERY),
        newest.as_deref(),
    )
}

/// Whether something last done at `last` is due again after `every` ("always", "never"
/// or a span).
pub fn due(every: &str, last: Option<&str>) -> Result<bool> {
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
