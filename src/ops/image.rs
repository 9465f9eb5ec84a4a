//! Export images: the directory export of `export.rs` as one standard tar stream (plain
//! `tar xf` unpacks it into that directory), optionally cut into numbered volumes for
//! optical media, and checked later against the MANIFEST it carries.
//!
//! The image is written from the repository directly, with no staging copy. Volumes are
//! written under temporary names and renamed only when the whole image is complete, so
//! an interrupted export leaves no file that looks like an image.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::export::{self, ExportReport, MANIFEST};
use crate::error::{Advised, Remedy};
use crate::format::Id;
use crate::format::snapshot::Snapshot;
use crate::repo::backend::{CONFIG_PATH, LAYOUT_DIRS};
use crate::repo::index::seal_index_set;
use crate::repo::{FileKind, Repository};

/// A `Write` that cuts its stream into volumes of at most `split` bytes.
struct Volumes {
    base: PathBuf,
    split: Option<u64>,
    current: Option<BufWriter<File>>,
    in_current: u64,
    done: Vec<PathBuf>,
}

impl Volumes {
    fn final_name(&self, n: usize) -> PathBuf {
        match self.split {
            Some(_) => PathBuf::from(format!("{}.{n:03}", self.base.display())),
            None => self.base.clone(),
        }
    }

    fn tmp_name(&self, n: usize) -> PathBuf {
        PathBuf::from(format!("{}.vault-partial", self.final_name(n).display()))
    }

    fn open_next(&mut self) -> io::Result<()> {
        if let Some(mut f) = self.current.take() {
            f.flush()?;
            f.get_ref().sync_all()?;
        }
        let n = self.done.len();
        let path = self.tmp_name(n);
        self.current = Some(BufWriter::with_capacity(1 << 20, File::create(&path)?));
        self.done.push(path);
        self.in_current = 0;
        Ok(())
    }

    /// Flushes the last volume and gives every volume its final name.
    fn finish(mut self) -> Result<Vec<PathBuf>> {
        if let Some(mut f) = self.current.take() {
            f.flush()?;
            f.get_ref().sync_all()?;
        }
        // The first volume last: an image is found by it (`volumes_of`), so a kill
        // between two renames leaves no first volume rather than one that looks whole.
        let mut out = Vec::new();
        for (n, tmp) in self.done.iter().enumerate().rev() {
            let dest = self.final_name(n);
            std::fs::rename(tmp, &dest).with_context(|| format!("{}", dest.display()))?;
            out.push(dest);
        }
        out.reverse();
        Ok(out)
    }
}

impl Write for Volumes {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let full = self.split.is_some_and(|s| self.in_current >= s);
        if self.current.is_none() || full {
            self.open_next()?;
        }
        let room = self.split.map_or(buf.len() as u64, |s| s - self.in_current);
        let n = buf.len().min(room as usize);
        let w = self
            .current
            .as_mut()
            .expect("open volume")
            .write(&buf[..n])?;
        self.in_current += w as u64;
        Ok(w)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.current.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

/// Appends one file to the tar and to the manifest.
struct ImageWriter {
    tar: tar::Builder<Volumes>,
    sums: BTreeMap<String, String>,
}

impl ImageWriter {
    fn file(&mut self, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(mode);
        h.set_mtime(jiff::Timestamp::now().as_second().max(0) as u64);
        h.set_entry_type(tar::EntryType::Regular);
        self.tar
            .append_data(&mut h, path, bytes)
            .with_context(|| format!("writing {path} into the image"))?;
        self.sums
            .insert(path.to_string(), hex::encode(Sha256::digest(bytes)));
        Ok(())
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_mtime(jiff::Timestamp::now().as_second().max(0) as u64);
        h.set_entry_type(tar::EntryType::Directory);
        self.tar.append_data(&mut h, path, io::empty())?;
        Ok(())
    }
}

/// Writes the export of `chosen` as a tar image at `path` (volumes `path.000`, ... with
/// `split`). Returns the report and the volumes written.
/// [`export_image`], then the export recorded in the repository under `label` (or the
/// image's file name). Returns the report, the volumes written and the label.
pub fn export_image_recorded(
    repo: &Repository,
    chosen: &[(Id, Snapshot)],
    path: &Path,
    split: Option<u64>,
    label: Option<String>,
) -> Result<(ExportReport, Vec<PathBuf>, String)> {
    let path = std::path::absolute(path)?;
    let (report, volumes) = export_image(repo, chosen, &path, split)?;
    let label = label.unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    export::record(repo, &label, &path, chosen, true)?;
    Ok((report, volumes, label))
}

pub fn export_image(
    repo: &Repository,
    chosen: &[(Id, Snapshot)],
    path: &Path,
    split: Option<u64>,
) -> Result<(ExportReport, Vec<PathBuf>)> {
    if split.is_some_and(|s| s < 1 << 20) {
        bail!("--split must be at least 1M");
    }
    let volumes = Volumes {
        base: path.to_path_buf(),
        split,
        current: None,
        in_current: 0,
        done: Vec::new(),
    };
    let mut w = ImageWriter {
        tar: tar::Builder::new(volumes),
        sums: BTreeMap::new(),
    };
    let mut report = ExportReport {
        snapshots: chosen.len() as u64,
        ..Default::default()
    };
    let src = repo.backend.alone();
    for d in LAYOUT_DIRS {
        w.dir(d)?;
    }
    for id in src.list(FileKind::Key)? {
        let path = FileKind::Key.path(&id);
        w.file(&path, &checked(&src.read(&path)?, &id, &path)?, 0o644)?;
    }
    let needed = export::needed_packs(repo, chosen)?;
    report.packs = needed.len() as u64;
    for p in &needed {
        let path = FileKind::Data.path(&p.pack);
        let bytes = checked(&src.read(&path)?, &p.pack, &path)?;
        report.copied += 1;
        report.bytes_copied += bytes.len() as u64;
        w.file(&path, &bytes, 0o644)?;
    }
    for s in seal_index_set(&repo.keys, needed) {
        w.file(&FileKind::Index.path(&s.id), &s.bytes, 0o644)?;
        w.file(&FileKind::Manifest.path(&s.id), &s.manifest, 0o644)?;
    }
    for (id, _) in chosen {
        let path = FileKind::Snapshot.path(id);
        w.file(&path, &checked(&src.read(&path)?, id, &path)?, 0o644)?;
    }
    w.file(CONFIG_PATH, &src.read(CONFIG_PATH)?, 0o644)?;
    for (path, bytes, mode) in export::extras()? {
        w.file(path, &bytes, mode)?;
    }
    let manifest: String = w.sums.iter().map(|(p, h)| format!("{h}  {p}\n")).collect();
    report.manifest_files = w.sums.len() as u64;
    w.file(MANIFEST, manifest.as_bytes(), 0o644)?;
    let volumes = w.tar.into_inner().context("finishing the image")?;
    Ok((report, volumes.finish()?))
}

/// Refuses to put a damaged object into an image.
fn checked(bytes: &[u8], id: &Id, path: &str) -> Result<Vec<u8>> {
    if Id::of_stored(bytes) != *id {
        let msg = format!("{path} is damaged in the repository");
        return Err(Advised::error(msg, Remedy::CheckDataThenRepair));
    }
    Ok(bytes.to_vec())
}

#[derive(Debug, Default, Serialize)]
pub struct ImageCheck {
    pub volumes: Vec<String>,
    pub files: u64,
    pub bytes: u64,
    /// Files whose content differs from the manifest, or that are missing or extra.
    pub problems: Vec<String>,
}

/// The volumes of an image: `path` itself, or `path.000`, `path.001`, ...
pub fn volumes_of(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    (0..)
        .map(|n| PathBuf::from(format!("{}.{n:03}", path.display())))
        .take_while(|p| p.is_file())
        .collect()
}

/// Reads every volume in order and checks every file against the MANIFEST inside.
pub fn verify_image(path: &Path) -> Result<ImageCheck> {
    let vols = volumes_of(path);
    if vols.is_empty() {
        bail!(
            "{}: no image there (nor volumes {}.000, ...)",
            path.display(),
            path.display()
        );
    }
    let mut stream: Box<dyn Read> = Box::new(io::empty());
    for v in &vols {
        let f = File::open(v).with_context(|| format!("{}", v.display()))?;
        stream = Box::new(stream.chain(f));
    }
    let mut archive = tar::Archive::new(stream);
    let mut sums: BTreeMap<String, String> = BTreeMap::new();
    let mut manifest = None;
    let mut check = ImageCheck {
        volumes: vols.iter().map(|v| v.display().to_string()).collect(),
        ..Default::default()
    };
    for entry in archive.entries().context("reading the image")? {
        let mut e = entry.context("reading the image (truncated or damaged volume?)")?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = e.path()?.to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes)?;
        check.bytes += bytes.len() as u64;
        if name == MANIFEST {
            manifest = Some(String::from_utf8_lossy(&bytes).into_owned());
        } else {
            check.files += 1;
            sums.insert(name, hex::encode(Sha256::digest(&bytes)));
        }
    }
    let Some(manifest) = manifest else {
        bail!(
            "{}: the image has no MANIFEST (incomplete image)",
            path.display()
        );
    };
    for line in manifest.lines() {
        let Some((sum, file)) = line.split_once("  ") else {
            check
                .problems
                .push(format!("MANIFEST: malformed line {line:?}"));
            continue;
        };
        match sums.remove(file) {
            Some(got) if got == sum => {}
            Some(_) => check
                .problems
                .push(format!("{file}: content differs from the MANIFEST")),
            None => check
                .problems
                .push(format!("{file}: missing from the image")),
        }
    }
    for extra in sums.keys() {
        check.problems.push(format!("{extra}: not in the MANIFEST"));
    }
    Ok(check)
}
