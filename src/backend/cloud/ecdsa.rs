//! A cloud service's secp256k1 signature to one keyguard can release.
//!
//! Services sign with a random nonce, return about half their signatures with a high S (which
//! Ethereum refuses) and never say which nonce point they used. So S is normalized and the
//! recovery id is found by recovering with each id and comparing with the public key read once
//! at start (never asked of the service per signature). A signature that recovers to neither is
//! a service fault and is never released.

use k256::ecdsa::Signature as EcdsaSignature;
use keyguard_chain::{PublicKey, Signature};

/// What was wrong with a service's signature.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureFault {
    /// Not a DER `ECDSA-Sig-Value` (AWS, Google) or not 64 bytes of r‖s (Azure).
    #[error("the service returned a malformed signature ({0})")]
    Malformed(&'static str),
    /// The signature does not verify under the key's public key.
    #[error("the service's signature does not verify under the key's public key")]
    DoesNotVerify,
}

/// A releasable secp256k1 signature and whether the service's S had to be negated.
#[derive(Debug, PartialEq, Eq)]
pub struct Normalized {
    /// Low S, with the recovery id that recovers the key.
    pub signature: Signature,
    /// The service returned a high S.
    pub high_s_normalized: bool,
}

/// DER `SEQUENCE { r INTEGER, s INTEGER }` (strict DER) over `digest`.
pub fn from_der(
    der: &[u8],
    digest: &[u8; 32],
    public: &[u8; 65],
) -> Result<Normalized, SignatureFault> {
    let sig = EcdsaSignature::from_der(der).map_err(|_| SignatureFault::Malformed("not DER"))?;
    normalize(sig, digest, public)
}

/// IEEE P1363 `r ‖ s`, 32 bytes each, over `digest`.
pub fn from_p1363(
    raw: &[u8],
    digest: &[u8; 32],
    public: &[u8; 65],
) -> Result<Normalized, SignatureFault> {
    if raw.len() != 64 {
        return Err(SignatureFault::Malformed("not 64 bytes of r||s"));
    }
    let sig = EcdsaSignature::from_slice(raw)
        .map_err(|_| SignatureFault::Malformed("r or s out of range"))?;
    normalize(sig, digest, public)
}

fn normalize(
    sig: EcdsaSignature,
    digest: &[u8; 32],
    public: &[u8; 65],
) -> Result<Normalized, SignatureFault> {
    let (sig, high_s_normalized) = match sig.normalize_s() {
        Some(low) => (low, true),
        None => (sig, false),
    };
    let expected = keyguard_evm::address_of(&PublicKey::Secp256k1(*public))
        .ok_or(SignatureFault::DoesNotVerify)?;
    let (r, s) = sig.split_bytes();
    let prehash = alloy_primitives::B256::from(*digest);
    let rs = [r.as_slice(), s.as_slice()].concat();
    for id in 0u8..=1 {
        let candidate = alloy_primitives::Signature::from_bytes_and_parity(&rs, id == 1);
        let recovered =
            alloy_consensus::crypto::secp256k1::recover_signer_unchecked(&candidate, prehash);
        if recovered.ok() == Some(expected) {
            return Ok(Normalized {
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

/// A DER `SubjectPublicKeyInfo` (id-ecPublicKey, secp256k1) to the 65-byte uncompressed
/// point, validated on the curve. `None` for any other algorithm or curve.
pub fn secp256k1_from_spki(der: &[u8]) -> Option<[u8; 65]> {
    use k256::elliptic_curve::sec1::ToEncodedPoint;
    use k256::pkcs8::DecodePublicKey;
    let key = k256::PublicKey::from_public_key_der(der).ok()?;
    key.to_encoded_point(false).as_bytes().try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::SigningKey;

    // Fixed vectors from secp256k1 (libsecp256k1, an implementation other than the k256 that
    // parses here): a key, a digest, and its signature in both S halves.
    fn vector() -> ([u8; 65], [u8; 32], [u8; 64], u8) {
        let secp = secp256k1::Secp256k1::new();
        let sk = secp256k1::SecretKey::from_slice(&[0x42; 32]).unwrap();
        let pk = secp256k1::PublicKey::from_secret_key(&secp, &sk).serialize_uncompressed();
        let digest = [0x17u8; 32];
        let msg = secp256k1::Message::from_digest(digest);
        let (rec, sig) = secp.sign_ecdsa_recoverable(&msg, &sk).serialize_compact();
        (pk, digest, sig, i32::from(rec) as u8)
    }

    fn high(sig: &[u8; 64]) -> [u8; 64] {
        let s = EcdsaSignature::from_slice(sig).unwrap();
        let negated = EcdsaSignature::from_scalars(s.r(), -*s.s()).unwrap();
        negated.to_bytes().into()
    }

    #[test]
    fn der_and_p1363_both_halves_give_libsecp256k1s_signature() {
        let (pk, digest, sig, rec) = vector();
        let want = Signature::Secp256k1 {
            r: sig[..32].try_into().unwrap(),
            s: sig[32..].try_into().unwrap(),
            recovery_id: rec,
        };
        for (raw, was_high) in [(sig, false), (high(&sig), true)] {
            let out = from_p1363(&raw, &digest, &pk).unwrap();
            assert_eq!(out.signature, want);
            assert_eq!(out.high_s_normalized, was_high);
            let der = EcdsaSignature::from_slice(&raw).unwrap().to_der();
            let out = from_der(der.as_bytes(), &digest, &pk).unwrap();
            assert_eq!(out.signature, want);
            assert_eq!(out.high_s_normalized, was_high);
        }
    }

    #[test]
    fn faults_are_refused() {
        let (pk, digest, sig, _) = vector();
        assert_eq!(
            from_p1363(&sig[..63], &digest, &pk).unwrap_err(),
            SignatureFault::Malformed("not 64 bytes of r||s")
        );
        assert!(matches!(
            from_p1363(&[0u8; 64], &digest, &pk).unwrap_err(),
            SignatureFault::Malformed(_)
        ));
        assert_eq!(
            from_p1363(&sig, &[0x18; 32], &pk).unwrap_err(),
            SignatureFault::DoesNotVerify
        );
        // Another key's public key: a service answering with the wrong key is caught here.
        let other = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let other_pk: [u8; 65] = other
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .try_into()
            .unwrap();
        assert_eq!(
            from_p1363(&sig, &digest, &other_pk).unwrap_err(),
            SignatureFault::DoesNotVerify
        );
        // BER, not DER: a long-form length where the short form fits.
        let der = EcdsaSignature::from_slice(&sig).unwrap().to_der();
        let mut ber = vec![0x30, 0x81, der.as_bytes()[1]];
        ber.extend_from_slice(&der.as_bytes()[2..]);
        assert!(matches!(
            from_der(&ber, &digest, &pk).unwrap_err(),
            SignatureFault::Malformed(_)
        ));
        assert!(from_der(&[], &digest, &pk).is_err());
    }

    #[test]
    fn spki_is_parsed_for_secp256k1_only() {
        // openssl ecparam -name secp256k1 ... | openssl ec -pubout -outform DER (AWS returns
        // this shape from GetPublicKey).
        let (pk, ..) = vector();
        let mut spki = hex::decode("3056301006072a8648ce3d020106052b8104000a034200").unwrap();
        spki.extend_from_slice(&pk);
        assert_eq!(secp256k1_from_spki(&spki), Some(pk));
        // P-256's OID in place of secp256k1's.
        let mut p256 = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        p256.extend_from_slice(&pk);
        assert_eq!(secp256k1_from_spki(&p256), None);
        let mut off = spki.clone();
        *off.last_mut().unwrap() ^= 1;
        assert_eq!(secp256k1_from_spki(&off), None, "point off the curve");
        assert_eq!(secp256k1_from_spki(&spki[..40]), None);
    }
}
