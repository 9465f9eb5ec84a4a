//! Repository locations: paths and URLs, parsed without opening anything (opening a
//! local path creates its directory; opening a URL builds a network client).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::repo::location::{self, Location};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    match location::parse(&s) {
        Ok(Location::Local(p)) => assert!(p.is_absolute()),
        Ok(Location::Remote { scheme, url }) => {
            assert!(s.starts_with(&format!("{scheme}://")));
            let _ = url.host_str();
            let _ = url.query_pairs().count();
        }
        Err(e) => {
            let _ = format!("{e:#}");
        }
    }
});
