//! Copying back what the primary lacks or holds damaged from another copy: a mirror
//! named in its list, or any copy given by URL (the only way when the primary no longer
//! opens, and so cannot tell its mirrors).

use anyhow::{Result, anyhow};

use super::judge::trusted_def;
use crate::error::one_line;
use crate::ops::sync::{self, CopyReport, Counters};
use crate::repo::location::Access;
use crate::repo::{Backend, Repository, Secret};
use crate::report::Reporter;

/// The copy to repair from.
pub struct RepairSource {
    /// As the user named it: a mirror's name, a URL or a path.
    pub name: String,
    pub url: String,
    /// What it may be sent, when it is a trusted mirror; None for a URL given directly.
    pub mirror: Option<Access>,
}

/// Resolves `from`: a URL or absolute path as it is, else a mirror of `target` that this
/// host trusts (which needs `target` to open).
pub fn repair_source(
    target: Result<&Repository, &anyhow::Error>,
    target_location: &str,
    from: &str,
) -> Result<RepairSource> {
    if from.contains("://") || from.starts_with('/') {
        return Ok(RepairSource {
            name: from.into(),
            url: from.into(),
            mirror: None,
        });
    }
    let repo = target.map_err(|e| {
        anyhow!(
            "{target_location}: cannot read its mirror list ({}); give the mirror's URL to --from",
            one_line(e)
        )
    })?;
    let (def, access) = trusted_def(repo, from)?;
    Ok(RepairSource {
        name: from.into(),
        url: def.url,
        mirror: Some(access),
    })
}

/// Copies back to the repository at `target_location` every object it lacks or holds
/// damaged, from `source`; except what the repository removed on purpose, as the forget
/// records and index files of either side tell. `target` is the repository opened, when
/// it still opens (the caller holds its shared lock); `secret` opens the source as a
/// repository, given its location.
pub fn repair_from(
    target_location: &str,
    target: Option<&mut Repository>,
    source: &RepairSource,
    secret: &dyn Fn(&str) -> Result<Secret>,
    report: &dyn Reporter,
) -> Result<CopyReport> {
    let from = match source.mirror {
        Some(access) => Backend::open_mirror(&source.url, &source.name, access)?,
        None => Backend::open(&source.url)?,
    };
    let to = Backend::open(target_location)?;
    let target = target.and_then(|r| {
        // The target's own objects, not what its mirrors or its cache would answer.
        r.backend = r.backend.alone();
        r.cache = None;
        r.load_index().ok().map(|_| &*r)
    });
    let skip = match open_source(&from, secret) {
        Ok(src) => sync::removed_on_purpose(&src, target)?,
        Err(e) => {
            report.warn(&format!(
                "{} cannot be opened ({}): copying back everything it holds",
                source.name,
                one_line(&e)
            ));
            Default::default()
        }
    };
    sync::heal(&to, &from, &skip, &Counters::default())
}

/// Opens a copy as a repository of its own, with its index.
fn open_source(source: &Backend, secret: &dyn Fn(&str) -> Result<Secret>) -> Result<Repository> {
    let secret = secret(source.location())?;
    let mut repo = Repository::open(source.clone(), &secret)?;
    repo.cache = None;
    repo.load_index()?;
    Ok(repo)
}
