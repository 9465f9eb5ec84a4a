//! Several copies of one repository: which mirrors this host uses (`trust`), reading
//! through them when the primary fails (`judge`), defining them (`manage`), bringing
//! them up to date (`update`, with the time of each mirror's last sync in `state`),
//! judging whether the copies are enough (`status`), carrying out deletions on them
//! (`maintain`, the only one that deletes on a protected copy) and copying back from one
//! (`repair`), and which mirror holds intact what check found damaged (`intact`). The
//! object copying itself is `ops::sync`'s.
//!
//! Nothing here prints: warnings go to the caller's [`Reporter`](crate::report::Reporter),
//! results come back as data for the caller to render.

mod describe;
mod intact;
mod judge;
mod maintain;
mod manage;
mod object_lock;
mod repair;
mod state;
mod status;
pub mod trust;
mod unforget;
mod update;

pub use intact::intact_copies;
pub use judge::{TrustedMirrors, attach_mirrors, trusted_backends, trusted_mirrors};
pub use maintain::{Maintained, maintain};
pub use manage::{Granted, Listed, NewMirror, Untrusted, add, list, remove, trust, untrust};
pub use repair::{RepairSource, repair_from, repair_source};
pub use status::{CopyStatus, ExportAge, MirrorFacts, Protection, Shortfall, Status, status};
pub use trust::Verdict;
pub use unforget::{Brought, Unforgotten, unforget};
pub use update::{MirrorSync, SyncOutcome, SyncProgress, sync_mirrors};

/// The name that describes the primary itself (vendor, region) rather than a mirror.
pub const PRIMARY: &str = "primary";
