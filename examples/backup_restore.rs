//! A program that uses vault as a library: it backs up a directory into a new repository
//! in a temporary directory, restores the snapshot beside it, and compares the two
//! trees file by file.
//!
//! ```sh
//! cargo run --example backup_restore -- DIR
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vault::ops::{backup, restore};
use vault::repo::lock::LockKind;
use vault::repo::repository::{InitOptions, Secret};
use vault::report::Report;
use vault::session::{Locking, Session};

const PASSWORD: &[u8] = b"an example's password";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let source = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or("usage: backup_restore DIR")?;
    let source = std::path::absolute(source)?;
    let work = tempfile::tempdir()?;
    let location = work.path().join("repo");
    let location = location
        .to_str()
        .ok_or("a temporary path that is not UTF-8")?;
    let target = work.path().join("restored");
    // Warnings (a file that could not be read, say) are printed; errors are returned.
    let report: Report = Arc::new(|m: &str| eprintln!("warning: {m}"));

    Session::init(
        location,
        || Ok(PASSWORD),
        &InitOptions::default(),
        report.clone(),
    )?;
    let secret = || Ok(Secret::Password(PASSWORD.to_vec()));
    let mut session = Session::open(location, secret, report.clone())?
        .lock(LockKind::Shared, "backup", Locking::Take { wait: None })?
        .index_for_backup(false)?;
    let opts = backup::BackupOptions {
        paths: vec![source.clone()],
        ..Default::default()
    };
    let warn: backup::Warn = Arc::new(|m| eprintln!("warning: {m}"));
    let done = session.backup(&opts, Default::default(), warn)?;
    let s = &done.snapshot.summary;
    println!(
        "backed up {} files ({} bytes) into snapshot {}",
        s.files_new + s.files_changed + s.files_unchanged,
        s.bytes_read,
        done.snapshot_id.map(|i| i.short()).unwrap_or_default()
    );

    // A new stage: the index is read again under a lock for reading.
    let session = session
        .release()
        .lock(LockKind::Shared, "restore", Locking::Take { wait: None })?
        .index()?;
    let opts = restore::RestoreOptions {
        target: target.clone(),
        ..Default::default()
    };
    let restored = session.restore(&done.snapshot.tree, &opts, Default::default())?;
    println!(
        "restored {} files into {}",
        restored.files,
        target.display()
    );

    let copy = target.join(source.strip_prefix("/")?);
    let compared = compare(&source, &copy)?;
    println!("{compared} files identical");
    Ok(())
}

/// Compares every regular file under `a` with the one at the same place under `b`.
fn compare(a: &Path, b: &Path) -> Result<usize, Box<dyn std::error::Error>> {
    let mut same = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(a.join(&rel))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(rel);
            } else if kind.is_file() {
                if std::fs::read(a.join(&rel))? != std::fs::read(b.join(&rel))? {
                    return Err(format!("{} differs after the round trip", rel.display()).into());
                }
                same += 1;
            }
        }
    }
    Ok(same)
}
