//! Absolute locktimes against the chain tip: `bitcoin.locktime` and `bitcoin.locktime_freeze`.
//!
//! A signed transaction that cannot be mined yet still claims its inputs in the conflict guard
//! (`bitcoin.conflicting_spend`), so a lock far in the future freezes those coins: every real
//! payout from them is refused until the lock matures or the claim expires. Two rules bound it:
//!
//! - `bitcoin.locktime`: a height lock at most `max_locktime_blocks_ahead` above the tip, a
//!   time lock (when allowed at all) at most `max_locktime_secs_ahead` above the clock.
//! - `bitcoin.locktime_freeze`: a self-transfer (every output is our change or data) pays
//!   nothing out, so no spend limit or approval ever sees it; one whose lock is not final yet
//!   is refused unless `allow_locktime_self_transfer`.
//!
//! The tip is the node's (`getblockcount`) when a `[bitcoin_node]` is configured; otherwise, on
//! mainnet only, an upper estimate from the clock ([`estimated_tip`]); on other networks
//! without a node it is unknown, and any active height lock on a self-transfer is a freeze.

use bitcoin::absolute::LockTime;
use bitcoin::Network;
use keyguard_chain::Rejection;

use crate::rules::{rule, BitcoinPolicy};
use crate::{OutputClass, SpendIntent};

/// Mainnet block 840,000 (the fourth halving) and its timestamp: the clock estimate's anchor.
const ANCHOR: (u32, u64) = (840_000, 1_713_571_767);

/// Seconds per block assumed by the estimate: faster than the chain has ever averaged over
/// months (about 9.5-10 min), so the estimate stays above the real tip and never refuses a
/// wallet's anti-fee-sniping lock (`locktime = tip`). The price: without a node the bound is
/// loose by a few blocks per week since the anchor.
const ESTIMATE_SECS_PER_BLOCK: u64 = 540;

/// What keyguard knows of the chain tip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    /// Height of the tip (or its upper estimate).
    pub height: u32,
    /// `true` from a node, `false` from the clock estimate.
    pub exact: bool,
}

/// An upper estimate of the mainnet tip at `now_ms`; `None` on other networks (their heights
/// do not follow the clock).
pub fn estimated_tip(network: Network, now_ms: u64) -> Option<Tip> {
    if network != Network::Bitcoin {
        return None;
    }
    let elapsed = (now_ms / 1000).saturating_sub(ANCHOR.1);
    let blocks = u32::try_from(elapsed / ESTIMATE_SECS_PER_BLOCK).unwrap_or(u32::MAX);
    Some(Tip {
        height: ANCHOR.0.saturating_add(blocks),
        exact: false,
    })
}

/// Whether every output is ours (change) or data: the transaction pays nothing out.
pub fn is_self_transfer(intent: &SpendIntent) -> bool {
    intent
        .outputs
        .iter()
        .all(|o| !matches!(o.class, OutputClass::Spend { .. }))
}

impl BitcoinPolicy {
    /// Checks the transaction's absolute lock against `tip` (`None`: unknown) and the clock.
    pub fn check_locktime(
        &self,
        intent: &SpendIntent,
        tip: Option<Tip>,
        now_ms: u64,
    ) -> Result<(), Rejection> {
        let tx = &intent.psbt.unsigned_tx;
        let active = tx
            .input
            .iter()
            .any(|i| i.sequence.enables_absolute_lock_time());
        if !active || tx.lock_time.to_consensus_u32() == 0 {
            return Ok(());
        }
        let refuse = |r, reason: String| Err(Rejection::policy(r, "tx.locktime", reason));
        let source = |t: Tip| if t.exact { "node tip" } else { "estimated tip" };
        let now_secs = now_ms / 1000;
        let final_now = match tx.lock_time {
            LockTime::Blocks(h) => {
                let h = h.to_consensus_u32();
                if self.max_locktime_height.is_some_and(|max| h > max) {
                    return refuse(
                        rule::LOCKTIME,
                        format!("height {h} above the configured maximum"),
                    );
                }
                if let Some(t) = tip {
                    let limit = t.height.saturating_add(self.max_locktime_blocks_ahead);
                    if h > limit {
                        return refuse(
                            rule::LOCKTIME,
                            format!(
                                "height {h} is more than {} blocks above the {} {}",
                                self.max_locktime_blocks_ahead,
                                source(t),
                                t.height
                            ),
                        );
                    }
                }
                tip.is_some_and(|t| h <= t.height)
            }
            LockTime::Seconds(t) => {
                let t = u64::from(t.to_consensus_u32());
                if !self.allow_time_locktime {
                    return refuse(rule::LOCKTIME, format!("time lock {t} not allowed"));
                }
                if t > now_secs.saturating_add(self.max_locktime_secs_ahead) {
                    return refuse(
                        rule::LOCKTIME,
                        format!(
                            "time lock {t} is more than {} s ahead of the clock ({now_secs})",
                            self.max_locktime_secs_ahead
                        ),
                    );
                }
                t <= now_secs
            }
        };
        if !final_now && !self.allow_locktime_self_transfer && is_self_transfer(intent) {
            let known = match tip {
                Some(t) => format!("the {} is {}", source(t), t.height),
                None => "no node is configured to tell the tip".into(),
            };
            return refuse(
                rule::LOCKTIME_FREEZE,
                format!(
                    "a self-transfer locked until {} cannot be mined yet ({known}) and would \
                     hold its coins in the conflict guard; set allow_locktime_self_transfer to allow",
                    tx.lock_time
                ),
            );
        }
        Ok(())
    }
}
