//! Restore: plan every file from the trees, then read each needed pack once (several at a
//! time) and write each blob to every place that needs it; metadata last, directories
//! deepest first so their times survive the writes below them.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::bounded;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::walk;
use crate::format::Id;
use crate::format::pack::{self, BlobEntry, BlobType};
use crate::format::tree::{Node, NodeType};
use crate::fsmeta;
use crate::repo::{FileKind, Repository};

pub struct RestoreOptions {
    pub target: PathBuf,
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    pub overwrite: bool,
    pub verify: bool,
    /// Restore exactly these snapshot paths (and the directories above them) instead of
    /// matching patterns; for sampling, where names may hold glob characters.
    pub only: Option<HashSet<PathBuf>>,
}

#[derive(Default)]
pub struct Counters {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
}

#[derive(Default, Debug, serde::Serialize)]
pub struct RestoreResult {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// One line per file or directory that could not be restored (or verified).
    pub errors: Vec<String>,
}

struct Item {
    path: PathBuf,
    node: Node,
}

/// One file's data stream: blobs laid out over its data extents.
struct FilePlan {
    item: usize,
    extents: Vec<[u64; 2]>,
    /// Blob placements not yet written; a file is complete at zero.
    pending: AtomicUsize,
}

/// A full disk (or quota) ends the whole restore: every later write would fail the same
/// way, and a thousand "not restored" lines would hide the one thing to do.
fn no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

fn no_space_error(path: &Path, target: &Path, e: &std::io::Error) -> anyhow::Error {
    anyhow!(
        "restore stopped: writing {}: {e}; files not completely written were removed: free space on the file system of {} or restore elsewhere, then run the restore again",
        path.display(),
        target.display()
    )
}

struct Target {
    file: usize,
    stream_offset: u64,
}

struct Matcher {
    only: Option<(HashSet<PathBuf>, HashSet<PathBuf>)>,
    includes: Option<Gitignore>,
    literal_includes: Vec<PathBuf>,
    excludes: Gitignore,
}

fn build(patterns: &[String]) -> Result<Gitignore> {
    let mut b = GitignoreBuilder::new("/");
    for p in patterns {
        b.add_line(None, p)
            .with_context(|| format!("pattern {p:?} is not a valid glob"))?;
    }
    Ok(b.build()?)
}

impl Matcher {
    fn new(opts: &RestoreOptions) -> Result<Matcher> {
        let literal = opts
            .includes
            .iter()
            .all(|p| !p.contains(['*', '?', '[', '!']));
        let only = opts.only.as_ref().map(|paths| {
            let dirs = paths
                .iter()
                .flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf))
                .collect();
            (paths.clone(), dirs)
        });
        Ok(Matcher {
            only,
            includes: if opts.includes.is_empty() {
                None
            } else {
                Some(build(&opts.includes)?)
            },
            literal_includes: if literal {
                opts.includes.iter().map(PathBuf::from).collect()
            } else {
                Vec::new()
            },
            excludes: build(&opts.excludes)?,
        })
    }

    fn excluded(&self, p: &Path, dir: bool) -> bool {
        self.excludes
            .matched_path_or_any_parents(p, dir)
            .is_ignore()
    }

    fn included(&self, p: &Path, dir: bool) -> bool {
        if let Some((paths, _)) = &self.only {
            return paths.contains(p);
        }
        self.includes
            .as_ref()
            .is_none_or(|g| g.matched_path_or_any_parents(p, dir).is_ignore())
    }

    /// Whether a directory that is not itself included may hold included paths.
    fn may_contain(&self, dir: &Path) -> bool {
        if let Some((_, dirs)) = &self.only {
            return dirs.contains(dir);
        }
        self.literal_includes.is_empty() || self.literal_includes.iter().any(|i| i.starts_with(dir))
    }
}

/// Collects the nodes to restore, in pre-order (parents before children). Directories
/// whose tree cannot be read are restored empty and reported in `lost`.
fn plan_items(
    repo: &Repository,
    root: &Id,
    m: &Matcher,
    lost: &mut Vec<String>,
) -> Result<Vec<Item>> {
    let mut items: Vec<Item> = Vec::new();
    // Directories that are not included themselves but may lead to included paths are
    // kept tentatively, and dropped at the end if nothing below them was included.
    let mut keep: Vec<bool> = Vec::new();
    let mut parent: Vec<Option<usize>> = Vec::new();
    let mut dir_index: HashMap<PathBuf, usize> = HashMap::new();
    let mut visit = |path: &Path, node: &Node| {
        let dir = node.kind == NodeType::Dir;
        if m.excluded(path, dir) {
            return Ok(false);
        }
        let inc = m.included(path, dir);
        if inc || (dir && m.may_contain(path)) {
            parent.push(path.parent().and_then(|p| dir_index.get(p).copied()));
            if dir {
                dir_index.insert(path.to_path_buf(), items.len());
            }
            items.push(Item {
                path: path.to_path_buf(),
                node: node.clone(),
            });
            keep.push(inc);
        }
        Ok(dir)
    };
    let mut bad = |path: &Path, e: anyhow::Error| {
        if path == Path::new("/") {
            return Err(e.context("the snapshot's root tree is unreadable"));
        }
        lost.push(format!(
            "{}: not restored: {}",
            path.display(),
            crate::error::one_line(&e)
        ));
        Ok(())
    };
    walk::walk_lenient(repo, root, Path::new("/"), &mut visit, &mut bad)?;
    // Children come after their parents, so one backward pass propagates "needed" upward.
    for i in (0..items.len()).rev() {
        if keep[i]
            && let Some(p) = parent[i]
        {
            keep[p] = true;
        }
    }
    Ok(items
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(i, _)| i)
        .collect())
}

fn local(target: &Path, snap_path: &Path) -> PathBuf {
    target.join(snap_path.strip_prefix("/").unwrap_or(snap_path))
}

pub fn restore(
    repo: &Repository,
    root: &Id,
    opts: &RestoreOptions,
    counters: Arc<Counters>,
) -> Result<RestoreResult> {
    let m = Matcher::new(opts)?;
    let mut lost = Vec::new();
    let items = plan_items(repo, root, &m, &mut lost)?;
    if !opts.overwrite {
        refuse_existing(&items, &opts.target)?;
    }
    fs::create_dir_all(&opts.target)
        .with_context(|| format!("restore target {}", opts.target.display()))?;
    let mut result = RestoreResult::default();
    let errors = Mutex::new(HashMap::<usize, String>::new());
    let full = Mutex::new(None);
    let (files, by_pack) = create_nodes(repo, &items, &opts.target, &errors)?;
    write_packs(
        repo,
        &items,
        &files,
        by_pack,
        &opts.target,
        &errors,
        &counters,
        &full,
    );
    if let Some(e) = full.into_inner().expect("full poisoned") {
        for f in &files {
            if f.pending.load(Ordering::Relaxed) > 0 {
                let _ = fs::remove_file(local(&opts.target, &items[f.item].path));
            }
        }
        return Err(e);
    }
    let mut errors = errors.into_inner().expect("errors poisoned");
    propagate_link_errors(&items, &mut errors);
    #[allow(clippy::map_entry)] // the insert is conditional on verification failing
    for f in &files {
        if errors.contains_key(&f.item) {
            // Never leave a partly written file that looks complete.
            let _ = fs::remove_file(local(&opts.target, &items[f.item].path));
        } else if opts.verify
            && let Err(e) = verify_file(repo, &items[f.item], &f.extents, &opts.target)
        {
            errors.insert(f.item, crate::error::one_line(&e));
        }
    }
    let as_root = nix::unistd::geteuid().is_root();
    for (i, it) in items.iter().enumerate().rev() {
        if errors.contains_key(&i) {
            continue;
        }
        match it.node.kind {
            NodeType::Dir => result.dirs += 1,
            NodeType::File => {
                result.files += 1;
                result.bytes += it.node.size;
            }
            _ => result.files += 1,
        }
        if let Err(e) = fsmeta::apply(&local(&opts.target, &it.path), &it.node, as_root) {
            result.errors.push(format!(
                "{}: metadata: {}",
                it.path.display(),
                crate::error::one_line(&e)
            ));
        }
    }
    if log::log_enabled!(log::Level::Info) {
        for (_, it) in items
            .iter()
            .enumerate()
            .filter(|(i, _)| !errors.contains_key(i))
        {
            log::info!("restored {}", it.path.display());
        }
    }
    let mut errs: Vec<(usize, String)> = errors.into_iter().collect();
    errs.sort();
    result.errors.extend(
        errs.into_iter()
            .map(|(i, e)| format!("{}: not restored: {e}", items[i].path.display())),
    );
    result.errors.extend(lost);
    Ok(result)
}

/// Hard links share their first name's data: when that failed, every link failed.
fn propagate_link_errors(items: &[Item], errors: &mut HashMap<usize, String>) {
    let failed: HashMap<(u64, u64), String> = errors
        .iter()
        .filter(|(i, _)| items[**i].node.links > 1 && items[**i].node.inode != 0)
        .map(|(i, e)| ((items[*i].node.dev, items[*i].node.inode), e.clone()))
        .collect();
    if failed.is_empty() {
        return;
    }
    for (i, it) in items.iter().enumerate() {
        if it.node.kind == NodeType::File
            && it.node.links > 1
            && it.node.inode != 0
            && let Some(e) = failed.get(&(it.node.dev, it.node.inode))
        {
            errors
                .entry(i)
                .or_insert_with(|| format!("hard link to a file that failed: {e}"));
        }
    }
}

fn refuse_existing(items: &[Item], target: &Path) -> Result<()> {
    let existing: Vec<&Item> = items
        .iter()
        .filter(|it| {
            it.node.kind != NodeType::Dir && fs::symlink_metadata(local(target, &it.path)).is_ok()
        })
        .collect();
    if let Some(first) = existing.first() {
        bail!(
            "{} would be overwritten ({} existing file(s) in {}): restore elsewhere or pass --overwrite",
            local(target, &first.path).display(),
            existing.len(),
            target.display()
        );
    }
    Ok(())
}

type PackPlan = HashMap<Id, Vec<(BlobEntry, Vec<Target>)>>;

/// Creates directories, empty files at their final size, links and special files; plans
/// every data blob by pack.
fn create_nodes(
    repo: &Repository,
    items: &[Item],
    target: &Path,
    errors: &Mutex<HashMap<usize, String>>,
) -> Result<(Vec<FilePlan>, PackPlan)> {
    let index = repo.index();
    let mut files = Vec::new();
    let mut by_pack: PackPlan = HashMap::new();
    let mut blob_slot: HashMap<Id, (Id, usize)> = HashMap::new();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let fail = |i: usize, e: String| {
        errors.lock().expect("poisoned").insert(i, e);
    };
    for (i, it) in items.iter().enumerate() {
        let p = local(target, &it.path);
        let n = &it.node;
        let r: Result<()> = (|| {
            match n.kind {
                NodeType::Dir => {
                    fs::create_dir_all(&p)?;
                    return Ok(());
                }
                NodeType::File => {}
                NodeType::Symlink => {
                    let t = n
                        .target
                        .as_ref()
                        .ok_or_else(|| anyhow!("symlink without target"))?;
                    let _ = fs::remove_file(&p);
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&t.0), &p)?;
                    return Ok(());
                }
                NodeType::Fifo => {
                    let _ = fs::remove_file(&p);
                    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
                    return Ok(());
                }
                NodeType::Chardev | NodeType::Blockdev => {
                    let kind = if n.kind == NodeType::Chardev {
                        nix::sys::stat::SFlag::S_IFCHR
                    } else {
                        nix::sys::stat::SFlag::S_IFBLK
                    };
                    let _ = fs::remove_file(&p);
                    nix::sys::stat::mknod(
                        &p,
                        kind,
                        nix::sys::stat::Mode::from_bits_truncate(0o600),
                        n.rdev as _,
                    )?;
                    return Ok(());
                }
                NodeType::Socket => return Ok(()), // a socket has no content; its listener recreates it
            }
            if n.data_extents()
                .iter()
                .any(|&[off, len]| off.checked_add(len).is_none_or(|end| end > n.size))
            {
                bail!("its extents reach past its size (damaged tree)");
            }
            // Hard links are known by (dev, inode); inode 0 means "not recorded".
            if n.links > 1 && n.inode != 0 {
                if let Some(first) = links.get(&(n.dev, n.inode)) {
                    let _ = fs::remove_file(&p);
                    fs::hard_link(first, &p)?;
                    return Ok(());
                }
                links.insert((n.dev, n.inode), p.clone());
            }
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)?;
            f.set_len(n.size)?;
            let file = files.len();
            let mut offset = 0u64;
            let mut placements = 0;
            for id in &n.content {
                let (pack_id, entry) = index
                    .get(id)
                    .ok_or_else(|| anyhow!("data blob {} is missing from the index", id.short()))?;
                let slot = *blob_slot.entry(*id).or_insert_with(|| {
                    let v = by_pack.entry(pack_id).or_default();
                    v.push((entry, Vec::new()));
                    (pack_id, v.len() - 1)
                });
                by_pack.get_mut(&slot.0).expect("pack planned")[slot.1]
                    .1
                    .push(Target {
                        file,
                        stream_offset: offset,
                    });
                offset += u64::from(entry.raw_len);
                placements += 1;
            }
            files.push(FilePlan {
                item: i,
                extents: n.data_extents(),
                pending: AtomicUsize::new(placements),
            });
            Ok(())
        })();
        if let Err(e) = r {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && no_space(io)
            {
                for f in &files {
                    let _ = fs::remove_file(local(target, &items[f.item].path));
                }
                return Err(no_space_error(&p, target, io));
            }
            if n.kind == NodeType::Dir {
                return Err(e.context(format!("creating {}", p.display())));
            }
            fail(i, crate::error::one_line(&e));
        }
    }
    Ok((files, by_pack))
}

/// Writes `data`, which starts at `stream_offset` of a file's data stream, into the file's
/// extents. All-zero data is skipped: the file was created at full size, so its holes stay.
fn write_stream(
    file: &fs::File,
    extents: &[[u64; 2]],
    stream_offset: u64,
    data: &[u8],
) -> std::io::Result<()> {
    if data.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let mut s = 0u64; // stream offset where the current extent starts
    let mut rest = data;
    let mut pos = stream_offset;
    for &[off, len] in extents {
        if rest.is_empty() {
            break;
        }
        if pos < s + len {
            let within = pos - s;
            let n = rest.len().min((len - within) as usize);
            file.write_all_at(&rest[..n], off + within)?;
            rest = &rest[n..];
            pos += n as u64;
        }
        s += len;
    }
    if !rest.is_empty() {
        return Err(std::io::Error::other(
            "blob data runs past the file's extents",
        ));
    }
    Ok(())
}

/// Reads each pack once, in ranges that cover its needed blobs, on several threads.
/// Stops early once `full` holds a disk-full error.
#[allow(clippy::too_many_arguments)]
fn write_packs(
    repo: &Repository,
    items: &[Item],
    files: &[FilePlan],
    by_pack: PackPlan,
    target: &Path,
    errors: &Mutex<HashMap<usize, String>>,
    counters: &Counters,
    full: &Mutex<Option<anyhow::Error>>,
) {
    // A local disk keeps one thread per core busy; a remote backend needs two per core
    // to hide each request's latency. Each thread holds one range and its blobs.
    let per_core = if repo.backend.is_remote() { 2 } else { 1 };
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
        * per_core;
    let (tx, rx) = bounded::<(Id, Vec<(BlobEntry, Vec<Target>)>)>(workers);
    std::thread::scope(|s| {
        for _ in 0..workers {
            let rx = rx.clone();
            s.spawn(move || {
                for (pack_id, mut blobs) in rx {
                    blobs.sort_by_key(|(e, _)| e.offset);
                    for group in coalesce(&blobs) {
                        if full.lock().expect("full poisoned").is_some() {
                            break;
                        }
                        restore_group(
                            repo, items, files, &pack_id, group, target, errors, counters, full,
                        );
                    }
                }
            });
        }
        for job in by_pack {
            if full.lock().expect("full poisoned").is_some() || tx.send(job).is_err() {
                break;
            }
        }
        drop(tx);
    });
}

/// Groups blobs sorted by offset into ranges worth one read each (gaps under 1 MiB are
/// read through rather than paying another request). A range holds at most 2 MiB, which
/// bounds restore's memory to that much per thread: on the bench, 8 MiB ranges on four
/// threads peaked at 140 MB, 2 MiB on two at 92 MB, in the same time.
fn coalesce(blobs: &[(BlobEntry, Vec<Target>)]) -> Vec<&[(BlobEntry, Vec<Target>)]> {
    const GAP: u64 = 1 << 20;
    const MAX: u64 = 2 << 20;
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=blobs.len() {
        let split = i == blobs.len() || {
            let prev_end = u64::from(blobs[i - 1].0.offset) + u64::from(blobs[i - 1].0.length);
            let cur = u64::from(blobs[i].0.offset);
            cur > prev_end + GAP
                || cur + u64::from(blobs[i].0.length) - u64::from(blobs[start].0.offset) > MAX
        };
        if split {
            out.push(&blobs[start..i]);
            start = i;
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn restore_group(
    repo: &Repository,
    items: &[Item],
    files: &[FilePlan],
    pack_id: &Id,
    group: &[(BlobEntry, Vec<Target>)],
    target: &Path,
    errors: &Mutex<HashMap<usize, String>>,
    counters: &Counters,
    full: &Mutex<Option<anyhow::Error>>,
) {
    let fail_all = |targets: &[Target], msg: &str| {
        let mut e = errors.lock().expect("poisoned");
        for t in targets {
            e.entry(files[t.file].item)
                .or_insert_with(|| msg.to_string());
        }
    };
    let first = u64::from(group[0].0.offset);
    let last = group.last().expect("non-empty group");
    let end = u64::from(last.0.offset) + u64::from(last.0.length);
    let bytes = repo
        .backend
        .read_range(&FileKind::Data.path(pack_id), first, end - first);
    let mut opener = pack::BlobOpener::default();
    let mut open_files = OpenFiles::default();
    for (entry, targets) in group {
        let opened = match &bytes {
            Ok(b) => {
                let o = (u64::from(entry.offset) - first) as usize;
                opener
                    .open(&repo.keys, entry, &b[o..o + entry.length as usize])
                    .map_err(anyhow::Error::from)
            }
            Err(e) => Err(anyhow!(
                "pack {} unreadable: {}",
                pack_id.short(),
                crate::error::one_line(e)
            )),
        };
        // Bytes damaged on the way read right the next time, and a damaged or missing
        // copy here may be intact on a mirror: read_blob tries both before giving up.
        let opened = match opened {
            Err(_) => repo.read_blob(BlobType::Data, &entry.id).or(opened),
            ok => ok,
        };
        let data = match opened {
            Ok(d) => d,
            Err(e) => {
                fail_all(
                    targets,
                    &format!(
                        "data blob {} in pack {}: {}",
                        entry.id.short(),
                        pack_id.short(),
                        crate::error::one_line(&e)
                    ),
                );
                continue;
            }
        };
        for t in targets {
            let fp = &files[t.file];
            if errors.lock().expect("poisoned").contains_key(&fp.item) {
                continue;
            }
            let path = local(target, &items[fp.item].path);
            let r = open_files
                .get(t.file, &path)
                .and_then(|f| write_stream(f, &fp.extents, t.stream_offset, &data));
            match r {
                Ok(()) => {
                    fp.pending.fetch_sub(1, Ordering::Relaxed);
                    counters
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Err(e) if no_space(&e) => {
                    full.lock()
                        .expect("full poisoned")
                        .get_or_insert_with(|| no_space_error(&path, target, &e));
                    return;
                }
                Err(e) => fail_all(
                    std::slice::from_ref(t),
                    &format!("writing {}: {e}", path.display()),
                ),
            }
        }
    }
}

/// The files a restore group wrote to last, kept open: a file's consecutive blobs sit
/// next to each other in a pack, and small chunks would otherwise cost an open per blob.
#[derive(Default)]
struct OpenFiles(Vec<(usize, fs::File)>);

impl OpenFiles {
    const KEEP: usize = 4;

    fn get(&mut self, file: usize, path: &Path) -> std::io::Result<&fs::File> {
        let at = match self.0.iter().position(|(f, _)| *f == file) {
            Some(at) => at,
            None => {
                if self.0.len() == Self::KEEP {
                    self.0.remove(0);
                }
                self.0
                    .push((file, OpenOptions::new().write(true).open(path)?));
                self.0.len() - 1
            }
        };
        Ok(&self.0[at].1)
    }
}

/// Re-reads a restored file and checks every blob's keyed hash.
fn verify_file(repo: &Repository, it: &Item, extents: &[[u64; 2]], target: &Path) -> Result<()> {
    let path = local(target, &it.path);
    let f = fs::File::open(&path).with_context(|| format!("verify {}", path.display()))?;
    let md = f.metadata()?;
    if md.len() != it.node.size {
        bail!(
            "verify: {} has size {}, snapshot says {}",
            path.display(),
            md.len(),
            it.node.size
        );
    }
    let index = repo.index();
    let mut stream = 0u64;
    for id in &it.node.content {
        let len = u64::from(
            index
                .raw_len(id)
                .ok_or_else(|| anyhow!("blob {} not in index", id.short()))?,
        );
        let mut buf = vec![0u8; len as usize];
        read_stream(&f, extents, stream, &mut buf)?;
        if repo.keys.blob_id(0, &buf) != *id {
            bail!(
                "verify: {} differs from the snapshot at offset {}",
                path.display(),
                stream
            );
        }
        stream += len;
    }
    Ok(())
}

fn read_stream(
    file: &fs::File,
    extents: &[[u64; 2]],
    stream_offset: u64,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let mut s = 0u64;
    let mut done = 0usize;
    let mut pos = stream_offset;
    for &[off, len] in extents {
        if done == buf.len() {
            break;
        }
        if pos < s + len {
            let within = pos - s;
            let n = (buf.len() - done).min((len - within) as usize);
            file.read_exact_at(&mut buf[done..done + n], off + within)?;
            done += n;
            pos += n as u64;
        }
        s += len;
    }
    if done != buf.len() {
        return Err(std::io::Error::other("file shorter than its snapshot"));
    }
    Ok(())
}
