//! What backup leaves out: gitignore-style patterns (with case or without), files over a
//! size, the contents of directories holding a tag file, and the rules of ignore files
//! found in the tree, inherited down it as `.gitignore` files are.
//!
//! Nothing here costs a system call for a directory that holds no tag or ignore file:
//! both are looked for in the directory's listing, which the scan makes anyway.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::error::VaultError;

/// `--exclude-caches`: restic's and borg's spelling of this tag (https://bford.info/cachedir/).
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG:Signature: 8a477f597d28d172789f06886806bc55";

pub struct Excludes {
    patterns: Gitignore,
    /// `--iexclude`: the same, matched without regard to case.
    ipatterns: Gitignore,
    pub list: Vec<String>,
}

impl Excludes {
    /// Patterns are anchored at `/`, as in a .gitignore at the root of the file system:
    /// `*.tmp` matches anywhere, `/home/*/.cache` only there, `!keep.tmp` re-includes.
    /// `files` hold more, one per line.
    pub fn new(patterns: &[String], files: &[PathBuf]) -> Result<Excludes> {
        let mut all = patterns.to_vec();
        for f in files {
            all.extend(read_patterns(f, "--exclude-file", false)?);
        }
        Ok(Excludes::build(&all, &[])?)
    }

    /// Case-sensitive `patterns` and case-insensitive `ipatterns` (each set with its own
    /// negations: `!x` re-includes only what its own set left out); blank lines and
    /// `#` comments are skipped. A usage error names the first pattern that is not valid.
    pub fn build(patterns: &[String], ipatterns: &[String]) -> Result<Excludes, VaultError> {
        let mut list = Vec::new();
        let mut compile = |lines: &[String], fold: bool| {
            let mut b = GitignoreBuilder::new("/");
            b.case_insensitive(fold).map_err(|e| bad_pattern("", &e))?;
            for p in lines.iter().filter_map(|p| pattern(p)) {
                add_pattern(&mut b, p, if fold { "--iexclude" } else { "--exclude" })?;
                list.push(if fold {
                    format!("--iexclude={p}")
                } else {
                    p.to_string()
                });
            }
            b.build().map_err(|e| bad_pattern("", &e))
        };
        let patterns = compile(patterns, false)?;
        let ipatterns = compile(ipatterns, true)?;
        Ok(Excludes {
            patterns,
            ipatterns,
            list,
        })
    }

    pub fn excluded(&self, path: &Path, is_dir: bool) -> bool {
        self.patterns.matched(path, is_dir).is_ignore()
            || self.ipatterns.matched(path, is_dir).is_ignore()
    }
}

/// A line as a pattern: None for a blank line or a comment.
fn pattern(line: &str) -> Option<&str> {
    let p = line.trim_end_matches(['\r', '\n']);
    (!p.trim().is_empty() && !p.starts_with('#')).then_some(p)
}

fn add_pattern(b: &mut GitignoreBuilder, p: &str, origin: &str) -> Result<(), VaultError> {
    b.add_line(None, p).map(|_| ()).map_err(|e| {
        VaultError::Usage(format!(
            "{origin} {p:?}: not a valid pattern ({}); see gitignore(5)",
            glob_error(&e)
        ))
    })
}

fn bad_pattern(p: &str, e: &ignore::Error) -> VaultError {
    VaultError::Usage(format!("pattern {p:?}: {}", glob_error(e)))
}

/// What is wrong with a glob, without the pattern the caller names anyway.
fn glob_error(e: &ignore::Error) -> String {
    match e {
        ignore::Error::Glob { err, .. } => err.clone(),
        e => e.to_string(),
    }
}

/// The patterns of an exclude file (`-`: standard input), blank lines and comments left
/// out, each checked; a usage error names the file (and line) when it cannot be read or
/// holds a pattern that is not valid. `flag` is the option that named it.
pub fn read_patterns(file: &Path, flag: &str, fold: bool) -> Result<Vec<String>, VaultError> {
    let bytes = super::backup::lists::read_input(file, flag)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        VaultError::Usage(format!(
            "{flag} {}: not UTF-8 text; patterns must be",
            file.display()
        ))
    })?;
    let mut check = GitignoreBuilder::new("/");
    check
        .case_insensitive(fold)
        .map_err(|e| bad_pattern("", &e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if let Some(p) = pattern(line) {
            let origin = format!("{flag} {} line {}:", file.display(), n + 1);
            add_pattern(&mut check, p, &origin)?;
            out.push(p.to_string());
        }
    }
    Ok(out)
}

/// `--exclude-if-present NAME[:HEADER]`: a directory holding a file of this name (whose
/// content starts with HEADER, when given) is backed up with that file alone.
#[derive(Clone, Debug)]
pub struct TagFile {
    name: OsString,
    header: Vec<u8>,
    spec: String,
}

impl TagFile {
    pub fn parse(spec: &str) -> Result<TagFile, VaultError> {
        let (name, header) = spec.split_once(':').unwrap_or((spec, ""));
        if !plain_name(name) {
            return Err(VaultError::Usage(format!(
                "--exclude-if-present {spec:?}: give a file name (without '/'), optionally followed by :HEADER"
            )));
        }
        Ok(TagFile {
            name: name.into(),
            header: header.as_bytes().to_vec(),
            spec: spec.to_string(),
        })
    }

    /// Whether `dir` holds this tag with its header. Called only when its listing has the
    /// name; a tag that cannot be read, or is shorter than the header, does not count (as
    /// in restic).
    fn marks(&self, dir: &Path) -> bool {
        use std::io::Read;
        if self.header.is_empty() {
            return true;
        }
        let Ok(f) = std::fs::File::open(dir.join(&self.name)) else {
            return false;
        };
        let mut head = Vec::with_capacity(self.header.len());
        let want = self.header.len() as u64;
        f.take(want).read_to_end(&mut head).is_ok() && head == self.header
    }
}

/// A file name as a flag gives it: not empty, no '/', not `.` or `..`.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

/// The ignore-file rules in force in a directory: those of its own ignore files, then
/// its parent's, and so on up. The deepest file that matches an entry decides, as with
/// `.gitignore` files (so a `!pattern` below re-includes what a file above leaves out).
#[derive(Clone, Default)]
pub struct Inherited(Option<Arc<Layer>>);

struct Layer {
    rules: Gitignore,
    up: Option<Arc<Layer>>,
}

impl Inherited {
    fn ignored(&self, path: &Path, is_dir: bool) -> bool {
        let mut layer = self.0.as_deref();
        while let Some(l) = layer {
            match l.rules.matched(path, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => layer = l.up.as_deref(),
            }
        }
        false
    }
}

/// Everything that leaves entries out below the backup sources (never the sources
/// themselves, nor the way down to them).
pub struct Selection {
    excludes: Excludes,
    larger_than: Option<u64>,
    tags: Vec<TagFile>,
    ignore_files: Vec<OsString>,
    /// How the selection was made, for the snapshot: every pattern, and each other
    /// option as `--flag=value`.
    pub list: Vec<String>,
}

/// What a [`Selection`] is made of (the backup options, their files already read).
#[derive(Default)]
pub struct SelectionSpec<'a> {
    pub excludes: &'a [String],
    pub iexcludes: &'a [String],
    pub larger_than: Option<u64>,
    pub if_present: &'a [String],
    pub exclude_caches: bool,
    pub ignore_files: &'a [String],
    pub one_file_system: bool,
}

impl Selection {
    /// The selection, or a usage error naming the first pattern, tag or name that is not
    /// valid.
    pub fn new(spec: &SelectionSpec) -> Result<Selection, VaultError> {
        let excludes = Excludes::build(spec.excludes, spec.iexcludes)?;
        let mut list = excludes.list.clone();
        let mut tags = spec
            .if_present
            .iter()
            .map(|s| TagFile::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        list.extend(
            tags.iter()
                .map(|t| format!("--exclude-if-present={}", t.spec)),
        );
        if spec.exclude_caches {
            tags.push(TagFile::parse(CACHEDIR_TAG)?);
            list.push("--exclude-caches".into());
        }
        if let Some(n) = spec.larger_than {
            list.push(format!("--exclude-larger-than={}", exact_size(n)));
        }
        for name in spec.ignore_files {
            if !plain_name(name) {
                return Err(VaultError::Usage(format!(
                    "--ignore-file {name:?}: give a file name, without '/'"
                )));
            }
            list.push(format!("--ignore-file={name}"));
        }
        if spec.one_file_system {
            list.push("--one-file-system".into());
        }
        Ok(Selection {
            excludes,
            larger_than: spec.larger_than,
            tags,
            ignore_files: spec.ignore_files.iter().map(OsString::from).collect(),
            list,
        })
    }

    /// Whether an entry below the sources is left out: by a pattern, by its size (not a
    /// directory), or by the ignore-file rules of its directory, `rules`.
    pub fn excluded(&self, path: &Path, is_dir: bool, size: u64, rules: &Inherited) -> bool {
        (!is_dir && self.larger_than.is_some_and(|max| size > max))
            || self.excludes.excluded(path, is_dir)
            || rules.ignored(path, is_dir)
    }

    /// When a tag file marks `dir` (whose listing holds the names `has` says), the names
    /// of its tag files, which alone are kept; None when no tag marks it.
    pub fn tagged(&self, dir: &Path, has: impl Fn(&OsStr) -> bool) -> Option<Vec<OsString>> {
        let marking: Vec<OsString> = self
            .tags
            .iter()
            .filter(|t| has(&t.name) && t.marks(dir))
            .map(|t| t.name.clone())
            .collect();
        (!marking.is_empty()).then_some(marking)
    }

    /// Whether ignore files are read at all.
    pub fn reads_ignore_files(&self) -> bool {
        !self.ignore_files.is_empty()
    }

    /// The ignore-file rules in force in `dir`: `up`'s, and those of its own ignore files
    /// (read when `has` says its listing holds them). An ignore file that cannot be read,
    /// or a line of it that is not a valid pattern, is reported through `warn` and left
    /// out.
    pub fn rules_in(
        &self,
        dir: &Path,
        up: &Inherited,
        has: impl Fn(&OsStr) -> bool,
        warn: &dyn Fn(String),
    ) -> Inherited {
        let mut b = GitignoreBuilder::new(dir);
        let mut found = false;
        for name in self.ignore_files.iter().filter(|n| has(n)) {
            let file = dir.join(name);
            match std::fs::read(&file) {
                Ok(bytes) => {
                    found = true;
                    add_ignore_file(&mut b, &file, &bytes, warn);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn(format!(
                    "{}: cannot read ignore file, its rules are not applied: {e}",
                    file.display()
                )),
            }
        }
        if !found {
            return up.clone();
        }
        match b.build() {
            Ok(rules) => Inherited(Some(Arc::new(Layer {
                rules,
                up: up.0.clone(),
            }))),
            Err(e) => {
                warn(format!(
                    "{}: ignore rules not applied: {}",
                    dir.display(),
                    glob_error(&e)
                ));
                up.clone()
            }
        }
    }
}

/// Adds an ignore file's lines to `b`; each line that is not a valid pattern is reported
/// and left out (git skips them too).
fn add_ignore_file(b: &mut GitignoreBuilder, file: &Path, bytes: &[u8], warn: &dyn Fn(String)) {
    for (n, line) in bytes.split(|&c| c == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(line) = std::str::from_utf8(line) else {
            warn(format!(
                "{} line {}: not UTF-8, left out",
                file.display(),
                n + 1
            ));
            continue;
        };
        if let Err(e) = b.add_line(Some(file.to_path_buf()), line) {
            warn(format!(
                "{} line {}: {line:?} is not a valid pattern ({}), left out",
                file.display(),
                n + 1,
                glob_error(&e)
            ));
        }
    }
}

/// A size in the largest binary unit that divides it: 2G, 500M, 1K, 1000.
fn exact_size(n: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n != 0 && n % (1u64 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_semantics() {
        let e = Excludes::new(
            &["*.tmp".into(), "/home/*/.cache".into(), "!keep.tmp".into()],
            &[],
        )
        .unwrap();
        assert!(e.excluded(Path::new("/a/b/x.tmp"), false));
        assert!(!e.excluded(Path::new("/a/b/keep.tmp"), false));
        assert!(e.excluded(Path::new("/home/u/.cache"), true));
        assert!(!e.excluded(Path::new("/srv/home/u/.cache"), true));
        assert!(!e.excluded(Path::new("/a/b/x.txt"), false));
    }

    #[test]
    fn case_insensitive_patterns_keep_their_own_negations() {
        let e = Excludes::build(&["*.tmp".into()], &["*.iso".into(), "!KEEP.ISO".into()]).unwrap();
        assert!(e.excluded(Path::new("/a/X.ISO"), false));
        assert!(e.excluded(Path::new("/a/x.Iso"), false));
        assert!(!e.excluded(Path::new("/a/keep.iso"), false));
        assert!(
            !e.excluded(Path::new("/a/X.TMP"), false),
            "--exclude keeps case"
        );
        assert_eq!(
            e.list,
            ["*.tmp", "--iexclude=*.iso", "--iexclude=!KEEP.ISO"]
        );
        assert!(Excludes::build(&["{a,b".into()], &[]).is_err());
    }

    #[test]
    fn sizes_are_recorded_in_their_unit() {
        assert_eq!(exact_size(2 << 30), "2G");
        assert_eq!(exact_size(500 << 20), "500M");
        assert_eq!(exact_size(1536), "1536");
        assert_eq!(exact_size(0), "0");
    }

    #[test]
    fn tag_specs() {
        assert!(TagFile::parse("").is_err());
        assert!(TagFile::parse(":x").is_err());
        assert!(TagFile::parse("a/b").is_err());
        let t = TagFile::parse("CACHEDIR.TAG:Signature: 8a").unwrap();
        assert_eq!(t.name, "CACHEDIR.TAG");
        assert_eq!(t.header, b"Signature: 8a");
    }
}
