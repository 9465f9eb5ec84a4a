//! man/ holds a page per command generated from the CLI definitions; this fails when a
//! page is stale. `VAULT_UPDATE_MAN=1 cargo test --test man` rewrites them.

use std::path::Path;

#[test]
fn man_pages_are_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let pages = vault::cli::man::pages();
    assert!(pages.len() > 20, "a page per command");
    if std::env::var_os("VAULT_UPDATE_MAN").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &pages {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        return;
    }
    let mut stale = Vec::new();
    for (name, bytes) in &pages {
        if std::fs::read(dir.join(name)).ok().as_deref() != Some(bytes.as_slice()) {
            stale.push(name.clone());
        }
    }
    let committed = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    assert!(
        stale.is_empty() && committed == pages.len(),
        "man/ is stale ({} pages differ, {committed} committed for {} commands): run `VAULT_UPDATE_MAN=1 cargo test --test man`",
        stale.len(),
        pages.len()
    );
    let root = String::from_utf8_lossy(&pages[0].1).into_owned();
    assert!(
        root.contains("12 wrong password"),
        "vault(1) documents the exit codes"
    );
}

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vault"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("restore") && script.contains("lock-wait"),
            "{shell}"
        );
    }
}
