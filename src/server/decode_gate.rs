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
use tokio::sync::Semaphore;

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

/// Runs `decode` under a permit on the blocking pool.
pub(crate) async fn run<T, F>(decode: F) -> Result<T, ErrorObjectOwned>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let unavailable =
        || ErrorObjectOwned::owned(-32603, "internal error: decoder unavailable", None::<()>);
    let _permit = gate().acquire().await.map_err(|_| unavailable())?;
    tokio::task::spawn_blocking(decode)
        .await
        .map_err(|_| unavailable())
}
