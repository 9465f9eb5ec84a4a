//! The [`Storage`] every backend ends in: an opendal operator (local directory, s3,
//! sftp, webdav, gcs, azblob, b2), with the layers `location` put under it (timeouts,
//! limits).

use bytes::Bytes;
use opendal::options::{ListOptions, ReadOptions, WriteOptions};
use opendal::{ErrorKind, blocking};

use super::{Entry, Meta, Result, Storage};

#[derive(Clone, Debug)]
pub struct OpendalStore {
    op: blocking::Operator,
    /// Where packs (`data/`) are written when they go to another storage class than the
    /// rest; they are read through `op`, from the same bucket.
    packs_op: Option<blocking::Operator>,
    /// What `write_new` writes through when `op` writes via a temporary name.
    direct_op: Option<blocking::Operator>,
    /// A local directory: whole objects are read as ranges (see `read_local`).
    local: bool,
}

impl OpendalStore {
    pub fn new(
        op: blocking::Operator,
        packs_op: Option<blocking::Operator>,
        direct_op: Option<blocking::Operator>,
        local: bool,
    ) -> OpendalStore {
        OpendalStore {
            op,
            packs_op,
            direct_op,
            local,
        }
    }

    /// A local directory with no layers, for tests.
    #[cfg(test)]
    pub(crate) fn local_for_tests(root: &std::path::Path) -> OpendalStore {
        let _rt = crate::repo::backend::RUNTIME.enter();
        let fs = opendal::services::Fs::default().root(&root.to_string_lossy());
        let op = opendal::Operator::new(fs).expect("an fs operator");
        let op = blocking::Operator::new(op).expect("a blocking operator");
        OpendalStore::new(op, None, None, true)
    }

    /// Reads a local object as the range its size gives. Read without one, opendal's fs
    /// service zero-fills a 2 MiB buffer for every object, however small, and keeps it
    /// pooled: 2 MB resident in every command.
    fn read_local(&self, path: &str) -> Result<Vec<u8>> {
        let size = self.op.stat(path)?.content_length();
        if size == 0 {
            return Ok(Vec::new());
        }
        let opts = ReadOptions {
            range: (0..size).into(),
            ..Default::default()
        };
        match self.op.read_options(path, opts) {
            Ok(b) => Ok(b.to_vec()),
            // Replaced by a shorter one since the stat (a lock being refreshed).
            Err(e) if e.kind() == ErrorKind::RangeNotSatisfied => Ok(self.op.read(path)?.to_vec()),
            Err(e) => Err(e.into()),
        }
    }
}

fn meta(m: &opendal::Metadata) -> Meta {
    Meta {
        size: m.content_length(),
        modified: m.last_modified().map(Into::into),
    }
}

impl Storage for OpendalStore {
    fn read(&self, path: &str) -> Result<Vec<u8>> {
        if self.local {
            return self.read_local(path);
        }
        Ok(self.op.read(path)?.to_vec())
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let opts = ReadOptions {
            range: (offset..offset + len).into(),
            ..Default::default()
        };
        Ok(self.op.read_options(path, opts)?.to_vec())
    }

    fn write(&self, path: &str, bytes: Bytes) -> Result<()> {
        let op = match &self.packs_op {
            Some(packs) if path.starts_with("data/") => packs,
            _ => &self.op,
        };
        op.write(path, bytes)?;
        Ok(())
    }

    /// Where the service cannot refuse to replace (no conditional write), what is there
    /// is asked first: a create-only storage refuses the overwrite itself.
    fn write_new(&self, path: &str, bytes: Bytes) -> Result<()> {
        let op = match (&self.direct_op, &self.packs_op) {
            (Some(direct), _) => direct,
            (None, Some(packs)) if path.starts_with("data/") => packs,
            _ => &self.op,
        };
        if op.info().capability().write_with_if_not_exists {
            op.write_options(
                path,
                bytes,
                WriteOptions {
                    if_not_exists: true,
                    ..Default::default()
                },
            )?;
            return Ok(());
        }
        if op.exists(path)? {
            return Err(opendal::Error::new(ErrorKind::ConditionNotMatch, "exists already").into());
        }
        op.write(path, bytes)?;
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        Ok(self.op.rename(from, to)?)
    }

    fn delete(&self, path: &str) -> Result<()> {
        Ok(self.op.delete(path)?)
    }

    fn stat(&self, path: &str) -> Result<Meta> {
        Ok(meta(&self.op.stat(path)?))
    }

    fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.op.exists(path)?)
    }

    fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        let opts = ListOptions {
            recursive: true,
            ..Default::default()
        };
        let entries = match self.op.list_options(dir, opts) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(entries
            .into_iter()
            .filter(|e| !e.metadata().is_dir())
            .map(|e| Entry {
                meta: meta(e.metadata()),
                path: e.path().to_string(),
            })
            .collect())
    }

    fn probe(&self) -> Result<()> {
        let opts = ListOptions {
            limit: Some(1),
            ..Default::default()
        };
        let mut lister = self.op.lister_options("", opts)?;
        match lister.next() {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn create_dir(&self, dir: &str) -> Result<()> {
        Ok(self.op.create_dir(dir)?)
    }
}
