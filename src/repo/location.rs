//! Repository locations: a local path or a URL, turned into an opendal operator.
//! Locations never hold secrets; credentials come from the environment: the usual
//! `AWS_*`, `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_*`, `B2_*` variables, the
//! ssh agent and `~/.ssh`, `VAULT_WEBDAV_USER` / `VAULT_WEBDAV_PASSWORD` for the
//! repository; a mirror's own `VAULT_MIRROR_<NAME>_*` variables for a mirror, which gets
//! the usual ones only where the user opted in (`Access::generic_credentials`).
//! Credentials never go over plain http to a host that is not loopback unless the user
//! said so (`--insecure-http`, `Access::insecure_http`). Every location gets the
//! command's [`Limits`] (`set_limits`), a mirror its own over them (`set_mirror_limits`).
//!
//! ```text
//! /srv/backup  or  fs:///srv/backup
//! s3://bucket/prefix?endpoint=https://s3.example.com&region=eu-central-1[&virtual_host=true][&storage_class=DEEP_ARCHIVE]
//! sftp://user@host:2222/path/on/server[?key=~/.ssh/id_ed25519&known_hosts=strict|accept|add]
//! webdav://host:port/path  (https: webdavs://)
//! gcs://bucket/prefix   azblob://container/prefix?account=NAME   b2://bucket/prefix?bucket_id=ID
//! ```
//!
//! Any remote location may add `cold=true` (its packs are in a storage class that must be
//! restored before it is read, e.g. by a lifecycle rule) or `cold=false` (they are readable
//! now, e.g. restored for a while); `storage_class=GLACIER` or `DEEP_ARCHIVE` implies
//! `cold=true`.
//!
//! An s3:// mirror may add `object_lock=governance` or `object_lock=compliance`: every
//! object written there gets that retention for the mirror's protection period (see
//! `storage::object_lock`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use opendal::Operator;
use opendal::layers::TimeoutLayer;
use url::Url;

use super::limits::{self, Limits};
use super::storage::object_lock::{Mode as ObjectLockMode, S3Target};

/// A parsed location: the operator to reach it, and whether writes must go through a
/// temporary name (services whose writes are not atomic).
pub struct Opened {
    pub op: Operator,
    /// Where packs (`data/`) are written, when they go to another storage class.
    pub packs_op: Option<Operator>,
    /// Where `write_new` writes when `op` would go through a temporary name of its own
    /// (a local directory: opendal's fs writes to tmp/ and renames).
    pub direct_op: Option<Operator>,
    pub display: String,
    pub remote: bool,
    pub atomic_writes: bool,
    /// Its packs cannot be read before they are restored from a cold storage class.
    pub cold: bool,
    /// Requests it may have in flight: as configured, else its kind's default.
    pub connections: usize,
}

/// Where credentials come from: the environment, where a mirror's own variables
/// (`VAULT_MIRROR_<NAME>_<VAR>`, e.g. VAULT_MIRROR_OFFSITE_AWS_ACCESS_KEY_ID) come before
/// the usual ones, so two mirrors at two vendors can hold two sets of credentials. A
/// mirror's definition can be written by any key holder, so it falls back to the usual
/// secret variables only when `generic` says the user opted in.
struct Creds {
    prefix: Option<String>,
    generic: bool,
}

/// What this host lets a location have, beyond its own credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// The usual variables (AWS_*, VAULT_WEBDAV_*, ...) may serve as its credentials.
    pub generic_credentials: bool,
    /// Credentials may travel over plain http to a host that is not loopback.
    pub insecure_http: bool,
}

/// `--insecure-http` / VAULT_INSECURE_HTTP for this process: every location may get
/// credentials over plain http.
static INSECURE_HTTP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets credentials travel over plain http to any host, for every location opened from now on.
pub fn allow_insecure_http() {
    INSECURE_HTTP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The command's limits (`--limit-upload`, `--limit-download`, `--connections`), for
/// every location opened from now on.
static LIMITS: Mutex<Limits> = Mutex::new(Limits {
    upload: None,
    download: None,
    connections: None,
});

/// Each mirror's own limits (a profile's mirror section), over the command's.
static MIRROR_LIMITS: Mutex<BTreeMap<String, Limits>> = Mutex::new(BTreeMap::new());

/// Sets the limits of every location opened from now on.
pub fn set_limits(l: Limits) {
    *LIMITS.lock().unwrap_or_else(|e| e.into_inner()) = l;
}

/// Sets mirror `name`'s own limits: what they set overrides the command's for it.
pub fn set_mirror_limits(name: &str, l: Limits) {
    MIRROR_LIMITS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string(), l);
}

/// The limits a location gets: the mirror's own (when it is one) over the command's.
fn limits_for(mirror: Option<&str>) -> Limits {
    let base = *LIMITS.lock().unwrap_or_else(|e| e.into_inner());
    let own = mirror.and_then(|m| {
        MIRROR_LIMITS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(m)
            .copied()
    });
    own.map_or(base, |o| o.over(base))
}

/// Requests in flight when nothing says how many. A local disk: one per core (2 to 8),
/// as restore has always used. Object stores and WebDAV answer many requests at once and
/// each costs a round trip, so eight hide the latency of a distant link (rclone uses 4
/// transfers plus 8 checkers, restic 5 connections to s3); an SFTP server serves one
/// session's requests from one process, and vault opens one session per four requests
/// in flight (see `sftp.rs`).
pub fn default_connections(location: &Location) -> usize {
    match location {
        Location::Local(_) => std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8),
        Location::Remote { .. } => 8,
    }
}

/// Variables that locate storage but grant nothing: a mirror may always take them from
/// the usual names.
const NOT_SECRET: [&str; 4] = [
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AZURE_STORAGE_ACCOUNT",
];

/// Credentials handed over by a profile (from a file or other variables): they come
/// before the environment's variables of the same name, since the profile names them
/// explicitly.
static PROVIDED: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// Makes `vars` available as credentials: under their own names for the repository
/// (`prefix` None), or as the mirror's own (`VAULT_MIRROR_<NAME>_<VAR>`).
pub fn provide_credentials(mirror: Option<&str>, vars: BTreeMap<String, String>) {
    let prefix = mirror.map(mirror_prefix).unwrap_or_default();
    if let Ok(mut p) = PROVIDED.lock() {
        p.extend(vars.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
    }
}

impl Creds {
    fn get(&self, var: &str) -> Option<String> {
        let one = |name: &str| {
            let provided = PROVIDED.lock().ok().and_then(|p| p.get(name).cloned());
            provided
                .or_else(|| std::env::var(name).ok())
                .filter(|v| !v.is_empty())
        };
        let fallback = self.generic || NOT_SECRET.contains(&var);
        self.prefix
            .as_ref()
            .and_then(|p| one(&format!("{p}{var}")))
            .or_else(|| fallback.then(|| one(var)).flatten())
    }

    /// Whether the storage library must be kept from finding credentials on its own
    /// (environment, ~/.aws, instance metadata): it would hand a mirror the generic ones.
    fn own_only(&self) -> bool {
        !self.generic
    }
}

/// Refuses to send credentials over plain http to a host that is not loopback, unless
/// the user allowed it. `endpoint` is the http(s) URL the requests go to.
fn plain_http_guard(location: &str, endpoint: &str, has_creds: bool, access: Access) -> Result<()> {
    if !has_creds || !plain_remote_http(endpoint) {
        return Ok(());
    }
    if access.insecure_http || INSECURE_HTTP.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    Err(crate::error::VaultError::Usage(format!(
        "{location}: refusing to send credentials over plain http to {endpoint}: use https, or pass --insecure-http (VAULT_INSECURE_HTTP=1; for a mirror `vault mirror trust NAME --insecure-http`) if the network is private"
    ))
    .into())
}

/// An http:// endpoint (or one that does not parse) whose host is not loopback.
fn plain_remote_http(endpoint: &str) -> bool {
    match Url::parse(endpoint) {
        Ok(u) => u.scheme() != "https" && !u.host().is_some_and(|h| is_loopback(&h)),
        Err(_) => !endpoint.starts_with("https://"),
    }
}

/// 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) and localhost: traffic that never leaves
/// the machine.
pub fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(a) => a.is_loopback(),
        url::Host::Ipv6(a) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The variable prefix of a mirror's own credentials.
pub fn mirror_prefix(name: &str) -> String {
    let up: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("VAULT_MIRROR_{up}_")
}

fn query(url: &Url) -> HashMap<String, String> {
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn bucket_and_root(url: &Url, what: &str) -> Result<(String, String)> {
    let bucket = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
        anyhow!(
            "{url}: give the {what}, as in {}://{what}/prefix",
            url.scheme()
        )
    })?;
    Ok((bucket.to_string(), root_of(url)))
}

fn root_of(url: &Url) -> String {
    let p = url.path().trim_end_matches('/');
    if p.is_empty() {
        "/".into()
    } else {
        p.to_string()
    }
}

/// Opens `location` (a local path or one of the URLs above).
pub fn open(location: &str) -> Result<Opened> {
    let access = Access {
        generic_credentials: true,
        insecure_http: false,
    };
    if object_lock_mode(location).is_ok_and(|m| m.is_some()) {
        log::warn!(
            "{location}: object_lock= takes effect on a protected mirror only; nothing written here is locked"
        );
    }
    open_with(location, None, access, limits_for(None))
}

/// Opens the location of the mirror `name`, with its own credentials, and the usual
/// ones only where `access` allows them.
pub fn open_mirror(location: &str, name: &str, access: Access) -> Result<Opened> {
    open_with(
        location,
        Some(mirror_prefix(name)),
        access,
        limits_for(Some(name)),
    )
}

/// The URL schemes `open` knows, besides `fs://`.
const REMOTE_SCHEMES: [&str; 7] = ["s3", "sftp", "webdav", "webdavs", "gcs", "azblob", "b2"];

/// A location parsed but not opened: nothing created, nothing contacted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local directory (a path, or `fs://` and a path), made absolute.
    Local(std::path::PathBuf),
    /// A URL of one of the remote schemes; `scheme` as written before `://`.
    Remote { scheme: String, url: Url },
}

/// Parses `location` as `open` does, without building an operator (which, for a local
/// path, would create the directory).
pub fn parse(location: &str) -> Result<Location> {
    let absolute =
        |path: &str| std::path::absolute(path).with_context(|| format!("repository path {path}"));
    let Some((scheme, _)) = location.split_once("://") else {
        return Ok(Location::Local(absolute(location)?));
    };
    if scheme == "fs" {
        return Ok(Location::Local(absolute(&location["fs://".len()..])?));
    }
    let url = Url::parse(location).with_context(|| format!("repository location {location}"))?;
    if !REMOTE_SCHEMES.contains(&scheme) {
        bail!(
            "repository {location}: unknown scheme {scheme}:// (use a path, fs://, s3://, sftp://, webdav://, webdavs://, gcs://, azblob:// or b2://)"
        );
    }
    Ok(Location::Remote {
        scheme: scheme.to_string(),
        url,
    })
}

fn open_with(
    location: &str,
    prefix: Option<String>,
    access: Access,
    limits: Limits,
) -> Result<Opened> {
    let creds = Creds {
        prefix,
        generic: access.generic_credentials,
    };
    let env = |v: &str| creds.get(v);
    let parsed = parse(location)?;
    let connections = limits
        .connections
        .unwrap_or_else(|| default_connections(&parsed));
    let (scheme, url) = match parsed {
        Location::Local(abs) => return local(&abs, limits, connections),
        Location::Remote { scheme, url } => (scheme, url),
    };
    opendal::install_default(); // the HTTP transport of every HTTP-based service
    let q = query(&url);
    let scheme = scheme.as_str();
    let class = storage_class(location, scheme, &q)?;
    let cold = coldness(location, &q, class.as_deref())?;
    object_lock_mode(location)?;
    let op = match scheme {
        "s3" => s3(location, &url, &q, &creds, access, None)?,
        "sftp" => sftp(&url, &q, connections)?,
        "webdav" | "webdavs" => webdav(location, &url, &creds, access)?,
        "gcs" => {
            let (bucket, root) = bucket_and_root(&url, "bucket")?;
            let mut b = opendal::services::Gcs::default()
                .bucket(&bucket)
                .root(&root);
            if creds.own_only() {
                b = b.disable_config_load().disable_vm_metadata();
            }
            match env("GOOGLE_APPLICATION_CREDENTIALS") {
                Some(c) => b = b.credential_path(&c),
                None if creds.own_only() => b = b.skip_signature(),
                None => {}
            }
            Operator::new(b)?
        }
        "azblob" => {
            let (container, root) = bucket_and_root(&url, "container")?;
            let account = q
                .get("account")
                .cloned()
                .or_else(|| env("AZURE_STORAGE_ACCOUNT"))
                .ok_or_else(|| {
                    anyhow!("{location}: give ?account=NAME or AZURE_STORAGE_ACCOUNT")
                })?;
            let endpoint = q
                .get("endpoint")
                .cloned()
                .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
            let key = env("AZURE_STORAGE_KEY");
            plain_http_guard(location, &endpoint, key.is_some(), access)?;
            let mut b = opendal::services::Azblob::default()
                .container(&container)
                .root(&root)
                .account_name(&account)
                .endpoint(&endpoint);
            match key {
                Some(k) => b = b.account_key(&k),
                None if creds.own_only() => b = b.skip_signature(),
                None => {}
            }
            Operator::new(b)?
        }
        "b2" => {
            let (bucket, root) = bucket_and_root(&url, "bucket")?;
            let id = q
                .get("bucket_id")
                .ok_or_else(|| anyhow!("{location}: give ?bucket_id=ID"))?;
            let mut b = opendal::services::B2::default()
                .bucket(&bucket)
                .bucket_id(id)
                .root(&root);
            if let (Some(k), Some(s)) = (env("B2_APPLICATION_KEY_ID"), env("B2_APPLICATION_KEY")) {
                b = b.application_key_id(&k).application_key(&s);
            }
            Operator::new(b)?
        }
        other => unreachable!("parse accepts only the remote schemes, not {other}"),
    };
    let limits = Limits {
        connections: Some(connections),
        ..limits
    };
    // Packs go to the storage class asked for; the config, keys, index, snapshots and
    // locks, which every command reads, stay in the bucket's default class.
    let packs_op = match &class {
        Some(c) => Some(remote_layers(
            s3(location, &url, &q, &creds, access, Some(c))?,
            limits,
        )),
        None => None,
    };
    Ok(Opened {
        op: remote_layers(op, limits),
        packs_op,
        direct_op: None,
        cold,
        display: location.to_string(),
        remote: true,
        // Object stores publish an object whole; file-like remote services do not.
        atomic_writes: !matches!(scheme, "sftp" | "webdav" | "webdavs"),
        connections,
    })
}

/// A local disk's requests in flight are capped only when asked (a slow NAS mount).
/// Its retries (and, with the test hooks, its faults) are put around the operator by
/// `Backend` (see `storage`), above these layers, so a retried request is paced anew.
fn local_layers(op: Operator, limits: Limits) -> Operator {
    limits::apply(op, limits)
}

/// Every remote backend times out and caps its requests in flight and its rates
/// (`limits`, with `connections` set); `Backend` puts its retries with backoff around
/// the operator (see `storage`). The limits go above the timeouts, whose clocks must not
/// run while a request waits for its turn, and below the retries, so a retried request
/// is admitted and paced anew (not holding a connection while it backs off).
fn remote_layers(op: Operator, limits: Limits) -> Operator {
    let op = op.layer(
        TimeoutLayer::new()
            .with_timeout(Duration::from_secs(120))
            .with_io_timeout(Duration::from_secs(60)),
    );
    limits::apply(op, limits)
}

fn local(abs: &std::path::Path, limits: Limits, connections: usize) -> Result<Opened> {
    private_writes(shared_with_group(abs));
    let root = abs.to_string_lossy().into_owned();
    let tmp = abs.join("tmp");
    let b = opendal::services::Fs::default()
        .root(&root)
        .atomic_write_dir(&tmp.to_string_lossy());
    let op = Operator::new(b).with_context(|| format!("repository {root}"))?;
    let direct = Operator::new(opendal::services::Fs::default().root(&root))
        .with_context(|| format!("repository {root}"))?;
    Ok(Opened {
        op: local_layers(op, limits),
        packs_op: None,
        direct_op: Some(local_layers(direct, limits)),
        display: root,
        remote: false,
        atomic_writes: true,
        cold: false,
        connections,
    })
}

/// Whether a local repository is kept for a backup group: its directory lets its group
/// read it and others nothing (0750, 0770, 2770). A directory that does not exist yet, or
/// one open to everyone (0755 under the usual umask), gets a private repository.
fn shared_with_group(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o047 == 0o040)
}

/// Whether opening a local location sets the process's umask: the vault program asks
/// for it (`private_local_writes`); a program using the library keeps its own umask.
static UMASK_ON_OPEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set once a local location asked for privacy: the strictest wins for the process.
static PRIVATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes every local repository opened from now on private (see `private_writes`).
pub fn private_local_writes() {
    UMASK_ON_OPEN.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A local repository's files hold the key files and every pack: they are created 0600
/// and directories 0700 (0640 and 0750 for a group's repository, where new directories
/// inherit a setgid group). opendal's fs service creates files 0666 and directories 0777
/// less the umask, so the umask is what decides; it is process-wide, which also makes
/// whatever else this process writes (cache, exports, restore's temporary modes before
/// it applies the snapshot's own) no more open than the repository.
fn private_writes(group: bool) {
    use std::sync::atomic::Ordering;
    if !UMASK_ON_OPEN.load(Ordering::SeqCst) {
        return;
    }
    if !group {
        PRIVATE.store(true, Ordering::SeqCst);
    }
    let mask = if PRIVATE.load(Ordering::SeqCst) {
        0o077
    } else {
        0o027
    };
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
}

/// The `storage_class=` of an s3:// location: the S3 name of a class (STANDARD_IA,
/// GLACIER_IR, GLACIER, DEEP_ARCHIVE, ...), which packs are written in.
fn storage_class(
    location: &str,
    scheme: &str,
    q: &HashMap<String, String>,
) -> Result<Option<String>> {
    let Some(class) = q.get("storage_class") else {
        return Ok(None);
    };
    let usage = |m: String| anyhow::Error::new(crate::error::VaultError::Usage(m));
    if scheme != "s3" {
        return Err(usage(format!(
            "{location}: storage_class= is for s3:// locations (other services keep the class their bucket or container sets)"
        )));
    }
    let valid = !class.is_empty()
        && class
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(usage(format!(
            "{location}: storage_class={class:?} is not an S3 storage class name (e.g. STANDARD_IA, GLACIER_IR, GLACIER, DEEP_ARCHIVE)"
        )));
    }
    Ok(Some(class.clone()))
}

/// Whether a location's packs are cold: `cold=` when given, else whether its storage
/// class needs a restore before a read (GLACIER and DEEP_ARCHIVE; GLACIER_IR does not).
fn coldness(location: &str, q: &HashMap<String, String>, class: Option<&str>) -> Result<bool> {
    match q.get("cold").map(String::as_str) {
        None => Ok(matches!(class, Some("GLACIER" | "DEEP_ARCHIVE"))),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(v) => Err(crate::error::VaultError::Usage(format!(
            "{location}: cold={v:?}: give cold=true or cold=false"
        ))
        .into()),
    }
}

/// The `object_lock=` of a location: the retention mode every object written there is
/// given (s3:// only; a usage error elsewhere or for another value).
pub fn object_lock_mode(location: &str) -> Result<Option<ObjectLockMode>> {
    let Location::Remote { scheme, url } = parse(location)? else {
        return Ok(None);
    };
    let q = query(&url);
    let Some(v) = q.get("object_lock") else {
        return Ok(None);
    };
    let usage = |m: String| anyhow::Error::new(crate::error::VaultError::Usage(m));
    if scheme != "s3" {
        return Err(usage(format!(
            "{location}: object_lock= is for s3:// locations"
        )));
    }
    ObjectLockMode::parse(v).map(Some).ok_or_else(|| {
        usage(format!(
            "{location}: object_lock={v:?}: give object_lock=governance or object_lock=compliance"
        ))
    })
}

/// Where mirror `name`'s s3:// location keeps its objects, and the credentials that sign
/// vault's own requests there (those its operator gets: the mirror's own variables, the
/// usual ones only where `access` allows). Static keys are needed: the storage library's
/// own discovery (~/.aws, instance metadata) is not available to these requests.
pub fn s3_target(location: &str, name: &str, access: Access) -> Result<S3Target> {
    let creds = Creds {
        prefix: Some(mirror_prefix(name)),
        generic: access.generic_credentials,
    };
    let env = |v: &str| creds.get(v);
    let url = Url::parse(location).with_context(|| format!("location {location}"))?;
    let q = query(&url);
    let (bucket, root) = bucket_and_root(&url, "bucket")?;
    let region = q
        .get("region")
        .cloned()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint = q
        .get("endpoint")
        .cloned()
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let Some((access_key, secret_key)) = env("AWS_ACCESS_KEY_ID").zip(env("AWS_SECRET_ACCESS_KEY"))
    else {
        return Err(crate::error::VaultError::Usage(format!(
            "mirror {name}: object_lock= needs an access key in {p}AWS_ACCESS_KEY_ID and {p}AWS_SECRET_ACCESS_KEY (or, with `vault mirror trust {name} --generic-credentials`, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
            p = mirror_prefix(name)
        ))
        .into());
    };
    plain_http_guard(location, &endpoint, true, access)?;
    Ok(S3Target {
        endpoint,
        bucket,
        root: root.trim_matches('/').to_string(),
        region,
        virtual_host: q.get("virtual_host").is_some_and(|v| v == "true"),
        access_key,
        secret_key,
        session_token: env("AWS_SESSION_TOKEN"),
    })
}

/// An S3 operator; with `class`, every object it writes goes to that storage class.
fn s3(
    location: &str,
    url: &Url,
    q: &HashMap<String, String>,
    creds: &Creds,
    access: Access,
    class: Option<&str>,
) -> Result<Operator> {
    let env = |v: &str| creds.get(v);
    let (bucket, root) = bucket_and_root(url, "bucket")?;
    let region = q
        .get("region")
        .cloned()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let mut b = opendal::services::S3::default()
        .bucket(&bucket)
        .root(&root)
        .region(&region);
    let key = env("AWS_ACCESS_KEY_ID").zip(env("AWS_SECRET_ACCESS_KEY"));
    let endpoint = q
        .get("endpoint")
        .cloned()
        .or_else(|| env("AWS_ENDPOINT_URL"));
    // Over plain http to another host, nothing the library would find on its own
    // (~/.aws, the environment, instance metadata) may be sent either.
    let plain = endpoint.as_deref().is_some_and(plain_remote_http);
    if let Some(e) = &endpoint {
        plain_http_guard(location, e, key.is_some(), access)?;
        b = b.endpoint(e);
    }
    if q.get("virtual_host").is_some_and(|v| v == "true") {
        b = b.enable_virtual_host_style();
    }
    if let Some(c) = class {
        b = b.default_storage_class(c);
    }
    let isolated = creds.own_only() || plain;
    if isolated {
        b = b.disable_config_load().disable_ec2_metadata();
    }
    match key {
        Some((k, s)) => b = b.access_key_id(&k).secret_access_key(&s),
        None if isolated => b = b.skip_signature(),
        None => {}
    }
    Ok(Operator::new(b)?)
}

fn sftp(url: &Url, q: &HashMap<String, String>, connections: usize) -> Result<Operator> {
    let host = url
        .host_str()
        .ok_or_else(|| anyhow!("{url}: give a host, as in sftp://user@host:22/path"))?;
    let known = q.get("known_hosts").map_or("strict", String::as_str);
    let known_hosts = super::sftp::KnownHosts::parse(known)
        .ok_or_else(|| anyhow!("{url}: known_hosts={known} is not one of strict, add or accept"))?;
    let config = super::sftp::SshSftpConfig {
        host: host.to_string(),
        port: url.port(),
        user: (!url.username().is_empty()).then(|| url.username().to_string()),
        key: q.get("key").cloned(),
        known_hosts,
        root: root_of(url),
        requests: connections,
    };
    Ok(Operator::new(super::sftp::SshSftp::new(config))?)
}

fn webdav(location: &str, url: &Url, creds: &Creds, access: Access) -> Result<Operator> {
    let env = |v: &str| creds.get(v);
    let host = url
        .host_str()
        .ok_or_else(|| anyhow!("{url}: give a host, as in webdav://host:8080/path"))?;
    let http = if url.scheme() == "webdavs" {
        "https"
    } else {
        "http"
    };
    let endpoint = match url.port() {
        Some(p) => format!("{http}://{host}:{p}"),
        None => format!("{http}://{host}"),
    };
    let login = env("VAULT_WEBDAV_USER").zip(env("VAULT_WEBDAV_PASSWORD"));
    plain_http_guard(location, &endpoint, login.is_some(), access)?;
    let mut b = opendal::services::Webdav::default()
        .endpoint(&endpoint)
        .root(&root_of(url));
    if let Some((u, p)) = login {
        b = b.username(&u).password(&p);
    }
    Ok(Operator::new(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert!(!open("/tmp/x").unwrap().remote);
        assert!(!open("fs:///tmp/x").unwrap().remote);
        let s3 = open("s3://bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=eu").unwrap();
        assert!(s3.remote && s3.atomic_writes);
        let sftp = open("sftp://me@example.org:2222/backups?known_hosts=accept").unwrap();
        assert!(!sftp.atomic_writes);
        assert!(open("s3:///no-bucket").is_err());
        assert!(open("ftp://host/x").is_err());
        assert!(open("b2://bucket/x").is_err(), "b2 needs a bucket id");
    }

    #[test]
    fn storage_class_and_cold_parse() {
        let s3 = "s3://bucket/p?endpoint=http://127.0.0.1:9000&region=eu";
        let o = open(s3).unwrap();
        assert!(!o.cold && o.packs_op.is_none());
        let o = open(&format!("{s3}&storage_class=DEEP_ARCHIVE")).unwrap();
        assert!(o.cold && o.packs_op.is_some(), "packs go to the class");
        assert!(open(&format!("{s3}&storage_class=GLACIER")).unwrap().cold);
        let ir = open(&format!("{s3}&storage_class=GLACIER_IR")).unwrap();
        assert!(!ir.cold, "instant retrieval serves reads at once");
        assert!(ir.packs_op.is_some());
        let warm = open(&format!("{s3}&storage_class=DEEP_ARCHIVE&cold=false")).unwrap();
        assert!(!warm.cold, "cold=false: restored for now");
        assert!(open(&format!("{s3}&cold=true")).unwrap().cold);
        assert!(open("webdav://127.0.0.1:8080/x?cold=true").unwrap().cold);
        for bad in [
            format!("{s3}&storage_class=deep archive"),
            format!("{s3}&storage_class="),
            format!("{s3}&cold=maybe"),
            "webdav://127.0.0.1:8080/x?storage_class=GLACIER".to_string(),
        ] {
            let e = open(&bad).err().unwrap_or_else(|| panic!("{bad} opened"));
            assert_eq!(
                crate::error::exit_code(&e),
                crate::error::exit::USAGE,
                "{bad}"
            );
        }
    }

    #[test]
    fn only_loopback_is_plain_http_without_the_flag() {
        for local in [
            "http://127.0.0.1:9000",
            "http://127.8.9.10",
            "http://[::1]:80",
            "http://[::ffff:127.0.0.1]",
            "http://localhost:8080",
            "http://LOCALHOST.",
            "https://192.0.2.1",
        ] {
            assert!(!plain_remote_http(local), "{local}");
        }
        for remote in [
            "http://192.0.2.1:9000",
            "http://0.0.0.0:80",
            "http://localhost.example.com",
            "http://[2001:db8::1]",
            "not a url",
        ] {
            assert!(plain_remote_http(remote), "{remote}");
        }
    }
}
