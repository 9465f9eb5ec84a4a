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

impl Sftp {
    pub fn start(dir: &Path) -> Option<Sftp> {
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
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nAuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPidFile {d}/sshd.pid\nSubsystem sftp internal-sftp\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        std::fs::create_dir_all("/run/sshd").ok(); // privilege separation directory
        let mut cmd = Command::new(sshd);
        cmd.arg("-f")
            .arg(dir.join("sshd_config"))
            .args(["-D", "-e"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start sshd");
        wait_for_port(port, &mut child, "sshd");
        Some(Sftp {
            server: Server {
                child,
                port,
                restart: Some(cmd),
            },
            dir: dir.to_path_buf(),
        })
    }

    /// A repository URL at `path` on the server (an absolute path of this machine).
    pub fn url(&self, path: &Path) -> String {
        let user = vault::repo::repository::username();
        format!(
            "sftp://{user}@127.0.0.1:{}{}?key={}&known_hosts=accept",
            self.server.port,
            path.display(),
            self.dir.join("userkey").display()
        )
    }
}
