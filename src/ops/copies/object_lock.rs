//! S3 Object Lock on a protected mirror (`object_lock=governance|compliance` in its
//! s3:// location): what sync writes there is locked for the protection period as it is
//! uploaded (`repo::storage::object_lock`), and `vault maintain` extends the lock of
//! what the mirror still holds.
//!
//! Extending: maintain locks again, until now + the period, every object still on the
//! mirror (after its deletions) that is at least half the period old on the mirror's
//! clock. A younger object was locked at its upload until at least now + half the
//! period, and an extension that came out earlier than a lock already set (clocks that
//! disagree) would be refused; so running maintain at least every half period keeps
//! everything the repository still uses locked for at least half a period ahead.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use jiff::Timestamp;

use crate::error::VaultError;
use crate::format::mirror::MirrorDef;
use crate::repo::Backend;
use crate::repo::location::{self, Access};
use crate::repo::storage::object_lock::{ObjectLock, Retention};

/// The retention of mirror `def`, when its location asks for Object Lock: refused
/// (usage) on a mirror without a protection period, which would give no retain-until.
pub(super) fn retention(def: &MirrorDef, access: Access) -> Result<Option<Arc<Retention>>> {
    let Some(mode) = location::object_lock_mode(&def.url)? else {
        return Ok(None);
    };
    if def.protect == 0 {
        return Err(VaultError::Usage(format!(
            "mirror {}: object_lock= needs a protected mirror, whose period is the retention: add it with --protect PERIOD",
            def.name
        ))
        .into());
    }
    let target = location::s3_target(&def.url, &def.name, access)?;
    let period = Duration::from_secs(def.protect);
    Ok(Some(Arc::new(Retention::new(target, mode, period))))
}

/// Opens mirror `def` for writing: with Object Lock, every object written through it is
/// locked, and a lock the server refuses fails the write.
pub(super) fn open_to_write(def: &MirrorDef, access: Access) -> Result<Backend> {
    let mirror = Backend::open_mirror(&def.url, &def.name, access)?;
    Ok(match retention(def, access)? {
        Some(r) => mirror.decorated(|s| Arc::new(ObjectLock::new(s, r))),
        None => mirror,
    })
}

/// Extends the lock of every object on `mirror` at least half the period old at `now`
/// (the mirror's clock); the number extended, or in a dry run to extend.
pub(super) fn extend(
    def: &MirrorDef,
    mirror: &Backend,
    retention: &Retention,
    now: Timestamp,
    dry_run: bool,
) -> Result<u64> {
    let half = jiff::SignedDuration::from_secs((def.protect / 2) as i64);
    let due: Vec<String> = mirror
        .list_files_timed("")?
        .into_iter()
        .filter(|(_, _, t)| t.is_none_or(|t| now.duration_since(t) >= half))
        .map(|(path, _, _)| path)
        .collect();
    if dry_run || due.is_empty() {
        return Ok(due.len() as u64);
    }
    let until = retention.until_from_now();
    let per = due.len().div_ceil(mirror.connections().max(1));
    let failed = std::thread::scope(|s| {
        let workers: Vec<_> = due
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .try_for_each(|p| retention.lock_until(p, until))
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| w.join().ok().and_then(|r| r.err()))
            .next()
    });
    match failed {
        Some(e) => Err(anyhow!(
            "mirror {}: extending its Object Lock retention: {e}",
            def.name
        )),
        None => Ok(due.len() as u64),
    }
}
