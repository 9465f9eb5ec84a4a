//! Where a damaged object is still intact: check judges one copy alone, and for each
//! stored object it finds damaged, the mirrors this host trusts are asked for a copy
//! that passes its check, so that the way out (repair from that mirror) can be named.

use super::judge::trusted_backends;
use crate::format::Id;
use crate::ops::problem::Problem;
use crate::repo::{FileKind, Repository};
use crate::report::Reporter;

/// For each problem in turn, the name of a trusted mirror holding the object intact;
/// `None` for problems that are not about a stored object, or that no mirror can cure.
pub fn intact_copies(
    repo: &Repository,
    problems: &[Problem],
    report: &dyn Reporter,
) -> Vec<Option<String>> {
    if problems.is_empty() {
        return Vec::new();
    }
    let mirrors = trusted_backends(repo, report);
    problems
        .iter()
        .map(|p| {
            let kind = stored_kind(&p.object)?;
            let id = p.id.as_deref().and_then(Id::from_hex)?;
            mirrors
                .iter()
                .find(|(_, b)| {
                    b.read(&kind.path(&id))
                        .is_ok_and(|bytes| crate::ops::sync::intact(kind, &id, &bytes))
                })
                .map(|(name, _)| name.clone())
        })
        .collect()
}

/// The kind of stored object a problem names, if it names one.
fn stored_kind(object: &str) -> Option<FileKind> {
    Some(match object {
        "pack" => FileKind::Data,
        "index" => FileKind::Index,
        "snapshot" => FileKind::Snapshot,
        "key" => FileKind::Key,
        _ => return None,
    })
}
