//! Token awareness: an asset movement (transfer, approval, revocation) read from calldata by
//! [`crate::movement`] or from a permit by [`crate::permits`], whatever rule allowed it.
//!
//! The classic drain is not a transfer but an approval: `approve(attacker, type(uint256).max)`
//! moves nothing today and everything tomorrow. Approvals are therefore counted as movements of
//! their full amount, and unlimited ones are refused unless a rule says otherwise.

use alloy_primitives::{Address, U256};

/// What a token call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveKind {
    /// Tokens leave (`transfer`, `transferFrom`).
    Transfer,
    /// A spender is allowed to take tokens (`approve`, `increaseAllowance`, permits).
    Approval,
    /// An allowance is lowered or withdrawn (`decreaseAllowance`, `approve(x, 0)`,
    /// `setApprovalForAll(x, false)`, DAI `allowed = false`): nothing can move because of it.
    Revoke,
}

/// Default "unlimited" threshold: an approval of at least 2^128 base units exceeds the supply of
/// any real token, so `2^256-2` or Permit2's `2^160-2` is as unlimited as the magic maximum.
pub fn default_unlimited_at() -> U256 {
    U256::from(1) << 128
}

/// A decoded token movement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMove {
    /// The token contract.
    pub token: Address,
    /// Transfer or approval.
    pub kind: MoveKind,
    /// Recipient of a transfer, spender of an approval.
    pub counterparty: Address,
    /// Amount in base units (`U256::MAX` for `setApprovalForAll(op, true)`).
    pub amount: U256,
    /// The calldata argument holding the amount (for error fields).
    pub field: &'static str,
}

impl TokenMove {
    /// An approval at or above `threshold` (see [`default_unlimited_at`]; a token's
    /// `unlimited_at` lowers it): one magic value would let `max - 1` through.
    pub fn is_unlimited_at(&self, threshold: U256) -> bool {
        self.kind == MoveKind::Approval && self.amount >= threshold
    }

    /// [`Self::is_unlimited_at`] the default threshold.
    pub fn is_unlimited(&self) -> bool {
        self.is_unlimited_at(default_unlimited_at())
    }

    /// JSON for audit rows and the dry run.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "token": self.token,
            "kind": match self.kind {
                MoveKind::Transfer => "transfer",
                MoveKind::Approval => "approval",
                MoveKind::Revoke => "revoke",
            },
            "counterparty": self.counterparty,
            "amount": self.amount.to_string(),
            "unlimited": self.is_unlimited(),
        })
    }
}
