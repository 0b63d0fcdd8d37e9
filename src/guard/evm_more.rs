//! The other Ethereum signatures, as a pipeline adapter: EIP-712 typed data and EIP-191
//! messages. Decode, key and grant, policy; sign the digest computed here, recover (pass 2).
//! The order around it (limits, kill switch, audit, release) is [`super::pipeline`]'s.

use alloy_primitives::{Address, B256};
use keyguard_chain::{KeyId, Rejection, SigningPayload};
use serde_json::Value;

use super::pipeline::{Adapter, Ask, Request, Who};
use super::{family, Guard, GuardError};
use crate::access::Caller;
use crate::policy::Reservation;
use crate::store::{AuditEntry, StateWrite, StoreError};

/// What kind of digest is being signed.
pub enum DigestRequest {
    /// `eth_signTypedData_v4` / `eth_signTypedData` / Clef `data/typed`.
    Typed(Result<Box<keyguard_evm::TypedIntent>, Rejection>),
    /// `eth_sign` / `personal_sign` / Clef `text/plain`.
    Message(Result<keyguard_evm::MessageIntent, Rejection>),
}

enum Decoded {
    Typed(Box<keyguard_evm::TypedIntent>),
    Message(keyguard_evm::MessageIntent),
}

/// The parameters of a digest call: parsed already (tests, internal callers) or still the raw
/// JSON text the transport received, parsed only under the decode gate so that many large
/// pipelined requests hold their bytes, not their (several times larger) parsed trees.
pub enum DigestParams {
    Parsed(Value),
    Raw(String),
}

impl DigestParams {
    /// The short positional parameters (content type, address) the rate-limit family and the
    /// key hint need, without parsing the large ones: elements over 512 bytes become null.
    fn skeleton(&self) -> Value {
        match self {
            DigestParams::Parsed(v) => v.clone(),
            DigestParams::Raw(raw) => {
                let Ok(parts) = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(raw)
                else {
                    return Value::Null;
                };
                let short = |p: &serde_json::value::RawValue| match p.get().len() {
                    0..=512 => serde_json::from_str(p.get()).unwrap_or(Value::Null),
                    _ => Value::Null,
                };
                Value::Array(parts.into_iter().map(short).collect())
            }
        }
    }

    fn parse(self) -> Result<Value, Rejection> {
        match self {
            DigestParams::Parsed(v) => Ok(v),
            DigestParams::Raw(raw) => {
                serde_json::from_str(&raw).map_err(|e| Rejection::invalid("params", e.to_string()))
            }
        }
    }
}

struct DigestAdapter<'g> {
    params: Option<DigestParams>,
    decode: fn(&Value) -> DigestRequest,
    /// Key, signer address and digest once decided.
    decided: Option<(KeyId, Address, B256)>,
    /// Velocity debits the policy charged (permits and transfer authorizations count like
    /// transactions), reserved before signing and written with the audit row.
    debits: Vec<keyguard_evm::Debit>,
    reservation: Option<Reservation<'g>>,
}

#[async_trait::async_trait]
impl<'g> Adapter<'g> for DigestAdapter<'g> {
    type Out = [u8; 65];

    async fn decide(
        &mut self,
        guard: &'g Guard,
        who: Who<'_>,
        entry: &mut AuditEntry,
    ) -> Result<Option<Ask>, GuardError> {
        let Who::Client(caller) = who else {
            return Err(GuardError::Backend("EVM requests come from clients".into()));
        };
        // Parsing and hashing typed data is the costly part of these methods: it runs under
        // the decode gate (bounded concurrency), off the async workers.
        let decode = self.decode;
        let params = self
            .params
            .take()
            .ok_or_else(|| GuardError::Backend("request decided twice".into()))?;
        let decoded = crate::decode_gate::gated(move || params.parse().map(|p| decode(&p)))
            .await
            .map_err(|e| GuardError::Backend(e.to_string()))??;
        let request = match decoded {
            DigestRequest::Typed(t) => Decoded::Typed(t?),
            DigestRequest::Message(m) => Decoded::Message(m?),
        };
        let (from, hash, summary): (Address, B256, Value) = match &request {
            Decoded::Typed(t) => {
                if let Some(c) = t.chain_id() {
                    entry.chain = Some(format!("eip155:{c}"));
                }
                (t.from, t.hash, t.summary())
            }
            Decoded::Message(m) => (m.from, m.hash(), m.summary()),
        };
        entry.summary = summary;
        if let Some(chain) = &entry.chain {
            Guard::check_chain(caller, chain)?;
        }
        let (key, policy) = guard.evm_key(caller, from, entry)?;
        let Some(evm) = policy.evm.as_ref() else {
            return Err(Rejection::policy(
                keyguard_chain::rules::common::POLICY_NONE,
                "from",
                "no Ethereum rules",
            )
            .into());
        };
        let allowed_by = match &request {
            Decoded::Typed(t) => {
                // Permits and transfer authorizations count like transactions: reserved at
                // signing, written with the audit row, released if anything after fails.
                let d = evm.decide_typed_data(t)?;
                self.debits = d.debits;
                d.allowed_by
            }
            Decoded::Message(m) => evm.check_message(m)?,
        };
        if let Value::Object(s) = &mut entry.summary {
            s.insert("allowed_by".into(), Value::String(allowed_by.into()));
        }
        self.decided = Some((key, from, hash));
        Ok(None)
    }

    async fn sign(&mut self, guard: &'g Guard, _: &mut AuditEntry) -> Result<[u8; 65], GuardError> {
        let (key, from, hash) = self
            .decided
            .clone()
            .ok_or_else(|| GuardError::Backend("signing before a decision".into()))?;
        if !self.debits.is_empty() {
            self.reservation = Some(guard.ledger.reserve(
                &key,
                &self.debits,
                None,
                super::now_ms(),
            )?);
        }
        let sign_started = std::time::Instant::now();
        let signature = guard
            .backend
            .sign(&key, &SigningPayload::Secp256k1Prehash(hash.0))
            .await
            .map_err(|e| GuardError::Backend(e.to_string()))?;
        crate::metrics::sign(guard.backend.name(), sign_started.elapsed());
        keyguard_evm::finalize_digest(from, hash, &signature).map_err(|e| super::pass2(&key, e))
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
    /// Signs typed data or a message; returns the 65-byte `r || s || v` signature. `decode`
    /// runs inside the pipeline, after the rate limits.
    pub async fn sign_evm_digest(
        &self,
        caller: &Caller,
        chain_hint: u64,
        method: &'static str,
        params: &Value,
        decode: fn(&Value) -> DigestRequest,
    ) -> Result<[u8; 65], GuardError> {
        let params = DigestParams::Parsed(params.clone());
        self.sign_evm_digest_params(caller, chain_hint, method, params, decode)
            .await
    }

    /// [`Guard::sign_evm_digest`] for parameters that may still be raw JSON text.
    pub async fn sign_evm_digest_params(
        &self,
        caller: &Caller,
        chain_hint: u64,
        method: &'static str,
        params: DigestParams,
        decode: fn(&Value) -> DigestRequest,
    ) -> Result<[u8; 65], GuardError> {
        let skeleton = params.skeleton();
        let request = Request {
            who: Who::Client(caller),
            method,
            family: family::family(method, &skeleton),
            chain: format!("eip155:{chain_hint}"),
            key_hint: family::evm_from(method, &skeleton)
                .and_then(|a| self.evm_keys.get(&a).cloned()),
        };
        let adapter = DigestAdapter {
            params: Some(params),
            decode,
            decided: None,
            debits: Vec::new(),
            reservation: None,
        };
        self.run(request, adapter).await
    }
}
