//! Choosing a snapshot: `latest` or an id prefix, narrowed by host, path and tag.

use anyhow::{Result, bail};

use crate::error::VaultError;
use crate::format::Id;
use crate::format::snapshot::Snapshot;
use crate::repo::Repository;

#[derive(Default, Clone, Debug)]
pub struct Filter {
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
}

impl Filter {
    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.host))
            && self.paths.iter().all(|p| s.paths.contains(p))
            && self.tags.iter().all(|t| s.tags.contains(t))
    }
}

/// Readable snapshots matching `filter`, oldest first; damaged ones are reported by `warn`.
pub fn list(
    repo: &Repository,
    filter: &Filter,
    warn: &dyn Fn(String),
) -> Result<Vec<(Id, Snapshot)>> {
    let mut out = Vec::new();
    for (id, s) in repo.snapshots()? {
        match s {
            Ok(s) if filter.matches(&s) => out.push((id, s)),
            Ok(_) => {}
            Err(e) => warn(crate::error::one_line(&e)),
        }
    }
    Ok(out)
}

pub fn select(
    repo: &Repository,
    spec: &str,
    filter: &Filter,
    warn: &dyn Fn(String),
) -> Result<(Id, Snapshot)> {
    let all = list(repo, filter, warn)?;
    if spec == "latest" {
        return match all.into_iter().next_back() {
            Some(x) => Ok(x),
            None => bail!(
                "no snapshot matches (host {:?}, paths {:?}, tags {:?}): see `vault snapshots`",
                filter.hosts,
                filter.paths,
                filter.tags
            ),
        };
    }
    let spec_l = spec.to_ascii_lowercase();
    if spec_l.is_empty() || !spec_l.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(VaultError::Usage(format!(
            "snapshot {spec:?}: give `latest` or a snapshot id (prefix)"
        ))
        .into());
    }
    let mut hits: Vec<(Id, Snapshot)> = all
        .into_iter()
        .filter(|(id, _)| id.to_hex().starts_with(&spec_l))
        .collect();
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => bail!("snapshot {spec}: no such snapshot (see `vault snapshots`)"),
        n => bail!("snapshot {spec}: prefix matches {n} snapshots; give more digits"),
    }
}
