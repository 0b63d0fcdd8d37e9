//! The Ethereum transaction adapter (`eth_signTransaction`, `account_signTransaction`,
//! `eth_sendTransaction`): decode, key and grant, policy and approval ask; then velocity and
//! nonce reservations, sign, pass 2. The order around it is [`super::pipeline`]'s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use alloy_consensus::SignableTransaction;
use keyguard_chain::{KeyId, Rejection};
use keyguard_evm::{SignedTx, TxDecision, TxIntent};
use serde_json::Value;

use super::pipeline::{Adapter, Ask, Request, Who};
use super::{family, people, Guard, GuardError, KeyPolicy};
use crate::access::Caller;
use crate::policy::Reservation;
use crate::store::{AuditEntry, StateWrite, StoreError};

/// Decodes a transaction request's params; runs inside the pipeline, after the rate limits and
/// under the kill-switch pass (so `eth_sendTransaction`'s upstream fill is limited too).
pub type TxDecoder = Box<
    dyn FnOnce(Value) -> Pin<Box<dyn Future<Output = Result<TxIntent, GuardError>> + Send>> + Send,
>;

/// A decoder that needs nothing but the params.
pub fn plain_decoder(decode: fn(&Value) -> Result<TxIntent, Rejection>) -> TxDecoder {
    Box::new(move |params| Box::pin(async move { decode(&params).map_err(GuardError::from) }))
}

/// Clef's `account_signTransaction` params: `[SendTxArgs, methodSelector?]` (the selector is
/// only a UI hint).
pub fn decode_clef_transaction(p: &Value) -> Result<TxIntent, Rejection> {
    match p.as_array().map(Vec::as_slice) {
        Some([args]) | Some([args, Value::Null | Value::String(_)]) => {
            keyguard_evm::decode_transaction_args(args)
        }
        _ => Err(Rejection::invalid(
            "params",
            "expected [SendTxArgs, methodSelector?]",
        )),
    }
}

struct Decided {
    intent: TxIntent,
    key: KeyId,
    policy: Arc<KeyPolicy>,
    decision: TxDecision,
    now: u64,
}

struct TxAdapter<'g> {
    params: Value,
    decode: Option<TxDecoder>,
    decided: Option<Decided>,
    reservation: Option<Reservation<'g>>,
}

#[async_trait::async_trait]
impl<'g> Adapter<'g> for TxAdapter<'g> {
    type Out = SignedTx;

    async fn decide(
        &mut self,
        guard: &'g Guard,
        who: Who<'_>,
        entry: &mut AuditEntry,
    ) -> Result<Option<Ask>, GuardError> {
        let Who::Client(caller) = who else {
            return Err(GuardError::Backend("EVM requests come from clients".into()));
        };
        let decode = self
            .decode
            .take()
            .ok_or_else(|| GuardError::Backend("request decoded twice".into()))?;
        let intent = decode(std::mem::take(&mut self.params)).await?;
        let chain = format!("eip155:{}", intent.chain_id());
        entry.summary = intent.summary();
        entry.chain = Some(chain.clone());
        Guard::check_chain(caller, &chain)?;
        let (key, policy) = guard.evm_key(caller, intent.from, entry)?;
        let Some(evm) = policy.evm.as_ref() else {
            return Err(Rejection::policy("policy.none", "from", "no Ethereum rules").into());
        };
        let now = super::now_ms();
        let decision = evm.decide(&intent, now)?;
        if let Value::Object(summary) = &mut entry.summary {
            summary.insert("decision".into(), decision.to_json());
        }
        let ask = evm.approval_needed(&intent).map(|rule| Ask {
            key: key.clone(),
            chain: chain.clone(),
            digest: super::intent_digest(&key, &chain, intent.tx.signature_hash().as_slice()),
            summary: entry.summary.clone(),
            field: "value",
            requirement: people::evm_requirement(rule),
        });
        self.decided = Some(Decided {
            intent,
            key,
            policy,
            decision,
            now,
        });
        Ok(ask)
    }

    async fn sign(
        &mut self,
        guard: &'g Guard,
        entry: &mut AuditEntry,
    ) -> Result<SignedTx, GuardError> {
        let d = self
            .decided
            .as_ref()
            .ok_or_else(|| GuardError::Backend("signing before a decision".into()))?;
        let Some(evm) = d.policy.evm.as_ref() else {
            return Err(Rejection::policy("policy.none", "from", "no Ethereum rules").into());
        };
        let (signed, reservation) = guard
            .reserve_and_sign(&d.key, evm, &d.intent, &d.decision, d.now)
            .await?;
        self.reservation = reservation;
        entry.tx_hash = Some(signed.hash.to_string());
        Ok(signed)
    }

    fn writes(&mut self) -> Vec<StateWrite> {
        self.reservation
            .as_ref()
            .map(Reservation::writes)
            .unwrap_or_default()
    }

    fn settle(&mut self, _: &'g Guard, committed: Result<(), &StoreError>) -> Option<GuardError> {
        // Dropping a reservation releases it; committing keeps it as counted history.
        if let (Ok(()), Some(r)) = (committed, self.reservation.take()) {
            r.commit();
        }
        None
    }
}

impl Guard {
    /// `eth_signTransaction`: the whole pipeline for one Ethereum transaction.
    pub async fn sign_evm_transaction(
        &self,
        caller: &Caller,
        chain_hint: u64,
        params: &Value,
    ) -> Result<SignedTx, GuardError> {
        self.sign_evm_tx(
            caller,
            chain_hint,
            "eth_signTransaction",
            params,
            plain_decoder(keyguard_evm::decode_sign_transaction_params),
        )
        .await
    }

    /// Any transaction-signing method: `decode` turns `params` into an intent inside the
    /// pipeline (Clef's envelope, `eth_sendTransaction`'s upstream fill), so a malformed call
    /// is rate limited and audited like any other.
    pub async fn sign_evm_tx(
        &self,
        caller: &Caller,
        chain_hint: u64,
        method: &'static str,
        params: &Value,
        decode: TxDecoder,
    ) -> Result<SignedTx, GuardError> {
        let request = Request {
            who: Who::Client(caller),
            method,
            family: family::family(method, params),
            chain: format!("eip155:{chain_hint}"),
            key_hint: family::evm_from(method, params).and_then(|a| self.evm_keys.get(&a).cloned()),
        };
        let adapter = TxAdapter {
            params: params.clone(),
            decode: Some(decode),
            decided: None,
            reservation: None,
        };
        self.run(request, adapter).await
    }
}
