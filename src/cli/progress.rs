//! Progress display: a bar on a terminal, nothing otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar on screen, if any, so that log lines from anywhere print above it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Prints a line on stderr, above the progress bar when one is showing.
pub fn eprint_line(line: &str) {
    let active = ACTIVE.lock().ok().and_then(|a| a.clone());
    match active {
        Some(b) => b.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    }
}

/// What a line adds once everything is read but the last packs are still on their way
/// (paced, or far away): without it the bar sits at 100% with nothing said.
pub fn packs_tail(read: u64, total: Option<u64>) -> &'static str {
    if total.is_some_and(|t| read >= t) {
        ", writing the last packs"
    } else {
        ""
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts a spinner whose message `render` produces every 200 ms; a no-op when
    /// stderr is not a terminal or `quiet`.
    pub fn start(quiet: bool, mut render: impl FnMut() -> String + Send + 'static) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        if quiet || !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                stop,
                thread: None,
            };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .expect("valid template"),
        );
        if let Ok(mut a) = ACTIVE.lock() {
            *a = Some(bar.clone());
        }
        let (b, s) = (bar.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                b.set_message(render());
                b.tick();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Progress {
            bar: Some(bar),
            stop,
            thread: Some(thread),
        }
    }

    /// Whether anything is shown (a terminal, not quiet): work done only for the display
    /// may be skipped otherwise.
    pub fn shown(&self) -> bool {
        self.bar.is_some()
    }

    /// Prints a line above the bar (or plainly without one).
    pub fn println(&self, line: &str) {
        eprint_line(line);
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(b) = &self.bar {
            if let Ok(mut a) = ACTIVE.lock() {
                *a = None;
            }
            b.finish_and_clear();
        }
    }
}

pub use crate::meter::{Granular, Meter};
pub use crate::units::{human_bytes, parse_size};
