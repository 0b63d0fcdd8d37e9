//! keyguard-chain: the vocabulary every chain crate and the daemon share.
//!
//! Layout:
//! - [`KeyId`], [`PublicKey`]: which key, and what it proves.
//! - [`SigningPayload`]: what a backend is asked to sign. Chain crates build it from a decoded
//!   intent; a backend never sees a client-supplied digest.
//! - [`Signature`]: what a backend returns, before pass 2 checks it.
//! - [`Rejection`]: why a request was refused, naming the field and (for policy) the rule.
//! - [`rules`]: the registry of built-in rule names (errors, audit, metrics, docs).
//! - Shared shapes of every chain's config: [`window`] (time windows), [`duration`] (`"24h"`),
//!   [`approval`] (`require_approval`), and [`clock`] (the one wall-clock reading).
//!
//! A request moves through a chain crate as `decode -> facts/policy -> payload -> finalize`.
//! This crate has no I/O and no dependency on the daemon.

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod approval;
pub mod clock;
pub mod duration;
pub mod rules;
pub mod window;

/// Stable name of a key inside keyguard (`evm-treasury`, `dev-secp256k1`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// Key ids become file names and audit fields, so only a safe alphabet is accepted.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidKeyId> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !id.starts_with('.');
        if ok {
            Ok(Self(id))
        } else {
            Err(InvalidKeyId(id))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key id outside `[A-Za-z0-9._-]{1,64}`.
#[derive(Debug, thiserror::Error)]
#[error("invalid key id {0:?}: use 1-64 characters of A-Z a-z 0-9 . _ - (not starting with .)")]
pub struct InvalidKeyId(pub String);

/// Signature schemes a backend may offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// ECDSA over secp256k1 (Ethereum, Bitcoin segwit v0, Cosmos secp256k1).
    Secp256k1,
    /// Ed25519 (CometBFT consensus keys).
    Ed25519,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Secp256k1 => "secp256k1",
            Scheme::Ed25519 => "ed25519",
        })
    }
}

/// A public key, in the encoding each chain verifies against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PublicKey {
    /// SEC1 uncompressed point, 65 bytes (`04 || X || Y`).
    Secp256k1([u8; 65]),
    /// Ed25519 public key bytes.
    Ed25519([u8; 32]),
}

impl PublicKey {
    /// Which scheme the key belongs to.
    pub fn scheme(&self) -> Scheme {
        match self {
            PublicKey::Secp256k1(_) => Scheme::Secp256k1,
            PublicKey::Ed25519(_) => Scheme::Ed25519,
        }
    }

    /// The key's bytes in its canonical encoding.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            PublicKey::Secp256k1(b) => b,
            PublicKey::Ed25519(b) => b,
        }
    }
}

/// What a backend is asked to sign, always computed by keyguard from a decoded intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigningPayload {
    /// A 32-byte digest for ECDSA over secp256k1.
    Secp256k1Prehash([u8; 32]),
    /// A whole message for Ed25519 (which hashes internally).
    Ed25519Message(Vec<u8>),
    /// A BIP341 key-path sighash, signed with BIP340 Schnorr by the key tweaked with
    /// `merkle_root` (BIP86: none). The tweak is applied inside the backend, so the untweaked
    /// private key never leaves it either.
    TaprootKeySpend {
        /// The sighash keyguard computed.
        sighash: [u8; 32],
        /// Script tree root committed in the tweak; `None` for BIP86 key-path-only outputs.
        merkle_root: Option<[u8; 32]>,
    },
}

impl SigningPayload {
    /// The scheme a key must have to sign this payload.
    pub fn scheme(&self) -> Scheme {
        match self {
            SigningPayload::Secp256k1Prehash(_) | SigningPayload::TaprootKeySpend { .. } => {
                Scheme::Secp256k1
            }
            SigningPayload::Ed25519Message(_) => Scheme::Ed25519,
        }
    }
}

/// A signature as a backend produced it, not yet checked by pass 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// ECDSA `r`, `s` and the recovery id (0 or 1) for the backend's key.
    Secp256k1 {
        /// Big-endian `r`.
        r: [u8; 32],
        /// Big-endian `s`; pass 2 refuses a high `s`.
        s: [u8; 32],
        /// y parity of the nonce point.
        recovery_id: u8,
    },
    /// Ed25519 `R || S`.
    Ed25519([u8; 64]),
    /// BIP340 Schnorr signature (`R.x || s`) by a (possibly tweaked) secp256k1 key.
    Bip340([u8; 64]),
}

/// Why a request was refused, in the terms the client must see.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The request is malformed: a field is missing, unknown or not what its type allows.
    #[error("invalid {field}: {reason}")]
    InvalidParams {
        /// The offending field, as the client named it (`nonce`, `accessList[0].address`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request is well formed but a policy rule forbids it.
    #[error("policy {rule} refused {field}: {reason}")]
    Policy {
        /// Stable rule name (`evm.max_value`), used in errors, audit rows and metrics.
        rule: &'static str,
        /// The field the rule looked at.
        field: String,
        /// Why the value was refused.
        reason: String,
    },
}

impl Rejection {
    /// Shorthand for an invalid-params rejection.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection::InvalidParams {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for a policy rejection.
    pub fn policy(rule: &'static str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection::Policy {
            rule,
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Pass 2 found that what would be released is not what was approved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("signature verification failed: {0}")]
pub struct VerificationFailure(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_restricted_to_a_safe_alphabet() {
        assert!(KeyId::new("dev-secp256k1").is_ok());
        assert!(KeyId::new("a.b_c-1").is_ok());
        for bad in ["", "../x", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(KeyId::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
