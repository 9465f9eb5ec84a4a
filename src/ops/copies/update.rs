//! Bringing every trusted mirror (or one) up to date with the primary, one after the
//! other; a mirror that fails is skipped and catches up at the next sync.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow};
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::judge::{trusted_def, trusted_mirrors};
use super::state;
use crate::error::one_line;
use crate::ops::sync::{self, CopyReport, Counters};
use crate::repo::Repository;
use crate::repo::repository::now_rfc3339;
use crate::report::Reporter;

/// What the caller shows while mirrors are brought up to date.
pub trait SyncProgress {
    /// A mirror's copy starts: the counters it advances.
    fn start(&mut self, mirror: &str) -> Arc<Counters>;
    /// A mirror's copy ended, either way.
    fn end(&mut self, outcome: &MirrorSync);
}

/// One mirror's sync.
pub struct MirrorSync {
    pub mirror: String,
    pub seconds: f64,
    pub result: Result<CopyReport>,
}

pub struct SyncOutcome {
    pub mirrors: Vec<MirrorSync>,
    /// A mirror in force was left out as untrusted: a copy that does not keep up.
    pub any_untrusted: bool,
}

impl SyncOutcome {
    /// Whether every mirror in force is now a complete copy.
    pub fn complete(&self) -> bool {
        !self.any_untrusted
            && self.mirrors.iter().all(|m| {
                m.result
                    .as_ref()
                    .is_ok_and(|r| r.damaged_at_source.is_empty())
            })
    }
}

/// Syncs mirror `only`, which must be trusted, or every trusted mirror (reporting the
/// untrusted ones). The index must be loaded; the caller holds a shared lock.
pub fn sync_mirrors(
    repo: &Repository,
    only: Option<&str>,
    report: &dyn Reporter,
    progress: &mut dyn SyncProgress,
) -> Result<SyncOutcome> {
    let (defs, any_untrusted) = match only {
        Some(n) => (vec![trusted_def(repo, n)?], false),
        None => {
            let m = trusted_mirrors(repo, report)?;
            (m.trusted, m.any_untrusted)
        }
    };
    if defs.is_empty() && !any_untrusted {
        return Err(anyhow!(
            "no mirrors: add one with `vault mirror add NAME URL`"
        ));
    }
    let mut last = state::load(repo);
    let mut mirrors = Vec::new();
    for (d, access) in &defs {
        let counters = progress.start(&d.name);
        let started = Instant::now();
        let result = super::object_lock::open_to_write(d, *access)
            .and_then(|b| sync::sync(repo, &b, d.protect > 0 || !repo.keys.is_full(), &counters));
        let seconds = started.elapsed().as_secs_f64().max(1e-3);
        if result.is_ok() {
            last.insert(d.name.clone(), now_rfc3339());
        }
        let outcome = MirrorSync {
            mirror: d.name.clone(),
            seconds,
            result,
        };
        progress.end(&outcome);
        mirrors.push(outcome);
    }
    state::save(repo, &last);
    Ok(SyncOutcome {
        mirrors,
        any_untrusted,
    })
}

/// `{"mirror", "ok": true, "seconds", "report"}`, or `{"mirror", "ok": false, "error"}`.
impl Serialize for MirrorSync {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("mirror", &self.mirror)?;
        m.serialize_entry("ok", &self.result.is_ok())?;
        match &self.result {
            Ok(report) => {
                m.serialize_entry("seconds", &self.seconds)?;
                m.serialize_entry("report", report)?;
            }
            Err(e) => m.serialize_entry("error", &one_line(e))?,
        }
        m.end()
    }
}
