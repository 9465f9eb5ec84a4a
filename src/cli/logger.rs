//! `-v` levels: the library reports through the `log` crate; this prints it on stderr.
//!
//! -v shows what changes (files backed up or restored, objects copied or deleted),
//! -vv adds what stays the same and every storage write and delete, -vvv every read.
//! Other crates' messages are shown at -vvv only, and only at their warning level, so
//! that a dependency's debug output can never print a request carrying a secret.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Logger {
    ours: LevelFilter,
    theirs: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        let limit = if m.target().starts_with("vault") {
            self.ours
        } else {
            self.theirs
        };
        m.level() <= limit
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = match r.level() {
            Level::Error | Level::Warn => format!("vault: {}", r.args()),
            _ => format!("{}", r.args()),
        };
        super::progress::eprint_line(&line);
    }

    fn flush(&self) {}
}

/// Installs the logger for `verbose` repetitions of -v (none under --quiet).
pub fn init(verbose: u8, quiet: bool) {
    let (ours, theirs) = match (quiet, verbose) {
        (true, _) => (LevelFilter::Error, LevelFilter::Off),
        (false, 0) => (LevelFilter::Warn, LevelFilter::Off),
        (false, 1) => (LevelFilter::Info, LevelFilter::Off),
        (false, 2) => (LevelFilter::Debug, LevelFilter::Off),
        (false, _) => (LevelFilter::Trace, LevelFilter::Warn),
    };
    if log::set_boxed_logger(Box::new(Logger { ours, theirs })).is_ok() {
        log::set_max_level(ours.max(theirs));
    }
}
