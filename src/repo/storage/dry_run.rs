//! Dry run: writes, renames, deletes and new directories succeed without touching the
//! storage, and writes and deletes are counted (with the bytes that would have been
//! written); reads, stats and listings pass through, so they show the storage as it is,
//! without what the run "wrote".

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{Result, Storage};

#[derive(Debug)]
pub struct DryRun<S> {
    inner: S,
    writes: AtomicU64,
    bytes: AtomicU64,
    deletes: AtomicU64,
}

/// What a dry run would have done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    pub writes: u64,
    /// The bytes of those writes.
    pub bytes: u64,
    pub deletes: u64,
}

impl<S: Storage> DryRun<S> {
    pub fn new(inner: S) -> Self {
        DryRun {
            inner,
            writes: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
        }
    }

    pub fn skipped(&self) -> Skipped {
        Skipped {
            writes: self.writes.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
        }
    }
}

impl<S: Storage> Storage for DryRun<S> {
    super::reads_pass_through!();

    fn write(&self, _path: &str, bytes: Bytes) -> Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn write_new(&self, path: &str, bytes: Bytes) -> Result<()> {
        self.write(path, bytes)
    }

    /// Not counted: a rename is the second half of a write through a temporary name,
    /// which was counted when written.
    fn rename(&self, _from: &str, _to: &str) -> Result<()> {
        Ok(())
    }

    fn delete(&self, _path: &str) -> Result<()> {
        self.deletes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn create_dir(&self, _dir: &str) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::OpendalStore;
    use super::*;

    #[test]
    fn writes_and_deletes_are_counted_and_leave_the_storage_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kept"), b"old").unwrap();
        let dry = DryRun::new(OpendalStore::local_for_tests(dir.path()));

        dry.write("new", Bytes::from_static(b"12345")).unwrap();
        dry.write("kept", Bytes::from_static(b"new")).unwrap();
        dry.delete("kept").unwrap();
        dry.rename("kept", "moved").unwrap();
        dry.create_dir("d/").unwrap();

        assert_eq!(dry.read("kept").unwrap(), b"old", "reads pass through");
        assert!(!dry.exists("new").unwrap());
        assert_eq!(dry.list("").unwrap().len(), 1);
        assert!(!dir.path().join("d").exists());
        assert_eq!(
            dry.skipped(),
            Skipped {
                writes: 2,
                bytes: 8,
                deletes: 1
            }
        );
    }
}
