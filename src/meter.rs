//! How far an operation has come, for whoever shows it (a terminal's progress line, a
//! GUI): bytes done against a total, a smoothed rate and an ETA, and bytes moved within
//! whole objects as the storage layer counts them.

use std::time::{Duration, Instant};

use crate::units::human_bytes;

/// Bytes done, against a total when one is known: `12.0 MiB / 40.0 MiB (30%), 2.1
/// MiB/s, ETA 0:13`, or `12.0 MiB, 2.1 MiB/s`. The rate is the average since the first
/// look for a few seconds, then smoothed over about the last [`Meter::SMOOTHING`].
pub struct Meter {
    /// The first look, and the last one with the bytes done then.
    start: Option<Instant>,
    last: (Instant, u64),
    rate: f64,
}

impl Default for Meter {
    fn default() -> Self {
        Meter::new()
    }
}

impl Meter {
    pub const SMOOTHING: Duration = Duration::from_secs(5);

    pub fn new() -> Meter {
        Meter {
            start: None,
            last: (Instant::now(), 0),
            rate: 0.0,
        }
    }

    /// Takes `done` bytes so far as of `now`; the smoothed rate in bytes per second.
    pub fn sample(&mut self, done: u64, now: Instant) -> f64 {
        let start = *self.start.get_or_insert(now);
        let since_start = now.saturating_duration_since(start).as_secs_f64();
        let dt = now.saturating_duration_since(self.last.0).as_secs_f64();
        if since_start < Self::SMOOTHING.as_secs_f64() {
            self.rate = if since_start > 0.0 {
                done as f64 / since_start
            } else {
                0.0
            };
        } else if dt > 0.0 {
            let now_rate = done.saturating_sub(self.last.1) as f64 / dt;
            let alpha = 1.0 - (-dt / Self::SMOOTHING.as_secs_f64()).exp();
            self.rate += alpha * (now_rate - self.rate);
        }
        self.last = (now, done);
        self.rate
    }

    /// The progress line for `done` bytes of `total` (None: not known, or not yet).
    pub fn line(&mut self, done: u64, total: Option<u64>) -> String {
        let rate = self.sample(done, Instant::now());
        format_line(done, total, rate)
    }
}

/// Bytes done in a phase that counts whole objects (a pack read or copied), a chunk at
/// a time: the bytes the storage moved since the phase began ([`transferred`]), no fewer
/// than the objects done and no more than the total. A 16 MiB pack over a slow link
/// shows as it goes, not all at once when it is done.
///
/// [`transferred`]: crate::repo::limits::transferred
#[derive(Default)]
pub struct Granular {
    base: Option<u64>,
}

impl Granular {
    /// `moved`: the process's bytes read (or written, as the phase goes) so far;
    /// `objects`: the phase's own count of bytes in whole objects; `total`: 0 while not
    /// known (then the phase has not begun, and `objects` is all there is).
    pub fn done(&mut self, moved: u64, objects: u64, total: u64) -> u64 {
        if total == 0 {
            return objects;
        }
        // The phase began at most one look ago: what moved since counts, less what
        // it had done as whole objects by then.
        let base = *self.base.get_or_insert(moved.saturating_sub(objects));
        moved.saturating_sub(base).clamp(objects.min(total), total)
    }
}

/// `done` of `total` bytes at `rate` bytes per second, with an ETA when it can tell.
pub fn format_line(done: u64, total: Option<u64>, rate: f64) -> String {
    let speed = format!("{}/s", human_bytes(rate as u64));
    let Some(total) = total.filter(|&t| t > 0) else {
        return format!("{}, {speed}", human_bytes(done));
    };
    let pct = (done as f64 * 100.0 / total as f64).min(100.0);
    let left = total.saturating_sub(done);
    let eta = if left > 0 && rate >= 1.0 {
        format!(", ETA {}", clock(left as f64 / rate))
    } else {
        String::new()
    };
    format!(
        "{} / {} ({pct:.0}%), {speed}{eta}",
        human_bytes(done),
        human_bytes(total)
    )
}

/// Seconds as `M:SS` or `H:MM:SS`.
fn clock(secs: f64) -> String {
    let s = secs.min(99.0 * 3600.0).round() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_rate_and_eta() {
        assert_eq!(
            format_line(10 << 20, Some(40 << 20), 2.0 * (1 << 20) as f64),
            "10.0 MiB / 40.0 MiB (25%), 2.0 MiB/s, ETA 0:15"
        );
        assert_eq!(format_line(3 << 20, None, 1536.0), "3.0 MiB, 1.5 KiB/s");
        assert_eq!(format_line(5, Some(4), 0.0), "5 B / 4 B (100%), 0 B/s");
        assert_eq!(format_line(0, Some(4), 0.0), "0 B / 4 B (0%), 0 B/s");
        assert_eq!(clock(3725.0), "1:02:05");
    }

    #[test]
    fn granular_counts_stay_between_the_objects_and_the_total() {
        let mut g = Granular::default();
        assert_eq!(g.done(500, 7, 0), 7, "not begun: the objects' count");
        assert_eq!(g.done(1000, 0, 100), 0, "begins");
        assert_eq!(g.done(1040, 0, 100), 40, "a chunk at a time");
        assert_eq!(g.done(1050, 60, 100), 60, "never below the objects done");
        assert_eq!(g.done(1300, 100, 100), 100, "never above the total");
    }

    #[test]
    fn the_rate_is_smoothed() {
        let mut m = Meter::new();
        let t0 = Instant::now();
        assert_eq!(m.sample(0, t0), 0.0, "the first look starts the clock");
        let s = |n: u64| t0 + Duration::from_secs(n);
        // The average while it is young: 10 MiB in 2 s.
        assert_eq!(m.sample(10 << 20, s(2)), 5.0 * (1 << 20) as f64);
        assert_eq!(m.sample(25 << 20, s(5)), 5.0 * (1 << 20) as f64);
        // Then a stall moves it down gradually, not to 0 at once.
        let r = m.sample(25 << 20, s(6));
        assert!(
            r > 3.0 * (1 << 20) as f64 && r < 5.0 * (1 << 20) as f64,
            "{r}"
        );
    }
}
