//! Man pages, generated from the clap definitions: vault(1) and one page per command
//! (vault-backup(1), vault-key-add(1), ...). `man/` holds them; a test regenerates them
//! and fails when the committed pages are stale (VAULT_UPDATE_MAN=1 rewrites them).

use clap::CommandFactory;

const EXIT_CODES: &str = "0 ok; 1 error (for check, audit, verify: damage found); 2 usage; \
3 partial (some files skipped or not restored, or a mirror unreachable); 10 no repository \
(or no bucket); 11 locked; 12 wrong password; 13 storage failed (unreachable, credentials or \
permission refused, full, archived in a cold storage class, server error); 130, 143, 129 \
interrupted by Ctrl-C, SIGTERM or SIGHUP (its temporary objects and locks removed).";

/// Every page: file name and roff source.
pub fn pages() -> Vec<(String, Vec<u8>)> {
    let root = super::Cli::command().after_help(format!("Exit codes: {EXIT_CODES}"));
    let mut out = Vec::new();
    render(&root, "vault", &mut out);
    out.push(("vault.toml.5".into(), CONFIG_PAGE.as_bytes().to_vec()));
    out
}

/// vault.toml(5): the config file, written by hand (clap does not know it).
const CONFIG_PAGE: &str = r#".TH vault.toml 5 "" "vault" "File Formats"
.SH NAME
vault.toml \- profiles for vault
.SH SYNOPSIS
~/.config/vault/vault.toml, /etc/vault/vault.toml, or the file given by \fB\-\-config\fR
.SH DESCRIPTION
A TOML file of named profiles. \fBvault \-\-profile NAME\fR takes the repository, password
source, sources, excludes, tags and hooks from profile NAME for any command;
\fBvault run NAME\fR runs its whole routine. Flags on the command line override the file.
Unknown keys are errors; \fBvault config check\fR names the key and its line.
.SH KEYS OF [profiles.NAME]
.TP
\fBrepository\fR
Location: a path, s3://, sftp://, webdav://, gcs://, azblob:// or b2:// URL.
.TP
\fBpassword\-file\fR, \fBpassword\-command\fR
Where the password comes from (a file, or a command's output).
.TP
\fBsources\fR, \fBexclude\fR, \fBtags\fR, \fBhost\fR, \fBexclude\-caches\fR, \fBone\-file\-system\fR
What \fBbackup\fR saves, as its options of the same names.
.TP
\fBfiles\-from\fR, \fBfiles\-from\-verbatim\fR, \fBfiles\-from\-raw\fR, \fBexclude\-file\fR, \fBiexclude\fR, \fBiexclude\-file\fR, \fBexclude\-if\-present\fR, \fBignore\-file\fR
Lists of strings, as \fBbackup\fR's options of the same names; the lists are read
only when the command line names no paths (as \fBsources\fR).
.TP
\fBexclude\-larger\-than\fR
A size, as \fBbackup \-\-exclude\-larger\-than\fR: "2G", "500M", or a number of bytes.
.TP
\fBprune\fR
How often \fBrun\fR prunes: "always", "never", or a span such as "7d" (default).
.TP
\fBsync\fR
Whether \fBrun\fR syncs the mirrors (default true).
.TP
\fBcheck\fR
The part of the data \fBrun\fR reads: "1/7" (default; a different seventh each run), "10%", "2G", or "never".
.TP
\fBbefore\fR, \fBon\-success\fR, \fBon\-failure\fR
Hook commands, as \fB\-\-before\fR, \fB\-\-on\-success\fR and \fB\-\-on\-failure\fR.
.TP
\fBlimit\-upload\fR, \fBlimit\-download\fR, \fBconnections\fR
Limits for every backend of a command, as \fB\-\-limit\-upload\fR,
\fB\-\-limit\-download\fR and \fB\-\-connections\fR (which override them): rates as
strings such as "10M" or "500KiB/s", or bare numbers of KiB/s, 0 for no limit;
connections a number from 1 to 256.
.SH [profiles.NAME.retention]
forget's options without the dashes: keep\-last, keep\-hourly, keep\-daily, keep\-weekly,
keep\-monthly, keep\-yearly (numbers), keep\-within and keep\-within\-daily etc. (spans such as
"30d"), keep\-tag (a list), group\-by.
.SH [profiles.NAME.export]
.TP
\fBdestination\fR
Directory of the offline export.
.TP
\fBevery\fR
Export again when the newest export there is older than this span (default "30d").
.TP
\fBsnapshots\fR
Which snapshots, as \fBvault export \-\-snapshots\fR takes them.
.SH [profiles.NAME.credentials] and [profiles.NAME.mirrors.MIRROR]
Storage credentials for the repository itself, and for the mirror named MIRROR (the name
given to \fBvault mirror add\fR), kept out of this file. They come before the
environment's variables of the same names.
.TP
\fBfile\fR
A file of NAME=value lines (blank lines, # comments, "export " and quotes allowed), such
as AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=...; keep it mode 600.
.TP
\fBenv\fR
A table naming the environment variable each credential is read from, e.g.
{ AWS_ACCESS_KEY_ID = "OFFSITE_KEY_ID", AWS_SECRET_ACCESS_KEY = "OFFSITE_SECRET" }.
.TP
\fBlimit\-upload\fR, \fBlimit\-download\fR, \fBconnections\fR
In a mirror's section: that mirror's own limits, which win over the command's (the
flags or the profile's) for it; 0 lifts a rate limit for it alone.
.SH EXAMPLE
.nf
[profiles.nightly]
repository = "/srv/backup"
password\-file = "/etc/vault/password"
sources = ["/home", "/etc"]
exclude = ["*.tmp"]
limit\-upload = "10M"
[profiles.nightly.retention]
keep\-daily = 7
keep\-weekly = 5
[profiles.nightly.mirrors.offsite]
file = "/etc/vault/offsite.env"
limit\-upload = "1M"
.fi
.SH SEE ALSO
vault(1), vault\-run(1), vault\-schedule(1)
"#;

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
