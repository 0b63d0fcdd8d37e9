//! Expensive request decoding (typed data: JSON to type graph to hash) runs on the blocking
//! pool, at most [`permits`] at a time; large request bodies are read a few at a time. A leaf
//! module (tokio only), so the transport and the guard's decode step can both use it.
//!
//! The attack stopped: 120 concurrent 1 MiB typed-data requests each built their JSON tree, its
//! copy and the resolved value at once (RSS 80 MB to 3.2 GB), on the async workers that also
//! serve every other client. The caps of `keyguard_evm::typed_bounds` bound one decode; this
//! bounds how many run together, and keeps them off the workers, so a flood of them queues
//! while an ordinary `eth_signTransaction` is still answered.

use std::sync::OnceLock;

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
pub async fn permit() -> Result<SemaphorePermit<'static>, Unavailable> {
    gate().acquire().await.map_err(unavailable)
}

/// The decoder pool is gone (the runtime is shutting down) or the decode panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("decoder unavailable")]
pub struct Unavailable;

fn unavailable<E>(_: E) -> Unavailable {
    Unavailable
}

/// Runs `decode` on the blocking pool (call with a [`permit`] held).
pub async fn run<T, F>(_permit: &SemaphorePermit<'static>, decode: F) -> Result<T, Unavailable>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(decode)
        .await
        .map_err(unavailable)
}

/// Request bodies larger than this wait for a [`large_body_permit`] before they are read.
pub const LARGE_BODY: usize = 64 * 1024;

/// Large bodies read and handled at once, over all listeners.
pub const LARGE_BODIES: usize = 8;

/// A permit to read and handle one large request body. A flood of 1 MiB requests then holds
/// `LARGE_BODIES` bodies (and their copies in jsonrpsee) instead of one per connection; the
/// rest wait unread in the kernel's socket buffers, and small requests never wait.
pub async fn large_body_permit() -> Option<SemaphorePermit<'static>> {
    static GATE: OnceLock<Semaphore> = OnceLock::new();
    GATE.get_or_init(|| Semaphore::new(LARGE_BODIES))
        .acquire()
        .await
        .ok()
}

/// Takes a permit, then runs `decode` on the blocking pool: for a decode step that owns its
/// input already (the guard's pipeline).
pub async fn gated<T, F>(decode: F) -> Result<T, Unavailable>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let permit = permit().await?;
    run(&permit, decode).await
}
