//! Man pages, generated from the clap definitions: vault(1) and one page per command
//! (vault-backup(1), vault-key-add(1), ...). `man/` holds them; a test regenerates them
//! and fails when the committed pages are stale (VAULT_UPDATE_MAN=1 rewrites them).

use clap::CommandFactory;

const EXIT_CODES: &str = "0 ok; 1 error (for check, audit, verify: damage found); 2 usage; \
3 partial (some files skipped or not restored, or a mirror unreachable); 10 no repository; \
11 locked; 12 wrong password.";

/// Every page: file name and roff source.
pub fn pages() -> Vec<(String, Vec<u8>)> {
    let root = super::Cli::command().after_help(format!("Exit codes: {EXIT_CODES}"));
    let mut out = Vec::new();
    render(&root, "vault", &mut out);
    out
}

fn render(cmd: &clap::Command, name: &str, out: &mut Vec<(String, Vec<u8>)>) {
    let cmd = cmd
        .clone()
        .name(name.to_string())
        .version(env!("CARGO_PKG_VERSION"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut buf)
        .expect("rendering into memory");
    out.push((format!("{name}.1"), buf));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        render(sub, &format!("{name}-{}", sub.get_name()), out);
    }
}
