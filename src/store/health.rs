//! Whether the shared database is reachable, for `/ready` and the metrics.
//!
//! Set by every PostgreSQL connection as it connects, fails or breaks; an embedded SQLite store
//! never touches it and is always "up". Readiness turns false on the first failure and true
//! again on the next successful connection, so a load balancer stops sending work to an
//! instance that cannot record it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static DOWN: AtomicBool = AtomicBool::new(false);
static RECONNECTS: AtomicU64 = AtomicU64::new(0);

/// A connection was made.
pub(crate) fn connected() {
    if DOWN.swap(false, Ordering::AcqRel) {
        tracing::info!("database reachable again");
    }
    metrics::gauge!("keyguard_store_up").set(1.0);
    metrics::counter!("keyguard_store_connects_total").increment(1);
    RECONNECTS.fetch_add(1, Ordering::Relaxed);
}

/// A connection attempt failed.
pub(crate) fn failed() {
    if !DOWN.swap(true, Ordering::AcqRel) {
        tracing::error!("database unreachable: requests fail until it is back");
    }
    metrics::gauge!("keyguard_store_up").set(0.0);
    metrics::counter!("keyguard_store_connect_failures_total").increment(1);
}

/// A live connection broke (deadline missed, server gone).
pub(crate) fn lost() {
    DOWN.store(true, Ordering::Release);
    metrics::gauge!("keyguard_store_up").set(0.0);
    metrics::counter!("keyguard_store_connections_lost_total").increment(1);
}

/// Whether the store can take work (false from the first failure to the next connection).
pub fn ready() -> bool {
    !DOWN.load(Ordering::Acquire)
}
