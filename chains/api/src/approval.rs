//! One approval-rule shape for every chain:
//!
//! ```toml
//! require_approval = { above = "10 ether", approvers = 2, group = "treasury", within = "1h" }
//! ```
//!
//! `above` is in the chain's own amount syntax (wei/ether, sats/btc); the rest is shared, so
//! the daemon's approval book runs one lifecycle for every chain. `within` uses the shared
//! duration syntax ([`crate::duration`]) and is checked at load by [`ApprovalRule::problems`].

use std::time::Duration;

use serde::Deserialize;

use crate::duration::parse_positive_duration;

/// Requests strictly above `above` need `approvers` distinct members of `group` within
/// `within`. `A` is the chain's amount type.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule<A> {
    /// Amount strictly above which approval is required.
    pub above: A,
    /// Distinct approvals needed.
    pub approvers: u32,
    /// The approvers' group.
    pub group: String,
    /// How long a request stays open, e.g. `"1h"`.
    pub within: String,
}

impl<A> ApprovalRule<A> {
    /// Load-time problems as `(key, reason)`: a rule nobody can satisfy, or that expires at once.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.approvers == 0 {
            out.push(("approvers", "must be at least 1".to_string()));
        }
        if self.group.is_empty() {
            out.push(("group", "must name a group".to_string()));
        }
        if let Err(e) = parse_positive_duration(&self.within) {
            out.push(("within", e));
        }
        out
    }

    /// How long a request stays open; zero if `within` is invalid (refused at load by
    /// [`Self::problems`], so a zero here expires at once rather than never).
    pub fn within(&self) -> Duration {
        parse_positive_duration(&self.within).unwrap_or(Duration::ZERO)
    }
}
