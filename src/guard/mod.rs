//! The pipeline every signing request takes, and nothing else (order owned by
//! [`pipeline`], see `docs/design.md`):
//!
//! scope and rate limits -> kill-switch pass -> decode (pass 1) -> policy -> approvals -> sign
//! -> verify and re-decode (pass 2) -> audit commit -> release.
//!
//! Authentication already happened at the transport. Each stage returns a typed refusal; every
//! outcome, refused or signed, is written to the audit log, and a signature is released only
//! after its audit row is durable. Chains plug in as adapters: [`evm_tx`], [`evm_more`],
//! [`bitcoin`], [`signet`], [`cometbft`].

mod bitcoin;
mod bitcoin_keys;
mod cometbft;
mod cometbft_pace;
mod error;
pub mod eth2;
mod evm_more;
mod evm_tx;
pub mod family;
mod people;
mod pipeline;
mod release;
mod signet;

pub use bitcoin_keys::build_wallet;
pub use cometbft::{CometbftSigned, CometbftTarget};
pub use error::{GuardError, PASS2_MISMATCH};
pub use evm_more::{DigestParams, DigestRequest};
pub use evm_tx::{decode_clef_transaction, plain_decoder, TxDecoder};
pub use people::intent_digest;
pub use signet::SignetSigned;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use alloy_consensus::{SignableTransaction, Transaction};
use alloy_primitives::Address;
use keyguard_chain::{KeyId, Rejection};
use keyguard_evm::{EvmPolicy, SignedTx, TxIntent};
use serde_json::Value;

use crate::access::Caller;
use crate::backend::{KeyBackend, KeyInfo};
use crate::config::{patterns_match, Config};
use crate::policy::{Ledger, NonceClaim, Reservation};
use crate::store::{AuditEntry, AuditLog, Store};

/// The policy that governs one key, resolved at start.
#[derive(Debug)]
struct KeyPolicy {
    name: String,
    evm: Option<EvmPolicy>,
    bitcoin: Option<keyguard_bitcoin::BitcoinPolicy>,
    signet: Option<Arc<keyguard_bitcoin::signet_rules::SignetPolicy>>,
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
                signet: p.signet.clone().map(Arc::new),
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
    /// The shared store's nonce rows (PostgreSQL), read before each nonce decision.
    shared_nonces: std::sync::OnceLock<crate::store::NonceReader>,
    /// Reloads signet tips after another writer moved one ([`signet`]).
    signet_tips: std::sync::OnceLock<crate::store::SignetTipReader>,
    controls: people::Controls,
    bitcoin: bitcoin::BitcoinState,
    signet: signet::SignetState,
}

impl Guard {
    /// Builds the guard over a loaded backend and an open audit log.
    pub fn new(config: &Config, backend: Arc<dyn KeyBackend>, audit: AuditLog) -> Self {
        let keys = backend.keys();
        let evm_keys = keys
            .iter()
            .filter_map(|k| Some((keyguard_evm::address_of(&k.public_key)?, k.id.clone())))
            .collect();
        let started = now_ms();
        Guard {
            controls: people::Controls::new(config),
            policies: RwLock::new(Arc::new(resolve_policies(
                config,
                &keys,
                &seed_ids(backend.as_ref()),
            ))),
            bitcoin: bitcoin::BitcoinState::new(config),
            signet: signet::SignetState::default(),
            backend,
            audit,
            evm_keys,
            id_prefix: format!("{started:x}"),
            next_id: AtomicU64::new(1),
            cometbft: None,
            ledger: Ledger::default(),
            shared_nonces: std::sync::OnceLock::new(),
            signet_tips: std::sync::OnceLock::new(),
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
        if let (Some(c), Some(read)) = (&nonce, self.shared_nonces.get()) {
            let (read, k, chain, n) = (read.clone(), key.to_string(), c.chain_id, c.nonce);
            let row = tokio::task::spawn_blocking(move || read(&k, chain, n))
                .await
                .map_err(|e| GuardError::Backend(format!("store task failed: {e}")))?
                .map_err(|e| GuardError::Backend(format!("reading the signed nonce: {e}")))?;
            if let Some(row) = row {
                self.ledger.learn_nonce(&row);
            }
        }
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
        let signed = keyguard_evm::finalize(intent, &signature).map_err(|e| pass2(key, e))?;
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

    /// Rebuilds velocity counters, signed nonces and signet tips from the store (call once at
    /// start).
    pub fn restore_state(&self, store: &Store) -> Result<(), crate::store::StoreError> {
        self.ledger.restore(store, now_ms())?;
        if let Some(reader) = store.nonce_reader() {
            let _ = self.shared_nonces.set(reader);
        }
        let _ = self.signet_tips.set(store.signet_tip_reader()?);
        self.restore_signet(store.signet_tips()?)
    }
}

/// A signature pass 2 rejected: alerted, and its own outcome (not an outage).
pub(super) fn pass2(key: &KeyId, e: impl std::fmt::Display) -> GuardError {
    tracing::error!(key = %key, error = %e, "ALERT: pass 2 rejected a backend signature");
    GuardError::Pass2Mismatch(e.to_string())
}

pub(crate) use keyguard_chain::clock::now_ms;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cometbft;
#[cfg(test)]
mod tests_ledger;
#[cfg(test)]
mod tests_ordering;
#[cfg(test)]
mod tests_pipeline;
#[cfg(test)]
mod tests_signet;
