//! The repository config: keyless checksum, object envelope, AEAD, zstd, JSON, validation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::format::config::Config;
use vault::format::object::{self, Kind};
use vault_fuzz::{keys, stored_object};

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
    }
});
