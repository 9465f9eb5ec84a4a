//! How the library tells its caller what happened without failing: warnings go to a
//! [`Reporter`] the caller supplies. The library itself never prints; the command line
//! prints what it is given, and adds the advice ("run `vault unlock`") that only it can
//! phrase.
//!
//! Progress is not reported here: long operations take counters (`Arc<…Counters>`) that
//! the caller polls at the rate it likes to draw.

use std::sync::Arc;

/// Receives one-line warnings: an index skipped as damaged, a dead lock ignored, a
/// mirror that did not open. A warning never changes the outcome; errors that do are
/// returned.
pub trait Reporter: Send + Sync {
    fn warn(&self, message: &str);
}

/// A reporter shared by the threads of an operation.
pub type Report = Arc<dyn Reporter>;

/// Discards every warning: for callers that judge by results alone.
pub struct Silent;

impl Reporter for Silent {
    fn warn(&self, _: &str) {}
}

impl<F: Fn(&str) + Send + Sync> Reporter for F {
    fn warn(&self, message: &str) {
        self(message)
    }
}
