//! Pass 2: turn a backend's signature into the bytes released, and prove they are what was
//! approved. A fault in the signer (glitched nonce, wrong key, flipped bit) is caught here.

use alloy_consensus::transaction::SignerRecoverable;
use alloy_consensus::{TxEnvelope, TypedTransaction};
use alloy_eips::eip2718::{Decodable2718, Encodable2718};
use alloy_primitives::{Bytes, B256, U256};
use keyguard_chain::{Signature, VerificationFailure};

use crate::TxIntent;

/// A signed transaction that passed pass 2.
#[derive(Clone, Debug)]
pub struct SignedTx {
    /// EIP-2718 encoded signed transaction (what `eth_sendRawTransaction` takes).
    pub raw: Bytes,
    /// The same transaction, decoded again from `raw`.
    pub envelope: TxEnvelope,
    /// Transaction hash.
    pub hash: B256,
}

impl SignedTx {
    /// geth's `{raw, tx}` response object.
    pub fn geth_json(&self) -> serde_json::Value {
        serde_json::json!({ "raw": self.raw, "tx": self.envelope })
    }
}

fn fail(reason: impl Into<String>) -> VerificationFailure {
    VerificationFailure(reason.into())
}

/// Attaches `sig` to the intent's transaction and verifies the result end to end.
pub fn finalize(intent: &TxIntent, sig: &Signature) -> Result<SignedTx, VerificationFailure> {
    let Signature::Secp256k1 { r, s, recovery_id } = sig else {
        return Err(fail("backend returned a non-secp256k1 signature"));
    };
    if *recovery_id > 1 {
        return Err(fail("recovery id is not 0 or 1"));
    }
    let signature = alloy_primitives::Signature::new(
        U256::from_be_bytes(*r),
        U256::from_be_bytes(*s),
        *recovery_id == 1,
    );
    if signature.normalize_s().is_some() {
        return Err(fail("signature has a high s value (not canonical)"));
    }
    let raw: Bytes = intent
        .tx
        .clone()
        .into_envelope(signature)
        .encoded_2718()
        .into();

    let mut buf = raw.as_ref();
    let envelope =
        TxEnvelope::decode_2718(&mut buf).map_err(|e| fail(format!("re-decode failed: {e}")))?;
    if !buf.is_empty() {
        return Err(fail("trailing bytes after the signed transaction"));
    }
    let signer = envelope
        .recover_signer()
        .map_err(|e| fail(format!("signer recovery failed: {e}")))?;
    if signer != intent.from {
        return Err(fail(format!(
            "signature recovers to {signer}, not to {}",
            intent.from
        )));
    }
    let decoded: TypedTransaction = envelope.clone().into_signed().strip_signature();
    if decoded != intent.tx {
        return Err(fail("signed transaction differs from the approved request"));
    }
    let hash = *envelope.tx_hash();
    Ok(SignedTx {
        raw,
        envelope,
        hash,
    })
}

/// Pass 2 for a digest keyguard computed (typed data, messages): the signature must be
/// canonical and recover to `from`. Returns the 65-byte `r || s || v` (v = 27/28).
pub fn finalize_digest(
    from: alloy_primitives::Address,
    hash: B256,
    sig: &Signature,
) -> Result<[u8; 65], VerificationFailure> {
    let Signature::Secp256k1 { r, s, recovery_id } = sig else {
        return Err(fail("backend returned a non-secp256k1 signature"));
    };
    if *recovery_id > 1 {
        return Err(fail("recovery id is not 0 or 1"));
    }
    let signature = alloy_primitives::Signature::new(
        U256::from_be_bytes(*r),
        U256::from_be_bytes(*s),
        *recovery_id == 1,
    );
    if signature.normalize_s().is_some() {
        return Err(fail("signature has a high s value (not canonical)"));
    }
    let signer = signature
        .recover_address_from_prehash(&hash)
        .map_err(|e| fail(format!("signer recovery failed: {e}")))?;
    if signer != from {
        return Err(fail(format!(
            "signature recovers to {signer}, not to {from}"
        )));
    }
    Ok(signature.as_bytes())
}
