//! Key files: the plaintext JSON, the KDF parameter checks, the sealed payload and the
//! sealed metadata. The key is derived with the cheapest scrypt there is instead of the
//! file's own parameters (at least N = 2^15), so one input takes microseconds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::format::keyfile::{self, KeyFile, KeyPayload};
use vault_fuzz::{PASSWORD, cheap_kek, cheap_key_file, keys};

fn open(kf: &KeyFile) {
    let _ = kf.meta(keys());
    // What `open` does, with the derivation swapped for a cheap one.
    if let Ok(salt) = kf.kdf.check()
        && let Ok(payload) = kf.open_with(&cheap_kek(PASSWORD, &salt))
    {
        let _ = payload.master();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        // A key file as stored.
        if let Ok(kf) = KeyFile::parse(rest) {
            open(&kf);
            let again = KeyFile::parse(&kf.to_bytes()).expect("a written key file parses");
            assert_eq!(again.kdf, kf.kdf);
        }
        return;
    }
    // The rest is the plaintext of both sealed fields (payload and metadata JSON),
    // sealed the way a key file holds them, so the decoders behind the AEAD run.
    let salt = [7u8; 32];
    let kf = cheap_key_file(&salt, rest, rest);
    open(&kf);
    if let Ok(p) = kf.open_with(&cheap_kek(PASSWORD, &salt)) {
        let p: KeyPayload = p;
        if let Ok(mk) = p.master() {
            assert_eq!(keyfile::encode_master(&mk), p.master_key);
        }
    }
});
