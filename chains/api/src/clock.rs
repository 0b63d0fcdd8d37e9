//! The one wall-clock reading of keyguard: Unix milliseconds as `u64`.
//!
//! Rules take the time as an argument (`now_ms`), so tests inject instants; only the edges
//! (the daemon, a chain's convenience `check`) call [`now_ms`].

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 for a clock set before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
