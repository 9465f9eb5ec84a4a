//! The local cache of immutable objects (index files, snapshots, whole tree packs), under
//! the XDG cache directory. Every entry is checked on read (by its hash, or for a blob
//! read out of a cached pack by decryption), so a damaged cache can cost a download but
//! never correctness.

use std::fs;
use std::path::{Path, PathBuf};

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
        let base = match std::env::var_os("VAULT_CACHE_DIR") {
            Some(v) if v.is_empty() => return None,
            Some(v) => PathBuf::from(v),
            None => dirs::cache_dir()?.join("vault"),
        };
        let dir = base.join(repo_id);
        private_dir(&dir).ok()?;
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
