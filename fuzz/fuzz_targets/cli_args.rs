//! The whole command line: every subcommand, option and value parser, from
//! whitespace-separated words (clap's own consistency checks run too, in this build).

#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use vault::cli::Cli;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let words = std::iter::once("vault").chain(s.split_ascii_whitespace());
    if let Err(e) = Cli::try_parse_from(words) {
        let _ = e.kind();
    }
});
