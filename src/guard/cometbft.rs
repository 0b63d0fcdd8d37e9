//! The CometBFT path of the guard:
//!
//! decode (transport + chain crate) -> block-field checks -> watermark decision -> sign ->
//! pass 2 -> watermark + audit row in one commit (fsync) -> release.
//!
//! Everything from the watermark read to its commit runs under ONE async lock per (chain,
//! key), shared by every connection to every sentry: two same-step requests arriving together
//! are decided one after the other, so the second sees the first's watermark (the race that
//! let a threshold signer sign two blocks at one step). The signature is computed inside the
//! lock but leaves the process only after the watermark row is durable: a crash before the
//! commit loses a signature nobody saw; a crash after it leaves a watermark that covers it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyguard_chain::{KeyId, PublicKey, Rejection};
use keyguard_cometbft::verify::{payload, verify};
use keyguard_cometbft::{check_request, decide, BlockLimits, SignRequest, SignedState, Verdict};
use serde_json::Value;

use super::{Guard, GuardError};
use crate::store::{now_ms, AuditEntry, Decision, StateWrite, StoreError, WatermarkStore};

/// One validator connection's view of what it signs for, resolved from the configuration.
#[derive(Clone, Debug)]
pub struct CometbftTarget {
    /// Validator name (audit `client`).
    pub name: String,
    /// The chain this signer serves.
    pub chain_id: String,
    /// The consensus key.
    pub key: KeyId,
    /// Its public key.
    pub public_key: PublicKey,
    /// Block-field limits.
    pub limits: BlockLimits,
    /// Whether a chain with no stored state may start from nothing.
    pub new_validator: bool,
}

/// A signature the guard releases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CometbftSigned {
    /// The request as signed (an earlier timestamp when a signature was reused).
    pub request: SignRequest,
    /// 64-byte signature over the canonical sign bytes.
    pub signature: Vec<u8>,
    /// Signature over the vote extension (non-nil precommits with extension signing).
    pub extension_signature: Vec<u8>,
    /// Whether this is the signature released before (timestamp-only repeat).
    pub reused: bool,
}

/// Cached watermark of one (chain, key); `None` until read from the store.
type Slot = Arc<tokio::sync::Mutex<Option<Option<SignedState>>>>;

/// Per-(chain, key) locks and the durable watermark table.
pub(crate) struct CometbftGuard {
    store: WatermarkStore,
    slots: Mutex<HashMap<(String, KeyId), Slot>>,
}

impl CometbftGuard {
    pub(crate) fn new(store: WatermarkStore) -> Self {
        CometbftGuard {
            store,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, chain_id: &str, key: &KeyId) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry((chain_id.to_owned(), key.clone()))
            .or_default()
            .clone()
    }
}

fn mark_signed(entry: &mut AuditEntry, signed: &CometbftSigned) {
    entry.decision = Decision::Signed;
    entry.tx_hash = Some(hex::encode(&signed.signature));
    if let Value::Object(m) = &mut entry.summary {
        m.insert("reused".into(), signed.reused.into());
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, GuardError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| GuardError::Backend(format!("store task failed: {e}")))
}

impl Guard {
    /// Enables the CometBFT path with the store's watermark table.
    pub fn with_cometbft(mut self, watermarks: WatermarkStore) -> Self {
        self.cometbft = Some(Arc::new(CometbftGuard::new(watermarks)));
        self
    }

    /// Answer to `PubKey`: the key, if the node asks for the chain this signer serves.
    pub fn cometbft_public_key(
        &self,
        target: &CometbftTarget,
        chain_id: &str,
    ) -> Result<PublicKey, GuardError> {
        if chain_id != target.chain_id {
            return Err(Rejection::policy(
                "cometbft.chain_id",
                "chain_id",
                format!(
                    "this signer serves {:?}, not {:?} ({} bytes)",
                    target.chain_id,
                    chain_id.chars().take(64).collect::<String>(),
                    chain_id.len()
                ),
            )
            .into());
        }
        Ok(target.public_key.clone())
    }

    /// Records a request refused before it reached the pipeline (undecodable, `SignBytes`).
    pub async fn audit_cometbft_refusal(
        &self,
        target: &CometbftTarget,
        method: &str,
        refusal: &GuardError,
    ) {
        let entry = AuditEntry {
            request_id: self.new_request_id(),
            client: target.name.clone(),
            key_id: Some(target.key.to_string()),
            chain: Some(format!("cometbft:{}", target.chain_id)),
            method: method.into(),
            summary: Value::Null,
            decision: refusal.decision(),
            rule: refusal.rule().map(str::to_owned),
            reason: Some(refusal.to_string()),
            tx_hash: None,
        };
        if let Err(e) = self.audit.append(entry).await {
            tracing::error!(error = %e, "audit commit of a refusal failed");
        }
    }

    /// SignVote / SignProposal: the whole pipeline for one consensus message.
    pub async fn sign_cometbft(
        &self,
        target: &CometbftTarget,
        chain_id: &str,
        request: SignRequest,
        sign_extension: bool,
    ) -> Result<CometbftSigned, GuardError> {
        let request_id = self.new_request_id();
        let method = match request {
            SignRequest::Vote(_) => "privval.SignVote",
            SignRequest::Proposal(_) => "privval.SignProposal",
        };
        let mut entry = AuditEntry {
            request_id: request_id.clone(),
            client: target.name.clone(),
            key_id: Some(target.key.to_string()),
            chain: Some(format!("cometbft:{}", target.chain_id)),
            method: method.into(),
            summary: request.summary(chain_id),
            decision: Decision::Refused,
            rule: None,
            reason: None,
            tx_hash: None,
        };
        let started = std::time::Instant::now();
        let chain_label = format!("cometbft:{}", target.chain_id);
        let outcome = self
            .cometbft_stages(target, chain_id, request, sign_extension, &entry)
            .await;
        if let Ok((signed, true)) = outcome {
            // The signed row was committed together with the watermark.
            crate::metrics::request(&chain_label, method, "signed", started.elapsed());
            return Ok(signed);
        }
        let outcome = outcome.map(|(signed, _)| signed);
        match &outcome {
            Ok(signed) => mark_signed(&mut entry, signed),
            Err(e) => super::release::note_refusal(&mut entry, e),
        }
        let rule = entry.rule.clone();
        let committed = self.audit.append(entry).await;
        let refusal = outcome.as_ref().err();
        super::release::count(
            &chain_label,
            method,
            refusal,
            &committed,
            rule.as_deref(),
            started,
        );
        match (outcome, committed) {
            (Ok(signed), Ok(_)) => Ok(signed),
            (outcome, committed) => Err(super::release::unreleased(
                &request_id,
                &target.name,
                outcome.err(),
                committed.err(),
            )),
        }
    }

    /// Runs the stages; `Ok((_, true))` when the signed audit row is already committed.
    async fn cometbft_stages(
        &self,
        target: &CometbftTarget,
        chain_id: &str,
        request: SignRequest,
        sign_extension: bool,
        entry: &AuditEntry,
    ) -> Result<(CometbftSigned, bool), GuardError> {
        let cg = self
            .cometbft
            .clone()
            .ok_or_else(|| GuardError::Backend("CometBFT signing is not enabled".into()))?;
        // The kill switch stops consensus signing too: a validator that misses blocks loses
        // little, one that signs with a compromised key can lose its stake.
        if self.controls.kill.is_disabled(Some(target.key.as_str())) {
            return Err(GuardError::KeyDisabled(format!(
                "key {} is disabled",
                target.key
            )));
        }
        let slot = cg.slot(&target.chain_id, &target.key);
        let mut cached = slot.lock().await;

        if cached.is_none() {
            let (store, c, k) = (
                cg.store.clone(),
                target.chain_id.clone(),
                target.key.to_string(),
            );
            let row = blocking(move || store.load(&c, &k))
                .await?
                .map_err(|e| GuardError::Backend(e.to_string()))?;
            *cached = Some(row.map(|r| r.state));
        }
        let stored: Option<SignedState> = cached.clone().flatten();
        let state = match &stored {
            Some(s) => s.clone(),
            None if target.new_validator => SignedState::default(),
            None => {
                return Err(Rejection::policy(
                    "cometbft.no_state",
                    "chain_id",
                    format!(
                        "no signing state for {} / {}: import priv_validator_state.json \
                         (`keyguard state import`) or set new_validator = true",
                        target.chain_id, target.key
                    ),
                )
                .into())
            }
        };

        check_request(
            &target.chain_id,
            chain_id,
            &target.limits,
            &request,
            &state,
            i128::from(now_ms()),
        )?;

        let (request, signature, reused) = match decide(&state, &request, chain_id) {
            Verdict::Refuse(r) => return Err(r.into()),
            Verdict::Reuse {
                signature,
                timestamp,
            } => (request.with_timestamp(timestamp), signature, true),
            Verdict::Sign => {
                let sign_bytes = request.sign_bytes(chain_id);
                let sig = self.sign_and_verify(target, &sign_bytes).await?;
                (request, sig, false)
            }
        };
        // Extensions are not slashable and CometBFT re-signs them on every request.
        let extension_signature = match request.extension_sign_bytes(chain_id) {
            Some(bytes) if sign_extension => self.sign_and_verify(target, &bytes).await?,
            _ => Vec::new(),
        };
        let signed = CometbftSigned {
            request,
            signature,
            extension_signature,
            reused,
        };
        if reused {
            return Ok((signed, false));
        }
        let next = SignedState::after(
            &signed.request,
            signed.request.sign_bytes(chain_id),
            signed.signature.clone(),
            signed.extension_signature.clone(),
        );
        // The watermark commits in the audit writer's transaction, with the signed row: one
        // fsync per vote, shared by group commit with every other connection, and the row can
        // never exist without the watermark that covers it (nor the other way round). Still
        // under the lock, so audit rows of one (chain, key) are in watermark order.
        let mut row = entry.clone();
        mark_signed(&mut row, &signed);
        let write = StateWrite::Watermark {
            chain_id: target.chain_id.clone(),
            key_id: target.key.to_string(),
            expected: stored.map(Box::new),
            next: Box::new(next.clone()),
        };
        match self.audit.append_with_state(row, vec![write]).await {
            Ok(_) => {
                crate::metrics::cometbft_watermark(
                    &target.chain_id,
                    target.key.as_str(),
                    next.height,
                );
                *cached = Some(Some(next));
                Ok((signed, true))
            }
            Err(StoreError::StateConflict(e)) => {
                *cached = None;
                Err(GuardError::Backend(format!(
                    "watermark changed outside this signer, signature withheld: {e}"
                )))
            }
            Err(e) => {
                // Unknown outcome: re-read before the next decision.
                *cached = None;
                Err(GuardError::Backend(format!(
                    "watermark and audit commit failed, signature withheld: {e}"
                )))
            }
        }
    }

    async fn sign_and_verify(
        &self,
        target: &CometbftTarget,
        sign_bytes: &[u8],
    ) -> Result<Vec<u8>, GuardError> {
        let sign_started = std::time::Instant::now();
        let sig = self
            .backend
            .sign(&target.key, &payload(&target.public_key, sign_bytes))
            .await
            .map_err(|e| GuardError::Backend(e.to_string()))?;
        crate::metrics::sign(self.backend.name(), sign_started.elapsed());
        verify(&target.public_key, sign_bytes, &sig).map_err(|e| {
            tracing::error!(key = %target.key, error = %e, "ALERT: pass 2 rejected a backend signature");
            GuardError::Backend(e.to_string())
        })
    }
}
