//! Turning what `C_Sign` returned into a [`Signature`] keyguard can release.
//!
//! A token's ECDSA is randomized and about half of its signatures have a high S, which
//! Ethereum refuses; the token also does not say which of the two candidate nonce points it
//! used. So S is normalized and the recovery id found by recovering with each id and comparing
//! with the public key read at start. A signature that recovers to neither is a token fault and
//! is never released (pass 2 would refuse it too; failing here names the backend).

use k256::ecdsa::Signature as EcdsaSignature;
use keyguard_chain::Signature;

/// What was wrong with a token's signature.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SignatureFault {
    /// The token returned something other than 64 bytes of r||s.
    #[error("token returned a {0}-byte signature, expected 64")]
    Length(usize),
    /// r or s is zero or not below the group order.
    #[error("token returned r or s out of range")]
    OutOfRange,
    /// The signature does not verify under the key's public key.
    #[error("token signature does not verify under the key's public key")]
    DoesNotVerify,
}

/// A secp256k1 signature ready for release, and whether the token's S had to be negated.
#[derive(Debug)]
pub(crate) struct Secp256k1Outcome {
    pub(crate) signature: Signature,
    pub(crate) high_s_normalized: bool,
}

/// Raw `r || s` from `CKM_ECDSA` over `digest` -> low-S signature with the recovery id that
/// recovers `public` (65-byte uncompressed point).
pub(crate) fn secp256k1_from_token(
    raw: &[u8],
    digest: &[u8; 32],
    public: &[u8; 65],
) -> Result<Secp256k1Outcome, SignatureFault> {
    if raw.len() != 64 {
        return Err(SignatureFault::Length(raw.len()));
    }
    let sig = EcdsaSignature::from_slice(raw).map_err(|_| SignatureFault::OutOfRange)?;
    let (sig, high_s_normalized) = match sig.normalize_s() {
        Some(low) => (low, true),
        None => (sig, false),
    };
    let Some(expected) = keyguard_evm::address_of(&keyguard_chain::PublicKey::Secp256k1(*public))
    else {
        return Err(SignatureFault::DoesNotVerify);
    };
    let (r, s) = sig.split_bytes();
    let prehash = alloy_primitives::B256::from(*digest);
    for id in 0u8..=1 {
        // libsecp256k1's recovery is several times cheaper than k256's (which also re-verifies),
        // and this trial runs once or twice per token signature.
        let candidate = alloy_primitives::Signature::from_bytes_and_parity(
            &[r.as_slice(), s.as_slice()].concat(),
            id == 1,
        );
        let recovered =
            alloy_consensus::crypto::secp256k1::recover_signer_unchecked(&candidate, prehash);
        if recovered.ok() == Some(expected) {
            return Ok(Secp256k1Outcome {
                signature: Signature::Secp256k1 {
                    r: r.into(),
                    s: s.into(),
                    recovery_id: id,
                },
                high_s_normalized,
            });
        }
    }
    Err(SignatureFault::DoesNotVerify)
}

/// Raw `R || S` from `CKM_EDDSA` over `message`, verified (strictly) under `public`.
pub(crate) fn ed25519_from_token(
    raw: &[u8],
    message: &[u8],
    public: &[u8; 32],
) -> Result<Signature, SignatureFault> {
    let bytes: [u8; 64] = raw
        .try_into()
        .map_err(|_| SignatureFault::Length(raw.len()))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(public)
        .map_err(|_| SignatureFault::DoesNotVerify)?;
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&bytes))
        .map_err(|_| SignatureFault::DoesNotVerify)?;
    Ok(Signature::Ed25519(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::SigningKey;
    use k256::ecdsa::{RecoveryId, VerifyingKey};

    fn key() -> (SigningKey, [u8; 65]) {
        let sk = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let pk = sk.verifying_key().to_encoded_point(false);
        (sk, pk.as_bytes().try_into().unwrap())
    }

    /// A token signature with a chosen S half: k256 signs low-S; negate S for the high one.
    fn token_sig(sk: &SigningKey, digest: &[u8; 32], high: bool) -> Vec<u8> {
        let (sig, _) = sk.sign_prehash_recoverable(digest).unwrap();
        let sig = if high {
            let (r, s) = (sig.r(), -*sig.s());
            EcdsaSignature::from_scalars(r, s).unwrap()
        } else {
            sig
        };
        sig.to_bytes().to_vec()
    }

    #[test]
    fn high_s_is_normalized_and_recovers() {
        let (sk, pk) = key();
        for i in 0..16u8 {
            let digest = [i; 32];
            for high in [false, true] {
                let raw = token_sig(&sk, &digest, high);
                let out = secp256k1_from_token(&raw, &digest, &pk).unwrap();
                assert_eq!(out.high_s_normalized, high);
                let Signature::Secp256k1 { r, s, recovery_id } = out.signature else {
                    panic!("not secp256k1")
                };
                let mut rs = [0u8; 64];
                rs[..32].copy_from_slice(&r);
                rs[32..].copy_from_slice(&s);
                let sig = EcdsaSignature::from_slice(&rs).unwrap();
                assert!(sig.normalize_s().is_none(), "released a high S");
                let rec = VerifyingKey::recover_from_prehash(
                    &digest,
                    &sig,
                    RecoveryId::from_byte(recovery_id).unwrap(),
                )
                .unwrap();
                assert_eq!(&rec, sk.verifying_key());
            }
        }
    }

    #[test]
    fn faults_are_refused() {
        let (sk, pk) = key();
        let digest = [1u8; 32];
        let raw = token_sig(&sk, &digest, false);
        assert_eq!(
            secp256k1_from_token(&raw[..63], &digest, &pk).unwrap_err(),
            SignatureFault::Length(63)
        );
        assert_eq!(
            secp256k1_from_token(&[0u8; 64], &digest, &pk).unwrap_err(),
            SignatureFault::OutOfRange
        );
        assert_eq!(
            secp256k1_from_token(&raw, &[2u8; 32], &pk).unwrap_err(),
            SignatureFault::DoesNotVerify
        );
        let mut flipped = raw.clone();
        flipped[40] ^= 1;
        assert!(secp256k1_from_token(&flipped, &digest, &pk).is_err());
    }

    #[test]
    fn ed25519_is_verified() {
        use ed25519_dalek::Signer;
        let sk = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let pk = sk.verifying_key().to_bytes();
        let sig = sk.sign(b"msg").to_bytes();
        assert_eq!(
            ed25519_from_token(&sig, b"msg", &pk).unwrap(),
            Signature::Ed25519(sig)
        );
        assert_eq!(
            ed25519_from_token(&sig, b"other", &pk).unwrap_err(),
            SignatureFault::DoesNotVerify
        );
        assert_eq!(
            ed25519_from_token(&sig[..10], b"msg", &pk).unwrap_err(),
            SignatureFault::Length(10)
        );
    }
}
