//! One test per policy rule; each asserts the rule name and the input/output index refused.

use bitcoin::psbt::Psbt;
use bitcoin::{Amount, Network, ScriptBuf, Sequence};
use keyguard_chain::Rejection;

use crate::testkit::{build_psbt, foreign_script, to_base64, OurInput, TestWallet};
use crate::tests::{policy, sign_b64, wallet};
use crate::wallet::ScriptKind;
use crate::{decode, BitcoinPolicy};

const WPKH: ScriptKind = ScriptKind::P2wpkh;
const TR: ScriptKind = ScriptKind::P2tr;

fn one_in(kind: ScriptKind, sat: u64) -> Vec<OurInput> {
    vec![OurInput {
        kind,
        index: 1,
        sat,
    }]
}

fn base(tw: &TestWallet) -> Psbt {
    build_psbt(
        tw,
        &one_in(WPKH, 100_000),
        &[(foreign_script(9), 60_000)],
        Some((WPKH, 0, 39_000)),
    )
}

fn refused(tw: &TestWallet, psbt: &Psbt, p: &BitcoinPolicy) -> (&'static str, String) {
    match sign_b64(tw, &to_base64(psbt), p) {
        Err(Rejection::Policy { rule, field, .. }) => (rule, field),
        other => panic!("expected a policy refusal, got {other:?}"),
    }
}

#[test]
fn base_case_passes() {
    let tw = wallet();
    assert!(sign_b64(&tw, &to_base64(&base(&tw)), &policy("")).is_ok());
}

#[test]
fn fee_attack_segwit_v0_without_previous_tx() {
    let tw = wallet();
    let mut psbt = base(&tw);
    psbt.inputs[0].non_witness_utxo = None;
    assert_eq!(
        refused(&tw, &psbt, &policy("")),
        ("bitcoin.input_amount_proof", "inputs[0]".into())
    );
    // A previous transaction that does not hash to the spent txid is the attack itself.
    let mut psbt = base(&tw);
    let prev = psbt.inputs[0].non_witness_utxo.as_mut().unwrap();
    prev.output[0].value = Amount::from_sat(5_000_000);
    psbt.inputs[0].witness_utxo = Some(prev.output[0].clone());
    assert_eq!(
        refused(&tw, &psbt, &policy("")).0,
        "bitcoin.input_amount_proof"
    );
    // witness_utxo contradicting the proven previous output.
    let mut psbt = base(&tw);
    psbt.inputs[0].witness_utxo.as_mut().unwrap().value = Amount::from_sat(1);
    assert_eq!(
        refused(&tw, &psbt, &policy("")).0,
        "bitcoin.input_amount_proof"
    );
}

#[test]
fn taproot_input_needs_its_utxo() {
    let tw = wallet();
    let mut psbt = build_psbt(
        &tw,
        &one_in(TR, 100_000),
        &[(foreign_script(9), 60_000)],
        None,
    );
    psbt.inputs[0].witness_utxo = None;
    assert_eq!(
        refused(&tw, &psbt, &policy("")),
        ("bitcoin.input_amount_proof", "inputs[0]".into())
    );
}

#[test]
fn key_origin_that_does_not_rederive_is_refused() {
    let tw = wallet();
    let mut psbt = base(&tw);
    // Claim our fingerprint with another key's path: the script does not match.
    let (pk, (fp, _)) = psbt.inputs[0].bip32_derivation.pop_first().unwrap();
    psbt.inputs[0]
        .bip32_derivation
        .insert(pk, (fp, tw.path(WPKH, 0, 2)));
    assert_eq!(
        refused(&tw, &psbt, &policy("")),
        ("bitcoin.key_derivation", "inputs[0]".into())
    );
    let mut psbt = build_psbt(
        &tw,
        &one_in(TR, 100_000),
        &[(foreign_script(9), 60_000)],
        None,
    );
    psbt.inputs[0].tap_internal_key = Some(tw.public_key(TR, 0, 7).into());
    assert_eq!(refused(&tw, &psbt, &policy("")).0, "bitcoin.key_derivation");
}

#[test]
fn script_paths_and_disabled_types_are_refused() {
    let tw = wallet();
    let mut psbt = build_psbt(
        &tw,
        &one_in(TR, 100_000),
        &[(foreign_script(9), 60_000)],
        None,
    );
    psbt.inputs[0].tap_merkle_root = Some(bitcoin::TapNodeHash::from_byte_array([1; 32]));
    assert_eq!(
        refused(&tw, &psbt, &policy("")),
        ("bitcoin.script_type", "inputs[0]".into())
    );
    let psbt = build_psbt(
        &tw,
        &one_in(TR, 100_000),
        &[(foreign_script(9), 60_000)],
        None,
    );
    let p = policy("script_types = [\"p2wpkh\"]");
    assert_eq!(
        refused(&tw, &psbt, &p),
        ("bitcoin.script_type", "inputs[0]".into())
    );
}
use bitcoin::hashes::Hash as _;

#[test]
fn foreign_inputs_refused_unless_allowed() {
    let tw = wallet();
    let other = TestWallet::new(&[3; 32], Network::Regtest);
    let inputs = [
        OurInput {
            kind: WPKH,
            index: 0,
            sat: 50_000,
        },
        OurInput {
            kind: WPKH,
            index: 1,
            sat: 50_000,
        },
    ];
    let mut psbt = build_psbt(&tw, &inputs, &[(foreign_script(9), 60_000)], None);
    // Input 1 belongs to another wallet.
    let pk = other.public_key(WPKH, 0, 1);
    psbt.inputs[1].bip32_derivation =
        [(pk, (other.wallet.fingerprint, other.path(WPKH, 0, 1)))].into();
    assert_eq!(
        refused(&tw, &psbt, &policy("")),
        ("bitcoin.foreign_input", "inputs[1]".into())
    );
    let intent = decode(&to_base64(&psbt), &tw.wallet).unwrap();
    let p = BitcoinPolicy {
        allow_foreign_inputs: true,
        max_feerate_sat_vb: 1_000,
        max_fee_percent: 100.0,
        ..policy("")
    };
    p.check(&intent, crate::tests::NOW_MS).unwrap();
    assert_eq!(intent.jobs.len(), 1);
}

#[test]
fn sighash_other_than_all_is_refused() {
    let tw = wallet();
    let mut psbt = base(&tw);
    psbt.inputs[0].sighash_type = Some(bitcoin::EcdsaSighashType::SinglePlusAnyoneCanPay.into());
    let err = decode(&to_base64(&psbt), &tw.wallet).unwrap_err();
    assert!(
        matches!(err, Rejection::Policy { rule: "bitcoin.sighash_type", ref field, .. } if field == "inputs[0].sighash_type")
    );
    let mut psbt = build_psbt(
        &tw,
        &one_in(TR, 100_000),
        &[(foreign_script(9), 60_000)],
        None,
    );
    psbt.inputs[0].sighash_type = Some(bitcoin::TapSighashType::None.into());
    assert!(matches!(
        decode(&to_base64(&psbt), &tw.wallet),
        Err(Rejection::Policy {
            rule: "bitcoin.sighash_type",
            ..
        })
    ));
}

#[test]
fn destination_allowlist_names_the_output() {
    let tw = wallet();
    let allowed = bitcoin::Address::from_script(&foreign_script(9), Network::Regtest).unwrap();
    let p = BitcoinPolicy {
        destinations: Some(vec![allowed]),
        ..policy("")
    };
    assert!(sign_b64(&tw, &to_base64(&base(&tw)), &p).is_ok());
    let psbt = build_psbt(
        &tw,
        &one_in(WPKH, 100_000),
        &[(foreign_script(9), 30_000), (foreign_script(8), 30_000)],
        None,
    );
    assert_eq!(
        refused(&tw, &psbt, &p),
        ("bitcoin.destination_allowlist", "outputs[1]".into())
    );
}

#[test]
fn per_tx_limit_counts_the_fee() {
    let tw = wallet();
    // Spend 60_000 + fee 1_000: a limit of 60_500 refuses because the fee counts.
    let p = policy("").clone();
    let p = BitcoinPolicy {
        max_spend_per_tx: Amount::from_sat(60_500),
        ..p
    };
    assert_eq!(
        refused(&tw, &base(&tw), &p),
        ("bitcoin.max_spend_per_tx", "outputs[0]".into())
    );
}

#[test]
fn window_limit_adds_previous_spends() {
    let tw = wallet();
    let p = policy("max_spend_per_window = \"100000 sat\"");
    let intent = decode(&to_base64(&base(&tw)), &tw.wallet).unwrap();
    p.check_window(&intent, Amount::from_sat(30_000)).unwrap();
    let err = p
        .check_window(&intent, Amount::from_sat(40_000))
        .unwrap_err();
    assert!(matches!(
        err,
        Rejection::Policy {
            rule: "bitcoin.max_spend_per_window",
            ..
        }
    ));
}

#[test]
fn op_return_and_dust_limits() {
    let tw = wallet();
    let data = ScriptBuf::new_op_return([0u8; 20]);
    let psbt = build_psbt(
        &tw,
        &one_in(WPKH, 100_000),
        &[(foreign_script(9), 60_000), (data.clone(), 0)],
        None,
    );
    assert_eq!(
        refused(&tw, &psbt, &policy("max_fee_percent = 100")),
        ("bitcoin.op_return", "outputs[1]".into())
    );
    assert!(sign_b64(
        &tw,
        &to_base64(&psbt),
        &BitcoinPolicy {
            max_op_return: 1,
            max_fee_percent: 100.0,
            max_feerate_sat_vb: 1_000,
            max_fee: Amount::ONE_BTC,
            ..policy("")
        }
    )
    .is_ok());
    let psbt = build_psbt(
        &tw,
        &one_in(WPKH, 100_000),
        &[(foreign_script(9), 60_000), (foreign_script(5), 293)],
        Some((WPKH, 0, 39_000)),
    );
    assert_eq!(
        refused(&tw, &psbt, &policy("")),
        ("bitcoin.dust", "outputs[1]".into())
    );
}

#[test]
fn fee_rules() {
    let tw = wallet();
    // Outputs above inputs.
    let psbt = build_psbt(
        &tw,
        &one_in(WPKH, 100_000),
        &[(foreign_script(9), 100_001)],
        None,
    );
    assert_eq!(refused(&tw, &psbt, &policy("")).0, "bitcoin.fee_positive");
    let psbt = build_psbt(
        &tw,
        &one_in(WPKH, 100_000),
        &[(foreign_script(9), 100_000)],
        None,
    );
    assert_eq!(refused(&tw, &psbt, &policy("")).0, "bitcoin.fee_positive");
    // 20_000 sat fee: above max_fee of 10_000.
    let psbt = build_psbt(
        &tw,
        &one_in(WPKH, 100_000),
        &[(foreign_script(9), 60_000)],
        Some((WPKH, 0, 20_000)),
    );
    let p = BitcoinPolicy {
        max_fee: Amount::from_sat(10_000),
        max_feerate_sat_vb: 10_000,
        max_fee_percent: 100.0,
        ..policy("")
    };
    assert_eq!(refused(&tw, &psbt, &p), ("bitcoin.max_fee", "fee".into()));
    let p = BitcoinPolicy {
        max_fee: Amount::from_sat(50_000),
        max_feerate_sat_vb: 100,
        max_fee_percent: 100.0,
        ..policy("")
    };
    assert_eq!(refused(&tw, &psbt, &p).0, "bitcoin.max_feerate");
    let p = BitcoinPolicy {
        max_fee: Amount::from_sat(50_000),
        max_feerate_sat_vb: 10_000,
        ..policy("")
    };
    assert_eq!(refused(&tw, &psbt, &p).0, "bitcoin.max_fee_percent");
}

#[test]
fn version_locktime_sequence_and_rbf() {
    let tw = wallet();
    let mut psbt = base(&tw);
    psbt.unsigned_tx.version = bitcoin::transaction::Version(3);
    assert_eq!(
        refused(&tw, &psbt, &policy("")),
        ("bitcoin.tx_version", "tx.version".into())
    );

    let mut psbt = base(&tw);
    psbt.unsigned_tx.lock_time = bitcoin::absolute::LockTime::from_consensus(1_700_000_000);
    assert_eq!(
        refused(&tw, &psbt, &policy("")),
        ("bitcoin.locktime", "tx.locktime".into())
    );
    let mut psbt = base(&tw);
    psbt.unsigned_tx.lock_time = bitcoin::absolute::LockTime::from_consensus(900_000);
    assert_eq!(
        refused(&tw, &psbt, &policy("max_locktime_height = 800000")).0,
        "bitcoin.locktime"
    );

    let mut psbt = base(&tw);
    psbt.unsigned_tx.input[0].sequence = Sequence::from_height(144);
    assert_eq!(
        refused(&tw, &psbt, &policy("")),
        ("bitcoin.sequence", "inputs[0].sequence".into())
    );

    let psbt = base(&tw); // signals RBF
    assert_eq!(
        refused(&tw, &psbt, &policy("rbf = \"forbid\"")),
        ("bitcoin.rbf", "inputs[0].sequence".into())
    );
    let mut psbt = base(&tw);
    psbt.unsigned_tx.input[0].sequence = Sequence::MAX;
    assert_eq!(
        refused(&tw, &psbt, &policy("rbf = \"require\"")),
        ("bitcoin.rbf", "inputs[0].sequence".into())
    );
}

#[test]
fn network_of_xpubs_and_policy_addresses() {
    let tw = wallet();
    let main = TestWallet::new(&[5; 32], Network::Bitcoin);
    let mut psbt = base(&tw);
    let xpub = main.wallet.accounts[0].xpub;
    psbt.xpub.insert(
        xpub,
        (
            main.wallet.fingerprint,
            main.wallet.accounts[0].path.clone(),
        ),
    );
    assert_eq!(
        refused(&tw, &psbt, &policy("")),
        ("bitcoin.network", "global.xpub".into())
    );
    let mainnet_addr = bitcoin::Address::from_script(&foreign_script(9), Network::Bitcoin).unwrap();
    let text = format!(
        "network = \"regtest\"\ndestinations = [\"{mainnet_addr}\"]\nmax_spend_per_tx = \"1 btc\"\nmax_fee = \"1000 sat\"\nmax_feerate_sat_vb = 10"
    );
    let err = toml::from_str::<BitcoinPolicy>(&text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("destinations[0]"), "{err}");
}

#[test]
fn unknown_policy_fields_are_refused() {
    assert!(toml::from_str::<BitcoinPolicy>("network = \"regtest\"\ndestinations = \"any\"\nmax_spend_per_tx = \"1 btc\"\nmax_fee = \"1000 sat\"\nmax_feerate_sat_vb = 10\nmax_fees = 1").is_err());
}

#[test]
fn node_cross_check() {
    use crate::node::check_utxos;
    let tw = wallet();
    let intent = decode(&to_base64(&base(&tw)), &tw.wallet).unwrap();
    let real = intent.psbt.inputs[0].witness_utxo.clone();
    check_utxos(&intent, std::slice::from_ref(&real)).unwrap();
    let err = check_utxos(&intent, &[None]).unwrap_err();
    assert!(
        matches!(err, Rejection::Policy { rule: "bitcoin.node_utxo_spent", ref field, .. } if field == "inputs[0]")
    );
    let mut other = real.unwrap();
    other.value = Amount::from_sat(1);
    let err = check_utxos(&intent, &[Some(other)]).unwrap_err();
    assert!(matches!(
        err,
        Rejection::Policy {
            rule: "bitcoin.node_utxo_mismatch",
            ..
        }
    ));
}
