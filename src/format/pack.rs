//! Pack files: sealed units back to back, then a sealed header listing their blobs, then
//! an 8-byte trailer: header length (u32 LE) and the magic `vpk1`. A unit is one blob, or
//! a bundle: several small blobs compressed and sealed together, because small files
//! compress several times better side by side than one by one.

use std::borrow::Cow;

use super::crypto::{Keys, NONCE_LEN, OVERHEAD};
use super::error::{FormatError, Result};
use super::id::Id;
use super::object;
use super::roles::{self, Sealing};

pub const PACK_MAGIC: &[u8; 4] = b"vpk1";
pub const TRAILER_LEN: usize = 8;
/// type (1) + flags (1) + id (32) + stored length (4) + raw length (4)
pub const HEADER_ENTRY_LEN: usize = 42;
pub const FLAG_ZSTD: u8 = 1;
/// The blob is a member of a bundle (repository version 2).
pub const FLAG_BUNDLE: u8 = 2;
/// The unit is sealed to the repository's public key (format 4, §20).
pub const FLAG_PUBLIC: u8 = 4;
/// The unit is sealed under its host's key (format 4, §20).
pub const FLAG_HOST: u8 = 8;
const HEADER_AAD: &[u8] = b"vault pack header v1";
const BUNDLE_AAD: &[u8] = b"vault bundle v1";
/// Readers refuse bundles that would open to more than this (writers make ~1 MiB ones).
pub const MAX_BUNDLE: usize = 16 << 20;
/// Writers bundle data blobs smaller than this: small files compress several times
/// better side by side (shared markup, headers, identifiers) than one by one.
pub const BUNDLE_BELOW: usize = 256 << 10;
/// Writers seal a bundle once its members reach this much plaintext: enough for zstd to
/// find what neighbouring files share, small enough that restoring one small file reads
/// little else.
pub const BUNDLE_TARGET: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobType {
    Data = 0,
    Tree = 1,
}

impl BlobType {
    pub fn from_u8(b: u8) -> Result<BlobType> {
        match b {
            0 => Ok(BlobType::Data),
            1 => Ok(BlobType::Tree),
            _ => Err(FormatError::malformed("blob type", b)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BlobType::Data => "data",
            BlobType::Tree => "tree",
        }
    }
}

/// Where one blob lives inside its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    pub blob_type: BlobType,
    pub flags: u8,
    pub id: Id,
    /// Where its unit (the blob itself, or its bundle) starts in the pack.
    pub offset: u32,
    /// Stored (sealed) length of its unit.
    pub length: u32,
    /// Plaintext length after decompression.
    pub raw_len: u32,
    /// Where the blob starts in its bundle's plaintext; 0 for a blob stored alone.
    pub inner: u32,
}

impl BlobEntry {
    pub fn bundled(&self) -> bool {
        self.flags & FLAG_BUNDLE != 0
    }
}

fn blob_aad(blob_type: BlobType, id: &Id) -> [u8; 46] {
    let mut aad = [0u8; 46];
    aad[..13].copy_from_slice(b"vault blob v1");
    aad[13] = blob_type as u8;
    aad[14..].copy_from_slice(&id.0);
    aad
}

/// A blob ready to be appended to a pack.
pub struct SealedBlob {
    pub blob_type: BlobType,
    pub flags: u8,
    pub id: Id,
    pub raw_len: u32,
    pub bytes: Vec<u8>,
}

/// Compresses (when it helps) and seals one blob; the id is bound as associated data.
pub fn seal_blob(keys: &Keys, blob_type: BlobType, id: Id, data: &[u8], level: i32) -> SealedBlob {
    let compressed = compress(data, level);
    let (flags, payload) = match &compressed {
        Some(c) => (FLAG_ZSTD, c.as_slice()),
        None => (0, data),
    };
    let mut bytes = Vec::with_capacity(payload.len() + OVERHEAD + roles::EPK_PREFIX_LEN);
    let sealing = seal_unit(
        keys,
        blob_type,
        &blob_aad(blob_type, &id),
        payload,
        &mut bytes,
    );
    SealedBlob {
        blob_type,
        flags: flags | sealing,
        id,
        raw_len: u32::try_from(data.len()).expect("blobs are smaller than 4 GiB"),
        bytes,
    }
}

impl SealedBlob {
    /// Its entry once stored at `offset` of a pack.
    pub fn entry(&self, offset: u32) -> BlobEntry {
        BlobEntry {
            blob_type: self.blob_type,
            flags: self.flags,
            id: self.id,
            offset,
            length: u32::try_from(self.bytes.len()).expect("blob under 4 GiB"),
            raw_len: self.raw_len,
            inner: 0,
        }
    }
}

/// Small blobs sealed together as one unit.
pub struct SealedBundle {
    pub blob_type: BlobType,
    pub flags: u8,
    /// Each member's id and plaintext length, in the order of the bundle's plaintext.
    pub members: Vec<(Id, u32)>,
    pub bytes: Vec<u8>,
}

/// Compresses (when it helps) and seals the concatenation of `blobs` as one bundle. The
/// members' ids are not bound as associated data: each is checked against its keyed
/// hash when read, which is what makes a swapped or altered bundle fail.
pub fn seal_bundle(
    keys: &Keys,
    blob_type: BlobType,
    blobs: &[(Id, &[u8])],
    level: i32,
) -> SealedBundle {
    // Not a flat_map collect: that copies byte by byte, which cost a tenth of a backup.
    let mut plain = Vec::with_capacity(blobs.iter().map(|(_, d)| d.len()).sum());
    for (_, d) in blobs {
        plain.extend_from_slice(d);
    }
    let compressed = compress(&plain, level);
    let (flags, payload) = match &compressed {
        Some(c) => (FLAG_BUNDLE | FLAG_ZSTD, c.as_slice()),
        None => (FLAG_BUNDLE, plain.as_slice()),
    };
    let mut bytes = Vec::with_capacity(payload.len() + OVERHEAD + roles::EPK_PREFIX_LEN);
    let sealing = seal_unit(keys, blob_type, &bundle_aad(blob_type), payload, &mut bytes);
    let members = blobs
        .iter()
        .map(|(id, d)| {
            (
                *id,
                u32::try_from(d.len()).expect("bundled blobs are small"),
            )
        })
        .collect();
    SealedBundle {
        blob_type,
        flags: flags | sealing,
        members,
        bytes,
    }
}

/// Seals one unit's payload into `out` as the repository's format asks; returns the
/// flags that say how (none below format 4, §20).
fn seal_unit(
    keys: &Keys,
    blob_type: BlobType,
    aad: &[u8],
    payload: &[u8],
    out: &mut Vec<u8>,
) -> u8 {
    let Some(r) = keys.roles() else {
        keys.cipher.seal_into(aad, payload, out);
        return 0;
    };
    let (how, flag) = match blob_type {
        BlobType::Data => (Sealing::Public, FLAG_PUBLIC),
        BlobType::Tree => (Sealing::Host, FLAG_HOST),
    };
    roles::start_unit(keys, r, how, out).seal_into(aad, payload, out);
    flag
}

/// The unit of `entry` (a blob alone, or the bundle holding it), opened with `keys` and
/// sealed again under the keys that seal (a key rotation, format 5), without
/// decompressing: the same payload and AAD, a fresh nonce and prefix. Returns the
/// entry's new flags (the sealing may change: a unit of format 3 becomes one of
/// format 4) and the unit's bytes.
pub fn reseal_unit(keys: &Keys, entry: &BlobEntry, stored: &[u8]) -> Result<(u8, Vec<u8>)> {
    let aad: Vec<u8> = if entry.bundled() {
        bundle_aad(entry.blob_type).to_vec()
    } else {
        blob_aad(entry.blob_type, &entry.id).to_vec()
    };
    let payload = zeroize::Zeroizing::new(open_unit(keys, entry.flags, &aad, stored)?);
    let mut out = Vec::with_capacity(stored.len() + roles::EPK_PREFIX_LEN);
    let sealing = seal_unit(keys, entry.blob_type, &aad, &payload, &mut out);
    Ok((entry.flags & !(FLAG_PUBLIC | FLAG_HOST) | sealing, out))
}

/// How a unit with `flags` is sealed: None for the shared key.
fn sealing(flags: u8) -> Result<Option<Sealing>> {
    match (flags & FLAG_PUBLIC != 0, flags & FLAG_HOST != 0) {
        (false, false) => Ok(None),
        (true, false) => Ok(Some(Sealing::Public)),
        (false, true) => Ok(Some(Sealing::Host)),
        (true, true) => Err(FormatError::malformed("blob flags", flags)),
    }
}

/// Opens a unit's sealed payload.
fn open_unit(keys: &Keys, flags: u8, aad: &[u8], stored: &[u8]) -> Result<Vec<u8>> {
    keys.open_either(|k| open_unit_with(k, flags, aad, stored))
}

fn open_unit_with(keys: &Keys, flags: u8, aad: &[u8], stored: &[u8]) -> Result<Vec<u8>> {
    match sealing(flags)? {
        None => keys.cipher.open(aad, stored),
        Some(how) => {
            let (cipher, at) = roles::open_unit(keys, how, stored)?;
            cipher.open(aad, &stored[at..])
        }
    }
}

/// [`open_unit`] where the unit lies; returns its plaintext within `stored`.
fn open_unit_in_place<'b>(
    keys: &Keys,
    flags: u8,
    aad: &[u8],
    stored: &'b mut [u8],
) -> Result<&'b mut [u8]> {
    // Where the plaintext starts and how long it is; the slice is taken once the key
    // that opens it is found.
    let how = sealing(flags)?;
    let (at, len) = keys.open_either(|k| {
        let unit;
        let (cipher, at) = match how {
            None => (&k.cipher, 0),
            Some(how) => {
                unit = roles::open_unit(k, how, stored)?;
                (&unit.0, unit.1)
            }
        };
        let len = cipher.open_in_place(aad, &mut stored[at..])?.len();
        Ok((at, len))
    })?;
    Ok(&mut stored[at + NONCE_LEN..at + NONCE_LEN + len])
}

fn bundle_aad(blob_type: BlobType) -> [u8; 16] {
    let mut aad = [0u8; 16];
    aad[..15].copy_from_slice(BUNDLE_AAD);
    aad[15] = blob_type as u8;
    aad
}

/// Blobs at least this large are sampled before being compressed whole.
const SAMPLE_ABOVE: usize = 128 * 1024;
const SAMPLE_LEN: usize = 16 * 1024;

/// zstd-compresses `data`, or None when that would not make it smaller. Already
/// compressed data (media, archives, encrypted files) is recognised from three samples
/// and stored as is, without spending a whole compression on it.
fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    if data.len() >= SAMPLE_ABOVE {
        let step = (data.len() - SAMPLE_LEN) / 2;
        let sampled: usize = (0..3)
            .map(|i| &data[i * step..i * step + SAMPLE_LEN])
            .map(|s| with_compressor(level, s).map_or(SAMPLE_LEN, |c| c.len()))
            .sum();
        if sampled * 100 > 3 * SAMPLE_LEN * 97 {
            return None;
        }
    }
    with_compressor(level, data).filter(|c| c.len() < data.len())
}

/// Compresses with this thread's zstd context: creating a context costs more than
/// compressing a small blob.
fn with_compressor(level: i32, data: &[u8]) -> Option<Vec<u8>> {
    use std::cell::RefCell;
    thread_local! {
        static CCTX: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
    }
    CCTX.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        slot.as_mut()?.1.compress(data).ok()
    })
}

/// Opens one stored blob and checks that its plaintext hashes to its id. `stored` is
/// the blob's unit: for a bundle member, the whole bundle.
pub fn open_blob(keys: &Keys, entry: &BlobEntry, stored: &[u8]) -> Result<Vec<u8>> {
    if entry.bundled() {
        let bundle = open_bundle(keys, entry, stored)?;
        return Ok(member(keys, entry, &bundle)?.to_vec());
    }
    let payload = open_unit(
        keys,
        entry.flags,
        &blob_aad(entry.blob_type, &entry.id),
        stored,
    )?;
    plaintext(keys, entry, Cow::Owned(payload))
}

/// [`open_blob`] for bytes the caller gives up: a blob alone is decrypted where it
/// lies, sparing a copy of it (a large directory's tree is megabytes).
pub fn open_blob_owned(keys: &Keys, entry: &BlobEntry, mut stored: Vec<u8>) -> Result<Vec<u8>> {
    if entry.bundled() {
        return open_blob(keys, entry, &stored);
    }
    let aad = blob_aad(entry.blob_type, &entry.id);
    let payload = open_unit_in_place(keys, entry.flags, &aad, &mut stored)?;
    plaintext(keys, entry, Cow::Borrowed(&*payload))
}

/// A blob's plaintext from its decrypted payload, checked against its id.
fn plaintext(keys: &Keys, entry: &BlobEntry, payload: Cow<'_, [u8]>) -> Result<Vec<u8>> {
    let data = if entry.flags & FLAG_ZSTD != 0 {
        object::decompress(&payload, entry.raw_len as usize)?
    } else {
        payload.into_owned()
    };
    verify(keys, entry, &data)?;
    Ok(data)
}

/// The whole plaintext of the bundle that holds `entry`: for a reader that comes back
/// to its other members (the mount), which then takes each out with [`member`].
pub fn open_bundle(keys: &Keys, entry: &BlobEntry, stored: &[u8]) -> Result<Vec<u8>> {
    let payload = open_unit(keys, entry.flags, &bundle_aad(entry.blob_type), stored)?;
    if entry.flags & FLAG_ZSTD != 0 {
        // Into a buffer of the size the frame declares: one of the limit's 16 MiB was
        // mapped and unmapped for every bundle opened, and the mount keeps several.
        object::decompress_exact(&payload, MAX_BUNDLE)
    } else if payload.len() > MAX_BUNDLE {
        Err(FormatError::malformed("bundle", "larger than allowed"))
    } else {
        Ok(payload)
    }
}

/// One member's bytes out of its opened bundle, checked against its id.
pub fn member<'a>(keys: &Keys, entry: &BlobEntry, bundle: &'a [u8]) -> Result<&'a [u8]> {
    let start = entry.inner as usize;
    let data = bundle
        .get(start..start + entry.raw_len as usize)
        .ok_or_else(|| FormatError::malformed("bundle", "shorter than its members"))?;
    verify(keys, entry, data)?;
    Ok(data)
}

fn verify(keys: &Keys, entry: &BlobEntry, data: &[u8]) -> Result<()> {
    if data.len() != entry.raw_len as usize {
        return Err(FormatError::malformed(
            "blob",
            "length differs from its index entry",
        ));
    }
    if keys.blob_id(entry.blob_type as u8, data) != entry.id {
        return Err(FormatError::HashMismatch);
    }
    Ok(())
}

/// Opens blobs of one pack, each bundle once however many of its members are read: for
/// readers that go through a pack's blobs in order (restore, check, prune).
#[derive(Default)]
pub struct BlobOpener {
    /// The last bundle opened: its place in the pack (offset, length) and its plaintext.
    bundle: Option<((u32, u32), Vec<u8>)>,
}

impl BlobOpener {
    /// Like `open_blob`; `stored` is the entry's unit, from the same pack as every
    /// earlier call.
    pub fn open(&mut self, keys: &Keys, entry: &BlobEntry, stored: &[u8]) -> Result<Vec<u8>> {
        if !entry.bundled() {
            return open_blob(keys, entry, stored);
        }
        let place = (entry.offset, entry.length);
        if self.bundle.as_ref().is_none_or(|(p, _)| *p != place) {
            self.bundle = None;
            self.bundle = Some((place, open_bundle(keys, entry, stored)?));
        }
        let (_, bundle) = self.bundle.as_ref().expect("just opened");
        Ok(member(keys, entry, bundle)?.to_vec())
    }

    /// The plaintext length of the bundle opened last, if any.
    pub fn bundle_len(&self) -> Option<usize> {
        self.bundle.as_ref().map(|(_, b)| b.len())
    }
}

/// Accumulates sealed blobs into one pack.
#[derive(Default)]
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<BlobEntry>,
}

impl PackBuilder {
    pub fn with_capacity(cap: usize) -> Self {
        PackBuilder {
            buf: Vec::with_capacity(cap),
            entries: Vec::new(),
        }
    }

    pub fn add(&mut self, blob: SealedBlob) {
        self.entries.push(blob.entry(self.offset()));
        self.buf.extend_from_slice(&blob.bytes);
    }

    pub fn add_bundle(&mut self, bundle: SealedBundle) {
        let (offset, mut inner) = (self.offset(), 0);
        for (id, raw_len) in bundle.members {
            self.entries.push(BlobEntry {
                blob_type: bundle.blob_type,
                flags: bundle.flags,
                id,
                offset,
                length: u32::try_from(bundle.bytes.len()).expect("bundle under 4 GiB"),
                raw_len,
                inner,
            });
            inner += raw_len;
        }
        self.buf.extend_from_slice(&bundle.bytes);
    }

    fn offset(&self) -> u32 {
        u32::try_from(self.buf.len()).expect("packs are smaller than 4 GiB")
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seals the header, appends it and the trailer; returns the pack bytes, its storage
    /// id and its entries.
    pub fn finish(mut self, keys: &Keys) -> (Vec<u8>, Id, Vec<BlobEntry>) {
        let mut header = Vec::with_capacity(self.entries.len() * HEADER_ENTRY_LEN);
        let mut prev_offset = None;
        for e in &self.entries {
            // A bundle's stored length is given once, by its first member; the others
            // say 0, so that the lengths still add up to the pack's data.
            let length = if e.bundled() && prev_offset == Some(e.offset) {
                0
            } else {
                e.length
            };
            prev_offset = Some(e.offset);
            header.push(e.blob_type as u8);
            header.push(e.flags);
            header.extend_from_slice(&e.id.0);
            header.extend_from_slice(&length.to_le_bytes());
            header.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        let sealed = keys.cipher.seal(HEADER_AAD, &header);
        self.buf.extend_from_slice(&sealed);
        let hlen = u32::try_from(sealed.len()).expect("header under 4 GiB");
        self.buf.extend_from_slice(&hlen.to_le_bytes());
        self.buf.extend_from_slice(PACK_MAGIC);
        let id = Id::of_stored(&self.buf);
        (self.buf, id, self.entries)
    }
}

/// The size of a pack holding exactly `entries`: blobs, sealed header, trailer. Lets
/// check and audit find truncated packs from the index alone.
pub fn stored_size(entries: &[BlobEntry]) -> u64 {
    units_len(entries) + (OVERHEAD + entries.len() * HEADER_ENTRY_LEN + TRAILER_LEN) as u64
}

/// The stored bytes of the units that hold `entries` (of one pack), each unit counted once
/// however many of its bundle's members are listed.
pub fn units_len<'a>(entries: impl IntoIterator<Item = &'a BlobEntry>) -> u64 {
    let mut seen = std::collections::HashSet::new();
    entries
        .into_iter()
        .filter(|e| seen.insert((e.offset, e.length)))
        .map(|e| u64::from(e.length))
        .sum()
}

/// Places `entry`, a bundle member whose header entry gives no length of its own, in
/// the bundle of the entry before it.
fn continue_bundle(prev: Option<&BlobEntry>, entry: &mut BlobEntry) -> Result<()> {
    let prev = prev
        .filter(|p| p.bundled() && p.blob_type == entry.blob_type && p.flags == entry.flags)
        .ok_or_else(|| {
            FormatError::malformed("pack header", "a bundle member without its bundle")
        })?;
    let inner = u64::from(prev.inner) + u64::from(prev.raw_len);
    if inner + u64::from(entry.raw_len) > MAX_BUNDLE as u64 {
        return Err(FormatError::malformed(
            "pack header",
            "bundle larger than allowed",
        ));
    }
    entry.offset = prev.offset;
    entry.length = prev.length;
    entry.inner = inner as u32;
    Ok(())
}

/// Reads the header length from a pack's trailer (the last 8 bytes).
pub fn parse_trailer(trailer: &[u8]) -> Result<u32> {
    if trailer.len() != TRAILER_LEN {
        return Err(FormatError::Truncated("pack trailer"));
    }
    if &trailer[4..] != PACK_MAGIC {
        return Err(FormatError::malformed("pack trailer", "bad magic"));
    }
    Ok(u32::from_le_bytes(
        trailer[..4].try_into().expect("4 bytes"),
    ))
}

/// Decrypts a pack header and recomputes blob offsets; `data_len` is the length of the
/// pack before the header, which the blobs must exactly fill.
pub fn open_header(keys: &Keys, sealed: &[u8], data_len: u64) -> Result<Vec<BlobEntry>> {
    let plain = keys.open_either(|k| k.cipher.open(HEADER_AAD, sealed))?;
    if plain.len() % HEADER_ENTRY_LEN != 0 {
        return Err(FormatError::malformed(
            "pack header",
            "length not a multiple of an entry",
        ));
    }
    let mut offset: u64 = 0;
    let mut entries: Vec<BlobEntry> = Vec::with_capacity(plain.len() / HEADER_ENTRY_LEN);
    for e in plain.chunks_exact(HEADER_ENTRY_LEN) {
        let length = u32::from_le_bytes(e[34..38].try_into().expect("4 bytes"));
        let mut entry = BlobEntry {
            blob_type: BlobType::from_u8(e[0])?,
            flags: e[1],
            id: Id::from_slice(&e[2..34]).expect("32 bytes"),
            offset: u32::try_from(offset)
                .map_err(|_| FormatError::malformed("pack", "too large"))?,
            length,
            raw_len: u32::from_le_bytes(e[38..42].try_into().expect("4 bytes")),
            inner: 0,
        };
        if entry.bundled() && length == 0 {
            continue_bundle(entries.last(), &mut entry)?;
        } else if (length as usize) < OVERHEAD {
            return Err(FormatError::malformed(
                "pack header",
                "a unit shorter than its seal",
            ));
        }
        entries.push(entry);
        offset += u64::from(length);
    }
    if offset != data_len {
        return Err(FormatError::malformed(
            "pack header",
            "blobs do not fill the pack",
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::crypto::MasterKey;

    /// Large incompressible blobs are recognised from samples and stored raw; a large
    /// blob that is incompressible only in places is still compressed.
    #[test]
    fn incompressible_blobs_are_stored_raw() {
        let keys = MasterKey::generate().derive();
        let mut x: u64 = 9;
        let noise: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let id = keys.blob_id(0, &noise);
        let raw = seal_blob(&keys, BlobType::Data, id, &noise, 3);
        assert_eq!(raw.flags, 0);
        assert_eq!(open_blob(&keys, &raw.entry(0), &raw.bytes).unwrap(), noise);
        let mut mixed = noise.clone();
        mixed[..600 << 10].fill(b'a');
        let id = keys.blob_id(0, &mixed);
        assert_eq!(
            seal_blob(&keys, BlobType::Data, id, &mixed, 3).flags,
            FLAG_ZSTD
        );
    }

    /// Bundles sit between single blobs; the header gives each bundle's length once and
    /// parsing restores every member's place, and each member opens on its own or through
    /// an opener that decrypts the bundle once.
    #[test]
    fn bundles_build_parse_and_open() {
        let keys = MasterKey::generate().derive();
        let datas: Vec<Vec<u8>> = (0..5u8)
            .map(|i| vec![b'a' + i; 1000 + i as usize])
            .collect();
        let ids: Vec<Id> = datas.iter().map(|d| keys.blob_id(0, d)).collect();
        let member = |i: usize| (ids[i], datas[i].as_slice());
        let mut pb = PackBuilder::default();
        pb.add(seal_blob(&keys, BlobType::Data, ids[0], &datas[0], 3));
        pb.add_bundle(seal_bundle(
            &keys,
            BlobType::Data,
            &[member(1), member(2)],
            3,
        ));
        pb.add_bundle(seal_bundle(
            &keys,
            BlobType::Data,
            &[member(3), member(4)],
            3,
        ));
        let (bytes, _, entries) = pb.finish(&keys);
        assert_eq!(stored_size(&entries), bytes.len() as u64);
        assert_eq!(
            (entries[2].offset, entries[2].inner),
            (entries[1].offset, 1001)
        );
        assert_ne!(entries[3].offset, entries[2].offset);
        let hlen = parse_trailer(&bytes[bytes.len() - 8..]).unwrap() as usize;
        let hstart = bytes.len() - 8 - hlen;
        let parsed = open_header(&keys, &bytes[hstart..bytes.len() - 8], hstart as u64).unwrap();
        assert_eq!(parsed, entries);
        let mut opener = BlobOpener::default();
        for (e, d) in parsed.iter().zip(&datas) {
            let s = &bytes[e.offset as usize..(e.offset + e.length) as usize];
            assert_eq!(&open_blob(&keys, e, s).unwrap(), d);
            assert_eq!(&open_blob_owned(&keys, e, s.to_vec()).unwrap(), d);
            assert_eq!(&opener.open(&keys, e, s).unwrap(), d);
        }
        // A member placed at another member's bytes fails its keyed hash.
        let mut moved = parsed[2];
        moved.inner = 0;
        let s = &bytes[moved.offset as usize..(moved.offset + moved.length) as usize];
        assert!(open_blob(&keys, &moved, s).is_err());
        assert!(open_blob_owned(&keys, &moved, s.to_vec()).is_err());
        // Members claiming more than their bundle holds are refused, not sliced past.
        moved.inner = 5000;
        assert!(open_blob(&keys, &moved, s).is_err());
    }

    /// A unit too short to be sealed would share its offset with the next one.
    #[test]
    fn a_header_with_an_empty_unit_is_refused() {
        let keys = MasterKey::generate().derive();
        let mut plain = vec![0u8; 2 * HEADER_ENTRY_LEN];
        plain[HEADER_ENTRY_LEN + 34..HEADER_ENTRY_LEN + 38].copy_from_slice(&40u32.to_le_bytes());
        let sealed = keys.cipher.seal(HEADER_AAD, &plain);
        assert!(open_header(&keys, &sealed, 40).is_err());
    }

    #[test]
    fn build_and_parse() {
        let keys = MasterKey::generate().derive();
        let mut pb = PackBuilder::default();
        let datas: Vec<Vec<u8>> = vec![b"aaaa".repeat(1000), b"xyz".to_vec()];
        for d in &datas {
            let id = keys.blob_id(0, d);
            pb.add(seal_blob(&keys, BlobType::Data, id, d, 3));
        }
        let (bytes, id, entries) = pb.finish(&keys);
        assert_eq!(id, Id::of_stored(&bytes));
        assert_eq!(stored_size(&entries), bytes.len() as u64);
        assert_eq!(entries[0].flags, FLAG_ZSTD);
        assert_eq!(entries[1].flags, 0);
        let hlen = parse_trailer(&bytes[bytes.len() - 8..]).unwrap() as usize;
        let hstart = bytes.len() - 8 - hlen;
        let parsed = open_header(&keys, &bytes[hstart..bytes.len() - 8], hstart as u64).unwrap();
        assert_eq!(parsed, entries);
        for (e, d) in parsed.iter().zip(&datas) {
            let s = &bytes[e.offset as usize..(e.offset + e.length) as usize];
            assert_eq!(&open_blob(&keys, e, s).unwrap(), d);
            assert_eq!(&open_blob_owned(&keys, e, s.to_vec()).unwrap(), d);
        }
        let mut swapped = parsed[1];
        swapped.id = parsed[0].id;
        let s = &bytes[swapped.offset as usize..(swapped.offset + swapped.length) as usize];
        assert_eq!(open_blob(&keys, &swapped, s), Err(FormatError::BadMac));
        let owned = open_blob_owned(&keys, &swapped, s.to_vec());
        assert_eq!(owned, Err(FormatError::BadMac));
    }

    /// The keys of a full key `m`, with the role keys of format 4 when `roles`.
    fn full_keys(m: &MasterKey, roles: bool) -> Keys {
        let keys = m.derive();
        if roles {
            keys.with_roles(crate::format::roles::RoleKeys::full(m, "h"))
        } else {
            keys
        }
    }

    /// While a key rotation is in progress (format 5) the new keys open what the old
    /// master key sealed: blobs (in format 4 sealed to the public key or a host key),
    /// pack headers and every kind of object, whose ids do not change because the
    /// content key stays. Without the previous key none of it opens, and what the new
    /// keys seal does not open with the old ones.
    #[test]
    fn a_rotation_in_progress_opens_what_the_previous_key_sealed() {
        let old = MasterKey::from_bytes([1; 32]);
        let rotating = MasterKey::from_bytes([2; 32])
            .with_content(*old.as_bytes())
            .with_previous(*old.as_bytes());
        let new_only = MasterKey::from_bytes([2; 32]).with_content(*old.as_bytes());
        assert_eq!(*rotating.id_key(), *old.id_key());
        assert_eq!(rotating.chunker_seed(), old.chunker_seed());
        assert_ne!(*rotating.enc_key(), *old.enc_key());
        for roles in [false, true] {
            let sealer = full_keys(&old, roles);
            let prev = rotating.previous().expect("rotating");
            let reader = full_keys(&rotating, roles).with_previous(full_keys(&prev, roles));
            let alone = full_keys(&new_only, roles);
            let mut pb = PackBuilder::default();
            let mut want = Vec::new();
            for (t, data) in [
                (BlobType::Data, b"data ".repeat(99)),
                (BlobType::Tree, b"{}".to_vec()),
            ] {
                let id = sealer.blob_id(t as u8, &data);
                assert_eq!(reader.blob_id(t as u8, &data), id, "the content key stays");
                let blob = seal_blob(&sealer, t, id, &data, 3);
                let entry = blob.entry(0);
                assert_eq!(open_blob(&reader, &entry, &blob.bytes).unwrap(), data);
                let owned = open_blob_owned(&reader, &entry, blob.bytes.clone());
                assert_eq!(owned.unwrap(), data);
                assert!(open_blob(&alone, &entry, &blob.bytes).is_err());
                pb.add(blob);
                want.push(data);
            }
            let (bytes, _, entries) = pb.finish(&sealer);
            assert_eq!(stored_size(&entries), bytes.len() as u64);
            let header_len = parse_trailer(&bytes[bytes.len() - 8..]).unwrap() as usize;
            let data_len = (bytes.len() - 8 - header_len) as u64;
            let header = &bytes[data_len as usize..bytes.len() - 8];
            assert_eq!(open_header(&reader, header, data_len).unwrap().len(), 2);
            assert!(open_header(&alone, header, data_len).is_err());
            for kind in [
                object::Kind::Snapshot,
                object::Kind::Forget,
                object::Kind::Index,
            ] {
                let sealed = object::seal(&sealer, kind, b"{}");
                assert_eq!(object::open(&reader, kind, &sealed).unwrap(), b"{}");
                assert_eq!(
                    object::open_owned(&reader, kind, sealed.clone()).unwrap(),
                    b"{}"
                );
                assert!(object::open(&alone, kind, &sealed).is_err());
                let resealed = object::seal(&reader, kind, b"{}");
                assert!(object::open(&sealer, kind, &resealed).is_err(), "{kind:?}");
            }
        }
    }
}
