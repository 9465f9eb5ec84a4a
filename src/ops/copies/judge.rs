//! Which mirrors in force this host uses, and reading through them: a mirror is used only
//! once this host trusts its definition (see `trust`).

use std::collections::BTreeSet;
use std::sync::Mutex;

use anyhow::{Result, anyhow};

use super::PRIMARY;
use super::trust::{Store, Verdict};
use crate::error::{VaultError, one_line};
use crate::format::mirror::MirrorDef;
use crate::repo::location::Access;
use crate::repo::{Backend, Repository};
use crate::report::Reporter;

/// The mirrors in force (not `primary`), each with this host's verdict on it.
pub(super) fn judged(repo: &Repository) -> Result<Vec<(MirrorDef, Verdict)>> {
    let store = Store::load(&repo.config.id)?;
    Ok(repo
        .mirror_defs()?
        .into_iter()
        .filter(|d| d.name != PRIMARY)
        .map(|d| {
            let v = store.verdict(&d);
            (d, v)
        })
        .collect())
}

/// Why an untrusted mirror is not used, and what the user does about it: one line.
fn untrusted_line(d: &MirrorDef, redefined: bool) -> String {
    let why = if redefined {
        "was redefined since this host trusted it"
    } else {
        "is not trusted on this host"
    };
    format!(
        "mirror {} ({}) {why} and is skipped: check its URL, then `vault mirror trust {}`",
        d.name, d.url, d.name
    )
}

/// Names already reported as untrusted by this process: one line each, even when a
/// command both reads through the mirrors and syncs.
static REPORTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

pub(super) fn report_untrusted(d: &MirrorDef, redefined: bool, report: &dyn Reporter) {
    let first = REPORTED
        .lock()
        .map(|mut r| r.insert(d.name.clone()))
        .unwrap_or(true);
    if first {
        report.warn(&untrusted_line(d, redefined));
    }
}

/// The mirrors this host trusts, with what each may be sent.
pub struct TrustedMirrors {
    pub trusted: Vec<(MirrorDef, Access)>,
    /// Whether a mirror in force was left out as untrusted.
    pub any_untrusted: bool,
}

/// The mirrors this host trusts; each untrusted one is reported and left out.
pub fn trusted_mirrors(repo: &Repository, report: &dyn Reporter) -> Result<TrustedMirrors> {
    let mut out = TrustedMirrors {
        trusted: Vec::new(),
        any_untrusted: false,
    };
    for (d, v) in judged(repo)? {
        match v {
            Verdict::Trusted(access) => out.trusted.push((d, access)),
            Verdict::Untrusted { redefined } => {
                report_untrusted(&d, redefined, report);
                out.any_untrusted = true;
            }
        }
    }
    Ok(out)
}

/// The trusted mirrors that open, by name (mirrors that do not open are left out).
pub fn trusted_backends(repo: &Repository, report: &dyn Reporter) -> Vec<(String, Backend)> {
    let Ok(mirrors) = trusted_mirrors(repo, report) else {
        return Vec::new();
    };
    mirrors
        .trusted
        .into_iter()
        .filter_map(|(d, a)| {
            Backend::open_mirror(&d.url, &d.name, a)
                .ok()
                .map(|b| (d.name, b))
        })
        .collect()
}

/// Makes reads fall back to the trusted mirrors, per object. Mirrors that cannot be
/// opened are reported (unless `quiet`) and left out; a failure to read the definitions
/// or the trust only warns: the primary alone still serves.
pub fn attach_mirrors(repo: &mut Repository, quiet: bool, report: &dyn Reporter) {
    let mirrors = match trusted_mirrors(repo, report) {
        Ok(m) => m.trusted,
        Err(e) => {
            report.warn(&format!("cannot read the mirror list: {}", one_line(&e)));
            return;
        }
    };
    let mut backends = Vec::new();
    for (d, access) in &mirrors {
        match Backend::open_mirror(&d.url, &d.name, *access) {
            Ok(b) => backends.push(b),
            Err(e) if !quiet => report.warn(&format!("mirror {}: {}", d.name, one_line(&e))),
            Err(_) => {}
        }
    }
    if !backends.is_empty() {
        repo.backend = repo.backend.clone().with_fallbacks(backends);
    }
}

/// The definition of `name` in force, a mirror rather than `primary`.
pub(super) fn in_force(repo: &Repository, name: &str) -> Result<MirrorDef> {
    if name == PRIMARY {
        return Err(VaultError::Usage(
            "`primary` describes this repository itself, not a mirror".into(),
        )
        .into());
    }
    repo.mirror_defs()?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| no_such(name))
}

pub(super) fn no_such(name: &str) -> anyhow::Error {
    anyhow!("no mirror named {name} (see `vault mirror list`)")
}

/// The definition of `name`, refused unless this host trusts it; with what it may be sent.
pub(super) fn trusted_def(repo: &Repository, name: &str) -> Result<(MirrorDef, Access)> {
    let def = in_force(repo, name)?;
    match Store::load(&repo.config.id)?.verdict(&def) {
        Verdict::Trusted(a) => Ok((def, a)),
        Verdict::Untrusted { redefined } => {
            Err(VaultError::Usage(untrusted_line(&def, redefined)).into())
        }
    }
}
