//! Decode, sign, pass 2 and independent verification by Bitcoin Core's script interpreter
//! (`bitcoinconsensus`).

use bitcoin::{Amount, Network, Transaction, TxOut};
use keyguard_chain::{Rejection, Signature};

use crate::testkit::{build_psbt, foreign_script, to_base64, OurInput, TestWallet};
use crate::wallet::{descriptor_checksum, ScriptKind};
use crate::{decode, finalize, BitcoinPolicy, OutputClass, SpendIntent};

pub(crate) const SEED: [u8; 32] = [0x42; 32];

/// The clock the rules see in these tests: Monday 2026-11-23 12:00 UTC.
pub(crate) const NOW_MS: u64 = 20_780 * 86_400_000 + 12 * 3_600_000;

pub(crate) fn wallet() -> TestWallet {
    TestWallet::new(&SEED, Network::Regtest)
}

pub(crate) fn policy(extra: &str) -> BitcoinPolicy {
    let text = format!(
        "network = \"regtest\"\ndestinations = \"any\"\nmax_spend_per_tx = \"1 btc\"\n\
         max_fee = \"0.001 btc\"\nmax_feerate_sat_vb = 200\n{extra}"
    );
    toml::from_str(&text).expect("policy parses")
}

pub(crate) fn sign_all(tw: &TestWallet, intent: &SpendIntent) -> Vec<Signature> {
    intent.jobs.iter().map(|j| tw.sign(j)).collect()
}

/// Verifies every input of `tx` with Bitcoin Core's interpreter (all soft forks incl. taproot).
pub(crate) fn consensus_verify(tx: &Transaction, prevouts: &[TxOut]) -> Result<(), String> {
    let bytes = bitcoin::consensus::serialize(tx);
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

fn mixed_inputs() -> Vec<OurInput> {
    vec![
        OurInput {
            kind: ScriptKind::P2wpkh,
            index: 0,
            sat: 60_000,
        },
        OurInput {
            kind: ScriptKind::P2tr,
            index: 3,
            sat: 50_000,
        },
    ]
}

/// Decodes, checks the policy, signs with the reference signer, finalizes.
pub(crate) fn sign_b64(
    tw: &TestWallet,
    b64: &str,
    p: &BitcoinPolicy,
) -> Result<crate::SignedPsbt, Rejection> {
    let intent = decode(b64, &tw.wallet)?;
    p.check(&intent, NOW_MS)?;
    let sigs = sign_all(tw, &intent);
    Ok(finalize(&intent, &sigs, true).expect("pass 2"))
}

#[test]
fn signed_p2wpkh_and_p2tr_inputs_verify_in_bitcoin_core() {
    let tw = wallet();
    let psbt = build_psbt(
        &tw,
        &mixed_inputs(),
        &[(foreign_script(9), 70_000)],
        Some((ScriptKind::P2tr, 0, 39_000)),
    );
    let prevouts: Vec<TxOut> = psbt
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    let signed = sign_b64(&tw, &to_base64(&psbt), &policy("")).unwrap();
    assert!(signed.complete);
    assert_eq!(signed.signed_inputs, vec![0, 1]);
    let tx: Transaction =
        bitcoin::consensus::encode::deserialize_hex(signed.tx_hex.as_ref().unwrap()).unwrap();
    consensus_verify(&tx, &prevouts).unwrap();

    // Tampering with an input amount must break verification: both the segwit v0 signature
    // (commits to its own amount) and the taproot one (commits to all amounts).
    for i in 0..2 {
        let mut lied = prevouts.clone();
        lied[i].value += Amount::from_sat(1);
        assert!(
            consensus_verify(&tx, &lied).is_err(),
            "amount of input {i} changed and still valid"
        );
    }
}

#[test]
fn unfinalized_psbt_carries_partial_signatures() {
    let tw = wallet();
    let psbt = build_psbt(&tw, &mixed_inputs(), &[(foreign_script(9), 70_000)], None);
    let intent = decode(&to_base64(&psbt), &tw.wallet).unwrap();
    let signed = finalize(&intent, &sign_all(&tw, &intent), false).unwrap();
    assert!(!signed.complete && signed.tx_hex.is_none());
    let (back, _) = crate::parse_psbt(&signed.psbt).unwrap();
    assert_eq!(back.inputs[0].partial_sigs.len(), 1);
    assert!(back.inputs[1].tap_key_sig.is_some());
}

#[test]
fn an_input_of_ours_finalized_by_someone_else_is_refused() {
    let tw = wallet();
    let mut psbt = build_psbt(&tw, &mixed_inputs(), &[(foreign_script(9), 70_000)], None);
    psbt.inputs[1].final_script_witness = Some(bitcoin::Witness::from_slice(&[[1u8; 64]]));
    match decode(&to_base64(&psbt), &tw.wallet) {
        Err(Rejection::InvalidParams { field, .. }) => assert_eq!(field, "inputs[1]"),
        other => panic!("expected a refusal naming inputs[1], got {other:?}"),
    }
}

#[test]
fn psbt_v2_round_trips_and_verifies() {
    let tw = wallet();
    let psbt = build_psbt(
        &tw,
        &mixed_inputs(),
        &[(foreign_script(9), 70_000)],
        Some((ScriptKind::P2wpkh, 1, 39_000)),
    );
    let prevouts: Vec<TxOut> = psbt
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    let v2 = crate::v2::v0_to_v2_fresh(&psbt.serialize());
    use bitcoin::base64::prelude::{Engine as _, BASE64_STANDARD};
    let b64 = BASE64_STANDARD.encode(&v2);
    let intent = decode(&b64, &tw.wallet).unwrap();
    assert!(matches!(intent.format, crate::PsbtFormat::V2(_)));
    assert_eq!(intent.txid(), psbt.unsigned_tx.compute_txid());
    policy("").check(&intent, NOW_MS).unwrap();
    let signed = finalize(&intent, &sign_all(&tw, &intent), true).unwrap();
    let out = BASE64_STANDARD.decode(&signed.psbt).unwrap();
    let (_, version) = crate::v2::parse_raw(&out).unwrap();
    assert_eq!(version, 2, "answer comes back as v2");
    let tx: Transaction =
        bitcoin::consensus::encode::deserialize_hex(signed.tx_hex.as_ref().unwrap()).unwrap();
    consensus_verify(&tx, &prevouts).unwrap();
}

#[test]
fn pass_two_refuses_a_wrong_or_swapped_signature() {
    let tw = wallet();
    let psbt = build_psbt(&tw, &mixed_inputs(), &[(foreign_script(9), 70_000)], None);
    let intent = decode(&to_base64(&psbt), &tw.wallet).unwrap();
    let mut sigs = sign_all(&tw, &intent);
    let other = TestWallet::new(&[1; 32], Network::Regtest);
    sigs[0] = other.sign(&intent.jobs[0]);
    assert!(finalize(&intent, &sigs, true).is_err());
    let mut sigs = sign_all(&tw, &intent);
    if let Signature::Bip340(b) = &mut sigs[1] {
        b[10] ^= 1;
    }
    assert!(finalize(&intent, &sigs, true).is_err());
    assert!(finalize(&intent, &sign_all(&tw, &intent)[..1], true).is_err());
}

#[test]
fn change_is_recognised_and_excluded_from_spend() {
    let tw = wallet();
    let psbt = build_psbt(
        &tw,
        &mixed_inputs(),
        &[(foreign_script(9), 70_000)],
        Some((ScriptKind::P2wpkh, 5, 39_000)),
    );
    let intent = decode(&to_base64(&psbt), &tw.wallet).unwrap();
    assert_eq!(intent.outputs[1].class, OutputClass::Change { index: 5 });
    assert_eq!(intent.fee().to_sat(), 1_000);
    assert_eq!(intent.spend().to_sat(), 71_000);
}

#[test]
fn strict_parsing_refuses_garbage_duplicates_and_trailing_bytes() {
    let tw = wallet();
    for bad in ["", "not base64!", "cHNidP8=", "AAAA"] {
        assert!(
            matches!(
                decode(bad, &tw.wallet),
                Err(Rejection::InvalidParams { .. })
            ),
            "{bad}"
        );
    }
    let psbt = build_psbt(&tw, &mixed_inputs(), &[(foreign_script(9), 70_000)], None);
    let mut bytes = psbt.serialize();
    bytes.push(0);
    assert!(
        crate::decode::parse_psbt_bytes(&bytes).is_err(),
        "trailing byte accepted"
    );
    // A duplicated global unknown key: insert the same pair twice after the unsigned tx.
    let bytes = psbt.serialize();
    let tx_len = bitcoin::consensus::serialize(&psbt.unsigned_tx).len();
    let global_end = 5 + 1 + 1 + varint_len(tx_len) + tx_len;
    let mut dup = bytes[..global_end].to_vec();
    for _ in 0..2 {
        dup.extend_from_slice(&[2, 0xf0, 1, 1, 7]);
    }
    dup.extend_from_slice(&bytes[global_end..]);
    let err = crate::decode::parse_psbt_bytes(&dup).unwrap_err();
    assert!(err.to_string().contains("duplicate"), "{err}");
}

fn varint_len(n: usize) -> usize {
    if n < 0xfd {
        1
    } else {
        3
    }
}

#[test]
fn descriptors_have_core_checksums() {
    // BIP380 test vector.
    assert_eq!(descriptor_checksum("raw(deadbeef)").unwrap(), "89f8spxm");
    let tw = wallet();
    let d = tw.wallet.descriptors();
    assert!(
        d[0].0.starts_with("wpkh([")
            && d[0].0.contains("/84h/1h/0h]tpub")
            && d[0].0.contains("/0/*)#")
    );
    assert!(d[1].1.starts_with("tr([") && d[1].1.contains("/1/*)#"));
}

#[test]
fn decoder_survives_arbitrary_bytes() {
    // Corpus replay: every prefix and single-byte mutation of a valid PSBT (v0 and v2) must
    // decode or be refused, never panic.
    let tw = wallet();
    let psbt = build_psbt(
        &tw,
        &mixed_inputs(),
        &[(foreign_script(9), 70_000)],
        Some((ScriptKind::P2tr, 1, 39_000)),
    );
    let v0 = psbt.serialize();
    let v2 = crate::v2::v0_to_v2_fresh(&v0);
    for valid in [v0, v2] {
        for cut in 0..valid.len() {
            let _ = crate::decode::parse_psbt_bytes(&valid[..cut]);
        }
        for pos in (0..valid.len()).step_by(3) {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut m = valid.clone();
                m[pos] ^= flip;
                if let Ok((p, f)) = crate::decode::parse_psbt_bytes(&m) {
                    let _ = crate::decode::decode_parsed(p, f, &tw.wallet);
                }
            }
        }
    }
}
