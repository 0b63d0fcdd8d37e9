//! What the backend is asked to sign, and pass 2: the backend's signature is checked over the
//! sign bytes keyguard built, with a verifier that shares no code with the signer, before the
//! watermark is committed or anything is released.
//!
//! Ed25519 is checked with `ed25519-consensus` (ZIP-215 rules, the acceptance rules CometBFT
//! itself applies) while the software backend signs with `ed25519-dalek`; secp256k1 with
//! libsecp256k1 while the software backend signs with `k256`.

use keyguard_chain::{PublicKey, Signature, SigningPayload, VerificationFailure};
use sha2::{Digest, Sha256};

/// The payload for signing `sign_bytes` with a key of this kind: Ed25519 signs the bytes,
/// CometBFT's secp256k1 signs their SHA-256.
pub fn payload(public_key: &PublicKey, sign_bytes: &[u8]) -> SigningPayload {
    match public_key {
        PublicKey::Ed25519(_) => SigningPayload::Ed25519Message(sign_bytes.to_vec()),
        PublicKey::Secp256k1(_) => {
            SigningPayload::Secp256k1Prehash(Sha256::digest(sign_bytes).into())
        }
    }
}

/// SEC1 compressed form of a secp256k1 key (what CometBFT puts on the wire); Ed25519 keys are
/// returned as they are.
pub fn compressed_key(public_key: &PublicKey) -> Vec<u8> {
    match public_key {
        PublicKey::Ed25519(b) => b.to_vec(),
        PublicKey::Secp256k1(b) => {
            let mut out = Vec::with_capacity(33);
            out.push(if b[64] & 1 == 1 { 0x03 } else { 0x02 });
            out.extend_from_slice(&b[1..33]);
            out
        }
    }
}

/// Decompressing a key costs about a third of a verification and a signer has a handful of
/// consensus keys, so decompressed keys are kept (at most 64; beyond that, decompressed anew).
fn ed25519_key(pk: &[u8; 32]) -> Result<ed25519_consensus::VerificationKey, VerificationFailure> {
    use std::sync::Mutex;
    static KEYS: Mutex<Vec<([u8; 32], ed25519_consensus::VerificationKey)>> =
        Mutex::new(Vec::new());
    let mut keys = KEYS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, vk)) = keys.iter().find(|(b, _)| b == pk) {
        return Ok(*vk);
    }
    let vk = ed25519_consensus::VerificationKey::try_from(*pk)
        .map_err(|e| VerificationFailure(format!("ed25519 key: {e}")))?;
    if keys.len() < 64 {
        keys.push((*pk, vk));
    }
    Ok(vk)
}

/// Pass 2: checks `signature` by `public_key` over `sign_bytes` and returns the 64 bytes that
/// go on the wire (`R || S`, or low-S `r || s`).
pub fn verify(
    public_key: &PublicKey,
    sign_bytes: &[u8],
    signature: &Signature,
) -> Result<Vec<u8>, VerificationFailure> {
    match (public_key, signature) {
        (PublicKey::Ed25519(pk), Signature::Ed25519(sig)) => {
            let vk = ed25519_key(pk)?;
            vk.verify(&ed25519_consensus::Signature::from(*sig), sign_bytes)
                .map_err(|e| VerificationFailure(format!("ed25519 signature: {e}")))?;
            Ok(sig.to_vec())
        }
        (PublicKey::Secp256k1(pk), Signature::Secp256k1 { r, s, .. }) => {
            let mut compact = [0u8; 64];
            compact[..32].copy_from_slice(r);
            compact[32..].copy_from_slice(s);
            let sig = secp256k1::ecdsa::Signature::from_compact(&compact)
                .map_err(|e| VerificationFailure(format!("secp256k1 signature: {e}")))?;
            let mut normalized = sig;
            normalized.normalize_s();
            if normalized != sig {
                // CometBFT rejects high-S signatures; a backend must not produce one.
                return Err(VerificationFailure(
                    "secp256k1 signature has a high S".into(),
                ));
            }
            let key = secp256k1::PublicKey::from_slice(pk)
                .map_err(|e| VerificationFailure(format!("secp256k1 key: {e}")))?;
            let digest: [u8; 32] = Sha256::digest(sign_bytes).into();
            let msg = secp256k1::Message::from_digest(digest);
            secp256k1::Secp256k1::verification_only()
                .verify_ecdsa(msg, &sig, &key)
                .map_err(|e| VerificationFailure(format!("secp256k1 signature: {e}")))?;
            Ok(compact.to_vec())
        }
        _ => Err(VerificationFailure(
            "signature scheme does not match the key".into(),
        )),
    }
}
