//! EIP-712 typed data (`eth_signTypedData_v4`, `eth_signTypedData`): hashed here from the
//! structure, checked against domain / primary-type rules, and permits read as approvals.
//!
//! A gasless permit is an approval that never touches the chain until the spender uses it: an
//! EIP-2612 `Permit` or a Permit2 `PermitSingle` signed for an attacker drains the token as
//! surely as `approve`. So their amounts and spenders go through the same token rules.

use alloy_dyn_abi::eip712::TypedData;
use alloy_primitives::{Address, B256, U256};
use keyguard_chain::{Rejection, SigningPayload};
use serde::Deserialize;
use serde_json::Value;

use crate::profile::Profiles;
use crate::rulecfg::{intern, resolve_addresses, Compiled};
use crate::token::{MoveKind, TokenMove};
use crate::wire;

/// One typed-data allow rule; every listed condition must hold.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedDataRule {
    /// Stable name reported with decisions.
    pub name: String,
    /// `domain.name` must equal this.
    pub domain_name: Option<String>,
    /// `domain.version` must equal this.
    pub domain_version: Option<String>,
    /// `domain.chainId` must be one of these (always one of the policy's chains).
    #[serde(default)]
    pub chain_ids: Vec<u64>,
    /// `domain.verifyingContract` must be one of these (addresses or token symbols).
    pub verifying_contracts: Option<Vec<String>>,
    /// `primaryType` must be one of these.
    #[serde(default)]
    pub primary_types: Vec<String>,
    /// For permits: the spender must be one of these.
    pub spenders: Option<Vec<String>>,
    /// For permits: whether an unlimited amount may be signed.
    #[serde(default)]
    pub allow_unlimited_approval: bool,
}

#[derive(Debug)]
pub(crate) struct CompiledTypedRule {
    name: &'static str,
    domain_name: Option<String>,
    domain_version: Option<String>,
    chain_ids: Vec<u64>,
    verifying: Option<Vec<(Option<u64>, Address)>>,
    primary_types: Vec<String>,
    spenders: Option<Vec<(Option<u64>, Address)>>,
    allow_unlimited_approval: bool,
}

impl TypedDataRule {
    pub(crate) fn compile(
        &self,
        profiles: &Profiles,
        chains: &[u64],
        at: &str,
    ) -> Result<CompiledTypedRule, String> {
        let chains_of_rule = if self.chain_ids.is_empty() {
            chains.to_vec()
        } else {
            self.chain_ids.clone()
        };
        let addrs = |l: &Option<Vec<String>>, k: &str| {
            l.as_ref()
                .map(|l| resolve_addresses(l, profiles, &chains_of_rule, &format!("{at}.{k}")))
                .transpose()
        };
        Ok(CompiledTypedRule {
            name: intern(&self.name),
            domain_name: self.domain_name.clone(),
            domain_version: self.domain_version.clone(),
            chain_ids: self.chain_ids.clone(),
            verifying: addrs(&self.verifying_contracts, "verifying_contracts")?,
            primary_types: self.primary_types.clone(),
            spenders: addrs(&self.spenders, "spenders")?,
            allow_unlimited_approval: self.allow_unlimited_approval,
        })
    }
}

/// A decoded typed-data request.
#[derive(Clone, Debug)]
pub struct TypedIntent {
    /// The signing account.
    pub from: Address,
    /// The parsed structure.
    pub data: TypedData,
    /// The EIP-712 signing hash, computed here.
    pub hash: B256,
    /// Permits read as approvals.
    pub approvals: Vec<TokenMove>,
}

impl TypedIntent {
    /// What the backend signs.
    pub fn payload(&self) -> SigningPayload {
        SigningPayload::Secp256k1Prehash(self.hash.0)
    }

    /// Domain chain id, if the domain has one.
    pub fn chain_id(&self) -> Option<u64> {
        self.data
            .domain
            .chain_id
            .and_then(|c| u64::try_from(c).ok())
    }

    /// Secret-free summary for the audit log.
    pub fn summary(&self) -> Value {
        let d = &self.data.domain;
        serde_json::json!({
            "from": self.from,
            "primary_type": self.data.primary_type,
            "domain": {
                "name": d.name, "version": d.version,
                "chain_id": d.chain_id.map(|c| c.to_string()),
                "verifying_contract": d.verifying_contract,
            },
            "hash": self.hash,
            "approvals": self.approvals.iter().map(TokenMove::to_json).collect::<Vec<_>>(),
        })
    }
}

fn json_uint(v: Option<&Value>) -> Option<U256> {
    match v? {
        Value::String(s) => match s.strip_prefix("0x") {
            Some(h) => U256::from_str_radix(h, 16).ok(),
            None => U256::from_str_radix(s, 10).ok(),
        },
        Value::Number(n) => n.as_u64().map(U256::from),
        _ => None,
    }
}

fn json_addr(v: Option<&Value>) -> Option<Address> {
    v?.as_str()?.parse().ok()
}

fn permit_moves(data: &TypedData) -> Result<Vec<TokenMove>, Rejection> {
    let m = &data.message;
    let bad = |f: &str| Rejection::invalid(format!("message.{f}"), "missing or not decodable");
    let approval = |token: Option<Address>, spender: Option<Address>, amount, field| {
        Ok::<_, Rejection>(TokenMove {
            token: token.ok_or_else(|| bad("token"))?,
            kind: MoveKind::Approval,
            counterparty: spender.ok_or_else(|| bad("spender"))?,
            amount: json_uint(amount).ok_or_else(|| bad(field))?,
            field,
        })
    };
    let spender = json_addr(m.get("spender"));
    Ok(match data.primary_type.as_str() {
        // EIP-2612: the token is the verifying contract.
        "Permit" if m.get("value").is_some() => vec![approval(
            data.domain.verifying_contract,
            spender,
            m.get("value"),
            "message.value",
        )?],
        "PermitSingle" => {
            let d = m.get("details").ok_or_else(|| bad("details"))?;
            vec![approval(
                json_addr(d.get("token")),
                spender,
                d.get("amount"),
                "message.details.amount",
            )?]
        }
        "PermitBatch" => m
            .get("details")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("details"))?
            .iter()
            .map(|d| {
                approval(
                    json_addr(d.get("token")),
                    spender,
                    d.get("amount"),
                    "message.details.amount",
                )
            })
            .collect::<Result<_, _>>()?,
        "PermitTransferFrom" | "PermitWitnessTransferFrom" => {
            let p = m.get("permitted").ok_or_else(|| bad("permitted"))?;
            let list = match p {
                Value::Array(a) => a.iter().collect::<Vec<_>>(),
                one => vec![one],
            };
            list.into_iter()
                .map(|p| {
                    approval(
                        json_addr(p.get("token")),
                        spender,
                        p.get("amount"),
                        "message.permitted.amount",
                    )
                })
                .collect::<Result<_, _>>()?
        }
        _ => Vec::new(),
    })
}

/// Decodes `[address, typedData]` (typedData as an object or a JSON string).
pub fn decode_typed_data_params(params: &Value) -> Result<TypedIntent, Rejection> {
    let list = wire::array("params", params)?;
    let [addr, data] = list.as_slice() else {
        return Err(Rejection::invalid(
            "params",
            "expected [address, typedData]",
        ));
    };
    let from = wire::address("address", addr)?;
    decode_typed_data(from, data)
}

/// Parses and hashes typed data for `from`.
pub fn decode_typed_data(from: Address, data: &Value) -> Result<TypedIntent, Rejection> {
    let owned;
    let data = match data {
        Value::String(s) => {
            owned = serde_json::from_str::<Value>(s)
                .map_err(|e| Rejection::invalid("typedData", format!("invalid JSON: {e}")))?;
            &owned
        }
        v => v,
    };
    // Caps first: nothing below may build a type graph or value the caps did not bound.
    crate::typed_bounds::check(data)?;
    let data: TypedData = serde_json::from_value(data.clone())
        .map_err(|e| Rejection::invalid("typedData", e.to_string()))?;
    let (hash, _) = crate::typed_bounds::signing_hash(&data)
        .map_err(|e| Rejection::invalid("typedData", format!("cannot hash: {e}")))?;
    let approvals = permit_moves(&data)?;
    Ok(TypedIntent {
        from,
        data,
        hash,
        approvals,
    })
}

fn in_list(list: &Option<Vec<(Option<u64>, Address)>>, a: Option<Address>, chain: u64) -> bool {
    match (list, a) {
        (None, _) => true,
        (Some(l), Some(a)) => l
            .iter()
            .any(|(c, x)| *x == a && c.is_none_or(|c| c == chain)),
        (Some(_), None) => false,
    }
}

/// Checks typed data against the policy; returns the allowing rule.
pub(crate) fn check_typed(
    c: &Compiled,
    policy_chains: &[u64],
    t: &TypedIntent,
) -> Result<&'static str, Rejection> {
    let Some(chain) = t.chain_id().filter(|c| policy_chains.contains(c)) else {
        return Err(Rejection::policy(
            "evm.typed_data_chain_id",
            "domain.chainId",
            format!(
                "domain chainId {:?} is missing or not one of {policy_chains:?} (a domain \
                 without a chain id can be replayed on any chain)",
                t.data.domain.chain_id.map(|c| c.to_string())
            ),
        ));
    };
    let d = &t.data.domain;
    let rule = c.typed.iter().find(|r| {
        r.domain_name
            .as_deref()
            .is_none_or(|n| d.name.as_deref() == Some(n))
            && r.domain_version
                .as_deref()
                .is_none_or(|v| d.version.as_deref() == Some(v))
            && (r.chain_ids.is_empty() || r.chain_ids.contains(&chain))
            && in_list(&r.verifying, d.verifying_contract, chain)
            && (r.primary_types.is_empty() || r.primary_types.contains(&t.data.primary_type))
    });
    let Some(rule) = rule else {
        return Err(Rejection::policy(
            "evm.typed_data",
            "domain",
            format!(
                "no typed_data rule allows primaryType {} of domain {:?} at {:?} (deny by default)",
                t.data.primary_type, d.name, d.verifying_contract
            ),
        ));
    };
    for m in &t.approvals {
        if !in_list(&rule.spenders, Some(m.counterparty), chain) {
            return Err(Rejection::policy(
                rule.name,
                "message.spender",
                format!(
                    "spender {} is not allowed by rule {}",
                    m.counterparty, rule.name
                ),
            ));
        }
        let token_rule = c
            .tokens
            .iter()
            .find(|r| r.token.iter().any(|(ch, a)| *ch == chain && *a == m.token));
        if m.is_unlimited() {
            if !(rule.allow_unlimited_approval
                || token_rule.is_some_and(|r| r.allow_unlimited_approval))
            {
                return Err(Rejection::policy(
                    "evm.unlimited_approval",
                    m.field,
                    format!("unlimited permit of {} to {}", m.token, m.counterparty),
                ));
            }
        } else if let Some(max) = token_rule.and_then(|r| r.max_approval) {
            if m.amount > max {
                return Err(Rejection::policy(
                    "evm.token_max_approval",
                    m.field,
                    format!("{} is above the token's approval limit of {max}", m.amount),
                ));
            }
        }
    }
    Ok(rule.name)
}
