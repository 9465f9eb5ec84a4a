//! What users type: times (`--at`), sizes, spans, lock waits, grouping, `--max-unused`,
//! `--read-data-subset`, exclude patterns, ids. The first byte picks the parser (and,
//! for times, the clock); the rest is the text.

#![no_main]

use std::path::Path;
use std::str::FromStr;

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use libfuzzer_sys::fuzz_target;
use vault::format::Id;
use vault::ops::{exclude, forget, prune, subset, timespec};

/// A clock for `timespec::parse`: a fixed instant, or one near either end of jiff's
/// range, in UTC or a zone with summer time.
fn clock(sel: u8) -> Zoned {
    let ts = match (sel >> 1) % 4 {
        0 => "2026-11-21T14:30:00Z".parse().unwrap(),
        1 => "2026-03-29T01:30:00Z".parse().unwrap(),
        2 => Timestamp::MIN,
        _ => Timestamp::MAX,
    };
    let tz = if sel & 1 == 0 {
        TimeZone::UTC
    } else {
        TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()
    };
    ts.to_zoned(tz)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let s = String::from_utf8_lossy(rest);
    let s = s.as_ref();
    match sel % 10 {
        0 => {
            let _ = timespec::parse(s, &clock(sel / 10));
        }
        1 => {
            if let Ok(n) = vault::units::parse_size(s) {
                let _ = vault::units::human_bytes(n);
            }
        }
        2 => {
            if let Ok(span) = forget::parse_span(s) {
                // How forget and `run` use a span: back from some instant.
                let _ = clock(sel / 10).checked_sub(span);
            }
        }
        3 => {
            let _ = vault::cli::parse_wait(s);
        }
        4 => {
            let _ = forget::GroupBy::from_str(s);
        }
        5 => {
            let _ = prune::MaxUnused::from_str(s);
        }
        6 => {
            if let Ok(sub) = subset::Subset::from_str(s) {
                let _ = sub.describe();
                let packs: Vec<(Id, u64)> = (0u8..16)
                    .map(|i| (Id::of_stored(&[i]), u64::from(i) << 20))
                    .collect();
                let chosen = sub.choose(&packs);
                assert!(chosen.len() <= packs.len());
            }
        }
        7 => {
            // One pattern per line, as in an exclude file, and each as an --exclude.
            let patterns: Vec<String> = s.lines().map(str::to_string).collect();
            if let Ok(e) = exclude::Excludes::new(&patterns, &[]) {
                for p in ["/", "/a/b/x.tmp", "/home/u/.cache", "/srv/a b/ü"] {
                    let _ = e.excluded(Path::new(p), false);
                    let _ = e.excluded(Path::new(p), true);
                }
            }
        }
        8 => {
            if let Some(id) = Id::from_hex(s) {
                assert_eq!(id.to_hex(), s.to_ascii_lowercase());
            }
        }
        _ => {
            let p = vault::repo::location::mirror_prefix(s);
            assert!(p.is_ascii());
        }
    }
});
