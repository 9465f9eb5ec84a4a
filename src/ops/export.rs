//! `vault export DIR`: an offline copy that restores with nothing else. The directory is
//! a complete repository holding the chosen snapshots and every object they need, copied
//! as stored (same keys, same password), plus what a stranger needs years later: the
//! format spec, a reference reader, a README, a copy of this vault binary, and a
//! MANIFEST of SHA-256 sums that `sha256sum -c` checks.
//!
//! Exporting again to the same directory copies only what is missing and removes what no
//! exported snapshot needs any more. Every step leaves a valid repository: packs first,
//! then an index listing old and new packs, then snapshots, then the index shrinks, then
//! unneeded packs go; the MANIFEST is removed first and written last, so a directory
//! without one is an export that did not finish.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::sync::{self, CopyReport};
use crate::error::{Advised, Remedy};
use crate::format::Id;
use crate::format::index::{IndexFile, PackBlobs};
use crate::format::mirror::{EXPORT_VERSION, ExportRecord};
use crate::format::snapshot::Snapshot;
use crate::repo::backend::CONFIG_PATH;
use crate::repo::index::replace_index;
use crate::repo::repository::now_rfc3339;
use crate::repo::{Backend, FileKind, Repository};

pub const MANIFEST: &str = "MANIFEST";
const README: &str = "README.txt";
const SPEC: &str = "repo-format/README.md";
const READER: &str = "repo-format/reference/vault_reader.py";
const BINARY: &str = "vault";

/// Files an export carries beside the repository (audit does not call them extra).
pub fn is_extra(path: &str) -> bool {
    matches!(path, MANIFEST | README | BINARY) || path.starts_with("repo-format/")
}

#[derive(Debug, Default, Serialize)]
pub struct ExportReport {
    pub snapshots: u64,
    pub packs: u64,
    pub copied: u64,
    pub bytes_copied: u64,
    pub snapshots_removed: u64,
    pub packs_removed: u64,
    pub manifest_files: u64,
}

/// Exports `chosen` into directory `dir` (created if missing), then records the export
/// in the repository, where `status` and `run` judge its age. The label is `label`, or
/// the directory's name. Returns the report, the label and the absolute directory.
pub fn export_to_dir(
    repo: &Repository,
    chosen: &[(Id, Snapshot)],
    dir: &Path,
    label: Option<String>,
    counters: &sync::Counters,
) -> Result<(ExportReport, String, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("export directory {}", dir.display()))?;
    let dir = std::path::absolute(dir)?;
    let dest = Backend::open(&dir.to_string_lossy())?.labeled(format!("export {}", dir.display()));
    let report = export(repo, chosen, &dest, &dir, counters)?;
    let label = label.unwrap_or_else(|| name_of(&dir));
    record(repo, &label, &dir, chosen, false)?;
    Ok((report, label, dir))
}

/// A path's last component, as a default label.
pub fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string_lossy().into_owned())
}

/// Records in the repository that `chosen` were exported to `dest`.
pub fn record(
    repo: &Repository,
    label: &str,
    dest: &Path,
    chosen: &[(Id, Snapshot)],
    image: bool,
) -> Result<()> {
    repo.save_export_record(&ExportRecord {
        version: EXPORT_VERSION,
        time: now_rfc3339(),
        label: label.to_string(),
        destination: dest.to_string_lossy().into_owned(),
        snapshots: chosen.iter().map(|(id, _)| *id).collect(),
        image,
    })?;
    Ok(())
}

/// Exports `chosen` snapshots of `repo` into the directory of `dest`.
pub fn export(
    repo: &Repository,
    chosen: &[(Id, Snapshot)],
    dest: &Backend,
    dir: &Path,
    counters: &sync::Counters,
) -> Result<ExportReport> {
    let primary = repo.backend.clone();
    refuse_foreign(&primary, dest)?;
    let mut report = ExportReport {
        snapshots: chosen.len() as u64,
        ..Default::default()
    };
    let needed = needed_packs(repo, chosen)?;
    // An export being rewritten is not a finished export until the new MANIFEST exists.
    // A MANIFEST temporary a killed export left must go too, or the new MANIFEST would
    // list it, and it is gone by the time MANIFEST is renamed into place.
    let _ = std::fs::remove_file(dir.join(MANIFEST));
    let _ = std::fs::remove_file(dir.join(MANIFEST).with_extension("vault-tmp"));
    dest.create_layout()?;
    report.packs = needed.len() as u64;
    let mut copy = CopyReport::default();
    // Planned whole before anything is copied, so that progress has its total.
    let mut plan = Vec::with_capacity(3);
    for kind in [FileKind::Key, FileKind::Format, FileKind::Data] {
        let have: HashSet<Id> = dest.list(kind)?.into_iter().collect();
        let sized = primary.list_sized(kind)?.into_iter();
        let todo: Vec<(Id, u64)> = match kind {
            FileKind::Data => {
                let sizes: std::collections::HashMap<Id, u64> = sized.collect();
                needed
                    .iter()
                    .filter(|p| !have.contains(&p.pack))
                    .map(|p| (p.pack, sizes.get(&p.pack).copied().unwrap_or(0)))
                    .collect()
            }
            _ => sized.filter(|(id, _)| !have.contains(id)).collect(),
        };
        plan.push((kind, todo));
    }
    let size: u64 = plan.iter().flat_map(|(_, t)| t).map(|(_, n)| n).sum();
    counters
        .total
        .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
    for (kind, todo) in plan {
        sync::copy_objects(&primary, dest, kind, &todo, &mut copy, counters)?;
    }
    if !copy.damaged_at_source.is_empty() {
        let msg = format!(
            "{} is damaged in the repository: nothing exported refers to it yet",
            copy.damaged_at_source[0]
        );
        return Err(Advised::error(msg, Remedy::CheckDataThenRepair));
    }
    report.copied = copy.copied;
    report.bytes_copied = copy.bytes;

    // The index lists old and new packs while snapshots change, then only what is needed.
    let old_packs = dest_index_packs(repo, dest)?;
    let mut both: Vec<PackBlobs> = needed.clone();
    let needed_ids: HashSet<Id> = needed.iter().map(|p| p.pack).collect();
    both.extend(
        old_packs
            .into_iter()
            .filter(|p| !needed_ids.contains(&p.pack)),
    );
    replace_index(dest, &repo.keys, both, &dest.list(FileKind::Index)?)?;

    let chosen_ids: HashSet<Id> = chosen.iter().map(|(id, _)| *id).collect();
    let have: HashSet<Id> = dest.list(FileKind::Snapshot)?.into_iter().collect();
    let todo: Vec<(Id, u64)> = chosen
        .iter()
        .filter(|(id, _)| !have.contains(id))
        .map(|(id, _)| (*id, 0))
        .collect();
    sync::copy_objects(
        &primary,
        dest,
        FileKind::Snapshot,
        &todo,
        &mut copy,
        counters,
    )?;
    report.copied = copy.copied;
    report.bytes_copied = copy.bytes;
    for id in have.difference(&chosen_ids) {
        dest.delete(&FileKind::Snapshot.path(id))?;
        report.snapshots_removed += 1;
    }
    replace_index(dest, &repo.keys, needed, &dest.list(FileKind::Index)?)?;
    for id in dest.list(FileKind::Data)? {
        if !needed_ids.contains(&id) {
            dest.delete(&FileKind::Data.path(&id))?;
            report.packs_removed += 1;
        }
    }
    if !dest.exists(CONFIG_PATH)? {
        dest.write(CONFIG_PATH, primary.read(CONFIG_PATH)?)?;
    }
    write_extras(dir)?;
    report.manifest_files = write_manifest(dir)?;
    Ok(report)
}

/// A directory holding another repository is never overwritten.
fn refuse_foreign(primary: &Backend, dest: &Backend) -> Result<()> {
    if !dest.exists(CONFIG_PATH)? {
        return Ok(());
    }
    if dest.read(CONFIG_PATH)? != primary.read(CONFIG_PATH)? {
        bail!(
            "{} holds another repository: export to an empty directory or an earlier export of this one",
            dest.location()
        );
    }
    Ok(())
}

/// Every pack holding a blob the chosen snapshots use, with all its index entries.
pub(crate) fn needed_packs(repo: &Repository, chosen: &[(Id, Snapshot)]) -> Result<Vec<PackBlobs>> {
    let mut used = HashSet::new();
    let counters = super::prune::Counters::default();
    for (_, snap) in chosen {
        super::prune::mark_tree(repo, &snap.tree, Path::new("/"), &mut used, &counters)?;
    }
    let index = repo.index();
    // A blob in no index would be missing from the export, and a re-export would delete
    // the pack that holds it there.
    let packs: HashSet<Id> = used
        .iter()
        .map(|b| match index.get(b) {
            Some((pack, _)) => Ok(pack),
            None => Err(Advised::error(
                format!(
                    "blob {} of the chosen snapshots is in no readable index file: nothing exported",
                    b.short()
                ),
                Remedy::Check,
            )),
        })
        .collect::<Result<_>>()?;
    let mut entries: HashMap<Id, PackBlobs> = HashMap::new();
    let files = repo.index_files()?.into_iter().flat_map(|(_, f)| f.packs);
    for p in files.chain(index.unindexed.iter().cloned()) {
        if packs.contains(&p.pack) {
            entries.entry(p.pack).or_insert(p);
        }
    }
    let mut v: Vec<PackBlobs> = entries.into_values().collect();
    v.sort_by_key(|p| p.pack);
    Ok(v)
}

/// The packs the destination's current index lists (those its snapshots rely on).
fn dest_index_packs(repo: &Repository, dest: &Backend) -> Result<Vec<PackBlobs>> {
    let mut out = Vec::new();
    for id in dest.list(FileKind::Index)? {
        let bytes = dest.read(&FileKind::Index.path(&id))?;
        let f = IndexFile::open(&repo.keys, &bytes)
            .with_context(|| format!("the export's index file {}", id.short()))?;
        out.extend(f.packs);
    }
    Ok(out)
}

fn write_atomic(dir: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("vault-tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("{}", path.display()))?;
    Ok(())
}

/// The files an export carries beside the repository: path, content, mode.
pub(crate) fn extras() -> Result<Vec<(&'static str, Vec<u8>, u32)>> {
    let exe = std::env::current_exe().context("finding the running vault binary")?;
    let bin = std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
    Ok(vec![
        (README, readme().into_bytes(), 0o644),
        (
            SPEC,
            include_str!("../../repo-format/README.md").into(),
            0o644,
        ),
        (
            READER,
            include_str!("../../repo-format/reference/vault_reader.py").into(),
            0o755,
        ),
        (BINARY, bin, 0o755),
    ])
}

fn write_extras(dir: &Path) -> Result<()> {
    for (path, bytes, mode) in extras()? {
        write_atomic(dir, path, &bytes, mode)?;
    }
    Ok(())
}

fn readme() -> String {
    format!(
        "This directory is an offline copy of a vault backup repository, written by\n\
         vault {version} on {time}.\n\n\
         Everything in it is encrypted; the repository password opens it.\n\n\
         Check that nothing changed since it was written (needs only coreutils):\n\
         \x20   sha256sum -c MANIFEST\n\n\
         Restore with the vault binary stored here (Linux x86-64):\n\
         \x20   ./vault snapshots --repo .\n\
         \x20   ./vault restore latest --repo . --target /some/empty/dir\n\
         \x20   ./vault check --read-data --repo .\n\n\
         Without vault: repo-format/README.md specifies every byte, and\n\
         repo-format/reference/vault_reader.py is a short independent reader\n\
         (python3 with the packages cryptography, blake3 and zstandard):\n\
         \x20   python3 repo-format/reference/vault_reader.py --repo . --password-file PW snapshots\n\
         \x20   python3 repo-format/reference/vault_reader.py --repo . --password-file PW restore latest /some/empty/dir\n\n\
         If MANIFEST is missing, the export was interrupted: the repository is still\n\
         valid (it holds an earlier or the new set of snapshots), but run the export again.\n",
        version = env!("CARGO_PKG_VERSION"),
        time = jiff::Timestamp::now()
    )
}

/// Writes `MANIFEST`: `<sha256>  <path>` for every other file, in `sha256sum` format.
fn write_manifest(dir: &Path) -> Result<u64> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut text = String::new();
    for rel in &files {
        let mut h = Sha256::new();
        let mut f = std::fs::File::open(dir.join(rel))?;
        std::io::copy(&mut f, &mut h)?;
        text.push_str(&format!("{}  {rel}\n", hex::encode(h.finalize())));
    }
    write_atomic(dir, MANIFEST, text.as_bytes(), 0o644)?;
    Ok(files.len() as u64)
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let e = e?;
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .expect("below root")
            .to_string_lossy()
            .into_owned();
        if e.file_type()?.is_dir() {
            if rel != "tmp" && rel != "locks" {
                collect(root, &path, out)?;
            }
        } else if rel != MANIFEST {
            out.push(rel);
        }
    }
    Ok(())
}
