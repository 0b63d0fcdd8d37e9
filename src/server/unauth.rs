//! Callers without a valid credential: a default rate limit per peer address, and audit rows
//! bounded per interval.
//!
//! The attack stopped: every unauthenticated signing attempt wrote its own fsynced audit row,
//! so one script without a credential wrote 18,800 rows (79 MB) in 10 s and kept the disk and
//! the audit writer busy for everyone. Now each peer gets [`BURST`] attempts and then
//! [`PER_SECOND`] a second, each with its own row; attempts beyond that are refused with
//! `-32003` (`rate_limit.unauthenticated`) and counted, and one summary row per
//! [`SUMMARY_INTERVAL`] records how many there were.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::guard::Guard;

/// Sustained unauthenticated signing attempts per second from one address that get a row.
pub const PER_SECOND: u32 = 5;
/// Attempts one address may make at once before the rate applies.
pub const BURST: u32 = 50;
/// How often suppressed attempts are summarized in one audit row.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// The rule named in the `-32003` answer, the summary row and the docs.
pub const RULE: &str = "rate_limit.unauthenticated";

/// The unauthenticated budget of one listener.
pub(crate) struct UnauthGate {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    suppressed: AtomicU64,
}

impl UnauthGate {
    /// A gate with the default quota; its summary task runs until the guard is dropped.
    pub(crate) fn start(guard: &Arc<Guard>, chain: String) -> Arc<UnauthGate> {
        let quota = Quota::per_second(NonZeroU32::new(PER_SECOND).expect("positive"))
            .allow_burst(NonZeroU32::new(BURST).expect("positive"));
        let gate = Arc::new(UnauthGate {
            limiter: RateLimiter::keyed(quota),
            suppressed: AtomicU64::new(0),
        });
        let (weak_gate, weak_guard) = (Arc::downgrade(&gate), Arc::downgrade(guard));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let (Some(gate), Some(guard)) = (weak_gate.upgrade(), weak_guard.upgrade()) else {
                    return;
                };
                gate.limiter.retain_recent();
                gate.limiter.shrink_to_fit();
                let n = gate.suppressed.swap(0, Ordering::Relaxed);
                if n > 0 {
                    let reason = format!(
                        "{n} further unauthenticated signing attempts in the last {} s were \
                         refused by {RULE} without a row each",
                        SUMMARY_INTERVAL.as_secs()
                    );
                    guard.audit_unauthenticated(RULE, &chain, &reason).await;
                }
            }
        });
        gate
    }

    /// Whether an attempt from `peer` gets its own audit row (and the usual `-32005`); when
    /// not, it is counted for the next summary row and answered `-32003`.
    pub(crate) fn admit(&self, peer: Option<IpAddr>) -> bool {
        let key = peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let admitted = self.limiter.check_key(&key).is_ok();
        if !admitted {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }
}
