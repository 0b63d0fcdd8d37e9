//! A decrypted private key of either scheme, and signing with it.

use keyguard_chain::{KeyId, PublicKey, Scheme, Signature, SigningPayload};
use rand::rngs::OsRng;
use zeroize::{Zeroize, Zeroizing};

use crate::backend::BackendError;

/// Length of a private key of either scheme (secp256k1 scalar, ed25519 seed).
pub(super) const SECRET_LEN: usize = 32;

/// A decrypted private key. Both types zeroize themselves on drop.
pub(super) enum SecretKey {
    Secp256k1(k256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl SecretKey {
    pub(super) fn generate(scheme: Scheme) -> Self {
        match scheme {
            Scheme::Secp256k1 => SecretKey::Secp256k1(k256::ecdsa::SigningKey::random(&mut OsRng)),
            Scheme::Ed25519 => SecretKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng)),
        }
    }

    /// Rebuilds a key from its 32 secret bytes; `None` if they are not a valid key.
    pub(super) fn from_bytes(scheme: Scheme, bytes: &[u8]) -> Option<Self> {
        match scheme {
            // Rejects zero and scalars not below the group order.
            Scheme::Secp256k1 => k256::ecdsa::SigningKey::from_slice(bytes)
                .ok()
                .map(SecretKey::Secp256k1),
            Scheme::Ed25519 => {
                let seed: &[u8; SECRET_LEN] = bytes.try_into().ok()?;
                Some(SecretKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                    seed,
                )))
            }
        }
    }

    pub(super) fn to_bytes(&self) -> Zeroizing<[u8; SECRET_LEN]> {
        let mut out = Zeroizing::new([0u8; SECRET_LEN]);
        match self {
            SecretKey::Secp256k1(key) => {
                let mut bytes = key.to_bytes();
                out.copy_from_slice(&bytes);
                bytes.as_mut_slice().zeroize();
            }
            SecretKey::Ed25519(key) => {
                let mut bytes = key.to_bytes();
                out.copy_from_slice(&bytes);
                bytes.zeroize();
            }
        }
        out
    }

    pub(super) fn public_key(&self) -> PublicKey {
        match self {
            SecretKey::Secp256k1(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                let mut sec1 = [0u8; 65];
                sec1.copy_from_slice(point.as_bytes());
                PublicKey::Secp256k1(sec1)
            }
            SecretKey::Ed25519(key) => PublicKey::Ed25519(key.verifying_key().to_bytes()),
        }
    }

    pub(super) fn sign(
        &self,
        id: &KeyId,
        payload: &SigningPayload,
    ) -> Result<Signature, BackendError> {
        let failed = |reason: String| BackendError::SigningFailed {
            key: id.clone(),
            reason,
        };
        match (self, payload) {
            (SecretKey::Secp256k1(key), SigningPayload::Secp256k1Prehash(prehash)) => {
                let (mut sig, mut recid) = key
                    .sign_prehash_recoverable(prehash)
                    .map_err(|e| failed(e.to_string()))?;
                // k256 already returns low S; normalizing again keeps the guarantee local, and
                // negating s reflects the nonce point, so the y parity flips with it.
                if let Some(low) = sig.normalize_s() {
                    sig = low;
                    recid = k256::ecdsa::RecoveryId::new(!recid.is_y_odd(), recid.is_x_reduced());
                }
                if recid.is_x_reduced() {
                    // Probability ~2^-127; the (r, s, y-parity) form cannot express it.
                    return Err(failed("nonce point x exceeded the group order".into()));
                }
                let (r, s) = sig.split_bytes();
                Ok(Signature::Secp256k1 {
                    r: r.into(),
                    s: s.into(),
                    recovery_id: u8::from(recid.is_y_odd()),
                })
            }
            (SecretKey::Ed25519(key), SigningPayload::Ed25519Message(message)) => {
                use ed25519_dalek::Signer as _;
                Ok(Signature::Ed25519(key.sign(message).to_bytes()))
            }
            (key, payload) => Err(BackendError::SchemeMismatch {
                key: id.clone(),
                actual: key.scheme(),
                wanted: payload.scheme(),
            }),
        }
    }

    pub(super) fn scheme(&self) -> Scheme {
        match self {
            SecretKey::Secp256k1(_) => Scheme::Secp256k1,
            SecretKey::Ed25519(_) => Scheme::Ed25519,
        }
    }
}
