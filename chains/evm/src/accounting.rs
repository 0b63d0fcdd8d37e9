//! Movement accounting shared by transactions and typed data: per-token limits, unlimited and
//! unconfigured approvals, the cumulative allowance window and velocity debits.
//!
//! Applied to every movement whatever rule allowed the request (an ABI rule, `calldata = "any"`,
//! a policy without rules, a typed-data rule): the rule decides *whether* a call may be made,
//! the accounting decides *how much* may move.
//!
//! Approvals add up: `approve(x, N)` sets an allowance, but approve, let `x` spend, approve
//! again drains N per round, and `increaseAllowance` or a fresh permit does the same in one
//! step. So every approval to a spender counts against the token's `max_approval` within its
//! `approval_window`, durably, like velocity.

use std::collections::BTreeMap;

use alloy_primitives::{Address, U256};
use keyguard_chain::Rejection;

use crate::engine::Debit;
use crate::profile::AssetRef;
use crate::rulecompile::{Compiled, Counted, TokenRule};
use crate::token::{default_unlimited_at, MoveKind, TokenMove};

/// Default window in which approvals to one spender add up (24 hours).
pub const DEFAULT_APPROVAL_WINDOW_MS: u64 = 86_400_000;

/// Rule name: cumulative approvals to one spender exceed the token's `max_approval`.
pub const ALLOWANCE_WINDOW: &str = "evm.allowance_window";
/// Rule name: an approval of a token with no configured approval limit, and no rule that
/// explicitly allows approvals.
pub const APPROVAL_UNCONFIGURED: &str = "evm.approval_unconfigured";

/// What the allowing rule says about approvals.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Grant {
    /// The rule allows unlimited approvals.
    pub(crate) may_unlimited: bool,
    /// The rule names approvals explicitly (an approval function in `functions`, a permit type
    /// in `primary_types`, a `spenders` list, or `allow_unlimited_approval`).
    pub(crate) explicit_approval: bool,
}

pub(crate) fn token_rule(c: &Compiled, chain: u64, token: Address) -> Option<&TokenRule> {
    c.tokens
        .iter()
        .find(|r| r.token.iter().any(|(ch, a)| *ch == chain && *a == token))
}

fn threshold(rule: Option<&TokenRule>) -> U256 {
    let default = default_unlimited_at();
    rule.and_then(|r| r.unlimited_at)
        .map_or(default, |t| t.min(default))
}

/// Whether `m` is an unlimited approval under the policy's threshold for its token.
pub(crate) fn is_unlimited(c: &Compiled, chain: u64, m: &TokenMove) -> bool {
    m.is_unlimited_at(threshold(token_rule(c, chain, m.token)))
}

/// Limits that hold whatever rule allows the request: `max_transfer`, `max_approval`.
pub(crate) fn check_limits(c: &Compiled, chain: u64, moves: &[TokenMove]) -> Result<(), Rejection> {
    for m in moves {
        let Some(r) = token_rule(c, chain, m.token) else {
            continue;
        };
        match m.kind {
            MoveKind::Transfer => {
                if let Some(max) = r.max_transfer.filter(|max| m.amount > *max) {
                    return Err(Rejection::policy(
                        "evm.token_max_transfer",
                        m.field,
                        format!("{} is above the token's transfer limit of {max}", m.amount),
                    ));
                }
            }
            // An unlimited approval is judged by `check_grants` (a rule may allow it).
            MoveKind::Approval if is_unlimited(c, chain, m) => {}
            MoveKind::Approval => {
                if let Some(max) = r.max_approval.filter(|max| m.amount > *max) {
                    return Err(Rejection::policy(
                        "evm.token_max_approval",
                        m.field,
                        format!("{} is above the token's approval limit of {max}", m.amount),
                    ));
                }
            }
            MoveKind::Revoke => {}
        }
    }
    Ok(())
}

/// Checks that depend on the allowing rule: unlimited approvals, and approvals of tokens
/// without a configured approval limit.
pub(crate) fn check_grants(
    c: &Compiled,
    chain: u64,
    moves: &[TokenMove],
    grant: Grant,
) -> Result<(), Rejection> {
    for m in moves.iter().filter(|m| m.kind == MoveKind::Approval) {
        let r = token_rule(c, chain, m.token);
        if is_unlimited(c, chain, m) {
            if !(grant.may_unlimited || r.is_some_and(|r| r.allow_unlimited_approval)) {
                return Err(Rejection::policy(
                    "evm.unlimited_approval",
                    m.field,
                    format!(
                        "unlimited approval of {} to {} ({} is at or above the unlimited \
                         threshold of {}; no rule allows unlimited approvals)",
                        m.token,
                        m.counterparty,
                        m.amount,
                        threshold(r)
                    ),
                ));
            }
            continue;
        }
        let configured = r.is_some_and(|r| r.max_approval.is_some() || r.allow_unlimited_approval);
        if !configured && !grant.explicit_approval {
            return Err(Rejection::policy(
                APPROVAL_UNCONFIGURED,
                m.field,
                format!(
                    "approval of {} to {}: the token has no max_approval and no rule names \
                     approvals explicitly",
                    m.token, m.counterparty
                ),
            ));
        }
    }
    Ok(())
}

/// What one request commits the key to: a transaction's count and native value (when `tx` is
/// given as `(destination, value)`), and its movements.
pub(crate) fn debits(
    c: &Compiled,
    chain: u64,
    tx: Option<(Option<Address>, U256)>,
    moves: &[TokenMove],
) -> Result<Vec<Debit>, Rejection> {
    let mut out = Vec::new();
    // Checked first (the more specific refusal). Cumulative approvals per (token, spender); unlimited ones a rule allowed have no cap to
    // count against (and were judged by `check_grants`).
    let mut allowances: BTreeMap<String, (U256, U256, u64)> = BTreeMap::new();
    for m in moves.iter().filter(|m| m.kind == MoveKind::Approval) {
        let Some(r) = token_rule(c, chain, m.token) else {
            continue;
        };
        let Some(max) = r.max_approval else {
            continue;
        };
        if is_unlimited(c, chain, m) {
            continue;
        }
        let counter = format!(
            "{ALLOWANCE_WINDOW}:{chain}:{:#x}@{:#x}",
            m.token, m.counterparty
        );
        let e = allowances
            .entry(counter)
            .or_insert((U256::ZERO, max, r.approval_window_ms));
        e.0 = e.0.saturating_add(m.amount);
    }
    for (counter, (amount, max, window_ms)) in allowances {
        if amount > max {
            return Err(Rejection::policy(
                "evm.token_max_approval",
                "input",
                format!(
                    "{amount} approved in one request is above the token's approval limit of {max}"
                ),
            ));
        }
        out.push(Debit {
            rule: ALLOWANCE_WINDOW,
            limit: "max_approval per spender",
            counter,
            amount,
            max,
            window_ms,
        });
    }
    for v in &c.velocity {
        // counter -> (amount, field)
        let mut counted: BTreeMap<String, (U256, &'static str)> = BTreeMap::new();
        let mut add = |dest: Option<Address>, amount: U256, field: &'static str| {
            let counter = match (v.per_destination, dest) {
                (true, Some(d)) => format!("{}@{d:#x}", v.name),
                (true, None) => format!("{}@create", v.name),
                (false, _) => v.name.to_string(),
            };
            let e = counted.entry(counter).or_insert((U256::ZERO, field));
            e.0 = e.0.saturating_add(amount);
        };
        match &v.counted {
            Counted::Transactions => {
                if let Some((to, _)) = tx {
                    add(to, U256::from(1), "nonce");
                }
            }
            Counted::Assets(assets) => {
                for (_, asset) in assets.iter().filter(|(ch, _)| *ch == chain) {
                    match (asset, tx) {
                        (AssetRef::Native, Some((to, value))) if !value.is_zero() => {
                            add(to, value, "value")
                        }
                        (AssetRef::Token(a), _) => {
                            for m in moves
                                .iter()
                                .filter(|m| m.token == *a && m.kind != MoveKind::Revoke)
                            {
                                add(Some(m.counterparty), m.amount, m.field);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        for (counter, (amount, field)) in counted {
            if amount > v.max {
                return Err(Rejection::policy(
                    "evm.velocity",
                    field,
                    format!(
                        "{amount} alone exceeds limit {} of {} per window",
                        v.name, v.max
                    ),
                ));
            }
            out.push(Debit {
                rule: "evm.velocity",
                limit: v.name,
                counter,
                amount,
                max: v.max,
                window_ms: v.window_ms,
            });
        }
    }
    Ok(out)
}
