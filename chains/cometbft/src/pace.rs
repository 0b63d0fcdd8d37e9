//! Height progress bounded by the wall clock (`cometbft.height_rate`).
//!
//! `max_height_jump` alone is measured from the last signed height, which a rooted node
//! chooses: 3,000 votes of +1,000 each moved a watermark 3,000,000 heights in 1.4 s, after which
//! every real vote is a regression (the validator is locked out for months). A chain cannot
//! advance faster than one height per block time, so progress is metered by a token bucket:
//! credit refills at one height per `min_block_time_ms` of local clock, up to `burst` heights,
//! and every signature spends `height - last_height`. Whatever the node sends, the watermark can
//! get at most `burst + elapsed / min_block_time` ahead of where it was.
//!
//! The bucket is full when a daemon loads a watermark (a restart or `state import` grants one
//! burst, like `max_height_jump` always did) and is kept in memory only.

use keyguard_chain::Rejection;

/// Default `min_block_time_ms`: faster than any CometBFT chain's blocks, so it never refuses
/// a live chain; operators should set it near their chain's block time.
pub const DEFAULT_MIN_BLOCK_TIME_MS: u64 = 200;

/// Default burst when `max_height_jump` is not set: about a week of 6-second blocks.
pub const DEFAULT_BURST: u64 = 100_000;

/// The bucket of one (chain, key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// Credit in milliseconds of block time (one height = `min_block_time_ms`).
    credit_ms: u128,
    /// Local clock of the last refill (Unix ms).
    at_ms: i128,
}

/// The meter's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaceLimits {
    /// Shortest time one height can take; 0 disables the meter.
    pub min_block_time_ms: u64,
    /// Most heights credited at once.
    pub burst: u64,
}

impl PaceLimits {
    fn cap_ms(&self) -> u128 {
        u128::from(self.burst) * u128::from(self.min_block_time_ms)
    }
}

impl Pace {
    /// A full bucket at `now_ms` (a freshly loaded watermark).
    pub fn full(limits: &PaceLimits, now_ms: i128) -> Pace {
        Pace {
            credit_ms: limits.cap_ms(),
            at_ms: now_ms,
        }
    }

    /// Whether moving from `last_height` to `height` at `now_ms` is within the meter; returns
    /// the bucket to keep once the signature is committed (nothing changes on a refusal).
    pub fn admit(
        &self,
        limits: &PaceLimits,
        last_height: i64,
        height: i64,
        now_ms: i128,
    ) -> Result<Pace, Rejection> {
        if limits.min_block_time_ms == 0 {
            return Ok(*self);
        }
        // A clock stepping back refills nothing (and never underflows).
        let elapsed = u128::try_from(now_ms - self.at_ms).unwrap_or(0);
        let credit = (self.credit_ms + elapsed).min(limits.cap_ms());
        let step = u128::try_from(i128::from(height) - i128::from(last_height)).unwrap_or(0);
        let cost = step * u128::from(limits.min_block_time_ms);
        if cost > credit {
            let heights = credit / u128::from(limits.min_block_time_ms);
            return Err(Rejection::policy(
                "cometbft.height_rate",
                "height",
                format!(
                    "{height} is {step} above the last signed height {last_height}; the clock \
                     allows {heights} more (one per {} ms, burst {})",
                    limits.min_block_time_ms, limits.burst
                ),
            ));
        }
        Ok(Pace {
            credit_ms: credit - cost,
            at_ms: now_ms.max(self.at_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: PaceLimits = PaceLimits {
        min_block_time_ms: 1_000,
        burst: 1_000,
    };

    #[test]
    fn repeated_jumps_cannot_outrun_the_clock() {
        // The reported attack: 3,000 votes of +1,000 each within 1.4 s.
        let mut pace = Pace::full(&L, 0);
        let (mut last, mut signed) = (10_i64, 0);
        for i in 0..3_000 {
            let now = i128::from(i) * 1_400 / 3_000;
            if let Ok(next) = pace.admit(&L, last, last + 1_000, now) {
                pace = next;
                last += 1_000;
                signed += 1;
            }
        }
        // One burst (1,000 heights) plus at most 1 height of refill.
        assert_eq!(signed, 1);
        assert_eq!(last, 1_010);
        // Heights one by one at the chain's pace keep signing forever (negative control).
        let mut now = 1_400;
        for _ in 0..5_000 {
            now += 1_000;
            pace = pace.admit(&L, last, last + 1, now).unwrap();
            last += 1;
        }
    }

    #[test]
    fn same_height_costs_nothing_and_outage_catch_up_is_bounded_by_burst() {
        let pace = Pace::full(&L, 0);
        let spent = pace.admit(&L, 5, 1_005, 0).unwrap();
        assert!(spent.admit(&L, 1_005, 1_005, 0).is_ok());
        assert!(spent.admit(&L, 1_005, 1_006, 0).is_err());
        // A day offline refills only up to the burst.
        assert!(spent.admit(&L, 1_005, 2_005, 86_400_000).is_ok());
        assert!(spent.admit(&L, 1_005, 2_006, 86_400_000).is_err());
        // A clock stepping back refills nothing.
        assert!(spent.admit(&L, 1_005, 1_006, -5_000).is_err());
        // Disabled meter.
        let off = PaceLimits {
            min_block_time_ms: 0,
            burst: 0,
        };
        assert!(spent.admit(&off, 1, i64::MAX, 0).is_ok());
    }
}
