//! Real storage servers on loopback, started by the tests themselves: an S3 server
//! (s3s-fs) and an SFTP server (OpenSSH's sshd with throwaway keys). `.ci/run` installs
//! both. Without them a test fails under CI=true and is skipped (with a message)
//! elsewhere.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Finds a program on PATH or in cargo's bin directory.
fn find(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The server program, or None to skip (never under CI=true).
fn require(program: &str) -> Option<PathBuf> {
    match find(program) {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{program} is not installed: run the tests through .ci/run")
        }
        None => {
            eprintln!("skipping: {program} is not installed (bash .ci/run installs it)");
            None
        }
    }
}

/// A loopback port nothing listens on (free a moment ago).
pub fn closed_port() -> u16 {
    free_port()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether whatever listens on `port` opens with an SSH version line.
fn greets_with_ssh(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = [0u8; 4];
    c.read_exact(&mut head).is_ok() && &head == b"SSH-"
}

/// A running server process, killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    restart: Option<Command>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Stops the server (it can be started again on the same port with `start_again`).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn start_again(&mut self) {
        let mut cmd = self.restart.take().expect("restartable server");
        self.child = cmd.spawn().expect("restart server");
        wait_for_port(self.port, &mut self.child, "server");
        self.restart = Some(cmd);
    }
}

pub const S3_KEY: &str = "vault-test-access";
pub const S3_SECRET: &str = "vault-test-secret-key";

/// An S3 server storing under `root`, with one bucket `bucket`.
pub struct S3 {
    pub server: Server,
    pub root: PathBuf,
}

impl S3 {
    pub fn start(root: &Path) -> Option<S3> {
        let bin = require("s3s-fs")?;
        std::fs::create_dir_all(root.join("bucket")).unwrap();
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start s3s-fs");
        wait_for_port(port, &mut child, "s3s-fs");
        Some(S3 {
            server: Server {
                child,
                port,
                restart: Some(cmd),
            },
            root: root.to_path_buf(),
        })
    }

    /// A repository URL in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "s3://bucket/{prefix}?endpoint=http://127.0.0.1:{}&region=us-east-1",
            self.server.port
        )
    }

    /// The environment a client needs.
    pub fn env(&self) -> [(&'static str, &'static str); 2] {
        [
            ("AWS_ACCESS_KEY_ID", S3_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        ]
    }
}

/// An SFTP server (sshd) that accepts one throwaway key for the current user.
pub struct Sftp {
    pub server: Server,
    dir: PathBuf,
}

/// The SFTP server of a host that lets the backing-up machine only create: no remove,
/// rename, attribute change or link, and every file it creates read-only (`-u 0222`), so
/// that a user who is not root cannot open one again for writing.
pub const CREATE_ONLY_SFTP: &str = "internal-sftp -P remove,rename,posix-rename,rmdir,setstat,fsetstat,lsetstat,hardlink,symlink,copy-data -u 0222";

/// A user that is not root (root bypasses file modes), for the create-only server:
/// created when missing, with no password and no home directory.
pub const CREATE_ONLY_USER: &str = "vault-create-only";

impl Sftp {
    pub fn start(dir: &Path) -> Option<Sftp> {
        Self::start_with(dir, "internal-sftp")
    }

    /// An sshd whose SFTP subsystem is `CREATE_ONLY_SFTP`, logged into as
    /// `CREATE_ONLY_USER` (see `url_as`).
    pub fn start_create_only(dir: &Path) -> Option<Sftp> {
        let exists = Command::new("id")
            .arg(CREATE_ONLY_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            // "*": no password, yet not a locked account, which sshd would refuse.
            let status = Command::new(find("useradd").expect("useradd"))
                .args(["-M", "-p", "*", "-s", "/bin/sh", CREATE_ONLY_USER])
                .status()
                .expect("useradd");
            assert!(status.success(), "useradd {CREATE_ONLY_USER}");
        }
        // Only that user is restricted, as the README's `Match User` block does: root
        // logs in with full rights, as the maintaining machine's account.
        Self::start_with(
            dir,
            &format!(
                "internal-sftp\nMatch User {CREATE_ONLY_USER}\n    ForceCommand {CREATE_ONLY_SFTP}"
            ),
        )
    }

    fn start_with(dir: &Path, subsystem: &str) -> Option<Sftp> {
        let sshd = require("sshd")?;
        std::fs::create_dir_all(dir).unwrap();
        for key in ["hostkey", "userkey"] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", ""])
                .arg("-f")
                .arg(dir.join(key))
                .status()
                .expect("ssh-keygen");
            assert!(status.success());
        }
        std::fs::copy(dir.join("userkey.pub"), dir.join("authorized_keys")).unwrap();
        std::fs::create_dir_all("/run/sshd").ok(); // privilege separation directory
        // A port found free may be taken before sshd binds it (by a client's ephemeral
        // port, or a server of a test running alongside); sshd then exits, or another
        // server answers. Only an SSH greeting from our own sshd will do.
        let (cmd, child, port) = (0..5)
            .find_map(|_| Self::spawn(&sshd, dir, subsystem))
            .expect("sshd did not start on any of 5 free ports");
        Some(Sftp {
            server: Server {
                child,
                port,
                restart: Some(cmd),
            },
            dir: dir.to_path_buf(),
        })
    }

    /// sshd started on a free port and greeting; None if it could not have that port.
    fn spawn(sshd: &Path, dir: &Path, subsystem: &str) -> Option<(Command, Child, u16)> {
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nAuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPidFile {d}/sshd.pid\nSubsystem sftp {subsystem}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let _ = std::fs::remove_file(dir.join("sshd.pid"));
        let mut cmd = Command::new(sshd);
        cmd.arg("-f")
            .arg(dir.join("sshd_config"))
            .args(["-D", "-e"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start sshd");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = child.try_wait() {
                return None; // the port was taken
            }
            // sshd writes its pid file once it listens: then the greeting is its own.
            let pid = std::fs::read_to_string(dir.join("sshd.pid")).unwrap_or_default();
            if pid.trim() == child.id().to_string() && greets_with_ssh(port) {
                return Some((cmd, child, port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// A repository URL at `path` on the server (an absolute path of this machine).
    pub fn url(&self, path: &Path) -> String {
        self.url_as(&vault::repo::repository::username(), path)
    }

    /// The private key the server accepts.
    pub fn key(&self) -> PathBuf {
        self.dir.join("userkey")
    }

    /// A URL naming no user: each machine's ssh (its `VAULT_SSH`, or its ssh config)
    /// decides whom it logs in as, so that the backing-up machine and the maintaining
    /// one reach the same copy with different rights under one mirror definition.
    pub fn url_without_user(&self, path: &Path) -> String {
        format!(
            "sftp://127.0.0.1:{}{}?key={}&known_hosts=accept",
            self.server.port,
            path.display(),
            self.dir.join("userkey").display()
        )
    }

    /// `url` for logging in as `user`.
    pub fn url_as(&self, user: &str, path: &Path) -> String {
        format!(
            "sftp://{user}@127.0.0.1:{}{}?key={}&known_hosts=accept",
            self.server.port,
            path.display(),
            self.dir.join("userkey").display()
        )
    }
}

/// A 3-node Garage cluster on loopback (replication factor 3, one zone per node): a
/// real distributed object store. Its S3 API is reached through node 1.
pub struct Garage {
    pub nodes: Vec<Server>,
    configs: Vec<PathBuf>,
    bin: PathBuf,
    pub s3_port: u16,
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    pub fn start(dir: &Path) -> Option<Garage> {
        let bin = require("garage")?;
        let secret = "5b1e4ac0b38f4d9e8e7c71cbd2a9f0e44c5f6a1d2e3b4c5d6e7f8091a2b3c4d5";
        let mut nodes = Vec::new();
        let mut configs = Vec::new();
        let mut s3_port = 0;
        for i in 1..=3 {
            let (rpc, s3, admin) = (free_port(), free_port(), free_port());
            if i == 1 {
                s3_port = s3;
            }
            let d = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let cfg = d.join("garage.toml");
            std::fs::write(
                &cfg,
                format!(
                    "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = 3\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                     root_domain = \".s3.garage.localhost\"\n\
                     [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\nadmin_token = \"vault-test-admin\"\n",
                    d = d.display()
                ),
            )
            .unwrap();
            let mut cmd = Command::new(&bin);
            cmd.arg("-c")
                .arg(&cfg)
                .arg("server")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = cmd.spawn().expect("start garage");
            wait_for_port(rpc, &mut child, "garage");
            nodes.push(Server {
                child,
                port: rpc,
                restart: Some(cmd),
            });
            configs.push(cfg);
        }
        let mut g = Garage {
            nodes,
            configs,
            bin,
            s3_port,
            key_id: String::new(),
            secret: String::new(),
        };
        g.form_cluster();
        Some(g)
    }

    /// Runs `garage` against node 1 and returns its stdout; retries while the cluster
    /// settles.
    fn admin(&self, args: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let out = Command::new(&self.bin)
                .arg("-c")
                .arg(&self.configs[0])
                .args(args)
                .output()
                .expect("run garage");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "garage {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn node_id(&self, i: usize) -> String {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.configs[i])
            .args(["node", "id", "-q"])
            .output()
            .expect("garage node id");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn form_cluster(&mut self) {
        let ids: Vec<String> = (0..3).map(|i| self.node_id(i)).collect();
        for id in &ids[1..] {
            self.admin(&["node", "connect", id]);
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap();
            let zone = format!("dc{}", i + 1);
            self.admin(&["layout", "assign", "-z", &zone, "-c", "1G", short]);
        }
        self.admin(&["layout", "apply", "--version", "1"]);
        self.admin(&["bucket", "create", "vault"]);
        let key = self.admin(&["key", "create", "vault-key"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in: {key}"))
        };
        self.key_id = field("Key ID:");
        self.secret = field("Secret key:");
        self.admin(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            "vault",
            "--key",
            "vault-key",
        ]);
    }

    pub fn url(&self, prefix: &str) -> String {
        format!(
            "s3://vault/{prefix}?endpoint=http://127.0.0.1:{}&region=garage",
            self.s3_port
        )
    }

    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
    }
}

/// A WebDAV server (rclone's) serving `root`.
pub struct WebDav {
    pub server: Server,
}

impl WebDav {
    pub fn start(root: &Path) -> Option<WebDav> {
        Self::start_with_login(root, None)
    }

    /// A server that asks for this user and password (basic authentication).
    pub fn start_with_login(root: &Path, login: Option<(&str, &str)>) -> Option<WebDav> {
        let bin = require("rclone")?;
        std::fs::create_dir_all(root).unwrap();
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "webdav"])
            .arg(root)
            .args(["--addr", &format!("127.0.0.1:{port}")]);
        if let Some((user, pass)) = login {
            cmd.args(["--user", user, "--pass", pass]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start rclone serve webdav");
        wait_for_port(port, &mut child, "rclone serve webdav");
        Some(WebDav {
            server: Server {
                child,
                port,
                restart: Some(cmd),
            },
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("webdav://127.0.0.1:{}/{path}", self.server.port)
    }
}

/// Makes the directory `dir` of a test (and its parent) reachable for the create-only
/// user.
pub fn open_path(dir: &tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    for d in [dir.path(), dir.path().parent().unwrap()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Gives `dir` to the create-only user with every file read-only and every pack
/// directory made, as a repository made with full rights is handed over (README
/// "Create-only storage").
pub fn hand_over(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for b in 0..=255u8 {
        std::fs::create_dir_all(dir.join(format!("data/{b:02x}"))).unwrap();
    }
    let status = Command::new("chown")
        .args(["-R", CREATE_ONLY_USER])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
    for f in super::walkdir(dir) {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
}

impl Sftp {
    /// Runs `sftp` batch `commands` (one per line; a leading `-` lets a failing one pass)
    /// logged in as the create-only user; whether the batch succeeded.
    pub fn as_create_only(&self, commands: &str) -> bool {
        use std::io::Write;
        let mut child = Command::new("sftp")
            .args(["-b", "-", "-i"])
            .arg(self.key())
            .args(["-P", &self.server.port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .arg(format!("{CREATE_ONLY_USER}@127.0.0.1"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sftp");
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{commands}").unwrap();
        drop(stdin);
        child.wait().unwrap().success()
    }
}
