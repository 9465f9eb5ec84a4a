//! S3 Object Lock on a protected mirror (`object_lock=compliance|governance`): no S3
//! server that runs here implements Object Lock, so the tests put a capturing HTTP proxy
//! in front of s3s-fs. It records every request and answers the retention requests
//! (`PUT KEY?retention`) itself: with 200, or with the error a server without Object
//! Lock gives.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::Env;
use common::servers::{S3, S3_KEY, S3_SECRET};

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// Path and query, as on the request line.
    target: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// How the proxy answers retention requests.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    NotImplemented,
    /// Passed on to s3s-fs, which checks the signature before it finds it has no
    /// Object Lock.
    Upstream,
}

struct Capture {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Capture {
    fn start(upstream: u16, answer: Answer) -> Capture {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, answer, &log);
                });
            }
        });
        Capture { port, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request (head and Content-Length body); None at the end of the connection.
fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 65536];
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    assert!(
        !headers.contains_key("transfer-encoding"),
        "the proxy reads Content-Length bodies only: {headers:?}"
    );
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let total = head_end + 4 + len;
    while buf.len() < total {
        let mut chunk = [0u8; 65536];
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end + 4..total].to_vec();
    buf.drain(..total);
    Some(Seen {
        method,
        target,
        headers,
        body,
    })
}

/// Serves one client connection: each request goes to the upstream on a connection of
/// its own (closed after its answer), retention requests are answered here; the client
/// connection is closed after one answer, so no framing needs rewriting.
fn serve(
    mut conn: TcpStream,
    upstream: u16,
    answer: Answer,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let Some(req) = read_request(&mut conn, &mut buf) else {
        return Ok(());
    };
    log.lock().unwrap().push(req.clone());
    if req.method == "PUT" && req.target.ends_with("?retention") {
        let reply = match answer {
            Answer::Upstream => return forward(conn, upstream, &req),
            Answer::Ok => {
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
            }
            Answer::NotImplemented => {
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>";
                format!(
                    "HTTP/1.1 501 Not Implemented\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            }
        };
        return conn.write_all(reply.as_bytes());
    }
    forward(conn, upstream, &req)
}

/// Sends `req` to the upstream and its answer back.
fn forward(mut conn: TcpStream, upstream: u16, req: &Seen) -> std::io::Result<()> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        if k != "connection" {
            head += &format!("{k}: {v}\r\n");
        }
    }
    head += "connection: close\r\n\r\n";
    up.write_all(head.as_bytes())?;
    up.write_all(&req.body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let end = find(&resp, b"\r\n\r\n").unwrap_or(resp.len());
    let head = String::from_utf8_lossy(&resp[..end]);
    let mut out: String = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    out += "connection: close\r\n\r\n";
    conn.write_all(out.as_bytes())?;
    conn.write_all(resp.get(end + 4..).unwrap_or_default())
}

/// A repository with a file to back up, s3s-fs behind the capturing proxy, and the
/// mirror's URL through the proxy.
struct Setup {
    env: Env,
    _s3: S3,
    proxy: Capture,
}

fn setup(answer: Answer) -> Option<Setup> {
    let env = Env::new();
    let s3 = S3::start(&env.path("s3"))?;
    let proxy = Capture::start(s3.server.port, answer);
    std::fs::create_dir_all(env.path("src")).unwrap();
    std::fs::write(env.path("src/big"), common::bytes(3, 1_500_000)).unwrap();
    std::fs::write(env.path("src/small"), b"small").unwrap();
    let s = Setup {
        env,
        _s3: s3,
        proxy,
    };
    s.vault(&["init", "--pack-size", "512K"], 0);
    Some(s)
}

impl Setup {
    fn url(&self, lock: &str) -> String {
        format!(
            "s3://bucket/vault?endpoint=http://127.0.0.1:{}&region=us-east-1&object_lock={lock}",
            self.proxy.port
        )
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.env
            .cmd()
            .env("VAULT_MIRROR_OFFSITE_AWS_ACCESS_KEY_ID", S3_KEY)
            .env("VAULT_MIRROR_OFFSITE_AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs vault, asserts the exit code, returns stderr.
    fn vault(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "vault {args:?}\nstdout: {}\nstderr: {err}",
            String::from_utf8_lossy(&out.stdout)
        );
        err
    }

    fn backup(&self) {
        self.vault(&["backup", self.env.path("src").to_str().unwrap()], 0);
    }
}

fn xml(body: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(body);
    let start = text.find(&format!("<{name}>")).unwrap() + name.len() + 2;
    let end = text.find(&format!("</{name}>")).unwrap();
    text[start..end].to_string()
}

/// The object written by each PUT (not a retention request), and each retention
/// request's key with its mode and retain-until date.
fn puts_and_retentions(
    seen: &[Seen],
) -> (Vec<String>, BTreeMap<String, (String, jiff::Timestamp)>) {
    let mut puts = Vec::new();
    let mut retentions = BTreeMap::new();
    for r in seen.iter().filter(|r| r.method == "PUT") {
        match r.target.strip_suffix("?retention") {
            Some(key) => {
                assert!(
                    r.headers.contains_key("content-md5"),
                    "PutObjectRetention needs Content-MD5: {r:?}"
                );
                assert!(
                    r.headers["authorization"]
                        .starts_with("AWS4-HMAC-SHA256 Credential=vault-test-access/"),
                    "signed with the mirror's key: {r:?}"
                );
                let until: jiff::Timestamp = xml(&r.body, "RetainUntilDate").parse().unwrap();
                retentions.insert(key.to_string(), (xml(&r.body, "Mode"), until));
            }
            None => puts.push(r.target.split('?').next().unwrap().to_string()),
        }
    }
    (puts, retentions)
}

fn assert_locked(
    puts: &[String],
    retentions: &BTreeMap<String, (String, jiff::Timestamp)>,
    mode: &str,
    period_s: i64,
) {
    let expect = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(period_s);
    for key in puts {
        let (m, until) = retentions
            .get(key)
            .unwrap_or_else(|| panic!("{key} was written without a retention"));
        assert_eq!(m, mode, "{key}");
        let off = (expect.as_second() - until.as_second()).abs();
        assert!(
            off < 60,
            "{key}: retained until {until}, expected about {expect}"
        );
    }
}

#[test]
fn every_object_written_to_a_locked_mirror_gets_the_retention() {
    let Some(s) = setup(Answer::Ok) else {
        return;
    };
    s.backup();
    s.vault(
        &[
            "mirror",
            "add",
            "offsite",
            &s.url("compliance"),
            "--protect",
            "30d",
        ],
        0,
    );
    std::fs::write(s.env.path("src/new"), common::bytes(9, 700_000)).unwrap();
    s.backup();
    s.vault(&["sync"], 0);

    let (puts, retentions) = puts_and_retentions(&s.proxy.seen());
    for kind in [
        "/bucket/vault/config",
        "/bucket/vault/keys/",
        "/bucket/vault/data/",
        "/bucket/vault/index/",
        "/bucket/vault/snapshots/",
    ] {
        assert!(
            puts.iter().any(|p| p.starts_with(kind)),
            "nothing written under {kind}: {puts:?}"
        );
    }
    assert_locked(&puts, &retentions, "COMPLIANCE", 30 * 86400);
    // Status tells the mode the copy is locked in.
    let out = s.run(&["--json", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let offsite = status["copies"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "offsite"))
        .expect("offsite in status");
    assert_eq!(
        offsite["protection"]["object_lock"], "COMPLIANCE",
        "{status}"
    );
}

#[test]
fn maintain_extends_the_retention_of_what_is_still_there() {
    let Some(s) = setup(Answer::Ok) else {
        return;
    };
    s.backup();
    s.vault(
        &[
            "mirror",
            "add",
            "offsite",
            &s.url("governance"),
            "--protect",
            "4s",
        ],
        0,
    );
    // The objects, not the empty directory markers, which hold nothing to keep.
    let (mut written, _) = puts_and_retentions(&s.proxy.seen());
    written.retain(|k| !k.ends_with('/'));
    std::thread::sleep(std::time::Duration::from_secs(3));
    let before = s.proxy.seen().len();
    s.vault(&["maintain", "--mirror", "offsite"], 0);
    let (puts, retentions) = puts_and_retentions(&s.proxy.seen()[before..]);
    // Its only write is the probe of the mirror's clock, deleted at once: not locked.
    assert!(
        puts.iter()
            .all(|p| p.starts_with("/bucket/vault/tmp/") && p.ends_with(".clock")),
        "maintain writes nothing else here: {puts:?}"
    );
    assert_locked(&written, &retentions, "GOVERNANCE", 4);
}

#[test]
fn object_lock_needs_a_protected_mirror() {
    let Some(s) = setup(Answer::Ok) else {
        return;
    };
    let err = s.vault(&["mirror", "add", "offsite", &s.url("compliance")], 2);
    assert!(
        err.contains("object_lock= needs a protected mirror"),
        "{err}"
    );
    let err = s.vault(
        &[
            "mirror",
            "add",
            "offsite",
            &s.url("forever"),
            "--protect",
            "30d",
        ],
        2,
    );
    assert!(
        err.contains("governance or object_lock=compliance"),
        "{err}"
    );
}

#[test]
fn a_server_without_object_lock_fails_the_sync_of_that_mirror() {
    let Some(s) = setup(Answer::NotImplemented) else {
        return;
    };
    s.backup();
    s.vault(
        &[
            "mirror",
            "add",
            "offsite",
            &s.url("compliance"),
            "--protect",
            "30d",
            "--no-sync",
        ],
        0,
    );
    let err = s.vault(&["sync"], 3);
    let line = err
        .lines()
        .find(|l| l.contains("offsite"))
        .unwrap_or_else(|| panic!("no line names the mirror: {err}"));
    assert!(line.contains("does not implement S3 Object Lock"), "{err}");
}

#[test]
fn retention_requests_are_signed_as_s3_checks_them() {
    let Some(s) = setup(Answer::Upstream) else {
        return;
    };
    s.backup();
    s.vault(
        &[
            "mirror",
            "add",
            "offsite",
            &s.url("compliance"),
            "--protect",
            "30d",
            "--no-sync",
        ],
        0,
    );
    // s3s-fs verifies the signature first: a wrong one would be SignatureDoesNotMatch.
    let err = s.vault(&["sync"], 3);
    assert!(err.contains("NotImplemented"), "{err}");
    assert!(!err.to_lowercase().contains("signature"), "{err}");
}
