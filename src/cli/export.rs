//! export: offline copies.

use std::path::Path;

use anyhow::Result;
use clap::Parser;
use serde_json::json;

use super::commands::{reading, render, warn_stderr, with_progress};
use super::progress::human_bytes;
use super::{ExportArgs, ForgetArgs, Global};
use crate::error::{VaultError, exit};
use crate::format::Id;
use crate::format::snapshot::Snapshot;
use crate::ops::{export as export_op, image, select};
use crate::repo::Repository;

/// `--snapshots '...'` is parsed as forget's options, so policies read the same.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct Selection {
    #[command(flatten)]
    f: ForgetArgs,
}

/// Forget's options from one string, as `--snapshots` and profiles' retention give them.
pub fn parse_selection(spec: &str) -> Result<ForgetArgs> {
    Selection::try_parse_from(spec.split_whitespace())
        .map(|s| s.f)
        .map_err(|e| {
            VaultError::Usage(format!(
                "{spec:?}: {}",
                e.to_string().lines().next().unwrap_or("not valid")
            ))
            .into()
        })
}

/// All snapshots, or those `--snapshots` selects.
fn choose(repo: &Repository, spec: Option<&str>) -> Result<Vec<(Id, Snapshot)>> {
    let Some(spec) = spec else {
        return select::list(repo, &Default::default(), &warn_stderr);
    };
    let f = parse_selection(spec)?;
    select::by_selection(repo, &f.ids, &f.keep, &f.filter, &warn_stderr)
}

pub fn export(g: &Global, a: ExportArgs) -> Result<i32> {
    if let Some(img) = &a.verify_image {
        return verify_image(g, img);
    }
    let session = reading(g, "export")?;
    let repo = session.repo();
    let chosen = choose(repo, a.snapshots.as_deref())?;
    if chosen.is_empty() {
        return Err(VaultError::Usage("no snapshot selected: nothing to export".into()).into());
    }
    if let Some(img) = &a.image {
        return export_image(g, repo, &chosen, img, a.split, a.label);
    }
    let dir = a.dir.clone().expect("clap requires a directory");
    let (counters, progress) = super::mirrors::copy_progress(g);
    let r = export_op::export_to_dir(repo, &chosen, &dir, a.label, &counters);
    progress.finish();
    let (r, label, dir) = r?;
    render(
        g,
        &json!({"label": label, "directory": dir, "report": r}),
        || {
            println!(
                "exported {} snapshots to {} ({label}): {} objects copied ({}), {} snapshots and {} packs removed; MANIFEST lists {} files",
                r.snapshots,
                dir.display(),
                r.copied,
                human_bytes(r.bytes_copied),
                r.snapshots_removed,
                r.packs_removed,
                r.manifest_files
            );
        },
    )?;
    Ok(exit::OK)
}

fn export_image(
    g: &Global,
    repo: &Repository,
    chosen: &[(Id, Snapshot)],
    path: &Path,
    split: Option<u64>,
    label: Option<String>,
) -> Result<i32> {
    let (report, volumes, label) = with_progress(
        g,
        || "writing the image".to_string(),
        || image::export_image_recorded(repo, chosen, path, split, label),
    )?;
    let path = std::path::absolute(path)?;
    render(
        g,
        &json!({"label": label, "volumes": volumes, "report": report}),
        || {
            println!(
                "exported {} snapshots into {} volume(s) at {} ({label}): {} packs ({}); MANIFEST lists {} files",
                report.snapshots,
                volumes.len(),
                path.display(),
                report.packs,
                human_bytes(report.bytes_copied),
                report.manifest_files
            );
        },
    )?;
    Ok(exit::OK)
}

fn verify_image(g: &Global, path: &Path) -> Result<i32> {
    let c = image::verify_image(path)?;
    for p in &c.problems {
        eprintln!("vault: error: {p}");
    }
    render(g, &c, || {
        println!(
            "image {}: {} volume(s), {} files ({}): {}",
            path.display(),
            c.volumes.len(),
            c.files,
            human_bytes(c.bytes),
            if c.problems.is_empty() {
                "every file matches its MANIFEST".to_string()
            } else {
                format!("{} problem(s)", c.problems.len())
            }
        );
    })?;
    Ok(if c.problems.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    })
}
