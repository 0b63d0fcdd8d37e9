//! Block-field rules, applied before the watermark: each refuses with a stable rule name.
//!
//! They bound what a compromised node can make the key sign even when the request would not
//! be a double sign: a vote far in the future (a height jump) pre-commits the key to heights
//! the honest chain has not reached, a skewed timestamp distorts BFT time, and a POL round
//! that is not below the round is not a valid proposal.

use keyguard_chain::Rejection;

use crate::pace::PaceLimits;
use crate::types::{SignRequest, VoteType};
use crate::watermark::SignedState;

/// Per-chain limits from the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockLimits {
    /// Refuse a height more than this far above the last signed height.
    pub max_height_jump: Option<u64>,
    /// Refuse a timestamp further than this from the local clock, in milliseconds.
    pub max_timestamp_drift_ms: Option<u64>,
    /// Stop signing above this height (an upgrade height).
    pub max_height: Option<i64>,
    /// With no signing state: the height the validator starts at; the first signature may be
    /// at most one burst ([`BlockLimits::pace`]) above it.
    pub start_height: Option<i64>,
    /// Shortest time one height can take (`None`: the default; `Some(0)`: no clock meter).
    pub min_block_time_ms: Option<u64>,
}

impl BlockLimits {
    /// The clock meter's settings: burst is `max_height_jump` (or a default).
    pub fn pace(&self) -> PaceLimits {
        PaceLimits {
            min_block_time_ms: self
                .min_block_time_ms
                .unwrap_or(crate::pace::DEFAULT_MIN_BLOCK_TIME_MS),
            burst: self.max_height_jump.unwrap_or(crate::pace::DEFAULT_BURST),
        }
    }
}

/// Checks a sign request's fields against the chain's limits and the last signed state.
pub fn check_request(
    expected_chain_id: &str,
    request_chain_id: &str,
    limits: &BlockLimits,
    request: &SignRequest,
    last: &SignedState,
    now_unix_ms: i128,
) -> Result<(), Rejection> {
    if request_chain_id != expected_chain_id {
        return Err(Rejection::policy(
            "cometbft.chain_id",
            "chain_id",
            // The node's value is shown cut (it may be up to a 1 MB message, and the text goes
            // to the log, the audit row and back to the node).
            format!(
                "this signer serves {expected_chain_id:?}, not {:?} ({} bytes)",
                request_chain_id.chars().take(64).collect::<String>(),
                request_chain_id.len()
            ),
        ));
    }
    let (height, round, _) = request.hrs();
    if height < 1 {
        return Err(Rejection::invalid("height", format!("{height} is below 1")));
    }
    if round < 0 {
        return Err(Rejection::invalid("round", format!("{round} is negative")));
    }
    let bid = request.block_id();
    if !bid.is_nil() && !bid.is_complete() {
        return Err(Rejection::invalid(
            "block_id",
            "neither nil nor complete (32-byte hash, parts, 32-byte parts hash)",
        ));
    }
    match request {
        SignRequest::Vote(v) => {
            let may_extend = v.vote_type == VoteType::Precommit && !v.block_id.is_nil();
            if !may_extend && !v.extension.is_empty() {
                return Err(Rejection::invalid(
                    "vote.extension",
                    "only non-nil precommits carry an extension",
                ));
            }
        }
        SignRequest::Proposal(p) => {
            if p.block_id.is_nil() {
                return Err(Rejection::invalid(
                    "proposal.block_id",
                    "a proposal names a block",
                ));
            }
            if !(p.pol_round == -1 || (0..p.round).contains(&p.pol_round)) {
                return Err(Rejection::policy(
                    "cometbft.pol_round",
                    "proposal.pol_round",
                    format!("{} is neither -1 nor below round {}", p.pol_round, p.round),
                ));
            }
        }
    }
    if let Some(max) = limits.max_height {
        if height > max {
            return Err(Rejection::policy(
                "cometbft.max_height",
                "height",
                format!("{height} is above the configured stop height {max}"),
            ));
        }
    }
    if last.height == 0 {
        first_height(limits, height)?;
    }
    if let Some(jump) = limits.max_height_jump {
        // A brand-new validator has no last height to jump from.
        let over = i128::from(height) - i128::from(last.height);
        if last.height > 0 && over > i128::from(jump) {
            return Err(Rejection::policy(
                "cometbft.max_height_jump",
                "height",
                format!(
                    "{height} is {over} above the last signed height {}, limit {jump}",
                    last.height
                ),
            ));
        }
    }
    if let Some(drift) = limits.max_timestamp_drift_ms {
        let ts = request.timestamp().unix_millis();
        if (ts - now_unix_ms).abs() > i128::from(drift) {
            return Err(Rejection::policy(
                "cometbft.timestamp_drift",
                "timestamp",
                format!(
                    "{} ms from the local clock, limit {drift} ms",
                    ts - now_unix_ms
                ),
            ));
        }
    }
    Ok(())
}

/// The first signature of a key with no state (`new_validator`, or an imported height-0 state):
/// nothing behind it bounds its height, and one vote at `i64::MAX` would turn every real vote
/// into a regression. A configured `start_height` (plus one burst) or `max_height` bounds it;
/// with neither it is refused.
fn first_height(limits: &BlockLimits, height: i64) -> Result<(), Rejection> {
    let refuse = |reason: String| Err(Rejection::policy("cometbft.first_height", "height", reason));
    match (limits.start_height, limits.max_height) {
        (Some(start), _) => {
            let burst = limits.pace().burst;
            let bound = i128::from(start) + i128::from(burst);
            if i128::from(height) > bound {
                return refuse(format!(
                    "first signature at {height} is more than {burst} above start_height {start}"
                ));
            }
            Ok(())
        }
        // `max_height` was checked above.
        (None, Some(_)) => Ok(()),
        (None, None) => refuse(format!(
            "nothing bounds a first signature at {height}: set start_height (or max_height), \
             or import the validator's state"
        )),
    }
}
