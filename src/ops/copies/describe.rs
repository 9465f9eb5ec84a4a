//! The status in words, for a person: what each copy is, and the tally. Advice on what to
//! do about it is the caller's to add.

use std::fmt;

use super::status::{CopyStatus, Status};
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
        state
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
