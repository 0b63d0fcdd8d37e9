//! keyguard-eth2: Ethereum consensus-layer remote signing as pure code.
//!
//! Layout, in the order a request takes:
//! - [`json`]: a strict reader (unknown or duplicate fields, wrong types, non-canonical
//!   numbers and wrong-length hex are refused naming the field).
//! - [`request`]: Web3Signer's `POST /api/v1/eth2/sign/{pubkey}` bodies, every type, to a
//!   [`Duty`] whose signing root keyguard computed itself; `messages` reads and hashes each
//!   type's message; [`proofs`] checks Nimbus's Merkle proofs of a block's fee recipient and
//!   graffiti against its `body_root`.
//! - [`ssz`]: `hash_tree_root` of the signed containers; [`domain`]: `compute_domain` and
//!   `compute_signing_root`.
//! - [`network`]: keyguard's own genesis validators root, genesis time and fork schedule per
//!   network; the client's `fork_info` and `signingRoot` are only cross-checked.
//! - [`interchange`]: EIP-3076 slashing-protection interchange (v5) import and export.
//!
//! Nothing here does I/O or sees a key; slashing protection itself is one conditional
//! statement in keyguard's store.

pub mod bls;
pub mod domain;
pub mod interchange;
pub(crate) mod json;
mod messages;
pub mod network;
pub mod proofs;
pub mod request;
pub mod ssz;

pub use json::{parse_hex_fixed, parse_u64};
pub use network::{CustomNetwork, Fork, ForkName, Network};
pub use proofs::{BlockProofs, ProvenProperty};
pub use request::{decode, Context, Duty, DutyKind, Slashable};

/// The largest sign request body accepted (an Electra aggregate's 131,072-bit bitlist is 32 KiB
/// of hex; everything else is under 2 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A refused request: the rule, the field it concerns and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule}: {field}: {reason}")]
pub struct DecodeError {
    /// Rule name from `keyguard_chain::rules` (`request.invalid` for malformed input).
    pub rule: &'static str,
    /// Dotted JSON path of the field.
    pub field: String,
    /// Human-readable reason (no secrets; request values only).
    pub reason: String,
}

impl DecodeError {
    pub(crate) fn invalid(field: &str, reason: &str) -> DecodeError {
        DecodeError {
            rule: keyguard_chain::rules::common::REQUEST_INVALID,
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn rule(rule: &'static str, field: &str, reason: &str) -> DecodeError {
        DecodeError {
            rule,
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bls;
#[cfg(test)]
mod tests_proofs;
