//! The configurable part of an Ethereum policy, as written: allow/deny rules bound to ABIs,
//! token limits, velocity limits, time windows, nonce rules. Their compiled form and the
//! compiler are in [`crate::rulecompile`].
//!
//! Config text is compiled once at load (ABIs read, symbols resolved, amounts scaled by the
//! token's decimals), so a mistake is a start-up error naming the key, never a silent open door.

use std::collections::BTreeMap;

use serde::Deserialize;

pub use crate::rulecompile::{parse_window, Compiled, MAX_WINDOW_MS};

/// Whether a rule allows or denies what it matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A request this rule matches may be signed (if no deny rule matches).
    #[default]
    Allow,
    /// A request this rule matches is refused, whatever else allows it.
    Deny,
}

/// What calldata a rule without an ABI accepts (allow) or matches (deny).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalldataMode {
    /// Only empty calldata (a plain value transfer). The default of an allow rule without
    /// `abi`; a deny rule matches any calldata unless it says `none`.
    None,
    /// Any calldata (a batch inbox takes opaque bytes).
    Any,
}

pub use keyguard_chain::window::{Hours, TimeWindow, Weekday};

/// A constraint on one decoded argument. Values are written as strings: addresses, decimal
/// or `"1000 USDC"` amounts, `"true"`, `0x` bytes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgConstraint {
    /// The argument equals this value.
    pub eq: Option<String>,
    /// The argument is one of these (an address allowlist, a set of ids).
    pub one_of: Option<Vec<String>>,
    /// A uint argument is at most this.
    pub max: Option<String>,
    /// A uint argument is at least this.
    pub min: Option<String>,
    /// A bytes/string argument is at most this many bytes.
    pub max_len: Option<usize>,
    /// A bytes/string argument is exactly this many bytes.
    pub len: Option<usize>,
}

/// One allow or deny rule for transactions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Stable name, reported with every decision this rule makes.
    pub name: String,
    /// `allow` (default) or `deny`.
    #[serde(default)]
    pub action: Action,
    /// Chains the rule covers; empty means every chain of the policy.
    #[serde(default)]
    pub chain_ids: Vec<u64>,
    /// Destinations (addresses or token symbols of the chain profiles); absent means any.
    pub to: Option<Vec<String>>,
    /// The rule covers contract creation (no `to`).
    #[serde(default)]
    pub create: bool,
    /// ABI the calldata must decode against: `erc20`, `erc721`, or a name from `abis`.
    pub abi: Option<String>,
    /// Functions allowed (names or full signatures); empty means every function of the ABI.
    #[serde(default)]
    pub functions: Vec<String>,
    /// Without `abi`: `none` (plain transfers; an allow rule's default) or `any` (a deny
    /// rule's default: an omitted condition never makes a deny rule miss).
    pub calldata: Option<CalldataMode>,
    /// Constraints on decoded arguments, by argument name.
    #[serde(default)]
    pub args: BTreeMap<String, ArgConstraint>,
    /// Most native value per transaction under this rule. Without it, a rule with `abi`
    /// allows no native value at all (and with it, only to `payable` functions); a rule
    /// without `abi` is bounded by the policy's `max_value`. Not allowed on deny rules.
    pub max_value: Option<String>,
    /// Whether this rule may sign `approve(spender, type(uint256).max)` and the like.
    #[serde(default)]
    pub allow_unlimited_approval: bool,
    /// Days the rule applies on (local to `utc_offset`); the shared window shape.
    #[serde(default)]
    pub days: Vec<Weekday>,
    /// Hours the rule applies in: `[8, 18]` or `"08:00-18:00"` (overnight if start > end).
    pub hours: Option<Hours>,
    /// Fixed offset of `days` and `hours` from UTC (`"+01:00"`); absent means UTC.
    pub utc_offset: Option<String>,
}

/// Per-token limits, applied to every transaction that moves the token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLimit {
    /// Token symbol (from the profiles) or address.
    pub token: String,
    /// Most one `transfer`/`transferFrom` may move.
    pub max_transfer: Option<String>,
    /// Most one `approve`/`increaseAllowance`/permit may grant.
    pub max_approval: Option<String>,
    /// Whether unlimited approvals of this token may be signed.
    #[serde(default)]
    pub allow_unlimited_approval: bool,
    /// Approvals at or above this amount are unlimited (default 2^128 base units; see
    /// `docs/evm-movement.md`).
    pub unlimited_at: Option<String>,
    /// Window in which approvals to one spender add up against `max_approval` (default 24h).
    pub approval_window: Option<String>,
}

/// A rolling-window limit, counted durably per key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VelocityLimit {
    /// Stable name (the counter's identity in the store).
    pub name: String,
    /// `tx` (count transactions), the native symbol, or a token symbol/address.
    pub asset: String,
    /// Most per window, in asset units (`"500"` ETH, `"50"` transactions).
    pub max: String,
    /// Window length: `"30s"`, `"15m"`, `"1h"`, `"24h"`, `"7d"`.
    pub window: String,
    /// Count separately per destination (recipient of a transfer).
    #[serde(default)]
    pub per_destination: bool,
}

/// Nonce rules: a nonce, once signed, belongs to one transaction.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonceRules {
    /// A different transaction with an already-signed nonce may be signed only if it raises
    /// both fee fields by at least `min_fee_bump_percent` (a replacement), never otherwise.
    #[serde(default)]
    pub allow_replacement: bool,
    /// Minimum fee increase of a replacement, percent (geth's pool needs 10).
    #[serde(default = "ten")]
    pub min_fee_bump_percent: u32,
}

fn ten() -> u32 {
    10
}
