//! Per-key Bitcoin policy, checked on the decoded [`SpendIntent`] before any key is used.
//!
//! Every rule has a stable name used in errors, audit rows and metrics, and every refusal names
//! the input (`inputs[i]`) or output (`outputs[o]`) it looked at:
//!
//! | rule | stops |
//! | --- | --- |
//! | `bitcoin.network` | addresses, xpubs or coin types of another network (testnet coins vs real ones) |
//! | `bitcoin.input_amount_proof` | the BIP143 fee attack: a lying `witness_utxo` turns our coins into fee |
//! | `bitcoin.key_derivation` | signing for a key or script we cannot re-derive from a registered account |
//! | `bitcoin.script_type` | signing script types we did not configure (script paths, legacy, p2sh) |
//! | `bitcoin.foreign_input` | co-signing inputs of others (coinjoin/payjoin) unless configured |
//! | `bitcoin.sighash_type` | NONE/SINGLE/ANYONECANPAY: signatures whose outputs can be rewritten later |
//! | `bitcoin.destination_allowlist` | paying an attacker (unverifiable change counts as a destination) |
//! | `bitcoin.fake_change` | an output whose key origin under our fingerprint is a provable lie (see [`crate::change`]) |
//! | `bitcoin.duplicate_input` | one outpoint spent twice (consensus-invalid, counted twice) |
//! | `bitcoin.max_spend_per_tx` | draining the wallet in one transaction (fee counted as spend) |
//! | `bitcoin.max_spend_per_window` | draining it in many (rolling window, kept by the daemon) |
//! | `bitcoin.op_return` | turning the wallet into a data-publishing service / bloating txs |
//! | `bitcoin.dust` | outputs that never relay or cost more to spend than they hold |
//! | `bitcoin.fee_positive` | outputs above inputs, zero fee |
//! | `bitcoin.max_fee`, `bitcoin.max_feerate`, `bitcoin.max_fee_percent` | burning funds in fees |
//! | `bitcoin.tx_version` | non-standard versions (unrelayable, or new semantics we did not review) |
//! | `bitcoin.locktime` | transactions locked far into the future (funds frozen); capped relative to the tip or clock |
//! | `bitcoin.locktime_freeze` | a self-transfer that is not yet minable: pays nothing out (no limit applies) yet claims its coins in the conflict guard |
//! | `bitcoin.sequence` | relative timelocks (BIP68) that freeze the coins |
//! | `bitcoin.rbf` | replaceability against the operator's setting (zero-conf merchants vs fee bumping) |
//! | `bitcoin.time_window` | signing outside the operators' days and hours (see [`crate::schedule`]) |
//! | `bitcoin.require_approval` | large spends without M-of-N human approval (see [`crate::approval`]; enforced by the daemon's approval book) |
//! | `bitcoin.conflicting_spend` | signing an outpoint again in another transaction (a double spend: two payments where one was approved); with `allow_fee_bump`, only the same payments at a higher fee |

use std::fmt;
use std::str::FromStr;

use bitcoin::address::NetworkUnchecked;
use bitcoin::{Address, Amount, Denomination, Network};
use keyguard_chain::Rejection;
use serde::{Deserialize, Deserializer};

use crate::approval::BitcoinApprovalRule;
pub use crate::conflict::SignedSpend;
use crate::schedule::TimeWindow;
use crate::wallet::ScriptKind;
use crate::{OutputClass, SpendIntent};

/// Stable rule names.
pub mod rule {
    #![allow(missing_docs)]
    pub const NETWORK: &str = "bitcoin.network";
    pub const INPUT_AMOUNT_PROOF: &str = "bitcoin.input_amount_proof";
    pub const KEY_DERIVATION: &str = "bitcoin.key_derivation";
    pub const SCRIPT_TYPE: &str = "bitcoin.script_type";
    pub const FOREIGN_INPUT: &str = "bitcoin.foreign_input";
    pub const SIGHASH_TYPE: &str = "bitcoin.sighash_type";
    pub const DESTINATION_ALLOWLIST: &str = "bitcoin.destination_allowlist";
    pub const MAX_SPEND_PER_TX: &str = "bitcoin.max_spend_per_tx";
    pub const MAX_SPEND_PER_WINDOW: &str = "bitcoin.max_spend_per_window";
    pub const OP_RETURN: &str = "bitcoin.op_return";
    pub const DUST: &str = "bitcoin.dust";
    pub const FEE_POSITIVE: &str = "bitcoin.fee_positive";
    pub const MAX_FEE: &str = "bitcoin.max_fee";
    pub const MAX_FEERATE: &str = "bitcoin.max_feerate";
    pub const MAX_FEE_PERCENT: &str = "bitcoin.max_fee_percent";
    pub const TX_VERSION: &str = "bitcoin.tx_version";
    pub const LOCKTIME: &str = "bitcoin.locktime";
    pub const LOCKTIME_FREEZE: &str = "bitcoin.locktime_freeze";
    pub const FAKE_CHANGE: &str = "bitcoin.fake_change";
    pub const DUPLICATE_INPUT: &str = "bitcoin.duplicate_input";
    pub const SEQUENCE: &str = "bitcoin.sequence";
    pub const RBF: &str = "bitcoin.rbf";
    pub const CONFLICTING_SPEND: &str = "bitcoin.conflicting_spend";
    pub const TIME_WINDOW: &str = "bitcoin.time_window";
    pub const REQUIRE_APPROVAL: &str = crate::approval::RULE;
}

/// An amount in config: `"0.5 btc"`, `"1000 sat"` or `"1000"` (satoshis).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sats(pub Amount);

impl FromStr for Sats {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (number, unit) = s.split_once(char::is_whitespace).unwrap_or((s, "sat"));
        let denom = match unit.trim().to_ascii_lowercase().as_str() {
            "btc" => Denomination::Bitcoin,
            "sat" | "sats" => Denomination::Satoshi,
            u => return Err(format!("unknown unit {u:?} (use btc or sat)")),
        };
        Amount::from_str_in(number.trim(), denom)
            .map(Sats)
            .map_err(|e| format!("invalid amount {s:?}: {e}"))
    }
}

impl<'de> Deserialize<'de> for Sats {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Sats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sat", self.0.to_sat())
    }
}

/// Replace-by-fee setting (BIP125 signalling).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rbf {
    /// Either.
    #[default]
    Allow,
    /// Every input must signal (the wallet wants to fee-bump).
    Require,
    /// No input may signal (recipients accept zero-conf).
    Forbid,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    network: Network,
    #[serde(default = "default_accounts")]
    accounts: Vec<u32>,
    #[serde(default = "default_script_types")]
    script_types: Vec<String>,
    destinations: Destinations,
    #[serde(default)]
    allow_foreign_inputs: bool,
    max_spend_per_tx: Sats,
    max_spend_per_window: Option<Sats>,
    #[serde(default = "default_window")]
    window_secs: u64,
    max_fee: Sats,
    max_feerate_sat_vb: u64,
    #[serde(default = "default_fee_percent")]
    max_fee_percent: f64,
    #[serde(default)]
    max_op_return: u32,
    #[serde(default = "default_op_return_bytes")]
    max_op_return_bytes: usize,
    #[serde(default = "default_versions")]
    versions: Vec<i32>,
    max_locktime_height: Option<u32>,
    #[serde(default)]
    allow_time_locktime: bool,
    #[serde(default = "default_blocks_ahead")]
    max_locktime_blocks_ahead: u32,
    #[serde(default = "default_secs_ahead")]
    max_locktime_secs_ahead: u64,
    #[serde(default)]
    allow_locktime_self_transfer: bool,
    #[serde(default)]
    allow_relative_locktime: bool,
    #[serde(default)]
    rbf: Rbf,
    #[serde(default = "default_change_gap")]
    change_gap: u32,
    #[serde(default = "default_max_index")]
    max_index: u32,
    #[serde(default)]
    allow_fee_bump: bool,
    #[serde(default = "default_conflict_window")]
    conflict_window_secs: u64,
    time_window: Option<TimeWindow>,
    require_approval: Option<BitcoinApprovalRule>,
}

fn default_blocks_ahead() -> u32 {
    6
}

fn default_secs_ahead() -> u64 {
    7_200
}

fn default_conflict_window() -> u64 {
    30 * 86_400
}

fn default_accounts() -> Vec<u32> {
    vec![0]
}
fn default_script_types() -> Vec<String> {
    vec!["p2wpkh".into(), "p2tr".into()]
}
fn default_window() -> u64 {
    86_400
}
fn default_fee_percent() -> f64 {
    10.0
}
fn default_op_return_bytes() -> usize {
    83
}
fn default_versions() -> Vec<i32> {
    vec![1, 2]
}
fn default_change_gap() -> u32 {
    1_000
}
fn default_max_index() -> u32 {
    100_000
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Destinations {
    Any(String),
    Only(Vec<Address<NetworkUnchecked>>),
}

/// The Bitcoin rules of one policy (`[policies.bitcoin]`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawPolicy")]
pub struct BitcoinPolicy {
    /// Network of every address, xpub and coin type.
    pub network: Network,
    /// BIP84/BIP86 account numbers keyguard signs for.
    pub accounts: Vec<u32>,
    /// Script types signed.
    pub script_types: Vec<ScriptKind>,
    /// `None`: any destination; otherwise the allowed output scripts.
    pub destinations: Option<Vec<Address>>,
    /// Whether inputs keyguard does not sign may be present.
    pub allow_foreign_inputs: bool,
    /// Largest spend (non-change outputs plus fee) per transaction.
    pub max_spend_per_tx: Amount,
    /// Largest spend within `window_secs`, if set (enforced by the daemon's durable counter).
    pub max_spend_per_window: Option<Amount>,
    /// Length of the rolling window.
    pub window_secs: u64,
    /// Absolute fee cap.
    pub max_fee: Amount,
    /// Fee rate cap in sat/vB (estimated signed size).
    pub max_feerate_sat_vb: u64,
    /// Fee cap as a percentage of the amount paid out.
    pub max_fee_percent: f64,
    /// Number of OP_RETURN outputs allowed.
    pub max_op_return: u32,
    /// Largest OP_RETURN script in bytes.
    pub max_op_return_bytes: usize,
    /// Allowed transaction versions.
    pub versions: Vec<i32>,
    /// Highest absolute height lock; `None`: any height.
    pub max_locktime_height: Option<u32>,
    /// Whether time-based absolute locks are allowed.
    pub allow_time_locktime: bool,
    /// Highest height lock above the chain tip (the node's, else a clock estimate on mainnet).
    pub max_locktime_blocks_ahead: u32,
    /// Highest time lock above the local clock, in seconds (when time locks are allowed).
    pub max_locktime_secs_ahead: u64,
    /// Whether a self-transfer (nothing paid out) may carry a lock that is not yet final.
    pub allow_locktime_self_transfer: bool,
    /// Whether BIP68 relative locks are allowed.
    pub allow_relative_locktime: bool,
    /// Replace-by-fee setting.
    pub rbf: Rbf,
    /// Highest internal index that counts as change.
    pub change_gap: u32,
    /// Highest address index re-derived for inputs.
    pub max_index: u32,
    /// Whether an outpoint already signed may be signed again in a transaction that makes the
    /// same payments at a higher fee (RBF fee bump).
    pub allow_fee_bump: bool,
    /// How long signed outpoints are remembered across restarts (from the audit log).
    pub conflict_window_secs: u64,
    /// Days and hours signing is allowed; `None`: always.
    pub time_window: Option<TimeWindow>,
    /// Spends that need human approval; `None`: none do.
    pub require_approval: Option<BitcoinApprovalRule>,
}

impl TryFrom<RawPolicy> for BitcoinPolicy {
    type Error = String;
    fn try_from(raw: RawPolicy) -> Result<Self, String> {
        let destinations = match raw.destinations {
            Destinations::Any(s) if s == "any" => None,
            Destinations::Any(s) => {
                return Err(format!("destinations: {s:?} is neither \"any\" nor a list"))
            }
            Destinations::Only(list) => Some(
                list.into_iter()
                    .enumerate()
                    .map(|(i, a)| {
                        a.require_network(raw.network).map_err(|e| {
                            format!("destinations[{i}]: not a {} address: {e}", raw.network)
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        let script_types = raw
            .script_types
            .iter()
            .map(|s| match s.as_str() {
                "p2wpkh" => Ok(ScriptKind::P2wpkh),
                "p2tr" => Ok(ScriptKind::P2tr),
                other => Err(format!("script_types: unknown {other:?} (p2wpkh, p2tr)")),
            })
            .collect::<Result<_, _>>()?;
        if !(0.0..=100.0).contains(&raw.max_fee_percent) {
            return Err("max_fee_percent must be within 0..=100".into());
        }
        if raw.accounts.iter().any(|a| *a >= 1 << 31) || raw.window_secs == 0 {
            return Err("accounts must be below 2^31 and window_secs positive".into());
        }
        Ok(BitcoinPolicy {
            network: raw.network,
            accounts: raw.accounts,
            script_types,
            destinations,
            allow_foreign_inputs: raw.allow_foreign_inputs,
            max_spend_per_tx: raw.max_spend_per_tx.0,
            max_spend_per_window: raw.max_spend_per_window.map(|s| s.0),
            window_secs: raw.window_secs,
            max_fee: raw.max_fee.0,
            max_feerate_sat_vb: raw.max_feerate_sat_vb,
            max_fee_percent: raw.max_fee_percent,
            max_op_return: raw.max_op_return,
            max_op_return_bytes: raw.max_op_return_bytes,
            versions: raw.versions,
            max_locktime_height: raw.max_locktime_height,
            allow_time_locktime: raw.allow_time_locktime,
            max_locktime_blocks_ahead: raw.max_locktime_blocks_ahead,
            max_locktime_secs_ahead: raw.max_locktime_secs_ahead,
            allow_locktime_self_transfer: raw.allow_locktime_self_transfer,
            allow_relative_locktime: raw.allow_relative_locktime,
            rbf: raw.rbf,
            change_gap: raw.change_gap,
            max_index: raw.max_index,
            allow_fee_bump: raw.allow_fee_bump,
            conflict_window_secs: raw.conflict_window_secs,
            time_window: raw.time_window,
            require_approval: raw.require_approval,
        })
    }
}

fn refuse(rule: &'static str, field: impl Into<String>, reason: impl Into<String>) -> Rejection {
    Rejection::policy(rule, field, reason)
}

impl BitcoinPolicy {
    /// Every rule that needs no daemon state, in order; the first refusal wins. `now_ms`
    /// (Unix milliseconds) is the clock the time window is judged by, passed in so tests and
    /// dry runs choose the instant.
    pub fn check(&self, intent: &SpendIntent, now_ms: u64) -> Result<(), Rejection> {
        let tip = crate::locktime::estimated_tip(intent.network, now_ms);
        self.check_at(intent, now_ms, tip)
    }

    /// [`BitcoinPolicy::check`] with the chain tip locktimes are judged by (a node's; `None`:
    /// unknown).
    pub fn check_at(
        &self,
        intent: &SpendIntent,
        now_ms: u64,
        tip: Option<crate::locktime::Tip>,
    ) -> Result<(), Rejection> {
        if let Some(w) = &self.time_window {
            w.check(rule::TIME_WINDOW, now_ms)?;
        }
        if intent.network != self.network {
            return Err(refuse(
                rule::NETWORK,
                "network",
                "wallet network differs from policy",
            ));
        }
        self.check_inputs(intent)?;
        self.check_tx(intent, now_ms, tip)?;
        self.check_outputs(intent)?;
        self.check_fee(intent)?;
        let spend = intent.spend();
        if spend > self.max_spend_per_tx {
            return Err(refuse(
                rule::MAX_SPEND_PER_TX,
                spend_field(intent),
                format!(
                    "spend {} sat (fee included) exceeds {} sat",
                    spend.to_sat(),
                    self.max_spend_per_tx.to_sat()
                ),
            ));
        }
        Ok(())
    }

    /// The rolling-window limit, given what was already spent inside the window.
    pub fn check_window(
        &self,
        intent: &SpendIntent,
        spent_in_window: Amount,
    ) -> Result<(), Rejection> {
        let Some(limit) = self.max_spend_per_window else {
            return Ok(());
        };
        let total = spent_in_window
            .checked_add(intent.spend())
            .unwrap_or(Amount::MAX_MONEY);
        if total > limit {
            return Err(refuse(
                rule::MAX_SPEND_PER_WINDOW,
                spend_field(intent),
                format!(
                    "{} sat already spent in the last {} s; this spend of {} sat would exceed {} sat",
                    spent_in_window.to_sat(),
                    self.window_secs,
                    intent.spend().to_sat(),
                    limit.to_sat()
                ),
            ));
        }
        Ok(())
    }

    /// An input already signed in transaction `earlier` (with its payments and fee): refused
    /// unless it is the same transaction, or a fee bump of the same payments when allowed.
    pub fn check_conflict(
        &self,
        intent: &SpendIntent,
        input: usize,
        earlier: &SignedSpend,
    ) -> Result<(), Rejection> {
        if earlier.txid == intent.txid().to_string() {
            return Ok(());
        }
        let bump = self.allow_fee_bump
            && earlier.payments == intent.payments()
            && intent.fee().to_sat() > earlier.fee_sat;
        if bump {
            return Ok(());
        }
        Err(refuse(
            rule::CONFLICTING_SPEND,
            format!("inputs[{input}]"),
            format!(
                "outpoint already signed in transaction {}{}",
                earlier.txid,
                if self.allow_fee_bump {
                    " with other payments or a fee not lower"
                } else {
                    ""
                }
            ),
        ))
    }

    /// The approval rule `intent` falls under, if any (the daemon holds it for approvers).
    pub fn approval_needed(&self, intent: &SpendIntent) -> Option<&BitcoinApprovalRule> {
        self.require_approval
            .as_ref()
            .filter(|r| crate::approval::applies(r, intent))
    }

    fn check_inputs(&self, intent: &SpendIntent) -> Result<(), Rejection> {
        if intent.jobs.is_empty() {
            return Err(Rejection::invalid(
                "psbt",
                "no input re-derives from this key's accounts",
            ));
        }
        for (i, input) in intent.inputs.iter().enumerate() {
            match input.ours {
                Some(kind) if !self.script_types.contains(&kind) => {
                    return Err(refuse(
                        rule::SCRIPT_TYPE,
                        format!("inputs[{i}]"),
                        format!("{kind:?} inputs are not enabled"),
                    ));
                }
                // Finalized or not: a foreign final witness is still someone else's coin in our
                // transaction (and its witness size moves our fee rate).
                None if !self.allow_foreign_inputs => {
                    return Err(refuse(
                        rule::FOREIGN_INPUT,
                        format!("inputs[{i}]"),
                        if input.already_final {
                            "input is not ours (finalized by another signer) and foreign inputs are not allowed"
                        } else {
                            "input is not ours and foreign inputs are not allowed"
                        },
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_tx(
        &self,
        intent: &SpendIntent,
        now_ms: u64,
        tip: Option<crate::locktime::Tip>,
    ) -> Result<(), Rejection> {
        let tx = &intent.psbt.unsigned_tx;
        if !self.versions.contains(&tx.version.0) {
            return Err(refuse(
                rule::TX_VERSION,
                "tx.version",
                format!("version {} not in {:?}", tx.version.0, self.versions),
            ));
        }
        self.check_locktime(intent, tip, now_ms)?;
        for (i, input) in tx.input.iter().enumerate() {
            let field = format!("inputs[{i}].sequence");
            if tx.version.0 >= 2
                && input.sequence.is_relative_lock_time()
                && !self.allow_relative_locktime
            {
                return Err(refuse(
                    rule::SEQUENCE,
                    field,
                    format!("{:#x} sets a BIP68 relative lock", input.sequence.0),
                ));
            }
            let signals = input.sequence.is_rbf();
            match self.rbf {
                Rbf::Require if !signals => {
                    return Err(refuse(rule::RBF, field, "replace-by-fee is required"))
                }
                Rbf::Forbid if signals => {
                    return Err(refuse(rule::RBF, field, "replace-by-fee is forbidden"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_outputs(&self, intent: &SpendIntent) -> Result<(), Rejection> {
        let mut op_returns = 0u32;
        for (o, out) in intent.outputs.iter().enumerate() {
            let field = format!("outputs[{o}]");
            match &out.class {
                OutputClass::OpReturn { data_len } => {
                    op_returns += 1;
                    if op_returns > self.max_op_return || *data_len > self.max_op_return_bytes {
                        return Err(refuse(
                            rule::OP_RETURN,
                            field,
                            format!(
                                "at most {} OP_RETURN outputs of {} bytes",
                                self.max_op_return, self.max_op_return_bytes
                            ),
                        ));
                    }
                    if out.amount > Amount::ZERO {
                        return Err(refuse(
                            rule::OP_RETURN,
                            field,
                            "OP_RETURN output burns a non-zero amount",
                        ));
                    }
                    continue;
                }
                OutputClass::Change { .. } => {}
                OutputClass::Spend { .. } => {
                    if let Some(allowed) = &self.destinations {
                        if !allowed
                            .iter()
                            .any(|a| a.script_pubkey() == out.script_pubkey)
                        {
                            let shown = Address::from_script(&out.script_pubkey, self.network)
                                .map_or_else(
                                    |_| format!("script {}", out.script_pubkey),
                                    |a| a.to_string(),
                                );
                            return Err(refuse(
                                rule::DESTINATION_ALLOWLIST,
                                field,
                                format!("{shown} is not an allowed destination"),
                            ));
                        }
                    }
                }
            }
            let dust = out.script_pubkey.minimal_non_dust();
            if out.amount < dust {
                return Err(refuse(
                    rule::DUST,
                    field,
                    format!(
                        "{} sat is below the dust limit of {} sat",
                        out.amount.to_sat(),
                        dust.to_sat()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_fee(&self, intent: &SpendIntent) -> Result<(), Rejection> {
        let fee = intent.fee_checked()?;
        if fee > self.max_fee {
            return Err(refuse(
                rule::MAX_FEE,
                "fee",
                format!("{} sat exceeds {} sat", fee.to_sat(), self.max_fee.to_sat()),
            ));
        }
        let vsize = intent.vsize().max(1);
        let rate = fee.to_sat().div_ceil(vsize);
        if rate > self.max_feerate_sat_vb {
            return Err(refuse(
                rule::MAX_FEERATE,
                "fee",
                format!("{rate} sat/vB exceeds {} sat/vB", self.max_feerate_sat_vb),
            ));
        }
        // Of what is paid out; a consolidation pays nothing out, so measure against its inputs.
        let paid = intent.spend().to_sat().saturating_sub(fee.to_sat());
        let base = if paid > 0 {
            paid
        } else {
            intent.inputs.iter().map(|i| i.amount.to_sat()).sum()
        };
        let percent = fee.to_sat() as f64 * 100.0 / base.max(1) as f64;
        if percent > self.max_fee_percent {
            return Err(refuse(
                rule::MAX_FEE_PERCENT,
                "fee",
                format!(
                    "{percent:.2}% of {base} sat exceeds {}%",
                    self.max_fee_percent
                ),
            ));
        }
        Ok(())
    }
}

fn spend_field(intent: &SpendIntent) -> String {
    let list: Vec<String> = intent
        .outputs
        .iter()
        .enumerate()
        .filter(|(_, o)| !matches!(o.class, OutputClass::Change { .. }))
        .map(|(o, _)| o.to_string())
        .collect();
    format!("outputs[{}]", list.join(","))
}
