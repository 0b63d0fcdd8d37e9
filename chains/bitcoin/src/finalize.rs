//! Pass 2: attach the backend's signatures, re-encode, re-decode, recompute every sighash from
//! the re-decoded PSBT and verify each signature against the re-derived key (the tweaked output
//! key for taproot). A faulty or compromised signer (wrong key, glitched nonce, a signature
//! over another digest) is caught here, before anything is released.

use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{ecdsa, schnorr, Message};
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::{PublicKey, Witness, XOnlyPublicKey};
use keyguard_chain::{Signature, VerificationFailure};

use crate::decode::{encode_psbt, parse_psbt, spent_output};
use crate::wallet::{secp, ScriptKind};
use crate::SpendIntent;

/// A PSBT that passed pass 2.
#[derive(Clone, Debug)]
pub struct SignedPsbt {
    /// Base64 PSBT in the version it came in.
    pub psbt: String,
    /// Every input has a final script witness (after `finalize = true`).
    pub complete: bool,
    /// The network transaction, hex, when complete.
    pub tx_hex: Option<String>,
    /// Transaction id.
    pub txid: bitcoin::Txid,
    /// Inputs keyguard signed.
    pub signed_inputs: Vec<usize>,
}

fn fail(reason: impl Into<String>) -> VerificationFailure {
    VerificationFailure(reason.into())
}

/// Attaches `signatures` (one per [`crate::SignJob`], same order), verifies, and optionally
/// finalizes (BIP174 Input Finalizer) when every input can be completed.
pub fn finalize(
    intent: &SpendIntent,
    signatures: &[Signature],
    finalize: bool,
) -> Result<SignedPsbt, VerificationFailure> {
    if signatures.len() != intent.jobs.len() {
        return Err(fail("signature count differs from the inputs to sign"));
    }
    let mut psbt = intent.psbt.clone();
    for (job, sig) in intent.jobs.iter().zip(signatures) {
        let input = &mut psbt.inputs[job.input];
        match (job.kind, sig) {
            (ScriptKind::P2wpkh, Signature::Secp256k1 { r, s, .. }) => {
                let mut compact = [0u8; 64];
                compact[..32].copy_from_slice(r);
                compact[32..].copy_from_slice(s);
                let sig = ecdsa::Signature::from_compact(&compact)
                    .map_err(|e| fail(format!("inputs[{}]: {e}", job.input)))?;
                let mut normalized = sig;
                normalized.normalize_s();
                if normalized != sig {
                    return Err(fail(format!("inputs[{}]: high-s signature", job.input)));
                }
                input.partial_sigs.insert(
                    PublicKey::new(job.public_key),
                    bitcoin::ecdsa::Signature {
                        signature: sig,
                        sighash_type: EcdsaSighashType::All,
                    },
                );
            }
            (ScriptKind::P2tr, Signature::Bip340(bytes)) => {
                let signature = schnorr::Signature::from_slice(bytes)
                    .map_err(|e| fail(format!("inputs[{}]: {e}", job.input)))?;
                input.tap_key_sig = Some(bitcoin::taproot::Signature {
                    signature,
                    sighash_type: TapSighashType::Default,
                });
            }
            _ => return Err(fail(format!("inputs[{}]: wrong signature kind", job.input))),
        }
    }

    // Re-encode and decode again: what is verified is what is released.
    let encoded = encode_psbt(&psbt, &intent.format).map_err(fail)?;
    let (decoded, _) = parse_psbt(&encoded).map_err(|e| fail(format!("re-decode: {e}")))?;
    if decoded.unsigned_tx != intent.psbt.unsigned_tx {
        return Err(fail("re-decoded transaction differs from the approved one"));
    }
    verify_all(&decoded, intent)?;

    let mut out = decoded;
    let complete = finalize && finalize_inputs(&mut out, intent);
    let psbt_b64 = if complete {
        encode_psbt(&out, &intent.format).map_err(fail)?
    } else {
        encoded
    };
    let tx_hex = complete.then(|| {
        bitcoin::consensus::encode::serialize_hex(&out.clone().extract_tx_unchecked_fee_rate())
    });
    Ok(SignedPsbt {
        psbt: psbt_b64,
        complete,
        tx_hex,
        txid: intent.txid(),
        signed_inputs: intent.jobs.iter().map(|j| j.input).collect(),
    })
}

/// Recomputes every sighash from `psbt` and checks each of our signatures in it.
fn verify_all(psbt: &Psbt, intent: &SpendIntent) -> Result<(), VerificationFailure> {
    let prevouts = (0..psbt.inputs.len())
        .map(|i| spent_output(psbt, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    for job in &intent.jobs {
        let i = job.input;
        let bad = |what: &str| fail(format!("inputs[{i}]: {what}"));
        match job.kind {
            ScriptKind::P2wpkh => {
                let hash = cache
                    .p2wpkh_signature_hash(
                        i,
                        &prevouts[i].script_pubkey,
                        prevouts[i].value,
                        EcdsaSighashType::All,
                    )
                    .map_err(|e| bad(&e.to_string()))?;
                let sig = psbt.inputs[i]
                    .partial_sigs
                    .get(&PublicKey::new(job.public_key))
                    .ok_or_else(|| bad("signature missing after re-decode"))?;
                let msg = Message::from_digest(hash.to_byte_array());
                secp()
                    .verify_ecdsa(&msg, &sig.signature, &job.public_key)
                    .map_err(|_| {
                        bad("ECDSA signature does not verify against the re-derived key")
                    })?;
            }
            ScriptKind::P2tr => {
                let hash = cache
                    .taproot_key_spend_signature_hash(
                        i,
                        &Prevouts::All(&prevouts),
                        TapSighashType::Default,
                    )
                    .map_err(|e| bad(&e.to_string()))?;
                let sig = psbt.inputs[i]
                    .tap_key_sig
                    .ok_or_else(|| bad("signature missing after re-decode"))?;
                // The output key in the scriptPubKey, which decode proved is our key tweaked.
                let output_key = prevouts[i]
                    .script_pubkey
                    .as_bytes()
                    .get(2..34)
                    .and_then(|k| XOnlyPublicKey::from_slice(k).ok())
                    .ok_or_else(|| bad("bad taproot output key"))?;
                let msg = Message::from_digest(hash.to_byte_array());
                secp()
                    .verify_schnorr(&sig.signature, &msg, &output_key)
                    .map_err(|_| bad("Schnorr signature does not verify against the output key"))?;
            }
        }
    }
    Ok(())
}

/// BIP174 Input Finalizer for our inputs; false (and nothing changed) unless every input ends
/// up final.
fn finalize_inputs(psbt: &mut Psbt, intent: &SpendIntent) -> bool {
    let mine: Vec<usize> = intent.jobs.iter().map(|j| j.input).collect();
    let others_final = intent
        .inputs
        .iter()
        .enumerate()
        .all(|(i, f)| mine.contains(&i) || f.already_final);
    if !others_final {
        return false;
    }
    for job in &intent.jobs {
        let input = &mut psbt.inputs[job.input];
        let witness = match job.kind {
            ScriptKind::P2wpkh => {
                let Some(sig) = input.partial_sigs.get(&PublicKey::new(job.public_key)) else {
                    return false;
                };
                Witness::p2wpkh(sig, &job.public_key)
            }
            ScriptKind::P2tr => {
                let Some(sig) = input.tap_key_sig else {
                    return false;
                };
                Witness::p2tr_key_spend(&sig)
            }
        };
        let utxo = (input.non_witness_utxo.take(), input.witness_utxo.take());
        *input = bitcoin::psbt::Input {
            non_witness_utxo: utxo.0,
            witness_utxo: utxo.1,
            final_script_witness: Some(witness),
            unknown: std::mem::take(&mut input.unknown),
            proprietary: std::mem::take(&mut input.proprietary),
            ..Default::default()
        };
    }
    true
}
