//! Keys and authenticated encryption. Everything stored is sealed with AES-256-GCM-SIV under
//! a random 96-bit nonce; the associated data binds each ciphertext to what it claims to be.

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::error::{FormatError, Result};
use super::id::Id;

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

const CTX_ENC: &str = "vault 2026-11-21 encryption key v1";
const CTX_ID: &str = "vault 2026-11-21 blob id key v1";
const CTX_CHUNKER: &str = "vault 2026-11-21 chunker seed v1";
const CTX_GEAR: &str = "vault 2026-12-03 chunker gear key v2";

pub fn fill_random(buf: &mut [u8]) {
    // The OS RNG failing leaves no safe way to continue: every nonce and key depends on it.
    getrandom::fill(buf).expect("operating system random number generator failed");
}

/// The repository's secret: 32 random bytes from which every working key is derived.
///
/// After a key rotation (format 5) the keys that name and cut content (blob id key,
/// chunker seed, gear key) come from a separate content key, the master key before the
/// first rotation, so that blob ids and chunk boundaries survive a new master key.
#[derive(Clone)]
pub struct MasterKey {
    master: [u8; 32],
    content: Option<[u8; 32]>,
    /// While a rotation to this master key is in progress: the one it replaces.
    previous: Option<[u8; 32]>,
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        fill_random(&mut k);
        MasterKey::from_bytes(k)
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        MasterKey {
            master: b,
            content: None,
            previous: None,
        }
    }

    /// This master key during a rotation from `previous`, whose objects it still opens.
    pub fn with_previous(mut self, previous: [u8; 32]) -> Self {
        self.previous = Some(previous);
        self
    }

    /// This key once its rotation is done: the previous key dropped.
    pub fn without_previous(&self) -> MasterKey {
        MasterKey {
            master: self.master,
            content: self.content,
            previous: None,
        }
    }

    /// The master key a rotation in progress replaces, with the same content key.
    pub fn previous(&self) -> Option<MasterKey> {
        self.previous.map(|p| MasterKey {
            master: p,
            content: Some(*self.content()),
            previous: None,
        })
    }

    /// This master key with content keys derived from `content` instead of itself.
    pub fn with_content(mut self, content: [u8; 32]) -> Self {
        self.content = Some(content);
        self
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.master
    }

    /// The content key where it differs from the master key (after a rotation).
    pub fn content_bytes(&self) -> Option<&[u8; 32]> {
        self.content.as_ref()
    }

    /// What blob ids and chunk boundaries derive from.
    fn content(&self) -> &[u8; 32] {
        self.content.as_ref().unwrap_or(&self.master)
    }

    pub fn derive(&self) -> Keys {
        Keys::from_parts(&self.enc_key(), &self.id_key())
    }

    /// The key that seals every object but blob contents, snapshots (format 4) and key
    /// payloads; a backup-role key file carries it.
    pub fn enc_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(CTX_ENC, &self.master))
    }

    /// The key of blob ids; a backup-role key file carries it to deduplicate.
    pub fn id_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(CTX_ID, self.content()))
    }

    /// The chunker's secrets, whichever gear table a config selects.
    pub fn chunker_secret(&self) -> ChunkerSecret {
        ChunkerSecret {
            seed: self.chunker_seed(),
            gear: self.gear_key(),
        }
    }

    /// The 64-bit seed of the XOR-seeded gear table (§16), which repositories whose
    /// config names no gear keep so that their blobs keep deduplicating.
    pub fn chunker_seed(&self) -> u64 {
        let seed = Zeroizing::new(blake3::derive_key(CTX_CHUNKER, self.content()));
        let mut seed8 = Zeroizing::new([0u8; 8]);
        seed8.copy_from_slice(&seed[..8]);
        u64::from_le_bytes(*seed8)
    }

    /// The key of the PRF gear table (§16, config `"gear": "prf-v2"`). Derived only
    /// where a chunker is built, not with the other working keys: most commands never
    /// chunk.
    pub fn gear_key(&self) -> GearKey {
        GearKey(blake3::derive_key(CTX_GEAR, self.content()))
    }
}

/// What keys a repository's chunker: the XOR seed and the PRF gear key (§16). Held
/// by full keys (derived) and backup-role keys (stored), so both cut the same chunks.
pub struct ChunkerSecret {
    pub seed: u64,
    pub gear: GearKey,
}

/// The 256-bit key whose keyed BLAKE3 gives each gear table entry. Whoever holds it
/// can predict every chunk boundary, so it is wiped like the other keys.
pub struct GearKey([u8; 32]);

impl GearKey {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        GearKey(b)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for GearKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for GearKey {}

impl std::fmt::Debug for GearKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GearKey(<secret>)")
    }
}

/// Key bytes are wiped when dropped, so that memory reused later (or swapped out, or
/// read from a core file) does not hold them.
impl Drop for MasterKey {
    fn drop(&mut self) {
        self.master.zeroize();
        self.content.zeroize();
        self.previous.zeroize();
    }
}

impl ZeroizeOnDrop for MasterKey {}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<secret>)")
    }
}

/// An AES-256-GCM-SIV cipher with the nonce-prefixed message layout used everywhere.
#[derive(Clone)]
pub struct Cipher(Aes256GcmSiv);

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Self {
        Cipher(Aes256GcmSiv::new(key.into()))
    }

    /// Seals `plaintext` into `nonce || ciphertext || tag`, appended to `out`.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let start = out.len();
        out.reserve(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let body = &mut out[start + NONCE_LEN..];
        let tag = self
            .0
            .encrypt_inout_detached(&Nonce::from(nonce), aad, body.into())
            .expect("plaintext within AES-GCM-SIV limits");
        out.extend_from_slice(&tag);
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(aad, plaintext, &mut out);
        out
    }

    /// Opens `nonce || ciphertext || tag`; fails on any modification or the wrong key.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let (nonce, body, tag) = split_sealed(sealed)?;
        let mut buf = body.to_vec();
        self.decrypt(aad, nonce, &mut buf, tag)?;
        Ok(buf)
    }

    /// Opens `nonce || ciphertext || tag` where it lies; returns the plaintext, which is
    /// the ciphertext's part of `sealed`. Spares a copy of a large object (an index file)
    /// its bytes are read into.
    pub fn open_in_place<'b>(&self, aad: &[u8], sealed: &'b mut [u8]) -> Result<&'b mut [u8]> {
        let (nonce, body, tag) = split_sealed(sealed)?;
        let (nonce, tag) = (*nonce, *tag);
        let at = NONCE_LEN..NONCE_LEN + body.len();
        let body = &mut sealed[at];
        self.decrypt(aad, &nonce, body, &tag)?;
        Ok(body)
    }

    fn decrypt(
        &self,
        aad: &[u8],
        nonce: &[u8; NONCE_LEN],
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        self.0
            .decrypt_inout_detached(&Nonce::from(*nonce), aad, body.into(), &(*tag).into())
            .map_err(|_| FormatError::BadMac)
    }
}

/// The parts of `nonce || ciphertext || tag`.
fn split_sealed(sealed: &[u8]) -> Result<(&[u8; NONCE_LEN], &[u8], &[u8; TAG_LEN])> {
    if sealed.len() < OVERHEAD {
        return Err(FormatError::Truncated(
            "sealed message shorter than its overhead",
        ));
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce = nonce.try_into().map_err(|_| FormatError::BadMac)?;
    let tag = tag.try_into().map_err(|_| FormatError::BadMac)?;
    Ok((nonce, body, tag))
}

/// The working keys of an open repository.
#[derive(Clone)]
pub struct Keys {
    pub cipher: Cipher,
    id_key: [u8; 32],
    /// Format 4 (§20): the role keys; None in older repositories, whose every key
    /// holder reads and writes everything with `cipher`.
    roles: Option<std::sync::Arc<super::roles::RoleKeys>>,
    /// While a key rotation is in progress (format 5): the keys of the master key
    /// being replaced, which open what is not resealed yet. Nothing is sealed with them.
    previous: Option<std::sync::Arc<Keys>>,
}

/// The cipher wipes its own round keys (aes's "zeroize" feature); the id key is wiped
/// here. The chunker's secrets are not working keys: [`MasterKey::chunker_seed`] and
/// [`MasterKey::gear_key`] derive them where a chunker is built.
impl Drop for Keys {
    fn drop(&mut self) {
        self.id_key.zeroize();
    }
}

impl ZeroizeOnDrop for Keys {}

impl Keys {
    pub fn from_parts(enc: &[u8; 32], id_key: &[u8; 32]) -> Keys {
        Keys {
            cipher: Cipher::new(enc),
            id_key: *id_key,
            roles: None,
            previous: None,
        }
    }

    /// These keys, opening also what `previous` sealed (a rotation in progress).
    pub fn with_previous(mut self, previous: Keys) -> Keys {
        self.previous = Some(std::sync::Arc::new(previous));
        self
    }

    pub fn previous(&self) -> Option<&Keys> {
        self.previous.as_deref()
    }

    /// These keys as a repository before format 4 reads with them: no role keys, so
    /// no admin tag is asked for.
    pub fn without_roles(&self) -> Keys {
        let mut k = self.without_previous();
        k.roles = None;
        k
    }

    /// These keys alone: what opens with them is sealed under the current master key.
    pub fn without_previous(&self) -> Keys {
        let mut k = self.clone();
        k.previous = None;
        k
    }

    /// `open` under these keys and, when they fail and a rotation is in progress, under
    /// the previous ones. The first error is the one returned: it names what these
    /// keys found wrong.
    pub fn open_either<T>(&self, mut open: impl FnMut(&Keys) -> Result<T>) -> Result<T> {
        match (open(self), self.previous()) {
            (Err(e), Some(p)) => open(p).map_err(|_| e),
            (r, _) => r,
        }
    }

    /// These keys with the role keys of a format 4 repository.
    pub fn with_roles(mut self, roles: super::roles::RoleKeys) -> Keys {
        self.roles = Some(std::sync::Arc::new(roles));
        self
    }

    pub fn roles(&self) -> Option<&super::roles::RoleKeys> {
        self.roles.as_deref()
    }

    /// Whether these keys read and write everything: any key below format 4, a full
    /// key in format 4.
    pub fn is_full(&self) -> bool {
        self.roles().is_none_or(|r| r.is_full())
    }

    /// The id of a blob: keyed BLAKE3 over its type byte and plaintext, so the storage
    /// provider never sees a plain content hash and a tree can never pose as data.
    pub fn blob_id(&self, blob_type: u8, plaintext: &[u8]) -> Id {
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(&[blob_type]);
        h.update(plaintext);
        Id(*h.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let keys = MasterKey::generate().derive();
        let sealed = keys.cipher.seal(b"aad", b"hello");
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert_eq!(keys.cipher.open(b"aad", &sealed).unwrap(), b"hello");
        assert_eq!(
            keys.cipher.open(b"other", &sealed),
            Err(FormatError::BadMac)
        );
        let mut bad = sealed.clone();
        bad[14] ^= 1;
        assert_eq!(keys.cipher.open(b"aad", &bad), Err(FormatError::BadMac));
        assert!(keys.cipher.open(b"aad", &sealed[..10]).is_err());
    }

    /// What can be checked of zeroizing without reading freed memory: every type that
    /// holds key bytes wipes them on drop.
    #[test]
    fn key_types_zeroize_on_drop() {
        fn wipes<T: ZeroizeOnDrop>() {}
        wipes::<MasterKey>();
        wipes::<Keys>();
        wipes::<GearKey>();
        wipes::<aes::Aes256>(); // inside Aes256GcmSiv: its round keys
    }

    #[test]
    fn blob_ids_are_keyed_and_typed() {
        let a = MasterKey::generate().derive();
        let b = MasterKey::generate().derive();
        assert_ne!(a.blob_id(0, b"x"), b.blob_id(0, b"x"));
        assert_ne!(a.blob_id(0, b"x"), a.blob_id(1, b"x"));
        assert_eq!(a.blob_id(0, b"x"), a.blob_id(0, b"x"));
    }
}
