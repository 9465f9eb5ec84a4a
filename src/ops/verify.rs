//! `vault verify`: the spare-machine routine in one command. Check the structure, read a
//! subset of the data, then restore the latest snapshot (or a random sample of its files)
//! into a temporary directory and compare every restored byte with the snapshot.

use std::collections::{BinaryHeap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;

use super::check::{self, CheckOptions};
use super::restore::{self, RestoreOptions};
use super::subset::Subset;
use super::walk;
use crate::format::Id;
use crate::format::tree::NodeType;
use crate::repo::Repository;

/// How much a verify reads and restores: one type for programs and the command line
/// (clap derives its flags under the `cli` feature).
#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct VerifyOptions {
    /// Restore this many randomly chosen files instead of the whole snapshot
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub sample: Option<usize>,
    /// Packs to read and verify besides the restore: 10%, n/N or 2G
    #[cfg_attr(
        feature = "cli",
        arg(long = "read-data-subset", value_name = "SUBSET", default_value = "5%")
    )]
    pub read_data: Subset,
    /// Directory for the temporary restore (default: the system temporary directory)
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub workdir: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub check: check::Report,
    pub snapshot: Option<String>,
    pub files_restored: u64,
    pub bytes_restored: u64,
    /// Files that could not be restored or did not match the snapshot.
    pub restore_errors: Vec<String>,
    /// The restore was left out: the copy is cold (`check.skipped` says so).
    pub restore_skipped: bool,
}

pub fn verify(
    repo: &Repository,
    snapshot: Option<(Id, Id)>,
    opts: &VerifyOptions,
    check_counters: &check::Counters,
    restore_counters: Arc<restore::Counters>,
) -> Result<VerifyReport> {
    let check_opts = CheckOptions {
        read_data: Some(opts.read_data.clone()),
    };
    let report = check::check(repo, &check_opts, check_counters)?;
    let mut out = VerifyReport {
        ok: report.healthy(),
        check: report,
        snapshot: None,
        files_restored: 0,
        bytes_restored: 0,
        restore_errors: Vec::new(),
        restore_skipped: false,
    };
    let Some((snap_id, root)) = snapshot else {
        return Ok(out);
    };
    out.snapshot = Some(snap_id.to_hex());
    if repo.backend.is_cold() {
        out.restore_skipped = true;
        return Ok(out);
    }
    let only = match opts.sample {
        Some(n) => Some(sample_files(repo, &root, n)?),
        None => None,
    };
    let base = match &opts.workdir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    let tmp = tempfile::Builder::new()
        .prefix("vault-verify-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temporary directory in {}", base.display()))?;
    let ropts = RestoreOptions {
        target: tmp.path().join("restore"),
        includes: Vec::new(),
        excludes: Vec::new(),
        overwrite: None,
        verify: true,
        only,
        ..RestoreOptions::default()
    };
    let r = restore::restore(repo, &root, &ropts, restore_counters);
    // The restore may be deeper than recursive removal reaches (tempfile's gives up
    // silently), so it is removed here; tempfile removes the empty directory.
    if let Err(e) = crate::fsmeta::remove::remove_tree(&ropts.target)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!(
            "could not remove the temporary restore {}: {e}",
            ropts.target.display()
        );
    }
    let r = r?;
    out.files_restored = r.files;
    out.bytes_restored = r.bytes;
    out.ok &= r.errors.is_empty();
    out.restore_errors = r.errors;
    Ok(out)
}

/// Picks `n` regular files uniformly at random: each file gets a keyed hash of its path
/// under a one-time key, and the `n` smallest win (memory stays at `n` paths).
fn sample_files(repo: &Repository, root: &Id, n: usize) -> Result<HashSet<PathBuf>> {
    let key = Id::random().0;
    let mut heap: BinaryHeap<([u8; 32], PathBuf)> = BinaryHeap::new();
    let mut visit = |path: &Path, node: &crate::format::tree::Node| {
        if node.kind == NodeType::File {
            use std::os::unix::ffi::OsStrExt;
            let h = *blake3::keyed_hash(&key, path.as_os_str().as_bytes()).as_bytes();
            if heap.len() < n {
                heap.push((h, path.to_path_buf()));
            } else if heap.peek().is_some_and(|top| h < top.0) {
                heap.pop();
                heap.push((h, path.to_path_buf()));
            }
        }
        Ok(node.kind == NodeType::Dir)
    };
    // Unreadable trees are the check's to report; sample from what can be read.
    walk::walk_lenient(repo, root, Path::new("/"), &mut visit, &mut |_, _| Ok(()))?;
    Ok(heap.into_iter().map(|(_, p)| p).collect())
}
