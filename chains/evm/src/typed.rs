//! EIP-712 typed data (`eth_signTypedData_v4`, `eth_signTypedData`): hashed here from the
//! structure, checked against domain / primary-type rules, and permits read as approvals.
//!
//! A gasless permit is an approval that never touches the chain until the spender uses it: an
//! EIP-2612 `Permit` or a Permit2 `PermitSingle` signed for an attacker drains the token as
//! surely as `approve`. So their amounts and spenders go through the same token rules.

use alloy_dyn_abi::eip712::TypedData;
use alloy_primitives::{Address, B256};
use keyguard_chain::{Rejection, SigningPayload};
use serde::Deserialize;
use serde_json::Value;

use crate::accounting::{self, Grant};
use crate::engine::Debit;
use crate::permits::{looks_like_movement, Shape, UNRECOGNISED};
use crate::profile::{AssetRef, Profiles};
use crate::rulecompile::{intern, resolve_addresses, Compiled, Counted};
use crate::token::TokenMove;
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
    /// The movements of a recognised permit or authorization (see [`crate::permits`]).
    pub approvals: Vec<TokenMove>,
    /// The recognised standard structure, or unknown.
    pub shape: Shape,
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
            "shape": self.shape.name(),
            "approvals": self.approvals.iter().map(TokenMove::to_json).collect::<Vec<_>>(),
        })
    }
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
    let shape = crate::permits::classify(&data);
    Ok(TypedIntent {
        from,
        approvals: shape.moves().to_vec(),
        shape,
        data,
        hash,
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

/// Checks typed data against the policy: the allowing rule, then its movements' accounting.
pub(crate) fn check_typed(
    c: &Compiled,
    policy_chains: &[u64],
    t: &TypedIntent,
) -> Result<TypedDecision, Rejection> {
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
    let constrains_tokens = !c.tokens.is_empty()
        || c.velocity.iter().any(|v| {
            matches!(&v.counted, Counted::Assets(a)
                if a.iter().any(|(_, x)| matches!(x, AssetRef::Token(_))))
        });
    if t.shape == Shape::Unknown
        && (rule.spenders.is_some() || (constrains_tokens && looks_like_movement(&t.data)))
    {
        return Err(Rejection::policy(
            UNRECOGNISED,
            "primaryType",
            format!(
                "rule {} constrains spenders, tokens or amounts, and primaryType {} is not a                  structure keyguard can read (a renamed or altered permit is refused, not passed)",
                rule.name, t.data.primary_type
            ),
        ));
    }
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
    }
    accounting::check_limits(c, chain, &t.approvals)?;
    let grant = Grant {
        may_unlimited: rule.allow_unlimited_approval,
        explicit_approval: rule.allow_unlimited_approval
            || rule.spenders.is_some()
            || rule.primary_types.contains(&t.data.primary_type),
    };
    accounting::check_grants(c, chain, &t.approvals, grant)?;
    let debits = accounting::debits(c, chain, None, &t.approvals)?;
    Ok(TypedDecision {
        allowed_by: rule.name,
        debits,
    })
}

/// Why typed data may be signed, and what it commits the key to.
#[derive(Clone, Debug)]
pub struct TypedDecision {
    /// The typed-data rule that allowed it.
    pub allowed_by: &'static str,
    /// Velocity and allowance-window reservations (EIP-3009 transfers, permits).
    pub debits: Vec<Debit>,
}
