//! Defining mirrors in the repository, and this host's trust in them.

use anyhow::Result;
use serde::Serialize;

use super::PRIMARY;
use super::judge::{in_force, no_such};
use super::trust::{Store, Verdict};
use crate::error::VaultError;
use crate::format::mirror::MirrorDef;
use crate::repo::location::Access;
use crate::repo::repository::now_rfc3339;
use crate::repo::{Backend, Repository};

/// A mirror to define, as the user describes it.
pub struct NewMirror {
    pub name: String,
    /// A location URL or a local path.
    pub url: String,
    /// An S3 endpoint, folded into an `s3://` URL.
    pub endpoint: Option<String>,
    pub vendor: String,
    pub region: String,
    pub labels: Vec<String>,
    /// Protection period in seconds; 0: none (see `MirrorDef::protect`).
    pub protect: u64,
}

/// Defines a mirror and, unless it is `primary`, trusts it on this host (the user adds it
/// here: this host uses it). A location that is malformed or refused fails here, not at
/// the first sync.
pub fn add(repo: &Repository, new: NewMirror, access: Access) -> Result<MirrorDef> {
    repo.require_full("vault mirror add")?;
    if repo.mirror_defs()?.iter().any(|d| d.name == new.name) {
        return Err(VaultError::Usage(format!(
            "mirror {} exists: remove it first, or choose another name",
            new.name
        ))
        .into());
    }
    let url = mirror_url(&new.url, new.endpoint.as_deref(), &new.region)?;
    let is_mirror = new.name != PRIMARY;
    if !is_mirror && new.protect > 0 {
        return Err(VaultError::Usage(
            "--protect applies to mirrors; the primary is protected by the credentials of the hosts that write to it".into(),
        )
        .into());
    }
    let def = MirrorDef {
        version: MirrorDef::version_for(new.protect),
        name: new.name,
        url,
        vendor: new.vendor,
        region: new.region,
        labels: new.labels,
        created: now_rfc3339(),
        removed: false,
        protect: new.protect,
    };
    if is_mirror {
        Backend::open_mirror(&def.url, &def.name, access)?;
        super::object_lock::retention(&def, access)?;
    }
    if is_mirror {
        // Recorded first, so that a state that cannot be written leaves nothing in the
        // repository.
        let mut store = Store::load(&repo.config.id)?;
        store.trust(&def, access);
        store.save()?;
    }
    repo.save_mirror_def(&def)?;
    Ok(def)
}

/// The location URL to record: the user's URL with the endpoint and region folded in.
fn mirror_url(url: &str, endpoint: Option<&str>, region: &str) -> Result<String> {
    if !url.contains("://") {
        return Ok(std::path::absolute(url)?.to_string_lossy().into_owned());
    }
    let mut u =
        url::Url::parse(url).map_err(|e| VaultError::Usage(format!("mirror URL {url:?}: {e}")))?;
    if u.password().is_some() {
        return Err(VaultError::Usage(
            "never put a password in a mirror URL: credentials come from the environment".into(),
        )
        .into());
    }
    if u.scheme() == "s3" {
        let mut pairs = u.query_pairs_mut();
        if let Some(e) = endpoint {
            pairs.append_pair("endpoint", e);
        }
        if !region.is_empty() {
            pairs.append_pair("region", region);
        }
    }
    Ok(u.to_string())
}

/// One definition in force, as `mirror list` shows it.
#[derive(Serialize, Debug)]
pub struct Listed {
    #[serde(flatten)]
    pub def: MirrorDef,
    /// Whether this host uses it; None for `primary`, which is not a mirror.
    pub trusted: Option<bool>,
    /// What it may be sent, when trusted.
    #[serde(flatten)]
    pub access: Option<Granted>,
}

/// `Access`, as listed.
#[derive(Serialize, Debug)]
pub struct Granted {
    pub generic_credentials: bool,
    pub insecure_http: bool,
}

pub fn list(repo: &Repository) -> Result<Vec<Listed>> {
    let store = Store::load(&repo.config.id)?;
    let listed = |def: MirrorDef| {
        let verdict = (def.name != PRIMARY).then(|| store.verdict(&def));
        let access = match &verdict {
            Some(Verdict::Trusted(a)) => Some(Granted {
                generic_credentials: a.generic_credentials,
                insecure_http: a.insecure_http,
            }),
            _ => None,
        };
        Listed {
            trusted: verdict.map(|v| matches!(v, Verdict::Trusted(_))),
            access,
            def,
        }
    };
    Ok(repo.mirror_defs()?.into_iter().map(listed).collect())
}

/// Trusts the definition of `name` in force on this host, as the user sees it printed.
pub fn trust(repo: &Repository, name: &str, access: Access) -> Result<MirrorDef> {
    let def = in_force(repo, name)?;
    Backend::open_mirror(&def.url, &def.name, access)?; // a refused location fails here
    let mut store = Store::load(&repo.config.id)?;
    store.trust(&def, access);
    store.save()?;
    Ok(def)
}

/// What `untrust` found.
pub struct Untrusted {
    pub was_trusted: bool,
    /// The profile in use trusts the name all the same.
    pub profile_trusts: bool,
}

pub fn untrust(repo: &Repository, name: &str) -> Result<Untrusted> {
    let mut store = Store::load(&repo.config.id)?;
    let was_trusted = store.untrust(name);
    if was_trusted {
        store.save()?;
    }
    let profile_trusts = repo
        .mirror_defs()?
        .iter()
        .any(|d| d.name == name && Store::by_profile(d));
    Ok(Untrusted {
        was_trusted,
        profile_trusts,
    })
}

/// Records `name` as removed (its copy is left as it is) and forgets this host's trust
/// in it; the definition it removed.
pub fn remove(repo: &Repository, name: &str) -> Result<MirrorDef> {
    repo.require_full("vault mirror remove")?;
    let Some(mut def) = repo.mirror_defs()?.into_iter().find(|d| d.name == name) else {
        return Err(no_such(name));
    };
    def.removed = true;
    def.created = now_rfc3339();
    repo.save_mirror_def(&def)?;
    let mut store = Store::load(&repo.config.id)?;
    if store.untrust(name) {
        store.save()?;
    }
    Ok(def)
}
