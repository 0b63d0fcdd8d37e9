//! Per-key Ethereum policy: the first rules, checked on the decoded intent before signing.
//!
//! Each rule has a stable name from the registry [`keyguard_chain::rules`] (one list for
//! errors, audit rows, metrics, the dry run and `docs/rules.md`); semantics per input shape
//! (deny matching, value on ABI rules, fees per transaction type) are in `docs/evm-policy.md`;
//! token movements, permits and approvals in `docs/evm-movement.md`.

use std::fmt;
use std::str::FromStr;

use alloy_consensus::{Transaction, TypedTransaction};
use alloy_primitives::utils::parse_units;
use alloy_primitives::{Address, U256};
use keyguard_chain::rules::evm as rule;
use keyguard_chain::Rejection;
use serde::{Deserialize, Deserializer};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::engine::{decide_rules, Eval, RuleOutcome, TxDecision};
use crate::message::{check_message, MessageIntent, MessageRule};
use crate::rulecfg::{NonceRules, RuleConfig, TimeWindow, TokenLimit, VelocityLimit};
use crate::rulecompile::{compile, Compiled};
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
    /// Cap on the tip: `maxPriorityFeePerGas`, and the whole `gasPrice` of legacy and
    /// EIP-2930 transactions (their gasPrice is both fee cap and tip, as EIP-1559 treats them),
    /// so picking another transaction type cannot escape it.
    pub max_priority_fee_per_gas: Wei,
    /// Cap on `maxFeePerBlobGas`.
    pub max_fee_per_blob_gas: Wei,
    /// EIP-2718 types the key may sign (`[2, 3, 4]` refuses legacy and EIP-2930 outright);
    /// absent means every type keyguard decodes.
    #[serde(default)]
    pub tx_types: Option<Vec<u8>>,
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
    /// When the key may sign at all (the shared window shape: days, hours, utc_offset).
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
/// The shared approval shape ([`keyguard_chain::approval`]) with amounts in wei/ether.
pub type EvmApprovalRule = keyguard_chain::approval::ApprovalRule<Wei>;

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
            .map_err(|e| {
                Rejection::policy(
                    keyguard_chain::rules::common::POLICY_CONFIG,
                    "policy",
                    e.clone(),
                )
            })
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
        self.decide(intent, keyguard_chain::clock::now_ms())
            .map(|_| ())
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
            rule::CHAIN_ID,
            if self.chain_ids.contains(&chain_id) {
                Ok(())
            } else {
                Err(Rejection::policy(
                    rule::CHAIN_ID,
                    "chainId",
                    format!("chain {chain_id} is not one of {:?}", self.chain_ids),
                ))
            },
        )?;
        if let Some(types) = &self.tx_types {
            let t = intent.tx_type();
            let r = if types.contains(&t) {
                Ok(())
            } else {
                Err(Rejection::policy(
                    rule::TX_TYPE,
                    "type",
                    format!("transaction type {t} is not one of the policy's tx_types {types:?}"),
                ))
            };
            eval.check(rule::TX_TYPE, r)?;
        }
        let dest = match (intent.to(), &self.to) {
            (None, _) if !self.contract_creation => Err(Rejection::policy(
                rule::CONTRACT_CREATION,
                "to",
                "contract creation is not allowed for this key",
            )),
            (Some(to), Destinations::Only(list)) if !list.contains(&to) => Err(Rejection::policy(
                rule::TO_ALLOWLIST,
                "to",
                format!("{to} is not an allowed destination"),
            )),
            _ => Ok(()),
        };
        eval.check(rule::TO_ALLOWLIST, dest)?;
        eval.check(
            rule::MAX_VALUE,
            over(rule::MAX_VALUE, "value", intent.value(), self.max_value),
        )?;
        let tx = &intent.tx;
        let fee_field = if tx.is_dynamic_fee() {
            "maxFeePerGas"
        } else {
            "gasPrice"
        };
        eval.check(
            rule::MAX_FEE_PER_GAS,
            over(
                rule::MAX_FEE_PER_GAS,
                fee_field,
                U256::from(tx.max_fee_per_gas()),
                self.max_fee_per_gas,
            ),
        )?;
        // Legacy and EIP-2930 transactions pay their whole gasPrice as the tip bound (EIP-1559
        // sets their priority fee to gasPrice), so the tip cap binds gasPrice too: a tip cap
        // must not be escaped by choosing another transaction type.
        let (tip_field, tip) = match tx.max_priority_fee_per_gas() {
            Some(tip) => ("maxPriorityFeePerGas", tip),
            None => ("gasPrice", tx.max_fee_per_gas()),
        };
        eval.check(
            rule::MAX_PRIORITY_FEE_PER_GAS,
            over(
                rule::MAX_PRIORITY_FEE_PER_GAS,
                tip_field,
                U256::from(tip),
                self.max_priority_fee_per_gas,
            ),
        )?;
        if let Some(blob_fee) = tx.max_fee_per_blob_gas() {
            eval.check(
                rule::MAX_FEE_PER_BLOB_GAS,
                over(
                    rule::MAX_FEE_PER_BLOB_GAS,
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
                    rule::DELEGATION,
                    Err(Rejection::policy(
                        rule::DELEGATION,
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
                    rule::MAX_GAS,
                    "gas",
                    format!("gas limit {g} is above the cap of {max}"),
                )),
                _ => Ok(()),
            };
            eval.check(rule::MAX_GAS, r)?;
        }
        if let Some(max) = self.max_calldata_bytes {
            let r = match tx.input().len() {
                n if n > max => Err(Rejection::policy(
                    rule::MAX_CALLDATA_BYTES,
                    "input",
                    format!("{n} bytes of calldata is above the cap of {max}"),
                )),
                _ => Ok(()),
            };
            eval.check(rule::MAX_CALLDATA_BYTES, r)?;
        }
        if let Some(max) = self.max_blobs {
            let n = tx.blob_versioned_hashes().map_or(0, <[_]>::len);
            let r = if n > max {
                Err(Rejection::policy(
                    rule::MAX_BLOBS,
                    "blobVersionedHashes",
                    format!("{n} blobs is above the cap of {max}"),
                ))
            } else {
                Ok(())
            };
            eval.check(rule::MAX_BLOBS, r)?;
        }
        if let Some(w) = &self.time_window {
            eval.check(rule::TIME_WINDOW, w.check(rule::TIME_WINDOW, now_ms))?;
        }
        Ok(())
    }
}
