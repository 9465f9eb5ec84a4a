//! What backup leaves out: gitignore-style patterns, cache directories, other file systems.

use std::path::Path;

use anyhow::{Context, Result};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

pub struct Excludes {
    patterns: Gitignore,
    pub list: Vec<String>,
}

impl Excludes {
    /// Patterns are anchored at `/`, as in a .gitignore at the root of the file system:
    /// `*.tmp` matches anywhere, `/home/*/.cache` only there, `!keep.tmp` re-includes.
    pub fn new(patterns: &[String], files: &[std::path::PathBuf]) -> Result<Excludes> {
        let mut b = GitignoreBuilder::new("/");
        let mut list = Vec::new();
        let mut add = |p: &str, origin: &str| -> Result<()> {
            let p = p.trim_end_matches(['\r', '\n']);
            if p.trim().is_empty() || p.starts_with('#') {
                return Ok(());
            }
            b.add_line(None, p)
                .with_context(|| format!("exclude pattern {p:?} ({origin}) is not a valid glob"))?;
            list.push(p.to_string());
            Ok(())
        };
        for p in patterns {
            add(p, "--exclude")?;
        }
        for f in files {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("exclude file {}", f.display()))?;
            for line in text.lines() {
                add(line, &f.display().to_string())?;
            }
        }
        let patterns = b.build().context("building exclude patterns")?;
        Ok(Excludes { patterns, list })
    }

    pub fn excluded(&self, path: &Path, is_dir: bool) -> bool {
        self.patterns.matched(path, is_dir).is_ignore()
    }
}

/// Whether `dir` holds a valid CACHEDIR.TAG (https://bford.info/cachedir/).
pub fn is_cache_dir(dir: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(dir.join("CACHEDIR.TAG")) else {
        return false;
    };
    let mut head = [0u8; 43];
    f.read_exact(&mut head).is_ok() && head == CACHEDIR_SIGNATURE
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
}
