//! The local cache of immutable objects (index files, snapshots, whole tree packs), under
//! the XDG cache directory. Every entry is checked on read (by its hash, or for a blob
//! read out of a cached pack by decryption), so a damaged cache can cost a download but
//! never correctness.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::format::Id;

#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache for one repository, or None when no cache directory is available or
    /// caching is disabled with VAULT_CACHE_DIR="" .
    pub fn for_repo(repo_id: &str) -> Option<Cache> {
        // The id comes from storage: only a real id may become a directory name (config
        // decoding refuses any other; this keeps the cache safe whatever the caller).
        if !crate::format::config::is_repo_id(repo_id) {
            return None;
        }
        let base = base_dir()?;
        let dir = base.join(repo_id);
        private_dir(&dir).ok()?;
        // When it was last used, for `vault cache --cleanup`.
        let _ = fs::File::open(&dir).and_then(|d| d.set_modified(SystemTime::now()));
        let tag = base.join("CACHEDIR.TAG");
        if !tag.exists() {
            // Marks the cache so that backup tools (vault's --exclude-caches included) skip it.
            let _ = private_file(
                &tag,
                b"Signature: 8a477f597d28d172789f06886806bc55\n# vault cache directory\n",
            );
        }
        Some(Cache { dir })
    }

    fn path(&self, kind: &str, id: &Id) -> PathBuf {
        self.dir.join(kind).join(id.to_hex())
    }

    /// The cached object named `id`, if its bytes hash to that name and, when `stored_len`
    /// is given, it is as long as the stored object of that name. A stored object of
    /// another length holds other bytes (swapped, forged, or replaced by a repair): the
    /// caller must read and judge what is stored rather than be served the cached copy.
    pub fn get(&self, kind: &str, id: &Id, stored_len: Option<u64>) -> Option<Vec<u8>> {
        let p = self.path(kind, id);
        if stored_len.is_some_and(|n| fs::metadata(&p).ok().map(|m| m.len()) != Some(n)) {
            return None;
        }
        let bytes = fs::read(&p).ok()?;
        if Id::of_stored(&bytes) == *id {
            Some(bytes)
        } else {
            let _ = fs::remove_file(&p);
            None
        }
    }

    /// Whether an entry of that length is cached (unchecked: `get` checks).
    pub fn has(&self, kind: &str, id: &Id, len: u64) -> bool {
        fs::metadata(self.path(kind, id)).is_ok_and(|m| m.len() == len)
    }

    /// `len` bytes at `offset` of an entry whose parts authenticate themselves (sealed
    /// blobs in a pack): the caller checks them and calls `remove` when they fail.
    pub fn get_range(&self, kind: &str, id: &Id, offset: u64, len: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(self.path(kind, id)).ok()?;
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    pub fn remove(&self, kind: &str, id: &Id) {
        let _ = fs::remove_file(self.path(kind, id));
    }

    pub fn put(&self, kind: &str, id: &Id, bytes: &[u8]) {
        let p = self.path(kind, id);
        if let Some(parent) = p.parent() {
            let _ = private_dir(parent);
        }
        let tmp = p.with_extension("tmp");
        if private_file(&tmp, bytes).is_ok() {
            let _ = fs::rename(&tmp, &p);
        }
    }

    /// Drops cached objects of `kind` that are no longer in the repository.
    pub fn retain(&self, kind: &str, keep: &std::collections::HashSet<Id>) {
        let Ok(rd) = fs::read_dir(self.dir.join(kind)) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let keep_it = name
                .to_str()
                .and_then(Id::from_hex)
                .is_some_and(|id| keep.contains(&id));
            if !keep_it {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Drops every cached object of `kind` (one that is no longer cached at all).
    pub fn drop_kind(&self, kind: &str) {
        let _ = fs::remove_dir_all(self.dir.join(kind));
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Where the caches of all repositories are: VAULT_CACHE_DIR, else the XDG cache
/// directory's `vault`; None when caching is off (VAULT_CACHE_DIR="").
pub fn base_dir() -> Option<PathBuf> {
    match std::env::var_os("VAULT_CACHE_DIR") {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => Some(dirs::cache_dir()?.join("vault")),
    }
}

/// One repository's cache, as `vault cache` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheInfo {
    pub repository: String,
    pub path: PathBuf,
    pub files: u64,
    pub bytes: u64,
    /// When a vault last opened that repository with this cache.
    #[serde(serialize_with = "as_rfc3339")]
    pub last_used: SystemTime,
}

fn as_rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ts = jiff::Timestamp::try_from(*t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    s.serialize_str(&ts.to_string())
}

/// The files of a cache directory, with their sizes and when each was last used.
fn files_in(dir: &Path, out: &mut Vec<(PathBuf, u64, SystemTime)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(md) = e.path().symlink_metadata() else {
            continue;
        };
        if md.is_dir() {
            files_in(&e.path(), out);
        } else if md.is_file() {
            let used = [md.accessed(), md.modified()]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((e.path(), md.len(), used));
        }
    }
}

/// Every repository's cache under `base`, most recently used first.
pub fn list(base: &Path) -> std::io::Result<Vec<CacheInfo>> {
    let mut caches = Vec::new();
    let rd = match fs::read_dir(base) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(caches),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Only what vault made: a directory named by a repository id, never a symlink,
        // whose target cleanup would empty.
        let real_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if !crate::format::config::is_repo_id(&name) || !real_dir {
            continue;
        }
        let mut files = Vec::new();
        files_in(&e.path(), &mut files);
        caches.push(CacheInfo {
            repository: name,
            path: e.path(),
            files: files.len() as u64,
            bytes: files.iter().map(|f| f.1).sum(),
            last_used: e.metadata()?.modified()?,
        });
    }
    caches.sort_by_key(|c| std::cmp::Reverse(c.last_used));
    Ok(caches)
}

/// What `cleanup` removed (or, dry, would remove).
#[derive(Debug, Default, serde::Serialize)]
pub struct Cleaned {
    /// Caches of repositories not used within the age limit, removed whole.
    pub removed: Vec<CacheInfo>,
    /// Files removed from the caches kept, least recently used first, to fit the size.
    pub trimmed_files: u64,
    pub trimmed_bytes: u64,
    /// What the caches kept hold afterwards.
    pub kept_bytes: u64,
}

/// Removes the caches under `base` of repositories not used for `max_age`, then, with
/// `max_size`, the least recently used files of the others until all fit in it. A
/// cache only saves downloads: what another vault process finds gone it downloads again.
pub fn cleanup(
    base: &Path,
    max_age: Duration,
    max_size: Option<u64>,
    dry_run: bool,
) -> std::io::Result<Cleaned> {
    let now = SystemTime::now();
    let mut out = Cleaned::default();
    let mut files = Vec::new();
    for c in list(base)? {
        let age = now.duration_since(c.last_used).unwrap_or_default();
        if age > max_age {
            if !dry_run {
                fs::remove_dir_all(&c.path)?;
            }
            out.removed.push(c);
        } else {
            files_in(&c.path, &mut files);
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    if let Some(max) = max_size {
        files.sort_by_key(|f| f.2);
        for (path, len, _) in files {
            if total <= max {
                break;
            }
            if !dry_run {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            total -= len;
            out.trimmed_files += 1;
            out.trimmed_bytes += len;
        }
    }
    out.kept_bytes = total;
    Ok(out)
}

/// The cache holds copies of index files, snapshots and tree packs (sealed, but their
/// count and sizes still tell about the data): directories 0700, whatever the umask. A repository's
/// cache directory made by an older vault is narrowed too, which closes everything below.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o7700))?;
    }
    Ok(())
}

/// Cache files are 0600, whatever the umask.
fn private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}
