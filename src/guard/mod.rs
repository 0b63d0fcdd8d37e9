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
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_primitives::Address;
use keyguard_chain::{KeyId, Rejection};
use keyguard_evm::{EvmPolicy, SignedTx, TxIntent};
use serde_json::Value;

use crate::access::Caller;
use crate::backend::KeyBackend;
use crate::config::{patterns_match, Config};
use crate::store::{AuditEntry, AuditLog, Decision};

/// The policy that governs one key, resolved at start.
#[derive(Debug)]
struct KeyPolicy {
    name: String,
    evm: Option<EvmPolicy>,
}

/// Runs signing requests through the pipeline. Shared by every listener.
pub struct Guard {
    backend: Arc<dyn KeyBackend>,
    audit: AuditLog,
    evm_keys: HashMap<Address, KeyId>,
    policies: HashMap<KeyId, Arc<KeyPolicy>>,
    id_prefix: String,
    next_id: AtomicU64,
    cometbft: Option<Arc<cometbft::CometbftGuard>>,
}

impl Guard {
    /// Builds the guard over a loaded backend and an open audit log.
    pub fn new(config: &Config, backend: Arc<dyn KeyBackend>, audit: AuditLog) -> Self {
        let mut evm_keys = HashMap::new();
        let mut policies = HashMap::new();
        for key in backend.keys() {
            if let Some(address) = keyguard_evm::address_of(&key.public_key) {
                evm_keys.insert(address, key.id.clone());
            }
            if let Some(p) = config
                .policies
                .iter()
                .find(|p| patterns_match(&p.keys, &key.id))
            {
                let resolved = KeyPolicy {
                    name: p.name.clone(),
                    evm: p.evm.clone(),
                };
                policies.insert(key.id.clone(), Arc::new(resolved));
            }
        }
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Guard {
            backend,
            audit,
            evm_keys,
            policies,
            id_prefix: format!("{started:x}"),
            next_id: AtomicU64::new(1),
            cometbft: None,
        }
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
        let committed = self.audit.append(entry).await;
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

        let policy = self.policies.get(key);
        if let (Some(p), Value::Object(summary)) = (policy, &mut entry.summary) {
            summary.insert("policy".into(), Value::String(p.name.clone()));
        }
        let Some(evm) = policy.and_then(|p| p.evm.as_ref()) else {
            return Err(Rejection::policy(
                "policy.none",
                "from",
                format!("no policy with Ethereum rules governs key {key}"),
            )
            .into());
        };
        evm.check(&intent)?;

        let signature = self
            .backend
            .sign(key, &intent.payload())
            .await
            .map_err(|e| GuardError::Backend(e.to_string()))?;
        keyguard_evm::finalize(&intent, &signature).map_err(|e| {
            tracing::error!(key = %key, error = %e, "ALERT: pass 2 rejected a backend signature");
            GuardError::Backend(e.to_string())
        })
    }
}

#[cfg(test)]
mod tests;
