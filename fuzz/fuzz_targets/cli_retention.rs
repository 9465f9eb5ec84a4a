//! Retention policies as `--snapshots` and profiles give them (forget's options in one
//! string), turned into a policy and applied to a fixed set of snapshots.

#![no_main]

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use libfuzzer_sys::fuzz_target;
use vault::format::Id;
use vault::format::snapshot::{SNAPSHOT_VERSION, Snapshot, Summary};
use vault::ops::forget;

fn snapshots() -> Vec<(Id, Snapshot)> {
    let end: Timestamp = "2026-11-21T22:00:00Z".parse().unwrap();
    let times = (0..40)
        .map(|d| (end - Span::new().hours(13 * d)).to_string())
        .chain(["not a time".to_string(), Timestamp::MIN.to_string()]);
    times
        .enumerate()
        .map(|(i, time)| {
            let s = Snapshot {
                version: SNAPSHOT_VERSION,
                time,
                host: ["a", "b"][i % 2].into(),
                user: "u".into(),
                paths: vec!["/data".into()],
                tags: if i % 3 == 0 {
                    vec!["daily".into()]
                } else {
                    vec![]
                },
                parent: None,
                tree: Id::default(),
                excludes: vec![],
                program: "fuzz".into(),
                summary: Summary::default(),
                original: None,
            };
            (Id::of_stored(&i.to_le_bytes()), s)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let Ok(args) = vault::cli::parse_selection(&s) else {
        return;
    };
    let Ok(policy) = args.keep.policy() else {
        return;
    };
    let snaps = snapshots();
    let groups = forget::apply(&policy, &snaps, args.keep.group_by, &TimeZone::UTC);
    let decided: usize = groups.iter().map(|g| g.snapshots.len()).sum();
    assert_eq!(decided, snaps.len(), "every snapshot gets a decision");
});
