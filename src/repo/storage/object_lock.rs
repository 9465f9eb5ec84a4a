//! S3 Object Lock: every object written to a protected S3 mirror whose location says
//! `object_lock=governance|compliance` is given a retention (mode, retain-until = now +
//! the mirror's protection period), so that nobody holding the storage credentials, the
//! backup machine's included, can delete or overwrite that version of it before then.
//!
//! How: opendal writes the object as it writes any other (its timeouts, limits, storage
//! class and retries all apply), then this store sends S3's `PutObjectRetention`
//! (`PUT /KEY?retention`) for it, signed here with AWS Signature Version 4 and sent
//! through opendal's own HTTP transport. opendal 0.59 sends no object-lock headers and
//! offers no way to add any to its signed requests (S3 refuses unsigned `x-amz-*`
//! headers), so the alternative was to upload every object with a request of our own,
//! carrying `x-amz-object-lock-*`: that would be atomic, but it would take uploads out
//! of opendal's bandwidth and connection limits, its timeouts and its storage-class
//! handling. `PutObjectRetention` is also the one request `vault maintain` needs to
//! extend a retention, so uploads and extensions share one small, tested path.
//!
//! The cost of the choice: one more request per object, and a window between the upload
//! and its retention. A retention the server refuses fails the write, so the sync of
//! that mirror fails with the server's reason (a bucket without Object Lock answers
//! `InvalidRequest`, a server without it `NotImplemented`): vault never carries on as if
//! the copy were locked. An object whose upload succeeded and whose retention did not
//! (the process killed in between) is locked by the first `vault maintain` once it is
//! half the protection period old (see `ops::copies::object_lock`).

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use md5::Digest as _;
use opendal::{Buffer, ErrorKind, HttpTransporter};
use sha2::Digest as _;
use sha2::Sha256;

use super::{Result, Storage};

/// The retention mode the user chose (S3's names, upper-cased on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Users with `s3:BypassGovernanceRetention` may shorten or remove it.
    Governance,
    /// Nobody, the account's root user included, may shorten or remove it.
    Compliance,
}

impl Mode {
    /// `governance` or `compliance`, as the location's `object_lock=` gives it.
    pub fn parse(s: &str) -> Option<Mode> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Some(Mode::Governance),
            "compliance" => Some(Mode::Compliance),
            _ => None,
        }
    }

    pub fn wire(self) -> &'static str {
        match self {
            Mode::Governance => "GOVERNANCE",
            Mode::Compliance => "COMPLIANCE",
        }
    }
}

/// Where the objects of an S3 location are, and the credentials that sign requests
/// there: the same the location's operator uses.
#[derive(Clone)]
pub struct S3Target {
    /// `https://host[:port]` (no bucket in it).
    pub endpoint: String,
    pub bucket: String,
    /// The location's prefix: "" or "a/b" (no leading or trailing `/`).
    pub root: String,
    pub region: String,
    pub virtual_host: bool,
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// Sets retentions on one S3 location.
#[derive(Debug)]
pub struct Retention {
    target: S3Target,
    mode: Mode,
    period: Duration,
}

/// How many times a retention request is sent when the server or the network fails in a
/// way that may pass.
const TRIES: u32 = 4;

/// How long one retention request may take (a small body: the storage's own requests
/// get two minutes with their transfers).
const TIMEOUT: Duration = Duration::from_secs(60);

impl Retention {
    pub fn new(target: S3Target, mode: Mode, period: Duration) -> Retention {
        Retention {
            target,
            mode,
            period,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Now plus the protection period: the retain-until date of what is locked now.
    pub fn until_from_now(&self) -> Timestamp {
        let span = jiff::SignedDuration::try_from(self.period).unwrap_or(jiff::SignedDuration::MAX);
        Timestamp::now()
            .checked_add(span)
            .unwrap_or(Timestamp::MAX)
            .round(jiff::Unit::Second)
            .unwrap_or(Timestamp::MAX)
    }

    /// Locks the object at `path` (relative to the location) until now + the period.
    pub fn lock(&self, path: &str) -> opendal::Result<()> {
        self.lock_until(path, self.until_from_now())
    }

    /// Sets the retention of `path` to `until`, retrying what may pass.
    pub fn lock_until(&self, path: &str, until: Timestamp) -> opendal::Result<()> {
        let mut wait = Duration::from_millis(500);
        let mut tries = 1;
        loop {
            match self.send(path, until) {
                Err(e) if e.is_temporary() && tries < TRIES => {
                    log::info!("{path}: setting the retention again ({e})");
                    std::thread::sleep(wait);
                    wait *= 2;
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    fn send(&self, path: &str, until: Timestamp) -> opendal::Result<()> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            self.mode.wire(),
            until.strftime("%Y-%m-%dT%H:%M:%SZ")
        );
        let req = sign(&self.target, path, body.into_bytes(), Timestamp::now())?;
        let http = HttpTransporter::default();
        // Made inside the runtime, whose timer the timeout needs.
        let send = async { tokio::time::timeout(TIMEOUT, http.send(req)).await };
        let resp = crate::repo::backend::RUNTIME
            .block_on(send)
            .map_err(|_| {
                opendal::Error::new(ErrorKind::Unexpected, "retention request timed out")
                    .set_temporary()
            })?
            .map_err(|e| e.with_operation("PutObjectRetention"))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        Err(refusal(path, status.as_u16(), &resp.into_body().to_bytes()))
    }
}

/// The error of a retention the server did not set: its code and message, with what the
/// usual codes mean for a vault mirror.
fn refusal(path: &str, status: u16, body: &[u8]) -> opendal::Error {
    let text = String::from_utf8_lossy(body);
    let code = xml_field(&text, "Code").unwrap_or_else(|| format!("HTTP {status}"));
    let message = xml_field(&text, "Message").unwrap_or_default();
    let meaning = match code.as_str() {
        "NotImplemented" => "this server does not implement S3 Object Lock",
        "InvalidRequest" | "ObjectLockConfigurationNotFoundError" => {
            "the bucket does not have Object Lock enabled (it is turned on when the bucket is created, with versioning)"
        }
        "AccessDenied" => {
            "these credentials may not set retentions (s3:PutObjectRetention), or the date would shorten one"
        }
        _ => "the server did not set it",
    };
    let temporary = status == 429 || (status >= 500 && code != "NotImplemented");
    let kind = if temporary {
        ErrorKind::Unexpected
    } else {
        ErrorKind::Unsupported
    };
    let mut e = opendal::Error::new(
        kind,
        format!("object lock refused for {path}: {meaning} ({code}: {message})"),
    )
    .with_operation("PutObjectRetention");
    if temporary {
        e = e.set_temporary();
    }
    e
}

/// The text of the first `<name>` element of a small XML answer.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..start + len].trim().to_string())
}

/// S3's URI encoding of one path segment: unreserved characters as they are.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_path(p: &str) -> String {
    p.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// A signed `PUT /KEY?retention` (AWS Signature Version 4) for the object at `path`.
fn sign(
    t: &S3Target,
    path: &str,
    body: Vec<u8>,
    now: Timestamp,
) -> opendal::Result<http::Request<Buffer>> {
    let bad = |m: String| opendal::Error::new(ErrorKind::ConfigInvalid, m);
    let base =
        url::Url::parse(&t.endpoint).map_err(|e| bad(format!("endpoint {}: {e}", t.endpoint)))?;
    let host = base
        .host_str()
        .ok_or_else(|| bad(format!("endpoint {} has no host", t.endpoint)))?;
    let host = match base.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let key = if t.root.is_empty() {
        path.to_string()
    } else {
        format!("{}/{path}", t.root)
    };
    // An endpoint may have a path of its own, under which the buckets are.
    let base_path = base.path().trim_end_matches('/');
    let (host, uri_path) = if t.virtual_host {
        (
            format!("{}.{host}", t.bucket),
            format!("{base_path}/{}", encode_path(&key)),
        )
    } else {
        let bucket = encode_segment(&t.bucket);
        (host, format!("{base_path}/{bucket}/{}", encode_path(&key)))
    };
    let url = format!("{}://{host}{uri_path}?retention", base.scheme());

    let amz_date = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let day = &amz_date[..8];
    let payload = hex::encode(Sha256::digest(&body));
    let md5 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body))
    };
    let mut headers: Vec<(&str, String)> = vec![
        ("content-md5", md5),
        ("host", host),
        ("x-amz-content-sha256", payload.clone()),
        ("x-amz-date", amz_date.clone()),
    ];
    if let Some(token) = &t.session_token {
        headers.push(("x-amz-security-token", token.clone()));
    }
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
    let signed = signed.join(";");
    let canonical =
        format!("PUT\n{uri_path}\nretention=\n{canonical_headers}\n{signed}\n{payload}");
    let scope = format!("{day}/{}/s3/aws4_request", t.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{}", t.secret_key).as_bytes(), day.as_bytes());
    let k = hmac(&k, t.region.as_bytes());
    let k = hmac(&k, b"s3");
    let k = hmac(&k, b"aws4_request");
    let signature = hex::encode(hmac(&k, to_sign.as_bytes()));
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
        t.access_key
    );

    let mut req = http::Request::builder().method("PUT").uri(&url);
    for (k, v) in &headers {
        req = req.header(*k, v);
    }
    req.header("authorization", auth)
        .header("content-type", "application/xml")
        .body(Buffer::from(body))
        .map_err(|e| bad(format!("retention request for {path}: {e}")))
}

/// A store that locks every object it writes (see the module's documentation).
#[derive(Debug)]
pub struct ObjectLock<S> {
    inner: S,
    retention: std::sync::Arc<Retention>,
}

impl<S: Storage> ObjectLock<S> {
    pub fn new(inner: S, retention: std::sync::Arc<Retention>) -> Self {
        ObjectLock { inner, retention }
    }
}

impl<S: Storage> Storage for ObjectLock<S> {
    super::reads_pass_through!();

    fn write(&self, path: &str, bytes: Bytes) -> Result<()> {
        self.inner.write(path, bytes)?;
        Ok(self.retention.lock(path)?)
    }

    fn write_new(&self, path: &str, bytes: Bytes) -> Result<()> {
        self.inner.write_new(path, bytes)?;
        Ok(self.retention.lock(path)?)
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.inner.rename(from, to)?;
        Ok(self.retention.lock(to)?)
    }

    /// A delete on a versioned bucket leaves a delete marker; the locked version stays.
    fn delete(&self, path: &str) -> Result<()> {
        self.inner.delete(path)
    }

    /// On S3 a directory is an empty object of its own: locked like the others.
    fn create_dir(&self, dir: &str) -> Result<()> {
        self.inner.create_dir(dir)?;
        Ok(self.retention.lock(dir)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> S3Target {
        S3Target {
            endpoint: "https://s3.amazonaws.com".into(),
            bucket: "examplebucket".into(),
            root: "".into(),
            region: "us-east-1".into(),
            virtual_host: true,
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    #[test]
    fn signing_key_matches_the_aws_example() {
        // The signing key of AWS's documented example (secret above, 20130524,
        // us-east-1, s3), as its "Signature Calculations" page gives the final key's use.
        let k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", b"20130524");
        let k = hmac(&k, b"us-east-1");
        let k = hmac(&k, b"s3");
        let k = hmac(&k, b"aws4_request");
        // AWS's example "GET /test.txt" string to sign and its published signature.
        let to_sign = "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972";
        assert_eq!(
            hex::encode(hmac(&k, to_sign.as_bytes())),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn request_names_the_object_under_the_root() {
        let mut t = target();
        t.root = "vault/b".into();
        let now: Timestamp = "2026-12-03T10:00:00Z".parse().unwrap();
        let r = sign(&t, "data/ab/cd", b"<x/>".to_vec(), now).unwrap();
        assert_eq!(
            r.uri().to_string(),
            "https://examplebucket.s3.amazonaws.com/vault/b/data/ab/cd?retention"
        );
        let h = r.headers();
        assert_eq!(h["x-amz-date"], "20261203T100000Z");
        assert!(h.contains_key("content-md5"));
        let auth = h["authorization"].to_str().unwrap();
        assert!(
            auth.contains("Credential=AKIAIOSFODNN7EXAMPLE/20261203/us-east-1/s3/aws4_request")
        );
        assert!(auth.contains("SignedHeaders=content-md5;host;x-amz-content-sha256;x-amz-date"));

        t.virtual_host = false;
        t.endpoint = "http://127.0.0.1:9000".into();
        let r = sign(&t, "config", b"<x/>".to_vec(), now).unwrap();
        assert_eq!(
            r.uri().to_string(),
            "http://127.0.0.1:9000/examplebucket/vault/b/config?retention"
        );
        assert_eq!(r.headers()["host"], "127.0.0.1:9000");
    }

    #[test]
    fn refusals_say_what_they_mean() {
        let body = b"<Error><Code>NotImplemented</Code><Message>nope</Message></Error>";
        let e = refusal("config", 501, body);
        assert!(!e.is_temporary());
        assert!(
            e.to_string().contains("does not implement S3 Object Lock"),
            "{e}"
        );
        let e = refusal("config", 400, b"<Error><Code>InvalidRequest</Code></Error>");
        assert!(
            e.to_string().contains("does not have Object Lock enabled"),
            "{e}"
        );
        assert!(refusal("config", 503, b"").is_temporary());
    }
}
