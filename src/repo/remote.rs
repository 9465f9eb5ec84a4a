//! Why a copy's storage failed, in one line a person can act on: which copy, what failed,
//! and what to do. The storage library's own report (operation, context, the chain of
//! causes) is kept as the detail, which `-v` prints.
//!
//! The class comes from opendal's `ErrorKind` and, where that says only `Unexpected`,
//! from the words of the error and its causes: the HTTP client's connect errors, the S3
//! error code in a response body, an HTTP status, or ssh's last line on stderr (which
//! both SFTP services report as the error's message or its cause).

use std::sync::Arc;

use opendal::ErrorKind;

use crate::error::exit;

/// What failed, as far as the error tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteFailure {
    ConnectionRefused,
    HostNotFound,
    /// No route, or the connection was reset or closed before an answer.
    Unreachable,
    Timeout,
    Tls,
    /// ssh refused the server's host key (changed, or unknown in strict mode).
    HostKey,
    /// The server did not accept the credentials.
    Authentication,
    /// The credentials (or the local user) may not do this.
    PermissionDenied,
    /// The bucket (or container) does not exist.
    BucketMissing,
    /// Out of space or over quota.
    Full,
    /// The object is in a cold storage class and must be restored before it is read.
    Archived,
    RateLimited,
    ServerError,
    /// The location does not fit the server (wrong region, endpoint, bucket name).
    Location,
    /// None of the above: the detail says what.
    Other,
}

impl RemoteFailure {
    /// The exit code of a command that fails with it (README "Exit codes").
    pub fn exit_code(self) -> i32 {
        match self {
            RemoteFailure::BucketMissing => exit::NO_REPOSITORY,
            RemoteFailure::Location => exit::USAGE,
            RemoteFailure::Other => exit::ERROR,
            _ => exit::STORAGE,
        }
    }

    /// Whether the failure concerns one object rather than the whole copy: the line
    /// then names the object.
    fn per_object(self) -> bool {
        matches!(
            self,
            RemoteFailure::PermissionDenied
                | RemoteFailure::Archived
                | RemoteFailure::Full
                | RemoteFailure::Other
        )
    }
}

/// How a copy is reached, for the words of a hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Local,
    S3,
    Sftp,
    WebDav,
    Gcs,
    Azblob,
    B2,
}

impl Service {
    fn of(location: &str) -> Service {
        match location.split_once("://").map(|(s, _)| s) {
            Some("s3") => Service::S3,
            Some("sftp") => Service::Sftp,
            Some("webdav" | "webdavs") => Service::WebDav,
            Some("gcs") => Service::Gcs,
            Some("azblob") => Service::Azblob,
            Some("b2") => Service::B2,
            _ => Service::Local,
        }
    }

    /// The variables that hold this service's credentials.
    fn credential_vars(self) -> &'static [&'static str] {
        match self {
            Service::S3 => &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
            Service::WebDav => &["VAULT_WEBDAV_USER", "VAULT_WEBDAV_PASSWORD"],
            Service::Gcs => &["GOOGLE_APPLICATION_CREDENTIALS"],
            Service::Azblob => &["AZURE_STORAGE_KEY"],
            Service::B2 => &["B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY"],
            Service::Local | Service::Sftp => &[],
        }
    }
}

/// One copy of the repository as errors name it: the repository or a mirror, and its
/// location without credentials.
#[derive(Clone, Debug)]
pub struct CopyInfo {
    /// "repository LOCATION" or "mirror NAME (LOCATION)".
    pub label: String,
    location: String,
    service: Service,
    mirror: Option<String>,
    /// Its packs are in a storage class that cannot serve reads at once.
    pub cold: bool,
}

impl CopyInfo {
    pub fn new(location: &str, mirror: Option<&str>, cold: bool) -> Arc<CopyInfo> {
        let location = redact(location);
        let label = match mirror {
            Some(name) => format!("mirror {name} ({location})"),
            None => format!("repository {location}"),
        };
        Arc::new(CopyInfo {
            label,
            service: Service::of(&location),
            location,
            mirror: mirror.map(str::to_string),
            cold,
        })
    }

    pub fn service(&self) -> Service {
        self.service
    }

    /// Names the copy `label` instead (e.g. an export's destination).
    pub fn relabeled(&self, label: String) -> Arc<CopyInfo> {
        Arc::new(CopyInfo {
            label,
            ..self.clone()
        })
    }

    /// The credential variables of this copy, as the user must set them.
    fn credentials(&self) -> String {
        let vars = self.service.credential_vars();
        let names: Vec<String> = match &self.mirror {
            Some(m) => {
                let p = super::location::mirror_prefix(m);
                vars.iter().map(|v| format!("{p}{v}")).collect()
            }
            None => vars.iter().map(|v| v.to_string()).collect(),
        };
        let generic = if self.mirror.is_some() {
            " (or the usual variables, if the mirror was trusted with --generic-credentials)"
        } else {
            ""
        };
        format!("{}{generic}", names.join(" and "))
    }

    /// The server's host and port as the location gives them (an S3 location's
    /// endpoint), for hints.
    fn server(&self) -> Option<(String, Option<u16>)> {
        let u = url::Url::parse(&self.location).ok()?;
        let u = match self.service {
            Service::S3 => {
                let endpoint = u
                    .query_pairs()
                    .find(|(k, _)| k == "endpoint")
                    .map(|(_, v)| v.into_owned())?;
                url::Url::parse(&endpoint).ok()?
            }
            Service::Sftp | Service::WebDav => u,
            _ => return None,
        };
        Some((u.host_str()?.to_string(), u.port_or_known_default()))
    }

    /// `aws s3api restore-object` for an archived object, when the copy is on S3.
    fn restore_command(&self, path: &str) -> String {
        let parsed = url::Url::parse(&self.location).ok();
        match parsed.filter(|_| self.service == Service::S3) {
            Some(u) => {
                let prefix = u.path().trim_matches('/');
                let key = if prefix.is_empty() {
                    path.to_string()
                } else {
                    format!("{prefix}/{path}")
                };
                format!(
                    "aws s3api restore-object --bucket {} --key {key} --restore-request Days=7",
                    u.host_str().unwrap_or("BUCKET")
                )
            }
            None => "aws s3api restore-object …".into(),
        }
    }
}

/// The location with any password in it (the URL's own, or an endpoint's) replaced.
pub fn redact(location: &str) -> String {
    let Ok(mut u) = url::Url::parse(location) else {
        return location.to_string();
    };
    let mut changed = false;
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
        changed = true;
    }
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let redacted = redact(&v);
            changed |= redacted != v;
            (k.into_owned(), redacted)
        })
        .collect();
    if !changed {
        return location.to_string();
    }
    if !pairs.is_empty() {
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// A copy's storage failed: one plain line (`Display`), the class for the exit code,
/// and the storage library's full report in `detail` (for -v).
#[derive(Debug, thiserror::Error)]
#[error("{copy}: {what}: {hint}")]
pub struct RemoteError {
    pub copy: String,
    pub kind: RemoteFailure,
    /// What failed, in words (with the object, where it concerns one).
    pub what: String,
    /// What to do about it.
    pub hint: String,
    /// The storage library's report, every cause included.
    pub detail: String,
}

impl RemoteError {
    /// Classifies `e`, which happened at `path` of `copy`.
    pub fn new(copy: &CopyInfo, path: &str, e: &opendal::Error) -> RemoteError {
        let kind = classify(e);
        Self::of_kind(copy, path, kind, e)
    }

    pub(crate) fn of_kind(
        copy: &CopyInfo,
        path: &str,
        kind: RemoteFailure,
        e: &opendal::Error,
    ) -> RemoteError {
        let (what, hint) = words(copy, path, kind, e);
        let what = if kind.per_object() && !path.is_empty() && !what.contains(path) {
            format!("{what} at {path}")
        } else {
            what
        };
        RemoteError {
            copy: copy.label.clone(),
            kind,
            what,
            hint,
            detail: detail(e),
        }
    }

    /// This error came from a second request, made to tell the cause of `first` apart:
    /// the detail tells both.
    pub(crate) fn told_apart(mut self, first: &opendal::Error) -> RemoteError {
        self.detail = format!(
            "{}; listing the root to tell why: {}",
            detail(first),
            self.detail
        );
        self
    }
}

/// The storage library's whole report: the error, then each cause its text leaves out.
fn detail(e: &opendal::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        source = s.source();
    }
    parts.join(": ").replace('\n', " ")
}

/// The words of the error and its causes, without opendal's context (which holds paths
/// and URLs, whose names must not decide the class).
fn words_of(e: &opendal::Error) -> String {
    let mut text = e.message().to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(" | ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.to_lowercase()
}

/// The HTTP status of the response the error came from, when it says.
fn http_status(e: &opendal::Error) -> Option<u16> {
    let full = e.to_string();
    let at = full.find("status: ")? + "status: ".len();
    full.get(at..at + 3)?.parse().ok()
}

/// The S3 (or compatible) error code of the response body, when there is one.
fn s3_code(e: &opendal::Error) -> Option<String> {
    let m = e.message();
    let at = m.find("code: \"")? + "code: \"".len();
    let len = m[at..].find('"')?;
    Some(m[at..at + len].to_string()).filter(|c| !c.is_empty())
}

/// Whether an S3 "permission denied" came without the code that tells a refused
/// credential from a refused operation (a HEAD request's answer has no body).
pub(crate) fn needs_code(e: &opendal::Error) -> bool {
    e.kind() == ErrorKind::PermissionDenied && s3_code(e).is_none()
}

/// The class of a storage error.
pub fn classify(e: &opendal::Error) -> RemoteFailure {
    use RemoteFailure::*;
    let text = words_of(e);
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    let status = http_status(e);
    if has(&["invalidobjectstate", "blobarchived", "archived blob"]) {
        return Archived;
    }
    if has(&[
        "host key verification failed",
        "remote host identification has changed",
        "host key mismatch",
    ]) {
        return HostKey;
    }
    if has(&["nosuchbucket", "containernotfound", "bucket does not exist"]) {
        return BucketMissing;
    }
    // ssh: "Permission denied (publickey,password)."; an OS error reads "(os error 13)".
    let ssh_auth = text.contains("permission denied (") && !text.contains("(os error");
    if ssh_auth
        || status == Some(401)
        || has(&[
            "invalidaccesskeyid",
            "notsignedup",
            "signaturedoesnotmatch",
            "invalidtoken",
            "expiredtoken",
            "invalidclienttokenid",
            "authenticationfailed",
            "authentication failed",
            "too many authentication failures",
            "bad_auth_token",
            "unauthorized",
        ])
    {
        return Authentication;
    }
    if has(&["accessdenied", "allaccessdisabled"]) {
        return PermissionDenied;
    }
    if status == Some(507)
        || has(&[
            "quotaexceeded",
            "quota exceeded",
            "insufficient storage",
            "insufficientstorage",
            "no space left",
            "disk quota",
            "cap_exceeded",
        ])
    {
        return Full;
    }
    if has(&[
        "permanentredirect",
        "authorizationheadermalformed",
        "incorrectendpoint",
        "invalidbucketname",
        "invalidstorageclass",
    ]) {
        return Location;
    }
    if has(&["connection refused"]) {
        return ConnectionRefused;
    }
    if has(&[
        "dns error",
        "failed to lookup address",
        "could not resolve hostname",
        "name or service not known",
        "nodename nor servname",
        "temporary failure in name resolution",
        "no address associated with hostname",
    ]) {
        return HostNotFound;
    }
    if has(&[
        "timed out",
        "timeout reached",
        "connection request: timeout",
        "deadline has elapsed",
        "requesttimeout",
    ]) {
        return Timeout;
    }
    if has(&[
        "no route to host",
        "network is unreachable",
        "host is unreachable",
        "connection reset",
        "connection closed by",
        "kex_exchange_identification",
    ]) {
        return Unreachable;
    }
    if has(&[
        "certificate",
        "tls",
        "ssl",
        "handshake",
        "invalidcontenttype",
    ]) {
        return Tls;
    }
    if e.kind() == ErrorKind::RateLimited
        || status == Some(429)
        || has(&["slowdown", "too many requests", "toomanyrequests"])
    {
        return RateLimited;
    }
    if e.kind() == ErrorKind::PermissionDenied
        || has(&[
            "permission denied",
            "operation not permitted",
            "read-only file system",
        ])
    {
        return PermissionDenied;
    }
    if e.kind() == ErrorKind::ConfigInvalid {
        return Location;
    }
    // The SFTP status SSH_FX_FAILURE, which a full disk or a quota on the server gives
    // (the protocol has no code for them).
    if text.starts_with("sftp: failure") {
        return Full;
    }
    if status.is_some_and(|s| (500..600).contains(&s))
        || has(&[
            "internalerror",
            "serviceunavailable",
            "internal server error",
            "service unavailable",
            "bad gateway",
        ])
    {
        return ServerError;
    }
    Other
}

/// What failed and what to do, for `copy`.
fn words(copy: &CopyInfo, path: &str, kind: RemoteFailure, e: &opendal::Error) -> (String, String) {
    use RemoteFailure::*;
    let s = copy.service;
    let (what, hint): (String, String) = match kind {
        ConnectionRefused => (
            "connection refused".into(),
            match copy.server() {
                Some((host, Some(port))) => format!(
                    "check that the server is running and listening on {host} port {port}"
                ),
                _ => "check that the server is running and the host and port in the location"
                    .into(),
            },
        ),
        HostNotFound => (
            "host not found".into(),
            "check the host name in the location (and DNS)".into(),
        ),
        Unreachable => (
            "cannot reach the server (no route, or the connection was reset)".into(),
            "check the network, VPN or firewall, and that the port is the server's".into(),
        ),
        Timeout => (
            "timed out".into(),
            "the server or the network is down or too slow: check them and try again".into(),
        ),
        Tls => (
            "TLS/certificate error".into(),
            "check that the endpoint speaks the scheme the location gives (https or http) and that its certificate is valid for the host".into(),
        ),
        HostKey => {
            let host = match copy.server() {
                Some((h, Some(p))) if p != 22 => format!("[{h}]:{p}"),
                Some((h, _)) => h,
                None => "HOST".into(),
            };
            (
                "host key verification failed".into(),
                format!(
                    "the server's host key changed or is not known: if that is expected, check its fingerprint and update known_hosts (ssh-keygen -R '{host}', then ssh to it once)"
                ),
            )
        }
        Authentication => (
            "authentication failed".into(),
            match s {
                Service::Sftp => "check the ssh key (?key=… or the ssh agent) and that its public key is in the server's authorized_keys for this user".into(),
                Service::Local => "check this user's access".into(),
                _ => format!("check the credentials in {}", copy.credentials()),
            },
        ),
        PermissionDenied => (
            "permission denied".into(),
            match s {
                Service::Local => "check that this user may write there (owner, mode, `chattr +i`, a read-only mount)".into(),
                Service::Sftp => "check that the ssh user may read and write that directory on the server".into(),
                Service::S3 if needs_code(e) => format!(
                    "check the credentials in {} and that they may read and write this bucket",
                    copy.credentials()
                ),
                _ => "check that these credentials may read and write there (the bucket's or share's policy)".into(),
            },
        ),
        BucketMissing => (
            "the bucket does not exist".into(),
            "create the bucket or fix the path".into(),
        ),
        Full if s == Service::Sftp && words_of(e).starts_with("sftp: failure") => (
            format!("the server refused {path} without a reason (SFTP \"Failure\"), most often a full disk or quota"),
            "check free space and quota on the server".into(),
        ),
        Full => (
            "out of space or over quota".into(),
            "free space or raise the quota, then run the command again".into(),
        ),
        Archived => (
            format!("{path} is archived in a cold storage class"),
            format!(
                "restore it to a warm class first ({}), or read from a warm copy",
                copy.restore_command(path)
            ),
        ),
        RateLimited => (
            "the server limits the request rate".into(),
            "try again later, with fewer connections".into(),
        ),
        ServerError => (
            match http_status(e) {
                Some(st) => format!("server error (HTTP {st})"),
                None => "server error".into(),
            },
            "try again later; if it persists, look at the server".into(),
        ),
        Location if s3_code(e).as_deref() == Some("InvalidStorageClass") => (
            "the server does not offer the storage class of the location (InvalidStorageClass)"
                .into(),
            "check storage_class= against the classes this server offers".into(),
        ),
        Location => (
            match s3_code(e) {
                Some(c) => format!("the location does not fit the server ({c})"),
                None => format!("the location is not valid: {}", first_line(e.message())),
            },
            "check the bucket, region= and endpoint= of the location".into(),
        ),
        Other => (
            format!("storage error ({})", short(e)),
            "run with -v for the storage library's full report".into(),
        ),
    };
    (what, hint)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// The error's own message (or its innermost cause when the message is generic), cut
/// to one short line.
fn short(e: &opendal::Error) -> String {
    let mut innermost = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        innermost = Some(s.to_string());
        source = s.source();
    }
    let m = e.message().trim();
    let text = match innermost {
        Some(i) if m.is_empty() || m == "send http request" || m.ends_with(" error") => {
            format!("{m}: {i}")
        }
        _ if m.is_empty() => e.kind().to_string(),
        _ => m.to_string(),
    };
    let line: String = first_line(text.trim_start_matches(": "))
        .chars()
        .take(160)
        .collect();
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use opendal::Error;

    fn kind_of(kind: ErrorKind, message: &str) -> RemoteFailure {
        classify(&Error::new(kind, message))
    }

    /// The errors of the SFTP service that drives ssh itself: `ssh: ` and ssh's last
    /// line on stderr for the connection, `sftp: ` and the status message after.
    #[test]
    fn classifies_the_ssh_and_sftp_messages() {
        use RemoteFailure::*;
        let u = ErrorKind::Unexpected;
        for (kind, message, class) in [
            (
                u,
                "ssh: connect to host 127.0.0.1 port 1: Connection refused",
                ConnectionRefused,
            ),
            (u, "ssh: Host key verification failed.", HostKey),
            (
                u,
                "ssh: @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
                HostKey,
            ),
            (
                u,
                "ssh: me@127.0.0.1: Permission denied (publickey).",
                Authentication,
            ),
            (
                u,
                "ssh: me@host: Permission denied (publickey,password).",
                Authentication,
            ),
            (
                u,
                "ssh: Could not resolve hostname nohost: Name or service not known",
                HostNotFound,
            ),
            (
                u,
                "ssh: connect to host 192.0.2.1 port 22: Connection timed out",
                Timeout,
            ),
            (
                u,
                "ssh: connect to host 10.0.0.1 port 22: No route to host",
                Unreachable,
            ),
            (
                u,
                "ssh: kex_exchange_identification: read: Connection reset by peer",
                Unreachable,
            ),
            (
                ErrorKind::PermissionDenied,
                "sftp: Permission denied",
                PermissionDenied,
            ),
            (u, "sftp: Failure", Full),
        ] {
            assert_eq!(kind_of(kind, message), class, "{message}");
        }
        // "sftp: No such file" is NotFound, which the backend turns into "absent"
        // before it asks for a class; as a class it is nothing more specific.
        assert_eq!(kind_of(ErrorKind::NotFound, "sftp: No such file"), Other);
    }

    /// Today's SFTP service: "ssh error", ssh's line in the cause.
    #[test]
    fn classifies_the_causes_too() {
        let e = Error::new(ErrorKind::Unexpected, "ssh error").set_source(anyhow::anyhow!(
            "failed to connect to the remote host: root@127.0.0.1: Permission denied (publickey)."
        ));
        assert_eq!(classify(&e), RemoteFailure::Authentication);
        let io = std::io::Error::from_raw_os_error(111);
        let e = Error::new(ErrorKind::Unexpected, "send http request")
            .with_context(
                "url",
                "http://127.0.0.1:1/bucket/certificate-timeout/config",
            )
            .set_source(anyhow::Error::new(io).context("tcp connect error"));
        assert_eq!(classify(&e), RemoteFailure::ConnectionRefused, "{e}");
        let e = Error::new(ErrorKind::Unexpected, "send http request").set_source(
            anyhow::anyhow!("client error (Connect): dns error: failed to lookup address information: Name or service not known"),
        );
        assert_eq!(classify(&e), RemoteFailure::HostNotFound);
        let e = Error::new(ErrorKind::Unexpected, "send http request").set_source(anyhow::anyhow!(
            "client error (Connect): invalid peer certificate: UnknownIssuer"
        ));
        assert_eq!(classify(&e), RemoteFailure::Tls);
        let e = Error::new(ErrorKind::Unexpected, "send http request").set_source(anyhow::anyhow!(
            "client error (Connect): received corrupt message of type InvalidContentType"
        ));
        assert_eq!(classify(&e), RemoteFailure::Tls);
        // Local disks: io errors as opendal's fs service reports them.
        let e =
            Error::new(ErrorKind::Unexpected, "").set_source(std::io::Error::from_raw_os_error(28));
        assert_eq!(classify(&e), RemoteFailure::Full);
        let e = Error::new(ErrorKind::PermissionDenied, "")
            .set_source(std::io::Error::from_raw_os_error(13));
        assert_eq!(classify(&e), RemoteFailure::PermissionDenied);
        let e = Error::new(ErrorKind::Unexpected, "operation timeout reached");
        assert_eq!(classify(&e), RemoteFailure::Timeout);
    }

    fn s3_error(kind: ErrorKind, code: &str, status: u16) -> Error {
        Error::new(
            kind,
            format!(
                "S3Error {{ code: \"{code}\", message: \"\", resource: \"\", request_id: \"\" }}"
            ),
        )
        .with_context(
            "response",
            format!("Parts {{ status: {status}, version: HTTP/1.1 }}"),
        )
    }

    #[test]
    fn classifies_s3_codes_and_http_statuses() {
        use RemoteFailure::*;
        let pd = ErrorKind::PermissionDenied;
        for (e, class) in [
            (s3_error(pd, "InvalidObjectState", 403), Archived),
            (
                s3_error(ErrorKind::ConfigInvalid, "NoSuchBucket", 404),
                BucketMissing,
            ),
            (s3_error(pd, "AccessDenied", 403), PermissionDenied),
            (s3_error(pd, "InvalidAccessKeyId", 403), Authentication),
            (s3_error(pd, "NotSignedUp", 403), Authentication),
            (s3_error(pd, "SignatureDoesNotMatch", 403), Authentication),
            (s3_error(ErrorKind::Unexpected, "QuotaExceeded", 403), Full),
            (
                s3_error(ErrorKind::RateLimited, "SlowDown", 503),
                RateLimited,
            ),
            (
                s3_error(ErrorKind::Unexpected, "InternalError", 500),
                ServerError,
            ),
            (
                s3_error(ErrorKind::Unexpected, "PermanentRedirect", 301),
                Location,
            ),
            (
                s3_error(ErrorKind::Unexpected, "InvalidStorageClass", 400),
                Location,
            ),
        ] {
            assert_eq!(classify(&e), class, "{e}");
        }
        // A HEAD request's 403 has no body: the class is a guess, and says so.
        let head = Error::new(pd, "").with_context("response", "Parts { status: 403 }");
        assert_eq!(classify(&head), PermissionDenied);
        assert!(needs_code(&head));
        assert!(!needs_code(&s3_error(pd, "AccessDenied", 403)));
        // WebDAV: the status alone.
        let dav = |kind, status: u16, body: &str| {
            Error::new(kind, body).with_context(
                "response",
                format!("Parts {{ status: {status}, version: HTTP/1.1 }}"),
            )
        };
        assert_eq!(
            classify(&dav(ErrorKind::Unexpected, 401, "")),
            Authentication
        );
        assert_eq!(classify(&dav(pd, 403, "")), PermissionDenied);
        assert_eq!(classify(&dav(ErrorKind::Unexpected, 507, "")), Full);
        assert_eq!(classify(&dav(ErrorKind::Unexpected, 502, "")), ServerError);
        assert_eq!(classify(&dav(ErrorKind::Unexpected, 418, "teapot")), Other);
    }

    #[test]
    fn the_line_names_the_copy_the_class_and_what_to_do() {
        let copy = CopyInfo::new(
            "s3://bucket/vault?endpoint=http://127.0.0.1:9000&region=eu",
            Some("offsite"),
            false,
        );
        let e = s3_error(ErrorKind::PermissionDenied, "SignatureDoesNotMatch", 403);
        let r = RemoteError::new(&copy, "config", &e);
        let line = r.to_string();
        assert!(
            line.starts_with("mirror offsite (s3://bucket/vault?"),
            "{line}"
        );
        assert!(line.contains("authentication failed"), "{line}");
        assert!(
            line.contains("VAULT_MIRROR_OFFSITE_AWS_SECRET_ACCESS_KEY"),
            "{line}"
        );
        assert!(!line.contains("context: {"), "{line}");
        assert!(r.detail.contains("SignatureDoesNotMatch"), "{}", r.detail);
        assert_eq!(r.kind.exit_code(), exit::STORAGE);

        let e = s3_error(ErrorKind::PermissionDenied, "InvalidObjectState", 403);
        let r = RemoteError::new(&copy, "data/ab/abcd", &e);
        assert_eq!(
            r.to_string(),
            "mirror offsite (s3://bucket/vault?endpoint=http://127.0.0.1:9000&region=eu): data/ab/abcd is archived in a cold storage class: restore it to a warm class first (aws s3api restore-object --bucket bucket --key vault/data/ab/abcd --restore-request Days=7), or read from a warm copy"
        );
    }

    /// The new SFTP service's lines, as they will read.
    #[test]
    fn sftp_lines() {
        let copy = CopyInfo::new("sftp://me@host:2222/srv/vault", None, false);
        let line = |kind, message: &str, path| {
            RemoteError::new(&copy, path, &Error::new(kind, message)).to_string()
        };
        assert_eq!(
            line(
                ErrorKind::Unexpected,
                "ssh: Host key verification failed.",
                "config"
            ),
            "repository sftp://me@host:2222/srv/vault: host key verification failed: the server's host key changed or is not known: if that is expected, check its fingerprint and update known_hosts (ssh-keygen -R '[host]:2222', then ssh to it once)"
        );
        assert_eq!(
            line(
                ErrorKind::Unexpected,
                "ssh: connect to host host port 2222: Connection refused",
                "config"
            ),
            "repository sftp://me@host:2222/srv/vault: connection refused: check that the server is running and listening on host port 2222"
        );
        assert_eq!(
            line(
                ErrorKind::Unexpected,
                "ssh: me@host: Permission denied (publickey).",
                "config"
            ),
            "repository sftp://me@host:2222/srv/vault: authentication failed: check the ssh key (?key=… or the ssh agent) and that its public key is in the server's authorized_keys for this user"
        );
        assert_eq!(
            line(
                ErrorKind::PermissionDenied,
                "sftp: Permission denied",
                "tmp/x.tmp"
            ),
            "repository sftp://me@host:2222/srv/vault: permission denied at tmp/x.tmp: check that the ssh user may read and write that directory on the server"
        );
        assert_eq!(
            line(ErrorKind::Unexpected, "sftp: Failure", "tmp/x.tmp"),
            "repository sftp://me@host:2222/srv/vault: the server refused tmp/x.tmp without a reason (SFTP \"Failure\"), most often a full disk or quota: check free space and quota on the server"
        );
        assert_eq!(
            line(
                ErrorKind::Unexpected,
                "ssh: Could not resolve hostname host: Name or service not known",
                "config"
            ),
            "repository sftp://me@host:2222/srv/vault: host not found: check the host name in the location (and DNS)"
        );
    }

    #[test]
    fn locations_lose_their_passwords() {
        assert_eq!(
            redact("webdavs://me:secret@dav.example.org/backup"),
            "webdavs://me:***@dav.example.org/backup"
        );
        let r = redact("s3://b/p?endpoint=https://key:secret@s3.example.org&region=x");
        assert!(!r.contains("secret") && r.contains("region=x"), "{r}");
        let plain = "sftp://me@host:2222/srv/backup?key=/root/.ssh/id&known_hosts=strict";
        assert_eq!(redact(plain), plain);
        assert_eq!(redact("/srv/backup"), "/srv/backup");
    }
}
