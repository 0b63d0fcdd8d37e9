//! keyguard-bitcoin: PSBTs from a client to verified signed PSBTs.
//!
//! Layout, in the order a request uses it:
//! - [`v2`]: raw PSBT maps: duplicate keys and trailing bytes refused; BIP370 (v2) converted to
//!   and from the v0 form the `bitcoin` crate reads.
//! - [`decode`]: pass 1: strict parse -> [`SpendIntent`]: input amounts proven (the BIP143 fee
//!   attack), our keys re-derived from registered account xpubs, outputs classified as change or
//!   spend, sighashes computed here.
//! - [`change`]: output key origins under our fingerprint; a provable lie is `bitcoin.fake_change`.
//! - [`locktime`]: the chain tip (node or clock estimate) that bounds absolute locktimes.
//! - [`wallet`]: the registered accounts (BIP84, BIP86) and re-derivation; descriptors.
//! - [`rules`]: [`BitcoinPolicy`], per-key rules with stable names, each naming the input or
//!   output it refused.
//! - [`finalize`]: pass 2: every signature checked against the re-derived key and a sighash
//!   recomputed from the re-encoded PSBT; optional BIP174 finalization.
//!
//! - [`schedule`], [`approval`]: the time window and the approval threshold, rules that
//!   depend on the clock and on people rather than on the transaction alone.
//! - [`signet`], [`signet_rules`], [`signet_finalize`]: signet blocks (BIP325): the block
//!   decoded and its commitment rebuilt, block policy, pass 2 and the miner's PSBT.
//! - [`node`]: an upstream node's view of the inputs (unspent, same amount and script) checked
//!   against the intent; the JSON-RPC client itself is in the daemon.
//!
//! Pure code: no sockets, storage or private keys.

pub mod approval;
pub mod change;
pub mod conflict;
pub mod decode;
pub mod finalize;
pub mod locktime;
pub mod node;
pub mod rules;
pub mod schedule;
pub mod signet;
pub mod signet_finalize;
pub mod signet_rules;
#[cfg(any(test, feature = "testkit"))]
pub mod signet_testkit;
pub mod single;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod v2;
pub mod wallet;

pub use bitcoin;
pub use decode::{decode, encode_psbt, parse_psbt, PsbtFormat};
pub use finalize::{finalize, SignedPsbt};
pub use rules::{BitcoinPolicy, Sats, SignedSpend};
pub use wallet::{Account, ScriptKind, Wallet};

use bitcoin::bip32::DerivationPath;
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, Network, ScriptBuf};
use keyguard_chain::{Rejection, SigningPayload};
use serde_json::json;

/// What keyguard learned about one input.
#[derive(Clone, Debug)]
pub struct InputFacts {
    /// Proven amount of the spent output.
    pub amount: Amount,
    /// Script of the spent output.
    pub script_pubkey: ScriptBuf,
    /// `Some` when keyguard re-derived the key and will sign this input.
    pub ours: Option<ScriptKind>,
    /// The input already carries a final script (someone else signed it).
    pub already_final: bool,
}

/// What an output is, as keyguard decided (never as the PSBT claimed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputClass {
    /// Re-derives on our internal chain at this index.
    Change {
        /// Address index on the internal chain.
        index: u32,
    },
    /// Pays someone else (or our own receive chain); counts toward limits.
    Spend {
        /// The address on the policy's network, if the script has one.
        address: Option<String>,
    },
    /// Data carrier.
    OpReturn {
        /// Script length in bytes.
        data_len: usize,
    },
}

/// One output's facts.
#[derive(Clone, Debug)]
pub struct OutputFacts {
    /// Value.
    pub amount: Amount,
    /// Script.
    pub script_pubkey: ScriptBuf,
    /// Change, spend or data.
    pub class: OutputClass,
}

impl OutputFacts {
    /// The address, or `script:<hex>` for scripts without one.
    pub fn payee(&self) -> String {
        match &self.class {
            OutputClass::Spend {
                address: Some(address),
            } => address.clone(),
            _ => format!("script:{}", self.script_pubkey.to_hex_string()),
        }
    }
}

/// One signature keyguard will ask the backend for.
#[derive(Clone, Debug)]
pub struct SignJob {
    /// Input index.
    pub input: usize,
    /// Spend type.
    pub kind: ScriptKind,
    /// Full derivation path below the seed.
    pub path: DerivationPath,
    /// Re-derived public key (untweaked for taproot).
    pub public_key: bitcoin::secp256k1::PublicKey,
    /// The digest, computed by keyguard.
    pub payload: SigningPayload,
}

/// A decoded PSBT: the exact transaction, what every input and output is, and what to sign.
#[derive(Clone, Debug)]
pub struct SpendIntent {
    /// The parsed PSBT (v0 form).
    pub psbt: Psbt,
    /// The wire version to answer in.
    pub format: PsbtFormat,
    /// Network the wallet is on.
    pub network: Network,
    /// Per input.
    pub inputs: Vec<InputFacts>,
    /// Per output.
    pub outputs: Vec<OutputFacts>,
    /// Signatures to produce, in input order.
    pub jobs: Vec<SignJob>,
}

impl SpendIntent {
    /// Sum of inputs minus sum of outputs; refused unless strictly positive (an output sum
    /// above the input sum is invalid, a zero fee never relays and hints at a tampered PSBT).
    pub fn fee_checked(&self) -> Result<Amount, Rejection> {
        let total_in = decode::sum(self.inputs.iter().map(|i| i.amount));
        let total_out = decode::sum(self.outputs.iter().map(|o| o.amount));
        let (Some(total_in), Some(total_out)) = (total_in, total_out) else {
            return Err(Rejection::invalid(
                "psbt",
                "amounts exceed the money supply",
            ));
        };
        match total_in.checked_sub(total_out) {
            Some(fee) if fee > Amount::ZERO => Ok(fee),
            _ => Err(Rejection::policy(
                rules::rule::FEE_POSITIVE,
                "fee",
                format!("inputs {total_in} minus outputs {total_out} is not positive"),
            )),
        }
    }

    /// The fee (valid after decode, which checked it).
    pub fn fee(&self) -> Amount {
        self.fee_checked().unwrap_or(Amount::ZERO)
    }

    /// What leaves the wallet: every non-change output plus the fee.
    pub fn spend(&self) -> Amount {
        let paid = self
            .outputs
            .iter()
            .filter(|o| !matches!(o.class, OutputClass::Change { .. }))
            .map(|o| o.amount);
        decode::sum(paid.chain(std::iter::once(self.fee()))).unwrap_or(Amount::MAX_MONEY)
    }

    /// `txid:vout` of every input, in order.
    pub fn outpoints(&self) -> Vec<String> {
        self.psbt
            .unsigned_tx
            .input
            .iter()
            .map(|i| i.previous_output.to_string())
            .collect()
    }

    /// The payments (payee, sat) of the non-change outputs, sorted: what a fee bump must keep.
    pub fn payments(&self) -> Vec<(String, u64)> {
        let mut list: Vec<_> = self
            .outputs
            .iter()
            .filter(|o| matches!(o.class, OutputClass::Spend { .. }))
            .map(|o| (o.payee(), o.amount.to_sat()))
            .collect();
        list.sort();
        list
    }

    /// Estimated virtual size once signed.
    pub fn vsize(&self) -> u64 {
        decode::estimated_vsize(self)
    }

    /// The unsigned transaction id (stable across signing for segwit inputs).
    pub fn txid(&self) -> bitcoin::Txid {
        self.psbt.unsigned_tx.compute_txid()
    }

    /// A short, secret-free description for the audit log.
    pub fn summary(&self) -> serde_json::Value {
        let outputs: Vec<_> = self
            .outputs
            .iter()
            .map(|o| match &o.class {
                OutputClass::Change { index } => json!({"change": index, "sat": o.amount.to_sat()}),
                OutputClass::Spend { .. } => json!({"to": o.payee(), "sat": o.amount.to_sat()}),
                OutputClass::OpReturn { data_len } => json!({"op_return": data_len}),
            })
            .collect();
        json!({
            "txid": self.txid().to_string(),
            "network": self.network.to_string(),
            "psbt_version": match self.format { PsbtFormat::V0 => 0, PsbtFormat::V2(_) => 2 },
            "inputs": self.inputs.len(),
            "signing": self.jobs.iter().map(|j| j.input).collect::<Vec<_>>(),
            "outputs": outputs,
            "outpoints": self.outpoints(),
            "fee_sat": self.fee().to_sat(),
            "spend_sat": self.spend().to_sat(),
            "vsize": self.vsize(),
        })
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_freeze;
#[cfg(test)]
mod tests_more;
#[cfg(test)]
mod tests_rules;
#[cfg(test)]
mod tests_windows;
