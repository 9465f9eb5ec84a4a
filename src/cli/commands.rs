//! Command bodies: open the repository, call the operation, print the result.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow};
use serde_json::json;

use super::progress::{Meter, Progress, human_bytes, packs_tail};
use super::{
    BackupArgs, Cli, Command, DumpArgs, Global, InitArgs, KeyCommand, LsArgs, RestoreArgs,
    SnapshotFilter,
};
use super::{export, integrity, mirrors, password, retention, timetravel};
use crate::error::{VaultError, exit};
use crate::ops::{backup, dump, ls, restore, select};
use crate::repo::Repository;
use crate::repo::lock::{self, LockKind};
use crate::repo::repository::{InitOptions, default_kdf};
use crate::report::Report;
use crate::session::state::{Indexed, Open};
use crate::session::{Locking, Session};

pub fn run(cli: Cli) -> Result<i32> {
    let g = cli.global;
    match cli.command {
        Command::Init(a) => init(&g, a),
        Command::Backup(a) => cmd_backup(&g, *a),
        Command::Snapshots(a) => snapshots(&g, &a.filter),
        Command::Ls(a) => cmd_ls(&g, a),
        Command::Restore(a) => cmd_restore(&g, a),
        Command::Dump(a) => cmd_dump(&g, a),
        Command::Versions(a) => timetravel::cmd_versions(&g, a),
        #[cfg(feature = "mount")]
        Command::Mount(a) => super::mount::mount(&g, &a),
        Command::Diff(a) => timetravel::cmd_diff(&g, a),
        Command::Find(a) => timetravel::cmd_find(&g, a),
        Command::Mirror(m) => mirrors::mirror(&g, m),
        Command::Sync(a) => mirrors::sync(&g, a.mirror.as_deref()),
        Command::Maintain(a) => mirrors::maintain(&g, &a),
        Command::Unforget(a) => mirrors::unforget(&g, &a),
        Command::Status(a) => mirrors::status(&g, &a.export_max_age),
        Command::Export(a) => export::export(&g, a),
        Command::Tag(a) => super::history::tag(&g, a),
        Command::Rewrite(a) => super::history::rewrite(&g, a),
        Command::Copy(a) => super::copy::copy(&g, a),
        Command::Stats(a) => super::history::stats(&g, a),
        Command::Forget(a) => retention::forget(&g, *a),
        Command::Prune(a) => retention::prune(&g, a),
        Command::Key(KeyCommand::Import { output, .. }) => key_import(&g, output.as_deref()),
        Command::Key(KeyCommand::Rotate(a)) => key_rotate(&g, &a),
        Command::Key(k) => key(&g, k),
        Command::Check(a) => integrity::check(&g, a),
        Command::Audit(a) => integrity::audit(&g, a),
        Command::Verify(a) => integrity::verify(&g, a),
        Command::Repair(r) => integrity::repair(&g, r),
        Command::Unlock(a) => unlock(&g, &a),
        Command::Cache(a) => cache(&g, &a),
        Command::Run { profile } => super::run::run(&g, &profile),
        Command::Upgrade => super::retention::upgrade(&g),
        Command::Schedule(s) => super::schedule::schedule(&g, s),
        Command::Config(super::ConfigCommand::Check) => {
            let msg = crate::config::check(g.config.as_deref())?;
            if g.json {
                print_json(&json!({"valid": true, "message": msg}))?;
            } else {
                println!("{msg}");
            }
            Ok(exit::OK)
        }
        Command::Completions { shell } => {
            let mut cmd = <super::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "vault", &mut std::io::stdout());
            Ok(exit::OK)
        }
    }
}

/// The repository location, and whether it is the implicit default.
pub(super) fn location(g: &Global) -> Result<(String, bool)> {
    match &g.repo {
        Some(r) if !r.is_empty() => Ok((r.clone(), false)),
        _ => match crate::config::default_repository() {
            Some(d) => Ok((d, true)),
            None => Err(anyhow!(
                "no --repo given and no XDG data directory (set VAULT_REPOSITORY)"
            )),
        },
    }
}

/// Prints the library's warnings, one line each.
pub(super) fn reporter() -> Report {
    Arc::new(|m: &str| warn_stderr(m.to_string()))
}

/// Whether and how this command locks (`--no-lock`, `--lock-wait`).
pub(super) fn locking(g: &Global) -> Locking {
    if g.no_lock {
        Locking::Skip
    } else {
        Locking::Take { wait: g.lock_wait }
    }
}

/// Opens the repository, asking for its password only once it is known to be there.
pub(super) fn session(g: &Global) -> Result<Session<Open>> {
    let (loc, default) = location(g)?;
    if default && !g.quiet && !g.json {
        eprintln!("vault: using the default repository {loc}");
    }
    let secret = || {
        password::secret(
            g.password_file.as_deref(),
            g.password_command.as_deref(),
            &loc,
        )
    };
    Ok(Session::open(&loc, secret, reporter())?)
}

/// Opens the repository, reading from mirrors where it fails.
pub(super) fn mirrored(g: &Global) -> Result<Session<Open>> {
    Ok(session(g)?.with_mirrors(g.quiet))
}

/// Opens the repository with mirrors, locks it shared for `command`, loads its index.
pub(super) fn reading(g: &Global, command: &str) -> Result<Session<Indexed>> {
    Ok(mirrored(g)?
        .lock(LockKind::Shared, command, locking(g))?
        .index()?)
}

/// As [`reading`], with an index of trees only: for commands that read no file's data,
/// or that load the places of what they read once they know it.
pub(super) fn reading_trees(g: &Global, command: &str) -> Result<Session<Indexed>> {
    Ok(mirrored(g)?
        .lock(LockKind::Shared, command, locking(g))?
        .index_trees()?)
}

pub(super) fn warn_stderr(msg: String) {
    eprintln!("vault: warning: {msg}");
}

/// A command's result: `json` on stdout under --json, else what `text` prints, unless
/// --quiet.
pub(super) fn render<S: serde::Serialize + ?Sized>(
    g: &Global,
    json: &S,
    text: impl FnOnce(),
) -> Result<()> {
    if g.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, json)?;
        writeln!(out)?;
    } else if !g.quiet {
        text();
    }
    Ok(())
}

/// Runs `op` under a progress line that `line` draws from its counters (none under
/// --quiet or --json, nor off a terminal).
pub(super) fn with_progress<T>(
    g: &Global,
    line: impl FnMut() -> String + Send + 'static,
    op: impl FnOnce() -> T,
) -> T {
    let progress = Progress::start(g.quiet || g.json, line);
    let r = op();
    progress.finish();
    r
}

pub(super) fn print_json(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn init(g: &Global, a: InitArgs) -> Result<i32> {
    let (loc, default) = location(g)?;
    let opts = InitOptions::new(
        a.chunk_size,
        a.pack_size,
        a.compression,
        a.label,
        a.format_version,
    )?;
    let pw = || {
        password::password(
            g.password_file.as_deref(),
            g.password_command.as_deref(),
            &format!("new repository {loc}"),
            true,
        )
    };
    let s = Session::init(&loc, pw, &opts, reporter())?;
    let repo = s.repo();
    if g.json {
        print_json(&json!({"repository": repo.location(), "id": repo.config.id}))?;
    } else if !g.quiet {
        let note = if default {
            " (the default; set --repo or VAULT_REPOSITORY for another)"
        } else {
            ""
        };
        println!("created repository {}{note}", repo.location());
    }
    Ok(exit::OK)
}

pub(super) fn cmd_backup(g: &Global, mut a: BackupArgs) -> Result<i32> {
    if (a.stdin || a.stdin_from_command) != a.stdin_filename.is_some() {
        return Err(VaultError::Usage("--stdin and --stdin-filename go together".into()).into());
    }
    if a.stdin_from_command {
        // The words after `--` are the command, not paths.
        if a.opts.paths.is_empty() {
            return Err(VaultError::Usage(
                "--stdin-from-command: give the command after --, e.g. -- pg_dump mydb".into(),
            )
            .into());
        }
        a.opts.stdin_command = std::mem::take(&mut a.opts.paths)
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
    }
    // Lists and exclude files read, every pattern checked, before the repository is
    // opened: bad input writes nothing.
    a.opts.stdin_filename = a.stdin_filename.clone();
    for w in a.opts.resolve()? {
        eprintln!("vault: {w}");
    }
    let a_sync = a.sync;
    let session = mirrored(g)?;
    let session = if a.dry_run {
        session.without_lock()
    } else {
        session.lock(LockKind::Shared, "backup", locking(g))?
    };
    let mut session = session.index_for_backup(a.dry_run)?;
    let time = a
        .time
        .as_deref()
        .map(|t| {
            t.parse::<jiff::Timestamp>()
                .map_err(|e| VaultError::Usage(format!("--time {t:?}: {e}")))
        })
        .transpose()?;
    let parent = match &a.parent {
        Some(p) => {
            Some(select::select(session.repo(), p, &select::Filter::default(), &warn_stderr)?.0)
        }
        None => None,
    };
    let opts = backup::BackupOptions {
        stdin_filename: a.stdin_filename,
        dry_run: a.dry_run,
        time,
        parent,
        ..a.opts
    };
    let counters = Arc::new(backup::Counters::default());
    let c = counters.clone();
    let mut meter = Meter::new();
    let progress = Arc::new(Progress::start(g.quiet || g.json, move || {
        // The total is known once the walk has found every file to read.
        let total = c
            .scanned
            .load(Ordering::Relaxed)
            .then(|| c.to_read.load(Ordering::Relaxed));
        let read = c.bytes_read.load(Ordering::Relaxed);
        let tail = packs_tail(read, total);
        format!(
            "{} files, read {}; {} new{tail}",
            c.files.load(Ordering::Relaxed),
            meter.line(read, total),
            human_bytes(c.bytes_added.load(Ordering::Relaxed))
        )
    }));
    let p = progress.clone();
    let warn: backup::Warn = Arc::new(move |m: String| p.println(&format!("vault: {m}")));
    let r = session.backup(&opts, counters, warn);
    if let Ok(p) = Arc::try_unwrap(progress) {
        p.finish();
    }
    let r = r?;
    let s = &r.snapshot.summary;
    let code = if s.errors > 0 {
        exit::PARTIAL
    } else {
        exit::OK
    };
    if g.json {
        print_json(&json!({
            "snapshot": r.snapshot_id.map(|i| i.to_hex()),
            "dry_run": opts.dry_run,
            "parent": r.snapshot.parent.map(|i| i.to_hex()),
            "paths": r.snapshot.paths,
            "summary": s,
            "confirmed": r.confirmed,
        }))?;
    } else if !g.quiet {
        let files = s.files_new + s.files_changed + s.files_unchanged;
        let what = match r.snapshot_id {
            Some(id) => format!("snapshot {} saved", id.short()),
            None => "dry run, nothing saved".to_string(),
        };
        println!(
            "{what}: {files} files ({} new, {} changed, {} unchanged), {} dirs; {} read, {} added, {} stored; {:.1}s",
            s.files_new,
            s.files_changed,
            s.files_unchanged,
            s.dirs,
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_added),
            human_bytes(s.bytes_stored),
            s.duration_s
        );
    }
    if s.errors > 0 && !g.quiet {
        eprintln!(
            "vault: {} file(s) or directories could not be read and are missing from the snapshot",
            s.errors
        );
    }
    if a_sync && !opts.dry_run {
        drop(session);
        // A mirror that is offline never fails the backup: exit 3, data safe.
        return Ok(code.max(mirrors::sync(g, None)?));
    }
    Ok(code)
}

fn snapshots(g: &Global, f: &SnapshotFilter) -> Result<i32> {
    let s = session(g)?;
    let list = select::list(s.repo(), f, &warn_stderr)?;
    if g.json {
        let v: Vec<serde_json::Value> = list
            .iter()
            .map(|(id, s)| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["id"] = json!(id.to_hex());
                v["short_id"] = json!(id.short());
                v
            })
            .collect();
        print_json(&serde_json::Value::Array(v))?;
        return Ok(exit::OK);
    }
    println!(
        "{:<8}  {:<19}  {:<16}  {:<16}  {:>10}  Paths",
        "ID", "Time", "Host", "Tags", "Size"
    );
    for (id, s) in &list {
        let time = s
            .timestamp()
            .map(|t| {
                t.to_zoned(jiff::tz::TimeZone::system())
                    .strftime("%Y-%m-%d %H:%M:%S")
                    .to_string()
            })
            .unwrap_or_else(|_| s.time.clone());
        println!(
            "{:<8}  {:<19}  {:<16}  {:<16}  {:>10}  {}",
            id.short(),
            time,
            s.host,
            s.tags.join(","),
            human_bytes(s.summary.bytes_total),
            s.paths.join(" ")
        );
    }
    if !g.quiet {
        println!("{} snapshot(s)", list.len());
    }
    Ok(exit::OK)
}

fn cmd_ls(g: &Global, a: LsArgs) -> Result<i32> {
    let s = reading_trees(g, "ls")?;
    let repo = s.repo();
    let (spec, path) = timetravel::split_args(a.args, &a.at, false)?;
    let covers: Vec<PathBuf> = path.iter().cloned().collect();
    let (_, snap) = timetravel::choose(g, repo, spec.as_deref(), &a.at, &a.filter, &covers)?;
    let path = path.unwrap_or_else(|| PathBuf::from("/"));
    let mut out = std::io::stdout().lock();
    let mut err = None;
    ls::ls(repo, &snap.tree, &path, !a.no_recursive, &mut |p, n| {
        if err.is_some() {
            return;
        }
        let r = if g.json {
            serde_json::to_writer(&mut out, &ls::Listed::new(p, n))
                .map_err(anyhow::Error::from)
                .and_then(|_| Ok(writeln!(out)?))
        } else if a.long {
            let l = ls::Listed::new(p, n);
            writeln!(
                out,
                "{:?} {:o} {:>8} {:>8} {:>12} {} {}",
                l.kind, l.mode, l.user, l.group, l.size, l.mtime, l.path
            )
            .map_err(Into::into)
        } else {
            use std::os::unix::ffi::OsStrExt;
            out.write_all(p.as_os_str().as_bytes())
                .and_then(|_| out.write_all(b"\n"))
                .map_err(Into::into)
        };
        if let Err(e) = r {
            err = Some(e);
        }
    })?;
    match err {
        // A closed pipe (`vault ls | head`) is not an error.
        Some(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(exit::OK)
        }
        Some(e) => Err(e),
        None => Ok(exit::OK),
    }
}

fn cmd_restore(g: &Global, a: RestoreArgs) -> Result<i32> {
    let mut session = reading_trees(g, "restore")?;
    // With --at, the snapshot must hold the literal paths asked for.
    let mut opts = a.opts;
    let covers: Vec<PathBuf> = opts
        .includes
        .iter()
        .filter(|p| !p.contains(['*', '?', '[']))
        .map(|p| timetravel::absolute(std::path::Path::new(p)))
        .collect();
    let (id, snap) = timetravel::choose(
        g,
        session.repo(),
        a.snapshot.as_deref(),
        &a.at,
        &a.filter,
        &covers,
    )?;
    // Relative include paths are the working directory's; patterns stay as they are.
    for p in &mut opts.includes {
        if !p.starts_with('/') && !p.contains(['*', '?', '[']) {
            if let Ok(x) = std::path::absolute(&*p) {
                *p = x.to_string_lossy().into_owned();
            }
        }
    }
    session.keep_for_restore(&snap.tree, &opts)?;
    let repo = session.repo();
    let counters = Arc::new(restore::Counters::default());
    // A whole snapshot is as large as its summary says (a repaired one is smaller);
    // restore counts any other selection itself.
    let whole = opts.includes.is_empty() && opts.excludes.is_empty();
    if whole && snap.original.is_none() {
        counters
            .total
            .store(snap.summary.bytes_total, Ordering::Relaxed);
    }
    let c = counters.clone();
    let mut meter = Meter::new();
    let progress = Progress::start(g.quiet || g.json, move || {
        let total = c.total.load(Ordering::Relaxed);
        format!(
            "{} files restored, {}",
            c.files.load(Ordering::Relaxed),
            meter.line(c.bytes.load(Ordering::Relaxed), Some(total))
        )
    });
    // Any other selection is counted beside the restore, for a display only.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let r = std::thread::scope(|s| {
        if progress.shown() && counters.total.load(Ordering::Relaxed) == 0 {
            let (opts, stop, c) = (&opts, &stop, &counters);
            s.spawn(move || {
                if let Some(n) = restore::planned_bytes(repo, &snap.tree, opts, stop) {
                    c.total.store(n, Ordering::Relaxed);
                }
            });
        }
        let r = session.restore(&snap.tree, &opts, counters.clone());
        stop.store(true, Ordering::Relaxed);
        r
    });
    progress.finish();
    let r = r?;
    for e in &r.errors {
        eprintln!("vault: {e}");
    }
    if g.json {
        print_json(&json!({"snapshot": id.to_hex(), "target": opts.target, "result": r}))?;
    } else if opts.dry_run {
        for c in &r.changes {
            println!("would {} {}", c.action, c.path.display());
        }
        if !g.quiet {
            println!(
                "dry run of snapshot {} to {}: {} files to write ({}), {} unchanged, {} to delete",
                id.short(),
                opts.target.display(),
                r.files,
                human_bytes(r.bytes),
                r.unchanged,
                r.deleted
            );
        }
    } else if !g.quiet {
        let mut also = String::new();
        if opts.overwrite.is_some() {
            also += &format!(", {} unchanged", r.unchanged);
        }
        if opts.delete {
            also += &format!(", {} deleted", r.deleted);
        }
        println!(
            "restored snapshot {} to {}: {} files, {} dirs, {}{}{}",
            id.short(),
            opts.target.display(),
            r.files,
            r.dirs,
            human_bytes(r.bytes),
            also,
            if opts.verify { ", verified" } else { "" }
        );
    }
    if r.errors.is_empty() {
        Ok(exit::OK)
    } else {
        eprintln!("vault: {} item(s) could not be restored", r.errors.len());
        Ok(exit::PARTIAL)
    }
}

fn cmd_dump(g: &Global, a: DumpArgs) -> Result<i32> {
    let mut s = reading_trees(g, "dump")?;
    let (spec, path) = timetravel::split_args(a.args, &a.at, true)?;
    let path = path.expect("split_args requires the path");
    let (_, snap) = timetravel::choose(
        g,
        s.repo(),
        spec.as_deref(),
        &a.at,
        &a.filter,
        std::slice::from_ref(&path),
    )?;
    s.keep_for_dump(&snap.tree, &path)?;
    let repo = s.repo();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let Some(format) = a.archive else {
        dump::dump(repo, &snap.tree, &path, &mut out)?;
        return Ok(exit::OK);
    };
    let summary = dump::dump_archive(repo, &snap.tree, &path, format, &mut out)?;
    for s in &summary.skipped {
        eprintln!("vault: not in the archive: {s}");
    }
    if !g.quiet {
        eprintln!(
            "vault: {} entries, {} of file data",
            summary.entries,
            human_bytes(summary.bytes)
        );
    }
    Ok(if summary.skipped.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

fn key(g: &Global, k: KeyCommand) -> Result<i32> {
    let session = session(g)?;
    let repo = session.repo();
    let loc = repo.location().to_string();
    match k {
        KeyCommand::Add(a) => {
            let pw = password::new_password(
                a.key.new_password_file.as_deref(),
                &format!("the new key of {loc}"),
            )?;
            let id = match a.role {
                super::KeyRole::Full => repo.add_key(&pw, &a.key.label, default_kdf())?,
                super::KeyRole::Backup => {
                    let host = a
                        .host
                        .clone()
                        .unwrap_or_else(crate::repo::repository::hostname);
                    repo.add_backup_key(&pw, &a.key.label, &host, default_kdf())?
                }
            };
            if g.json {
                print_json(&json!({"key": id.to_hex()}))?;
            } else if !g.quiet {
                println!("added key {}", id.short());
            }
        }
        KeyCommand::Passwd(a) => {
            let pw = password::new_password(
                a.new_password_file.as_deref(),
                &format!("the new password of {loc}"),
            )?;
            let (id, old) = repo.change_password(&pw, &a.label, default_kdf())?;
            render(
                g,
                &json!({"key": id.to_hex(), "replaces": old.to_hex()}),
                || {
                    println!(
                        "changed password: key {} replaces {}",
                        id.short(),
                        old.short()
                    );
                },
            )?;
        }
        KeyCommand::List => key_list(g, repo)?,
        KeyCommand::Remove { id } => {
            let target = repo.find_key(&id)?;
            repo.remove_key(&target)?;
            render(g, &json!({"removed": target.to_hex()}), || {
                println!("removed key {}", target.short());
            })?;
        }
        KeyCommand::Export { paper: true, .. } => {
            print!("{}", repo.paper_key()?);
        }
        KeyCommand::Export { .. } => {
            let v = serde_json::to_string_pretty(&repo.raw_key_export()?)?;
            println!("{v}");
        }
        KeyCommand::Import { .. } | KeyCommand::Rotate(_) => {
            unreachable!("run without this session")
        }
    }
    Ok(exit::OK)
}

/// `key import --paper`: the typed lines, checked, written as a raw key file.
fn key_import(g: &Global, output: Option<&std::path::Path>) -> Result<i32> {
    use crate::format::paper;
    use std::io::{BufRead, IsTerminal};
    let mut input = std::io::stdin().lock();
    let key = if input.is_terminal() {
        eprintln!(
            "Type the paper key: its {} (or {}) numbered lines, then the check line.",
            paper::LINES,
            paper::LINES_WITH_CONTENT
        );
        let mut lines = zeroize::Zeroizing::new(Vec::<paper::Line>::new());
        let mut typed = zeroize::Zeroizing::new(String::new());
        let mut ask = |prompt: &str, typed: &mut String| -> Result<()> {
            eprint!("{prompt}: ");
            typed.clear();
            if input.read_line(typed)? == 0 {
                return Err(VaultError::Usage("key import: the input ended early".into()).into());
            }
            Ok(())
        };
        loop {
            let n = lines.len() + 1;
            let prompt = match n {
                _ if n == paper::LINES + 1 => {
                    format!("line {n} (or the check line of a four-line key)")
                }
                _ if n > paper::LINES_WITH_CONTENT => "check".to_string(),
                _ => format!("line {n}"),
            };
            ask(&prompt, &mut typed)?;
            if n == paper::LINES + 1 && paper::is_check(&typed) || n > paper::LINES_WITH_CONTENT {
                match paper::assemble(&lines, &typed) {
                    Ok(k) => break k,
                    Err(e) => eprintln!("{e}"),
                }
                continue;
            }
            match paper::parse_line(n, &typed) {
                Ok(b) => lines.push(b),
                Err(e) => eprintln!("{e}"),
            }
        }
    } else {
        let mut text = zeroize::Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut input, &mut text)?;
        paper::decode(&text).map_err(|e| VaultError::Usage(format!("paper key: {e}")))?
    };
    let raw = crate::repo::repository::RawKeyFile::of(&key, "");
    let json = zeroize::Zeroizing::new(serde_json::to_string_pretty(&raw)? + "\n");
    drop(raw);
    match output {
        None => std::io::stdout().write_all(json.as_bytes())?,
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| {
                    format!(
                        "key file {}: refusing to overwrite or cannot create",
                        path.display()
                    )
                })?;
            f.write_all(json.as_bytes())?;
            f.sync_all()?;
            if !g.quiet {
                eprintln!(
                    "wrote the raw key file {}: set VAULT_KEY_FILE to it",
                    path.display()
                );
            }
        }
    }
    Ok(exit::OK)
}

/// `key rotate`: under the exclusive lock; the other key files it removes must be
/// agreed to with --yes when there are any.
fn key_rotate(g: &Global, a: &super::KeyRotateArgs) -> Result<i32> {
    let mut s = session(g)?.lock(LockKind::Exclusive, "key rotate", locking(g))?;
    let repo = s.repo();
    let resuming = repo.master_key()?.previous().is_some();
    let others: Vec<String> = crate::ops::rotate::keys_to_remove(repo)?
        .into_iter()
        .filter(|id| repo.key_id != Some(*id))
        .map(|id| id.short())
        .collect();
    if !resuming && !others.is_empty() && !a.yes {
        return Err(VaultError::Usage(format!(
            "key rotate removes every other key file ({}); run it again with --yes, then `vault key add` each password that should keep working",
            others.join(", ")
        ))
        .into());
    }
    let loc = repo.location().to_string();
    let pw = password::new_password(
        a.key.new_password_file.as_deref(),
        &format!("the new key of {loc} (the same password may be given again)"),
    )?;
    let counters = Arc::new(crate::ops::rotate::Counters::default());
    let c = counters.clone();
    let mut meter = Meter::new();
    let progress = Progress::start(g.quiet || g.json, move || {
        let total = Some(c.bytes_total.load(Ordering::Relaxed));
        let done = c.bytes_done.load(Ordering::Relaxed);
        format!("sealed again under the new key {}", meter.line(done, total))
    });
    let done = s.rotate_key(&pw, &a.key.label, default_kdf(), &counters);
    progress.finish();
    let done = done?;
    render(g, &json!(done), || {
        println!(
            "{}key rotated: key {} opens the repository; {} packs and {} snapshots sealed again ({} written), {} records; {} other key file(s) removed",
            if done.resumed { "interrupted " } else { "" },
            &done.key[..8],
            done.packs_resealed,
            done.snapshots.len(),
            human_bytes(done.bytes_written),
            done.records_resealed,
            done.removed_keys.len()
        );
        print_kept(&done.kept);
    })?;
    Ok(if done.damaged.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

/// After a rotation: the copies whose old objects the old key still opens, and until
/// when, as THREAT-MODEL.md §3 says.
fn print_kept(kept: &[crate::ops::rotate::Kept]) {
    if kept.is_empty() {
        return;
    }
    println!("still readable with the old key (and by whoever holds it):");
    for k in kept {
        match k.period {
            Some(p) => println!(
                "  mirror {} ({}): what `vault sync` replaces there is kept {} more, until `vault maintain --mirror {}` deletes it",
                k.name,
                k.location,
                crate::units::human_period(p),
                k.name
            ),
            None => println!(
                "  export {} at {}: an image made before; make it again with `vault export` and destroy the old one",
                k.name, k.location
            ),
        }
    }
}

fn key_list(g: &Global, repo: &Repository) -> Result<()> {
    let keys = repo.list_keys()?;
    let mut rows = Vec::new();
    for (id, r) in keys {
        let current = repo.key_id == Some(id);
        rows.push(match r {
            Ok(p) => {
                let role = if p.role.is_empty() { "full" } else { p.role.as_str() };
                json!({"id": id.to_hex(), "current": current, "label": p.label, "role": role, "host": p.host, "user": p.user, "created": p.created})
            }
            Err(_) => json!({"id": id.to_hex(), "current": current, "label": null, "role": null, "host": null, "user": null, "created": null}),
        });
    }
    if g.json {
        return print_json(&serde_json::Value::Array(rows));
    }
    println!(
        "   {:<8}  {:<16}  {:<6}  {:<16}  {:<10}  Created",
        "ID", "Label", "Role", "Host", "User"
    );
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("(damaged)").to_string();
        println!(
            "{}  {:<8}  {:<16}  {:<6}  {:<16}  {:<10}  {}",
            if r["current"] == json!(true) {
                "*"
            } else {
                " "
            },
            &s("id")[..8],
            s("label"),
            s("role"),
            s("host"),
            s("user"),
            s("created")
        );
    }
    Ok(())
}

fn cache(g: &Global, a: &super::CacheArgs) -> Result<i32> {
    use crate::repo::cache;
    use crate::units::human_bytes;
    let Some(base) = cache::base_dir() else {
        render(g, &json!({"caches": []}), || {
            println!("caching is off (VAULT_CACHE_DIR is empty)")
        })?;
        return Ok(exit::OK);
    };
    let when = |c: &cache::CacheInfo| {
        jiff::Timestamp::try_from(c.last_used).map_or_else(|_| "-".into(), |t| t.to_string())
    };
    if !a.cleanup {
        let caches = cache::list(&base).with_context(|| format!("cache {}", base.display()))?;
        return render(g, &json!({"dir": base, "caches": caches}), || {
            println!(
                "{:<10}  {:>10}  {:>7}  Last used",
                "Repository", "Size", "Files"
            );
            for c in &caches {
                let size = human_bytes(c.bytes);
                println!(
                    "{:<10}  {size:>10}  {:>7}  {}",
                    &c.repository[..8],
                    c.files,
                    when(c)
                );
            }
            let total: u64 = caches.iter().map(|c| c.bytes).sum();
            println!(
                "{} cache(s) in {}, {}",
                caches.len(),
                base.display(),
                human_bytes(total)
            );
        })
        .map(|()| exit::OK);
    }
    let done = cache::cleanup(&base, a.max_age, a.max_size, a.dry_run)
        .with_context(|| format!("cache {}", base.display()))?;
    let verb = if a.dry_run { "would remove" } else { "removed" };
    render(g, &json!({"dry_run": a.dry_run, "cleanup": done}), || {
        for c in &done.removed {
            let size = human_bytes(c.bytes);
            println!(
                "{verb} the cache of repository {} ({size}, last used {})",
                &c.repository[..8],
                when(c)
            );
        }
        if done.trimmed_files > 0 {
            let size = human_bytes(done.trimmed_bytes);
            println!(
                "{verb} {} least recently used file(s), {size}",
                done.trimmed_files
            );
        }
        println!("caches kept hold {}", human_bytes(done.kept_bytes));
    })?;
    Ok(exit::OK)
}

fn unlock(g: &Global, a: &super::UnlockArgs) -> Result<i32> {
    let session = session(g)?;
    let mode = if a.remove_all {
        lock::UnlockMode::All
    } else if a.stale {
        lock::UnlockMode::Stale
    } else {
        lock::UnlockMode::Dead
    };
    let quiet = g.quiet || g.json;
    let r = session.unlock(mode, &|line| {
        if !quiet {
            eprintln!("{line}");
        }
    })?;
    render(g, &json!({"removed": r.removed, "kept": r.kept}), || {
        for l in &r.removed {
            println!("removed {l}");
        }
        for l in &r.kept {
            println!("kept {l}");
        }
        println!("{} lock(s) removed", r.removed.len());
    })?;
    Ok(exit::OK)
}
