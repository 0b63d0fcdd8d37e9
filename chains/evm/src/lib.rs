//! keyguard-evm: Ethereum transactions from JSON-RPC request to verified signed bytes.
//!
//! Layout, in the order a request uses it:
//! - [`wire`]: strict readers for hex quantities, bytes and addresses (geth's rules).
//! - [`args`]: `TransactionArgs` -> [`TxIntent`] (pass 1: type inference, required fields).
//! - [`rules`]: [`EvmPolicy`], the per-key rules checked on the intent before any key is used:
//!   fixed limits, then [`rulecfg`] (config, compiled at load by [`rulecompile`]) evaluated
//!   by [`engine`] (allow/deny rules bound to [`abi`]s, [`token`] movements, velocity debits),
//!   with [`profile`]s supplying token decimals.
//! - [`typed`], [`message`]: EIP-712 typed data and EIP-191 messages, hashed here, within the
//!   caps of [`typed_bounds`] (checked on the raw JSON, before any type graph is built).
//! - [`TxIntent::payload`]: the digest keyguard signs, computed here, never taken from a client.
//! - [`finalize`]: pass 2: attach the signature, re-decode the bytes, recover the signer and
//!   prove the result is the approved intent.
//!
//! Pure code: no sockets, storage or keys.

pub mod abi;
pub mod abi_bounds;
pub mod accounting;
mod args;
pub mod engine;
pub mod finalize;
pub mod message;
pub mod movement;
pub mod permits;
pub mod profile;
pub mod rulecfg;
pub mod rulecompile;
pub mod rules;
pub mod token;
pub mod typed;
pub mod typed_bounds;
mod wire;

pub use args::{decode_sign_transaction_params, decode_transaction_args};
pub use engine::{Debit, RuleOutcome, TxDecision};
pub use finalize::{finalize, finalize_digest, SignedTx};
pub use message::{decode_eth_sign, decode_personal_sign, MessageIntent};
pub use rules::{Destinations, EvmApprovalRule, EvmPolicy, Wei};
pub use typed::{decode_typed_data, decode_typed_data_params, TypedDecision, TypedIntent};

use alloy_consensus::{SignableTransaction, Transaction, TypedTransaction};
use alloy_primitives::{keccak256, Address, U256};
use keyguard_chain::{PublicKey, SigningPayload};
use serde_json::json;

/// A decoded signing request: which account, and the exact transaction it would sign.
#[derive(Clone, Debug, PartialEq)]
pub struct TxIntent {
    /// The account the client named; must be a key keyguard holds.
    pub from: Address,
    /// The unsigned transaction, complete (nothing is filled in later).
    pub tx: TypedTransaction,
}

impl TxIntent {
    /// EIP-2718 type byte (0 for legacy).
    pub fn tx_type(&self) -> u8 {
        self.tx.tx_type() as u8
    }

    /// Chain id (always present: pre-EIP-155 transactions are refused when decoding).
    pub fn chain_id(&self) -> u64 {
        self.tx.chain_id().unwrap_or_default()
    }

    /// Destination; `None` is a contract creation.
    pub fn to(&self) -> Option<Address> {
        self.tx.to()
    }

    /// Native value transferred, in wei.
    pub fn value(&self) -> U256 {
        self.tx.value()
    }

    /// First four bytes of calldata, if there are that many.
    pub fn selector(&self) -> Option<[u8; 4]> {
        self.tx
            .input()
            .get(..4)
            .map(|s| s.try_into().expect("4 bytes"))
    }

    /// What the backend signs: the transaction's signing hash, computed here.
    pub fn payload(&self) -> SigningPayload {
        SigningPayload::Secp256k1Prehash(self.tx.signature_hash().0)
    }

    /// A short, secret-free description for the audit log and logs.
    pub fn summary(&self) -> serde_json::Value {
        json!({
            "type": self.tx_type(),
            "from": self.from,
            "to": self.to(),
            "value": self.value().to_string(),
            "nonce": self.tx.nonce(),
            "gas": self.tx.gas_limit(),
            "max_fee_per_gas": self.tx.max_fee_per_gas().to_string(),
            "selector": self.selector().map(|s| format!("0x{}", hex::encode(s))),
            "input_len": self.tx.input().len(),
        })
    }
}

/// The Ethereum address of a secp256k1 public key; `None` for other schemes.
pub fn address_of(key: &PublicKey) -> Option<Address> {
    match key {
        PublicKey::Secp256k1(uncompressed) => {
            Some(Address::from_slice(&keccak256(&uncompressed[1..])[12..]))
        }
        PublicKey::Ed25519(_) => None,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fees;
#[cfg(test)]
mod tests_messages;
#[cfg(test)]
mod tests_movement;
#[cfg(test)]
mod tests_permits;
#[cfg(test)]
mod tests_rule_names;
#[cfg(test)]
mod tests_rules;
#[cfg(test)]
mod tests_semantics;
#[cfg(test)]
mod tests_typed_bounds;
#[cfg(test)]
mod tests_windows;
