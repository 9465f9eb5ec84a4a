//! `vault key rotate` (format 5, `repo-format/proposals/key-rotation.md`): a new master
//! key, and everything the repository holds sealed again under it, so that the old key,
//! and every key file, raw key or paper key holding it, opens nothing here afterwards.
//!
//! Blob ids and chunk boundaries stay: they derive from the content key, which the new
//! key file carries, so no file is read again and trees do not change. Every step can
//! be repeated: a rerun with the rotating password (its key file holds the previous
//! master key until the end) continues where a kill left off.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use crate::error::VaultError;
use crate::format::Id;
use crate::format::config::ROTATED_VERSION;
use crate::format::crypto::{Keys, MasterKey};
use crate::format::index::{IndexFile, PackBlobs};
use crate::format::keyfile::KdfCost;
use crate::format::object::{self, Kind};
use crate::format::pack::{self, BlobEntry, SealedBlob, SealedBundle};
use crate::format::prune::FormatRecord;
use crate::format::snapshot::Snapshot;
use crate::repo::Repository;
use crate::repo::backend::{CONFIG_PATH, FileKind, is_not_found};
use crate::repo::index::replace_index;
use crate::repo::marks::TWO_PHASE_VERSION;
use crate::repo::packer::Packer;
use crate::repo::repository::now_rfc3339;

/// The feature a rotation's gate record names (§12a format records).
const GATE_FEATURE: &str = "key-rotation";

/// How far the rotation is: bytes of packs to seal again, and done (for a progress
/// line with a percentage and time left).
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_total: std::sync::atomic::AtomicU64,
    pub bytes_done: std::sync::atomic::AtomicU64,
}

/// What a rotation did.
#[derive(Debug, Default, Serialize)]
pub struct Rotated {
    /// The key file that opens the repository now.
    pub key: String,
    /// Key files removed: every other one.
    pub removed_keys: Vec<String>,
    /// Whether this run finished a rotation a kill had interrupted.
    pub resumed: bool,
    pub packs_resealed: u64,
    pub packs_written: u64,
    pub bytes_written: u64,
    /// Each snapshot's id before and after (a snapshot is named by its stored bytes).
    pub snapshots: Vec<(String, String)>,
    /// Records (forget, export, mirror, deletion, format) sealed again.
    pub records_resealed: u64,
    /// Objects left as they were because they open under neither key (damaged).
    pub damaged: Vec<String>,
    /// Copies the repository knows of that keep what they held before, readable with
    /// the old key, after the mirrors are synced.
    pub kept: Vec<Kept>,
}

/// A copy that the rotation cannot reach into: a protected mirror keeps the objects
/// sync replaces for its period, and an export is an image of its own.
#[derive(Debug, Serialize)]
pub struct Kept {
    /// `mirror` or `export`.
    pub kind: &'static str,
    /// The mirror's name, or the export's label.
    pub name: String,
    /// The mirror's location, or the export's destination.
    pub location: String,
    /// A protected mirror's period, seconds: how long after the sync that replaces an
    /// object `vault maintain` may delete its old one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
}

/// What still opens with the old key once every mirror is synced: the protected
/// mirrors (until `vault maintain` after their period) and every export made before.
pub fn kept_by_old_key(repo: &Repository) -> Result<Vec<Kept>> {
    let mirrors = repo.mirror_defs()?.into_iter().filter(|d| d.protect > 0);
    let mut kept: Vec<Kept> = mirrors
        .map(|d| Kept {
            kind: "mirror",
            name: d.name,
            location: d.url,
            period: Some(d.protect),
        })
        .collect();
    kept.extend(repo.export_records()?.into_iter().map(|r| Kept {
        kind: "export",
        name: r.label,
        location: r.destination,
        period: None,
    }));
    Ok(kept)
}

/// The key files a rotation started now removes: every one there is (the new key
/// file replaces the one in use).
pub fn keys_to_remove(repo: &Repository) -> Result<Vec<Id>> {
    repo.backend.list(FileKind::Key)
}

/// How a rotation keeps its exclusive lock: `rekey` seals it under the new key once
/// that exists (so that what a kill leaves opens with the key that remains), `held`
/// fails once the lock may have lapsed, before each step that deletes.
pub struct LockHooks<'a> {
    pub rekey: &'a dyn Fn(&Keys) -> Result<()>,
    pub held: &'a dyn Fn() -> Result<()>,
    pub progress: &'a Counters,
}

/// Rotates the master key of `repo`, opened under the exclusive lock, or finishes the
/// rotation its key started. The new key file is sealed under `password`.
pub fn rotate(
    repo: &mut Repository,
    password: &[u8],
    label: &str,
    cost: KdfCost,
    lock: &LockHooks,
) -> Result<Rotated> {
    repo.require_full("key rotate")?;
    if repo.format < TWO_PHASE_VERSION {
        return Err(VaultError::Usage(format!(
            "key rotate needs a repository of format {TWO_PHASE_VERSION} or later (this one is {}): run `vault upgrade` first",
            repo.format
        ))
        .into());
    }
    let mut done = Rotated {
        resumed: repo.master_key()?.previous().is_some(),
        ..Rotated::default()
    };
    if !done.resumed {
        start(repo, password, label, cost)?;
    }
    gate(repo)?;
    // Only now: before the gate, holders of the old key alone still read everything,
    // this lock included.
    (lock.rekey)(&repo.keys)?;
    (lock.held)()?;
    done.removed_keys = remove_other_keys(repo)?;
    reseal_packs(repo, &mut done, lock)?;
    (lock.held)()?;
    reseal_snapshots(repo, &mut done)?;
    (lock.held)()?;
    reseal_records(repo, &mut done)?;
    drop_prune_state(repo)?;
    rewrite_config(repo)?;
    (lock.held)()?;
    let key = finish(repo, password, label, cost)?;
    (lock.rekey)(&repo.keys)?;
    drop_stale_locks(repo)?;
    done.key = key.to_hex();
    done.kept = kept_by_old_key(repo)?;
    done.removed_keys.sort();
    done.removed_keys.dedup();
    Ok(done)
}

/// Draws the new master key and writes the key file that holds it (with the content
/// key, and the previous master key until the rotation ends).
fn start(repo: &mut Repository, password: &[u8], label: &str, cost: KdfCost) -> Result<()> {
    let old = repo.master_key()?.clone();
    let content = *old.content_bytes().unwrap_or(old.as_bytes());
    let new = MasterKey::generate()
        .with_content(content)
        .with_previous(*old.as_bytes());
    let id = repo.add_key_of(&new, password, label, cost)?;
    log::info!("key rotate: new key {} written", id.short());
    repo.become_key(new, id);
    Ok(())
}

/// The previous keys: what opens what is not resealed yet.
fn previous(repo: &Repository) -> Result<Keys> {
    repo.keys
        .previous()
        .cloned()
        .ok_or_else(|| anyhow!("key rotate: the key in use holds no previous key"))
}

/// Writes, under the previous key, the format record that makes older vaults and the
/// holders of the previous key alone refuse the repository from now on.
fn gate(repo: &mut Repository) -> Result<()> {
    if repo.format >= ROTATED_VERSION {
        return Ok(());
    }
    let r = FormatRecord {
        version: ROTATED_VERSION,
        time: now_rfc3339(),
        features: vec![GATE_FEATURE.into()],
    };
    let bytes = r.seal(&previous(repo)?);
    repo.backend
        .write(&FileKind::Format.path(&Id::of_stored(&bytes)), bytes)?;
    repo.format = ROTATED_VERSION;
    Ok(())
}

/// Deletes every key file but the one in use.
fn remove_other_keys(repo: &Repository) -> Result<Vec<String>> {
    let own = repo.key_id;
    let mut removed = Vec::new();
    for id in repo.backend.list(FileKind::Key)? {
        if Some(id) != own {
            delete(repo, &FileKind::Key.path(&id))?;
            removed.push(id.to_hex());
        }
    }
    Ok(removed)
}

/// Deletes `path`; one already gone is what a kill after its deletion left.
fn delete(repo: &Repository, path: &str) -> Result<()> {
    match repo.backend.delete(path) {
        Err(e) if !is_not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Seals every pack's units again under the new key into new packs, replaces the index
/// with one listing those only, records the old packs' deletion and deletes them.
fn reseal_packs(repo: &mut Repository, done: &mut Rotated, lock: &LockHooks) -> Result<()> {
    use std::sync::atomic::Ordering;
    repo.load_index()?;
    let new_only = repo.keys.without_previous();
    let (mut fresh, old) = packs_by_key(repo, &new_only)?;
    let sizes: HashMap<Id, u64> = repo
        .backend
        .list_sized(FileKind::Data)?
        .into_iter()
        .collect();
    let total = old.iter().filter_map(|p| sizes.get(p)).sum();
    lock.progress.bytes_total.store(total, Ordering::Relaxed);
    let mut have: HashSet<Id> = fresh
        .iter()
        .flat_map(|p| p.blobs.iter().map(|b| b.id))
        .collect();
    let packer = Packer::new(&repo.backend, &repo.keys, repo.config.pack_size, false)
        .caching_trees(repo.cache.clone());
    for pack_id in &old {
        let bytes = match repo.backend.read(&FileKind::Data.path(pack_id)) {
            Ok(b) => b,
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e),
        };
        lock.progress
            .bytes_done
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        match reseal_pack(repo, &packer, &bytes, &mut have) {
            Ok(()) => done.packs_resealed += 1,
            Err(e) => {
                log::warn!("key rotate: pack {}: {e:#}", pack_id.short());
                done.damaged.push(format!("pack {}", pack_id.to_hex()));
            }
        }
    }
    let written = packer.finish()?;
    done.packs_written = written.packs;
    done.bytes_written = written.bytes;
    if !done.damaged.is_empty() {
        // A unit no key opens would be lost with its pack: stop before anything goes.
        return Err(anyhow!(
            "key rotate: {} could not be read; nothing was deleted. Run `vault check --read-data` and `vault repair`, then run key rotate again",
            done.damaged.join(", ")
        ));
    }
    for id in &written.index_files {
        let f = read_index(repo, id, &new_only)?;
        fresh.extend(f.packs);
    }
    fresh.sort_by_key(|p| p.pack);
    fresh.dedup_by_key(|p| p.pack);
    let keep: HashSet<Id> = fresh.iter().map(|p| p.pack).collect();
    let old_files = repo.backend.list(FileKind::Index)?;
    (lock.held)()?;
    replace_index(&repo.backend, &repo.keys, fresh, &old_files)?;
    let gone: Vec<Id> = repo
        .backend
        .list(FileKind::Data)?
        .into_iter()
        .filter(|p| !keep.contains(p))
        .collect();
    if !gone.is_empty() {
        repo.save_deletion(gone.clone())?;
    }
    for id in &gone {
        delete(repo, &FileKind::Data.path(id))?;
        if let Some(c) = &repo.cache {
            c.remove("packs", id);
        }
    }
    repo.load_index()
}

/// The packs already sealed under the new key (with their blobs), and the others.
fn packs_by_key(repo: &Repository, new_only: &Keys) -> Result<(Vec<PackBlobs>, Vec<Id>)> {
    let mut fresh = Vec::new();
    let mut fresh_ids = HashSet::new();
    for id in repo.backend.list(FileKind::Index)? {
        if let Ok(f) = read_index(repo, &id, new_only) {
            fresh_ids.extend(f.packs.iter().map(|p| p.pack));
            fresh.extend(f.packs);
        }
    }
    for p in &repo.index().unindexed {
        if !fresh_ids.contains(&p.pack) && header_opens(repo, &p.pack, new_only) {
            fresh_ids.insert(p.pack);
            fresh.push(p.clone());
        }
    }
    let old = repo
        .backend
        .list(FileKind::Data)?
        .into_iter()
        .filter(|p| !fresh_ids.contains(p))
        .collect();
    Ok((fresh, old))
}

fn read_index(repo: &Repository, id: &Id, keys: &Keys) -> Result<IndexFile> {
    let bytes = repo.backend.read(&FileKind::Index.path(id))?;
    IndexFile::open(keys, &bytes).map_err(|e| anyhow!(e).context(format!("index {}", id.short())))
}

/// Whether a pack's header opens under `keys` alone.
fn header_opens(repo: &Repository, id: &Id, keys: &Keys) -> bool {
    repo.backend
        .read(&FileKind::Data.path(id))
        .ok()
        .and_then(|b| header(&b, keys).ok())
        .is_some()
}

/// The entries of a whole pack's own header.
fn header(bytes: &[u8], keys: &Keys) -> Result<Vec<BlobEntry>> {
    let n = bytes.len();
    if n < pack::TRAILER_LEN {
        return Err(anyhow!("truncated ({n} bytes)"));
    }
    let hlen = pack::parse_trailer(&bytes[n - pack::TRAILER_LEN..])? as usize;
    let start = (n - pack::TRAILER_LEN)
        .checked_sub(hlen)
        .ok_or_else(|| anyhow!("header length {hlen} exceeds the pack"))?;
    Ok(pack::open_header(
        keys,
        &bytes[start..n - pack::TRAILER_LEN],
        start as u64,
    )?)
}

/// Seals the units of one pack again, but those whose blobs a new pack already holds.
fn reseal_pack(
    repo: &Repository,
    packer: &Packer,
    bytes: &[u8],
    have: &mut HashSet<Id>,
) -> Result<()> {
    let entries = header(bytes, &repo.keys).context("header")?;
    let mut units: Vec<Vec<BlobEntry>> = Vec::new();
    for e in entries {
        match units.last_mut() {
            Some(u) if e.bundled() && (u[0].offset, u[0].length) == (e.offset, e.length) => {
                u.push(e)
            }
            _ => units.push(vec![e]),
        }
    }
    for mut members in units {
        if members.iter().all(|m| have.contains(&m.id)) {
            continue;
        }
        let e = members[0];
        let stored = bytes
            .get(e.offset as usize..e.offset as usize + e.length as usize)
            .ok_or_else(|| anyhow!("shorter than its header says"))?;
        let (flags, sealed) = pack::reseal_unit(&repo.keys, &e, stored)
            .with_context(|| format!("{} blob {}", e.blob_type.name(), e.id.short()))?;
        have.extend(members.iter().map(|m| m.id));
        if e.bundled() {
            members.sort_by_key(|m| m.inner);
            packer.add_bundle(SealedBundle {
                blob_type: e.blob_type,
                flags,
                members: members.iter().map(|m| (m.id, m.raw_len)).collect(),
                bytes: sealed,
            })?;
        } else {
            packer.add(SealedBlob {
                blob_type: e.blob_type,
                flags,
                id: e.id,
                raw_len: e.raw_len,
                bytes: sealed,
            })?;
        }
    }
    Ok(())
}

/// Writes every snapshot again under the new key, `original` naming the one it
/// replaces, as `vault tag` does; then forgets the old ones.
fn reseal_snapshots(repo: &mut Repository, done: &mut Rotated) -> Result<()> {
    let new_only = repo.keys.without_previous();
    let all = repo.all_snapshots()?;
    let readable: Vec<(&Id, &Snapshot)> = all
        .iter()
        .filter_map(|(id, s)| s.as_ref().ok().map(|s| (id, s)))
        .collect();
    let hidden = crate::format::snapshot::superseded(readable.iter().copied());
    let mut resealed: HashMap<Id, Id> = HashMap::new();
    for (id, s) in &readable {
        if opens_alone(repo, FileKind::Snapshot, id, &new_only, Kind::Snapshot)
            && let Some(o) = s.original
        {
            resealed.insert(o, **id);
        }
    }
    let mut forget = Vec::new();
    for (id, s) in &readable {
        if opens_alone(repo, FileKind::Snapshot, id, &new_only, Kind::Snapshot) {
            continue;
        }
        forget.push(**id);
        if hidden.contains_key(*id) {
            continue; // an interrupted `vault tag` already replaced it
        }
        let new = match resealed.get(*id) {
            Some(n) => *n,
            None => {
                let mut copy = (*s).clone();
                copy.original = Some(**id);
                repo.write_as(&s.host)?;
                repo.save_snapshot(&copy)?
            }
        };
        done.snapshots.push((id.to_hex(), new.to_hex()));
    }
    repo.write_as(&crate::repo::repository::hostname())?;
    for (id, s) in &all {
        if let Err(e) = s {
            log::warn!("key rotate: snapshot {} left as it is: {e:#}", id.short());
            done.damaged.push(format!("snapshot {}", id.to_hex()));
        }
    }
    if !forget.is_empty() {
        repo.save_forget_record(&forget)?;
        for id in &forget {
            delete(repo, &FileKind::Snapshot.path(id))?;
        }
    }
    Ok(())
}

/// Whether the stored object `id` of `kind` opens under `keys` alone.
fn opens_alone(repo: &Repository, file: FileKind, id: &Id, keys: &Keys, kind: Kind) -> bool {
    repo.backend
        .read(&file.path(id))
        .is_ok_and(|b| object::open_authenticated(keys, kind, &b).is_ok())
}

/// Seals forget, export, mirror, deletion and format records again, byte for byte the
/// same bodies, and deletes the old ones; the gate record stays until the end.
fn reseal_records(repo: &Repository, done: &mut Rotated) -> Result<()> {
    let new_only = repo.keys.without_previous();
    for (file, kind) in [
        (FileKind::Forget, Kind::Forget),
        (FileKind::Export, Kind::Export),
        (FileKind::Mirror, Kind::Mirror),
        (FileKind::Deletion, Kind::Deletion),
        (FileKind::Format, Kind::Format),
    ] {
        for id in repo.backend.list(file)? {
            let Ok(bytes) = repo.backend.read(&file.path(&id)) else {
                continue;
            };
            if object::open_authenticated(&new_only, kind, &bytes).is_ok() {
                continue;
            }
            if kind == Kind::Format && is_own_gate(repo, &bytes) {
                continue;
            }
            let body = match object::open(&repo.keys, kind, &bytes) {
                Ok(b) => b,
                // Damaged, or not vouched for by a full key (a backup-role key's
                // forgery): no reader believes it, and left in place the old key might
                // still open it.
                Err(e) => {
                    log::warn!(
                        "key rotate: {} {} deleted: {e}",
                        kind_name(file),
                        id.short()
                    );
                    done.damaged
                        .push(format!("{} {}", kind_name(file), id.to_hex()));
                    delete(repo, &file.path(&id))?;
                    continue;
                }
            };
            repo.save_sealed(file, object::seal(&repo.keys, kind, &body))?;
            delete(repo, &file.path(&id))?;
            done.records_resealed += 1;
        }
    }
    Ok(())
}

fn kind_name(file: FileKind) -> &'static str {
    file.dir().trim_end_matches('/')
}

/// Whether `bytes` are this rotation's gate record: sealed under the previous key as
/// the repository's config version sealed before the rotation, which a rerun after the
/// config became version 5 no longer knows (so format 3's way is tried too).
fn is_own_gate(repo: &Repository, bytes: &[u8]) -> bool {
    let Some(prev) = repo.keys.previous() else {
        return false;
    };
    [prev.clone(), prev.without_roles()]
        .iter()
        .any(|k| object::open(k, Kind::Format, bytes).is_ok_and(|b| is_gate(&b)))
}

fn is_gate(body: &[u8]) -> bool {
    serde_json::from_slice::<FormatRecord>(body)
        .is_ok_and(|r| r.version == ROTATED_VERSION && r.features.iter().any(|f| f == GATE_FEATURE))
}

/// Deletes every mark and revival: under the exclusive lock the rotation needs no
/// memory of an earlier prune, and a revival names its mark by the id resealing would
/// change. Marks go first, so that no mark is ever left without its revivals.
fn drop_prune_state(repo: &Repository) -> Result<()> {
    for file in [FileKind::Mark, FileKind::Revival] {
        for id in repo.backend.list(file)? {
            delete(repo, &file.path(&id))?;
        }
    }
    Ok(())
}

/// Replaces the config by one of version 5 sealed under the new key (an atomic write).
fn rewrite_config(repo: &mut Repository) -> Result<()> {
    if repo.config.version >= ROTATED_VERSION
        && object::open_checksummed(
            &repo.keys.without_previous(),
            Kind::Config,
            &repo.backend.read(CONFIG_PATH)?,
        )
        .is_ok()
    {
        return Ok(());
    }
    let mut config = repo.config.clone();
    config.version = ROTATED_VERSION;
    repo.backend.write(CONFIG_PATH, config.seal(&repo.keys))?;
    repo.config = config;
    Ok(())
}

/// Deletes the gate record, writes the final key file (without the previous key) and
/// deletes the rotation's.
fn finish(repo: &mut Repository, password: &[u8], label: &str, cost: KdfCost) -> Result<Id> {
    for id in repo.backend.list(FileKind::Format)? {
        let Ok(bytes) = repo.backend.read(&FileKind::Format.path(&id)) else {
            continue;
        };
        if is_own_gate(repo, &bytes) {
            delete(repo, &FileKind::Format.path(&id))?;
        }
    }
    let rotating = repo.key_id;
    let master = repo.master_key()?.without_previous();
    let id = repo.add_key_of(&master, password, label, cost)?;
    repo.become_key(master, id);
    if let Some(old) = rotating {
        delete(repo, &FileKind::Key.path(&old))?;
    }
    Ok(id)
}

/// Deletes the locks the new key does not open: left by killed runs of this rotation
/// (or older processes), which no live process holds while this one holds the
/// exclusive lock, and which would otherwise block every later command as unreadable.
fn drop_stale_locks(repo: &Repository) -> Result<()> {
    for id in repo.backend.list(FileKind::Lock)? {
        let path = FileKind::Lock.path(&id);
        let Ok(bytes) = repo.backend.read(&path) else {
            continue;
        };
        if crate::format::lock::Lock::open(&repo.keys, &bytes).is_err() {
            delete(repo, &path)?;
        }
    }
    Ok(())
}
