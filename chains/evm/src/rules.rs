//! Per-key Ethereum policy: the first rules, checked on the decoded intent before signing.
//!
//! Each rule has a stable name used in errors, audit rows and metrics:
//!
//! | rule | stops |
//! | --- | --- |
//! | `evm.chain_id` | replaying the key's authority on a chain it was not meant for |
//! | `evm.contract_creation` | deploying arbitrary code from a key meant for transfers |
//! | `evm.to_allowlist` | sending to an attacker's address |
//! | `evm.max_value` | draining the account in one transaction |
//! | `evm.max_fee_per_gas` | burning the balance in fees (gasPrice or maxFeePerGas) |
//! | `evm.max_priority_fee_per_gas` | paying a colluding builder through tips |
//! | `evm.max_fee_per_blob_gas` | burning the balance in blob fees |
//! | `evm.delegation` | EIP-7702: handing the account's code to an unknown contract |
//! | `evm.max_gas` | burning the balance through an absurd gas limit |
//! | `evm.max_calldata_bytes` | oversized payloads (and fees) from a key that posts small data |
//! | `evm.max_blobs` | blob fees from a key that should post few or no blobs |
//! | `evm.time_window` | a stolen credential used outside the operators' hours |
//! | `evm.no_rule` | anything no allow rule covers (deny by default) |
//! | *rule name* | calls outside the functions, arguments and amounts a rule allows |
//! | `evm.token_max_transfer` / `evm.token_max_approval` | draining a token in one call |
//! | `evm.unlimited_approval` | approve-then-drain: `approve(x, 2^256-1)` and permits alike |
//! | `evm.movement_undecodable` / `evm.typed_data_unrecognised` / `evm.approval_unconfigured` / `evm.allowance_window` | movements hidden from the token limits (`docs/evm-movement.md`) |
//! | `evm.velocity` | slow draining through many transactions under the per-tx limit |
//! | `evm.nonce_reuse` | a second, different transaction for a nonce already signed |
//! | `evm.typed_data`, `evm.typed_data_chain_id` | blind permits; cross-chain replay |
//! | `evm.message` | chosen-plaintext: a hash passed off as a message |

use std::fmt;
use std::str::FromStr;

use alloy_consensus::{Transaction, TypedTransaction};
use alloy_primitives::utils::parse_units;
use alloy_primitives::{Address, U256};
use keyguard_chain::Rejection;
use serde::{Deserialize, Deserializer};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::engine::{decide_rules, Eval, RuleOutcome, TxDecision};
use crate::message::{check_message, MessageIntent, MessageRule};
use crate::rulecfg::{
    compile, Compiled, NonceRules, RuleConfig, TimeWindow, TokenLimit, VelocityLimit,
};
use crate::typed::{check_typed, TypedDataRule, TypedDecision, TypedIntent};
use crate::TxIntent;

/// An amount of wei, written in config as `"1 ether"`, `"500 gwei"`, `"21000 wei"` or `"21000"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wei(pub U256);

impl FromStr for Wei {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (number, unit) = match s.split_once(char::is_whitespace) {
            Some((n, u)) => (n.trim(), u.trim().to_ascii_lowercase()),
            None => (s, "wei".to_string()),
        };
        let unit = match unit.as_str() {
            "eth" => "ether",
            u => u,
        };
        if !["wei", "gwei", "ether"].contains(&unit) {
            return Err(format!("unknown unit {unit:?} (use wei, gwei or ether)"));
        }
        let parsed = parse_units(number, unit).map_err(|e| format!("invalid amount {s:?}: {e}"))?;
        if parsed.is_negative() {
            return Err(format!("negative amount {s:?}"));
        }
        Ok(Wei(parsed.get_absolute()))
    }
}

impl<'de> Deserialize<'de> for Wei {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Wei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} wei", self.0)
    }
}

/// Where a key may send: anywhere, or only to listed addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destinations {
    /// Any destination (the dev default).
    Any,
    /// Only these addresses.
    Only(Vec<Address>),
}

impl<'de> Deserialize<'de> for Destinations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<Address>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "any" => Ok(Destinations::Any),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "expected \"any\" or a list of addresses, got {w:?}"
            ))),
            Raw::List(l) => Ok(Destinations::Only(l)),
        }
    }
}

/// The Ethereum rules of one policy. Every limit must be written out: nothing defaults to open.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvmPolicy {
    /// Chain ids the key may sign for.
    pub chain_ids: Vec<u64>,
    /// Allowed destinations.
    pub to: Destinations,
    /// Most wei one transaction may transfer.
    pub max_value: Wei,
    /// Cap on `gasPrice` and `maxFeePerGas`.
    pub max_fee_per_gas: Wei,
    /// Cap on `maxPriorityFeePerGas`.
    pub max_priority_fee_per_gas: Wei,
    /// Cap on `maxFeePerBlobGas`.
    pub max_fee_per_blob_gas: Wei,
    /// Whether a transaction without `to` (a deployment) may be signed.
    #[serde(default)]
    pub contract_creation: bool,
    /// EIP-7702 delegate contracts an authorization may point at; empty refuses all.
    #[serde(default)]
    pub delegations: Vec<Address>,

    // --- the rule engine (all optional; see `rulecfg`) ---
    /// Imported ABIs: name -> JSON file (relative to the config file).
    #[serde(default)]
    pub abis: BTreeMap<String, PathBuf>,
    /// Extra chain profile files (tokens and decimals).
    #[serde(default)]
    pub profiles: Vec<PathBuf>,
    /// Allow/deny rules; when present, a transaction must match an allow rule.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Per-token limits.
    #[serde(default)]
    pub tokens: Vec<TokenLimit>,
    /// Rolling-window limits, counted durably per key.
    #[serde(default)]
    pub velocity: Vec<VelocityLimit>,
    /// When the key may sign at all (UTC).
    pub time_window: Option<TimeWindow>,
    /// Nonce rules; absent means nonces are not tracked.
    pub nonce: Option<NonceRules>,
    /// Cap on the gas limit.
    pub max_gas: Option<u64>,
    /// Cap on calldata length in bytes.
    pub max_calldata_bytes: Option<usize>,
    /// Cap on blobs per transaction.
    pub max_blobs: Option<usize>,
    /// EIP-712 typed-data rules; none means typed data is refused.
    #[serde(default)]
    pub typed_data: Vec<TypedDataRule>,
    /// `eth_sign`/`personal_sign` rules; none means messages are refused.
    #[serde(default)]
    pub messages: Vec<MessageRule>,
    #[serde(skip)]
    compiled: OnceLock<Result<Arc<Compiled>, String>>,
    /// Transfers above an amount need human approval (the daemon runs the approval book).
    #[serde(default)]
    pub require_approval: Option<EvmApprovalRule>,
}

/// `require_approval = { above = "10 ether", approvers = 2, group = "treasury", within = "1h" }`:
/// native value above `above` needs `approvers` distinct members of `group` within `within`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvmApprovalRule {
    /// Native value (wei) strictly above which approval is required.
    pub above: Wei,
    /// Distinct approvals needed.
    pub approvers: u32,
    /// The approvers' group.
    pub group: String,
    /// How long a request stays open, e.g. `"1h"` (parsed by the daemon).
    pub within: String,
}

fn over(rule: &'static str, field: &str, value: U256, cap: Wei) -> Result<(), Rejection> {
    if value > cap.0 {
        Err(Rejection::policy(
            rule,
            field,
            format!("{value} wei is above the limit of {cap}"),
        ))
    } else {
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EvmPolicy {
    /// The approval rule this intent falls under, if any (rule name `evm.require_approval`).
    pub fn approval_needed(&self, intent: &TxIntent) -> Option<&EvmApprovalRule> {
        self.require_approval
            .as_ref()
            .filter(|r| intent.value() > r.above.0)
    }

    /// Compiles the rule engine, reading ABI and profile files relative to `base` (the config
    /// file's directory). Called once at config load; errors name the key.
    pub fn prepare(&self, base: &Path) -> Result<(), String> {
        let r = self
            .compiled
            .get_or_init(|| compile(self, Some(base)).map(Arc::new));
        r.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    pub(crate) fn compiled(&self) -> Result<&Arc<Compiled>, Rejection> {
        self.compiled
            .get_or_init(|| compile(self, None).map(Arc::new))
            .as_ref()
            .map_err(|e| Rejection::policy("policy.config", "policy", e.clone()))
    }

    /// Symbol and decimals of a known token (for displays such as the dry run).
    pub fn token_info(&self, chain_id: u64, token: Address) -> Option<(String, u8)> {
        let c = self.compiled().ok()?;
        c.profiles
            .token(chain_id, token)
            .map(|t| (t.symbol.clone(), t.decimals))
    }

    /// The nonce rules, if nonces are tracked.
    pub fn nonce_rules(&self) -> Option<&NonceRules> {
        self.nonce.as_ref()
    }

    /// Checks an intent against every rule; the first failing rule is reported.
    pub fn check(&self, intent: &TxIntent) -> Result<(), Rejection> {
        self.decide(intent, now_ms()).map(|_| ())
    }

    /// The full decision at `now_ms`: which rule allowed the transaction and what velocity
    /// reservations it needs.
    pub fn decide(&self, intent: &TxIntent, now_ms: u64) -> Result<TxDecision, Rejection> {
        let mut eval = Eval::new(false);
        self.evaluate(intent, now_ms, &mut eval)
    }

    /// The dry run: every rule's outcome, and the decision.
    pub fn explain(
        &self,
        intent: &TxIntent,
        now_ms: u64,
    ) -> (Vec<RuleOutcome>, Result<TxDecision, Rejection>) {
        let mut eval = Eval::new(true);
        let r = self.evaluate(intent, now_ms, &mut eval);
        (eval.trace.unwrap_or_default(), r)
    }

    /// Typed data: returns the allowing rule.
    pub fn check_typed_data(&self, t: &TypedIntent) -> Result<&'static str, Rejection> {
        self.decide_typed_data(t).map(|d| d.allowed_by)
    }

    /// Typed data: the allowing rule and the reservations its movements need.
    pub fn decide_typed_data(&self, t: &TypedIntent) -> Result<TypedDecision, Rejection> {
        check_typed(self.compiled()?, &self.chain_ids, t)
    }

    /// `eth_sign`/`personal_sign`: returns the allowing rule.
    pub fn check_message(&self, m: &MessageIntent) -> Result<&'static str, Rejection> {
        check_message(self.compiled()?, m)
    }

    fn evaluate(
        &self,
        intent: &TxIntent,
        now_ms: u64,
        eval: &mut Eval,
    ) -> Result<TxDecision, Rejection> {
        let compiled = self.compiled()?;
        let chain_id = intent.chain_id();
        eval.check(
            "evm.chain_id",
            if self.chain_ids.contains(&chain_id) {
                Ok(())
            } else {
                Err(Rejection::policy(
                    "evm.chain_id",
                    "chainId",
                    format!("chain {chain_id} is not one of {:?}", self.chain_ids),
                ))
            },
        )?;
        let dest = match (intent.to(), &self.to) {
            (None, _) if !self.contract_creation => Err(Rejection::policy(
                "evm.contract_creation",
                "to",
                "contract creation is not allowed for this key",
            )),
            (Some(to), Destinations::Only(list)) if !list.contains(&to) => Err(Rejection::policy(
                "evm.to_allowlist",
                "to",
                format!("{to} is not an allowed destination"),
            )),
            _ => Ok(()),
        };
        eval.check("evm.to_allowlist", dest)?;
        eval.check(
            "evm.max_value",
            over("evm.max_value", "value", intent.value(), self.max_value),
        )?;
        let tx = &intent.tx;
        let fee_field = if tx.is_dynamic_fee() {
            "maxFeePerGas"
        } else {
            "gasPrice"
        };
        eval.check(
            "evm.max_fee_per_gas",
            over(
                "evm.max_fee_per_gas",
                fee_field,
                U256::from(tx.max_fee_per_gas()),
                self.max_fee_per_gas,
            ),
        )?;
        if let Some(tip) = tx.max_priority_fee_per_gas() {
            eval.check(
                "evm.max_priority_fee_per_gas",
                over(
                    "evm.max_priority_fee_per_gas",
                    "maxPriorityFeePerGas",
                    U256::from(tip),
                    self.max_priority_fee_per_gas,
                ),
            )?;
        }
        if let Some(blob_fee) = tx.max_fee_per_blob_gas() {
            eval.check(
                "evm.max_fee_per_blob_gas",
                over(
                    "evm.max_fee_per_blob_gas",
                    "maxFeePerBlobGas",
                    U256::from(blob_fee),
                    self.max_fee_per_blob_gas,
                ),
            )?;
        }
        if let TypedTransaction::Eip7702(tx) = tx {
            let bad = tx
                .authorization_list
                .iter()
                .enumerate()
                .find(|(_, a)| !self.delegations.contains(&a.address));
            if let Some((i, auth)) = bad {
                eval.check(
                    "evm.delegation",
                    Err(Rejection::policy(
                        "evm.delegation",
                        format!("authorizationList[{i}].address"),
                        format!("delegation to {} is not allowed", auth.address),
                    )),
                )?;
            }
        }
        self.caps(intent, now_ms, eval)?;
        decide_rules(compiled, intent, now_ms, eval)
    }

    fn caps(&self, intent: &TxIntent, now_ms: u64, eval: &mut Eval) -> Result<(), Rejection> {
        let tx = &intent.tx;
        if let Some(max) = self.max_gas {
            let r = match tx.gas_limit() {
                g if g > max => Err(Rejection::policy(
                    "evm.max_gas",
                    "gas",
                    format!("gas limit {g} is above the cap of {max}"),
                )),
                _ => Ok(()),
            };
            eval.check("evm.max_gas", r)?;
        }
        if let Some(max) = self.max_calldata_bytes {
            let r = match tx.input().len() {
                n if n > max => Err(Rejection::policy(
                    "evm.max_calldata_bytes",
                    "input",
                    format!("{n} bytes of calldata is above the cap of {max}"),
                )),
                _ => Ok(()),
            };
            eval.check("evm.max_calldata_bytes", r)?;
        }
        if let Some(max) = self.max_blobs {
            let n = tx.blob_versioned_hashes().map_or(0, <[_]>::len);
            let r = if n > max {
                Err(Rejection::policy(
                    "evm.max_blobs",
                    "blobVersionedHashes",
                    format!("{n} blobs is above the cap of {max}"),
                ))
            } else {
                Ok(())
            };
            eval.check("evm.max_blobs", r)?;
        }
        if let Some(w) = &self.time_window {
            let r = if w.contains(now_ms) {
                Ok(())
            } else {
                Err(Rejection::policy(
                    "evm.time_window",
                    "time",
                    "outside the key's UTC signing window",
                ))
            };
            eval.check("evm.time_window", r)?;
        }
        Ok(())
    }
}
