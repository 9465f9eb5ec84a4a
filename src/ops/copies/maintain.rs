//! Carrying out, on a mirror, the deletions the primary recorded: what sync does at its
//! end on an ordinary mirror, and what only `vault maintain` does on a protected one,
//! and there only for objects whose deletion was recorded at least the protection
//! period ago.
//!
//! Ages are read on the mirror's own clock: the time the mirror says it received the
//! record (a forget record, the index file that superseded another, a deletion record),
//! not the time written inside it. Whoever holds a key can write a record with any time
//! in it, but on storage that only lets them create, not backdate what the storage says
//! it received; so a record planted today waits the whole period like any other.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Result, anyhow};
use jiff::Timestamp;
use serde::Serialize;

use super::judge::{trusted_def, trusted_mirrors};
use crate::format::Id;
use crate::format::mirror::MirrorDef;
use crate::ops::sync::{self, Gone};
use crate::ops::twophase::storage_clock;
use crate::repo::location::Access;
use crate::repo::{Backend, FileKind, Repository};
use crate::report::Reporter;

/// What maintaining one mirror did, or in a dry run would do.
#[derive(Default, Serialize)]
pub struct Maintained {
    pub mirror: String,
    /// Protection period, seconds (0: none).
    pub protect: u64,
    pub deleted: u64,
    /// Objects recorded gone that the protection period still keeps.
    pub waiting: u64,
    /// When the oldest waiting deletion was recorded, on the mirror's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_waiting: Option<String>,
    /// When the next of them may be deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_due: Option<String>,
    /// Temporary objects of killed processes removed.
    pub tmp_removed: u64,
    /// Objects whose S3 Object Lock retention was extended (see `object_lock`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_extended: Option<u64>,
    pub dry_run: bool,
    #[serde(skip)]
    now: Timestamp,
    #[serde(skip)]
    doomed: Vec<Gone>,
}

/// Maintains mirror `only` (which must be trusted) or every mirror this host trusts
/// (reporting the untrusted ones): each result apart, so one failing stops none of the
/// others. The index must be loaded; the caller holds a shared lock.
pub fn maintain(
    repo: &Repository,
    only: Option<&str>,
    dry_run: bool,
    report: &dyn Reporter,
) -> Result<Vec<(String, Result<Maintained>)>> {
    let defs = match only {
        Some(n) => vec![trusted_def(repo, n)?],
        None => trusted_mirrors(repo, report)?.trusted,
    };
    if defs.is_empty() {
        return Err(anyhow!(
            "no trusted mirrors to maintain (see `vault mirror list`)"
        ));
    }
    Ok(defs
        .into_iter()
        .map(|(def, access)| (def.name.clone(), maintain_one(repo, &def, access, dry_run)))
        .collect())
}

/// Deletes on mirror `def` what the primary removed on purpose and, on a protected
/// mirror, recorded gone at least its period ago.
fn maintain_one(
    repo: &Repository,
    def: &MirrorDef,
    access: Access,
    dry_run: bool,
) -> Result<Maintained> {
    let mirror = Backend::open_mirror(&def.url, &def.name, access)?;
    let retention = super::object_lock::retention(def, access)?;
    let mut m = plan(repo, &mirror, def.protect, dry_run)?;
    m.mirror = def.name.clone();
    if !dry_run {
        m.deleted = sync::delete_gone(&mirror, &m.doomed).map_err(|e| refused(&def.name, e))?;
        m.tmp_removed = crate::ops::prune::sweep_tmp_at(&mirror, m.now)?;
    }
    if let Some(r) = retention {
        // After the deletions, so that nothing just deleted is locked again.
        m.lock_extended = Some(super::object_lock::extend(
            def, &mirror, &r, m.now, dry_run,
        )?);
    }
    Ok(m)
}

/// What maintaining `mirror`, protected for `protect` seconds, deletes and keeps.
pub(super) fn plan(
    repo: &Repository,
    mirror: &Backend,
    protect: u64,
    dry_run: bool,
) -> Result<Maintained> {
    let clock = Clock::of(mirror, protect, dry_run)?;
    let mut ages = Ages::default();
    let doomed = sync::gone(repo, mirror, &mut |g| ages.due(&clock, g))?;
    // Counted as sync counts them: with what each kept object keeps in turn.
    let all = if ages.oldest.is_some() || ages.waiting > 0 {
        sync::gone(repo, mirror, &mut |_| true)?.len()
    } else {
        doomed.len()
    };
    let shown = |t: Timestamp| t.round(jiff::Unit::Second).unwrap_or(t).to_string();
    Ok(Maintained {
        protect,
        deleted: doomed.len() as u64,
        waiting: (all - doomed.len()) as u64,
        oldest_waiting: ages.oldest.map(shown),
        next_due: ages.oldest.and_then(|t| clock.due(t)).map(shown),
        dry_run,
        now: clock.now,
        doomed,
        ..Maintained::default()
    })
}

/// A delete the mirror refused, with what to do about it.
fn refused(name: &str, e: anyhow::Error) -> anyhow::Error {
    anyhow!(
        "mirror {name}: {}; maintenance needs credentials that can delete there ({}*)",
        crate::error::one_line(&e),
        crate::repo::location::mirror_prefix(name)
    )
}

/// The mirror's idea of now, and how long its deletions wait.
struct Clock {
    now: Timestamp,
    period: Duration,
    /// When each record the evidence may name arrived on the mirror.
    arrived: HashMap<(FileKind, Id), Timestamp>,
}

impl Clock {
    fn of(mirror: &Backend, protect: u64, dry_run: bool) -> Result<Clock> {
        let now = match storage_clock(mirror) {
            Some(t) => t,
            None if protect == 0 || dry_run => Timestamp::now(),
            None => {
                return Err(anyhow!(
                    "{} reports no modification times, so how long ago a deletion was recorded there cannot be told; nothing was deleted",
                    mirror.location()
                ));
            }
        };
        let mut arrived = HashMap::new();
        if protect > 0 {
            for kind in [
                FileKind::Key,
                FileKind::Forget,
                FileKind::Index,
                FileKind::Deletion,
                FileKind::Mark,
                FileKind::Revival,
            ] {
                for (id, _, t) in mirror.list_timed(kind)? {
                    if let Some(t) = t {
                        arrived.insert((kind, id), t);
                    }
                }
            }
        }
        Ok(Clock {
            now,
            period: Duration::from_secs(protect),
            arrived,
        })
    }

    /// When a deletion recorded at `t` may be carried out.
    fn due(&self, t: Timestamp) -> Option<Timestamp> {
        let span = jiff::SignedDuration::try_from(self.period).ok()?;
        t.checked_add(span).ok()
    }

    /// When the earliest record of `g`'s evidence arrived on the mirror; None when none
    /// of them is there (the deletion is not yet recorded on this copy).
    fn recorded(&self, g: &Gone) -> Option<Timestamp> {
        g.evidence
            .iter()
            .filter_map(|k| self.arrived.get(k))
            .min()
            .copied()
    }
}

/// Whether any deletion was kept back, and the oldest of them.
#[derive(Default)]
struct Ages {
    waiting: u64,
    oldest: Option<Timestamp>,
}

impl Ages {
    /// Whether `g` may be deleted now.
    fn due(&mut self, clock: &Clock, g: &Gone) -> bool {
        if clock.period.is_zero() || follows_others(g.kind) {
            return true;
        }
        let recorded = clock.recorded(g);
        let old_enough = recorded.is_some_and(|t| {
            clock
                .now
                .duration_since(t)
                .try_into()
                .is_ok_and(|age: Duration| age >= clock.period)
        });
        if !old_enough {
            self.waiting += 1;
            if let Some(t) = recorded {
                self.oldest = Some(self.oldest.map_or(t, |o| o.min(t)));
            }
        }
        old_enough
    }
}

/// A manifest goes with its index file (it is a candidate only once that is gone).
fn follows_others(kind: FileKind) -> bool {
    kind == FileKind::Manifest
}
