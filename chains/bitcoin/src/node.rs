//! What an upstream Bitcoin Core node says about the inputs, checked against the intent. The
//! I/O (JSON-RPC over `corepc-types`) lives in the daemon; the decision lives here.
//!
//! The node is trusted for one extra refusal only, never to allow anything: a PSBT whose inputs
//! are already spent (a conflicting payment we would double-sign) or whose amounts or scripts
//! differ from the chain (a PSBT lying about what it spends) is refused.

use bitcoin::TxOut;
use keyguard_chain::Rejection;

use crate::SpendIntent;

/// Rule names of the node cross-check.
pub mod rule {
    /// The node reports the input spent or unknown.
    pub const UTXO_SPENT: &str = "bitcoin.node_utxo_spent";
    /// The node's amount or script differs from the PSBT's.
    pub const UTXO_MISMATCH: &str = "bitcoin.node_utxo_mismatch";
}

/// `utxos[i]` is the node's `gettxout` answer for input `i` (`None`: spent or unknown).
pub fn check_utxos(intent: &SpendIntent, utxos: &[Option<TxOut>]) -> Result<(), Rejection> {
    if utxos.len() != intent.inputs.len() {
        return Err(Rejection::invalid(
            "inputs",
            "node answers do not match the inputs",
        ));
    }
    for (i, (facts, utxo)) in intent.inputs.iter().zip(utxos).enumerate() {
        let field = format!("inputs[{i}]");
        let Some(utxo) = utxo else {
            return Err(Rejection::policy(
                rule::UTXO_SPENT,
                field,
                "the node reports this output spent or unknown",
            ));
        };
        if utxo.value != facts.amount || utxo.script_pubkey != facts.script_pubkey {
            return Err(Rejection::policy(
                rule::UTXO_MISMATCH,
                field,
                format!(
                    "node has {} sat, the PSBT claims {} sat (or another script)",
                    utxo.value.to_sat(),
                    facts.amount.to_sat()
                ),
            ));
        }
    }
    Ok(())
}
