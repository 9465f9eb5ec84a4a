//! No command leaves a process, a connection, a temporary object or a lock behind on a
//! remote repository: not when it succeeds, not when it fails, not when it is
//! interrupted with Ctrl-C or SIGTERM or killed, and not when its server dies mid-way.
//! Against a real sshd on loopback; the processes and connections are counted from /proc.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::servers::Sftp;
use common::{Env, bytes};

/// ssh processes talking to `port` (vault's own connections, or a leaked master).
fn ssh_processes(port: u16) -> Vec<String> {
    let port = port.to_string();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ssh = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "ssh"));
        if is_ssh && args.contains(&port) {
            found.push(args.join(" "));
        }
    }
    found
}

/// Established TCP connections from a client to `port`.
fn connections_to(port: u16) -> usize {
    let text = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let rem_port = f
                .get(2)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            rem_port == Some(port) && f.get(3) == Some(&"01")
        })
        .count()
}

/// Waits a moment for what an exited command's children were doing to end, then
/// asserts that nothing of it is left.
fn assert_nothing_left(port: u16, what: &str) {
    let start = Instant::now();
    loop {
        let procs = ssh_processes(port);
        let conns = connections_to(port);
        if procs.is_empty() && conns == 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what} left {} ssh processes and {conns} connections: {procs:#?}",
            procs.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

struct Remote {
    env: Env,
    sftp: Sftp,
    url: String,
    root: std::path::PathBuf,
}

impl Remote {
    fn start() -> Option<Remote> {
        let env = Env::new();
        let sftp = Sftp::start(&env.path("sshd"))?;
        let root = env.path("remote/vault");
        let url = sftp.url(&root);
        Some(Remote {
            env,
            sftp,
            url,
            root,
        })
    }

    fn port(&self) -> u16 {
        self.sftp.server.port
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.env.cmd();
        c.env("VAULT_REPOSITORY", &self.url).args(args);
        c
    }

    /// Runs a command to its end, expecting `code`, and checks that it left nothing.
    fn run(&self, args: &[&str], code: i32) -> String {
        let out = self.run_leaving_files(args, code);
        assert!(
            files_in(&self.root.join("tmp")).is_empty(),
            "{args:?} left tmp/"
        );
        assert!(
            files_in(&self.root.join("locks")).is_empty(),
            "{args:?} left a lock"
        );
        out
    }

    /// `run` where a killed process's files may still be on the server.
    fn run_leaving_files(&self, args: &[&str], code: i32) -> String {
        let out = self.cmd(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "vault {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_nothing_left(self.port(), &format!("vault {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A source big enough that backing it up or restoring it takes a while.
    fn big_source(&self) -> std::path::PathBuf {
        let src = self.env.path("src");
        fs::create_dir_all(&src).unwrap();
        for i in 0..12 {
            fs::write(src.join(format!("f{i}")), bytes(i, 6 << 20)).unwrap();
        }
        src
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("vault did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_files(dir: &Path) -> usize {
    common::walkdir(dir).iter().filter(|p| p.is_file()).count()
}

/// Waits until `dir` (on the server) holds more files than it did, so that a command
/// is mid-way (and has long installed its signal handlers).
fn wait_for_files(dir: &Path, child: &mut Child) {
    let before = count_files(dir);
    let start = Instant::now();
    while count_files(dir) <= before {
        assert!(child.try_wait().unwrap().is_none(), "ended too soon");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_command_ends_with_no_process_connection_or_temporary_file_left() {
    let Some(r) = Remote::start() else {
        return;
    };
    let src = r.env.source_with_file(bytes(7, 3 << 20));
    let src = src.to_str().unwrap();
    let target = r.env.path("restored");
    let target = target.to_str().unwrap();
    r.run(&["init", "--pack-size", "1M"], 0);
    r.run(&["backup", "-q", src], 0);
    r.run(&["backup", "-q", src], 0);
    r.run(&["snapshots"], 0);
    r.run(&["ls", "latest"], 0);
    r.run(&["check"], 0);
    r.run(&["check", "--read-data"], 0);
    r.run(&["audit"], 0);
    r.run(&["restore", "latest", "--target", target], 0);
    r.run(&["verify"], 0);
    r.run(&["forget", "-q", "--keep-last", "1", "--prune"], 0);
    // Failures end as clean as successes.
    r.run(&["restore", "ffffffff", "--target", target], 1);
    let mut wrong = r.cmd(&["snapshots"]);
    wrong.env("VAULT_PASSWORD", "not the password");
    assert_eq!(wrong.output().unwrap().status.code(), Some(12));
    assert_nothing_left(r.port(), "a wrong password");

    // A local repository with the SFTP repository as its mirror: sync, then reads that
    // fall back to it.
    let local = r.env.path("local");
    let local = local.to_str().unwrap();
    let l = |args: &[&str], code: i32| {
        let out = r
            .env
            .cmd()
            .env("VAULT_REPOSITORY", local)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        assert_nothing_left(r.port(), &format!("vault {args:?} with an sftp mirror"));
    };
    l(&["init"], 0);
    let far = r.sftp.url(&r.env.path("remote/mirror"));
    l(&["mirror", "add", "far", &far], 0);
    l(&["backup", "-q", src], 0);
    l(&["sync"], 0);
    l(&["mirror", "list"], 0);
    let status = r
        .env
        .cmd()
        .env("VAULT_REPOSITORY", local)
        .arg("status")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("far"));
    assert_nothing_left(r.port(), "vault status");
}

#[test]
fn an_interrupted_command_removes_its_temporary_objects_and_lock() {
    let Some(r) = Remote::start() else {
        return;
    };
    let src = r.big_source();
    r.run(&["init", "--pack-size", "1M"], 0);
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let mut child = r.spawn(&["backup", "-q", src.to_str().unwrap()]);
        wait_for_files(&r.root.join("data"), &mut child);
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = wait_exit(&mut child, Duration::from_secs(30));
        assert_eq!(status.code(), Some(code), "signal {signal}");
        assert_nothing_left(r.port(), "an interrupted backup");
        assert!(
            files_in(&r.root.join("tmp")).is_empty(),
            "tmp/ after signal {signal}"
        );
        assert!(
            files_in(&r.root.join("locks")).is_empty(),
            "lock after signal {signal}"
        );
    }
    // Whatever was stored stays consistent.
    r.run(&["check"], 0);
}

#[test]
fn a_killed_command_or_a_dead_server_leaves_no_process() {
    let Some(mut r) = Remote::start() else {
        return;
    };
    let src = r.big_source();
    r.run(&["init", "--pack-size", "1M"], 0);
    let mut child = r.spawn(&["backup", "-q", src.to_str().unwrap()]);
    wait_for_files(&r.root.join("data"), &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_nothing_left(r.port(), "a backup killed with SIGKILL");

    r.run_leaving_files(&["unlock"], 0);
    r.run_leaving_files(&["backup", "-q", src.to_str().unwrap()], 0);
    let target = r.env.path("restored");
    let mut child = r.spawn(&["restore", "latest", "--target", target.to_str().unwrap()]);
    wait_for_files(&target, &mut child);
    // The server goes away, its sessions with it.
    let port = r.port();
    let sessions = sshd_sessions(&r.env.path("sshd/sshd.pid"));
    r.sftp.server.stop();
    for pid in sessions {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let status = wait_exit(&mut child, Duration::from_secs(120));
    assert!(
        !status.success(),
        "a restore from a dead server cannot succeed"
    );
    assert_nothing_left(port, "a restore whose server died");
}

/// The processes of this sshd's connections: every descendant of its listener.
fn sshd_sessions(pid_file: &Path) -> Vec<i32> {
    let listener: i32 = fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let parents: Vec<(i32, i32)> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            // The parent is the second field after the parenthesised name.
            let ppid = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![listener];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}
