//! Mirrors: copying a repository's objects, as they are, from one backend to another.
//!
//! `sync` brings a mirror up to date with the primary: objects the mirror lacks (or holds
//! at another size) are copied in dependency order — keys, mirror definitions, forget
//! records, packs, index files, manifests, snapshots — so the mirror is a consistent
//! repository at every instant (a pack or index file that reads damaged here, and that
//! the mirror lacks, stops the copy before whatever may refer to it). It deletes on the
//! mirror only what authentic objects say is gone: snapshots named by a forget record,
//! index files superseded by an index file it already holds, packs no index file on
//! either side still lists. A backend that merely lost files can never make sync delete
//! them elsewhere.
//!
//! `repair --from` copies the other way: every object the primary lacks or holds damaged
//! (checked without the key) comes back from a mirror that holds it intact.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use crossbeam_channel::bounded;
use serde::Serialize;

use crate::format::config::ROTATED_VERSION;
use crate::format::crypto::Keys;
use crate::format::index::IndexFile;
use crate::format::{Id, object};
use crate::repo::backend::CONFIG_PATH;
use crate::repo::index::delete_index_file;
use crate::repo::{Backend, FileKind, Repository};

/// Copy order: whatever an object refers to is on the target before it.
const ORDER: [FileKind; 12] = [
    FileKind::Key,
    FileKind::Format,
    FileKind::Mirror,
    FileKind::Forget,
    FileKind::Export,
    FileKind::Mark,
    FileKind::Revival,
    FileKind::Deletion,
    FileKind::Data,
    FileKind::Index,
    FileKind::Manifest,
    FileKind::Snapshot,
];

#[derive(Default)]
pub struct Counters {
    pub objects: AtomicU64,
    pub bytes: AtomicU64,
    /// What `bytes` goes to: the size of every object planned for copying so far (a
    /// sync adds each mirror's plan as it starts it; 0 when no plan is made up front).
    pub total: AtomicU64,
}

#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    pub copied: u64,
    pub bytes: u64,
    pub deleted: u64,
    /// A protected mirror: objects the primary removed on purpose that it keeps until
    /// `vault maintain`.
    #[serde(skip_serializing_if = "is_zero")]
    pub waiting: u64,
    /// Objects not copied because the source's copy is damaged.
    pub damaged_at_source: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Whether `bytes` are intact for an object of `kind` named `id`, without the key.
pub fn intact(kind: FileKind, id: &Id, bytes: &[u8]) -> bool {
    crate::repo::backend::intact(&kind.path(id), bytes)
}

/// What a target holding `have` lacks of kind `kind`: objects missing, or at a size
/// other than `from`'s.
fn missing(from: &Backend, have: &HashMap<Id, u64>, kind: FileKind) -> Result<Vec<(Id, u64)>> {
    Ok(from
        .list_sized(kind)?
        .into_iter()
        .filter(|(id, size)| have.get(id) != Some(size))
        .collect())
}

/// Copies `objects` of `kind` from `from` to `to`, each checked first, on as many threads
/// as the busier side takes requests at once (`Backend::connections`); each holds one
/// object.
pub fn copy_objects(
    from: &Backend,
    to: &Backend,
    kind: FileKind,
    objects: &[(Id, u64)],
    report: &mut CopyReport,
    counters: &Counters,
) -> Result<()> {
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let damaged: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let copied = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let copiers = from.connections().max(to.connections()).max(1);
    let (tx, rx) = bounded::<Id>(copiers);
    std::thread::scope(|s| {
        for _ in 0..copiers.min(objects.len()) {
            let rx = rx.clone();
            let (failed, damaged, copied, bytes) = (&failed, &damaged, &copied, &bytes);
            s.spawn(move || {
                for id in rx {
                    if failed.lock().expect("poisoned").is_some() {
                        continue;
                    }
                    let path = kind.path(&id);
                    let r = from.read(&path).and_then(|b| {
                        if !intact(kind, &id, &b) {
                            log::info!("{path} at {} is damaged: not copied", from.location());
                            damaged.lock().expect("poisoned").push(path.clone());
                            return Ok(());
                        }
                        let n = b.len() as u64;
                        to.write(&path, b)?;
                        log::info!("copied {path} ({n} bytes) to {}", to.location());
                        copied.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(n, Ordering::Relaxed);
                        counters.objects.fetch_add(1, Ordering::Relaxed);
                        counters.bytes.fetch_add(n, Ordering::Relaxed);
                        Ok(())
                    });
                    if let Err(e) = r {
                        failed.lock().expect("poisoned").get_or_insert(e);
                    }
                }
            });
        }
        for (id, _) in objects {
            if tx.send(*id).is_err() {
                break;
            }
        }
        drop(tx);
    });
    report.copied += copied.into_inner();
    report.bytes += bytes.into_inner();
    report
        .damaged_at_source
        .extend(damaged.into_inner().expect("poisoned"));
    match failed.into_inner().expect("poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copies the config where `to` has none or a damaged one; with `keys` (sync of a
/// rotated repository, format 5) also where `to`'s does not open under them: the config
/// of the master key a rotation replaced.
fn copy_config(
    from: &Backend,
    to: &Backend,
    keys: Option<&Keys>,
    report: &mut CopyReport,
) -> Result<()> {
    let there = to.read(CONFIG_PATH).ok();
    let intact_there = there
        .as_ref()
        .is_some_and(|b| object::verify_checksum(b).is_ok());
    let good_there = intact_there
        && there.as_ref().is_some_and(|b| {
            keys.is_none_or(|k| object::open_checksummed(k, object::Kind::Config, b).is_ok())
        });
    if good_there {
        return Ok(());
    }
    let b = from.read(CONFIG_PATH)?;
    if object::verify_checksum(&b).is_err() {
        report.damaged_at_source.push(CONFIG_PATH.into());
        return Ok(());
    }
    report.copied += 1;
    report.bytes += b.len() as u64;
    let replacing = intact_there && keys.is_some();
    to.write(CONFIG_PATH, b).map_err(|e| {
        if replacing && (e.is::<crate::repo::backend::Occupied>() || crate::repo::backend::is_refused(&e)) {
            // An intact config sealed under another key: one from before a key rotation.
            anyhow::anyhow!(
                "{}: its config is from before a key rotation and the storage refuses to replace it (create-only): that copy opens with the old key only, until a `vault sync` with credentials that may replace objects there",
                to.location()
            )
        } else {
            e
        }
    })
}

/// Brings `mirror` up to date with the primary of `repo` (whose index is loaded). On a
/// `protected` mirror it deletes nothing, and counts what `vault maintain` may delete.
pub fn sync(
    repo: &Repository,
    mirror: &Backend,
    protected: bool,
    counters: &Counters,
) -> Result<CopyReport> {
    let primary = repo.backend.alone();
    let mut report = CopyReport::default();
    mirror.create_layout()?;
    // The config first would make a half-copied mirror look like a repository; keys
    // first, then everything, then the config last. Listed in that order, all before
    // copying, so that the plan's size is known.
    let mut plan = Vec::with_capacity(ORDER.len());
    for kind in ORDER {
        let have: HashMap<Id, u64> = mirror.list_sized(kind)?.into_iter().collect();
        let todo = missing(&primary, &have, kind)?;
        plan.push((kind, have, todo));
    }
    let size: u64 = plan.iter().flat_map(|(_, _, t)| t).map(|(_, n)| n).sum();
    counters.total.fetch_add(size, Ordering::Relaxed);
    for (kind, have, todo) in plan {
        let before = report.damaged_at_source.len();
        copy_objects(&primary, mirror, kind, &todo, &mut report, counters)?;
        refuse_dangling(kind, &report.damaged_at_source[before..], &have, mirror)?;
    }
    let rotated = (repo.format >= ROTATED_VERSION).then_some(&repo.keys);
    copy_config(&primary, mirror, rotated, &mut report)?;
    if protected {
        // Nothing is deleted here: what waits is counted for the caller to tell.
        report.waiting = gone(repo, mirror, &mut |_| true)?.len() as u64;
    } else {
        let all = gone(repo, mirror, &mut |_| true)?;
        match delete_gone(mirror, &all) {
            Ok(n) => report.deleted += n,
            // Create-only storage (spec §17): the mirror keeps what the primary dropped,
            // which a later sync or maintenance with delete rights removes.
            Err(e) if crate::repo::backend::is_refused(&e) => {
                crate::repo::cleanup::left_for_maintenance(
                    mirror,
                    "the deletions sync carries over",
                    0,
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

/// Stops the sync when a pack or index file was not copied because it reads damaged
/// here and the mirror holds no copy of it: the index files and snapshots still to be
/// copied may refer to it, and would leave the mirror naming data it lacks. (A mirror
/// holding some copy already is no worse off; other kinds have no dependents to stop.)
fn refuse_dangling(
    kind: FileKind,
    damaged: &[String],
    have: &HashMap<Id, u64>,
    mirror: &Backend,
) -> Result<()> {
    if !matches!(kind, FileKind::Data | FileKind::Index) {
        return Ok(());
    }
    let lacking = damaged
        .iter()
        .find(|path| FileKind::of_path(path).is_none_or(|(_, id)| !have.contains_key(&id)));
    match lacking {
        None => Ok(()),
        Some(path) => bail!(
            "{path} reads damaged here and {} has no copy of it, so nothing that refers to it was copied; `vault check --read-data` tells whether the damage is real",
            mirror.location()
        ),
    }
}

/// One object the primary removed on purpose that a mirror still holds, and the
/// records that say it is gone: forget records for a snapshot, the index files that
/// superseded an index file, deletion records for a pack, a mark or revival record
/// itself, the key files of the new key for what a key rotation retired (none for
/// manifests, which follow their index files).
pub struct Gone {
    pub kind: FileKind,
    pub id: Id,
    pub evidence: Vec<(FileKind, Id)>,
}

/// Decides, per object, whether it is deleted now; one kept back keeps whatever it
/// needs (the packs a kept index file lists, its manifest).
pub type Decide<'a> = dyn FnMut(&Gone) -> bool + 'a;

/// What the primary removed on purpose that `mirror` still holds, in the order it may
/// be deleted (snapshots, index files, packs, marks and revivals, manifests), as far as
/// `decide` lets it go: what it keeps back is left out, and so is what depends on it.
pub fn gone(repo: &Repository, mirror: &Backend, decide: &mut Decide) -> Result<Vec<Gone>> {
    let primary = repo.backend.alone();
    let on_primary =
        |kind| -> Result<HashSet<Id>> { Ok(primary.list(kind)?.into_iter().collect()) };
    let mut out = Vec::new();
    let mut forgotten: HashMap<Id, Vec<(FileKind, Id)>> = HashMap::new();
    for (record, r) in repo.forget_records()? {
        for id in r.snapshots {
            forgotten
                .entry(id)
                .or_default()
                .push((FileKind::Forget, record));
        }
    }
    let snaps = on_primary(FileKind::Snapshot)?;
    for id in mirror.list(FileKind::Snapshot)? {
        if let (false, Some(records)) = (snaps.contains(&id), forgotten.remove(&id)) {
            keep_or_delete(
                Gone {
                    kind: FileKind::Snapshot,
                    id,
                    evidence: records,
                },
                decide,
                &mut out,
            );
        }
    }
    let index = on_primary(FileKind::Index)?;
    let mut kept_index = Vec::new();
    for id in mirror.list(FileKind::Index)? {
        let by = repo.superseders.get(&id);
        let gone = match by {
            Some(by) if !index.contains(&id) => keep_or_delete(
                Gone {
                    kind: FileKind::Index,
                    id,
                    evidence: by.iter().map(|b| (FileKind::Index, *b)).collect(),
                },
                decide,
                &mut out,
            ),
            _ => false,
        };
        if !gone {
            kept_index.push(id);
        }
    }
    if let Some(listed) = listed_anywhere(repo, mirror, &kept_index)? {
        gone_packs(repo, mirror, &listed, decide, &mut out)?;
    }
    // Marks the primary dropped (their packs gone or revived), then the revivals.
    for kind in [FileKind::Mark, FileKind::Revival] {
        let here = on_primary(kind)?;
        for id in mirror.list(kind)? {
            if !here.contains(&id) {
                // Prune's bookkeeping, dated by its own arrival on the mirror.
                let evidence = vec![(kind, id)];
                keep_or_delete(Gone { kind, id, evidence }, decide, &mut out);
            }
        }
    }
    if repo.format >= ROTATED_VERSION {
        retired(repo, mirror, decide, &mut out)?;
    }
    let index_left: HashSet<Id> = kept_index.into_iter().collect();
    for id in mirror.list(FileKind::Manifest)? {
        if !index_left.contains(&id) {
            keep_or_delete(
                Gone {
                    kind: FileKind::Manifest,
                    id,
                    evidence: Vec::new(),
                },
                decide,
                &mut out,
            );
        }
    }
    Ok(out)
}

/// What a key rotation retired (format 5): key files, records and locks the primary no
/// longer holds and its key does not open, read whole and intact from the mirror. Anything
/// that opens under the current key, or could not be read, stays.
fn retired(
    repo: &Repository,
    mirror: &Backend,
    decide: &mut Decide,
    out: &mut Vec<Gone>,
) -> Result<()> {
    let primary = repo.backend.alone();
    // Dated by the arrival of the key files that replaced them: on a protected mirror
    // the period runs from when the rotation reached it, not from their own writing.
    let rotation: Vec<(FileKind, Id)> = primary
        .list(FileKind::Key)?
        .into_iter()
        .map(|id| (FileKind::Key, id))
        .collect();
    for (kind, object) in [
        (FileKind::Key, None),
        (FileKind::Forget, Some(object::Kind::Forget)),
        (FileKind::Export, Some(object::Kind::Export)),
        (FileKind::Mirror, Some(object::Kind::Mirror)),
        (FileKind::Deletion, Some(object::Kind::Deletion)),
        (FileKind::Format, Some(object::Kind::Format)),
        // Left by whoever used the copy with the old key where the storage refused
        // their delete: unreadable now, they would hold off every later command there.
        (FileKind::Lock, Some(object::Kind::Lock)),
    ] {
        let here: HashSet<Id> = primary.list(kind)?.into_iter().collect();
        for id in mirror.list(kind)? {
            if here.contains(&id) {
                continue;
            }
            let Ok(bytes) = mirror.read(&kind.path(&id)) else {
                continue;
            };
            if !intact(kind, &id, &bytes) {
                continue;
            }
            let opens = match object {
                None => crate::format::keyfile::KeyFile::parse(&bytes)
                    .is_ok_and(|k| k.meta(&repo.keys).is_ok()),
                Some(object::Kind::Lock) => {
                    crate::format::lock::Lock::open(&repo.keys, &bytes).is_ok()
                }
                Some(o) => object::open_authenticated(&repo.keys, o, &bytes).is_ok(),
            };
            if !opens {
                let evidence = rotation.clone();
                keep_or_delete(Gone { kind, id, evidence }, decide, out);
            }
        }
    }
    Ok(())
}

/// Adds `g` to `out` if `decide` lets it go; whether it did.
fn keep_or_delete(g: Gone, decide: &mut Decide, out: &mut Vec<Gone>) -> bool {
    let now = decide(&g);
    if now {
        out.push(g);
    }
    now
}

/// Every pack an index file lists, on the primary or among the mirror's `kept` ones
/// (the primary's copy of one may be the damaged one); None when that is unsure (an
/// index file that does not read, or a primary whose index is incomplete), and so no
/// pack may go.
fn listed_anywhere(
    repo: &Repository,
    mirror: &Backend,
    kept: &[Id],
) -> Result<Option<HashSet<Id>>> {
    let mut listed: HashSet<Id> = repo.index().pack_ids();
    for id in kept {
        let f = mirror
            .read(&FileKind::Index.path(id))
            .and_then(|b| Ok(IndexFile::open(&repo.keys, &b)?));
        match f {
            Ok(f) => listed.extend(f.packs.iter().map(|p| p.pack)),
            Err(_) => return Ok(None),
        }
    }
    Ok(repo.damaged_index.is_empty().then_some(listed))
}

/// Packs on the mirror that no index file lists and the primary lacks; in format 3 only
/// those a deletion record names too.
fn gone_packs(
    repo: &Repository,
    mirror: &Backend,
    listed: &HashSet<Id>,
    decide: &mut Decide,
    out: &mut Vec<Gone>,
) -> Result<()> {
    let packs: HashSet<Id> = repo
        .backend
        .alone()
        .list(FileKind::Data)?
        .into_iter()
        .collect();
    let mut named: HashMap<Id, Vec<(FileKind, Id)>> = HashMap::new();
    for (record, d) in &repo.marks.deletions {
        for p in &d.packs {
            named
                .entry(*p)
                .or_default()
                .push((FileKind::Deletion, *record));
        }
    }
    for id in mirror.list(FileKind::Data)? {
        if packs.contains(&id) || listed.contains(&id) {
            continue;
        }
        let evidence = named.get(&id).cloned();
        if repo.two_phase() && evidence.is_none() {
            continue;
        }
        let evidence = evidence.unwrap_or_default();
        keep_or_delete(
            Gone {
                kind: FileKind::Data,
                id,
                evidence,
            },
            decide,
            out,
        );
    }
    Ok(())
}

/// Deletes `gone` from `mirror`, in order; how many.
pub fn delete_gone(mirror: &Backend, gone: &[Gone]) -> Result<u64> {
    for g in gone {
        match g.kind {
            FileKind::Index => delete_index_file(mirror, &g.id)?,
            kind => mirror.delete(&kind.path(&g.id))?,
        }
    }
    Ok(gone.len() as u64)
}

/// How far `mirror` is behind `primary`: objects and bytes it lacks.
#[derive(Debug, Default, Serialize)]
pub struct Behind {
    pub objects: u64,
    pub bytes: u64,
}

pub fn behind(primary: &Backend, mirror: &Backend) -> Result<Behind> {
    let mut b = Behind::default();
    for kind in ORDER {
        let have = mirror.list_sized(kind)?.into_iter().collect();
        for (_, size) in missing(primary, &have, kind)? {
            b.objects += 1;
            b.bytes += size;
        }
    }
    if !mirror.exists(CONFIG_PATH)? {
        b.objects += 1;
    }
    Ok(b)
}

/// What `repair --from` must not bring back: objects removed on purpose (forgotten
/// snapshots, superseded index files and their manifests, packs no index file of the
/// source lists), as the authentic objects of the source and of the target tell.
pub fn removed_on_purpose(
    source: &Repository,
    target: Option<&Repository>,
) -> Result<HashSet<(FileKind, Id)>> {
    let mut skip: HashSet<(FileKind, Id)> = HashSet::new();
    // Either side may know of a forget or prune the other has not seen yet.
    for repo in std::iter::once(source).chain(target) {
        for id in repo.forgotten()? {
            skip.insert((FileKind::Snapshot, id));
        }
        for id in &repo.superseded {
            skip.insert((FileKind::Index, *id));
            skip.insert((FileKind::Manifest, *id));
        }
    }
    if source.damaged_index.is_empty() {
        // Packs only their own header describes are leftovers (pruned, or an interrupted
        // backup's), not data any index file needs.
        let index = source.index();
        let from_headers: HashSet<Id> = index.unindexed.iter().map(|p| p.pack).collect();
        let listed = index.pack_ids();
        for id in source.backend.alone().list(FileKind::Data)? {
            if !listed.contains(&id) || from_headers.contains(&id) {
                skip.insert((FileKind::Data, id));
            }
        }
    }
    Ok(skip)
}

/// Copies back to `target` every object it lacks or holds damaged, from `source`, except
/// those in `skip`. Reads every object on `target` to judge it (without the key).
pub fn heal(
    target: &Backend,
    source: &Backend,
    skip: &HashSet<(FileKind, Id)>,
    counters: &Counters,
) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    target.create_layout()?;
    for kind in ORDER {
        let have: HashMap<Id, u64> = target.list_sized(kind)?.into_iter().collect();
        let mut todo = Vec::new();
        for (id, size) in source.list_sized(kind)? {
            if skip.contains(&(kind, id)) {
                continue;
            }
            let needs = match have.get(&id) {
                None => true,
                Some(_) => target
                    .read(&kind.path(&id))
                    .map(|b| !intact(kind, &id, &b))
                    .unwrap_or(true),
            };
            if needs {
                todo.push((id, size));
            }
        }
        copy_objects(source, target, kind, &todo, &mut report, counters)?;
    }
    copy_config(source, target, None, &mut report)?;
    Ok(report)
}
