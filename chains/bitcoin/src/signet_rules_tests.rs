//! One test per signet block rule, each with the variant that passes beside the one refused.

use std::str::FromStr;

use bitcoin::consensus::serialize;
use bitcoin::hashes::Hash;
use bitcoin::{Amount, Block, BlockHash, ScriptBuf, TxOut};
use keyguard_chain::Rejection;

use super::*;
use crate::signet::{decode_block, solved_block, SignetBlock, Solution, SIGNET_GENESIS};
use crate::signet_testkit::{filler_tx, multisig_challenge, public, BlockSpec};

const NOW: u64 = 1_700_000_000;

fn payee() -> ScriptBuf {
    ScriptBuf::from_hex("0014aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap()
}

fn policy(extra: &str) -> SignetPolicy {
    let text = format!(
        "challenge = \"{}\"\npayout = [\"script:{}\"]\n{extra}",
        multisig_challenge(&public()).to_hex_string(),
        payee().to_hex_string()
    );
    let text = if extra.contains("start_height") {
        text
    } else {
        format!("{text}\nstart_height = 1")
    };
    toml::from_str(&text).expect("policy parses")
}

fn genesis() -> BlockHash {
    BlockHash::from_str(SIGNET_GENESIS).unwrap()
}

fn spec(height: u32) -> BlockSpec {
    BlockSpec::new(height, genesis(), NOW as u32, payee())
}

fn decoded(block: &Block, p: &SignetPolicy) -> SignetBlock {
    decode_block(&serialize(block), &p.challenge).unwrap()
}

fn rule_of(r: Result<(), Rejection>) -> String {
    match r {
        Err(Rejection::Policy { rule, .. }) => rule.to_string(),
        other => format!("{other:?}"),
    }
}

fn stateless(p: &SignetPolicy, s: &BlockSpec) -> Result<(), Rejection> {
    p.check_block(&decoded(&s.build(), p), NOW, None)
}

/// The tip after keyguard signed `s` (the solution is a stand-in: the rules only need the
/// solved block's merkle root, which any solution determines).
fn tip_after(p: &SignetPolicy, before: Option<&SignetTip>, s: &BlockSpec) -> (SignetTip, Block) {
    let b = decoded(&s.build(), p);
    let solution = Solution {
        script_sig: ScriptBuf::from_bytes(vec![0x00, 0x01, 0x01]),
        witness: bitcoin::Witness::new(),
    };
    let solved = solved_block(&b, &solution);
    (
        SignetTip::after(before, &b, solved.header.merkle_root),
        solved,
    )
}

#[test]
fn version_bits_outside_the_allowlist() {
    let p = policy("version_bits = [2]");
    let mut s = spec(300);
    assert!(stateless(&p, &s).is_ok());
    s.version = 0x2000_0004; // bit 2: allowed
    assert!(stateless(&p, &s).is_ok());
    s.version = 0x2000_0010; // bit 4
    assert_eq!(rule_of(stateless(&p, &s)), rule::VERSION);
    s.version = 0x0000_0004; // not BIP9
    assert_eq!(rule_of(stateless(&p, &s)), rule::VERSION);
}

#[test]
fn timestamp_three_hours_ahead() {
    let p = policy("max_future_secs = 900");
    let mut s = spec(300);
    s.time = (NOW + 600) as u32;
    assert!(stateless(&p, &s).is_ok());
    s.time = (NOW + 3 * 3600) as u32;
    assert_eq!(rule_of(stateless(&p, &s)), rule::TIMESTAMP_FUTURE);
    // The default: the miner's first block after a start (up to 30 min ahead) passes.
    let default = policy("");
    s.time = (NOW + 1800) as u32;
    assert!(stateless(&default, &s).is_ok());
    s.time = (NOW + 3 * 3600) as u32;
    assert_eq!(rule_of(stateless(&default, &s)), rule::TIMESTAMP_FUTURE);
}

#[test]
fn inflated_coinbase() {
    let p = policy("max_fees = \"1000 sat\"");
    let mut s = spec(300);
    s.payouts[0].value = subsidy(300) + Amount::from_sat(1000);
    assert!(stateless(&p, &s).is_ok());
    s.payouts[0].value = subsidy(300) + Amount::from_sat(1001);
    assert_eq!(rule_of(stateless(&p, &s)), rule::REWARD);
    // A caller's fee claim only lowers the allowance.
    s.payouts[0].value = subsidy(300) + Amount::from_sat(600);
    let b = decoded(&s.build(), &p);
    assert!(p.check_block(&b, NOW, Some(Amount::from_sat(600))).is_ok());
    let low = p.check_block(&b, NOW, Some(Amount::from_sat(599)));
    assert_eq!(rule_of(low), rule::REWARD);
    let high = p.check_block(&b, NOW, Some(Amount::from_int_btc(5)));
    assert!(high.is_ok());
    // After a halving the subsidy is lower.
    let mut late = BlockSpec::new(210_000, genesis(), NOW as u32, payee());
    late.payouts[0].value = subsidy(209_999);
    assert_eq!(rule_of(stateless(&p, &late)), rule::REWARD);
}

#[test]
fn payout_to_a_script_not_on_the_list() {
    let p = policy("");
    let mut s = spec(300);
    s.payouts.push(TxOut {
        value: Amount::ZERO,
        script_pubkey: payee(),
    });
    assert!(stateless(&p, &s).is_ok());
    s.payouts[1].script_pubkey =
        ScriptBuf::from_hex("0014bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
    assert_eq!(rule_of(stateless(&p, &s)), rule::PAYOUT);
}

#[test]
fn transaction_count_and_weight() {
    let mut s = spec(300);
    s.txs = (0..3).map(|i| filler_tx(i, 72)).collect();
    assert!(stateless(&policy("max_transactions = 4"), &s).is_ok());
    assert_eq!(
        rule_of(stateless(&policy("max_transactions = 3"), &s)),
        rule::MAX_TRANSACTIONS
    );
    assert!(stateless(&policy("max_weight = 4000000"), &s).is_ok());
    assert_eq!(
        rule_of(stateless(&policy("max_weight = 1000"), &s)),
        rule::MAX_WEIGHT
    );
}

#[test]
fn transactions_only_from_the_faucet() {
    // filler_tx spends with the test key's witness: the "faucet".
    let faucet = bitcoin::Address::p2wpkh(
        &bitcoin::CompressedPublicKey(public()),
        bitcoin::Network::Signet,
    );
    let p = policy(&format!("tx_inputs_from = [\"{faucet}\"]"));
    let mut s = spec(300);
    s.txs = vec![filler_tx(0, 72)];
    assert!(stateless(&p, &s).is_ok());
    let mut other = filler_tx(1, 72);
    let mut w = bitcoin::Witness::new();
    w.push([0x30; 72]);
    w.push(
        bitcoin::secp256k1::SecretKey::from_slice(&[3; 32])
            .unwrap()
            .public_key(&bitcoin::secp256k1::Secp256k1::new())
            .serialize(),
    );
    other.input[0].witness = w;
    s.txs.push(other);
    assert_eq!(rule_of(stateless(&p, &s)), rule::TX_ALLOWLIST);
}

#[test]
fn a_second_block_at_the_same_height_and_a_fork_below_the_tip() {
    let p = policy("");
    let (tip, _) = tip_after(&p, None, &spec(300));
    let mut same = spec(300);
    same.time += 1; // another block, same height
    let b = decoded(&same.build(), &p);
    assert_eq!(
        rule_of(p.check_chain(&b, Some(&tip), &ChainProofs::default())),
        rule::HEIGHT
    );
    let below = decoded(&spec(290).build(), &p);
    assert_eq!(
        rule_of(p.check_chain(&below, Some(&tip), &ChainProofs::default())),
        rule::HEIGHT
    );
    // With a reorg depth the operator allows, the fork one below passes; further does not.
    let reorg = policy("reorg_depth = 2");
    let (tip, _) = tip_after(&reorg, None, &spec(300));
    let mut fork = spec(299);
    fork.time = NOW as u32 + 5;
    assert!(reorg
        .check_chain(
            &decoded(&fork.build(), &reorg),
            Some(&tip),
            &ChainProofs::default()
        )
        .is_ok());
    assert_eq!(
        rule_of(reorg.check_chain(
            &decoded(&spec(298).build(), &reorg),
            Some(&tip),
            &ChainProofs::default()
        )),
        rule::HEIGHT
    );
}

#[test]
fn a_height_jump_past_the_gap() {
    let p = policy("max_height_gap = 3\nrequire_parent_proof = false");
    let (tip, _) = tip_after(&p, None, &spec(300));
    let mut next = spec(303);
    next.time += 10;
    assert!(p
        .check_chain(
            &decoded(&next.build(), &p),
            Some(&tip),
            &ChainProofs::default()
        )
        .is_ok());
    next = spec(304);
    next.time += 10;
    assert_eq!(
        rule_of(p.check_chain(
            &decoded(&next.build(), &p),
            Some(&tip),
            &ChainProofs::default()
        )),
        rule::HEIGHT_GAP
    );
    // First block: within start_height .. start_height + gap - 1.
    let first = policy("start_height = 1000\nmax_height_gap = 1");
    let ok = decoded(
        &BlockSpec::new(1000, BlockHash::all_zeros(), NOW as u32, payee()).build(),
        &first,
    );
    assert!(first
        .check_chain(&ok, None, &ChainProofs::default())
        .is_ok());
    let far = decoded(
        &BlockSpec::new(5000, BlockHash::all_zeros(), NOW as u32, payee()).build(),
        &first,
    );
    assert_eq!(
        rule_of(first.check_chain(&far, None, &ChainProofs::default())),
        rule::HEIGHT_GAP
    );
    let low = decoded(
        &BlockSpec::new(999, BlockHash::all_zeros(), NOW as u32, payee()).build(),
        &first,
    );
    assert_eq!(
        rule_of(first.check_chain(&low, None, &ChainProofs::default())),
        rule::HEIGHT
    );
}

#[test]
fn the_previous_block_must_be_keyguards_own_tip() {
    let p = policy("");
    let (tip, parent) = tip_after(&p, None, &spec(300));
    let mut mined = parent.header;
    mined.nonce = 77; // the miner ground a nonce after signing
    let mut next = BlockSpec::new(301, mined.block_hash(), NOW as u32 + 600, payee());
    let b = decoded(&next.build(), &p);
    let proven = ChainProofs {
        parent: Some(mined),
        mtp: None,
    };
    assert!(p.check_chain(&b, Some(&tip), &proven).is_ok());
    // No proof.
    assert_eq!(
        rule_of(p.check_chain(&b, Some(&tip), &ChainProofs::default())),
        rule::PREV_BLOCK
    );
    // A header that is not the block keyguard signed (another block at 300).
    let mut stranger = mined;
    stranger.time += 1;
    let other = ChainProofs {
        parent: Some(stranger),
        mtp: None,
    };
    next.prev = stranger.block_hash();
    let b2 = decoded(&next.build(), &p);
    assert_eq!(
        rule_of(p.check_chain(&b2, Some(&tip), &other)),
        rule::PREV_BLOCK
    );
    // The right header, but the block builds on something else: a fork beside the tip.
    next.prev = BlockHash::all_zeros();
    let b3 = decoded(&next.build(), &p);
    assert_eq!(
        rule_of(p.check_chain(&b3, Some(&tip), &proven)),
        rule::PREV_BLOCK
    );
    // First block at height 1 must build on the signet genesis.
    let first = decoded(
        &BlockSpec::new(1, BlockHash::all_zeros(), NOW as u32, payee()).build(),
        &p,
    );
    assert_eq!(
        rule_of(p.check_chain(&first, None, &ChainProofs::default())),
        rule::PREV_BLOCK
    );
    let first = decoded(&spec(1).build(), &p);
    assert!(p.check_chain(&first, None, &ChainProofs::default()).is_ok());
}

#[test]
fn time_not_above_the_median_time_past() {
    let p = policy("require_parent_proof = false");
    let mut tip: Option<SignetTip> = None;
    for h in 1..=11u32 {
        let mut s = spec(h);
        s.time = NOW as u32 + h * 600;
        tip = Some(tip_after(&p, tip.as_ref(), &s).0);
    }
    let tip = tip.unwrap();
    // Median of the 11 tracked times is block 6's.
    let mtp = NOW as u32 + 6 * 600;
    let mut s = spec(12);
    s.time = mtp;
    let at = decoded(&s.build(), &p);
    assert_eq!(
        rule_of(p.check_chain(&at, Some(&tip), &ChainProofs::default())),
        rule::TIMESTAMP_PAST
    );
    s.time = mtp + 1;
    let above = decoded(&s.build(), &p);
    assert!(p
        .check_chain(&above, Some(&tip), &ChainProofs::default())
        .is_ok());
    // The caller's median only tightens.
    let claimed = ChainProofs {
        parent: None,
        mtp: Some(mtp + 5),
    };
    assert_eq!(
        rule_of(p.check_chain(&above, Some(&tip), &claimed)),
        rule::TIMESTAMP_PAST
    );
    let lower = ChainProofs {
        parent: None,
        mtp: Some(1),
    };
    assert!(p.check_chain(&above, Some(&tip), &lower).is_ok());
}

#[test]
fn config_refuses_what_it_does_not_know() {
    let base = format!(
        "challenge = \"{}\"\nstart_height = 1\n",
        multisig_challenge(&public()).to_hex_string()
    );
    for bad in [
        "payout = []",
        "payout = [\"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4\"]", // mainnet
        "payout = [\"script:00\"]\nversion_bits = [29]",
        "payout = [\"script:00\"]\nmax_heigth_gap = 2",
    ] {
        assert!(
            toml::from_str::<SignetPolicy>(&format!("{base}{bad}")).is_err(),
            "{bad}"
        );
    }
    let two_of_two = "5221020000000000000000000000000000000000000000000000000000000000000001";
    assert!(toml::from_str::<SignetPolicy>(&format!(
        "challenge = \"{two_of_two}\"\nstart_height = 1\npayout = [\"script:00\"]"
    ))
    .is_err());
    assert!(toml::from_str::<SignetPolicy>(&format!("{base}payout = [\"script:00\"]")).is_ok());
}
