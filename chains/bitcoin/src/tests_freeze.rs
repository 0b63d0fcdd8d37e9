//! Adversarial rows for a rooted wallet application (issue 21 items 4 and 6, issue 13 item 8):
//! fake change, one outpoint spent twice, foreign final witnesses, a padded witness hiding the
//! fee rate, far locktimes and locktimed self-transfers. Every refusal names its rule and
//! field; every row has a legitimate twin that signs and verifies with Bitcoin Core's script
//! interpreter (`bitcoinconsensus`), so the rule is proven to let the real thing through.

use bitcoin::absolute::LockTime;
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, Network, Transaction, TxOut, Witness};
use keyguard_chain::Rejection;

use crate::locktime::{estimated_tip, Tip};
use crate::testkit::{
    build_psbt, foreign_script, set_output_origin, to_base64, OurInput, TestWallet,
};
use crate::tests::{consensus_verify, policy, sign_b64, wallet, NOW_MS, SEED};
use crate::wallet::ScriptKind;
use crate::{decode, BitcoinPolicy};

const WPKH: ScriptKind = ScriptKind::P2wpkh;
const TR: ScriptKind = ScriptKind::P2tr;

/// Pays 60k to a stranger, 39k back to change index 0, 1k fee.
fn payment(tw: &TestWallet) -> Psbt {
    build_psbt(
        tw,
        &[OurInput {
            kind: WPKH,
            index: 1,
            sat: 100_000,
        }],
        &[(foreign_script(9), 60_000)],
        Some((WPKH, 0, 39_000)),
    )
}

/// Consolidates two of our coins into our own change: pays nothing out, spends only the fee.
fn consolidation(tw: &TestWallet) -> Psbt {
    build_psbt(
        tw,
        &[
            OurInput {
                kind: WPKH,
                index: 1,
                sat: 100_000,
            },
            OurInput {
                kind: TR,
                index: 2,
                sat: 50_000,
            },
        ],
        &[],
        Some((WPKH, 4, 149_000)),
    )
}

/// Our P2WPKH input (0) plus a stranger's P2TR input (1, 50k sat), paying `pay` and change.
fn with_foreign_input(tw: &TestWallet, pay: u64, change: u64) -> Psbt {
    let mut psbt = build_psbt(
        tw,
        &[
            OurInput {
                kind: WPKH,
                index: 1,
                sat: 100_000,
            },
            OurInput {
                kind: TR,
                index: 7,
                sat: 50_000,
            },
        ],
        &[(foreign_script(9), pay)],
        Some((WPKH, 0, change)),
    );
    // Input 1 becomes someone else's: no origin under our fingerprint, already finalized.
    let input = &mut psbt.inputs[1];
    input.tap_key_origins.clear();
    input.tap_internal_key = None;
    input.final_script_witness = Some(Witness::from_slice(&[[0x11u8; 64]]));
    psbt
}

fn rule_of(tw: &TestWallet, psbt: &Psbt, p: &BitcoinPolicy) -> Result<(), (String, String)> {
    match sign_b64(tw, &to_base64(psbt), p) {
        Ok(_) => Ok(()),
        Err(Rejection::Policy { rule, field, .. }) => Err((rule.to_string(), field)),
        Err(Rejection::InvalidParams { field, .. }) => Err(("request.invalid".into(), field)),
    }
}

/// The negative control: signs, and every input of ours verifies in Bitcoin Core's
/// interpreter (inputs keyguard cannot finalize are checked through their partial signature's
/// presence only).
fn signs_and_verifies(tw: &TestWallet, psbt: &Psbt, p: &BitcoinPolicy) {
    let signed = sign_b64(tw, &to_base64(psbt), p).expect("the legitimate twin signs");
    let (back, _) = crate::parse_psbt(&signed.psbt).unwrap();
    let tx: Transaction = back.extract_tx_unchecked_fee_rate();
    let prevouts: Vec<TxOut> = psbt
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    assert!(!signed.signed_inputs.is_empty());
    for i in &signed.signed_inputs {
        // Only our inputs: a made-up foreign witness is not ours to verify.
        let mut one = tx.clone();
        for (n, input) in one.input.iter_mut().enumerate() {
            if n != *i {
                input.witness = Witness::new();
            }
        }
        verify_input(&one, &prevouts, *i).expect("consensus-valid");
    }
}

fn verify_input(tx: &Transaction, prevouts: &[TxOut], i: usize) -> Result<(), String> {
    if prevouts.len() == 1 {
        return consensus_verify(tx, prevouts);
    }
    let bytes = bitcoin::consensus::serialize(tx);
    let utxos: Vec<bitcoinconsensus::Utxo> = prevouts
        .iter()
        .map(|p| bitcoinconsensus::Utxo {
            script_pubkey: p.script_pubkey.as_bytes().as_ptr(),
            script_pubkey_len: p.script_pubkey.len() as u32,
            value: p.value.to_sat() as i64,
        })
        .collect();
    bitcoinconsensus::verify(
        prevouts[i].script_pubkey.as_bytes(),
        prevouts[i].value.to_sat(),
        &bytes,
        Some(&utxos),
        i,
    )
    .map_err(|e| format!("input {i}: {e:?}"))
}

#[test]
fn fake_change_is_refused_by_name() {
    let tw = wallet();
    let p = policy("");
    type Edit = Box<dyn Fn(&TestWallet, &mut Psbt)>;
    let rows: Vec<(&str, Edit)> = vec![
        (
            "change origin on an attacker's script",
            Box::new(|_, p| p.unsigned_tx.output[1].script_pubkey = foreign_script(66)),
        ),
        (
            "change beyond change_gap",
            Box::new(|tw, p| {
                p.unsigned_tx.output[1].script_pubkey = tw.script(WPKH, 1, 5_000);
                set_output_origin(&mut p.outputs[1], tw, WPKH, 1, 5_000);
            }),
        ),
        (
            "origin names another key than the path derives",
            Box::new(|tw, p| {
                let (pk, origin) = p.outputs[1].bip32_derivation.pop_first().unwrap();
                let _ = pk;
                p.outputs[1]
                    .bip32_derivation
                    .insert(tw.public_key(WPKH, 1, 9), origin);
                p.unsigned_tx.output[1].script_pubkey = tw.script(WPKH, 1, 9);
            }),
        ),
        (
            "path on chain 2 below our account",
            Box::new(|tw, p| {
                let (pk, (fp, _)) = p.outputs[1].bip32_derivation.pop_first().unwrap();
                let path = tw.path(WPKH, 1, 0);
                let mut steps: Vec<_> = path.into_iter().copied().collect();
                steps[3] = bitcoin::bip32::ChildNumber::from_normal_idx(2).unwrap();
                p.outputs[1].bip32_derivation.insert(pk, (fp, steps.into()));
            }),
        ),
        (
            "our key's taproot change with a script tree",
            Box::new(|tw, p| {
                p.unsigned_tx.output[1].script_pubkey = tw.script(TR, 1, 0);
                p.outputs[1].bip32_derivation.clear();
                set_output_origin(&mut p.outputs[1], tw, TR, 1, 0);
                let leaf = bitcoin::ScriptBuf::from_bytes(vec![0x51]);
                let tree = bitcoin::taproot::TaprootBuilder::new()
                    .add_leaf(0, leaf)
                    .unwrap();
                p.outputs[1].tap_tree = Some(bitcoin::taproot::TapTree::try_from(tree).unwrap());
            }),
        ),
        (
            "p2wpkh key origin on its taproot script",
            Box::new(|tw, p| p.unsigned_tx.output[1].script_pubkey = tw.script(TR, 1, 0)),
        ),
        (
            "a valid change origin on the payment output",
            Box::new(|tw, p| set_output_origin(&mut p.outputs[0], tw, WPKH, 1, 3)),
        ),
    ];
    let mut failures = Vec::new();
    for (name, edit) in &rows {
        let mut psbt = payment(&tw);
        edit(&tw, &mut psbt);
        let got = rule_of(&tw, &psbt, &p);
        let out = if name.contains("payment output") {
            "outputs[0]"
        } else {
            "outputs[1]"
        };
        if got != Err(("bitcoin.fake_change".into(), out.into())) {
            failures.push(format!("{name}: {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Negative controls: real change (both script types) signs and verifies; a payment to our
    // own receive chain with an honest origin is an ordinary payment; an origin under another
    // fingerprint is not ours to judge.
    signs_and_verifies(&tw, &payment(&tw), &p);
    let mut tr_change = payment(&tw);
    tr_change.outputs[1].bip32_derivation.clear();
    tr_change.unsigned_tx.output[1].script_pubkey = tw.script(TR, 1, 2);
    set_output_origin(&mut tr_change.outputs[1], &tw, TR, 1, 2);
    signs_and_verifies(&tw, &tr_change, &p);
    let mut receive = payment(&tw);
    receive.unsigned_tx.output[1].script_pubkey = tw.script(WPKH, 0, 3);
    set_output_origin(&mut receive.outputs[1], &tw, WPKH, 0, 3);
    let intent = decode(&to_base64(&receive), &tw.wallet).unwrap();
    assert!(matches!(
        intent.outputs[1].class,
        crate::OutputClass::Spend { .. }
    ));
    signs_and_verifies(&tw, &receive, &p);
    let other = TestWallet::new(&[0x43; 32], Network::Regtest);
    let mut foreign_origin = payment(&tw);
    set_output_origin(&mut foreign_origin.outputs[0], &other, WPKH, 1, 0);
    signs_and_verifies(&tw, &foreign_origin, &p);
}

#[test]
fn one_outpoint_spent_twice_is_refused() {
    let tw = wallet();
    let mut psbt = consolidation(&tw);
    let first = psbt.unsigned_tx.input[0].previous_output;
    psbt.unsigned_tx.input[1].previous_output = first;
    psbt.inputs[1] = psbt.inputs[0].clone();
    // Both claim the 100k coin: 200k "in", 149k out.
    assert_eq!(
        rule_of(&tw, &psbt, &policy("")),
        Err(("bitcoin.duplicate_input".into(), "inputs[1]".into()))
    );
    signs_and_verifies(&tw, &consolidation(&tw), &policy(""));
}

#[test]
fn a_foreign_final_witness_is_still_a_foreign_input() {
    let tw = wallet();
    let psbt = with_foreign_input(&tw, 60_000, 89_000);
    assert_eq!(
        rule_of(&tw, &psbt, &policy("")),
        Err(("bitcoin.foreign_input".into(), "inputs[1]".into()))
    );
    // Allowed explicitly, it signs (our input; the foreign one keeps its own witness).
    let allowed = policy("allow_foreign_inputs = true");
    let intent = decode(&to_base64(&psbt), &tw.wallet).unwrap();
    allowed.check(&intent, NOW_MS).unwrap();
    signs_and_verifies(&tw, &psbt, &allowed);
}

#[test]
fn a_padded_foreign_witness_does_not_hide_the_fee_rate() {
    let tw = wallet();
    let p = policy("allow_foreign_inputs = true\nmax_fee_percent = 100");
    // 60k sat fee on a ~200 vB transaction: about 300 sat/vB, above the 200 sat/vB cap.
    let mut psbt = with_foreign_input(&tw, 60_000, 30_000);
    assert_eq!(
        rule_of(&tw, &psbt, &p),
        Err(("bitcoin.max_feerate".into(), "fee".into()))
    );
    // The same fee behind 400 kB of witness padding still counts at a standard witness size.
    psbt.inputs[1].final_script_witness =
        Some(Witness::from_slice(&[vec![0u8; 64], vec![0u8; 400_000]]));
    assert_eq!(
        rule_of(&tw, &psbt, &p),
        Err(("bitcoin.max_feerate".into(), "fee".into()))
    );
    // Negative control: a 10k fee (about 50 sat/vB) signs, padded or not.
    let mut fair = with_foreign_input(&tw, 60_000, 80_000);
    signs_and_verifies(&tw, &fair, &p);
    fair.inputs[1].final_script_witness =
        Some(Witness::from_slice(&[vec![0u8; 64], vec![0u8; 400_000]]));
    signs_and_verifies(&tw, &fair, &p);
}

fn locked(mut psbt: Psbt, lock: u32) -> Psbt {
    psbt.unsigned_tx.lock_time = LockTime::from_consensus(lock);
    psbt
}

/// Runs the stateless rules and then the lock against a node tip, as the daemon does.
fn with_tip(
    tw: &TestWallet,
    psbt: &Psbt,
    p: &BitcoinPolicy,
    tip: Option<u32>,
) -> Result<(), (String, String)> {
    let as_pair = |e: Rejection| match e {
        Rejection::Policy { rule, field, .. } => (rule.to_string(), field),
        Rejection::InvalidParams { field, .. } => ("request.invalid".into(), field),
    };
    let intent = decode(&to_base64(psbt), &tw.wallet).map_err(as_pair)?;
    let tip = tip.map(|height| Tip {
        height,
        exact: true,
    });
    p.check_at(&intent, NOW_MS, tip).map_err(as_pair)
}

#[test]
fn locktimes_are_capped_against_the_tip() {
    let tw = wallet();
    let p = policy("");
    let lock = |r: Result<(), (String, String)>| r.map_err(|(rule, _)| rule);
    // The reported freeze: a consolidation locked at 499,999,999.
    assert_eq!(
        lock(with_tip(
            &tw,
            &locked(consolidation(&tw), 499_999_999),
            &p,
            Some(1_000)
        )),
        Err("bitcoin.locktime".into())
    );
    assert_eq!(
        lock(with_tip(
            &tw,
            &locked(payment(&tw), 499_999_999),
            &p,
            Some(1_000)
        )),
        Err("bitcoin.locktime".into())
    );
    // Payments too: at most max_locktime_blocks_ahead (6) above the node's tip.
    assert_eq!(
        lock(with_tip(&tw, &locked(payment(&tw), 1_007), &p, Some(1_000))),
        Err("bitcoin.locktime".into())
    );
    assert_eq!(
        lock(with_tip(&tw, &locked(payment(&tw), 1_006), &p, Some(1_000))),
        Ok(())
    );
    // A locktimed self-transfer that cannot be mined yet is a freeze, even 1 block ahead.
    assert_eq!(
        lock(with_tip(
            &tw,
            &locked(consolidation(&tw), 1_001),
            &p,
            Some(1_000)
        )),
        Err("bitcoin.locktime_freeze".into())
    );
    // Without a node on regtest the tip is unknown: any active lock on a self-transfer.
    assert_eq!(
        lock(with_tip(&tw, &locked(consolidation(&tw), 5), &p, None)),
        Err("bitcoin.locktime_freeze".into())
    );
    // Time locks: refused unless allowed, then capped two hours ahead of the clock.
    let now = (NOW_MS / 1000) as u32;
    assert_eq!(
        lock(with_tip(&tw, &locked(payment(&tw), now), &p, Some(1_000))),
        Err("bitcoin.locktime".into())
    );
    let timed = policy("allow_time_locktime = true");
    assert_eq!(
        lock(with_tip(
            &tw,
            &locked(payment(&tw), 499_999_999 + 1),
            &timed,
            None
        )),
        Ok(())
    );
    assert_eq!(
        lock(with_tip(
            &tw,
            &locked(payment(&tw), now + 7_201),
            &timed,
            None
        )),
        Err("bitcoin.locktime".into())
    );
    assert_eq!(
        lock(with_tip(
            &tw,
            &locked(consolidation(&tw), now + 60),
            &timed,
            None
        )),
        Err("bitcoin.locktime_freeze".into())
    );
    // Negative controls, signed and verified: the anti-fee-sniping lock (= tip) on a
    // consolidation, a past time lock on one, and an explicitly allowed future self-transfer.
    assert_eq!(
        lock(with_tip(
            &tw,
            &locked(consolidation(&tw), 1_000),
            &p,
            Some(1_000)
        )),
        Ok(())
    );
    assert_eq!(
        lock(with_tip(
            &tw,
            &locked(consolidation(&tw), now - 60),
            &timed,
            None
        )),
        Ok(())
    );
    signs_and_verifies(&tw, &locked(consolidation(&tw), now - 60), &timed);
    let frozen_ok = policy("allow_locktime_self_transfer = true");
    assert_eq!(
        lock(with_tip(
            &tw,
            &locked(consolidation(&tw), 1_005),
            &frozen_ok,
            Some(1_000)
        )),
        Ok(())
    );
    signs_and_verifies(&tw, &locked(consolidation(&tw), 1_005), &frozen_ok);
    // No lock at all (sequence final) is never a freeze.
    let mut fin = locked(consolidation(&tw), 499_999_999);
    for i in &mut fin.unsigned_tx.input {
        i.sequence = bitcoin::Sequence::MAX;
    }
    assert_eq!(lock(with_tip(&tw, &fin, &p, Some(1_000))), Ok(()));
}

#[test]
fn mainnet_without_a_node_uses_a_clock_estimate_of_the_tip() {
    let tw = TestWallet::new(&SEED, Network::Bitcoin);
    let text = "network = \"bitcoin\"\ndestinations = \"any\"\nmax_spend_per_tx = \"1 btc\"\n\
                max_fee = \"0.001 btc\"\nmax_feerate_sat_vb = 200\n";
    let p: BitcoinPolicy = toml::from_str(text).unwrap();
    let est = estimated_tip(Network::Bitcoin, NOW_MS).unwrap();
    // 2026-11-23: above the real tip (roughly 975,000), so `locktime = tip` always passes.
    assert!(est.height > 975_000 && est.height < 1_000_000, "{est:?}");
    assert!(estimated_tip(Network::Regtest, NOW_MS).is_none());
    let r = |psbt: &Psbt| rule_of(&tw, psbt, &p).map_err(|(rule, _)| rule);
    assert_eq!(
        r(&locked(consolidation(&tw), 499_999_999)),
        Err("bitcoin.locktime".into())
    );
    assert_eq!(
        r(&locked(payment(&tw), est.height + 7)),
        Err("bitcoin.locktime".into())
    );
    assert_eq!(
        r(&locked(consolidation(&tw), est.height + 1)),
        Err("bitcoin.locktime_freeze".into())
    );
    signs_and_verifies(&tw, &locked(consolidation(&tw), 975_000), &p);
    signs_and_verifies(&tw, &locked(payment(&tw), 975_000), &p);
    let _ = Amount::ZERO;
}
