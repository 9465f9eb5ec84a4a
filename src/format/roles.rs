//! Roles (format 4, spec §20): a backup-role key adds snapshots without being able to
//! read other hosts' snapshots and trees, any file contents once stored, or to write
//! what only a full key may (forget, prune, mirror and format records).
//!
//! - File contents are sealed to the repository's X25519 public key: each writing
//!   process draws an ephemeral key pair, and every data unit starts with its public
//!   half, sealed under the shared key so the storage provider cannot link units.
//! - Trees and snapshots are sealed under their host's key, which a full key derives
//!   for any host and a backup-role key holds for its own host only; each starts with
//!   its host id, sealed likewise.
//! - Records only a full key may write carry a keyed BLAKE3 tag under the admin key,
//!   which full keys derive and backup-role keys lack.

use std::collections::HashMap;
use std::sync::Mutex;

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::crypto::{Cipher, Keys, MasterKey, OVERHEAD, fill_random};
use super::error::{FormatError, Result};

const CTX_X25519: &str = "vault 2026-12-03 repository x25519 secret v1";
const CTX_ADMIN: &str = "vault 2026-12-03 admin record key v1";
const CTX_HOST_ROOT: &str = "vault 2026-12-03 host root key v1";
const CTX_HOST_ID: &str = "vault 2026-12-03 host id v1";
const CTX_HOST_KEY: &str = "vault 2026-12-03 host key v1";
const CTX_UNIT: &str = "vault 2026-12-03 data unit key v1";

/// Associated data of a data unit's sealed ephemeral public key.
const EPK_AAD: &[u8] = b"vault unit epk v1";
/// Associated data of a tree unit's or snapshot's sealed host id.
const HOST_AAD: &[u8] = b"vault unit host v1";

pub const HOST_ID_LEN: usize = 16;
/// Bytes before a data unit's sealed payload: its sealed ephemeral public key.
pub const EPK_PREFIX_LEN: usize = 32 + OVERHEAD;
/// Bytes before a tree unit's (or snapshot's) sealed payload: its sealed host id.
pub const HOST_PREFIX_LEN: usize = HOST_ID_LEN + OVERHEAD;
/// Length of the admin tag of a record only a full key may write.
pub const ADMIN_TAG_LEN: usize = 32;

/// A host's tree and snapshot key.
pub struct HostKey {
    pub id: [u8; HOST_ID_LEN],
    key: Zeroizing<[u8; 32]>,
    cipher: Cipher,
}

impl HostKey {
    pub fn new(id: [u8; HOST_ID_LEN], key: [u8; 32]) -> HostKey {
        HostKey {
            id,
            cipher: Cipher::new(&key),
            key: Zeroizing::new(key),
        }
    }

    pub fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

/// What only a full key holds.
struct FullSecrets {
    secret: StaticSecret,
    admin: Zeroizing<[u8; 32]>,
    host_root: Zeroizing<[u8; 32]>,
}

/// The ephemeral key pair data units of this process are sealed with.
struct Writer {
    public: [u8; 32],
    cipher: Cipher,
}

/// The role keys of an open format 4 repository.
pub struct RoleKeys {
    public: PublicKey,
    full: Option<FullSecrets>,
    own: HostKey,
    writer: Writer,
    /// Unit keys by ephemeral public key (full keys): one X25519 per writing process.
    units: Mutex<HashMap<[u8; 32], Cipher>>,
    /// Host keys by host id (full keys).
    hosts: Mutex<HashMap<[u8; HOST_ID_LEN], Cipher>>,
}

/// The repository's X25519 public key.
pub fn public_key(master: &MasterKey) -> [u8; 32] {
    PublicKey::from(&repo_secret(master)).to_bytes()
}

fn repo_secret(master: &MasterKey) -> StaticSecret {
    StaticSecret::from(blake3::derive_key(CTX_X25519, master.as_bytes()))
}

fn host_root(master: &MasterKey) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(blake3::derive_key(CTX_HOST_ROOT, master.as_bytes()))
}

/// A host's id: who can tell two hosts' ids apart learns nothing of their names.
fn host_id(root: &[u8; 32], host: &str) -> [u8; HOST_ID_LEN] {
    let mut material = Zeroizing::new(root.to_vec());
    material.extend_from_slice(host.as_bytes());
    let full = blake3::derive_key(CTX_HOST_ID, &material);
    let mut id = [0u8; HOST_ID_LEN];
    id.copy_from_slice(&full[..HOST_ID_LEN]);
    id
}

fn host_key(root: &[u8; 32], id: &[u8; HOST_ID_LEN]) -> [u8; 32] {
    let mut material = Zeroizing::new(root.to_vec());
    material.extend_from_slice(id);
    blake3::derive_key(CTX_HOST_KEY, &material)
}

/// The key of host `host`, as a full key derives it (and `key add --role backup` stores).
pub fn derive_host_key(master: &MasterKey, host: &str) -> HostKey {
    let root = host_root(master);
    let id = host_id(&root, host);
    HostKey::new(id, host_key(&root, &id))
}

/// The key a data unit is sealed with: from the X25519 shared secret of the writer's
/// ephemeral key and the repository key, bound to both public halves.
fn unit_key(shared: &[u8; 32], epk: &[u8; 32], public: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut material = Zeroizing::new(Vec::with_capacity(96));
    material.extend_from_slice(shared);
    material.extend_from_slice(epk);
    material.extend_from_slice(public);
    Zeroizing::new(blake3::derive_key(CTX_UNIT, &material))
}

impl Writer {
    fn new(public: &PublicKey) -> Writer {
        let mut seed = Zeroizing::new([0u8; 32]);
        fill_random(seed.as_mut());
        let ephemeral = StaticSecret::from(*seed);
        let epk = PublicKey::from(&ephemeral).to_bytes();
        let shared = Zeroizing::new(ephemeral.diffie_hellman(public).to_bytes());
        Writer {
            public: epk,
            cipher: Cipher::new(&unit_key(&shared, &epk, public.as_bytes())),
        }
    }
}

impl RoleKeys {
    /// The role keys of a full key, writing as host `host`.
    pub fn full(master: &MasterKey, host: &str) -> RoleKeys {
        let secret = repo_secret(master);
        let public = PublicKey::from(&secret);
        let root = host_root(master);
        let own = derive_host_key(master, host);
        RoleKeys {
            writer: Writer::new(&public),
            public,
            full: Some(FullSecrets {
                secret,
                admin: Zeroizing::new(blake3::derive_key(CTX_ADMIN, master.as_bytes())),
                host_root: root,
            }),
            own,
            units: Mutex::new(HashMap::new()),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// The role keys of a backup-role key: the repository's public key and its host's key.
    pub fn backup(public: [u8; 32], own: HostKey) -> RoleKeys {
        let public = PublicKey::from(public);
        RoleKeys {
            writer: Writer::new(&public),
            public,
            full: None,
            own,
            units: Mutex::new(HashMap::new()),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_full(&self) -> bool {
        self.full.is_some()
    }

    pub fn public(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// The id of the host this key writes trees and snapshots as.
    pub fn own_host(&self) -> &HostKey {
        &self.own
    }

    /// The admin tag of `bytes`; None for a backup-role key, which cannot make one.
    pub fn admin_tag(&self, bytes: &[u8]) -> Option<[u8; ADMIN_TAG_LEN]> {
        let full = self.full.as_ref()?;
        Some(*blake3::keyed_hash(&full.admin, bytes).as_bytes())
    }

    /// Checks an admin tag. A backup-role key cannot check one and accepts it: what it
    /// reads of such records (forgotten snapshots, marks) only ever makes it keep or
    /// store more.
    pub fn check_admin_tag(&self, bytes: &[u8], tag: &[u8]) -> Result<()> {
        let Some(full) = self.full.as_ref() else {
            return Ok(());
        };
        let tag: [u8; ADMIN_TAG_LEN] = tag.try_into().map_err(|_| FormatError::Unauthenticated)?;
        // blake3::Hash compares in constant time.
        if blake3::keyed_hash(&full.admin, bytes) == blake3::Hash::from_bytes(tag) {
            Ok(())
        } else {
            Err(FormatError::Unauthenticated)
        }
    }

    /// Whether records of this kind must carry an admin tag to be believed.
    pub fn requires_admin(&self) -> bool {
        self.is_full()
    }

    fn unit_cipher(&self, epk: [u8; 32]) -> Result<Cipher> {
        let full = self
            .full
            .as_ref()
            .ok_or(FormatError::NotPermitted("file contents"))?;
        let mut units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = units.get(&epk) {
            return Ok(c.clone());
        }
        let shared = full.secret.diffie_hellman(&PublicKey::from(epk));
        if !shared.was_contributory() {
            return Err(FormatError::malformed(
                "data unit",
                "ephemeral key of low order",
            ));
        }
        let shared = Zeroizing::new(shared.to_bytes());
        let c = Cipher::new(&unit_key(&shared, &epk, self.public.as_bytes()));
        units.insert(epk, c.clone());
        Ok(c)
    }

    fn host_cipher(&self, id: [u8; HOST_ID_LEN]) -> Result<Cipher> {
        if id == self.own.id {
            return Ok(self.own.cipher.clone());
        }
        let full = self.full.as_ref().ok_or(FormatError::NotPermitted(
            "another host's trees and snapshots",
        ))?;
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let c = hosts
            .entry(id)
            .or_insert_with(|| Cipher::new(&host_key(&full.host_root, &id)));
        Ok(c.clone())
    }
}

/// How a unit (or an object) of format 4 is sealed: which prefix, which key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sealing {
    /// To the repository's public key (file contents).
    Public,
    /// Under the writer's host key (trees, snapshots).
    Host,
}

/// Appends the prefix of a unit sealed as `how` and returns the cipher of its payload.
pub fn start_unit<'k>(
    keys: &'k Keys,
    roles: &'k RoleKeys,
    how: Sealing,
    out: &mut Vec<u8>,
) -> &'k Cipher {
    match how {
        Sealing::Public => {
            keys.cipher.seal_into(EPK_AAD, &roles.writer.public, out);
            &roles.writer.cipher
        }
        Sealing::Host => {
            keys.cipher.seal_into(HOST_AAD, &roles.own.id, out);
            &roles.own.cipher
        }
    }
}

/// The cipher of a unit sealed as `how` and where its sealed payload starts.
pub fn open_unit(keys: &Keys, how: Sealing, stored: &[u8]) -> Result<(Cipher, usize)> {
    let roles = keys
        .roles()
        .ok_or_else(|| FormatError::malformed("unit", "format 4 sealing in an older repository"))?;
    match how {
        Sealing::Public => {
            let prefix = stored
                .get(..EPK_PREFIX_LEN)
                .ok_or(FormatError::Truncated("data unit"))?;
            let epk: [u8; 32] = keys
                .cipher
                .open(EPK_AAD, prefix)?
                .try_into()
                .map_err(|_| FormatError::malformed("data unit", "ephemeral key length"))?;
            Ok((roles.unit_cipher(epk)?, EPK_PREFIX_LEN))
        }
        Sealing::Host => {
            let prefix = stored
                .get(..HOST_PREFIX_LEN)
                .ok_or(FormatError::Truncated("host-sealed unit"))?;
            let id: [u8; HOST_ID_LEN] = keys
                .cipher
                .open(HOST_AAD, prefix)?
                .try_into()
                .map_err(|_| FormatError::malformed("host-sealed unit", "host id length"))?;
            Ok((roles.host_cipher(id)?, HOST_PREFIX_LEN))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(master: &MasterKey, host: &str) -> Keys {
        master.derive().with_roles(RoleKeys::full(master, host))
    }

    fn backup(master: &MasterKey, host: &str) -> Keys {
        let own = derive_host_key(master, host);
        master
            .derive()
            .with_roles(RoleKeys::backup(public_key(master), own))
    }

    fn seal(keys: &Keys, how: Sealing, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let cipher = start_unit(keys, keys.roles().unwrap(), how, &mut out);
        cipher.seal_into(b"aad", body, &mut out);
        out
    }

    fn open(keys: &Keys, how: Sealing, stored: &[u8]) -> Result<Vec<u8>> {
        let (cipher, at) = open_unit(keys, how, stored)?;
        cipher.open(b"aad", &stored[at..])
    }

    #[test]
    fn a_backup_key_writes_contents_it_cannot_read_and_a_full_key_can() {
        let m = MasterKey::generate();
        let laptop = backup(&m, "laptop");
        let unit = seal(&laptop, Sealing::Public, b"contents");
        assert_eq!(
            open(&laptop, Sealing::Public, &unit),
            Err(FormatError::NotPermitted("file contents"))
        );
        assert_eq!(
            open(&full(&m, "server"), Sealing::Public, &unit).unwrap(),
            b"contents"
        );
        // Two processes: two ephemeral keys, both opened.
        let other = seal(&backup(&m, "laptop"), Sealing::Public, b"more");
        assert_eq!(
            open(&full(&m, "x"), Sealing::Public, &other).unwrap(),
            b"more"
        );
    }

    #[test]
    fn trees_open_for_their_host_and_full_keys_only() {
        let m = MasterKey::generate();
        let tree = seal(&backup(&m, "laptop"), Sealing::Host, b"tree");
        assert_eq!(
            open(&backup(&m, "laptop"), Sealing::Host, &tree).unwrap(),
            b"tree"
        );
        assert_eq!(
            open(&full(&m, "server"), Sealing::Host, &tree).unwrap(),
            b"tree"
        );
        assert!(matches!(
            open(&backup(&m, "desktop"), Sealing::Host, &tree),
            Err(FormatError::NotPermitted(_))
        ));
        // A full key writing as the laptop writes what the laptop's backup key reads.
        let by_full = seal(&full(&m, "laptop"), Sealing::Host, b"t2");
        assert_eq!(
            open(&backup(&m, "laptop"), Sealing::Host, &by_full).unwrap(),
            b"t2"
        );
    }

    #[test]
    fn only_full_keys_make_admin_tags_and_they_check_them() {
        let m = MasterKey::generate();
        let f = full(&m, "h");
        let b = backup(&m, "h");
        let tag = f.roles().unwrap().admin_tag(b"record").unwrap();
        assert!(b.roles().unwrap().admin_tag(b"record").is_none());
        f.roles().unwrap().check_admin_tag(b"record", &tag).unwrap();
        assert_eq!(
            f.roles().unwrap().check_admin_tag(b"forged", &tag),
            Err(FormatError::Unauthenticated)
        );
        let other = full(&MasterKey::generate(), "h");
        assert!(
            other
                .roles()
                .unwrap()
                .check_admin_tag(b"record", &tag)
                .is_err()
        );
    }

    #[test]
    fn a_low_order_ephemeral_key_is_refused() {
        let m = MasterKey::generate();
        let f = full(&m, "h");
        let mut unit = Vec::new();
        f.cipher.seal_into(EPK_AAD, &[0u8; 32], &mut unit);
        f.cipher.seal_into(b"aad", b"x", &mut unit);
        assert!(matches!(
            open(&f, Sealing::Public, &unit),
            Err(FormatError::Malformed { .. })
        ));
    }
}

/// Appendix A of the spec: the role keys of the vector master key `00 01 … 1f`.
#[cfg(test)]
mod vectors {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn spec_test_vectors() {
        let m = MasterKey::from_bytes(std::array::from_fn(|i| i as u8));
        let secret = blake3::derive_key(CTX_X25519, m.as_bytes());
        let admin = blake3::derive_key(CTX_ADMIN, m.as_bytes());
        let root = host_root(&m);
        let laptop = derive_host_key(&m, "laptop");
        let public = public_key(&m);
        let ephemeral = StaticSecret::from(std::array::from_fn::<u8, 32, _>(|i| 0x20 + i as u8));
        let epk = PublicKey::from(&ephemeral).to_bytes();
        let shared = ephemeral
            .diffie_hellman(&PublicKey::from(public))
            .to_bytes();
        let unit = unit_key(&shared, &epk, &public);
        let tag = blake3::keyed_hash(&admin, b"vault");
        let got = [
            hex(&secret),
            hex(&public),
            hex(&admin),
            hex(&*root),
            hex(&laptop.id),
            hex(laptop.key_bytes()),
            hex(&epk),
            hex(&*unit),
            tag.to_hex().to_string(),
        ];
        assert_eq!(got, VECTORS);
    }

    const VECTORS: [&str; 9] = [
        "7cca6e1da03cbd274109703dd89fd001d5f0605bf8e156fa929fc761ab7449a4",
        "27535428d9369345086c2e4827001cc24e482fab3ed389f6ea4bcaec6496fb5a",
        "459ef08b172e9787707675c06bc57a73c45da6227caac3c8518d52e913546730",
        "ca5adbd25ac54e89621170589ebd0661f7c209312130250d13bc02f41e9e713d",
        "dffb9d33360baa1cbefdfa632d5387b3",
        "53ea8b039a4ac5ac26a3584e5b093a101de91f035c2062769cb08171cca4add9",
        "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254",
        "ff520cee0cfa3c11d41fe06bb041d5630fa2980d4538a9ae196496be240b43c1",
        "ccf2d81fb5f17646910b3d9a000b6513bcfefd74032317c215c03400c800ec4c",
    ];
}
