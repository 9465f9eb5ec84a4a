//! export: offline copies.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;

use super::commands::{filter, open_indexed, print_json, take_lock, warn_stderr};
use super::progress::{Progress, human_bytes};
use super::retention::{by_ids, policy};
use super::{ExportArgs, ForgetArgs, Global};
use crate::error::{VaultError, exit};
use crate::format::Id;
use crate::format::mirror::{EXPORT_VERSION, ExportRecord};
use crate::format::snapshot::Snapshot;
use crate::ops::{export as export_op, forget, select, sync};
use crate::repo::repository::now_rfc3339;
use crate::repo::{Backend, Repository};

/// `--snapshots '...'` is parsed as forget's options, so policies read the same.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct Selection {
    #[command(flatten)]
    f: ForgetArgs,
}

fn choose(repo: &Repository, spec: Option<&str>) -> Result<Vec<(Id, Snapshot)>> {
    let all = select::list(repo, &Default::default(), &warn_stderr)?;
    let Some(spec) = spec else {
        return Ok(all);
    };
    let words = spec.split_whitespace();
    let sel = Selection::try_parse_from(words)
        .map_err(|e| VaultError::Usage(format!("--snapshots {spec:?}: {}", e.kind())))?;
    let keep: Vec<Id> = if sel.f.ids.is_empty() {
        let p = policy(&sel.f)?;
        let fl = filter(&sel.f.filter);
        let pool: Vec<(Id, Snapshot)> =
            all.iter().filter(|(_, s)| fl.matches(s)).cloned().collect();
        forget::apply(&p, &pool, sel.f.group_by, &jiff::tz::TimeZone::system())
            .iter()
            .flat_map(|g| &g.snapshots)
            .filter(|d| d.keep)
            .filter_map(|d| Id::from_hex(&d.id))
            .collect()
    } else {
        by_ids(repo, &sel.f.ids)?
    };
    Ok(all
        .into_iter()
        .filter(|(id, _)| keep.contains(id))
        .collect())
}

pub fn export(g: &Global, a: ExportArgs) -> Result<i32> {
    let repo = open_indexed(g)?;
    let _lock = take_lock(g, &repo, false, "export")?;
    let chosen = choose(&repo, a.snapshots.as_deref())?;
    if chosen.is_empty() {
        return Err(VaultError::Usage("no snapshot selected: nothing to export".into()).into());
    }
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("export directory {}", a.dir.display()))?;
    let dir = std::path::absolute(&a.dir)?;
    let dest = Backend::open(&dir.to_string_lossy())?;
    let counters = Arc::new(sync::Counters::default());
    let c = counters.clone();
    let progress = Progress::start(g.quiet || g.json, move || {
        format!(
            "{} objects copied ({})",
            c.objects.load(Ordering::Relaxed),
            human_bytes(c.bytes.load(Ordering::Relaxed))
        )
    });
    let r = export_op::export(&repo, &chosen, &dest, &dir, &counters);
    progress.finish();
    let r = r?;
    let label = a.label.unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.to_string_lossy().into_owned())
    });
    repo.save_export_record(&ExportRecord {
        version: EXPORT_VERSION,
        time: now_rfc3339(),
        label: label.clone(),
        destination: dir.to_string_lossy().into_owned(),
        snapshots: chosen.iter().map(|(id, _)| *id).collect(),
        image: false,
    })?;
    if g.json {
        print_json(&json!({"label": label, "directory": dir, "report": r}))?;
    } else if !g.quiet {
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
    }
    Ok(exit::OK)
}
