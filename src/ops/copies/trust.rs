//! Which mirror definitions this host uses. A definition is sealed, but any key holder can
//! write one, and every host would then copy the repository to it and hand it
//! credentials: so a host uses a mirror only once it was added or confirmed here (`vault
//! mirror add`, `vault mirror trust NAME`) or named in the profile in use. The record
//! lives in local state, not in the cache (VAULT_CACHE_DIR="" turns the cache off):
//! `$VAULT_STATE_DIR`, else `$XDG_STATE_HOME/vault`, else `~/.local/state/vault`, then
//! `<repository id>/mirrors.json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::error::VaultError;
use crate::format::mirror::MirrorDef;
use crate::repo::location::Access;

const STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    #[serde(default)]
    mirrors: BTreeMap<String, Trusted>,
}

/// One trusted definition, as the user confirmed it.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Trusted {
    /// `MirrorDef::fingerprint`: a newer definition of the name is not this one.
    pub definition: String,
    /// For the user reading the file; the fingerprint is what counts.
    pub url: String,
    #[serde(default)]
    pub generic_credentials: bool,
    #[serde(default)]
    pub insecure_http: bool,
    pub since: String,
}

/// What the profile in use says about a mirror (`[profiles.P.mirrors.NAME]`): the user
/// wrote it, so it may trust by name, or by name and URL.
#[derive(Clone, Debug, Default)]
pub struct ProfileTrust {
    pub trust: bool,
    pub url: Option<String>,
    pub generic_credentials: bool,
    pub insecure_http: bool,
}

static PROFILE: Mutex<BTreeMap<String, ProfileTrust>> = Mutex::new(BTreeMap::new());

/// Records the profile's word on mirror `name`.
pub fn from_profile(name: &str, t: ProfileTrust) {
    if let Ok(mut p) = PROFILE.lock() {
        p.insert(name.to_string(), t);
    }
}

fn profile_of(name: &str) -> ProfileTrust {
    PROFILE
        .lock()
        .ok()
        .and_then(|p| p.get(name).cloned())
        .unwrap_or_default()
}

/// Whether this host uses a definition, and with what.
pub enum Verdict {
    Trusted(Access),
    /// Not trusted; `redefined` when an older definition of the name was.
    Untrusted {
        redefined: bool,
    },
}

/// This host's trust for one repository.
pub struct Store {
    path: Option<PathBuf>,
    mirrors: BTreeMap<String, Trusted>,
}

/// The base of vault's local state, or None when there is no home to keep it in.
fn state_base() -> Option<PathBuf> {
    match std::env::var_os("VAULT_STATE_DIR") {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => dirs::state_dir()
            .or_else(|| dirs::home_dir().map(|h| h.join(".local/state")))
            .map(|d| d.join("vault")),
    }
}

impl Store {
    /// The trust recorded for repository `repo_id`; none when the file does not exist.
    pub fn load(repo_id: &str) -> Result<Store> {
        // The id comes from storage: only a real id may become a directory name.
        let path = state_base()
            .filter(|_| crate::format::config::is_repo_id(repo_id))
            .map(|b| b.join(repo_id).join("mirrors.json"));
        let mirrors = match &path {
            Some(p) => read_state(p)?,
            None => BTreeMap::new(),
        };
        Ok(Store { path, mirrors })
    }

    pub fn verdict(&self, def: &MirrorDef) -> Verdict {
        let profile = profile_of(&def.name);
        let local = self
            .mirrors
            .get(&def.name)
            .filter(|t| t.definition == def.fingerprint().to_hex());
        let by_profile = profile.trust && profile.url.as_ref().is_none_or(|u| *u == def.url);
        if local.is_none() && !by_profile {
            return Verdict::Untrusted {
                redefined: self.mirrors.contains_key(&def.name),
            };
        }
        Verdict::Trusted(Access {
            generic_credentials: profile.generic_credentials
                || local.is_some_and(|t| t.generic_credentials),
            insecure_http: profile.insecure_http || local.is_some_and(|t| t.insecure_http),
        })
    }

    /// Whether the name is trusted here by the profile rather than by local state.
    pub fn by_profile(def: &MirrorDef) -> bool {
        let p = profile_of(&def.name);
        p.trust && p.url.as_ref().is_none_or(|u| *u == def.url)
    }

    pub fn trust(&mut self, def: &MirrorDef, access: Access) {
        self.mirrors.insert(
            def.name.clone(),
            Trusted {
                definition: def.fingerprint().to_hex(),
                url: def.url.clone(),
                generic_credentials: access.generic_credentials,
                insecure_http: access.insecure_http,
                since: crate::repo::repository::now_rfc3339(),
            },
        );
    }

    /// Forgets the name; whether it was recorded.
    pub fn untrust(&mut self, name: &str) -> bool {
        self.mirrors.remove(name).is_some()
    }

    /// Writes the file whole (a temporary file renamed over it), 0600 in a 0700 directory.
    pub fn save(&self) -> Result<()> {
        let path = self.path.as_ref().ok_or_else(|| {
            VaultError::Usage(
                "no directory for vault's local state: set VAULT_STATE_DIR (or HOME)".into(),
            )
        })?;
        let state = StateFile {
            version: STATE_VERSION,
            mirrors: self.mirrors.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&state)?;
        write_private(path, &bytes)
            .with_context(|| format!("mirror trust state {}", path.display()))
    }
}

fn read_state(path: &Path) -> Result<BTreeMap<String, Trusted>> {
    let bad = |why: String| -> anyhow::Error {
        VaultError::Usage(format!(
            "mirror trust state {}: {why}: fix or remove it (then `vault mirror trust NAME` again)",
            path.display()
        ))
        .into()
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(bad(e.to_string())),
    };
    let state: StateFile =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a trust record ({e})")))?;
    if state.version != STATE_VERSION {
        return Err(bad(format!("unknown version {}", state.version)));
    }
    Ok(state.mirrors)
}

/// Creates the directories 0700 and replaces `path` atomically with a 0600 file.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let tmp = dir.join(format!(".mirrors.json.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = f.write_all(bytes).and_then(|_| f.sync_all());
    if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}
