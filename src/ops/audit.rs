//! `vault audit`: integrity of every stored object without the key. Hash-named objects
//! must hash to their names, config and locks must match their checksums, and the
//! manifests (plaintext lists of what each index file covers) must find every pack and
//! index file they list, at the size they list.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use crossbeam_channel::bounded;
use serde::Serialize;

use super::problem::{Problem, Problems};
use super::subset::Subset;
use crate::error::one_line;
use crate::format::manifest::Manifest;
use crate::format::{Id, keyfile, object};
use crate::repo::Backend;

#[derive(Default)]
pub struct Counters {
    pub objects: AtomicU64,
    pub bytes_read: AtomicU64,
    /// The size of the objects to hash (0 until they are listed).
    pub bytes_to_read: AtomicU64,
}

#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub objects: u64,
    pub objects_hashed: u64,
    pub bytes_read: u64,
    pub manifests: u64,
    pub packs_listed: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
    /// Files that are not part of a vault repository (listed, never deleted).
    pub extra: Vec<String>,
    pub stats: Stats,
}

/// What a stored file is, from its path alone.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Class {
    Config,
    Key,
    Index,
    Snapshot,
    Pack,
    Manifest,
    Lock,
    Mirror,
    Forget,
    Export,
    /// Two-phase prune's marks, revivals and deletions, and format records (§12a).
    Record,
    /// What an offline export carries beside the repository (README, manifest, ...).
    ExportExtra,
    Temp,
    Extra,
}

fn classify(path: &str) -> (Class, Option<Id>) {
    if path == "config" {
        return (Class::Config, None);
    }
    if crate::ops::export::is_extra(path) {
        return (Class::ExportExtra, None);
    }
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let id = Id::from_hex(name);
    let class = match dir {
        _ if dir == "tmp" || dir.starts_with("tmp/") => return (Class::Temp, None),
        "keys" => Class::Key,
        "index" => Class::Index,
        "snapshots" => Class::Snapshot,
        "manifests" => Class::Manifest,
        "locks" => Class::Lock,
        "mirrors" => Class::Mirror,
        "forgotten" => Class::Forget,
        "exports" => Class::Export,
        "marks" | "revivals" | "deletions" | "format" => Class::Record,
        d if d.starts_with("data/") && name.get(..2) == Some(&d[5..]) => Class::Pack,
        _ => Class::Extra,
    };
    match id {
        Some(id) => (class, Some(id)),
        None => (Class::Extra, None),
    }
}

impl Class {
    fn noun(self) -> &'static str {
        match self {
            Class::Config => "config",
            Class::Key => "key",
            Class::Index => "index",
            Class::Snapshot => "snapshot",
            Class::Pack => "pack",
            Class::Manifest => "manifest",
            Class::Lock => "lock",
            Class::Mirror => "mirror definition",
            Class::Forget => "forget record",
            Class::Export => "export record",
            Class::Record => "prune or format record",
            Class::ExportExtra => "export file",
            Class::Temp | Class::Extra => "file",
        }
    }
}

/// Audits the repository at `backend`. `packs` limits which packs are hashed (all other
/// objects are small and always are); presence and sizes are checked for all.
/// [`audit`] of the repository at `location`; fails when nothing there is a repository.
pub fn audit_location(location: &str, packs: &Subset, counters: &Counters) -> Result<Report> {
    let backend = Backend::open(location)?;
    let r = audit(&backend, packs, counters)?;
    if r.stats.objects == 0 {
        return Err(backend
            .why_absent()
            .unwrap_or_else(|| crate::error::VaultError::NoRepository(location.into()).into()));
    }
    Ok(r)
}

pub fn audit(backend: &Backend, packs: &Subset, counters: &Counters) -> Result<Report> {
    let files = backend.list_files("")?;
    let mut report = Report::default();
    let mut problems = Problems::default();
    let mut sizes: HashMap<(Class, Id), u64> = HashMap::new();
    let mut to_hash: Vec<(String, Class, Id)> = Vec::new();
    let mut pack_list: Vec<(Id, u64)> = Vec::new();
    let mut temps = 0;
    for (path, size) in &files {
        report.stats.objects += 1;
        match classify(path) {
            (Class::Config, _) => check_config(backend, &mut problems),
            (Class::Temp, _) => temps += 1,
            (Class::ExportExtra, _) => {}
            (Class::Extra, _) => report.extra.push(path.clone()),
            (class, Some(id)) => {
                sizes.insert((class, id), *size);
                match class {
                    Class::Pack => pack_list.push((id, *size)),
                    Class::Manifest | Class::Lock => {}
                    _ => to_hash.push((path.clone(), class, id)),
                }
            }
            (_, None) => report.extra.push(path.clone()),
        }
    }
    if !files.iter().any(|(p, _)| p == "config") {
        problems.add("config", None, "missing (the repository cannot be opened)");
    }
    if !sizes.keys().any(|(c, _)| *c == Class::Key) {
        problems.add(
            "keys",
            None,
            "missing: no key files (the repository cannot be opened)",
        );
    }
    pack_list.sort();
    if backend.is_cold() {
        report.warnings.push(backend.cold_note("vault audit"));
        pack_list.clear();
    }
    for (id, _) in packs.choose(&pack_list) {
        let hex = id.to_hex();
        to_hash.push((format!("data/{}/{hex}", &hex[..2]), Class::Pack, id));
    }
    report.stats.objects_hashed = to_hash.len() as u64;
    let size = to_hash
        .iter()
        .map(|(_, class, id)| sizes.get(&(*class, *id)).copied().unwrap_or(0))
        .sum();
    counters.bytes_to_read.store(size, Ordering::Relaxed);
    hash_all(backend, &to_hash, &mut problems, counters);
    let mut ctx = ManifestCheck {
        backend,
        sizes: &sizes,
        problems: &mut problems,
        covered_index: HashSet::new(),
        covered_packs: HashSet::new(),
    };
    for &(class, id) in sizes.keys() {
        match class {
            Class::Manifest => ctx.manifest(&id),
            Class::Lock => check_lock(backend, &id, &mut report.warnings),
            _ => {}
        }
    }
    report.stats.manifests = sizes.keys().filter(|(c, _)| *c == Class::Manifest).count() as u64;
    report.stats.packs_listed = ctx.covered_packs.len() as u64;
    coverage_warnings(
        &sizes,
        &ctx.covered_index,
        &ctx.covered_packs,
        &mut report.warnings,
    );
    if temps > 0 {
        report.warnings.push(format!(
            "{temps} temporary file(s) in tmp/ (left by interrupted writes; safe to delete when no vault process runs)"
        ));
    }
    report.stats.bytes_read = counters.bytes_read.load(Ordering::Relaxed);
    report.problems = problems.into_vec();
    Ok(report)
}

fn check_config(backend: &Backend, problems: &mut Problems) {
    match backend.read("config") {
        Ok(b) => {
            if object::verify_checksum(&b).is_err() {
                problems.add("config", None, "checksum mismatch (damaged)");
            }
        }
        Err(e) => {
            problems.add("config", None, format!("unreadable: {}", one_line(&e)));
        }
    }
}

fn check_lock(backend: &Backend, id: &Id, warnings: &mut Vec<String>) {
    let r = backend
        .read(&format!("locks/{id}"))
        .map(|b| object::verify_checksum(&b).is_ok());
    if !matches!(r, Ok(true)) {
        warnings.push(format!(
            "lock {} is damaged (`vault unlock` removes it when stale)",
            id.short()
        ));
    }
}

/// Reads and hashes objects on as many threads as the backend takes requests at once
/// (`Backend::connections`); a name that does not match is damage.
fn hash_all(
    backend: &Backend,
    objects: &[(String, Class, Id)],
    problems: &mut Problems,
    counters: &Counters,
) {
    let found: Mutex<Vec<(Class, Id, String)>> = Mutex::new(Vec::new());
    let readers = backend.connections().clamp(1, objects.len().max(1));
    let (tx, rx) = bounded::<&(String, Class, Id)>(readers * 2);
    std::thread::scope(|s| {
        for _ in 0..readers {
            let (rx, found) = (rx.clone(), &found);
            s.spawn(move || {
                for (path, class, id) in rx {
                    if let Some(why) = hash_one(backend, path, *class, id, counters) {
                        found.lock().expect("poisoned").push((*class, *id, why));
                    }
                }
            });
        }
        for o in objects {
            let _ = tx.send(o);
        }
        drop(tx);
    });
    let mut found = found.into_inner().expect("poisoned");
    found.sort_by_key(|(c, id, _)| (c.noun(), *id));
    for (class, id, why) in found {
        problems.add(class.noun(), Some(&id), why);
    }
}

fn hash_one(backend: &Backend, path: &str, class: Class, id: &Id, c: &Counters) -> Option<String> {
    let bytes = match backend.read(path) {
        Ok(b) => b,
        Err(e) => return Some(format!("unreadable: {}", one_line(&e))),
    };
    c.objects.fetch_add(1, Ordering::Relaxed);
    c.bytes_read
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    if Id::of_stored(&bytes) != *id {
        return Some("content does not match its name (damaged)".into());
    }
    if class == Class::Key
        && let Err(e) = keyfile::KeyFile::parse(&bytes)
    {
        return Some(format!("malformed: {e}"));
    }
    None
}

struct ManifestCheck<'a> {
    backend: &'a Backend,
    sizes: &'a HashMap<(Class, Id), u64>,
    problems: &'a mut Problems,
    covered_index: HashSet<Id>,
    covered_packs: HashSet<Id>,
}

impl ManifestCheck<'_> {
    fn manifest(&mut self, id: &Id) {
        let m = match self
            .backend
            .read(&format!("manifests/{id}"))
            .and_then(|b| Ok(Manifest::decode(&b)?))
        {
            Ok(m) => m,
            Err(e) => {
                self.problems.add("manifest", Some(id), one_line(&e));
                return;
            }
        };
        if m.index.0 != *id {
            self.problems
                .add("manifest", Some(id), "names another index file (misplaced)");
            return;
        }
        self.covered_index.insert(*id);
        self.expect(Class::Index, m.index, id);
        for p in m.packs {
            self.covered_packs.insert(p.0);
            self.expect(Class::Pack, p, id);
        }
    }

    fn expect(&mut self, class: Class, (id, size): (Id, u64), manifest: &Id) {
        let what = match self.sizes.get(&(class, id)) {
            None => format!("missing (listed by manifest {})", manifest.short()),
            Some(&s) if s < size => format!("truncated: {s} bytes of {size}"),
            Some(&s) if s != size => format!("{s} bytes, its manifest says {size}"),
            Some(_) => return,
        };
        self.problems.add(class.noun(), Some(&id), what);
    }
}

fn coverage_warnings(
    sizes: &HashMap<(Class, Id), u64>,
    covered_index: &HashSet<Id>,
    covered_packs: &HashSet<Id>,
    warnings: &mut Vec<String>,
) {
    let uncovered = sizes
        .keys()
        .filter(|(c, id)| *c == Class::Index && !covered_index.contains(id))
        .count();
    if uncovered > 0 {
        warnings.push(format!(
            "{uncovered} index file(s) have no manifest (older vault, or an interrupted write): the packs they list cannot be counted without the key; `vault repair index` writes manifests"
        ));
    }
    let loose = sizes
        .keys()
        .filter(|(c, id)| *c == Class::Pack && !covered_packs.contains(id))
        .count();
    if loose > 0 && uncovered == 0 {
        warnings.push(format!(
            "{loose} pack(s) are listed by no manifest (left by an interrupted backup; `vault prune` removes them)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_paths() {
        let id = Id::of_stored(b"x");
        let hex = id.to_hex();
        assert_eq!(classify("config"), (Class::Config, None));
        assert_eq!(classify(&format!("keys/{hex}")), (Class::Key, Some(id)));
        assert_eq!(
            classify(&format!("data/{}/{hex}", &hex[..2])),
            (Class::Pack, Some(id))
        );
        assert_eq!(classify(&format!("data/zz/{hex}")).0, Class::Extra);
        assert_eq!(classify("index/notanid").0, Class::Extra);
        assert_eq!(classify("tmp/abc.tmp").0, Class::Temp);
        assert_eq!(classify("stray.txt").0, Class::Extra);
    }
}
