//! The latency proxy (`examples/latency_proxy.rs`) in front of a server on loopback: it
//! adds a round-trip time to every connection and counts connections, bytes and round
//! trips, so that a test can see what an operation costs at WAN distance.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The proxy's counters since it started (tests take differences).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Stats {
    pub connections_total: u64,
    pub connections_open: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Request/response exchanges: each time a client sends after it received.
    pub round_trips: u64,
}

/// A running proxy, killed when dropped.
pub struct Proxy {
    child: Child,
    port: u16,
    stats: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// A proxy on a free loopback port to `127.0.0.1:upstream_port`, adding `rtt_ms`.
    pub fn start(upstream_port: u16, rtt_ms: u64) -> Proxy {
        let dir = tempfile::tempdir().expect("a directory for the proxy's stats");
        let stats = dir.path().join("stats.json");
        let mut child = Command::new(binary())
            .args(["--upstream", &format!("127.0.0.1:{upstream_port}")])
            .args(["--rtt-ms", &rtt_ms.to_string()])
            .arg("--stats")
            .arg(&stats)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start latency_proxy");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            panic!("latency_proxy printed {line:?} instead of its port");
        };
        Proxy {
            child,
            port,
            stats,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The counters once they settled: the proxy writes them at most every 50 ms, and
    /// data still in flight changes them, so this waits until two reads agree.
    pub fn stats(&self) -> Stats {
        let read = || -> Stats {
            let json = std::fs::read_to_string(&self.stats).expect("the proxy's stats file");
            serde_json::from_str(&json).expect("the proxy's stats are JSON")
        };
        std::thread::sleep(Duration::from_millis(100));
        let mut last = read();
        let start = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(60));
            let now = read();
            if now == last || start.elapsed() > Duration::from_secs(5) {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example's binary beside this test's (target/<profile>/examples), built (or
/// brought up to date) first: `cargo test --test NAME` builds no examples, and `cargo
/// test --all-targets` builds them only as test harnesses.
fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's own path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        let target_dir = profile_dir.parent().expect("the target directory");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(name) => name,
        };
        let bin = profile_dir.join("examples/latency_proxy");
        let built = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "-q",
                "--example",
                "latency_proxy",
                "--profile",
                profile,
            ])
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .is_ok_and(|s| s.success());
        // Without cargo (a test binary run on its own), a binary built before will do.
        assert!(built || bin.is_file(), "could not build {}", bin.display());
        bin
    })
}
