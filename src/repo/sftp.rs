//! SFTP storage over the system's `ssh`, as an opendal service.
//!
//! Each connection is one `ssh -s HOST sftp` child speaking SFTP over its pipes, the way
//! restic and rclone do. Nothing outlives vault: the child has no control master and no
//! ControlPersist, it is told to die with the thread that started it (a thread that
//! lives as long as the process), and it ends on its own when its stdin closes, which
//! happens however vault ends, `kill -9` included. The user's ssh configuration (aliases,
//! agents, ProxyJump, keys) applies as it does to `ssh` itself.
//!
//! Requests are pipelined: one connection carries many requests in flight, each read or
//! write of an object is split into chunks sent at once, a recursive listing lists
//! subdirectories concurrently, and writes create missing directories only when the
//! server says they are missing. On a link with a long round trip an object costs about
//! two round trips (open, then every chunk and the close together) rather than one per
//! step and per chunk.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt, TryStreamExt};
use opendal::raw::*;
use opendal::*;
use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::file::File;
use openssh_sftp_client::{Sftp, SftpOptions};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncSeekExt;

/// How the server's host key is checked, as ssh's StrictHostKeyChecking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KnownHosts {
    /// The key must already be in known_hosts.
    #[default]
    Strict,
    /// A host not yet known is added; a changed key is refused.
    Add,
    /// Any key is accepted (tests and throwaway servers only).
    Accept,
}

impl KnownHosts {
    pub fn parse(s: &str) -> Option<KnownHosts> {
        match s {
            "strict" => Some(KnownHosts::Strict),
            "add" => Some(KnownHosts::Add),
            "accept" => Some(KnownHosts::Accept),
            _ => None,
        }
    }

    fn option(self) -> &'static str {
        match self {
            KnownHosts::Strict => "StrictHostKeyChecking=yes",
            KnownHosts::Add => "StrictHostKeyChecking=accept-new",
            KnownHosts::Accept => "StrictHostKeyChecking=no",
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SshSftpConfig {
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// A private key file, passed to ssh as `-i`.
    pub key: Option<String>,
    pub known_hosts: KnownHosts,
    /// The repository's directory on the server; relative paths are relative to the
    /// login directory.
    pub root: String,
    /// Requests vault keeps in flight (`--connections`): one SSH connection is opened
    /// per BUSY of them, at most, since each connection pipelines many.
    pub requests: usize,
}

impl Configurator for SshSftpConfig {
    type Builder = SshSftp;

    fn into_builder(self) -> SshSftp {
        SshSftp { config: self }
    }
}

/// The builder opendal wants; see `SshSftpConfig`.
#[derive(Debug, Default)]
pub struct SshSftp {
    config: SshSftpConfig,
}

impl SshSftp {
    pub fn new(config: SshSftpConfig) -> SshSftp {
        SshSftp { config }
    }
}

impl Builder for SshSftp {
    type Config = SshSftpConfig;

    fn build(self) -> Result<impl Service> {
        let c = self.config;
        if c.host.is_empty() {
            return Err(Error::new(ErrorKind::ConfigInvalid, "sftp: no host"));
        }
        let root = PathBuf::from(if c.root.is_empty() { "." } else { &c.root });
        Ok(SftpService {
            core: Arc::new(Core {
                info: ServiceInfo::new("sftp", &c.root, ""),
                root,
                config: c,
                conns: Mutex::new(Vec::new()),
                first: tokio::sync::Mutex::new(()),
                opening: AtomicUsize::new(0),
                failing: Mutex::new(None),
            }),
        })
    }
}

/// Bytes per read or write request: OpenSSH's sftp-server serves up to 255 KiB at once
/// (a server with a lower limit gets more, shorter requests).
const CHUNK: usize = 255 * 1024;
/// Chunks of one object in flight at once on a connection: 64 cover a 16 MiB pack in
/// one round trip.
const CHUNKS_IN_FLIGHT: usize = 64;
/// Subdirectories listed at once by a recursive listing.
const LISTS_IN_FLIGHT: usize = 32;

#[derive(Debug)]
struct Core {
    info: ServiceInfo,
    root: PathBuf,
    config: SshSftpConfig,
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Held while opening a connection when none is open, so that the requests waiting
    /// for it share the one it opens.
    first: tokio::sync::Mutex<()>,
    /// Connections being opened in the background.
    opening: AtomicUsize,
    /// Since when every attempt to connect has failed, and the last failure.
    failing: Mutex<Option<(Instant, Error)>>,
}

/// Requests in flight on the least busy connection before another is opened beside it.
/// One connection carries any number of requests, but SSH's flow-control window caps
/// each connection's bytes per round trip, so bulk transfers want more than one; a
/// command that makes few requests pays for one handshake only.
const BUSY: usize = 4;

/// How long connecting may keep failing before the server counts as gone: past this,
/// requests fail at once instead of each waiting out its own retries, so a command whose
/// server died ends in about this long.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct SftpService {
    core: Arc<Core>,
}

/// One ssh child and the SFTP session over its pipes.
struct Conn {
    sftp: Sftp,
    child: Mutex<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
    dead: AtomicBool,
    inflight: AtomicUsize,
}

impl Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct InFlight<'a>(&'a Conn);

impl<'a> InFlight<'a> {
    fn new(c: &'a Conn) -> InFlight<'a> {
        c.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Conn {
    fn alive(&self) -> bool {
        !self.dead.load(Ordering::Relaxed)
            && self
                .child
                .lock()
                .map(|mut c| matches!(c.try_wait(), Ok(None)))
                .unwrap_or(false)
    }
}

impl Core {
    fn abs(&self, path: &str) -> PathBuf {
        let rel = path.trim_start_matches('/').trim_end_matches('/');
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// The least busy live connection. The first is opened on demand; more are opened
    /// in the background, up to the configured number, while every one is busy.
    async fn conn(self: &Arc<Self>) -> Result<Arc<Conn>> {
        if let Some(c) = self.least_busy() {
            return Ok(c);
        }
        let _one = self.first.lock().await;
        if let Some(c) = self.least_busy() {
            return Ok(c);
        }
        if let Some(gone) = self.gone() {
            return Err(gone);
        }
        let c = Arc::new(self.open().await?);
        locked(&self.conns).push(c.clone());
        Ok(c)
    }

    fn least_busy(self: &Arc<Self>) -> Option<Arc<Conn>> {
        let mut conns = locked(&self.conns);
        conns.retain(|c| c.alive());
        let c = conns
            .iter()
            .min_by_key(|c| c.inflight.load(Ordering::Relaxed))?
            .clone();
        let most = self.config.requests.div_ceil(BUSY).max(1);
        let room = conns.len() + self.opening.load(Ordering::Relaxed) < most;
        if c.inflight.load(Ordering::Relaxed) >= BUSY && room && self.gone().is_none() {
            self.opening.fetch_add(1, Ordering::Relaxed);
            let core = self.clone();
            tokio::spawn(async move {
                if let Ok(c) = core.open().await {
                    locked(&core.conns).push(Arc::new(c));
                }
                core.opening.fetch_sub(1, Ordering::Relaxed);
            });
        }
        Some(c)
    }

    /// Opens a connection, keeping count of how long connecting has been failing.
    async fn open(&self) -> Result<Conn> {
        let r = connect(&self.config).await;
        let mut f = locked(&self.failing);
        match &r {
            Ok(_) => *f = None,
            Err(e) => {
                let since = f.as_ref().map_or_else(Instant::now, |(t, _)| *t);
                *f = Some((since, clone_error(e)));
            }
        }
        r
    }

    /// The last connection error, for good, once connecting has failed for GIVE_UP_AFTER.
    fn gone(&self) -> Option<Error> {
        let f = locked(&self.failing);
        let (since, e) = f.as_ref()?;
        (since.elapsed() > GIVE_UP_AFTER)
            .then(|| Error::new(e.kind(), e.message().to_string()).with_operation("connect"))
    }

    /// Runs `f` on a connection, and marks the connection dead when the failure was the
    /// connection's rather than the server's answer about a file.
    async fn with<T, F, Fut>(self: &Arc<Self>, what: &'static str, path: &str, f: F) -> Result<T>
    where
        F: FnOnce(Arc<Conn>) -> Fut,
        Fut: Future<Output = std::result::Result<T, openssh_sftp_client::Error>>,
    {
        let conn = self.conn().await?;
        // Counted down however the request ends, a timeout's cancellation included.
        let counted = InFlight::new(&conn);
        let r = f(conn.clone()).await;
        drop(counted);
        r.map_err(|e| self.error(&conn, what, path, e))
    }

    fn error(
        &self,
        conn: &Conn,
        what: &'static str,
        path: &str,
        e: openssh_sftp_client::Error,
    ) -> Error {
        match e {
            openssh_sftp_client::Error::SftpError(kind, msg) => {
                let k = match kind {
                    SftpErrorKind::NoSuchFile => ErrorKind::NotFound,
                    SftpErrorKind::PermDenied => ErrorKind::PermissionDenied,
                    SftpErrorKind::OpUnsupported => ErrorKind::Unsupported,
                    _ => ErrorKind::Unexpected,
                };
                Error::new(k, format!("sftp: {msg}"))
                    .with_operation(what)
                    .with_context("path", path)
            }
            other => {
                conn.dead.store(true, Ordering::Relaxed);
                let why = last_line(&conn.stderr)
                    .map(|l| format!("ssh: {}", l.strip_prefix("ssh: ").unwrap_or(&l)))
                    .unwrap_or_else(|| format!("sftp: connection lost: {other}"));
                Error::new(ErrorKind::Unexpected, why)
                    .with_operation(what)
                    .with_context("path", path)
                    .set_temporary()
            }
        }
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn clone_error(e: &Error) -> Error {
    let c = Error::new(e.kind(), e.message().to_string()).with_operation("connect");
    if e.is_temporary() {
        c.set_temporary()
    } else {
        c
    }
}

fn last_line(lines: &Mutex<Vec<String>>) -> Option<String> {
    lines.lock().ok()?.last().cloned()
}

/// Starts children of a thread that lives as long as the process, so that the
/// parent-death signal each child asks for (`PR_SET_PDEATHSIG`, bound to the thread that
/// forked it) arrives exactly when vault ends, not when some worker thread does.
type SpawnRequest = (Command, tokio::sync::oneshot::Sender<io::Result<Child>>);

static SPAWNER: LazyLock<Mutex<std::sync::mpsc::Sender<SpawnRequest>>> = LazyLock::new(|| {
    let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("vault-ssh-spawner".into())
        .spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        })
        .expect("cannot start a thread");
    Mutex::new(tx)
});

async fn spawn_child(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    SPAWNER
        .lock()
        .map_err(|_| io::Error::other("spawner poisoned"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("spawner gone"))?;
    rx.await.map_err(|_| io::Error::other("spawner gone"))?
}

/// The ssh command line for one connection. Options on the command line win over the
/// user's configuration, which is why multiplexing is turned off here: a ControlMaster
/// with ControlPersist from ~/.ssh/config would otherwise outlive vault.
fn ssh_command(c: &SshSftpConfig) -> Command {
    let mut cmd = Command::new(std::env::var_os("VAULT_SSH").unwrap_or_else(|| "ssh".into()));
    cmd.args(["-x", "-a", "-T"])
        .args(["-o", "ControlMaster=no", "-o", "ControlPersist=no"])
        .args(["-o", "ClearAllForwardings=yes", "-o", "LogLevel=ERROR"])
        .args([
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
        ])
        .args(["-o", "ConnectTimeout=30"])
        .args(["-o", c.known_hosts.option()]);
    if c.known_hosts == KnownHosts::Accept {
        cmd.args(["-o", "UserKnownHostsFile=/dev/null"]);
    }
    if let Some(p) = c.port {
        cmd.arg("-p").arg(p.to_string());
    }
    if let Some(k) = &c.key {
        cmd.arg("-i").arg(k);
    }
    if let Some(u) = &c.user {
        cmd.arg("-l").arg(u);
    }
    // `--` ends the options: a host read from a URL cannot become one.
    cmd.args(["-s", "--", &c.host, "sftp"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    prepare_child(&mut cmd);
    cmd
}

/// The child dies with vault; off a terminal it also gets a process group of its own,
/// so that a Ctrl-C meant for vault does not cut the connection vault needs to clean
/// up. On a terminal it stays in the foreground group, where ssh can ask for a
/// passphrase.
fn prepare_child(cmd: &mut Command) {
    use std::io::IsTerminal;
    use std::os::unix::process::CommandExt;
    if !std::io::stdin().is_terminal() {
        cmd.process_group(0);
    }
    // SAFETY: prctl is async-signal-safe and touches nothing but the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

async fn connect(c: &SshSftpConfig) -> Result<Conn> {
    let mut child = spawn_child(ssh_command(c)).await.map_err(|e| {
        Error::new(
            ErrorKind::ConfigInvalid,
            format!("ssh: cannot start ssh: {e}"),
        )
    })?;
    let stderr = Arc::new(Mutex::new(Vec::new()));
    if let Some(err) = child.stderr.take() {
        collect_stderr(err, stderr.clone());
    }
    let pipes = child.stdin.take().zip(child.stdout.take());
    let opened = match pipes {
        Some((stdin, stdout)) => open_session(stdin, stdout).await,
        None => Err(io::Error::other("no pipes").into()),
    };
    match opened {
        Ok(sftp) => Ok(Conn {
            sftp,
            child: Mutex::new(child),
            stderr,
            dead: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
        }),
        Err(e) => Err(connect_error(&mut child, &stderr, e).await),
    }
}

async fn open_session(
    stdin: std::process::ChildStdin,
    stdout: std::process::ChildStdout,
) -> std::result::Result<Sftp, openssh_sftp_client::Error> {
    let stdin = tokio::process::ChildStdin::from_std(stdin)?;
    let stdout = tokio::process::ChildStdout::from_std(stdout)?;
    // Requests queued within this interval go out in one write.
    let options = SftpOptions::new().flush_interval(Duration::from_micros(200));
    Sftp::new(stdin, stdout, options).await
}

/// Why ssh did not give a session: the last line it printed (which names the cause:
/// refused, host key, authentication), once it has exited.
async fn connect_error(
    child: &mut Child,
    stderr: &Mutex<Vec<String>>,
    e: openssh_sftp_client::Error,
) -> Error {
    for _ in 0..50 {
        if !matches!(child.try_wait(), Ok(None)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    // The reader thread may still be draining the pipe.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let line = last_line(stderr);
    let text = match &line {
        // ssh starts most of its own messages with "ssh: " already.
        Some(l) => format!("ssh: {}", l.strip_prefix("ssh: ").unwrap_or(l)),
        None => format!("ssh: no SFTP session: {e}"),
    };
    let lower = text.to_ascii_lowercase();
    let kind = if lower.contains("permission denied") {
        ErrorKind::PermissionDenied
    } else {
        ErrorKind::Unexpected
    };
    let err = Error::new(kind, text).with_operation("connect");
    // A server restarting or a network blip passes; a wrong key or host key does not.
    let passing = [
        "connection refused",
        "timed out",
        "connection reset",
        "closed by",
    ]
    .iter()
    .any(|p| lower.contains(p));
    if passing { err.set_temporary() } else { err }
}

fn collect_stderr(pipe: std::process::ChildStderr, into: Arc<Mutex<Vec<String>>>) {
    use std::io::BufRead;
    let _ = std::thread::Builder::new()
        .name("vault-ssh-stderr".into())
        .spawn(move || {
            for line in io::BufReader::new(pipe).lines().map_while(|l| l.ok()) {
                let line = line.trim().to_string();
                if line.is_empty() {
                    continue;
                }
                log::debug!("ssh: {line}");
                if let Ok(mut v) = into.lock() {
                    v.push(line);
                    let n = v.len();
                    if n > 20 {
                        v.drain(..n - 20);
                    }
                }
            }
        });
}

fn metadata_of(meta: &openssh_sftp_client::metadata::MetaData) -> Metadata {
    let mut m = match meta.file_type() {
        Some(t) if t.is_dir() => MetadataBuilder::dir(),
        Some(t) if t.is_file() => MetadataBuilder::file(meta.len().unwrap_or(0)),
        _ => MetadataBuilder::unknown(),
    };
    if let Some(t) = meta.modified()
        && let Ok(ts) = Timestamp::try_from(t.as_system_time())
    {
        m.last_modified(ts);
    }
    m.build()
}

/// Creates `dir` and any missing parents (as `mkdir -p`).
async fn mkdirs(sftp: &Sftp, dir: &Path) -> std::result::Result<(), openssh_sftp_client::Error> {
    let mut missing = Vec::new();
    let mut at = dir.to_path_buf();
    loop {
        match sftp.fs().create_dir(&at).await {
            Ok(()) => break,
            Err(openssh_sftp_client::Error::SftpError(SftpErrorKind::NoSuchFile, _)) => {
                match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() && p != at => {
                        missing.push(at.clone());
                        at = p.to_path_buf();
                    }
                    _ => break,
                }
            }
            // It exists (OpenSSH answers "Failure"), or the error shows below.
            Err(_) => break,
        }
    }
    for d in missing.into_iter().rev() {
        if let Err(e) = sftp.fs().create_dir(&d).await
            && !is_dir(sftp, &d).await
        {
            return Err(e);
        }
    }
    if is_dir(sftp, dir).await {
        Ok(())
    } else {
        sftp.fs().create_dir(dir).await
    }
}

async fn is_dir(sftp: &Sftp, dir: &Path) -> bool {
    sftp.fs()
        .metadata(dir)
        .await
        .is_ok_and(|m| m.file_type().is_some_and(|t| t.is_dir()))
}

fn is_missing(e: &openssh_sftp_client::Error) -> bool {
    matches!(
        e,
        openssh_sftp_client::Error::SftpError(SftpErrorKind::NoSuchFile, _)
    )
}

/// Reads `len` bytes at `offset` of `file` (to its end when `len` is None) in chunks
/// sent together.
async fn read_range(
    file: &File,
    offset: u64,
    len: u64,
) -> std::result::Result<Vec<Bytes>, openssh_sftp_client::Error> {
    let chunk = CHUNK as u64;
    let starts: Vec<u64> = (0..len.div_ceil(chunk))
        .map(|i| offset + i * chunk)
        .collect();
    let end = offset + len;
    stream::iter(starts)
        .map(|start| {
            let mut f = file.clone();
            let want = chunk.min(end - start);
            async move { read_exact_at(&mut f, start, want).await }
        })
        .buffered(CHUNKS_IN_FLIGHT)
        .try_collect()
        .await
}

/// One chunk; a server may answer a read with fewer bytes than asked before the end.
async fn read_exact_at(
    f: &mut File,
    start: u64,
    want: u64,
) -> std::result::Result<Bytes, openssh_sftp_client::Error> {
    f.seek(io::SeekFrom::Start(start)).await?;
    let mut out = BytesMut::with_capacity(want as usize);
    while (out.len() as u64) < want {
        let n = (want - out.len() as u64) as u32;
        match f.read(n, BytesMut::with_capacity(n as usize)).await? {
            Some(b) if !b.is_empty() => out.extend_from_slice(&b),
            _ => break,
        }
    }
    Ok(out.freeze())
}

async fn write_all_at(
    file: &File,
    data: Bytes,
) -> std::result::Result<(), openssh_sftp_client::Error> {
    let chunk = CHUNK;
    let starts: Vec<usize> = (0..data.len()).step_by(chunk).collect();
    stream::iter(starts)
        .map(|start| {
            let mut f = file.clone();
            let part = data.slice(start..(start + chunk).min(data.len()));
            async move {
                f.seek(io::SeekFrom::Start(start as u64)).await?;
                f.write_all(&part).await
            }
        })
        .buffer_unordered(CHUNKS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

impl Service for SftpService {
    type Reader = SftpReader;
    type Writer = SftpWriter;
    type Lister = SftpLister;
    type Deleter = oio::OneShotDeleter<SftpDeleter>;
    type Copier = ();
    type Composer = ();

    fn info(&self) -> ServiceInfo {
        self.core.info.clone()
    }

    fn capability(&self) -> Capability {
        Capability {
            stat: true,
            read: true,
            write: true,
            write_can_empty: true,
            write_with_if_not_exists: true,
            create_dir: true,
            delete: true,
            list: true,
            list_with_recursive: true,
            rename: true,
            shared: true,
            ..Default::default()
        }
    }

    async fn create_dir(
        &self,
        _ctx: &OperationContext,
        path: &str,
        _: OpCreateDir,
    ) -> Result<RpCreateDir> {
        let abs = self.core.abs(path);
        self.core
            .with("create_dir", path, |c| async move {
                mkdirs(&c.sftp, &abs).await
            })
            .await?;
        Ok(RpCreateDir::default())
    }

    async fn stat(&self, _ctx: &OperationContext, path: &str, _: OpStat) -> Result<RpStat> {
        let abs = self.core.abs(path);
        let meta = self
            .core
            .with(
                "stat",
                path,
                |c| async move { c.sftp.fs().metadata(&abs).await },
            )
            .await?;
        Ok(RpStat::new(metadata_of(&meta)))
    }

    fn read(&self, _ctx: &OperationContext, path: &str, _: OpRead) -> Result<SftpReader> {
        Ok(SftpReader {
            core: self.core.clone(),
            path: path.to_string(),
        })
    }

    fn write(&self, _ctx: &OperationContext, path: &str, op: OpWrite) -> Result<SftpWriter> {
        Ok(SftpWriter {
            core: self.core.clone(),
            path: path.to_string(),
            create_new: op.if_not_exists(),
            parts: Vec::new(),
        })
    }

    fn delete(&self, _ctx: &OperationContext) -> Result<Self::Deleter> {
        Ok(oio::OneShotDeleter::new(SftpDeleter {
            core: self.core.clone(),
        }))
    }

    fn list(&self, _ctx: &OperationContext, path: &str, op: OpList) -> Result<SftpLister> {
        Ok(SftpLister {
            core: self.core.clone(),
            path: path.to_string(),
            recursive: op.recursive(),
            entries: None,
        })
    }

    fn copy(&self, _: &OperationContext, _: &str, _: &str, _: OpCopy) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "sftp: no server-side copy",
        ))
    }

    async fn rename(
        &self,
        _ctx: &OperationContext,
        from: &str,
        to: &str,
        _: OpRename,
    ) -> Result<RpRename> {
        let (src, dst) = (self.core.abs(from), self.core.abs(to));
        self.core
            .with("rename", to, |c| async move {
                match c.sftp.fs().rename(&src, &dst).await {
                    Err(e) if is_missing(&e) && dst.parent().is_some() => {
                        // The target's directory may be what is missing (a new fan-out
                        // directory of data/); the source missing fails again below.
                        if let Some(p) = dst.parent() {
                            mkdirs(&c.sftp, p).await?;
                        }
                        c.sftp.fs().rename(&src, &dst).await
                    }
                    r => r,
                }
            })
            .await?;
        Ok(RpRename::default())
    }

    async fn presign(&self, _: &OperationContext, _: &str, _: OpPresign) -> Result<RpPresign> {
        Err(Error::new(ErrorKind::Unsupported, "sftp: no presigning"))
    }
}

pub struct SftpReader {
    core: Arc<Core>,
    path: String,
}

impl oio::Read for SftpReader {
    async fn open(&self, range: BytesRange) -> Result<(RpRead, Box<dyn oio::ReadStreamDyn>)> {
        let (rp, buf) = oio::Read::read(self, range).await?;
        Ok((rp, Box::new(buf) as Box<dyn oio::ReadStreamDyn>))
    }

    async fn read(&self, range: BytesRange) -> Result<(RpRead, Buffer)> {
        let abs = self.core.abs(&self.path);
        let parts = self
            .core
            .with("read", &self.path, |c| async move {
                let mut file = c.sftp.open(&abs).await?;
                let len = match range.size() {
                    Some(n) => n,
                    None => {
                        let size = file.metadata().await?.len().unwrap_or(0);
                        size.saturating_sub(range.offset())
                    }
                };
                let parts = read_range(&file, range.offset(), len).await;
                // Closing waits for no answer: the handle's close goes out with the next
                // requests.
                drop(file);
                parts
            })
            .await?;
        Ok((RpRead::default(), Buffer::from(parts)))
    }
}

/// Collects the object and sends it whole on close: vault writes whole objects, and
/// sending at once is what lets all its chunks be in flight together.
pub struct SftpWriter {
    core: Arc<Core>,
    path: String,
    create_new: bool,
    parts: Vec<Bytes>,
}

impl oio::Write for SftpWriter {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        self.parts.extend(bs);
        Ok(())
    }

    async fn close(&mut self) -> Result<Metadata> {
        let data = Buffer::from(std::mem::take(&mut self.parts)).to_bytes();
        let len = data.len() as u64;
        let abs = self.core.abs(&self.path);
        let create_new = self.create_new;
        self.core
            .with("write", &self.path, |c| async move {
                let open = |sftp: &Sftp| {
                    let mut o = sftp.options();
                    o.write(true);
                    if create_new {
                        o.create_new(true);
                    } else {
                        o.create(true).truncate(true);
                    }
                    let abs = abs.clone();
                    async move { o.open(&abs).await }
                };
                let file = match open(&c.sftp).await {
                    Err(e) if is_missing(&e) => {
                        if let Some(p) = abs.parent() {
                            mkdirs(&c.sftp, p).await?;
                        }
                        open(&c.sftp).await?
                    }
                    r => r?,
                };
                write_all_at(&file, data).await?;
                file.close().await
            })
            .await?;
        Ok(MetadataBuilder::file(len).build())
    }

    async fn abort(&mut self) -> Result<()> {
        self.parts.clear();
        Ok(())
    }
}

pub struct SftpLister {
    core: Arc<Core>,
    path: String,
    recursive: bool,
    entries: Option<std::vec::IntoIter<oio::Entry>>,
}

impl SftpLister {
    /// Every entry below `dir` (relative to the root, ending in '/'); a missing
    /// directory lists as empty.
    async fn list_all(&self) -> Result<Vec<oio::Entry>> {
        let mut out = Vec::new();
        let mut level = vec![self.path.clone()];
        while !level.is_empty() {
            let listed: Vec<Vec<(String, Metadata)>> = stream::iter(level)
                .map(|dir| self.list_dir(dir))
                .buffer_unordered(LISTS_IN_FLIGHT)
                .try_collect()
                .await?;
            level = Vec::new();
            for (path, meta) in listed.into_iter().flatten() {
                if self.recursive && meta.is_dir() {
                    level.push(path.clone());
                }
                out.push(oio::Entry::new(&path, meta));
            }
        }
        Ok(out)
    }

    async fn list_dir(&self, dir: String) -> Result<Vec<(String, Metadata)>> {
        let abs = self.core.abs(&dir);
        let prefix = if dir == "/" {
            String::new()
        } else {
            dir.clone()
        };
        self.core
            .with("list", &dir, |c| async move {
                let d = match c.sftp.fs().open_dir(&abs).await {
                    Ok(d) => d,
                    Err(e) if is_missing(&e) => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                };
                let entries: Vec<_> = d.read_dir().try_collect().await?;
                Ok(entries
                    .into_iter()
                    .filter_map(|e| {
                        let name = e.filename().to_str()?.to_string();
                        if name == "." || name == ".." {
                            return None;
                        }
                        let meta = metadata_of(&e.metadata());
                        let slash = if meta.is_dir() { "/" } else { "" };
                        Some((format!("{prefix}{name}{slash}"), meta))
                    })
                    .collect())
            })
            .await
    }
}

impl oio::List for SftpLister {
    async fn next(&mut self) -> Result<Option<oio::Entry>> {
        if self.entries.is_none() {
            self.entries = Some(self.list_all().await?.into_iter());
        }
        Ok(self.entries.as_mut().and_then(|e| e.next()))
    }
}

pub struct SftpDeleter {
    core: Arc<Core>,
}

impl oio::OneShotDelete for SftpDeleter {
    async fn delete_once(&self, path: String, _: OpDelete) -> Result<()> {
        let abs = self.core.abs(&path);
        let dir = path.ends_with('/');
        self.core
            .with("delete", &path, |c| async move {
                let r = if dir {
                    c.sftp.fs().remove_dir(&abs).await
                } else {
                    c.sftp.fs().remove_file(&abs).await
                };
                match r {
                    Err(e) if is_missing(&e) => Ok(()),
                    r => r,
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(c: &SshSftpConfig) -> Vec<String> {
        ssh_command(c)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// A location is data, never ssh options: a host, user or key that looks like an
    /// option (a planted mirror definition could hold one) stays an argument, and the
    /// user's multiplexing settings cannot leave a master behind.
    #[test]
    fn a_hostile_location_cannot_become_an_ssh_option() {
        let c = SshSftpConfig {
            host: "-oProxyCommand=touch /tmp/pwned".into(),
            port: Some(2222),
            user: Some("-oLocalCommand=x".into()),
            key: Some("-F/etc/evil".into()),
            known_hosts: KnownHosts::Strict,
            root: "/srv".into(),
            requests: 8,
        };
        let a = args(&c);
        let dashes = a.iter().position(|x| x == "--").expect("an end of options");
        assert_eq!(a[dashes + 1], c.host, "the host comes right after --");
        assert_eq!(a[dashes + 2], "sftp");
        let value_of = |flag: &str| a[a.iter().position(|x| x == flag).unwrap() + 1].clone();
        assert_eq!(value_of("-l"), "-oLocalCommand=x", "the user is -l's value");
        assert_eq!(value_of("-i"), "-F/etc/evil", "the key is -i's value");
        for pinned in [
            "ControlMaster=no",
            "ControlPersist=no",
            "StrictHostKeyChecking=yes",
        ] {
            assert!(a.iter().any(|x| x == pinned), "{pinned} in {a:?}");
        }
        assert!(!a.iter().any(|x| x.contains("UserKnownHostsFile")));
    }
}
