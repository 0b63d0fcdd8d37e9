//! The pipeline every signing request takes, and nothing else:
//!
//! authorize key -> decode (pass 1) -> policy -> sign -> verify and re-decode (pass 2)
//! -> audit commit -> release.
//!
//! Authentication already happened at the transport. Each stage returns a typed refusal; every
//! outcome, refused or signed, is written to the audit log, and a signature is released only
//! after its audit row is durable.

mod cometbft;
mod error;

pub use cometbft::{CometbftSigned, CometbftTarget};
pub use error::GuardError;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_primitives::Address;
use keyguard_chain::{KeyId, Rejection};
use keyguard_evm::{EvmPolicy, SignedTx, TxIntent};
use serde_json::Value;

use crate::access::Caller;
use crate::backend::{KeyBackend, KeyInfo};
use crate::config::{patterns_match, Config};
use crate::store::{AuditEntry, AuditLog, Decision};

/// The policy that governs one key, resolved at start.
#[derive(Debug)]
struct KeyPolicy {
    name: String,
    evm: Option<EvmPolicy>,
}

/// The policy of every key, resolved from one configuration.
type PolicySet = HashMap<KeyId, Arc<KeyPolicy>>;

fn resolve_policies(config: &Config, keys: &[KeyInfo]) -> PolicySet {
    keys.iter()
        .filter_map(|key| {
            let p = config
                .policies
                .iter()
                .find(|p| patterns_match(&p.keys, &key.id))?;
            let resolved = KeyPolicy {
                name: p.name.clone(),
                evm: p.evm.clone(),
            };
            Some((key.id.clone(), Arc::new(resolved)))
        })
        .collect()
}

/// Runs signing requests through the pipeline. Shared by every listener.
pub struct Guard {
    backend: Arc<dyn KeyBackend>,
    audit: AuditLog,
    evm_keys: HashMap<Address, KeyId>,
    /// Swapped whole on reload, so a request sees either the old or the new policy set.
    policies: RwLock<Arc<PolicySet>>,
    id_prefix: String,
    next_id: AtomicU64,
    cometbft: Option<Arc<cometbft::CometbftGuard>>,
}

impl Guard {
    /// Builds the guard over a loaded backend and an open audit log.
    pub fn new(config: &Config, backend: Arc<dyn KeyBackend>, audit: AuditLog) -> Self {
        let keys = backend.keys();
        let evm_keys = keys
            .iter()
            .filter_map(|k| Some((keyguard_evm::address_of(&k.public_key)?, k.id.clone())))
            .collect();
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Guard {
            policies: RwLock::new(Arc::new(resolve_policies(config, &keys))),
            backend,
            audit,
            evm_keys,
            id_prefix: format!("{started:x}"),
            next_id: AtomicU64::new(1),
            cometbft: None,
        }
    }

    /// Applies the policies of a new (already validated) configuration to the next request.
    pub fn reload_policies(&self, config: &Config) {
        let set = Arc::new(resolve_policies(config, &self.backend.keys()));
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) = set;
    }

    fn policy_for(&self, key: &KeyId) -> Option<Arc<KeyPolicy>> {
        let set = self.policies.read().unwrap_or_else(|e| e.into_inner());
        set.get(key).cloned()
    }

    /// A request id unique within this process run and ordered by arrival.
    pub fn new_request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id_prefix)
    }

    /// Addresses of the secp256k1 keys this caller may use (answer to `eth_accounts`).
    pub fn evm_accounts(&self, caller: &Caller) -> Vec<Address> {
        let mut list: Vec<_> = self
            .evm_keys
            .iter()
            .filter(|(_, id)| caller.may_use(id))
            .map(|(a, _)| *a)
            .collect();
        list.sort();
        list
    }

    /// `eth_signTransaction`: the whole pipeline for one Ethereum transaction.
    pub async fn sign_evm_transaction(
        &self,
        caller: &Caller,
        chain_hint: u64,
        params: &Value,
    ) -> Result<SignedTx, GuardError> {
        let started = std::time::Instant::now();
        let request_id = self.new_request_id();
        let mut entry = AuditEntry {
            request_id: request_id.clone(),
            client: caller.name.to_string(),
            key_id: None,
            chain: Some(format!("eip155:{chain_hint}")),
            method: "eth_signTransaction".into(),
            summary: Value::Null,
            decision: Decision::Refused,
            rule: None,
            reason: None,
            tx_hash: None,
        };
        let outcome = self.evm_stages(caller, params, &mut entry).await;
        match &outcome {
            Ok(signed) => {
                entry.decision = Decision::Signed;
                entry.tx_hash = Some(signed.hash.to_string());
            }
            Err(e) => {
                entry.decision = e.decision();
                entry.rule = e.rule().map(str::to_owned);
                entry.reason = Some(e.to_string());
            }
        }
        let chain = entry.chain.clone().unwrap_or_default();
        let rule = entry.rule.clone();
        let committed = self.audit.append(entry).await;
        let decision = match (&outcome, &committed) {
            (Ok(_), Ok(_)) => Decision::Signed,
            (Ok(_), Err(_)) => Decision::Failed,
            (Err(e), _) => e.decision(),
        };
        crate::metrics::request(
            &chain,
            "eth_signTransaction",
            decision.as_str(),
            started.elapsed(),
        );
        if let (Decision::Refused, Some(rule)) = (decision, rule) {
            crate::metrics::rejection(&rule);
        }
        match (outcome, committed) {
            (Ok(signed), Ok(_)) => {
                tracing::info!(request_id, client = %caller.name, tx = %signed.hash, "signed");
                Ok(signed)
            }
            (Ok(_), Err(e)) => {
                tracing::error!(request_id, error = %e, "audit commit failed; signature withheld");
                Err(GuardError::Backend(format!(
                    "audit log unavailable, signature withheld: {e}"
                )))
            }
            (Err(refusal), audit) => {
                if let Err(e) = audit {
                    tracing::error!(request_id, error = %e, "audit commit of a refusal failed");
                }
                tracing::info!(request_id, client = %caller.name, %refusal, "refused");
                Err(refusal)
            }
        }
    }

    async fn evm_stages(
        &self,
        caller: &Caller,
        params: &Value,
        entry: &mut AuditEntry,
    ) -> Result<SignedTx, GuardError> {
        let intent: TxIntent = keyguard_evm::decode_sign_transaction_params(params)?;
        entry.summary = intent.summary();
        entry.chain = Some(format!("eip155:{}", intent.chain_id()));

        let key = self.evm_keys.get(&intent.from).ok_or_else(|| {
            Rejection::invalid(
                "from",
                format!("{} is not an account of this signer", intent.from),
            )
        })?;
        entry.key_id = Some(key.to_string());
        if !caller.may_use(key) {
            return Err(GuardError::Unauthorized(format!(
                "key {key} is not granted to client {}",
                caller.name
            )));
        }

        let policy = self.policy_for(key);
        if let (Some(p), Value::Object(summary)) = (&policy, &mut entry.summary) {
            summary.insert("policy".into(), Value::String(p.name.clone()));
        }
        let Some(evm) = policy.as_ref().and_then(|p| p.evm.as_ref()) else {
            return Err(Rejection::policy(
                "policy.none",
                "from",
                format!("no policy with Ethereum rules governs key {key}"),
            )
            .into());
        };
        evm.check(&intent)?;

        let sign_started = std::time::Instant::now();
        let signature = self
            .backend
            .sign(key, &intent.payload())
            .await
            .map_err(|e| GuardError::Backend(e.to_string()))?;
        crate::metrics::sign(self.backend.name(), sign_started.elapsed());
        keyguard_evm::finalize(&intent, &signature).map_err(|e| {
            tracing::error!(key = %key, error = %e, "ALERT: pass 2 rejected a backend signature");
            GuardError::Backend(e.to_string())
        })
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cometbft;
