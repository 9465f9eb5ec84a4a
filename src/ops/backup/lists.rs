//! Paths to back up read from lists, as restic reads them: `--files-from` (lines, `#`
//! comments, glob patterns expanded as Go's `filepath.Glob` does), `--files-from-verbatim`
//! (lines as they are) and `--files-from-raw` (NUL-terminated names, any bytes). `-`
//! reads standard input. A listed path that does not exist is skipped with a warning.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::VaultError;

/// The whole of `file`, or of standard input for `-`; a usage error naming `flag` and
/// the file when it cannot be read.
pub(crate) fn read_input(file: &Path, flag: &str) -> Result<Vec<u8>, VaultError> {
    let read = if file == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().lock().read_to_end(&mut buf).map(|_| buf)
    } else {
        std::fs::read(file)
    };
    read.map_err(|e| VaultError::Usage(format!("{flag} {}: cannot read it: {e}", file.display())))
}

/// The lists' paths that exist, in list order; a warning for each entry skipped.
pub(super) fn read_lists(
    [files_from, verbatim, raw]: [&[PathBuf]; 3],
    warnings: &mut Vec<String>,
) -> Result<Vec<PathBuf>, VaultError> {
    let mut out = Vec::new();
    for f in files_from {
        let flag = "--files-from";
        for (n, line) in lines(&read_input(f, flag)?) {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let at = || format!("{flag} {} line {n}", f.display());
            let found = glob(line).map_err(|e| VaultError::Usage(format!("{}: {e}", at())))?;
            if found.is_empty() {
                warnings.push(format!(
                    "{}: {:?} matches nothing, skipped",
                    at(),
                    String::from_utf8_lossy(line)
                ));
            }
            out.extend(found);
        }
    }
    for f in verbatim {
        let flag = "--files-from-verbatim";
        for (n, line) in lines(&read_input(f, flag)?) {
            if !line.is_empty() {
                let at = || format!("{flag} {} line {n}", f.display());
                out.extend(existing(path(line), at, warnings));
            }
        }
    }
    for f in raw {
        let flag = "--files-from-raw";
        for (n, name) in raw_names(&read_input(f, flag)?)
            .map_err(|e| VaultError::Usage(format!("{flag} {}: {e}", f.display())))?
            .into_iter()
            .enumerate()
        {
            let at = || format!("{flag} {} entry {}", f.display(), n + 1);
            out.extend(existing(path(name), at, warnings));
        }
    }
    Ok(out)
}

fn path(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

/// `p` when something is there (a dangling symlink counts); else None, with a warning.
fn existing(p: PathBuf, at: impl Fn() -> String, warnings: &mut Vec<String>) -> Option<PathBuf> {
    match std::fs::symlink_metadata(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            warnings.push(format!("{}: {} does not exist, skipped", at(), p.display()));
            None
        }
        // Another error is the backup's to report, as for a path on the command line.
        _ => Some(p),
    }
}

/// The lines of a text list, numbered from 1, each without its line ending (`\n` or
/// `\r\n`), a UTF-8 byte order mark at the start left out.
fn lines(data: &[u8]) -> Vec<(usize, &[u8])> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    if data.is_empty() {
        return Vec::new();
    }
    data.split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .collect()
}

/// NUL-terminated names. As restic: an empty name, or a last one without its NUL (a list
/// cut short), is an error.
fn raw_names(data: &[u8]) -> Result<Vec<&[u8]>, String> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let Some(data) = data.strip_suffix(b"\0") else {
        return Err("the last name has no NUL byte after it (a list cut short?)".into());
    };
    let names: Vec<&[u8]> = data.split(|&c| c == 0).collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err("an empty name (two NUL bytes in a row)".into());
    }
    Ok(names)
}

/// Whether a line is a pattern to Go's `filepath.Glob` (on Unix).
fn has_meta(b: &[u8]) -> bool {
    b.iter().any(|c| matches!(c, b'*' | b'?' | b'[' | b'\\'))
}

/// The paths `pattern` matches, in name order within each directory, as Go's
/// `filepath.Glob`: `*`, `?` and `[...]` within one path component, `\` escaping; a line
/// without them is itself when it exists. Directories that cannot be read match nothing.
fn glob(pattern: &[u8]) -> Result<Vec<PathBuf>, String> {
    if !has_meta(pattern) {
        let p = path(pattern);
        return Ok(if std::fs::symlink_metadata(&p).is_ok() {
            vec![p]
        } else {
            Vec::new()
        });
    }
    let (dir, file) = match pattern.iter().rposition(|&c| c == b'/') {
        Some(0) => (&b"/"[..], &pattern[1..]),
        Some(i) => (&pattern[..i], &pattern[i + 1..]),
        None => (&b"."[..], pattern),
    };
    let file = std::str::from_utf8(file)
        .map_err(|_| "a pattern must be UTF-8 (list such names with --files-from-raw)")?;
    let matcher = globset::GlobBuilder::new(file)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("{file:?} is not a valid pattern: {}", e.kind()))?
        .compile_matcher();
    let dirs = if has_meta(dir) {
        glob(dir)?
    } else {
        vec![path(dir)]
    };
    let mut out = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| matcher.is_match(Path::new(n)))
            .collect();
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        out.extend(names.into_iter().map(|n| d.join(n)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_raw_names() {
        let l = lines(b"\xEF\xBB\xBFa\r\n\nb\n");
        assert_eq!(l, [(1, &b"a"[..]), (2, &b""[..]), (3, &b"b"[..])]);
        assert_eq!(lines(b"").len(), 0);
        assert_eq!(lines(b"x").len(), 1);
        assert_eq!(
            raw_names(b"a\0b\xff\0").unwrap(),
            [&b"a"[..], &b"b\xff"[..]]
        );
        assert!(raw_names(b"a\0b").is_err());
        assert!(raw_names(b"a\0\0").is_err());
        assert!(raw_names(b"").unwrap().is_empty());
    }

    #[test]
    fn glob_expands_within_components() {
        let d = tempfile::tempdir().unwrap();
        for p in ["a/x.txt", "a/.h.txt", "b/y.txt", "b/y.md", "c/z.txt"] {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        let root = d.path().to_str().unwrap();
        let got = |pat: &str| -> Vec<String> {
            glob(format!("{root}/{pat}").as_bytes())
                .unwrap()
                .iter()
                .map(|p| p.strip_prefix(root).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(got("[ab]/*.txt"), ["a/.h.txt", "a/x.txt", "b/y.txt"]);
        assert_eq!(got("?/y.*"), ["b/y.md", "b/y.txt"]);
        assert_eq!(got("c/z.txt"), ["c/z.txt"]);
        assert!(got("c/none").is_empty());
        assert!(glob(format!("{root}/[").as_bytes()).is_err());
    }
}
