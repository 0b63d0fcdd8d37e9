//! Expensive request decoding (typed data: JSON to type graph to hash) runs on the blocking
//! pool, at most [`permits`] at a time.
//!
//! The attack stopped: 120 concurrent 1 MiB typed-data requests each built their JSON tree, its
//! copy and the resolved value at once (RSS 80 MB to 3.2 GB), on the async workers that also
//! serve every other client. The caps of `keyguard_evm::typed_bounds` bound one decode; this
//! bounds how many run together, and keeps them off the workers, so a flood of them queues
//! while an ordinary `eth_signTransaction` is still answered.

use std::sync::OnceLock;

use jsonrpsee::types::ErrorObjectOwned;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Concurrent decodes: half the cores (at least one), so hostile decodes cannot take them all.
pub fn permits() -> usize {
    std::thread::available_parallelism()
        .map(|n| (n.get() / 2).max(1))
        .unwrap_or(1)
}

fn gate() -> &'static Semaphore {
    static GATE: OnceLock<Semaphore> = OnceLock::new();
    GATE.get_or_init(|| Semaphore::new(permits()))
}

/// Waits for a decode permit. Take it before copying the request's params: requests queued
/// here then hold only the body jsonrpsee already has, not a second copy each.
pub(crate) async fn permit() -> Result<SemaphorePermit<'static>, ErrorObjectOwned> {
    gate().acquire().await.map_err(|_| unavailable())
}

fn unavailable() -> ErrorObjectOwned {
    ErrorObjectOwned::owned(-32603, "internal error: decoder unavailable", None::<()>)
}

/// Runs `decode` on the blocking pool (call with a [`permit`] held).
pub(crate) async fn run<T, F>(
    _permit: &SemaphorePermit<'static>,
    decode: F,
) -> Result<T, ErrorObjectOwned>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(decode)
        .await
        .map_err(|_| unavailable())
}

/// Request bodies larger than this wait for a [`large_body_permit`] before they are read.
pub const LARGE_BODY: usize = 64 * 1024;

/// Large bodies read and handled at once, over all listeners.
pub const LARGE_BODIES: usize = 8;

/// A permit to read and handle one large request body. A flood of 1 MiB requests then holds
/// `LARGE_BODIES` bodies (and their copies in jsonrpsee) instead of one per connection; the
/// rest wait unread in the kernel's socket buffers, and small requests never wait.
pub(crate) async fn large_body_permit() -> Option<SemaphorePermit<'static>> {
    static GATE: OnceLock<Semaphore> = OnceLock::new();
    GATE.get_or_init(|| Semaphore::new(LARGE_BODIES))
        .acquire()
        .await
        .ok()
}
