//! The pipeline every signing request takes, and nothing else:
//!
//! authorize key -> decode (pass 1) -> policy -> sign -> verify and re-decode (pass 2)
//! -> audit commit -> release.
//!
//! Authentication already happened at the transport. Each stage returns a typed refusal; every
//! outcome, refused or signed, is written to the audit log, and a signature is released only
//! after its audit row is durable.

mod bitcoin;
mod bitcoin_keys;
mod cometbft;
mod cometbft_pace;
mod error;
mod evm_more;
mod people;
mod release;

pub use bitcoin_keys::build_wallet;
pub use cometbft::{CometbftSigned, CometbftTarget};
pub use error::GuardError;
pub use evm_more::DigestRequest;
pub use people::intent_digest;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_consensus::{SignableTransaction, Transaction};
use alloy_primitives::Address;
use keyguard_chain::{KeyId, Rejection};
use keyguard_evm::{EvmPolicy, SignedTx, TxIntent};
use serde_json::Value;

use crate::access::Caller;
use crate::backend::{KeyBackend, KeyInfo};
use crate::config::{patterns_match, Config};
use crate::policy::{Ledger, NonceClaim, Reservation};
use crate::store::{AuditEntry, AuditLog, Decision, Store};

/// The policy that governs one key, resolved at start.
#[derive(Debug)]
struct KeyPolicy {
    name: String,
    evm: Option<EvmPolicy>,
    bitcoin: Option<keyguard_bitcoin::BitcoinPolicy>,
}

/// The policy of every key, resolved from one configuration.
type PolicySet = HashMap<KeyId, Arc<KeyPolicy>>;

fn resolve_policies(config: &Config, keys: &[KeyInfo], seeds: &[KeyId]) -> PolicySet {
    keys.iter()
        .map(|k| &k.id)
        .chain(seeds)
        .filter_map(|id| {
            let p = config
                .policies
                .iter()
                .find(|p| patterns_match(&p.keys, id))?;
            let resolved = KeyPolicy {
                name: p.name.clone(),
                evm: p.evm.clone(),
                bitcoin: p.bitcoin.clone(),
            };
            Some((id.clone(), Arc::new(resolved)))
        })
        .collect()
}

fn seed_ids(backend: &dyn KeyBackend) -> Vec<KeyId> {
    backend.seeds().into_iter().map(|(id, _)| id).collect()
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
    ledger: Ledger,
    controls: people::Controls,
    bitcoin: bitcoin::BitcoinState,
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
            controls: people::Controls::new(config),
            policies: RwLock::new(Arc::new(resolve_policies(
                config,
                &keys,
                &seed_ids(backend.as_ref()),
            ))),
            bitcoin: bitcoin::BitcoinState::new(config),
            backend,
            audit,
            evm_keys,
            id_prefix: format!("{started:x}"),
            next_id: AtomicU64::new(1),
            cometbft: None,
            ledger: Ledger::default(),
        }
    }

    /// Applies the policies of a new (already validated) configuration to the next request.
    pub fn reload_policies(&self, config: &Config) {
        let seeds = seed_ids(self.backend.as_ref());
        let set = Arc::new(resolve_policies(config, &self.backend.keys(), &seeds));
        self.bitcoin.clear_wallets();
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) = set;
        self.reload_limits(config);
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
        let intent = keyguard_evm::decode_sign_transaction_params(params);
        self.sign_evm_intent(caller, chain_hint, "eth_signTransaction", intent)
            .await
    }

    /// The pipeline for an already decoded transaction (`eth_sendTransaction` fills fields
    /// from the node first; Clef's `account_signTransaction` arrives in its own envelope).
    pub async fn sign_evm_intent(
        &self,
        caller: &Caller,
        chain_hint: u64,
        method: &'static str,
        intent: Result<TxIntent, Rejection>,
    ) -> Result<SignedTx, GuardError> {
        let started = std::time::Instant::now();
        let mut entry = self.entry(caller, chain_hint, method);
        // `from` names the key: the kill switch and the per-key rate limit refuse before any
        // policy work.
        let key_hint = intent
            .as_ref()
            .ok()
            .and_then(|i| self.evm_keys.get(&i.from));
        // The approval this request consumed, if any: given back if the signature is withheld.
        let mut consumed = None;
        let (outcome, _pass) = match self.pre_check(caller, method, key_hint).await {
            Ok(pass) => (
                self.evm_stages(caller, intent, &mut entry, &mut consumed)
                    .await,
                Some(pass),
            ),
            Err(e) => {
                entry.key_id = key_hint.map(ToString::to_string);
                (Err(e), None)
            }
        };
        if let Ok((signed, _)) = &outcome {
            entry.tx_hash = Some(signed.hash.to_string());
        }
        self.conclude(caller, method, started, entry, outcome, consumed.as_deref())
            .await
    }

    fn entry(&self, caller: &Caller, chain_hint: u64, method: &'static str) -> AuditEntry {
        AuditEntry {
            request_id: self.new_request_id(),
            client: caller.name.to_string(),
            key_id: None,
            chain: Some(format!("eip155:{chain_hint}")),
            method: method.into(),
            summary: Value::Null,
            decision: Decision::Refused,
            rule: None,
            reason: None,
            tx_hash: None,
        }
    }

    /// Audit (with the request's conflict-guard state in the same commit), metrics, release.
    /// `approval` is the approval the request consumed: if the signature is withheld because
    /// its audit row did not commit, the approvers' decision is given back, so a retry of the
    /// identical request signs without asking them again (nothing was released).
    async fn conclude<T>(
        &self,
        caller: &Caller,
        method: &'static str,
        started: std::time::Instant,
        mut entry: AuditEntry,
        outcome: Result<(T, Option<Reservation<'_>>), GuardError>,
        approval: Option<&str>,
    ) -> Result<T, GuardError> {
        let request_id = entry.request_id.clone();
        let mut state = Vec::new();
        match &outcome {
            Ok((_, reservation)) => {
                entry.decision = Decision::Signed;
                state = reservation
                    .as_ref()
                    .map(Reservation::writes)
                    .unwrap_or_default();
            }
            Err(e) => release::note_refusal(&mut entry, e),
        }
        let chain = entry.chain.clone().unwrap_or_default();
        let rule = entry.rule.clone();
        let committed = self.audit.append_with_state(entry, state).await;
        let refusal = outcome.as_ref().err();
        release::count(
            &chain,
            method,
            refusal,
            &committed,
            rule.as_deref(),
            started,
        );
        match (outcome, committed) {
            (Ok((value, reservation)), Ok(_)) => {
                if let Some(r) = reservation {
                    r.commit();
                }
                tracing::info!(request_id, client = %caller.name, method, "signed");
                Ok(value)
            }
            (outcome, committed) => {
                if let (Ok(_), Some(id)) = (&outcome, approval) {
                    self.restore_approval(id);
                }
                Err(release::unreleased(
                    &request_id,
                    &caller.name,
                    outcome.err(),
                    committed.err(),
                ))
            }
        }
    }

    /// The key behind an EVM address, checked against the caller's grants, and its policy.
    fn evm_key(
        &self,
        caller: &Caller,
        from: Address,
        entry: &mut AuditEntry,
    ) -> Result<(KeyId, Arc<KeyPolicy>), GuardError> {
        let key = self.evm_keys.get(&from).ok_or_else(|| {
            Rejection::invalid("from", format!("{from} is not an account of this signer"))
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
        match policy {
            Some(p) if p.evm.is_some() => Ok((key.clone(), p)),
            _ => Err(Rejection::policy(
                "policy.none",
                "from",
                format!("no policy with Ethereum rules governs key {key}"),
            )
            .into()),
        }
    }

    async fn evm_stages(
        &self,
        caller: &Caller,
        intent: Result<TxIntent, Rejection>,
        entry: &mut AuditEntry,
        consumed: &mut Option<String>,
    ) -> Result<(SignedTx, Option<Reservation<'_>>), GuardError> {
        let intent = intent?;
        entry.summary = intent.summary();
        entry.chain = Some(format!("eip155:{}", intent.chain_id()));
        Self::check_chain(caller, &format!("eip155:{}", intent.chain_id()))?;
        let (key, policy) = self.evm_key(caller, intent.from, entry)?;
        let Some(evm) = policy.evm.as_ref() else {
            return Err(Rejection::policy("policy.none", "from", "no Ethereum rules").into());
        };
        let now = now_ms();
        let decision = evm.decide(&intent, now)?;
        if let Value::Object(summary) = &mut entry.summary {
            summary.insert("decision".into(), decision.to_json());
        }
        if self.controls.kill.is_disabled(Some(key.as_str())) {
            // The hint and the decoded `from` are the same field; this guards future changes.
            return Err(GuardError::KeyDisabled(format!("key {key} is disabled")));
        }

        let chain = format!("eip155:{}", intent.chain_id());
        let requirement = evm.approval_needed(&intent).map(people::evm_requirement);
        let digest = intent_digest(&key, &chain, intent.tx.signature_hash().as_slice());
        let input = people::ApprovalInput {
            key: &key,
            chain: &chain,
            digest,
            summary: &entry.summary,
            field: "value",
        };
        let approval = self.approval_stage(caller, input, requirement).await;
        if let (Value::Object(summary), Err(GuardError::ApprovalRequired { approval_id, .. })) =
            (&mut entry.summary, &approval)
        {
            summary.insert("approval_id".into(), Value::String(approval_id.clone()));
        }
        let approval = approval?;
        if let (Value::Object(summary), Some(id)) = (&mut entry.summary, &approval) {
            summary.insert("approval_id".into(), Value::String(id.clone()));
        }
        let signed = self
            .reserve_and_sign(&key, evm, &intent, &decision, now)
            .await;
        if let (Err(_), Some(id)) = (&signed, &approval) {
            self.restore_approval(id);
        }
        if signed.is_ok() {
            *consumed = approval;
        }
        signed
    }

    /// Conflict guard (velocity and nonce reservations, released on any failure), sign, pass 2.
    async fn reserve_and_sign(
        &self,
        key: &KeyId,
        evm: &EvmPolicy,
        intent: &TxIntent,
        decision: &keyguard_evm::TxDecision,
        now: u64,
    ) -> Result<(SignedTx, Option<Reservation<'_>>), GuardError> {
        let nonce = evm.nonce_rules().map(|n| NonceClaim {
            chain_id: intent.chain_id(),
            nonce: intent.tx.nonce(),
            sighash: intent.tx.signature_hash(),
            max_fee: intent.tx.max_fee_per_gas(),
            tip: intent
                .tx
                .max_priority_fee_per_gas()
                .unwrap_or(intent.tx.max_fee_per_gas()),
            allow_replacement: n.allow_replacement,
            min_bump_percent: n.min_fee_bump_percent,
        });
        let reservation = if decision.debits.is_empty() && nonce.is_none() {
            None
        } else {
            Some(self.ledger.reserve(key, &decision.debits, nonce, now)?)
        };

        let sign_started = std::time::Instant::now();
        let signature = self
            .backend
            .sign(key, &intent.payload())
            .await
            .map_err(|e| GuardError::Backend(e.to_string()))?;
        crate::metrics::sign(self.backend.name(), sign_started.elapsed());
        let signed = keyguard_evm::finalize(intent, &signature).map_err(|e| {
            tracing::error!(key = %key, error = %e, "ALERT: pass 2 rejected a backend signature");
            GuardError::Backend(e.to_string())
        })?;
        Ok((signed, reservation))
    }

    /// The policy's fee caps `(max_fee_per_gas, max_priority_fee_per_gas)` for an account,
    /// used to clamp fees an upstream node suggests.
    pub fn evm_fee_caps(
        &self,
        from: Address,
    ) -> Option<(alloy_primitives::U256, alloy_primitives::U256)> {
        let key = self.evm_keys.get(&from)?;
        let policy = self.policy_for(key)?;
        let evm = policy.evm.as_ref()?;
        Some((evm.max_fee_per_gas.0, evm.max_priority_fee_per_gas.0))
    }

    /// Rebuilds velocity counters and signed nonces from the store (call once at start).
    pub fn restore_state(&self, store: &Store) -> Result<(), crate::store::StoreError> {
        self.ledger.restore(store, now_ms())
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cometbft;
#[cfg(test)]
mod tests_ledger;
