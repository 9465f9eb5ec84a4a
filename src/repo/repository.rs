//! An open repository: backend, keys, config, index; reading blobs, trees and snapshots.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::backend::{Backend, CONFIG_PATH, FileKind, is_not_found, is_storage_error};
use super::cache::Cache;
use super::index::{IndexBuilder, MasterIndex};
use crate::error::{Advised, Remedy, VaultError};
use crate::format::config::{ChunkerParams, Config};
use crate::format::crypto::{Keys, MasterKey};
use crate::format::index::IndexFile;
use crate::format::keyfile::{self, KdfCost, KeyFile, KeyPayload};
use crate::format::mirror::{ExportRecord, ForgetRecord, MirrorDef};
use crate::format::pack::{self, BlobType};
use crate::format::snapshot::Snapshot;
use crate::format::tree::{LazyTree, Tree};
use crate::format::{FormatError, Id};

/// How the user proves they may open the repository.
pub enum Secret {
    Password(Vec<u8>),
    /// A raw master key (VAULT_KEY_FILE), which skips the password KDF.
    Master(MasterKey),
}

/// The contents of a file written by `vault key export --raw`.
#[derive(Serialize, Deserialize)]
pub struct RawKeyFile {
    pub vault_raw_key: u32,
    pub repository: String,
    pub master_key: String,
    /// After a key rotation (format 5): what blob ids derive from (§3.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_key: Option<String>,
}

impl RawKeyFile {
    /// The raw key of `master` for the repository `repository` (a config id): version
    /// 2 when it carries a content key, which older vaults would not use.
    pub fn of(master: &MasterKey, repository: &str) -> RawKeyFile {
        use base64::Engine;
        let content_key = master
            .content_bytes()
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c));
        RawKeyFile {
            vault_raw_key: if content_key.is_some() { 2 } else { 1 },
            repository: repository.to_string(),
            master_key: keyfile::encode_master(master),
            content_key,
        }
    }

    /// The master key it holds, with its content key.
    pub fn master(&self) -> Result<MasterKey, FormatError> {
        let what = "raw key file";
        let key = MasterKey::from_bytes(*keyfile::bytes32_named(
            what,
            "master_key",
            &self.master_key,
        )?);
        Ok(match &self.content_key {
            Some(c) => key.with_content(*keyfile::bytes32_named(what, "content_key", c)?),
            None => key,
        })
    }
}

/// The raw key's strings are as secret as the key.
impl Drop for RawKeyFile {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.master_key.zeroize();
        self.content_key.zeroize();
    }
}

/// An object whose stored bytes are a whole, authentic object (they open with the key)
/// but do not hash to its name: another object copied over it (swapped) or one a key
/// holder wrote under a name of their choosing (forged). Never used: its bytes may be an
/// older snapshot or index standing in for the real one. Only `check`, `audit` and
/// `repair` go on past it, to report and replace it.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {}", id.short(), MISNAMED)]
pub struct Misnamed {
    /// "snapshot" or "index".
    pub what: &'static str,
    pub id: Id,
}

/// What is wrong with a misnamed object, as reports word it.
pub const MISNAMED: &str = "stored bytes do not match its name (swapped or forged)";

/// Whether `e` is (or was caused by) a [`Misnamed`] object.
pub fn is_misnamed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Misnamed>())
}

/// No copy of a hash-named object read whole had bytes that hash to its name.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: content does not match its name (damaged)", id.short())]
struct NameMismatch {
    what: &'static str,
    id: Id,
}

/// Objects fetched at once by `prefetch_named`.
const PREFETCHERS: usize = 8;

/// A kind of hash-named object read whole: where it is stored and cached, and what
/// messages call it.
#[derive(Clone, Copy)]
pub(super) struct Named {
    pub(super) kind: FileKind,
    pub(super) cache: &'static str,
    pub(super) what: &'static str,
}

impl Named {
    const SNAPSHOT: Named = Named {
        kind: FileKind::Snapshot,
        cache: "snapshots",
        what: "snapshot",
    };
    const INDEX: Named = Named {
        kind: FileKind::Index,
        cache: "index",
        what: "index",
    };
}

pub struct InitOptions {
    pub chunker: ChunkerParams,
    pub pack_size: u32,
    pub compression_level: i32,
    /// What a guess at the first key's password costs (§3.2).
    pub kdf: KdfCost,
    pub label: String,
    /// The config's format version (REPO_VERSION, or older for older vaults).
    pub version: u32,
}

impl InitOptions {
    /// Options from the sizes people give: an average chunk of 1 KiB to 4 MiB, a pack
    /// under 4 GiB, a zstd level, the first key's label and a format version (older
    /// formats for repositories that older vaults must read).
    pub fn new(
        chunk_size: u64,
        pack_size: u64,
        compression_level: i32,
        label: String,
        version: u32,
    ) -> Result<InitOptions, VaultError> {
        let avg = u32::try_from(chunk_size)
            .ok()
            .filter(|v| (1024..=4 << 20).contains(v))
            .ok_or_else(|| VaultError::Usage("--chunk-size: give 1K to 4M".into()))?
            & !1;
        let mut chunker = ChunkerParams::with_avg(avg);
        if version < 3 {
            // Older vaults know only the XOR-seeded table; with it they deduplicate alike.
            chunker.gear = None;
        }
        Ok(InitOptions {
            chunker,
            pack_size: u32::try_from(pack_size)
                .map_err(|_| VaultError::Usage("--pack-size must be under 4 GiB".into()))?,
            compression_level,
            kdf: default_kdf(),
            label,
            version,
        })
    }
}

impl Default for InitOptions {
    /// What `vault init` creates without options; the password's scrypt cost is
    /// 32 MiB with lanes calibrated to about 250 ms on this machine (or VAULT_KDF_LOG_N).
    fn default() -> InitOptions {
        InitOptions {
            chunker: ChunkerParams::with_avg(128 << 10),
            pack_size: 16 << 20,
            compression_level: 3,
            kdf: default_kdf(),
            label: "initial".into(),
            version: crate::format::config::REPO_VERSION,
        }
    }
}

/// What the key that opened a repository holds.
#[derive(Clone)]
pub enum Access {
    /// The master key: everything.
    Full(MasterKey),
    /// A backup-role key (format 4, §20).
    Backup(Box<keyfile::BackupPayload>),
}

pub struct Repository {
    pub backend: Backend,
    pub keys: Keys,
    access: Access,
    pub config: Config,
    /// The format version: the config's, or higher after `vault upgrade` (§18).
    pub format: u32,
    /// The key file that opened the repository (None for a raw master key).
    pub key_id: Option<Id>,
    pub cache: Option<Cache>,
    index: Arc<MasterIndex>,
    /// Index files that could not be read at the last `load_index`, and why; their
    /// blobs count as absent until `vault repair index` rebuilds them.
    pub damaged_index: Vec<(Id, String)>,
    /// Those of `damaged_index` that are misnamed (see [`Misnamed`]): commands other than
    /// check, audit and repair refuse to run while there is one (`refuse_misnamed`).
    pub misnamed_index: Vec<Id>,
    /// Index files that others supersede (as of the last `load_index`).
    pub superseded: HashSet<Id>,
    /// For each superseded index file, the index files that supersede it.
    pub superseders: HashMap<Id, Vec<Id>>,
    /// Marks, revivals and deletions as the last `load_index` found them.
    pub marks: super::marks::PruneState,
    /// Held while a tree pack is fetched into the cache (the scanner threads that all
    /// miss it at once must not all download it, and hold it in memory, at once); it
    /// holds the packs that could not be fetched whole, not to be tried again.
    fetching_trees: std::sync::Mutex<HashSet<Id>>,
    /// Without a cache (check, audit and verify read storage itself), the tree packs
    /// last read whole from remote storage, newest last: a walk then costs a request
    /// per tree pack instead of one per directory.
    tree_packs: std::sync::Mutex<TreePacks>,
}

/// Tree packs held in memory while a command walks trees without a cache.
#[derive(Default)]
struct TreePacks {
    held: std::collections::VecDeque<(Id, Arc<Vec<u8>>)>,
    /// Packs that did not read whole and intact: their blobs are read one by one, so
    /// that whatever is damaged is found blob by blob.
    refused: HashSet<Id>,
}

/// Tree packs held by `TreePacks`: a snapshot's trees are written together, so its walk
/// moves from one tree pack to the next.
const TREE_PACKS_HELD: usize = 2;

/// What one pass over the index files found (see `Repository::index_pass`).
#[derive(Default)]
struct IndexPass {
    mi: IndexBuilder,
    superseded: HashSet<Id>,
    superseders: HashMap<Id, Vec<Id>>,
    damaged: Vec<(Id, String)>,
    misnamed: Vec<Id>,
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

pub fn username() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| nix::unistd::getuid().to_string())
}

/// How long one derivation of a new key may take: opening pays it on every command, so
/// it stays well under what a no-change backup costs otherwise.
pub const KDF_TARGET: Duration = Duration::from_millis(250);

/// The scrypt cost of a new key: 32 MiB with lanes calibrated to `KDF_TARGET`, or N
/// fixed by VAULT_KDF_LOG_N with one lane (never below the floor of 15, which the key
/// file format enforces too).
pub fn default_kdf() -> KdfCost {
    match std::env::var("VAULT_KDF_LOG_N")
        .ok()
        .and_then(|v| v.parse::<u8>().ok())
    {
        Some(n) => KdfCost::with_log_n(n),
        None => keyfile::calibrate(KDF_TARGET),
    }
}

fn new_payload(master: &MasterKey, label: &str) -> KeyPayload {
    KeyPayload::full(master, label, &hostname(), &username(), &now_rfc3339())
}

/// The working keys for `access` in a repository of `format`: with the role keys from
/// format 4 on (§20), a full key writing trees and snapshots as this machine's host.
fn role_keys(keys: Keys, access: &Access, format: u32) -> Result<Keys> {
    match access {
        Access::Full(m) => Ok(full_keys(m, &hostname(), writing_format(m, format), format)),
        Access::Backup(_) if format < crate::format::config::ROLES_VERSION => {
            bail!("a backup-role key in a repository of format {format}")
        }
        Access::Backup(b) => Ok(keys.with_roles(b.role_keys()?)),
    }
}

/// The format a full key writes in a repository whose config says `config_version`: a
/// key rotating it writes what the rotated repository holds (format 5).
fn writing_format(m: &MasterKey, config_version: u32) -> u32 {
    if m.previous().is_some() {
        config_version.max(crate::format::config::ROTATED_VERSION)
    } else {
        config_version
    }
}

/// A full key's working keys writing `format`, trees and snapshots as `host`; while a
/// key rotation is in progress, the previous master key's beside them, as the
/// repository's config (`previous_format`) had them, to open what is not resealed yet.
fn full_keys(m: &MasterKey, host: &str, format: u32, previous_format: u32) -> Keys {
    let of = |m: &MasterKey, format: u32| {
        let keys = m.derive();
        if format < crate::format::config::ROLES_VERSION {
            keys
        } else {
            keys.with_roles(crate::format::roles::RoleKeys::full(m, host))
        }
    };
    match m.previous() {
        Some(p) => of(m, format).with_previous(of(&p, previous_format)),
        None => of(m, format),
    }
}

impl Repository {
    pub fn init(backend: Backend, password: &[u8], opts: &InitOptions) -> Result<Repository> {
        if backend.exists(CONFIG_PATH)? {
            return Err(VaultError::AlreadyExists(backend.location().to_string()).into());
        }
        clear_failed_init(&backend)?;
        let config = Config {
            version: opts.version,
            id: Id::random().to_hex(),
            chunker: opts.chunker.clone(),
            pack_size: opts.pack_size,
            compression_level: opts.compression_level,
            created: now_rfc3339(),
        };
        config
            .validate()
            .map_err(|e| VaultError::Usage(format!("init: {e}")))?;
        let master = MasterKey::generate();
        let access = Access::Full(master.clone());
        let keys = role_keys(master.derive(), &access, config.version)?;
        backend.create_layout()?;
        let kf = KeyFile::create(password, opts.kdf, &new_payload(&master, &opts.label))?;
        let kbytes = kf.to_bytes();
        let key_id = Id::of_stored(&kbytes);
        backend.write(&FileKind::Key.path(&key_id), kbytes)?;
        // The config is written last: a repository exists exactly when its config does.
        backend.write(CONFIG_PATH, config.seal(&keys))?;
        let cache = Cache::for_repo(&config.id);
        Ok(Repository {
            backend,
            keys,
            access,
            format: config.version,
            config,
            key_id: Some(key_id),
            cache,
            index: Arc::new(MasterIndex::default()),
            damaged_index: Vec::new(),
            misnamed_index: Vec::new(),
            superseded: HashSet::new(),
            superseders: HashMap::new(),
            marks: Default::default(),
            fetching_trees: std::sync::Mutex::new(HashSet::new()),
            tree_packs: std::sync::Mutex::new(TreePacks::default()),
        })
    }

    pub fn open(backend: Backend, secret: &Secret) -> Result<Repository> {
        let loc = backend.location().to_string();
        let cfg_bytes = match backend.read(CONFIG_PATH) {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => {
                // A missing bucket reads as a missing config: say which.
                return Err(backend
                    .why_absent()
                    .unwrap_or_else(|| VaultError::NoRepository(loc).into()));
            }
            Err(e) => return Err(e.context("reading the repository config")),
        };
        match secret {
            Secret::Master(m) => Self::open_as(backend, &cfg_bytes, Access::Full(m.clone()), None),
            // Every key file the password opens is tried until one opens the repository:
            // beside the key file of a rotation its old one stays until the rotation
            // removes it, and on a protected mirror until `vault maintain` does.
            Secret::Password(pw) => unlock_with_password(&backend, pw, |access, id| {
                Self::open_as(backend.clone(), &cfg_bytes, access, Some(id))
            }),
        }
    }

    /// Opens the repository with the key `access` gives.
    fn open_as(
        backend: Backend,
        cfg_bytes: &[u8],
        access: Access,
        key_id: Option<Id>,
    ) -> Result<Repository> {
        let loc = backend.location().to_string();
        let keys = match &access {
            // The config is sealed without roles; its format decides them.
            Access::Full(m) => full_keys(m, "", 1, 1),
            Access::Backup(b) => b.keys()?,
        };
        let config = match Config::open(&keys, cfg_bytes) {
            Ok(c) => c,
            Err(FormatError::BadMac) if key_id.is_none() => {
                return Err(VaultError::WrongPassword(format!(
                    "{loc} (the raw key file is for another repository, or a key rotation replaced it)"
                ))
                .into());
            }
            // The checksum held, so the config is intact and sealed under another key.
            Err(FormatError::BadMac) => {
                return Err(VaultError::KeyRetired(format!(
                    "{loc}: the key this password opens no longer opens the repository (`vault key rotate` replaced it); use the password of the new key"
                ))
                .into());
            }
            Err(FormatError::Version { version, .. }) => {
                return Err(anyhow!(
                    "{loc}: repository version {version} is newer than this vault reads (up to {}): upgrade vault",
                    crate::format::config::NEWEST_VERSION
                ));
            }
            Err(e) => return Err(anyhow!(e).context(format!("{loc}/config is damaged"))),
        };
        let cache = Cache::for_repo(&config.id);
        let keys = role_keys(keys, &access, config.version)?;
        let format = super::marks::format_version(&backend, &keys, config.version)?;
        if let Access::Full(m) = &access
            && m.previous().is_none()
            && format >= crate::format::config::ROTATED_VERSION
            && config.version < crate::format::config::ROTATED_VERSION
        {
            return Err(ReplacedKey(loc).into());
        }
        Ok(Repository {
            backend,
            keys,
            access,
            format,
            config,
            key_id,
            cache,
            index: Arc::new(MasterIndex::default()),
            damaged_index: Vec::new(),
            misnamed_index: Vec::new(),
            superseded: HashSet::new(),
            superseders: HashMap::new(),
            marks: Default::default(),
            fetching_trees: std::sync::Mutex::new(HashSet::new()),
            tree_packs: std::sync::Mutex::new(TreePacks::default()),
        })
    }

    pub fn location(&self) -> &str {
        self.backend.location()
    }

    /// The master key; a backup-role key has none, and may not do what needs it.
    pub fn master_key(&self) -> Result<&MasterKey> {
        match &self.access {
            Access::Full(m) => Ok(m),
            Access::Backup(_) => {
                Err(VaultError::NotPermitted("this needs the master key".into()).into())
            }
        }
    }

    /// Refuses `what` to a backup-role key (§20).
    pub fn require_full(&self, what: &str) -> Result<()> {
        match &self.access {
            Access::Full(_) => Ok(()),
            Access::Backup(_) => Err(VaultError::NotPermitted(what.to_string()).into()),
        }
    }

    /// Writes trees and snapshots as `host` from now on: a full key may write as any
    /// host; a backup-role key only as its own (§20).
    pub fn write_as(&mut self, host: &str) -> Result<()> {
        let Some(roles) = self.keys.roles() else {
            return Ok(());
        };
        match &self.access {
            Access::Full(m) => {
                if roles.own_host().id != crate::format::roles::derive_host_key(m, host).id {
                    let format = writing_format(m, self.config.version);
                    self.keys = full_keys(m, host, format, self.config.version);
                }
                Ok(())
            }
            Access::Backup(b) if b.host == host => Ok(()),
            Access::Backup(b) => Err(VaultError::NotPermitted(format!(
                "backing up as host {host:?} (this key writes as {:?})",
                b.host
            ))
            .into()),
        }
    }

    /// The host a backup-role key writes as; None for a full key.
    pub fn backup_host(&self) -> Option<&str> {
        match &self.access {
            Access::Full(_) => None,
            Access::Backup(b) => Some(&b.host),
        }
    }

    /// The chunker's secrets, from the master key or a backup-role key's payload.
    pub fn chunker_secret(&self) -> Result<crate::format::crypto::ChunkerSecret> {
        match &self.access {
            Access::Full(m) => Ok(m.chunker_secret()),
            Access::Backup(b) => Ok(b.chunker_secret()?),
        }
    }

    // ---- keys ----

    pub fn add_key(&self, password: &[u8], label: &str, cost: KdfCost) -> Result<Id> {
        self.write_key(password, cost, &new_payload(self.master_key()?, label))
    }

    /// Writes a key file holding `master` (a key rotation's new key); its id.
    pub fn add_key_of(
        &self,
        master: &MasterKey,
        password: &[u8],
        label: &str,
        cost: KdfCost,
    ) -> Result<Id> {
        self.require_full("writing a key of another master key")?;
        self.write_key(password, cost, &new_payload(master, label))
    }

    /// Works with `master`, held by key file `id`, from now on: a key rotation's new key.
    pub fn become_key(&mut self, master: MasterKey, id: Id) {
        let format = writing_format(&master, self.config.version);
        self.keys = full_keys(&master, &hostname(), format, self.config.version);
        self.access = Access::Full(master);
        self.key_id = Some(id);
    }

    /// Seals `payload` under `password` and stores it as a key file; its id.
    fn write_key(&self, password: &[u8], cost: KdfCost, payload: &KeyPayload) -> Result<Id> {
        let bytes = KeyFile::create(password, cost, payload)?.to_bytes();
        let id = Id::of_stored(&bytes);
        self.backend.write(&FileKind::Key.path(&id), bytes)?;
        Ok(id)
    }

    /// Every key file with its metadata (damaged ones as errors in place).
    pub fn list_keys(&self) -> Result<Vec<(Id, Result<keyfile::KeyMeta>)>> {
        let mut out = Vec::new();
        for id in self.backend.list(FileKind::Key)? {
            let r = read_key_file(&self.backend, &id).and_then(|(kf, name_ok)| {
                if !name_ok {
                    bail!("content does not match its name (damaged)");
                }
                Ok(kf.meta(&self.keys)?)
            });
            out.push((id, r));
        }
        Ok(out)
    }

    pub fn remove_key(&self, id: &Id) -> Result<()> {
        self.require_full("removing a key")?;
        let keys = self.backend.list(FileKind::Key)?;
        if !keys.contains(id) {
            let msg = format!("key {} not found", id.short());
            return Err(Advised::error(msg, Remedy::ListKeys));
        }
        if keys.len() == 1 {
            let msg = format!("key {} is the only key", id.short());
            return Err(Advised::error(msg, Remedy::AddKeyFirst));
        }
        self.backend.delete(&FileKind::Key.path(id))
    }

    /// The key whose id starts with `prefix`; it must name exactly one.
    pub fn find_key(&self, prefix: &str) -> Result<Id> {
        let p = prefix.to_ascii_lowercase();
        let hits: Vec<Id> = self
            .backend
            .list(FileKind::Key)?
            .into_iter()
            .filter(|k| k.to_hex().starts_with(&p))
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => Err(Advised::error(
                format!("key {prefix}: no such key"),
                Remedy::ListKeys,
            )),
            _ => {
                Err(VaultError::Usage(format!("key {prefix}: prefix matches several keys")).into())
            }
        }
    }

    /// Replaces the key this repository was opened with by one for `password`: the new
    /// key is written before the old one is removed, so there is never no key. Returns
    /// the new key's id and the old one's.
    pub fn change_password(&self, password: &[u8], label: &str, cost: KdfCost) -> Result<(Id, Id)> {
        let old = self
            .key_id
            .ok_or_else(|| Advised::error("opened with a raw key file", Remedy::AddPassword))?;
        let id = self.add_key(password, label, cost)?;
        self.remove_key(&old).context("removing the old key")?;
        Ok((id, old))
    }

    /// The master key as paper lines (`key export --paper`): eight of them where the key
    /// has a content key of its own (format 5), four otherwise.
    pub fn paper_key(&self) -> Result<String> {
        Ok(crate::format::paper::encode(
            self.master_key()?,
            &self.config.id,
        ))
    }

    pub fn raw_key_export(&self) -> Result<RawKeyFile> {
        Ok(RawKeyFile::of(self.master_key()?, &self.config.id))
    }

    /// Adds a backup-role key for `host` (§20): it holds no master key.
    pub fn add_backup_key(
        &self,
        password: &[u8],
        label: &str,
        host: &str,
        cost: KdfCost,
    ) -> Result<Id> {
        if self.config.version < crate::format::config::ROLES_VERSION {
            return Err(VaultError::Usage(format!(
                "a backup-role key needs a repository of format {} (this one is {}): \
                 init a new one with --format-version {}",
                crate::format::config::ROLES_VERSION,
                self.config.version,
                crate::format::config::ROLES_VERSION
            ))
            .into());
        }
        if host.is_empty() || host.chars().any(char::is_control) {
            return Err(VaultError::Usage(format!(
                "--host {host:?}: give the host name the key backs up as (no control characters)"
            ))
            .into());
        }
        let master = self.master_key()?;
        let mut payload = new_payload(master, label);
        payload.master_key.clear();
        // Its content keys are in `backup`; it never takes part in a rotation.
        payload.content_key = None;
        payload.previous_key = None;
        payload.host = host.to_string();
        payload.backup = Some(keyfile::BackupPayload::derive(master, host));
        self.write_key(password, cost, &payload)
    }

    // ---- index ----

    pub fn index(&self) -> Arc<MasterIndex> {
        self.index.clone()
    }

    /// The index files that make up the current index (not superseded), read again:
    /// prune needs every entry, duplicates included, which the master index folds.
    pub fn index_files(&self) -> Result<Vec<(Id, IndexFile)>> {
        let index = self.index.clone();
        index
            .files
            .iter()
            .map(|id| {
                let f = self.open_named(Named::INDEX, id, None, |b| {
                    IndexFile::open_owned(&self.keys, b)
                })?;
                Ok((*id, f))
            })
            .collect()
    }

    /// Loads every index file, from the local cache when it holds them. A damaged index
    /// file is skipped and recorded in `damaged_index`.
    pub fn load_index(&mut self) -> Result<()> {
        self.load_index_with(IndexBuilder::with_capacity, false)
    }

    /// Loads the index as a backup needs it: data blobs only known to exist (a third of
    /// the memory; see [`IndexBuilder::data_ids_only`]), trees with their places.
    pub fn load_index_for_backup(&mut self) -> Result<()> {
        self.load_index_with(IndexBuilder::data_ids_only, true)
    }

    /// Loads the index with trees only: enough to walk snapshots and learn what a
    /// restore will read, for [`Repository::load_index_keeping`].
    pub fn load_index_trees(&mut self) -> Result<()> {
        self.load_index_with(IndexBuilder::trees_only, false)
    }

    /// Loads the index keeping, of data blobs, the places of `wanted` only: a restore
    /// of one file from a repository of millions of blobs holds a few entries.
    pub fn load_index_keeping(&mut self, wanted: Vec<Id>) -> Result<()> {
        self.load_index_with(|_| IndexBuilder::only(wanted), false)
    }

    /// Loads the index as a backup confirming its snapshot needs it: like
    /// `load_index_for_backup`, but with packs being deleted, whose blobs it may copy.
    pub fn load_index_for_confirm(&mut self) -> Result<()> {
        self.load_index_with(IndexBuilder::data_ids_only, false)
    }

    /// `for_backup`: packs being deleted are left out, so that nothing new comes to
    /// rely on them; readers keep them, after every other copy, while they last.
    ///
    /// Each index file is opened, added and dropped in turn, so that the peak is the
    /// table being built and one file, not every file decoded beside it.
    fn load_index_with(
        &mut self,
        builder: impl FnOnce(usize) -> IndexBuilder,
        for_backup: bool,
    ) -> Result<()> {
        self.marks = self.prune_state()?;
        let sized = self.backend.list_sized(FileKind::Index)?;
        // An upper bound of the blobs listed (each takes at least this many stored
        // bytes): pages reserved and never written cost no memory.
        let bound = |sized: &[(Id, u64)]| {
            let bytes: u64 = sized.iter().map(|(_, n)| n).sum();
            usize::try_from(bytes / 40).unwrap_or(usize::MAX)
        };
        let (marked, deleting) = (self.marks.marked(), self.marks.deleting());
        // Of a blob stored twice, the copy used is in a pack in force, else a marked
        // one, else one being deleted.
        let tier = |p: &Id| match (deleting.contains(p), marked.contains_key(p)) {
            (true, _) => 2,
            (false, true) => 1,
            (false, false) => 0,
        };
        let keep = |p: &Id| !(for_backup && deleting.contains(p));
        // The data listing (for packs no index lists) waits on the backend while the index
        // files are decrypted and decoded. (Decoding them on several threads too saved a
        // few milliseconds but kept 3 MB more resident: each thread's allocator arena.)
        let (packs, pass) = std::thread::scope(|s| {
            let packs = s.spawn(|| self.backend.list(FileKind::Data));
            self.prefetch_named(Named::INDEX, &sized);
            let none = HashSet::new();
            let mut pass = self.index_pass(&sized, builder(bound(&sized)), &none, &tier, &keep);
            // A file superseded by one read after it (a prune or repair was stopped
            // before deleting it) was added: read them all again without it.
            if pass.mi.files().iter().any(|f| pass.superseded.contains(f)) {
                let skip = std::mem::take(&mut pass.superseded);
                let mi = std::mem::take(&mut pass.mi).restart();
                pass = self.index_pass(&sized, mi, &skip, &tier, &keep);
            }
            let packs = packs
                .join()
                .unwrap_or_else(|_| Err(anyhow!("listing the data packs panicked")));
            (packs, pass)
        });
        let IndexPass {
            mut mi,
            superseded,
            superseders,
            damaged,
            misnamed,
        } = pass;
        self.damaged_index = damaged;
        self.misnamed_index = misnamed;
        self.superseded = superseded;
        self.superseders = superseders;
        let packs: Vec<Id> = packs?;
        let (dying, packs): (Vec<Id>, Vec<Id>) =
            packs.into_iter().partition(|p| deleting.contains(p));
        self.index_from_headers(&mut mi, packs, for_backup);
        if !for_backup {
            self.index_from_headers_dying(&mut mi, dying);
        }
        let index = mi.finish();
        if log::log_enabled!(log::Level::Info) {
            let (data, trees) = index.placed();
            log::info!(
                "index: {data} data blobs and {trees} trees placed, {} more known to exist",
                index.len() - data - trees
            );
        }
        if let Some(c) = &self.cache {
            c.retain("index", &sized.iter().map(|(id, _)| *id).collect());
            c.retain("packs", &index.pack_ids());
            c.drop_kind("trees"); // single tree blobs, as earlier builds cached them
        }
        self.index = Arc::new(index);
        release_free_memory();
        Ok(())
    }

    /// One pass over the index files `sized`: each readable one not in `skip` is added
    /// to `mi` (its packs that `keep` takes, in their `tier`), and what every readable
    /// one supersedes is gathered. A damaged index file is skipped and recorded: one bad
    /// file must not stop the restore of everything the others describe.
    fn index_pass(
        &self,
        sized: &[(Id, u64)],
        mut mi: IndexBuilder,
        skip: &HashSet<Id>,
        tier: &dyn Fn(&Id) -> u8,
        keep: &dyn Fn(&Id) -> bool,
    ) -> IndexPass {
        let mut pass = IndexPass::default();
        for (id, size) in sized {
            let opened = self.open_named(Named::INDEX, id, Some(*size), |b| {
                IndexFile::open_owned(&self.keys, b)
            });
            match opened {
                Ok(f) => {
                    for old in &f.supersedes {
                        pass.superseded.insert(*old);
                        pass.superseders.entry(*old).or_default().push(*id);
                    }
                    if skip.contains(id) {
                        continue;
                    }
                    mi.add_file_id(*id);
                    for p in f.packs.iter().filter(|p| keep(&p.pack)) {
                        mi.add_pack_in(p.pack, &p.blobs, tier(&p.pack));
                    }
                }
                Err(e) if is_not_found(&e) => {} // deleted since the listing (prune)
                Err(e) if is_misnamed(&e) => {
                    pass.misnamed.push(*id);
                    pass.damaged.push((*id, MISNAMED.into()));
                }
                Err(e) => pass.damaged.push((*id, crate::error::one_line(&e))),
            }
        }
        pass.mi = mi;
        pass
    }

    /// Packs in no (readable) index file: left by an interrupted backup, or described by
    /// a damaged index file. Their own headers say what they hold, so their blobs stay
    /// usable; `adopt_unindexed` writes them into an index file.
    ///
    /// `whole`: for a backup, which adopts them and dedups against them, each pack must
    /// also hash to its name. Storage that takes writes only under final names (spec
    /// §17) may hold a pack still being written, or one a killed writer left with its
    /// header but not every byte before it.
    fn index_from_headers(&self, mi: &mut IndexBuilder, packs: Vec<Id>, whole: bool) {
        let known = mi.pack_ids();
        for pack in packs {
            if known.contains(&pack) {
                continue;
            }
            let Ok(blobs) = self.read_pack_header(&pack) else {
                continue;
            };
            if whole && !self.pack_is_whole(&pack) {
                log::info!(
                    "pack {} is in no index file and does not hash to its name: not used",
                    pack.short()
                );
                continue;
            }
            mi.add_unindexed(pack, blobs);
        }
    }

    fn pack_is_whole(&self, pack: &Id) -> bool {
        let path = FileKind::Data.path(pack);
        self.backend
            .read_verified(&path, &|b| Id::of_stored(b) == *pack, &|| {
                anyhow!("does not hash to its name")
            })
            .is_ok()
    }

    /// Packs being deleted that no index file lists, for readers: used after every
    /// other copy, and never adopted into an index file.
    fn index_from_headers_dying(&self, mi: &mut IndexBuilder, packs: Vec<Id>) {
        let known = mi.pack_ids();
        for pack in packs {
            if !known.contains(&pack)
                && let Ok(blobs) = self.read_pack_header(&pack)
            {
                mi.add_pack(pack, &blobs);
            }
        }
    }

    /// Writes an index file for the packs that only their headers describe, so that
    /// snapshots may reference their blobs (backup does this before it dedups against
    /// them). Returns how many packs it indexed.
    pub fn adopt_unindexed(&self) -> Result<usize> {
        let packs = self.index.unindexed.clone();
        if packs.is_empty() {
            return Ok(0);
        }
        let n = packs.len();
        let file = IndexFile {
            supersedes: Vec::new(),
            packs,
        };
        super::index::save_index_file(&self.backend, &self.keys, &file)?;
        Ok(n)
    }

    /// Fails with the first misnamed index file, if the last `load_index` found one.
    /// Choosing a snapshot (`select::list`, so restore, dump, ls, forget, ...) and prune
    /// call it; check, audit and repair do not, to report and replace the file.
    pub fn refuse_misnamed(&self) -> Result<()> {
        match self.misnamed_index.first() {
            Some(id) => Err(Misnamed {
                what: Named::INDEX.what,
                id: *id,
            }
            .into()),
            None => Ok(()),
        }
    }

    /// Reads a hash-named object whole: from the cache when it holds the object at the
    /// length stored (`stored_len`, or asked of the storage when None), else from the
    /// first copy (this backend, then the mirrors) whose bytes hash to its name, which is
    /// then cached. A copy that does not hash to the name is damaged, wherever it lies.
    fn read_named(&self, named: Named, id: &Id, stored_len: Option<u64>) -> Result<Vec<u8>> {
        let path = named.kind.path(id);
        if let Some(c) = &self.cache {
            // Without a length the storage is asked for one; an unreachable storage
            // leaves the cached copy, which hashes to the name, to be used.
            let len = stored_len.or_else(|| self.backend.size(&path).ok());
            if let Some(b) = c.get(named.cache, id, len) {
                return Ok(b);
            }
        }
        let bytes = self
            .backend
            .read_verified(&path, &|b| Id::of_stored(b) == *id, &|| {
                NameMismatch {
                    what: named.what,
                    id: *id,
                }
                .into()
            })?;
        if let Some(c) = &self.cache {
            c.put(named.cache, id, &bytes);
        }
        Ok(bytes)
    }

    /// Fetches into the cache, several at once, the objects of `sized` it lacks, so that
    /// reading them one by one afterwards costs no round trip each: on a cold cache
    /// over a long link, hundreds of index files or snapshots would otherwise cost two
    /// round trips apiece. Only for remote storage with a cache; whatever fails here is
    /// read, and reported, again by the caller.
    fn prefetch_named(&self, named: Named, sized: &[(Id, u64)]) {
        let Some(c) = self.cache.as_ref().filter(|_| self.backend.is_remote()) else {
            return;
        };
        let missing: Vec<&(Id, u64)> = sized
            .iter()
            .filter(|(id, len)| !c.has(named.cache, id, *len))
            .collect();
        if missing.len() < 2 {
            return;
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..PREFETCHERS.min(missing.len()) {
                s.spawn(|| {
                    let take = || next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    while let Some((id, len)) = missing.get(take()) {
                        let _ = self.read_named(named, id, Some(*len));
                    }
                });
            }
        });
    }

    /// Reads (see `read_named`) and opens a hash-named object. When no copy hashes to
    /// the name, this backend's bytes are still opened to tell the two cases apart:
    /// bytes that open are an authentic object under another's name, refused as
    /// [`Misnamed`]; bytes that do not are damaged.
    pub(super) fn open_named<T>(
        &self,
        named: Named,
        id: &Id,
        stored_len: Option<u64>,
        open: impl Fn(Vec<u8>) -> std::result::Result<T, FormatError>,
    ) -> Result<T> {
        let damaged = |e: FormatError| {
            let state = match e {
                FormatError::NotPermitted(_) => "",
                _ => " is damaged",
            };
            anyhow!(e).context(format!("{} {}{state}", named.what, id.short()))
        };
        match self.read_named(named, id, stored_len) {
            Ok(bytes) => open(bytes).map_err(damaged),
            Err(e) if e.is::<NameMismatch>() => {
                let bytes = self.backend.alone().read(&named.kind.path(id))?;
                match open(bytes) {
                    Ok(_) => Err(Misnamed {
                        what: named.what,
                        id: *id,
                    }
                    .into()),
                    Err(fe) => Err(damaged(fe)),
                }
            }
            Err(e) => Err(e),
        }
    }

    // ---- blobs and trees ----

    pub fn read_blob(&self, blob_type: BlobType, id: &Id) -> Result<Vec<u8>> {
        let (pack_id, entry) = self.index.get(id).ok_or_else(|| {
            anyhow!(
                "{} blob {} is not in the index",
                blob_type.name(),
                id.short()
            )
        })?;
        if entry.blob_type != blob_type {
            bail!(
                "blob {} is a {} blob, expected {}",
                id.short(),
                entry.blob_type.name(),
                blob_type.name()
            );
        }
        if blob_type == BlobType::Tree
            && let Some(plain) = self
                .read_cached_tree(&pack_id, &entry)
                .or_else(|| self.read_held_tree(&pack_id, &entry))
        {
            return Ok(plain);
        }
        // Each copy in turn (this backend, then mirrors) until one holds the blob intact.
        let path = FileKind::Data.path(&pack_id);
        self.backend
            .read_with(|b| {
                let stored = b.read_range(&path, entry.offset.into(), entry.length.into())?;
                Ok(pack::open_blob_owned(&self.keys, &entry, stored)?)
            })
            .map_err(|e| {
                e.context(format!(
                    "{} blob {} in pack {}",
                    blob_type.name(),
                    id.short(),
                    pack_id.short()
                ))
            })
    }

    /// A tree out of the local cache of tree packs, the pack fetched whole into it first
    /// if need be. Trees are read again and again (parents of backups, ls, diff,
    /// versions), and a directory's tree is usually next to its neighbours': one cached
    /// pack makes a cold walk of a snapshot a few sequential reads rather than one per
    /// directory. None when there is no cache or the pack cannot be cached (the caller
    /// then reads the blob alone, from whichever copy holds it intact).
    fn read_cached_tree(&self, pack_id: &Id, entry: &pack::BlobEntry) -> Option<Vec<u8>> {
        let c = self.cache.as_ref()?;
        let (offset, len) = (u64::from(entry.offset), entry.length as usize);
        let cached = || {
            let stored = c.get_range("packs", pack_id, offset, len)?;
            let plain = pack::open_blob_owned(&self.keys, entry, stored);
            if plain.is_err() {
                c.remove("packs", pack_id);
            }
            plain.ok()
        };
        if let Some(plain) = cached() {
            return Some(plain);
        }
        let mut unfetchable = self.fetching_trees.lock().ok()?;
        if let Some(plain) = cached() {
            return Some(plain); // fetched while this thread waited
        }
        if unfetchable.contains(pack_id) {
            return None;
        }
        let path = FileKind::Data.path(pack_id);
        // A pack's name is the hash of its bytes: any copy that matches is the pack.
        let whole = self
            .backend
            .read_with(|b| {
                let bytes = b.read(&path)?;
                if Id::of_stored(&bytes) != *pack_id {
                    bail!("pack {} does not match its name", pack_id.short());
                }
                Ok(bytes)
            })
            .inspect_err(|_| {
                unfetchable.insert(*pack_id);
            })
            .ok()?;
        c.put("packs", pack_id, &whole);
        let stored = whole.get(offset as usize..offset as usize + len)?;
        pack::open_blob(&self.keys, entry, stored).ok()
    }

    /// A tree out of its pack read whole from remote storage into memory (see
    /// `TreePacks`), where there is no cache. None where there is a cache or the
    /// storage is local (a ranged read costs no round trip there), or the pack does not
    /// read whole and intact.
    fn read_held_tree(&self, pack_id: &Id, entry: &pack::BlobEntry) -> Option<Vec<u8>> {
        if self.cache.is_some() || !self.backend.is_remote() {
            return None;
        }
        let bytes = self.held_tree_pack(pack_id)?;
        let (offset, len) = (entry.offset as usize, entry.length as usize);
        let stored = bytes.get(offset..offset.checked_add(len)?)?;
        pack::open_blob(&self.keys, entry, stored).ok()
    }

    fn held_tree_pack(&self, pack_id: &Id) -> Option<Arc<Vec<u8>>> {
        let mut packs = self.tree_packs.lock().ok()?;
        if let Some((_, b)) = packs.held.iter().find(|(id, _)| id == pack_id) {
            return Some(b.clone());
        }
        if packs.refused.contains(pack_id) {
            return None;
        }
        // This copy's bytes only: whatever a check finds must be this storage's.
        let path = FileKind::Data.path(pack_id);
        match self.backend.alone().read(&path) {
            Ok(bytes) if Id::of_stored(&bytes) == *pack_id => {
                let bytes = Arc::new(bytes);
                if packs.held.len() == TREE_PACKS_HELD {
                    packs.held.pop_front();
                }
                packs.held.push_back((*pack_id, bytes.clone()));
                Some(bytes)
            }
            _ => {
                packs.refused.insert(*pack_id);
                None
            }
        }
    }

    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        let bytes = self.read_blob(BlobType::Tree, id)?;
        Tree::decode(&bytes).map_err(|e| anyhow!(e).context(format!("tree {}", id.short())))
    }

    /// A tree kept as its JSON, for looking up a few nodes or each once (see
    /// [`LazyTree`]).
    pub fn load_tree_lazy(&self, id: &Id) -> Result<LazyTree> {
        let bytes = self.read_blob(BlobType::Tree, id)?;
        LazyTree::decode(bytes).map_err(|e| anyhow!(e).context(format!("tree {}", id.short())))
    }

    /// Reads a pack's header: the authoritative list of what it holds. Tries each copy;
    /// the error is the first copy's, where the user looks first.
    pub fn read_pack_header(&self, pack_id: &Id) -> Result<Vec<pack::BlobEntry>> {
        self.backend
            .read_with(|b| self.read_pack_header_in(b, pack_id))
    }

    fn read_pack_header_in(&self, b: &Backend, pack_id: &Id) -> Result<Vec<pack::BlobEntry>> {
        let path = FileKind::Data.path(pack_id);
        let size = b.size(&path)?;
        if size < pack::TRAILER_LEN as u64 {
            bail!("pack {}: truncated ({} bytes)", pack_id.short(), size);
        }
        let trailer = b.read_range(&path, size - 8, 8)?;
        let hlen = u64::from(
            pack::parse_trailer(&trailer)
                .map_err(|e| anyhow!(e).context(format!("pack {}", pack_id.short())))?,
        );
        if hlen + 8 > size {
            bail!(
                "pack {}: header length {} exceeds the pack",
                pack_id.short(),
                hlen
            );
        }
        let start = size - 8 - hlen;
        let sealed = b.read_range(&path, start, hlen)?;
        pack::open_header(&self.keys, &sealed, start)
            .map_err(|e| anyhow!(e).context(format!("pack {} header", pack_id.short())))
    }

    // ---- mirrors and forget records ----

    /// Reads every sealed object of `kind` that opens; damaged ones are skipped (audit
    /// and check name them).
    fn sealed_objects<T>(
        &self,
        kind: FileKind,
        open: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<Vec<T>> {
        Ok(self
            .named_sealed_objects(kind, open)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Every object of `kind` that hashes to its name and opens, with its name.
    fn named_sealed_objects<T>(
        &self,
        kind: FileKind,
        open: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<Vec<(Id, T)>> {
        let mut out = Vec::new();
        for id in self.backend.list(kind)? {
            let bytes =
                self.backend
                    .read_verified(&kind.path(&id), &|b| Id::of_stored(b) == id, &|| {
                        anyhow!("damaged")
                    });
            if let Some(v) = bytes.ok().as_deref().and_then(&open) {
                out.push((id, v));
            }
        }
        Ok(out)
    }

    /// Writes a sealed record under its hash. Records that decide what is forgotten,
    /// deleted, mirrored or exported are a full key's alone (§20).
    pub(crate) fn save_sealed(&self, kind: FileKind, bytes: Vec<u8>) -> Result<Id> {
        if matches!(
            kind,
            FileKind::Mirror
                | FileKind::Forget
                | FileKind::Export
                | FileKind::Mark
                | FileKind::Deletion
                | FileKind::Format
        ) {
            self.require_full(&format!(
                "writing a {} record",
                kind.dir().trim_end_matches('/')
            ))?;
        }
        let id = Id::of_stored(&bytes);
        self.backend.write(&kind.path(&id), bytes)?;
        Ok(id)
    }

    pub fn save_mirror_def(&self, d: &MirrorDef) -> Result<Id> {
        self.save_sealed(FileKind::Mirror, d.seal(&self.keys))
    }

    /// The mirrors in force: the newest definition of each name, unless it removes it.
    pub fn mirror_defs(&self) -> Result<Vec<MirrorDef>> {
        let all = self.sealed_objects(FileKind::Mirror, |b| MirrorDef::open(&self.keys, b).ok())?;
        let mut newest: std::collections::BTreeMap<String, MirrorDef> = Default::default();
        for d in all {
            let t = |d: &MirrorDef| d.created.parse::<jiff::Timestamp>().ok();
            if newest.get(&d.name).is_none_or(|old| t(&d) > t(old)) {
                newest.insert(d.name.clone(), d);
            }
        }
        Ok(newest.into_values().filter(|d| !d.removed).collect())
    }

    pub fn save_forget_record(&self, snapshots: &[Id]) -> Result<Id> {
        let r = ForgetRecord {
            version: crate::format::mirror::FORGET_VERSION,
            time: now_rfc3339(),
            snapshots: snapshots.to_vec(),
        };
        self.save_sealed(FileKind::Forget, r.seal(&self.keys))
    }

    /// Every snapshot an authentic forget record names.
    /// Every authentic forget record, with its name.
    pub fn forget_records(&self) -> Result<Vec<(Id, ForgetRecord)>> {
        self.named_sealed_objects(FileKind::Forget, |b| ForgetRecord::open(&self.keys, b).ok())
    }

    pub fn forgotten(&self) -> Result<HashSet<Id>> {
        Ok(self
            .sealed_objects(FileKind::Forget, |b| ForgetRecord::open(&self.keys, b).ok())?
            .into_iter()
            .flat_map(|r| r.snapshots)
            .collect())
    }

    pub fn save_export_record(&self, r: &ExportRecord) -> Result<Id> {
        self.save_sealed(FileKind::Export, r.seal(&self.keys))
    }

    /// Every export on record, oldest first.
    pub fn export_records(&self) -> Result<Vec<ExportRecord>> {
        let mut v =
            self.sealed_objects(FileKind::Export, |b| ExportRecord::open(&self.keys, b).ok())?;
        v.sort_by_key(|r| r.time.parse::<jiff::Timestamp>().ok());
        Ok(v)
    }

    // ---- snapshots ----

    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        let bytes = snap.seal(&self.keys);
        let id = Id::of_stored(&bytes);
        self.backend.write(&FileKind::Snapshot.path(&id), bytes)?;
        Ok(id)
    }

    /// Loads a snapshot. One whose bytes do not hash to its name is never used: bytes
    /// that still open are another snapshot under its name (refused as [`Misnamed`]),
    /// others are damaged; `check` reports both.
    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        self.load_snapshot_sized(id, None)
    }

    /// `load_snapshot`, with the stored length when a listing gave it.
    fn load_snapshot_sized(&self, id: &Id, stored_len: Option<u64>) -> Result<Snapshot> {
        self.open_named(Named::SNAPSHOT, id, stored_len, |b| {
            Snapshot::open(&self.keys, &b)
        })
    }

    /// All snapshots, oldest first, but those another one supersedes (an interrupted
    /// `vault tag` left them: see [`crate::format::snapshot::superseded`]). Damaged ones
    /// are returned as errors for the caller to report.
    pub fn snapshots(&self) -> Result<Vec<(Id, Result<Snapshot>)>> {
        let all = self.all_snapshots()?;
        let hidden = crate::format::snapshot::superseded(
            all.iter()
                .filter_map(|(id, s)| s.as_ref().ok().map(|s| (id, s))),
        );
        Ok(all
            .into_iter()
            .filter(|(id, _)| !hidden.contains_key(id))
            .collect())
    }

    /// Every snapshot, oldest first, superseded ones included.
    pub fn all_snapshots(&self) -> Result<Vec<(Id, Result<Snapshot>)>> {
        let sized = self.backend.list_sized(FileKind::Snapshot)?;
        self.prefetch_named(Named::SNAPSHOT, &sized);
        // A backup-role key sees its own host's snapshots only (§20).
        let mut out: Vec<(Id, Result<Snapshot>)> = sized
            .into_iter()
            .map(|(id, len)| (id, self.load_snapshot_sized(&id, Some(len))))
            .filter(|(_, s)| s.as_ref().err().is_none_or(|e| !not_permitted(e)))
            .collect();
        // Compare instants, not strings: RFC 3339 text drops trailing zeros of fractions.
        // A repaired snapshot keeps its original's time and sorts right after it.
        let key = |s: &Result<Snapshot>| {
            s.as_ref()
                .ok()
                .and_then(|s| Some((s.timestamp().ok()?, s.original.is_some())))
        };
        out.sort_by(|a, b| key(&a.1).cmp(&key(&b.1)).then(a.0.cmp(&b.0)));
        Ok(out)
    }
}

/// Whether `e` is a backup-role key meeting what it may not read (§20).
pub fn not_permitted(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref(), Some(FormatError::NotPermitted(_))))
}

/// Key files without a config are what an interrupted init leaves; they would shadow the
/// new key. Anything more (packs, index, snapshots) means a repository whose config was
/// lost, which init must never overwrite.
fn clear_failed_init(backend: &Backend) -> Result<()> {
    let keys = backend.list(FileKind::Key)?;
    if keys.is_empty() {
        return Ok(());
    }
    for kind in [FileKind::Data, FileKind::Index, FileKind::Snapshot] {
        if !backend.list(kind)?.is_empty() {
            bail!(
                "{} holds repository data but no config (lost or damaged): not initializing over it",
                backend.location()
            );
        }
    }
    for id in keys {
        backend.delete(&FileKind::Key.path(&id))?;
    }
    Ok(())
}

/// Reads and parses a key file; says whether its bytes hash to its name. A key that
/// authenticates is genuine wherever it lies, so opening does not insist on the name;
/// `list_keys` (and so `check`) does.
fn read_key_file(backend: &Backend, id: &Id) -> Result<(KeyFile, bool)> {
    let bytes = backend.read(&FileKind::Key.path(id))?;
    let kf =
        KeyFile::parse(&bytes).map_err(|e| anyhow!(e).context(format!("key {}", id.short())))?;
    Ok((kf, Id::of_stored(&bytes) == *id))
}

fn access_of(p: &KeyPayload) -> Result<Access> {
    Ok(match &p.backup {
        Some(b) => Access::Backup(Box::new(b.clone())),
        None => Access::Full(p.master()?),
    })
}

/// A key that a key rotation in progress is replacing: it opens the config, which is
/// not rewritten yet, but no longer what is resealed.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0}: a key rotation is in progress and replaces this key; run `vault key rotate` with the password that started it to finish it"
)]
pub struct ReplacedKey(String);

/// Whether `e` refuses a key that a key rotation replaced (or is replacing): another
/// key file the same password opens may be the new one.
fn is_superseded_key(e: &anyhow::Error) -> bool {
    e.is::<ReplacedKey>()
        || matches!(
            e.downcast_ref::<VaultError>(),
            Some(VaultError::KeyRetired(_))
        )
}

/// What `open` makes of the first key file the password opens whose key `open`
/// accepts: a key a rotation replaced is passed over for the next one, and refused
/// only when no other opens.
fn unlock_with_password<T>(
    backend: &Backend,
    password: &[u8],
    mut open: impl FnMut(Access, Id) -> Result<T>,
) -> Result<T> {
    let ids = backend.list(FileKind::Key)?;
    let mut damaged = Vec::new();
    let mut unreadable = None;
    let mut superseded = None;
    for id in &ids {
        let (kf, name_ok) = match read_key_file(backend, id) {
            Ok(k) => k,
            Err(e) if is_not_found(&e) => continue, // removed since the listing
            Err(e) if is_storage_error(&e) => {
                unreadable.get_or_insert(e);
                continue;
            }
            Err(e) => {
                damaged.push(crate::error::one_line(&e));
                continue;
            }
        };
        match kf.open(password) {
            Ok(p) => match open(access_of(&p)?, *id) {
                Err(e) if is_superseded_key(&e) => {
                    superseded.get_or_insert(e);
                }
                r => return r,
            },
            Err(FormatError::BadMac) if name_ok => {}
            Err(FormatError::BadMac) => damaged.push(format!(
                "{}: content does not match its name (damaged)",
                id.short()
            )),
            Err(e) => damaged.push(format!("{}: {e}", id.short())),
        }
    }
    if ids.is_empty() {
        bail!(
            "{}: no key files in keys/ (the repository cannot be opened)",
            backend.location()
        );
    }
    if let Some(e) = superseded {
        return Err(e);
    }
    // A key file the storage would not hand over was never tried: the password may
    // well be right, so say what failed rather than "wrong password".
    if let Some(e) = unreadable {
        return Err(e.context(
            "cannot open the repository: a key file could not be read and no other opens with the password",
        ));
    }
    let mut msg = backend.location().to_string();
    if !damaged.is_empty() {
        msg.push_str(&format!("; damaged key files: {}", damaged.join(", ")));
    }
    Err(VaultError::WrongPassword(msg).into())
}

/// Hands the allocator's free pages back to the system. Loading the index frees more
/// than it keeps (each file's bytes, its decoded entries), and glibc would keep those
/// pages resident through the rest of the command: about 2 MB of the no-change backup's
/// peak.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the system; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}
