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

use std::fmt;
use std::str::FromStr;

use alloy_consensus::{Transaction, TypedTransaction};
use alloy_primitives::utils::parse_units;
use alloy_primitives::{Address, U256};
use keyguard_chain::Rejection;
use serde::{Deserialize, Deserializer};

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

impl EvmPolicy {
    /// The approval rule this intent falls under, if any (rule name `evm.require_approval`).
    pub fn approval_needed(&self, intent: &TxIntent) -> Option<&EvmApprovalRule> {
        self.require_approval
            .as_ref()
            .filter(|r| intent.value() > r.above.0)
    }

    /// Checks an intent against every rule; the first failing rule is reported.
    pub fn check(&self, intent: &TxIntent) -> Result<(), Rejection> {
        let chain_id = intent.chain_id();
        if !self.chain_ids.contains(&chain_id) {
            return Err(Rejection::policy(
                "evm.chain_id",
                "chainId",
                format!("chain {chain_id} is not one of {:?}", self.chain_ids),
            ));
        }
        match (intent.to(), &self.to) {
            (None, _) if !self.contract_creation => {
                return Err(Rejection::policy(
                    "evm.contract_creation",
                    "to",
                    "contract creation is not allowed for this key",
                ))
            }
            (Some(to), Destinations::Only(list)) if !list.contains(&to) => {
                return Err(Rejection::policy(
                    "evm.to_allowlist",
                    "to",
                    format!("{to} is not an allowed destination"),
                ))
            }
            _ => {}
        }
        over("evm.max_value", "value", intent.value(), self.max_value)?;
        let tx = &intent.tx;
        let fee_field = if tx.is_dynamic_fee() {
            "maxFeePerGas"
        } else {
            "gasPrice"
        };
        over(
            "evm.max_fee_per_gas",
            fee_field,
            U256::from(tx.max_fee_per_gas()),
            self.max_fee_per_gas,
        )?;
        if let Some(tip) = tx.max_priority_fee_per_gas() {
            over(
                "evm.max_priority_fee_per_gas",
                "maxPriorityFeePerGas",
                U256::from(tip),
                self.max_priority_fee_per_gas,
            )?;
        }
        if let Some(blob_fee) = tx.max_fee_per_blob_gas() {
            over(
                "evm.max_fee_per_blob_gas",
                "maxFeePerBlobGas",
                U256::from(blob_fee),
                self.max_fee_per_blob_gas,
            )?;
        }
        if let TypedTransaction::Eip7702(tx) = tx {
            for (i, auth) in tx.authorization_list.iter().enumerate() {
                if !self.delegations.contains(&auth.address) {
                    return Err(Rejection::policy(
                        "evm.delegation",
                        format!("authorizationList[{i}].address"),
                        format!("delegation to {} is not allowed", auth.address),
                    ));
                }
            }
        }
        Ok(())
    }
}
