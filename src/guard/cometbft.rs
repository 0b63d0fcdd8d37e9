//! The CometBFT adapter of the pipeline ([`super::pipeline`] runs the kill switch, audit and
//! release around it, as for every chain):
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

use super::pipeline::{Adapter, Ask, Request, Who};
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
    /// Clock meters (`cometbft.height_rate`), read and written under the slot's lock.
    paces: super::cometbft_pace::Paces,
}

impl CometbftGuard {
    pub(crate) fn new(store: WatermarkStore) -> Self {
        CometbftGuard {
            store,
            slots: Mutex::new(HashMap::new()),
            paces: Default::default(),
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

/// The CometBFT adapter of the pipeline. Everything from the watermark read to its commit runs
/// under the (chain, key) lock, which this adapter holds until the pipeline has settled it.
struct ConsensusAdapter {
    target: CometbftTarget,
    chain_id: String,
    request: Option<SignRequest>,
    sign_extension: bool,
    slot: Option<tokio::sync::OwnedMutexGuard<Option<Option<SignedState>>>>,
    /// The stored watermark the decision was made against (the commit's expected value).
    stored: Option<SignedState>,
    verdict: Option<Verdict>,
    /// The watermark that commits with the signed row.
    pending: Option<SignedState>,
    /// The clock meter charged by this signature, kept once its watermark commits.
    pace: Option<keyguard_cometbft::Pace>,
}

#[async_trait::async_trait]
impl<'g> Adapter<'g> for ConsensusAdapter {
    type Out = CometbftSigned;

    async fn decide(
        &mut self,
        guard: &'g Guard,
        _: Who<'_>,
        entry: &mut AuditEntry,
    ) -> Result<Option<Ask>, GuardError> {
        let target = &self.target;
        let request = self
            .request
            .as_ref()
            .ok_or_else(|| GuardError::Backend("request decided twice".into()))?;
        entry.summary = request.summary(&self.chain_id);
        let cg = guard
            .cometbft
            .clone()
            .ok_or_else(|| GuardError::Backend("CometBFT signing is not enabled".into()))?;
        let mut cached = cg.slot(&target.chain_id, &target.key).lock_owned().await;
        // Shared by several instances (PostgreSQL), the row may have moved since this
        // instance last looked: read it for every decision. The commit re-checks it anyway.
        if cached.is_none() || cg.store.is_shared() {
            let first = cached.is_none();
            let (store, c, k) = (
                cg.store.clone(),
                target.chain_id.clone(),
                target.key.to_string(),
            );
            let row = blocking(move || store.load(&c, &k))
                .await?
                .map_err(|e| GuardError::Backend(e.to_string()))?;
            *cached = Some(row.map(|r| r.state));
            if first {
                cg.paces.reset(target, now_ms());
            }
        }
        let stored: Option<SignedState> = cached.clone().flatten();
        self.slot = Some(cached);
        let state = match &stored {
            Some(s) => s.clone(),
            None if target.new_validator => SignedState::default(),
            None => {
                return Err(Rejection::policy(
                    "cometbft.no_state",
                    "chain_id",
                    format!(
                        "no signing state for {} / {}: import priv_validator_state.json \
                         (`keyguard state import`) or set new_validator = true and start_height",
                        target.chain_id, target.key
                    ),
                )
                .into())
            }
        };
        check_request(
            &target.chain_id,
            &self.chain_id,
            &target.limits,
            request,
            &state,
            i128::from(now_ms()),
        )?;
        let pace = cg.paces.admit(target, &state, request, now_ms())?;
        match decide(&state, request, &self.chain_id) {
            Verdict::Refuse(r) => {
                // A watermark repaired (lowered) by two admins is only seen by re-reading.
                let (store, t, s) = (cg.store.clone(), target.clone(), stored.clone());
                let stale = move || super::cometbft_pace::stale(&store, &t, s.as_ref());
                if blocking(stale).await.unwrap_or(true) {
                    if let Some(cached) = self.slot.as_mut() {
                        **cached = None;
                    }
                }
                return Err(r.into());
            }
            verdict => self.verdict = Some(verdict),
        }
        self.pace = Some(pace);
        self.stored = stored;
        // Consensus messages never wait for people.
        Ok(None)
    }

    async fn sign(
        &mut self,
        guard: &'g Guard,
        entry: &mut AuditEntry,
    ) -> Result<CometbftSigned, GuardError> {
        let (Some(request), Some(verdict)) = (self.request.take(), self.verdict.take()) else {
            return Err(GuardError::Backend("signing before a decision".into()));
        };
        let (target, chain_id) = (&self.target, self.chain_id.as_str());
        let (request, signature, reused) = match verdict {
            Verdict::Refuse(r) => return Err(r.into()),
            Verdict::Reuse {
                signature,
                timestamp,
            } => (request.with_timestamp(timestamp), signature, true),
            Verdict::Sign => {
                let sign_bytes = request.sign_bytes(chain_id);
                let sig = guard.sign_and_verify(target, &sign_bytes).await?;
                (request, sig, false)
            }
        };
        // Extensions are not slashable and CometBFT re-signs them on every request.
        let extension_signature = match request.extension_sign_bytes(chain_id) {
            Some(bytes) if self.sign_extension => guard.sign_and_verify(target, &bytes).await?,
            _ => Vec::new(),
        };
        let signed = CometbftSigned {
            request,
            signature,
            extension_signature,
            reused,
        };
        mark_signed(entry, &signed);
        if !reused {
            self.pending = Some(SignedState::after(
                &signed.request,
                signed.request.sign_bytes(chain_id),
                signed.signature.clone(),
                signed.extension_signature.clone(),
            ));
        }
        Ok(signed)
    }

    /// The watermark commits in the audit writer's transaction, with the signed row: one fsync
    /// per vote, shared by group commit with every other connection, and the row can never
    /// exist without the watermark that covers it (nor the other way round). Still under the
    /// lock, so audit rows of one (chain, key) are in watermark order.
    fn writes(&mut self) -> Vec<StateWrite> {
        let Some(next) = &self.pending else {
            return Vec::new();
        };
        vec![StateWrite::Watermark {
            chain_id: self.target.chain_id.clone(),
            key_id: self.target.key.to_string(),
            next: Box::new(next.clone()),
        }]
    }

    fn settle(
        &mut self,
        guard: &'g Guard,
        committed: Result<(), &StoreError>,
    ) -> Option<GuardError> {
        let next = self.pending.take()?;
        let cached = self.slot.as_mut()?;
        match committed {
            Ok(()) => {
                crate::metrics::cometbft_watermark(
                    &self.target.chain_id,
                    self.target.key.as_str(),
                    next.height,
                );
                **cached = Some(Some(next));
                if let (Some(cg), Some(pace)) = (&guard.cometbft, self.pace.take()) {
                    cg.paces.keep(&self.target, pace);
                }
                None
            }
            Err(StoreError::StateConflict(e)) => {
                **cached = None;
                Some(GuardError::Backend(format!(
                    "watermark changed outside this signer, signature withheld: {e}"
                )))
            }
            Err(e) => {
                // Unknown outcome: re-read before the next decision.
                **cached = None;
                Some(GuardError::Backend(format!(
                    "watermark and audit commit failed, signature withheld: {e}"
                )))
            }
        }
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
        let method = match request {
            SignRequest::Vote(_) => "privval.SignVote",
            SignRequest::Proposal(_) => "privval.SignProposal",
        };
        let call = Request {
            who: Who::Validator(&target.name),
            method,
            family: super::family::COMETBFT_CONSENSUS,
            chain: format!("cometbft:{}", target.chain_id),
            key_hint: Some(target.key.clone()),
        };
        let adapter = ConsensusAdapter {
            target: target.clone(),
            chain_id: chain_id.to_owned(),
            request: Some(request),
            sign_extension,
            slot: None,
            stored: None,
            verdict: None,
            pending: None,
            pace: None,
        };
        self.run(call, adapter).await
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
        verify(&target.public_key, sign_bytes, &sig).map_err(|e| super::pass2(&target.key, e))
    }
}
