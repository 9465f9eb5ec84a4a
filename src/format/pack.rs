//! Pack files: sealed blobs back to back, then a sealed header listing them, then an
//! 8-byte trailer: header length (u32 LE) and the magic `vpk1`.

use super::crypto::{Keys, OVERHEAD};
use super::error::{FormatError, Result};
use super::id::Id;
use super::object;

pub const PACK_MAGIC: &[u8; 4] = b"vpk1";
pub const TRAILER_LEN: usize = 8;
/// type (1) + flags (1) + id (32) + stored length (4) + raw length (4)
pub const HEADER_ENTRY_LEN: usize = 42;
pub const FLAG_ZSTD: u8 = 1;
const HEADER_AAD: &[u8] = b"vault pack header v1";

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
    pub offset: u32,
    /// Stored (sealed) length.
    pub length: u32,
    /// Plaintext length after decompression.
    pub raw_len: u32,
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
    let mut bytes = Vec::with_capacity(payload.len() + OVERHEAD);
    keys.cipher
        .seal_into(&blob_aad(blob_type, &id), payload, &mut bytes);
    SealedBlob {
        blob_type,
        flags,
        id,
        raw_len: u32::try_from(data.len()).expect("blobs are smaller than 4 GiB"),
        bytes,
    }
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

/// Opens one stored blob and checks that its plaintext hashes to its id.
pub fn open_blob(keys: &Keys, entry: &BlobEntry, stored: &[u8]) -> Result<Vec<u8>> {
    let payload = keys
        .cipher
        .open(&blob_aad(entry.blob_type, &entry.id), stored)?;
    let data = if entry.flags & FLAG_ZSTD != 0 {
        object::decompress(&payload, entry.raw_len as usize)?
    } else {
        payload
    };
    if data.len() != entry.raw_len as usize {
        return Err(FormatError::malformed(
            "blob",
            "length differs from its index entry",
        ));
    }
    if keys.blob_id(entry.blob_type as u8, &data) != entry.id {
        return Err(FormatError::HashMismatch);
    }
    Ok(data)
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
        let offset = u32::try_from(self.buf.len()).expect("packs are smaller than 4 GiB");
        self.entries.push(BlobEntry {
            blob_type: blob.blob_type,
            flags: blob.flags,
            id: blob.id,
            offset,
            length: u32::try_from(blob.bytes.len()).expect("blob under 4 GiB"),
            raw_len: blob.raw_len,
        });
        self.buf.extend_from_slice(&blob.bytes);
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
        for e in &self.entries {
            header.push(e.blob_type as u8);
            header.push(e.flags);
            header.extend_from_slice(&e.id.0);
            header.extend_from_slice(&e.length.to_le_bytes());
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
    let data: u64 = entries.iter().map(|e| u64::from(e.length)).sum();
    data + (OVERHEAD + entries.len() * HEADER_ENTRY_LEN + TRAILER_LEN) as u64
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
    let plain = keys.cipher.open(HEADER_AAD, sealed)?;
    if plain.len() % HEADER_ENTRY_LEN != 0 {
        return Err(FormatError::malformed(
            "pack header",
            "length not a multiple of an entry",
        ));
    }
    let mut offset: u64 = 0;
    let mut entries = Vec::with_capacity(plain.len() / HEADER_ENTRY_LEN);
    for e in plain.chunks_exact(HEADER_ENTRY_LEN) {
        let length = u32::from_le_bytes(e[34..38].try_into().expect("4 bytes"));
        entries.push(BlobEntry {
            blob_type: BlobType::from_u8(e[0])?,
            flags: e[1],
            id: Id::from_slice(&e[2..34]).expect("32 bytes"),
            offset: u32::try_from(offset)
                .map_err(|_| FormatError::malformed("pack", "too large"))?,
            length,
            raw_len: u32::from_le_bytes(e[38..42].try_into().expect("4 bytes")),
        });
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
        let entry = BlobEntry {
            blob_type: BlobType::Data,
            flags: raw.flags,
            id,
            offset: 0,
            length: raw.bytes.len() as u32,
            raw_len: raw.raw_len,
        };
        assert_eq!(open_blob(&keys, &entry, &raw.bytes).unwrap(), noise);
        let mut mixed = noise.clone();
        mixed[..600 << 10].fill(b'a');
        let id = keys.blob_id(0, &mixed);
        assert_eq!(
            seal_blob(&keys, BlobType::Data, id, &mixed, 3).flags,
            FLAG_ZSTD
        );
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
        }
        let mut swapped = parsed[1];
        swapped.id = parsed[0].id;
        let s = &bytes[swapped.offset as usize..(swapped.offset + swapped.length) as usize];
        assert_eq!(open_blob(&keys, &swapped, s), Err(FormatError::BadMac));
    }
}
