//! The repository config: keyless checksum, object envelope, AEAD, zstd, JSON, validation,
//! and the chunker the config's parameters and gear table (`chunker.gear`) build.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::format::chunker::Chunker;
use vault::format::config::{Config, Gear};
use vault::format::crypto::MasterKey;
use vault::format::object::{self, Kind};
use vault_fuzz::{MASTER_KEY, keys, stored_object};

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let Some(stored) = stored_object(Kind::Config, data) else {
        return;
    };
    let _ = object::verify_checksum(&stored);
    if let Ok(cfg) = Config::open(keys, &stored) {
        // What opens is valid, and survives being written again.
        cfg.validate().expect("an opened config is valid");
        let again = Config::open(keys, &cfg.seal(keys)).expect("a sealed config opens");
        assert_eq!(again, cfg);
        // A config without a gear (every repository before the PRF table) is written
        // again without one, and keeps the XOR-seeded table.
        let body = serde_json::to_string(&cfg).expect("config serializes");
        assert_eq!(
            body.contains(r#""gear":"#),
            cfg.chunker.gear.is_some(),
            "{body}"
        );
        let gear = cfg
            .chunker
            .gear()
            .expect("an opened config's gear is known");
        assert_eq!(gear == Gear::XorSeed, cfg.chunker.gear.is_none());
        chunks_within_bounds(&cfg, data);
    }
});

/// Every parameter set validation lets through builds a chunker whose chunks of any
/// input cover it, none longer than max_size and none but the last shorter than min_size.
fn chunks_within_bounds(cfg: &Config, data: &[u8]) {
    let master = MasterKey::from_bytes(MASTER_KEY);
    let c = Chunker::new(&cfg.chunker, &master.chunker_secret())
        .expect("a valid config builds a chunker");
    let (min, max) = (cfg.chunker.min_size as usize, cfg.chunker.max_size as usize);
    let ends = c.boundaries(data);
    assert_eq!(ends.last().copied().unwrap_or(0), data.len());
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        let n = end - start;
        assert!(n >= 1 && n <= max, "chunk of {n}");
        assert!(n >= min.min(data.len() - start) || i + 1 == ends.len());
        start = end;
    }
}
