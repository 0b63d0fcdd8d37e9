//! The time window and approval threshold in a policy, and non-HD (HSM-style) single keys:
//! signed P2WPKH inputs verified by Bitcoin Core's interpreter, taproot refused by name.

use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::Amount;
use keyguard_chain::{Rejection, Signature, SigningPayload};

use crate::single::SingleKey;
use crate::testkit::{build_psbt, build_single_psbt, foreign_script, to_base64, OurInput};
use crate::tests::{consensus_verify, policy, wallet, NOW_MS};
use crate::wallet::{descriptor_checksum, ScriptKind, Wallet};
use crate::{decode, finalize, OutputClass};

fn rule_of(r: Result<(), Rejection>) -> (&'static str, String) {
    match r {
        Err(Rejection::Policy { rule, field, .. }) => (rule, field),
        other => panic!("expected a policy refusal, got {other:?}"),
    }
}

fn seed_intent(pay_sat: u64) -> crate::SpendIntent {
    let tw = wallet();
    let psbt = build_psbt(
        &tw,
        &[OurInput {
            kind: ScriptKind::P2wpkh,
            index: 1,
            sat: 100_000_000,
        }],
        &[(foreign_script(9), pay_sat)],
        Some((ScriptKind::P2wpkh, 0, 100_000_000 - pay_sat - 1_000)),
    );
    decode(&to_base64(&psbt), &tw.wallet).expect("decodes")
}

#[test]
fn time_window_is_checked_first_with_the_injected_clock() {
    let p = policy(r#"time_window = { days = ["mon"], hours = "09:00-17:00" }"#);
    let intent = seed_intent(60_000);
    p.check(&intent, NOW_MS).expect("monday noon is inside");
    assert_eq!(
        rule_of(p.check(&intent, NOW_MS + 6 * 3_600_000)),
        ("bitcoin.time_window", "time".into())
    );
    assert_eq!(
        rule_of(p.check(&intent, NOW_MS + 86_400_000)),
        ("bitcoin.time_window", "time".into()),
        "tuesday"
    );
    // Same instant, local time 20:00 at UTC+08:00: refused.
    let east = policy(r#"time_window = { hours = "09:00-17:00", utc_offset = "+08:00" }"#);
    assert_eq!(
        rule_of(east.check(&intent, NOW_MS)).0,
        "bitcoin.time_window"
    );
}

#[test]
fn approval_threshold_counts_the_spend_fee_included() {
    let p = policy(
        r#"require_approval = { above = "0.5 btc", approvers = 2, group = "treasury", within = "1h" }"#,
    );
    assert!(p.approval_needed(&seed_intent(40_000_000)).is_none());
    // 0.5 BTC paid plus the fee is above 0.5 BTC.
    let big = seed_intent(50_000_000);
    let rule = p.approval_needed(&big).expect("needs approval");
    assert_eq!((rule.approvers, rule.group.as_str()), (2, "treasury"));
    let view = crate::approval::approver_view(&big);
    assert_eq!(view["chain"], "bitcoin:regtest");
    assert_eq!(view["destinations"][0]["sat"], 50_000_000);
    assert_eq!(view["destinations"][0]["output"], 0);
    assert_eq!(view["fee_sat"], 1_000);
    assert_eq!(view["spend_sat"], 50_001_000);
    // The approval binds to the transaction: a different payment is different bytes.
    assert_ne!(
        crate::approval::approval_bytes(&big),
        crate::approval::approval_bytes(&seed_intent(50_000_001))
    );
    assert_eq!(
        crate::approval::approval_bytes(&big),
        crate::approval::approval_bytes(&seed_intent(50_000_000))
    );
}

fn hsm_key() -> (SecretKey, bitcoin::secp256k1::PublicKey, Wallet) {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&[0x5a; 32]).unwrap();
    let pk = sk.public_key(&secp);
    let wallet = Wallet::single(
        bitcoin::Network::Regtest,
        SingleKey {
            public_key: pk,
            no_taproot: "PKCS#11 has no BIP340 Schnorr mechanism".into(),
        },
    );
    (sk, pk, wallet)
}

fn ecdsa(sk: &SecretKey, payload: &SigningPayload) -> Signature {
    let SigningPayload::Secp256k1Prehash(digest) = payload else {
        panic!("single keys sign ECDSA only");
    };
    let sig = Secp256k1::new()
        .sign_ecdsa(&Message::from_digest(*digest), sk)
        .serialize_compact();
    let (mut r, mut s) = ([0u8; 32], [0u8; 32]);
    r.copy_from_slice(&sig[..32]);
    s.copy_from_slice(&sig[32..]);
    Signature::Secp256k1 {
        r,
        s,
        recovery_id: 0,
    }
}

#[test]
fn single_key_signs_p2wpkh_with_change_back_to_itself() {
    let (sk, pk, wallet) = hsm_key();
    let psbt = build_single_psbt(
        &pk,
        &[(ScriptKind::P2wpkh, 70_000), (ScriptKind::P2wpkh, 50_000)],
        &[(foreign_script(3), 80_000)],
        Some(39_000),
    );
    let intent = decode(&to_base64(&psbt), &wallet).expect("decodes");
    assert_eq!(intent.jobs.len(), 2);
    assert!(intent.jobs.iter().all(|j| j.path.is_empty()));
    assert_eq!(intent.outputs[1].class, OutputClass::Change { index: 0 });
    assert_eq!(intent.spend(), Amount::from_sat(81_000));
    policy("").check(&intent, NOW_MS).expect("policy");
    let sigs: Vec<_> = intent.jobs.iter().map(|j| ecdsa(&sk, &j.payload)).collect();
    let signed = finalize(&intent, &sigs, true).expect("pass 2");
    let hex = signed.tx_hex.expect("finalized");
    let tx: bitcoin::Transaction =
        bitcoin::consensus::deserialize(&hex::decode(hex).unwrap()).unwrap();
    let prevouts: Vec<_> = intent
        .inputs
        .iter()
        .map(|i| bitcoin::TxOut {
            value: i.amount,
            script_pubkey: i.script_pubkey.clone(),
        })
        .collect();
    consensus_verify(&tx, &prevouts).expect("Bitcoin Core accepts the signatures");
    // Tampering with an input amount breaks verification.
    let mut wrong = prevouts.clone();
    wrong[0].value = Amount::from_sat(70_001);
    assert!(consensus_verify(&tx, &wrong).is_err());

    let desc = wallet.descriptors()[0].0.clone();
    let body = format!("wpkh({pk})");
    assert_eq!(
        desc,
        format!("{body}#{}", descriptor_checksum(&body).unwrap())
    );
}

#[test]
fn single_key_taproot_input_is_refused_by_name() {
    let (_, pk, wallet) = hsm_key();
    let psbt = build_single_psbt(
        &pk,
        &[(ScriptKind::P2wpkh, 70_000), (ScriptKind::P2tr, 50_000)],
        &[(foreign_script(3), 110_000)],
        None,
    );
    match decode(&to_base64(&psbt), &wallet) {
        Err(Rejection::Policy {
            rule,
            field,
            reason,
            ..
        }) => {
            assert_eq!((rule, field.as_str()), ("bitcoin.script_type", "inputs[1]"));
            assert!(reason.contains("BIP340"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn single_key_claimed_under_another_script_is_refused() {
    let (_, pk, wallet) = hsm_key();
    let mut psbt = build_single_psbt(
        &pk,
        &[(ScriptKind::P2wpkh, 70_000)],
        &[(foreign_script(3), 60_000)],
        None,
    );
    // The previous output pays someone else, but the PSBT claims our key for it.
    let other = foreign_script(4);
    let prev = psbt.inputs[0].non_witness_utxo.as_mut().unwrap();
    prev.output[0].script_pubkey = other;
    let txid = prev.compute_txid();
    psbt.inputs[0].witness_utxo = Some(prev.output[0].clone());
    psbt.unsigned_tx.input[0].previous_output.txid = txid;
    assert_eq!(
        rule_of(decode(&to_base64(&psbt), &wallet).map(|_| ())),
        ("bitcoin.key_derivation", "inputs[0]".into())
    );
}
