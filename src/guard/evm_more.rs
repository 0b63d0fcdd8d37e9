//! The other Ethereum signatures: EIP-712 typed data and EIP-191 messages. Same pipeline as
//! transactions: decode, key and grant, policy, sign the digest computed here, recover (pass 2),
//! audit, release.

use alloy_primitives::{Address, B256};
use keyguard_chain::{Rejection, SigningPayload};
use serde_json::Value;

use super::{Guard, GuardError, Reservation};
use crate::access::Caller;
use crate::store::AuditEntry;

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

impl Guard {
    /// Signs typed data or a message; returns the 65-byte `r || s || v` signature.
    pub async fn sign_evm_digest(
        &self,
        caller: &Caller,
        chain_hint: u64,
        method: &'static str,
        request: DigestRequest,
    ) -> Result<[u8; 65], GuardError> {
        let started = std::time::Instant::now();
        let mut entry = self.entry(caller, chain_hint, method);
        let from = match &request {
            DigestRequest::Typed(Ok(t)) => Some(t.from),
            DigestRequest::Message(Ok(m)) => Some(m.from),
            _ => None,
        };
        let key_hint = from.and_then(|f| self.evm_keys.get(&f));
        let (outcome, _pass) = match self.pre_check(caller, method, key_hint).await {
            Ok(pass) => (
                self.digest_stages(caller, request, &mut entry).await,
                Some(pass),
            ),
            Err(e) => {
                entry.key_id = key_hint.map(ToString::to_string);
                (Err(e), None)
            }
        };
        self.conclude(caller, method, started, entry, outcome, None)
            .await
    }

    async fn digest_stages(
        &self,
        caller: &Caller,
        request: DigestRequest,
        entry: &mut AuditEntry,
    ) -> Result<([u8; 65], Option<Reservation<'_>>), GuardError> {
        let request = match request {
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
            Self::check_chain(caller, chain)?;
        }
        let (key, policy) = self.evm_key(caller, from, entry)?;
        let Some(evm) = policy.evm.as_ref() else {
            return Err(Rejection::policy("policy.none", "from", "no Ethereum rules").into());
        };
        let (allowed_by, debits) = match &request {
            Decoded::Typed(t) => {
                let d = evm.decide_typed_data(t)?;
                (d.allowed_by, d.debits)
            }
            Decoded::Message(m) => (evm.check_message(m)?, Vec::new()),
        };
        if let Value::Object(s) = &mut entry.summary {
            s.insert("allowed_by".into(), Value::String(allowed_by.into()));
        }
        if self.controls.kill.is_disabled(Some(key.as_str())) {
            return Err(GuardError::KeyDisabled(format!("key {key} is disabled")));
        }
        // Permits and transfer authorizations count like transactions: reserved here, written
        // with the audit row, released if anything below fails.
        let reservation = if debits.is_empty() {
            None
        } else {
            Some(self.ledger.reserve(&key, &debits, None, super::now_ms())?)
        };
        let signature = self
            .backend
            .sign(&key, &SigningPayload::Secp256k1Prehash(hash.0))
            .await
            .map_err(|e| GuardError::Backend(e.to_string()))?;
        let sig = keyguard_evm::finalize_digest(from, hash, &signature).map_err(|e| {
            tracing::error!(key = %key, error = %e, "ALERT: pass 2 rejected a backend signature");
            GuardError::Backend(e.to_string())
        })?;
        Ok((sig, reservation))
    }
}
