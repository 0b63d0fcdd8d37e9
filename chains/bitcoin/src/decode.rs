//! Pass 1: base64 PSBT -> [`SpendIntent`]. Every amount is proven, every key we would sign
//! with is re-derived, every output is classified as change or spend, and every sighash is
//! computed here from the parsed transaction (never taken from the client).

use bitcoin::base64::prelude::{Engine as _, BASE64_STANDARD};
use bitcoin::psbt::Psbt;
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::{Address, Amount, NetworkKind, TxOut};
use keyguard_chain::{Rejection, SigningPayload};

use crate::rules::rule;
use crate::v2::{self, V2Fields};
use crate::wallet::{ScriptKind, Wallet};
use crate::{InputFacts, OutputClass, OutputFacts, SignJob, SpendIntent};

/// Largest PSBT accepted (decoded bytes); bounds memory and parse time per request.
pub const MAX_PSBT_BYTES: usize = 1 << 20;

fn invalid(reason: impl Into<String>) -> Rejection {
    Rejection::invalid("psbt", reason)
}

/// The PSBT's wire version, and what converting back to it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PsbtFormat {
    /// BIP174.
    V0,
    /// BIP370, with its own fields kept aside.
    V2(V2Fields),
}

/// Strict parse of a base64 PSBT of either version into the typed v0 form.
pub fn parse_psbt(base64: &str) -> Result<(Psbt, PsbtFormat), Rejection> {
    if base64.len() > MAX_PSBT_BYTES * 4 / 3 + 4 {
        return Err(invalid(format!("larger than {MAX_PSBT_BYTES} bytes")));
    }
    let bytes = BASE64_STANDARD
        .decode(base64.trim())
        .map_err(|e| invalid(format!("not base64: {e}")))?;
    parse_psbt_bytes(&bytes)
}

/// [`parse_psbt`] on raw bytes.
pub fn parse_psbt_bytes(bytes: &[u8]) -> Result<(Psbt, PsbtFormat), Rejection> {
    if bytes.len() > MAX_PSBT_BYTES {
        return Err(invalid(format!("larger than {MAX_PSBT_BYTES} bytes")));
    }
    let (raw, version) = v2::parse_raw(bytes).map_err(|e| invalid(e.0))?;
    let (v0, format) = match version {
        0 => (bytes.to_vec(), PsbtFormat::V0),
        _ => {
            let (v0, fields) = v2::v2_to_v0(&raw).map_err(|e| invalid(e.0))?;
            (v0, PsbtFormat::V2(fields))
        }
    };
    let psbt = Psbt::deserialize(&v0).map_err(|e| invalid(e.to_string()))?;
    Ok((psbt, format))
}

/// Serializes a PSBT back to base64 in the format it arrived in.
pub fn encode_psbt(psbt: &Psbt, format: &PsbtFormat) -> Result<String, String> {
    let v0 = psbt.serialize();
    let bytes = match format {
        PsbtFormat::V0 => v0,
        PsbtFormat::V2(fields) => v2::v0_to_v2(&v0, fields).map_err(|e| e.0)?,
    };
    Ok(BASE64_STANDARD.encode(bytes))
}

/// The spent output of input `i`, proven. Segwit v0 signatures commit only to their own
/// input's amount (BIP143), so a lying `witness_utxo` could make us pay a huge fee: the full
/// previous transaction is required and its txid must match. Taproot signatures commit to
/// every input's amount and script (BIP341), so the `witness_utxo` suffices there.
pub(crate) fn spent_output(psbt: &Psbt, i: usize) -> Result<TxOut, Rejection> {
    let field = format!("inputs[{i}]");
    let refuse = |reason: String| Rejection::policy(rule::INPUT_AMOUNT_PROOF, &field, reason);
    let (txin, input) = (&psbt.unsigned_tx.input[i], &psbt.inputs[i]);
    if let Some(prev) = &input.non_witness_utxo {
        if prev.compute_txid() != txin.previous_output.txid {
            return Err(refuse(
                "non_witness_utxo does not hash to the spent txid".into(),
            ));
        }
        let out = prev
            .output
            .get(txin.previous_output.vout as usize)
            .ok_or_else(|| refuse("spent output index beyond non_witness_utxo".into()))?;
        if input.witness_utxo.as_ref().is_some_and(|w| w != out) {
            return Err(refuse("witness_utxo contradicts non_witness_utxo".into()));
        }
        return Ok(out.clone());
    }
    match &input.witness_utxo {
        Some(out) if out.script_pubkey.is_p2tr() => Ok(out.clone()),
        Some(_) => Err(refuse(
            "segwit v0 input without non_witness_utxo (BIP143 fee attack)".into(),
        )),
        None => Err(refuse("no UTXO for this input".into())),
    }
}

/// Decodes and classifies a PSBT against the wallet. Fails on anything malformed or unproven;
/// policy limits are checked afterwards by [`crate::BitcoinPolicy::check`].
pub fn decode(base64: &str, wallet: &Wallet) -> Result<SpendIntent, Rejection> {
    let (psbt, format) = parse_psbt(base64)?;
    decode_parsed(psbt, format, wallet)
}

/// [`decode`] for an already parsed PSBT.
pub fn decode_parsed(
    psbt: Psbt,
    format: PsbtFormat,
    wallet: &Wallet,
) -> Result<SpendIntent, Rejection> {
    let expected = NetworkKind::from(wallet.network);
    for xpub in psbt.xpub.keys() {
        if xpub.network != expected {
            return Err(Rejection::policy(
                rule::NETWORK,
                "global.xpub",
                format!("xpub {xpub} is not for {}", wallet.network),
            ));
        }
    }
    if psbt.unsigned_tx.input.is_empty() || psbt.unsigned_tx.output.is_empty() {
        return Err(invalid("transaction has no inputs or no outputs"));
    }
    duplicate_inputs(&psbt)?;
    let prevouts = (0..psbt.inputs.len())
        .map(|i| spent_output(&psbt, i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut inputs = Vec::with_capacity(prevouts.len());
    let mut jobs = Vec::new();
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    for (i, prev) in prevouts.iter().enumerate() {
        let owner = input_owner(&psbt, i, prev, wallet)?;
        let already_final = psbt.inputs[i].final_script_witness.is_some()
            || psbt.inputs[i].final_script_sig.is_some();
        // One of our inputs that already carries a final witness was finalized by someone
        // else: signing it too would hand out a signature the returned PSBT cannot use (its
        // finalizer keeps the foreign witness), and BIP174 signers skip such inputs. Refused so
        // the caller sees the conflict instead of a PSBT that silently does not complete.
        if owner.is_some() && already_final {
            return Err(Rejection::invalid(
                format!("inputs[{i}]"),
                "already finalized; keyguard does not sign an input another signer finalized",
            ));
        }
        if let Some((kind, pos)) = &owner {
            let payload = sighash(&mut cache, &psbt, i, *kind, &prevouts)?;
            jobs.push(SignJob {
                input: i,
                kind: *kind,
                path: pos.path.clone(),
                public_key: pos.public_key,
                payload,
            });
        }
        inputs.push(InputFacts {
            amount: prev.value,
            script_pubkey: prev.script_pubkey.clone(),
            ours: owner.map(|(kind, _)| kind),
            already_final,
        });
    }
    let outputs = (0..psbt.outputs.len())
        .map(|o| classify_output(&psbt, o, wallet))
        .collect::<Result<Vec<_>, _>>()?;
    let intent = SpendIntent {
        psbt,
        format,
        network: wallet.network,
        inputs,
        outputs,
        jobs,
    };
    intent.fee_checked()?;
    Ok(intent)
}

/// One outpoint spent twice: consensus-invalid (CVE-2018-17144), and counted twice by every
/// amount rule; refused by name before anything is summed.
fn duplicate_inputs(psbt: &Psbt) -> Result<(), Rejection> {
    let mut seen = std::collections::HashMap::new();
    for (i, txin) in psbt.unsigned_tx.input.iter().enumerate() {
        if let Some(first) = seen.insert(txin.previous_output, i) {
            return Err(Rejection::policy(
                rule::DUPLICATE_INPUT,
                format!("inputs[{i}]"),
                format!("spends {} again (inputs[{first}])", txin.previous_output),
            ));
        }
    }
    Ok(())
}

/// Whether input `i` is ours, and if so by which re-derived key. A key origin under our
/// fingerprint that does not re-derive to this input's script is refused outright: it is
/// either a broken wallet or an attempt to make us sign for a script we do not control.
fn input_owner(
    psbt: &Psbt,
    i: usize,
    prev: &TxOut,
    wallet: &Wallet,
) -> Result<Option<(ScriptKind, crate::wallet::KeyPosition)>, Rejection> {
    if let Some(key) = &wallet.single {
        return crate::single::input_owner(psbt, i, prev, key);
    }
    let input = &psbt.inputs[i];
    let field = format!("inputs[{i}]");
    let claims_ours = input
        .bip32_derivation
        .values()
        .chain(input.tap_key_origins.values().map(|(_, src)| src))
        .any(|(fp, _)| *fp == wallet.fingerprint);
    if !claims_ours {
        return Ok(None);
    }
    let refuse = |rule, reason: &str| Err(Rejection::policy(rule, &field, reason));
    let spk = &prev.script_pubkey;
    if spk.is_p2wpkh() {
        for (pk, (fp, path)) in &input.bip32_derivation {
            let Some(pos) = wallet.locate(*fp, path) else {
                continue;
            };
            if wallet.accounts[pos.account].kind != ScriptKind::P2wpkh {
                continue;
            }
            if pos.public_key != *pk || ScriptKind::P2wpkh.script_for(pk) != *spk {
                return refuse(
                    rule::KEY_DERIVATION,
                    "key origin does not re-derive to this script",
                );
            }
            if input.redeem_script.is_some() || input.witness_script.is_some() {
                return refuse(
                    rule::SCRIPT_TYPE,
                    "p2wpkh input with a redeem or witness script",
                );
            }
            return Ok(Some((ScriptKind::P2wpkh, pos)));
        }
    } else if spk.is_p2tr() {
        if input.tap_merkle_root.is_some() || !input.tap_scripts.is_empty() {
            return refuse(rule::SCRIPT_TYPE, "taproot script paths are not signed");
        }
        for (xonly, (leaves, (fp, path))) in &input.tap_key_origins {
            let Some(pos) = wallet.locate(*fp, path) else {
                continue;
            };
            if wallet.accounts[pos.account].kind != ScriptKind::P2tr {
                continue;
            }
            let derived = bitcoin::XOnlyPublicKey::from(pos.public_key);
            if !leaves.is_empty()
                || derived != *xonly
                || input.tap_internal_key.is_some_and(|k| k != derived)
                || ScriptKind::P2tr.script_for(&pos.public_key) != *spk
            {
                return refuse(
                    rule::KEY_DERIVATION,
                    "key origin does not re-derive to this script (taproot tweak included)",
                );
            }
            return Ok(Some((ScriptKind::P2tr, pos)));
        }
    } else {
        return refuse(
            rule::SCRIPT_TYPE,
            "only p2wpkh and p2tr key-path inputs are signed",
        );
    }
    refuse(
        rule::KEY_DERIVATION,
        "names our fingerprint but no registered account re-derives it",
    )
}

/// The digest to sign for our input `i`. Only ALL (segwit v0) and DEFAULT (taproot) are
/// accepted: NONE/SINGLE/ANYONECANPAY leave outputs or inputs open, so whoever holds the
/// signature can redirect the funds.
fn sighash(
    cache: &mut SighashCache<&bitcoin::Transaction>,
    psbt: &Psbt,
    i: usize,
    kind: ScriptKind,
    prevouts: &[TxOut],
) -> Result<SigningPayload, Rejection> {
    let field = format!("inputs[{i}].sighash_type");
    let refuse = |reason: String| Rejection::policy(rule::SIGHASH_TYPE, &field, reason);
    let requested = psbt.inputs[i].sighash_type;
    match kind {
        ScriptKind::P2wpkh => {
            let ty = requested.map_or(Ok(EcdsaSighashType::All), |t| t.ecdsa_hash_ty());
            if ty != Ok(EcdsaSighashType::All) {
                return Err(refuse(format!("{requested:?} is not ALL")));
            }
            let hash = cache
                .p2wpkh_signature_hash(
                    i,
                    &prevouts[i].script_pubkey,
                    prevouts[i].value,
                    EcdsaSighashType::All,
                )
                .map_err(|e| invalid(format!("inputs[{i}]: {e}")))?;
            Ok(SigningPayload::Secp256k1Prehash(
                bitcoin::hashes::Hash::to_byte_array(hash),
            ))
        }
        ScriptKind::P2tr => {
            let ty = requested.map_or(Ok(TapSighashType::Default), |t| t.taproot_hash_ty());
            if ty != Ok(TapSighashType::Default) {
                return Err(refuse(format!("{requested:?} is not DEFAULT")));
            }
            let hash = cache
                .taproot_key_spend_signature_hash(
                    i,
                    &Prevouts::All(prevouts),
                    TapSighashType::Default,
                )
                .map_err(|e| invalid(format!("inputs[{i}]: {e}")))?;
            Ok(SigningPayload::TaprootKeySpend {
                sighash: bitcoin::hashes::Hash::to_byte_array(hash),
                merkle_root: None,
            })
        }
    }
}

/// Change is only what re-derives on our internal chain within the gap, with the script that
/// key makes and no hidden taproot tree. Anything else is a spend, whatever the PSBT claims;
/// a claim under our fingerprint that is provably false is refused ([`crate::change`]).
fn classify_output(psbt: &Psbt, o: usize, wallet: &Wallet) -> Result<OutputFacts, Rejection> {
    let txout = &psbt.unsigned_tx.output[o];
    let spk = &txout.script_pubkey;
    let meta = &psbt.outputs[o];
    let class = if spk.is_op_return() {
        OutputClass::OpReturn {
            data_len: spk.len(),
        }
    } else if let Some(index) = crate::change::change_index(meta, spk, wallet, o)? {
        OutputClass::Change { index }
    } else {
        OutputClass::Spend {
            address: Address::from_script(spk, wallet.network)
                .ok()
                .map(|a| a.to_string()),
        }
    };
    Ok(OutputFacts {
        amount: txout.value,
        script_pubkey: spk.clone(),
        class,
    })
}

/// Witness weight counted for an input: ours at worst-case signature sizes; a foreign input's
/// final witness at its real size but never above the standard witness of its script type
/// (a foreign signer can pad its witness to make our fee rate look low, then re-finalize it
/// smaller with the same txid: counting the smaller size keeps `max_feerate` honest).
fn witness_weight(intent: &SpendIntent, i: usize) -> u64 {
    const P2WPKH: u64 = 1 + 1 + 73 + 1 + 33;
    const P2TR_KEY: u64 = 1 + 1 + 64;
    let facts = &intent.inputs[i];
    match (&intent.psbt.inputs[i].final_script_witness, facts.ours) {
        (_, Some(ScriptKind::P2wpkh)) => P2WPKH,
        (_, Some(ScriptKind::P2tr)) => P2TR_KEY,
        (Some(w), None) => {
            let standard = if facts.script_pubkey.is_p2tr() {
                P2TR_KEY
            } else {
                P2WPKH
            };
            (w.size() as u64).min(standard)
        }
        (None, None) => P2WPKH,
    }
}

/// Estimated virtual size once our inputs carry their witnesses (worst-case signature sizes).
pub(crate) fn estimated_vsize(intent: &SpendIntent) -> u64 {
    let tx = &intent.psbt.unsigned_tx;
    let mut weight = tx.weight().to_wu() + 2; // segwit marker and flag
    for i in 0..intent.inputs.len() {
        weight += witness_weight(intent, i);
    }
    weight.div_ceil(4)
}

/// Sums amounts with overflow and MAX_MONEY checks.
pub(crate) fn sum(mut amounts: impl Iterator<Item = Amount>) -> Option<Amount> {
    amounts
        .try_fold(Amount::ZERO, |acc, a| acc.checked_add(a))
        .filter(|a| *a <= Amount::MAX_MONEY)
}
