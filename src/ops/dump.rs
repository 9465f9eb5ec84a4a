//! Writing a snapshot's file, or a directory as a tar or zip archive, to a stream.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::walk::{self, Found};
use crate::error::{Advised, Remedy};
use crate::format::Id;
use crate::format::pack::BlobType;
use crate::format::tree::{Node, NodeType};
use crate::repo::Repository;

/// Every data blob a dump of `path` reads: the file's, or those of every file below the
/// directory.
pub fn wanted_blobs(repo: &Repository, root: &Id, path: &Path) -> Result<Vec<Id>> {
    let mut wanted = Vec::new();
    match walk::find(repo, root, path)? {
        Found::Root(id) => walk::data_below(repo, vec![id], &mut wanted),
        Found::Node(n) => match n.subtree {
            Some(id) if n.kind == NodeType::Dir => walk::data_below(repo, vec![id], &mut wanted),
            _ => wanted = n.content,
        },
    }
    Ok(wanted)
}

/// Streams the file at `path` to `out`, holes as zeros; memory stays at one blob.
pub fn dump(repo: &Repository, root: &Id, path: &Path, out: &mut dyn Write) -> Result<u64> {
    let node = match walk::find(repo, root, path)? {
        Found::Node(n) if n.kind == NodeType::File => *n,
        Found::Node(n) if n.kind == NodeType::Symlink => {
            let t = n.target.map(|t| t.0).unwrap_or_default();
            out.write_all(&t)?;
            return Ok(t.len() as u64);
        }
        _ => {
            let msg = format!("{}: is a directory or special file", path.display());
            return Err(Advised::error(msg, Remedy::RestoreInstead));
        }
    };
    let extents = match node.checked_extents() {
        Ok(e) => e,
        Err(why) => {
            let msg = format!("{}: damaged tree node ({why})", path.display());
            let remedy = Remedy::OtherVersion(path.display().to_string());
            return Err(Advised::error(msg, remedy));
        }
    };
    let mut reader = NodeReader::new(repo, &node, extents);
    std::io::copy(&mut reader, out).with_context(|| format!("dumping {}", path.display()))?;
    out.flush().context("writing output")?;
    Ok(node.size)
}

/// A snapshot file's data as a stream: its blobs read one at a time into its extents,
/// its holes as zeros. Memory stays at one blob.
struct NodeReader<'a> {
    repo: &'a Repository,
    size: u64,
    extents: Vec<[u64; 2]>,
    blobs: std::slice::Iter<'a, Id>,
    pos: u64,
    ext: usize,
    buf: Vec<u8>,
    at: usize,
}

impl<'a> NodeReader<'a> {
    fn new(repo: &'a Repository, node: &'a Node, extents: Vec<[u64; 2]>) -> Self {
        NodeReader {
            repo,
            size: node.size,
            extents,
            blobs: node.content.iter(),
            pos: 0,
            ext: 0,
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl Read for NodeReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let (next_off, next_end) = match self.extents.get(self.ext) {
            Some(&[off, len]) => (off, off + len),
            None => (self.size, self.size),
        };
        if self.pos < next_off {
            let n = ((next_off - self.pos) as usize).min(out.len());
            out[..n].fill(0);
            self.pos += n as u64;
            return Ok(n);
        }
        if self.at == self.buf.len() {
            let id = self.blobs.next().ok_or_else(|| {
                std::io::Error::other("snapshot content shorter than its extents")
            })?;
            self.buf = self
                .repo
                .read_blob(BlobType::Data, id)
                .map_err(|e| std::io::Error::other(crate::error::one_line(&e)))?;
            self.at = 0;
        }
        let n = (self.buf.len() - self.at)
            .min(out.len())
            .min((next_end - self.pos) as usize);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        self.pos += n as u64;
        if self.pos == next_end {
            self.ext += 1;
        }
        Ok(n)
    }
}

/// The archive formats `dump --archive` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Archive {
    /// POSIX tar (PAX headers for long or non-UTF-8 names and large files)
    Tar,
    /// Zip, streamed (data descriptors, ZIP64 for large files)
    Zip,
}

/// What an archive dump wrote.
#[derive(Debug, Default, serde::Serialize)]
pub struct ArchiveSummary {
    pub entries: u64,
    pub bytes: u64,
    /// Entries the format cannot hold (sockets; in zip, FIFOs and devices), and names
    /// restore would not make either.
    pub skipped: Vec<String>,
}

/// One entry of an archive: its name inside it and its node.
trait ArchiveSink {
    fn dir(&mut self, name: &[u8], node: &Node) -> Result<()>;
    fn file(&mut self, name: &[u8], node: &Node, data: &mut dyn Read) -> Result<()>;
    fn symlink(&mut self, name: &[u8], node: &Node, target: &[u8]) -> Result<()>;
    /// A hard link to the entry named `first`; false when the format has none.
    fn hardlink(&mut self, name: &[u8], node: &Node, first: &[u8]) -> Result<bool>;
    /// A FIFO or device; false when the format has none.
    fn special(&mut self, name: &[u8], node: &Node) -> Result<bool>;
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Streams the directory (or file) at `path` of the snapshot as an archive to `out`:
/// names in it start with the last component of `path` (the snapshot's root dumps its
/// top-level entries). The tree is walked depth first with an explicit stack, one
/// directory's entries per level; memory is that plus one blob.
pub fn dump_archive(
    repo: &Repository,
    root: &Id,
    path: &Path,
    format: Archive,
    out: &mut dyn Write,
) -> Result<ArchiveSummary> {
    let mut sink: Box<dyn ArchiveSink + '_> = match format {
        Archive::Tar => Box::new(TarSink::new(&mut *out)),
        Archive::Zip => Box::new(ZipSink::new(&mut *out)),
    };
    let mut summary = ArchiveSummary::default();
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    // Each level: the entries still to write and the archive name of their directory.
    let mut stack: Vec<(std::vec::IntoIter<Node>, Vec<u8>)> = Vec::new();
    match walk::find(repo, root, path)? {
        Found::Root(id) => stack.push((repo.load_tree(&id)?.nodes.into_iter(), Vec::new())),
        Found::Node(n) => {
            let name = n.name.0.clone();
            write_entry(
                repo,
                &mut *sink,
                *n,
                name,
                &mut links,
                &mut stack,
                &mut summary,
            )?;
        }
    }
    while let Some((entries, dir)) = stack.last_mut() {
        let Some(node) = entries.next() else {
            stack.pop();
            continue;
        };
        if !walk::safe_name(&node.name.0) {
            summary
                .skipped
                .push(format!("{:?}: an unsafe name", node.name.lossy()));
            continue;
        }
        let mut name = dir.clone();
        if !name.is_empty() {
            name.push(b'/');
        }
        name.extend_from_slice(&node.name.0);
        write_entry(
            repo,
            &mut *sink,
            node,
            name,
            &mut links,
            &mut stack,
            &mut summary,
        )?;
    }
    sink.finish()?;
    out.flush().context("writing output")?;
    Ok(summary)
}

/// Writes one node named `name`; a directory's entries go on the stack.
fn write_entry(
    repo: &Repository,
    sink: &mut dyn ArchiveSink,
    node: Node,
    name: Vec<u8>,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
    stack: &mut Vec<(std::vec::IntoIter<Node>, Vec<u8>)>,
    summary: &mut ArchiveSummary,
) -> Result<()> {
    let shown = || String::from_utf8_lossy(&name).into_owned();
    let written = match node.kind {
        NodeType::Dir => {
            sink.dir(&name, &node)?;
            let entries = match node.subtree {
                Some(id) => {
                    repo.load_tree(&id)
                        .with_context(|| format!("contents of {}", shown()))?
                        .nodes
                }
                None => Vec::new(),
            };
            stack.push((entries.into_iter(), name.clone()));
            true
        }
        NodeType::File => {
            let key = (node.dev, node.inode);
            let first = (node.links > 1 && node.inode != 0)
                .then(|| links.get(&key).cloned())
                .flatten();
            if let Some(first) = first
                && sink.hardlink(&name, &node, &first)?
            {
                summary.entries += 1;
                return Ok(());
            }
            let extents = node
                .checked_extents()
                .map_err(|why| anyhow::anyhow!("{}: damaged tree node ({why})", shown()))?;
            let mut data = NodeReader::new(repo, &node, extents);
            sink.file(&name, &node, &mut data)
                .with_context(|| format!("dumping {}", shown()))?;
            summary.bytes += node.size;
            if node.links > 1 && node.inode != 0 {
                links.entry(key).or_insert_with(|| name.clone());
            }
            true
        }
        NodeType::Symlink => {
            let target = node
                .target
                .as_ref()
                .map(|t| t.0.clone())
                .unwrap_or_default();
            sink.symlink(&name, &node, &target)?;
            true
        }
        NodeType::Fifo | NodeType::Chardev | NodeType::Blockdev => sink.special(&name, &node)?,
        // As restore: a socket is its program's to make again.
        NodeType::Socket => return Ok(()),
    };
    if written {
        summary.entries += 1;
    } else {
        summary
            .skipped
            .push(format!("{}: the archive format cannot hold it", shown()));
    }
    Ok(())
}

/// Seconds since the epoch, floored (a time before 1970 is stored as 0).
fn secs(ns: i64) -> u64 {
    u64::try_from(ns.div_euclid(1_000_000_000)).unwrap_or(0)
}

/// POSIX tar through the `tar` crate's headers; what a ustar header cannot hold (a name
/// over its fields, a size over 8 GiB, a time's nanoseconds when anything else needs a
/// PAX header) goes into a PAX extended header before the entry.
struct TarSink<'w> {
    tar: tar::Builder<&'w mut dyn Write>,
}

/// The largest size a ustar header holds in octal (11 digits).
const USTAR_MAX_SIZE: u64 = (1 << 33) - 1;

impl<'w> TarSink<'w> {
    fn new(out: &'w mut dyn Write) -> Self {
        TarSink {
            tar: tar::Builder::new(out),
        }
    }

    fn header(&self, kind: tar::EntryType, name: &[u8], node: &Node) -> (tar::Header, Pax) {
        let mut pax = Pax::default();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        if h.set_path(OsStr::from_bytes(name)).is_err() {
            pax.add("path", name);
            let short = &name[name.len().saturating_sub(99)..];
            let short = String::from_utf8_lossy(short).replace('/', "_");
            let _ = h.set_path(short.trim_start_matches('.'));
        }
        h.set_mode(node.mode & 0o7777);
        h.set_uid(u64::from(node.uid));
        h.set_gid(u64::from(node.gid));
        let _ = h.set_username(node.user.as_str());
        let _ = h.set_groupname(node.group.as_str());
        h.set_mtime(secs(node.mtime_ns));
        h.set_size(0);
        (h, pax)
    }

    fn append(
        &mut self,
        mut h: tar::Header,
        mut pax: Pax,
        node: &Node,
        data: &mut dyn Read,
    ) -> Result<()> {
        if !pax.is_empty() {
            pax.add(
                "mtime",
                format!(
                    "{}.{:09}",
                    secs(node.mtime_ns),
                    node.mtime_ns.rem_euclid(1_000_000_000)
                )
                .as_bytes(),
            );
            let records = pax.encode();
            let mut x = tar::Header::new_ustar();
            x.set_entry_type(tar::EntryType::XHeader);
            let _ = x.set_path("PaxHeader");
            x.set_mode(0o644);
            x.set_size(records.len() as u64);
            x.set_cksum();
            self.tar
                .append(&x, &records[..])
                .context("writing output")?;
        }
        h.set_cksum();
        self.tar.append(&h, data).context("writing output")?;
        Ok(())
    }
}

impl ArchiveSink for TarSink<'_> {
    fn dir(&mut self, name: &[u8], node: &Node) -> Result<()> {
        let (h, pax) = self.header(tar::EntryType::Directory, name, node);
        self.append(h, pax, node, &mut std::io::empty())
    }

    fn file(&mut self, name: &[u8], node: &Node, data: &mut dyn Read) -> Result<()> {
        let (mut h, mut pax) = self.header(tar::EntryType::Regular, name, node);
        if node.size > USTAR_MAX_SIZE {
            pax.add("size", node.size.to_string().as_bytes());
        } else {
            h.set_size(node.size);
        }
        // Exactly the size announced: a snapshot shorter than its size is an error.
        let mut data = data.take(node.size);
        let mut counted = CountingReader {
            inner: &mut data,
            n: 0,
        };
        self.append(h, pax, node, &mut counted)?;
        if counted.n != node.size {
            bail!("snapshot content shorter than its size");
        }
        Ok(())
    }

    fn symlink(&mut self, name: &[u8], node: &Node, target: &[u8]) -> Result<()> {
        let (mut h, mut pax) = self.header(tar::EntryType::Symlink, name, node);
        if target.len() > 100 || h.set_link_name_literal(target).is_err() {
            pax.add("linkpath", target);
        }
        self.append(h, pax, node, &mut std::io::empty())
    }

    fn hardlink(&mut self, name: &[u8], node: &Node, first: &[u8]) -> Result<bool> {
        let (mut h, mut pax) = self.header(tar::EntryType::Link, name, node);
        if first.len() > 100 || h.set_link_name_literal(first).is_err() {
            pax.add("linkpath", first);
        }
        self.append(h, pax, node, &mut std::io::empty())?;
        Ok(true)
    }

    fn special(&mut self, name: &[u8], node: &Node) -> Result<bool> {
        let kind = match node.kind {
            NodeType::Fifo => tar::EntryType::Fifo,
            NodeType::Chardev => tar::EntryType::Char,
            _ => tar::EntryType::Block,
        };
        let (mut h, pax) = self.header(kind, name, node);
        let dev = node.rdev as libc::dev_t;
        let _ = h.set_device_major(libc::major(dev));
        let _ = h.set_device_minor(libc::minor(dev));
        self.append(h, pax, node, &mut std::io::empty())?;
        Ok(true)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.tar.finish().context("writing output")
    }
}

struct CountingReader<'a> {
    inner: &'a mut dyn Read,
    n: u64,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// The records of one PAX extended header.
#[derive(Default)]
struct Pax {
    records: Vec<(&'static str, Vec<u8>)>,
}

impl Pax {
    fn add(&mut self, key: &'static str, value: &[u8]) {
        if (key == "path" || key == "linkpath") && std::str::from_utf8(value).is_err() {
            // PAX names are UTF-8 unless the header says otherwise; GNU tar and bsdtar
            // then take the bytes as they are.
            if !self.records.iter().any(|(k, _)| *k == "hdrcharset") {
                self.records.push(("hdrcharset", b"BINARY".to_vec()));
            }
        }
        self.records.push((key, value.to_vec()));
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Each record is "LEN key=value\n", LEN counting itself.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.records {
            let body = k.len() + v.len() + 3; // ' ', '=', '\n'
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            out.extend_from_slice(format!("{len} {k}=").as_bytes());
            out.extend_from_slice(v);
            out.push(b'\n');
        }
        out
    }
}

/// Zip through the `zip` crate's streaming writer (no seeking: sizes and CRCs follow
/// each entry in a data descriptor). Zip names are UTF-8: other bytes are replaced.
/// Zip has no hard links (each is a full copy) and no FIFOs or devices (left out).
struct ZipSink<'w> {
    zip: zip::ZipWriter<zip::write::StreamWriter<&'w mut dyn Write>>,
}

impl<'w> ZipSink<'w> {
    fn new(out: &'w mut dyn Write) -> Self {
        ZipSink {
            zip: zip::ZipWriter::new_stream(out),
        }
    }

    fn options(node: &Node, deflate: bool) -> zip::write::SimpleFileOptions {
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let mut o = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .unix_permissions(node.mode & 0o7777)
            // ZIP64 sizes from some way below 4 GiB: deflate may make incompressible
            // data a little larger, and the sizes follow the data, too late to switch.
            .large_file(node.size >= 0xF000_0000);
        if let Some(t) = zip_time(node.mtime_ns) {
            o = o.last_modified_time(t);
        }
        o
    }
}

/// A zip (MS-DOS) time, in UTC: two-second steps from 1980 to 2107.
fn zip_time(ns: i64) -> Option<zip::DateTime> {
    let t = jiff::Timestamp::from_second(ns.div_euclid(1_000_000_000)).ok()?;
    let d = t.to_zoned(jiff::tz::TimeZone::UTC);
    zip::DateTime::from_date_and_time(
        u16::try_from(d.year()).ok()?,
        d.month() as u8,
        d.day() as u8,
        d.hour() as u8,
        d.minute() as u8,
        d.second() as u8,
    )
    .ok()
}

fn zip_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl ArchiveSink for ZipSink<'_> {
    fn dir(&mut self, name: &[u8], node: &Node) -> Result<()> {
        let o = Self::options(node, false);
        self.zip.add_directory(zip_name(name) + "/", o)?;
        Ok(())
    }

    fn file(&mut self, name: &[u8], node: &Node, data: &mut dyn Read) -> Result<()> {
        self.zip
            .start_file(zip_name(name), Self::options(node, true))?;
        let n = std::io::copy(&mut data.take(node.size), &mut self.zip)?;
        if n != node.size {
            bail!("snapshot content shorter than its size");
        }
        Ok(())
    }

    fn symlink(&mut self, name: &[u8], node: &Node, target: &[u8]) -> Result<()> {
        let o = Self::options(node, false);
        self.zip.add_symlink(zip_name(name), zip_name(target), o)?;
        Ok(())
    }

    fn hardlink(&mut self, _: &[u8], _: &Node, _: &[u8]) -> Result<bool> {
        Ok(false)
    }

    fn special(&mut self, _: &[u8], _: &Node) -> Result<bool> {
        Ok(false)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let mut w = self.zip.finish()?;
        w.flush().context("writing output")?;
        Ok(())
    }
}
