//! Key backends behind one small trait. The guard computes every payload; a backend only
//! signs it with a key it holds and never hands the private key out.

#[cfg(any(
    feature = "aws-kms",
    feature = "openbao",
    feature = "azure-kv",
    feature = "gcp-kms"
))]
pub mod cloud;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
pub mod routed;
pub mod software;

use async_trait::async_trait;
use keyguard_bitcoin::bitcoin::bip32::{DerivationPath, Fingerprint, Xpub};
use keyguard_bitcoin::bitcoin::NetworkKind;
use keyguard_chain::{KeyId, PublicKey, Scheme, Signature, SigningPayload};

/// A key a backend holds, as the rest of keyguard may see it (public parts only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// keyguard's name for the key.
    pub id: KeyId,
    /// The key's public half.
    pub public_key: PublicKey,
}

impl KeyInfo {
    /// The signature scheme of the key.
    pub fn scheme(&self) -> Scheme {
        self.public_key.scheme()
    }
}

/// Failures of a key backend. None of them carries key material.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No key with that id is loaded.
    #[error("unknown key {0}")]
    UnknownKey(KeyId),
    /// The key cannot sign this kind of payload.
    #[error("key {key} is {actual}, the payload needs {wanted}")]
    SchemeMismatch {
        /// The key asked for.
        key: KeyId,
        /// The key's scheme.
        actual: Scheme,
        /// The scheme the payload needs.
        wanted: Scheme,
    },
    /// The signing operation itself failed.
    #[error("signing with {key} failed: {reason}")]
    SigningFailed {
        /// The key asked for.
        key: KeyId,
        /// What the backend reported.
        reason: String,
    },
    /// The key is not a BIP32 seed, or the path is not one a seed may derive.
    #[error("{key} cannot derive {reason}")]
    Derivation {
        /// The key asked for.
        key: KeyId,
        /// What was refused.
        reason: String,
    },
    /// The backend cannot sign right now (HSM unreachable or recovering, all sessions busy);
    /// the request fails at once instead of waiting.
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// What is wrong, without key material.
        reason: String,
    },
}

/// One key store: software keystore today, PKCS#11 and cloud KMS behind the same seam.
#[async_trait]
pub trait KeyBackend: Send + Sync {
    /// Short name for logs and metrics (`software`, `pkcs11`).
    fn name(&self) -> &'static str;
    /// Every key this backend can sign with.
    fn keys(&self) -> Vec<KeyInfo>;
    /// The name of the backend holding `key` (differs from [`Self::name`] only when keys of
    /// several backends are routed together).
    fn backend_of(&self, key: &KeyId) -> &'static str {
        let _ = key;
        self.name()
    }
    /// The public key of `key`, read once when the backend loaded it.
    fn public_key(&self, key: &KeyId) -> Result<PublicKey, BackendError>;
    /// Sign a payload keyguard computed; the result is checked by pass 2 before release.
    async fn sign(&self, key: &KeyId, payload: &SigningPayload) -> Result<Signature, BackendError>;

    /// BIP32 seeds this backend holds: id and master fingerprint. Single keys (HSM) have none.
    fn seeds(&self) -> Vec<(KeyId, Fingerprint)> {
        Vec::new()
    }

    /// The extended public key of seed `key` at a hardened account path.
    fn account_xpub(
        &self,
        key: &KeyId,
        path: &DerivationPath,
        network: NetworkKind,
    ) -> Result<Xpub, BackendError> {
        let _ = (path, network);
        Err(BackendError::Derivation {
            key: key.clone(),
            reason: "xpubs: not a BIP32 seed".into(),
        })
    }

    /// Signs with the child of seed `key` at `path`, derived inside the backend.
    async fn sign_derived(
        &self,
        key: &KeyId,
        path: &DerivationPath,
        payload: &SigningPayload,
    ) -> Result<Signature, BackendError> {
        let _ = (path, payload);
        Err(BackendError::Derivation {
            key: key.clone(),
            reason: "child keys: not a BIP32 seed".into(),
        })
    }
}
