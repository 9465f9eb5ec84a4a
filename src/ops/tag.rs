//! `vault tag`: a snapshot's tags changed. Snapshots are named by their content, so a
//! change is a new snapshot (same tree, time and everything else, `original` naming the
//! old one) and a forget of the old one. Until the forget, listings hide the old one
//! behind the new ([`crate::format::snapshot::superseded`]), so a kill at any instant
//! leaves one snapshot in view: the old one, or the new.

use std::collections::HashSet;

use anyhow::Result;
use serde::Serialize;

use crate::error::VaultError;
use crate::format::Id;
use crate::format::snapshot::Snapshot;
use crate::repo::Repository;

/// How tags change: `set` replaces them all (then nothing else may be given), else
/// `remove` and `add` edit them. One type for programs and the command line.
#[derive(Default, Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct TagChange {
    /// Add this tag (repeatable)
    #[cfg_attr(feature = "cli", arg(long, value_name = "TAG"))]
    pub add: Vec<String>,
    /// Remove this tag (repeatable)
    #[cfg_attr(feature = "cli", arg(long, value_name = "TAG"))]
    pub remove: Vec<String>,
    /// Replace all tags with these (repeatable; --set '' removes every tag)
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "TAG", conflicts_with_all = ["add", "remove"])
    )]
    pub set: Vec<String>,
}

impl TagChange {
    /// Refuses a change that changes nothing or names an empty tag.
    pub fn validate(&self) -> Result<()> {
        if self.add.is_empty() && self.remove.is_empty() && self.set.is_empty() {
            return Err(
                VaultError::Usage("vault tag: give --add, --remove or --set".into()).into(),
            );
        }
        for t in self.add.iter().chain(&self.remove) {
            if t.is_empty() {
                return Err(VaultError::Usage(
                    "vault tag: an empty tag (only --set '' means no tags)".into(),
                )
                .into());
            }
        }
        Ok(())
    }

    /// `tags` as this change leaves them: in their order, new ones after, no duplicates.
    pub fn apply(&self, tags: &[String]) -> Vec<String> {
        let start: Vec<&String> = if self.set.is_empty() {
            tags.iter().collect()
        } else {
            self.set.iter().filter(|t| !t.is_empty()).collect()
        };
        let mut seen = HashSet::new();
        start
            .into_iter()
            .chain(&self.add)
            .filter(|t| !self.remove.contains(t))
            .filter(|t| seen.insert(t.as_str()))
            .cloned()
            .collect()
    }
}

#[derive(Debug, Serialize)]
pub struct Retagged {
    pub old: Id,
    pub new: Id,
    pub tags: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Tagged {
    pub changed: Vec<Retagged>,
    /// Snapshots whose tags already were what the change asks for (left as they are).
    pub unchanged: Vec<String>,
}

/// Writes, for each of `snaps` whose tags `change` changes, the re-tagged snapshot; the
/// caller then forgets the old ones (after every new one is written).
pub fn retag(repo: &Repository, snaps: &[(Id, Snapshot)], change: &TagChange) -> Result<Tagged> {
    change.validate()?;
    let mut out = Tagged::default();
    for (id, s) in snaps {
        let tags = change.apply(&s.tags);
        if tags == s.tags {
            out.unchanged.push(id.to_hex());
            continue;
        }
        let mut new = s.clone();
        new.tags = tags.clone();
        new.original = Some(*id);
        let new_id = repo.save_snapshot(&new)?;
        out.changed.push(Retagged {
            old: *id,
            new: new_id,
            tags,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn add_remove_set() {
        let c = TagChange {
            add: v(&["keep", "a"]),
            remove: v(&["nightly"]),
            set: vec![],
        };
        assert_eq!(c.apply(&v(&["a", "nightly", "b"])), v(&["a", "b", "keep"]));
        let c = TagChange {
            set: v(&["x", "x", "y"]),
            ..Default::default()
        };
        assert_eq!(c.apply(&v(&["a"])), v(&["x", "y"]));
        let c = TagChange {
            set: v(&[""]),
            ..Default::default()
        };
        assert!(c.apply(&v(&["a"])).is_empty());
        assert!(TagChange::default().validate().is_err());
    }
}
