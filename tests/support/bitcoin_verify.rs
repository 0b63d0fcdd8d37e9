//! The independent Bitcoin verifier of the tests: Bitcoin Core's script interpreter
//! (libbitcoinconsensus) with every flag, never keyguard's own code. The spent outputs are
//! passed, which is what turns VERIFY_TAPROOT on (without them taproot spends go unchecked).
#![allow(dead_code, unreachable_pub)]

use keyguard_bitcoin::bitcoin::{Transaction, TxOut};

/// Checks every input of `tx` against the output it spends (`prevouts[i]` for input `i`).
pub fn consensus_verify(tx: &Transaction, prevouts: &[TxOut]) -> Result<(), String> {
    let bytes = keyguard_bitcoin::bitcoin::consensus::serialize(tx);
    let utxos: Vec<bitcoinconsensus::Utxo> = prevouts
        .iter()
        .map(|p| bitcoinconsensus::Utxo {
            script_pubkey: p.script_pubkey.as_bytes().as_ptr(),
            script_pubkey_len: p.script_pubkey.len() as u32,
            value: p.value.to_sat() as i64,
        })
        .collect();
    for (i, p) in prevouts.iter().enumerate() {
        bitcoinconsensus::verify(
            p.script_pubkey.as_bytes(),
            p.value.to_sat(),
            &bytes,
            Some(&utxos),
            i,
        )
        .map_err(|e| format!("input {i}: {e:?}"))?;
    }
    Ok(())
}
