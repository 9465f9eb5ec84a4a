//! The envelope of every stored object that is not a pack: config, index, snapshot, lock,
//! mirror definition, forget record.
//!
//! `version (1 byte) || nonce || AES-GCM-SIV(payload) || tag`, where the associated data is
//! `"vault object v1 " || kind` and payload is `compression (1 byte) || body`.
//! Mutable-named objects (config, locks) append the BLAKE3 of everything before, so their
//! integrity can be checked without the key like every hash-named object.

use super::crypto::{Keys, NONCE_LEN};
use super::error::{FormatError, Result};
use super::roles::{self, ADMIN_TAG_LEN, Sealing};

pub const OBJECT_VERSION: u8 = 1;
/// Format 4 (§20): sealed under the writer's host key, after its sealed host id.
pub const OBJECT_HOST: u8 = 2;
/// Format 4 (§20): an admin tag follows, made with a key only full keys hold.
pub const OBJECT_ADMIN: u8 = 3;
const COMPRESS_NONE: u8 = 0;
const COMPRESS_ZSTD: u8 = 1;
const CHECKSUM_LEN: usize = 32;

/// What a sealed object is; part of its associated data so that one kind cannot be
/// substituted for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Config,
    Index,
    Snapshot,
    Lock,
    Mirror,
    Forget,
    Export,
    Mark,
    Revival,
    Deletion,
    Format,
}

impl Kind {
    /// Kinds only a full key may write in format 4: their records decide what is
    /// forgotten, deleted, mirrored or how the repository is read.
    pub fn admin_only(self) -> bool {
        matches!(
            self,
            Kind::Forget | Kind::Mark | Kind::Deletion | Kind::Format | Kind::Mirror | Kind::Export
        )
    }

    fn aad(self) -> &'static [u8] {
        match self {
            Kind::Config => b"vault object v1 config",
            Kind::Index => b"vault object v1 index",
            Kind::Snapshot => b"vault object v1 snapshot",
            Kind::Lock => b"vault object v1 lock",
            Kind::Mirror => b"vault object v1 mirror",
            Kind::Forget => b"vault object v1 forget",
            Kind::Export => b"vault object v1 export",
            Kind::Mark => b"vault object v1 mark",
            Kind::Revival => b"vault object v1 revival",
            Kind::Deletion => b"vault object v1 deletion",
            Kind::Format => b"vault object v1 format",
        }
    }
}

/// Compresses `body` with zstd at `level` unless that does not make it smaller.
pub fn compress(body: &[u8], level: i32) -> (u8, Vec<u8>) {
    match zstd::bulk::compress(body, level) {
        Ok(c) if c.len() < body.len() => (COMPRESS_ZSTD, c),
        _ => (COMPRESS_NONE, body.to_vec()),
    }
}

fn payload(body: &[u8]) -> Vec<u8> {
    let (flag, data) = compress(body, 3);
    let mut payload = Vec::with_capacity(data.len() + 1);
    payload.push(flag);
    payload.extend_from_slice(&data);
    payload
}

/// Seals an object as its kind and the repository's format ask: snapshots under the
/// host key and admin-only kinds with an admin tag in format 4 (§20).
pub fn seal(keys: &Keys, kind: Kind, body: &[u8]) -> Vec<u8> {
    match keys.roles() {
        Some(r) if kind == Kind::Snapshot => {
            let mut out = vec![OBJECT_HOST];
            roles::start_unit(keys, r, Sealing::Host, &mut out).seal_into(
                kind.aad(),
                &payload(body),
                &mut out,
            );
            out
        }
        Some(_) if kind.admin_only() => seal_admin(keys, kind, body),
        _ => seal_plain(keys, kind, body),
    }
}

fn seal_plain(keys: &Keys, kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut out = vec![OBJECT_VERSION];
    keys.cipher.seal_into(kind.aad(), &payload(body), &mut out);
    out
}

/// Seals with an admin tag in format 4; a backup-role key cannot make one and seals
/// plainly, which full keys then refuse to believe.
pub fn seal_admin(keys: &Keys, kind: Kind, body: &[u8]) -> Vec<u8> {
    let Some(r) = keys.roles() else {
        return seal_plain(keys, kind, body);
    };
    let mut out = vec![OBJECT_ADMIN];
    keys.cipher.seal_into(kind.aad(), &payload(body), &mut out);
    match r.admin_tag(&out) {
        Some(tag) => {
            out.extend_from_slice(&tag);
            out
        }
        None => seal_plain(keys, kind, body),
    }
}

/// Opens an object; in format 4 an admin-only kind must carry a valid admin tag.
pub fn open(keys: &Keys, kind: Kind, stored: &[u8]) -> Result<Vec<u8>> {
    let (body, authenticated) = open_authenticated(keys, kind, stored)?;
    if kind.admin_only() && !authenticated {
        return Err(FormatError::Unauthenticated);
    }
    Ok(body)
}

/// Opens an object and says whether a full key vouches for it: any object below
/// format 4, one with a valid admin tag in format 4 (index files that supersede others
/// need it, §20).
pub fn open_authenticated(keys: &Keys, kind: Kind, stored: &[u8]) -> Result<(Vec<u8>, bool)> {
    keys.open_either(|k| open_authenticated_with(k, kind, stored))
}

fn open_authenticated_with(keys: &Keys, kind: Kind, stored: &[u8]) -> Result<(Vec<u8>, bool)> {
    let (&version, rest) = stored
        .split_first()
        .ok_or(FormatError::Truncated("empty object"))?;
    match (version, keys.roles()) {
        (OBJECT_VERSION, r) => {
            let body = unpack(&keys.cipher.open(kind.aad(), rest)?)?;
            Ok((body, r.is_none_or(|r| !r.requires_admin())))
        }
        (OBJECT_HOST, Some(_)) => {
            let (cipher, at) = roles::open_unit(keys, Sealing::Host, rest)?;
            Ok((unpack(&cipher.open(kind.aad(), &rest[at..])?)?, false))
        }
        (OBJECT_ADMIN, Some(r)) => {
            let at = stored
                .len()
                .checked_sub(ADMIN_TAG_LEN)
                .filter(|&at| at > 1)
                .ok_or(FormatError::Truncated("admin tag"))?;
            r.check_admin_tag(&stored[..at], &stored[at..])?;
            Ok((
                unpack(&keys.cipher.open(kind.aad(), &stored[1..at])?)?,
                true,
            ))
        }
        _ => Err(FormatError::Version {
            what: "object",
            version: version.into(),
        }),
    }
}

/// [`open`] for bytes the caller gives up: they are decrypted where they lie.
pub fn open_owned(keys: &Keys, kind: Kind, mut stored: Vec<u8>) -> Result<Vec<u8>> {
    let admin_checked = kind.admin_only() && keys.roles().is_some();
    if stored.first() != Some(&OBJECT_VERSION) || admin_checked {
        return open(keys, kind, &stored);
    }
    let body = &mut stored[1..];
    let len = keys.open_either(|k| k.cipher.open_in_place(kind.aad(), body).map(|p| p.len()))?;
    unpack(&body[NONCE_LEN..NONCE_LEN + len])
}

/// An opened object's body, from its payload: a compression flag, then the bytes.
fn unpack(payload: &[u8]) -> Result<Vec<u8>> {
    let (&flag, data) = payload
        .split_first()
        .ok_or(FormatError::Truncated("object payload"))?;
    match flag {
        COMPRESS_NONE => Ok(data.to_vec()),
        COMPRESS_ZSTD => decompress_exact(data, object_limit(data.len())),
        other => Err(FormatError::malformed(
            "object",
            format!("compression {other}"),
        )),
    }
}

/// Decompresses one zstd frame, refusing output larger than `limit`, into a buffer of the
/// size its header declares when it does: grown by doubling instead, an index file's
/// body took up to twice its room while the file was decoded.
pub fn decompress_exact(data: &[u8], limit: usize) -> Result<Vec<u8>> {
    match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n <= limit as u64 => decompress(data, n as usize),
        _ => decompress_stream(data, limit),
    }
}

/// The most an object of `compressed` bytes may expand to. vault's objects (JSON)
/// compress a few times over, so a thousandfold allowance never refuses a real one, while
/// a crafted frame cannot make a reader allocate without bound.
fn object_limit(compressed: usize) -> usize {
    compressed.saturating_mul(1000).max(16 << 20)
}

/// Outputs up to this size are decompressed in one call into a buffer of exactly the
/// declared size; larger ones stream.
const MAX_BULK: usize = 64 << 20;

/// Decompresses one zstd frame, refusing output larger than `limit`.
pub fn decompress(data: &[u8], limit: usize) -> Result<Vec<u8>> {
    if limit > MAX_BULK {
        return decompress_stream(data, limit);
    }
    use std::cell::RefCell;
    // One context per thread: restore decompresses many small blobs.
    thread_local! {
        static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }
    DCTX.with_borrow_mut(|slot| {
        let d = match slot {
            Some(d) => d,
            None => slot.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| FormatError::malformed("zstd context", e))?,
            ),
        };
        // The output buffer holds exactly `limit` bytes: a frame that would grow
        // beyond what its envelope declares fails instead of allocating more.
        let mut out = Vec::with_capacity(limit);
        d.decompress_to_buffer(data, &mut out)
            .map_err(|e| FormatError::malformed("zstd frame", e))?;
        Ok(out)
    })
}

/// Seals and appends the keyless checksum (config and locks).
pub fn seal_checksummed(keys: &Keys, kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut out = seal(keys, kind, body);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Verifies the keyless checksum of a config or lock file; returns the sealed part.
pub fn verify_checksum(stored: &[u8]) -> Result<&[u8]> {
    if stored.len() < CHECKSUM_LEN + 1 {
        return Err(FormatError::Truncated("checksummed object"));
    }
    let (body, sum) = stored.split_at(stored.len() - CHECKSUM_LEN);
    if blake3::hash(body).as_bytes() != sum {
        return Err(FormatError::Checksum);
    }
    Ok(body)
}

pub fn open_checksummed(keys: &Keys, kind: Kind, stored: &[u8]) -> Result<Vec<u8>> {
    open(keys, kind, verify_checksum(stored)?)
}

fn decompress_stream(data: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut dec = zstd::stream::read::Decoder::new(data)
        .map_err(|e| FormatError::malformed("zstd frame", e))?;
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    use std::io::Read;
    let n = (&mut dec)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| FormatError::malformed("zstd frame", e))?;
    if n as u64 > limit {
        return Err(FormatError::malformed("zstd frame", "larger than declared"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::crypto::MasterKey;

    #[test]
    fn round_trip_and_kind_binding() {
        let keys = MasterKey::generate().derive();
        let body = b"{\"a\":1}".repeat(100);
        let s = seal(&keys, Kind::Snapshot, &body);
        assert_eq!(open(&keys, Kind::Snapshot, &s).unwrap(), body);
        assert_eq!(open(&keys, Kind::Index, &s), Err(FormatError::BadMac));
        // Opened where it lies, the same; and no less checked.
        assert_eq!(open_owned(&keys, Kind::Snapshot, s.clone()).unwrap(), body);
        assert_eq!(
            open_owned(&keys, Kind::Index, s.clone()),
            Err(FormatError::BadMac)
        );
        let mut flipped = s.clone();
        flipped[20] ^= 1;
        assert_eq!(
            open_owned(&keys, Kind::Snapshot, flipped),
            Err(FormatError::BadMac)
        );
        let mut newer = s;
        newer[0] += 1;
        assert!(matches!(
            open_owned(&keys, Kind::Snapshot, newer),
            Err(FormatError::Version { .. })
        ));
    }

    /// A frame that declares its size is decompressed into exactly that room.
    #[test]
    fn frames_decompress_into_the_size_they_declare() {
        let body = b"0123456789".repeat(10_000);
        let frame = zstd::bulk::compress(&body, 3).unwrap();
        let out = decompress_exact(&frame, 1 << 20).unwrap();
        assert_eq!(out, body);
        assert_eq!(out.capacity(), body.len());
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let keys = MasterKey::generate().derive();
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
        let mut payload = vec![COMPRESS_ZSTD];
        payload.extend_from_slice(&bomb);
        let mut sealed = vec![OBJECT_VERSION];
        keys.cipher
            .seal_into(Kind::Index.aad(), &payload, &mut sealed);
        assert!(matches!(
            open(&keys, Kind::Index, &sealed),
            Err(FormatError::Malformed { .. })
        ));
        // A blob may not exceed its declared length either.
        assert!(decompress(&bomb, 1 << 20).is_err());
    }

    #[test]
    fn checksum_detects_flip() {
        let keys = MasterKey::generate().derive();
        let mut s = seal_checksummed(&keys, Kind::Config, b"cfg");
        assert_eq!(open_checksummed(&keys, Kind::Config, &s).unwrap(), b"cfg");
        s[3] ^= 0x40;
        assert_eq!(verify_checksum(&s), Err(FormatError::Checksum));
    }
}
