//! Profiles: named settings in a TOML config file, so a nightly job is `vault run nightly`.
//! One set of types for the config file, the command line (which applies a profile to the
//! flags it left unset) and programs using the library.
//!
//! ```toml
//! [profiles.nightly]
//! repository = "/srv/backup"              # or s3://..., sftp://...
//! password-file = "/etc/vault/password"   # or password-command = "pass show vault"
//! sources = ["/home", "/etc"]
//! exclude = ["*.tmp", "/home/*/.cache"]
//! iexclude = ["*.iso"]                    # and the other selection options of backup,
//! exclude-larger-than = "2G"              # without the dashes: files-from,
//! ignore-file = [".vaultignore"]          # exclude-if-present, exclude-file, ...
//! tags = ["nightly"]
//! prune = "7d"                            # how often `run` prunes: "always", "never", a span
//! check = "1/7"                           # `run` reads a rotating 1/7 of the data
//! insecure-http = false                   # true: credentials over plain http (not loopback)
//! limit-upload = "10M"                    # bytes/s to every backend, as --limit-upload
//! limit-download = "50M"                  # ... and from it, as --limit-download
//! connections = 8                         # requests in flight per backend, as --connections
//! [profiles.nightly.retention]            # forget's options, without the dashes
//! keep-daily = 7
//! keep-weekly = 5
//! [profiles.nightly.export]               # `run` exports when the last one is older
//! destination = "/media/archive"
//! every = "30d"
//! [profiles.nightly.credentials]          # the repository's own: NAME=value lines
//! file = "/etc/vault/primary.env"
//! [profiles.nightly.mirrors.offsite]      # a mirror's, by its `vault mirror add` name
//! file = "/etc/vault/offsite.env"         # and/or variables to read them from:
//! env = { AWS_ACCESS_KEY_ID = "OFFSITE_KEY_ID", AWS_SECRET_ACCESS_KEY = "OFFSITE_SECRET" }
//! trust = true                            # use it on this host (as `vault mirror trust`)
//! url = "s3://bucket/vault?region=eu"     # ... but only while its definition says this
//! generic-credentials = false             # true: the usual AWS_* etc. may serve it
//! insecure-http = false                   # true: credentials over plain http
//! limit-upload = "1M"                     # this mirror's own limits, over the command's:
//! limit-download = 0                      # 0 for none; a bare number is KiB/s
//! connections = 4
//! ```
//! Command-line flags override the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::error::VaultError;
use crate::ops::backup::BackupOptions;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Profile {
    pub repository: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    #[serde(default)]
    pub sources: Vec<PathBuf>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub host: Option<String>,
    #[serde(default)]
    pub exclude_caches: bool,
    /// backup's selection options of the same names (see [`BackupOptions`]).
    #[serde(default)]
    pub files_from: Vec<PathBuf>,
    #[serde(default)]
    pub files_from_verbatim: Vec<PathBuf>,
    #[serde(default)]
    pub files_from_raw: Vec<PathBuf>,
    #[serde(default)]
    pub exclude_file: Vec<PathBuf>,
    #[serde(default)]
    pub iexclude: Vec<String>,
    #[serde(default)]
    pub iexclude_file: Vec<PathBuf>,
    /// A size: "2G", "500M", or a number of bytes.
    pub exclude_larger_than: Option<Setting>,
    #[serde(default)]
    pub exclude_if_present: Vec<String>,
    #[serde(default)]
    pub ignore_file: Vec<String>,
    #[serde(default)]
    pub one_file_system: bool,
    /// forget's policy options without the leading dashes: keep-daily = 7,
    /// keep-tag = ["x"], group-by = "host".
    pub retention: Option<crate::ops::keep::KeepOptions>,
    /// How often `run` prunes: "always", "never", or a span like "7d" (default 7d).
    pub prune: Option<String>,
    /// `run` syncs the mirrors (default true).
    pub sync: Option<bool>,
    /// `run` reads this rotating part of the data: "1/7" (default), or "never".
    pub check: Option<String>,
    pub export: Option<ExportConfig>,
    /// Runs before each command of this profile; its failure skips the command.
    pub before: Option<String>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    /// The repository's own storage credentials.
    pub credentials: Option<Credentials>,
    /// Credentials may travel over plain http to a host that is not loopback.
    #[serde(default)]
    pub insecure_http: bool,
    /// Each mirror's storage credentials and trust, by mirror name.
    #[serde(default)]
    pub mirrors: BTreeMap<String, MirrorSection>,
    /// Limits for every backend of a command, as the flags of the same names (which
    /// override them): rates as strings ("10M") or bare numbers of KiB/s.
    #[serde(alias = "limit_upload")]
    pub limit_upload: Option<Setting>,
    #[serde(alias = "limit_download")]
    pub limit_download: Option<Setting>,
    pub connections: Option<Setting>,
}

/// A setting written as a number or a string, kept as written for the parser that
/// judges it (and names it in its error).
#[derive(Deserialize, Debug, Clone)]
#[serde(try_from = "toml::Value")]
pub struct Setting(String);

impl TryFrom<toml::Value> for Setting {
    type Error = String;

    fn try_from(v: toml::Value) -> Result<Setting, String> {
        match v {
            toml::Value::String(s) => Ok(Setting(s)),
            toml::Value::Integer(n) => Ok(Setting(n.to_string())),
            toml::Value::Float(f) => Ok(Setting(f.to_string())),
            other => Err(format!(
                "{other}: give a number or a string such as \"10M\""
            )),
        }
    }
}

/// A setting as written, for the parser that judges it.
pub fn text(s: &Option<Setting>) -> Option<String> {
    s.as_ref().map(|s| s.0.clone())
}

/// The limits a section sets, or a usage error naming `section` and the key.
pub fn section_limits(
    [upload, download, connections]: [&Option<Setting>; 3],
    section: &str,
) -> Result<crate::repo::limits::Limits> {
    Ok(parse_limits(
        text(upload).as_deref(),
        text(download).as_deref(),
        text(connections).as_deref(),
        &|key| format!("{section}{key}"),
    )?)
}

impl Profile {
    pub fn limits(&self) -> [&Option<Setting>; 3] {
        [&self.limit_upload, &self.limit_download, &self.connections]
    }

    /// The backup this profile describes; a usage error names a setting that is not
    /// valid.
    pub fn backup_options(&self) -> Result<BackupOptions, VaultError> {
        let mut opts = BackupOptions::default();
        self.fill_backup(&mut opts)?;
        Ok(opts)
    }

    /// Adds this profile to a backup's options: its sources and lists when the options
    /// name no paths, its exclusions and tags besides theirs, its host and size limit
    /// when they set none, and its flags. A usage error names a setting that is not
    /// valid.
    pub fn fill_backup(&self, opts: &mut BackupOptions) -> Result<(), VaultError> {
        if !opts.names_paths() {
            opts.paths = self.sources.clone();
            opts.files_from = self.files_from.clone();
            opts.files_from_verbatim = self.files_from_verbatim.clone();
            opts.files_from_raw = self.files_from_raw.clone();
        }
        opts.excludes.extend(self.exclude.iter().cloned());
        opts.exclude_files.extend(self.exclude_file.iter().cloned());
        opts.iexcludes.extend(self.iexclude.iter().cloned());
        opts.iexclude_files
            .extend(self.iexclude_file.iter().cloned());
        let if_present = self.exclude_if_present.iter().cloned();
        opts.exclude_if_present.extend(if_present);
        opts.ignore_files.extend(self.ignore_file.iter().cloned());
        if opts.exclude_larger_than.is_none()
            && let Some(size) = text(&self.exclude_larger_than)
        {
            let size = crate::units::parse_size(&size)
                .map_err(|e| VaultError::Usage(format!("exclude-larger-than: {e}")))?;
            opts.exclude_larger_than = Some(size);
        }
        opts.tags.extend(self.tags.iter().cloned());
        if opts.host.is_none() {
            opts.host = self.host.clone();
        }
        opts.exclude_caches |= self.exclude_caches;
        opts.one_file_system |= self.one_file_system;
        Ok(())
    }
}

/// A mirror's section: its credentials, and whether this host uses it.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MirrorSection {
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Use the mirror of this name (the user wrote the profile, so the name suffices)...
    #[serde(default)]
    pub trust: bool,
    /// ... while its definition in force has this URL, when given.
    pub url: Option<String>,
    /// The usual AWS_*, VAULT_WEBDAV_*, ... variables may serve as its credentials.
    #[serde(default)]
    pub generic_credentials: bool,
    /// Its credentials may travel over plain http to a host that is not loopback.
    #[serde(default)]
    pub insecure_http: bool,
    /// Its own limits: what they set overrides the command's for this mirror.
    #[serde(alias = "limit_upload")]
    pub limit_upload: Option<Setting>,
    #[serde(alias = "limit_download")]
    pub limit_download: Option<Setting>,
    pub connections: Option<Setting>,
}

impl MirrorSection {
    pub fn limits(&self) -> [&Option<Setting>; 3] {
        [&self.limit_upload, &self.limit_download, &self.connections]
    }

    pub fn credentials(&self) -> Credentials {
        Credentials {
            file: self.file.clone(),
            env: self.env.clone(),
        }
    }

    fn trust(&self) -> crate::ops::copies::trust::ProfileTrust {
        crate::ops::copies::trust::ProfileTrust {
            trust: self.trust,
            url: self.url.clone(),
            generic_credentials: self.generic_credentials,
            insecure_http: self.insecure_http,
        }
    }
}

/// Storage credentials, kept out of the config file itself: from a file of `NAME=value`
/// lines, and/or from other environment variables (`AWS_ACCESS_KEY_ID = "MY_VAR"`).
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl Credentials {
    /// The variables these credentials provide. Errors name the file, line or variable,
    /// never a value.
    pub fn resolve(&self) -> Result<BTreeMap<String, String>> {
        let mut vars = BTreeMap::new();
        if let Some(path) = &self.file {
            vars.extend(read_env_file(path)?);
        }
        for (var, source) in &self.env {
            let value = std::env::var(source).map_err(|_| {
                VaultError::Usage(format!(
                    "credential {var}: environment variable {source} is not set"
                ))
            })?;
            vars.insert(var.clone(), value);
        }
        Ok(vars)
    }
}

/// `NAME=value` lines; blank lines, `#` comments, `export ` and quotes are allowed.
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("credentials file {}", path.display()))?;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        log::warn!(
            "warning: credentials file {} is readable by others (chmod 600 it)",
            path.display()
        );
    }
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (name, value) = line
            .split_once('=')
            .filter(|(k, _)| valid_var_name(k.trim()))
            .ok_or_else(|| {
                VaultError::Usage(format!(
                    "credentials file {} line {}: expected NAME=value",
                    path.display(),
                    n + 1
                ))
            })?;
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
            .unwrap_or(value);
        vars.insert(name.trim().to_string(), unquoted.to_string());
    }
    Ok(vars)
}

pub fn valid_var_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Hands the profile's credentials, and its mirrors' own limits, to the storage layer.
pub fn provide_credentials(profile: &str, p: &Profile) -> Result<()> {
    use crate::repo::location::provide_credentials;
    if let Some(c) = &p.credentials {
        provide_credentials(None, c.resolve()?);
    }
    for (name, m) in &p.mirrors {
        let vars = m.credentials().resolve().map_err(|e| {
            VaultError::Usage(format!("mirror {name}: {}", crate::error::one_line(&e)))
        })?;
        let limits = section_limits(m.limits(), &format!("profile {profile}: mirrors.{name}."))?;
        provide_credentials(Some(name), vars);
        crate::repo::location::set_mirror_limits(name, limits);
        crate::ops::copies::trust::from_profile(name, m.trust());
    }
    Ok(())
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExportConfig {
    pub destination: PathBuf,
    /// Export again when the newest export is older than this (default 30d).
    pub every: Option<String>,
    /// Which snapshots, as `vault export --snapshots` takes them.
    pub snapshots: Option<String>,
}

/// The repository used when none is given: `vault/repo` in the user's data directory.
pub fn default_repository() -> Option<String> {
    let d = dirs::data_dir()?;
    Some(d.join("vault").join("repo").to_string_lossy().into_owned())
}

/// The config file in use: --config, else the user's, else the system's.
pub fn config_path(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    let user = dirs::config_dir().map(|d| d.join("vault").join("vault.toml"));
    [user, Some(PathBuf::from("/etc/vault/vault.toml"))]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
}

/// The config file at `path`; a syntax error or unknown key is a usage error naming it.
pub fn load(path: &Path) -> Result<ConfigFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("config {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        VaultError::Usage(format!(
            "config {}: {}",
            path.display(),
            e.to_string().replace('\n', " ")
        ))
        .into()
    })
}

/// Profile `name` from the config file in use (`given`, else the user's, else the system's).
pub fn profile(given: Option<&Path>, name: &str) -> Result<Profile> {
    let path = config_path(given).ok_or_else(|| {
        VaultError::Usage(format!(
            "profile {name}: no config file (~/.config/vault/vault.toml, /etc/vault/vault.toml, or --config)"
        ))
    })?;
    let cfg = load(&path)?;
    cfg.profiles.get(name).cloned().ok_or_else(|| {
        VaultError::Usage(format!(
            "profile {name} is not in {} (it has: {})",
            path.display(),
            cfg.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
        .into()
    })
}

/// Checks the config file, as `vault config check` does: parses the file and every profile's retention, spans and paths.
pub fn check(given: Option<&Path>) -> Result<String> {
    let path = config_path(given).ok_or_else(|| {
        VaultError::Usage(
            "no config file: ~/.config/vault/vault.toml, /etc/vault/vault.toml, or --config".into(),
        )
    })?;
    let cfg = load(&path)?;
    for (name, p) in &cfg.profiles {
        let bad = |m: String| -> anyhow::Error {
            VaultError::Usage(format!("config {}: profile {name}: {m}", path.display())).into()
        };
        if p.repository.is_none() {
            return Err(bad("no repository".into()));
        }
        if let Some(r) = &p.retention {
            r.policy().map_err(|e| bad(format!("retention: {e}")))?;
        }
        for (key, span) in [
            ("prune", p.prune.as_deref()),
            (
                "export.every",
                p.export.as_ref().and_then(|e| e.every.as_deref()),
            ),
        ] {
            if let Some(s) = span.filter(|s| !matches!(*s, "always" | "never")) {
                crate::ops::forget::parse_span(s).map_err(|e| bad(format!("{key}: {e}")))?;
            }
        }
        let creds = p
            .credentials
            .iter()
            .map(|c| ("credentials".to_string(), c.clone()));
        let mirrors = p
            .mirrors
            .iter()
            .map(|(m, c)| (format!("mirrors.{m}"), c.credentials()));
        for (key, c) in creds.chain(mirrors) {
            if let Some(f) = &c.file {
                read_env_file(f)
                    .map_err(|e| bad(format!("{key}: {}", crate::error::one_line(&e))))?;
            }
            if let Some(k) = c
                .env
                .keys()
                .chain(c.env.values())
                .find(|k| !valid_var_name(k))
            {
                return Err(bad(format!("{key}.env: {k:?} is not a variable name")));
            }
        }
        section_limits(p.limits(), "").map_err(|e| bad(e.to_string()))?;
        for (m, s) in &p.mirrors {
            section_limits(s.limits(), &format!("mirrors.{m}.")).map_err(|e| bad(e.to_string()))?;
        }
        if let Some(c) = p.check.as_deref().filter(|c| *c != "never") {
            c.parse::<crate::ops::subset::Subset>()
                .map_err(|e| bad(format!("check: {e}")))?;
        }
    }
    Ok(format!(
        "{}: {} profile(s) valid: {}",
        path.display(),
        cfg.profiles.len(),
        cfg.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
    ))
}

/// Limits from their settings as written; `name` turns a setting's key (`limit-upload`)
/// into how the user gave it, for a one-line usage error.
pub fn parse_limits(
    upload: Option<&str>,
    download: Option<&str>,
    connections: Option<&str>,
    name: &dyn Fn(&str) -> String,
) -> Result<crate::repo::limits::Limits, VaultError> {
    use crate::repo::limits::MAX_CONNECTIONS;
    let usage = |key: &str, why: String| VaultError::Usage(format!("{}: {why}", name(key)));
    let rate = |key: &str, v: Option<&str>| {
        v.map(|v| crate::units::parse_rate(v).map_err(|e| usage(key, e)))
            .transpose()
    };
    let connections = connections
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
                .ok_or_else(|| {
                    usage(
                        "connections",
                        format!(
                            "{v:?} is not a number of requests in flight: give a whole number from 1 to {MAX_CONNECTIONS}"
                        ),
                    )
                })
        })
        .transpose()?;
    Ok(crate::repo::limits::Limits {
        upload: rate("limit-upload", upload)?,
        download: rate("limit-download", download)?,
        connections,
    })
}
