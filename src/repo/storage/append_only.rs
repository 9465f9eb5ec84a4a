//! Append-only: new objects may be written, but nothing this process did not create
//! through this store may be deleted, overwritten or renamed (from or onto); each such
//! call is refused with [`Refused`], naming the object, before it reaches the storage.
//! What the process created it may still replace, move and delete (its temporary names,
//! its own locks). Whether a write would overwrite is asked of the storage first, so a
//! write costs one more request; this guards against the process's own mistakes, the
//! storage's permissions against anyone else.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use super::{Result, Storage};

/// What an append-only store refused to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Delete,
    Overwrite,
    Rename,
}

/// A change refused by an append-only store: `path` exists and was not created by this
/// process.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}: refused to {} an object this process did not create (append-only)", .change.verb())]
pub struct Refused {
    pub change: Change,
    pub path: String,
}

impl Change {
    fn verb(self) -> &'static str {
        match self {
            Change::Delete => "delete",
            Change::Overwrite => "overwrite",
            Change::Rename => "rename",
        }
    }
}

#[derive(Debug)]
pub struct AppendOnly<S> {
    inner: S,
    /// The objects written (or renamed into place) through this store.
    created: Mutex<HashSet<String>>,
}

impl<S: Storage> AppendOnly<S> {
    pub fn new(inner: S) -> Self {
        AppendOnly {
            inner,
            created: Mutex::new(HashSet::new()),
        }
    }

    fn created(&self) -> MutexGuard<'_, HashSet<String>> {
        self.created.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ours(&self, path: &str) -> bool {
        self.created().contains(path)
    }

    fn refuse<T>(change: Change, path: &str) -> Result<T> {
        Err(Refused {
            change,
            path: path.to_string(),
        }
        .into())
    }

    /// Refuses `change` when something not ours is at `path`.
    fn guard_target(&self, change: Change, path: &str) -> Result<()> {
        if !self.ours(path) && self.inner.exists(path)? {
            return Self::refuse(change, path);
        }
        Ok(())
    }
}

impl<S: Storage> Storage for AppendOnly<S> {
    super::reads_pass_through!();

    fn write(&self, path: &str, bytes: Bytes) -> Result<()> {
        self.guard_target(Change::Overwrite, path)?;
        self.inner.write(path, bytes)?;
        self.created().insert(path.to_string());
        Ok(())
    }

    fn write_new(&self, path: &str, bytes: Bytes) -> Result<()> {
        self.guard_target(Change::Overwrite, path)?;
        self.inner.write_new(path, bytes)?;
        self.created().insert(path.to_string());
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        if !self.ours(from) {
            return Self::refuse(Change::Rename, from);
        }
        self.guard_target(Change::Overwrite, to)?;
        self.inner.rename(from, to)?;
        let mut created = self.created();
        created.remove(from);
        created.insert(to.to_string());
        Ok(())
    }

    fn delete(&self, path: &str) -> Result<()> {
        if !self.ours(path) {
            return Self::refuse(Change::Delete, path);
        }
        self.inner.delete(path)?;
        self.created().remove(path);
        Ok(())
    }

    fn create_dir(&self, dir: &str) -> Result<()> {
        self.inner.create_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Error, OpendalStore};
    use super::*;

    fn refused(r: Result<()>) -> Refused {
        match r {
            Err(Error::Refused(r)) => r,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn only_what_this_process_created_may_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("snapshots")).unwrap();
        std::fs::write(dir.path().join("snapshots/old"), b"old").unwrap();
        let store = AppendOnly::new(OpendalStore::local_for_tests(dir.path()));
        let old = "snapshots/old";

        assert_eq!(
            refused(store.delete(old)),
            Refused {
                change: Change::Delete,
                path: old.into()
            }
        );
        let overwrite = refused(store.write(old, Bytes::from_static(b"new")));
        assert_eq!(overwrite.change, Change::Overwrite);
        assert!(overwrite.to_string().contains(old), "{overwrite}");
        assert_eq!(
            refused(store.rename(old, "snapshots/x")).change,
            Change::Rename
        );
        assert_eq!(std::fs::read(dir.path().join(old)).unwrap(), b"old");

        // Its own objects: written, replaced, moved into place, deleted.
        store.write("tmp/t", Bytes::from_static(b"mine")).unwrap();
        store.write("tmp/t", Bytes::from_static(b"mine!")).unwrap();
        let onto_old = refused(store.rename("tmp/t", old));
        assert_eq!(
            (onto_old.change, onto_old.path.as_str()),
            (Change::Overwrite, old)
        );
        store.rename("tmp/t", "snapshots/new").unwrap();
        assert_eq!(store.read("snapshots/new").unwrap(), b"mine!");
        assert_eq!(
            refused(store.delete("tmp/t")).change,
            Change::Delete,
            "moved away"
        );
        store.delete("snapshots/new").unwrap();
        assert!(!dir.path().join("snapshots/new").exists());
        assert_eq!(std::fs::read(dir.path().join(old)).unwrap(), b"old");
    }
}
