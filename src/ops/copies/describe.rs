//! The status in words, for a person: what each copy is, and the tally. Advice on what to
//! do about it is the caller's to add.

use std::fmt;

use super::status::{CopyStatus, Protection, Status};
use crate::units::human_bytes;

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

impl CopyStatus {
    /// "complete", "behind by …" or why not; then whether it is cold, and its last sync.
    pub fn state(&self) -> String {
        let mut state = if self.mirror.as_ref().is_some_and(|m| !m.trusted) {
            self.error.clone().unwrap_or_else(|| "untrusted".into())
        } else if !self.reachable {
            format!("unreachable: {}", self.error.as_deref().unwrap_or(""))
        } else if self.complete {
            "complete".to_string()
        } else {
            format!(
                "behind by {} objects ({})",
                self.missing_objects.unwrap_or(0),
                human_bytes(self.missing_bytes.unwrap_or(0))
            )
        };
        if self.cold == Some(true) {
            state.push_str("; cold: its packs need a warm-up before a restore");
        }
        if let Some(t) = self.mirror.as_ref().and_then(|m| m.last_sync.as_deref()) {
            state.push_str(&format!("; last sync {t}"));
        }
        if let Some(p) = &self.protection {
            state.push_str(&p.describe());
        }
        match self.can_delete {
            Some(true) => state.push_str("; this host can delete there"),
            Some(false) => state.push_str("; this host cannot delete there"),
            None => {}
        }
        state
    }
}

impl Protection {
    /// "; protected 30d: 12 deletions wait, the first due 2026-12-30T…".
    fn describe(&self) -> String {
        let mut s = format!("; protected {}", crate::units::human_period(self.period));
        if let Some(mode) = self.object_lock {
            s += &format!(" (S3 Object Lock, {mode})");
        }
        if let Some(e) = &self.error {
            return s + &format!(" (what it keeps could not be counted: {e})");
        }
        s += &format!(": {} deletion(s) wait", self.waiting);
        if let (Some(oldest), Some(due)) = (&self.oldest_waiting, &self.next_due) {
            s += &format!(", the oldest recorded {oldest}, due {due}");
        }
        s
    }
}

/// "3 complete copies, 2 vendors, 2 regions, newest offline export: …".
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} complete cop{}, {} vendor{}, {} region{}, ",
            self.complete,
            plural(self.complete, "y", "ies"),
            self.vendors,
            plural(self.vendors, "", "s"),
            self.regions,
            plural(self.regions, "", "s"),
        )?;
        match &self.export {
            None => write!(f, "no offline export yet"),
            Some(e) => write!(
                f,
                "newest offline export: {}, {} day{} old",
                e.label,
                e.days,
                if e.days == 1 { "" } else { "s" }
            ),
        }
    }
}
