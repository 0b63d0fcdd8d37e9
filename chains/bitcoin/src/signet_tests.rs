//! Signet blocks: the solution keyguard builds is checked by Bitcoin Core's script interpreter
//! (`bitcoinconsensus`) against a commitment this file rebuilds from the solved block by hand
//! (Core's `SignetTxs::Create`), never by the code under test; every committed field tampered
//! with after signing must fail, the uncommitted nonce must not.

use std::str::FromStr;

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::{Amount, Block, BlockHash, ScriptBuf, TxOut};

use super::*;
use crate::signet_finalize::{decode_psbt, finalize, parse_block_psbt, SignedSignetBlock};
use crate::signet_rules::{rule, subsidy};
use crate::signet_testkit::{
    miner_psbt, miner_txs, multisig_challenge, public, secret, sign, BlockSpec,
};

/// Core's block script flags for signet solutions.
const FLAGS: u32 = bitcoinconsensus::VERIFY_P2SH
    | bitcoinconsensus::VERIFY_WITNESS
    | bitcoinconsensus::VERIFY_DERSIG
    | bitcoinconsensus::VERIFY_NULLDUMMY;

fn reward_script() -> ScriptBuf {
    ScriptBuf::from_hex("0014aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap()
}

fn genesis() -> BlockHash {
    BlockHash::from_str(SIGNET_GENESIS).unwrap()
}

fn multisig() -> Challenge {
    Challenge::parse(multisig_challenge(&public())).unwrap()
}

fn p2wpkh() -> Challenge {
    Challenge::parse(ScriptBuf::new_p2wpkh(
        &bitcoin::PublicKey::new(public()).wpubkey_hash().unwrap(),
    ))
    .unwrap()
}

fn block_at(height: u32) -> Block {
    BlockSpec::new(height, genesis(), 1_700_000_000, reward_script()).build()
}

/// Reads one push or opcode from raw script bytes: (data, next position).
fn next_push(s: &[u8], at: usize) -> (Option<Vec<u8>>, usize) {
    let op = s[at];
    let (len, start) = match op {
        0x01..=0x4b => (op as usize, at + 1),
        0x4c => (s[at + 1] as usize, at + 2),
        0x4d => (u16::from_le_bytes([s[at + 1], s[at + 2]]) as usize, at + 3),
        _ => return (None, at + 1),
    };
    (Some(s[start..start + len].to_vec()), start + len)
}

/// Core's `CheckSignetBlockSolution`, rebuilt here by hand, then Core's interpreter.
fn core_check(block: &Block, challenge: &ScriptBuf) -> Result<(), String> {
    let mut cb = block.txdata[0].clone();
    let idx = cb
        .output
        .iter()
        .rposition(|o| {
            o.script_pubkey.len() >= 38
                && o.script_pubkey.as_bytes()[..6] == [0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed]
        })
        .ok_or("no witness commitment")?;
    let script = cb.output[idx].script_pubkey.to_bytes();
    let (mut rebuilt, mut solution, mut at) = (Vec::new(), None, 0);
    while at < script.len() {
        let (push, next) = next_push(&script, at);
        match push {
            Some(d) if solution.is_none() && d.len() > 4 && d[..4] == SIGNET_HEADER => {
                solution = Some(d[4..].to_vec());
                rebuilt.extend([0x04, 0xec, 0xc7, 0xda, 0xa2]);
            }
            _ => rebuilt.extend(&script[at..next]),
        }
        at = next;
    }
    let solution = solution.ok_or("no solution")?;
    cb.output[idx].script_pubkey = ScriptBuf::from_bytes(rebuilt);
    let mut unsolved = block.clone();
    unsolved.txdata[0] = cb;
    // `miner_txs` appends the header itself: give it the coinbase without the header push.
    let mut bare = unsolved.clone();
    let s = bare.txdata[0].output[idx].script_pubkey.to_bytes();
    bare.txdata[0].output[idx].script_pubkey = ScriptBuf::from_bytes(s[..s.len() - 5].to_vec());
    let (to_spend, mut spend) = miner_txs(&bare, challenge);
    let (script_sig, used): (ScriptBuf, usize) =
        bitcoin::consensus::deserialize_partial(&solution).map_err(|e| e.to_string())?;
    spend.input[0].script_sig = script_sig;
    spend.input[0].witness = deserialize(&solution[used..]).map_err(|e| e.to_string())?;
    assert_eq!(spend.input[0].previous_output.txid, to_spend.compute_txid());
    bitcoinconsensus::verify_with_flags(
        challenge.as_bytes(),
        0,
        &serialize(&spend),
        None,
        0,
        FLAGS,
    )
    .map_err(|e| format!("{e:?}"))?;
    if !block.check_merkle_root() || !block.check_witness_commitment() {
        return Err("merkle root or witness commitment".into());
    }
    Ok(())
}

fn signed(block: &Block, challenge: &Challenge) -> SignedSignetBlock {
    let decoded = decode_block(&serialize(block), challenge).unwrap();
    let sig = sign(&secret(), &decoded.payload(challenge));
    finalize(&decoded, challenge, &public(), &sig).unwrap()
}

#[test]
fn core_accepts_the_solution_for_multisig_and_p2wpkh_challenges() {
    for challenge in [multisig(), p2wpkh()] {
        let mut spec = BlockSpec::new(300, genesis(), 1_700_000_000, reward_script());
        spec.txs = (0..5)
            .map(|i| crate::signet_testkit::filler_tx(i, 72))
            .collect();
        let out = signed(&spec.build(), &challenge);
        core_check(&out.block, &challenge.script).unwrap();
        // The merkle root was recomputed with the solution in the coinbase.
        assert!(out.block.check_merkle_root());
    }
}

#[test]
fn tampering_with_any_committed_field_fails_core_and_the_nonce_does_not() {
    let challenge = multisig();
    let mut spec = BlockSpec::new(300, genesis(), 1_700_000_000, reward_script());
    spec.txs = (0..3)
        .map(|i| crate::signet_testkit::filler_tx(i, 72))
        .collect();
    let good = signed(&spec.build(), &challenge).block;
    core_check(&good, &challenge.script).unwrap();
    // Positive control: nonce and bits are not committed (the miner grinds afterwards).
    let mut ground = good.clone();
    ground.header.nonce = 12345;
    ground.header.bits = bitcoin::CompactTarget::from_consensus(0x1d00_ffff);
    core_check(&ground, &challenge.script).unwrap();
    let fix = |b: &mut Block| b.header.merkle_root = b.compute_merkle_root().unwrap();
    type Tamper = Box<dyn Fn(&mut Block)>;
    let tampers: Vec<(&str, Tamper)> = vec![
        (
            "version",
            Box::new(|b| b.header.version = bitcoin::block::Version::from_consensus(0x2000_0004)),
        ),
        ("time", Box::new(|b| b.header.time += 1)),
        (
            "prev",
            Box::new(|b| b.header.prev_blockhash = BlockHash::all_zeros()),
        ),
        (
            "coinbase value",
            Box::new(move |b| {
                b.txdata[0].output[0].value += Amount::from_sat(1);
                fix(b)
            }),
        ),
        (
            "coinbase payee",
            Box::new(move |b| {
                b.txdata[0].output[0].script_pubkey = ScriptBuf::new_op_return([1]);
                fix(b)
            }),
        ),
        (
            "drop a tx",
            Box::new(move |b| {
                b.txdata.pop();
                fix(b)
            }),
        ),
        (
            "tx output",
            Box::new(move |b| {
                b.txdata[1].output[0].value = Amount::from_sat(1);
                fix(b)
            }),
        ),
    ];
    for (what, tamper) in tampers {
        let mut bad = good.clone();
        tamper(&mut bad);
        assert!(
            core_check(&bad, &challenge.script).is_err(),
            "{what} still verifies"
        );
    }
}

#[test]
fn pass2_refuses_a_signature_over_anything_else() {
    let challenge = multisig();
    let decoded = decode_block(&serialize(&block_at(300)), &challenge).unwrap();
    let other = decode_block(&serialize(&block_at(301)), &challenge).unwrap();
    let wrong = sign(&secret(), &other.payload(&challenge));
    assert!(finalize(&decoded, &challenge, &public(), &wrong).is_err());
    let stranger = bitcoin::secp256k1::SecretKey::from_slice(&[7; 32]).unwrap();
    let foreign = sign(&stranger, &decoded.payload(&challenge));
    assert!(finalize(&decoded, &challenge, &public(), &foreign).is_err());
    // Negative control: the right signature passes.
    let right = sign(&secret(), &decoded.payload(&challenge));
    assert!(finalize(&decoded, &challenge, &public(), &right).is_ok());
}

#[test]
fn the_miner_psbt_is_recognised_and_its_claims_must_match_the_block() {
    let challenge = multisig();
    let block = block_at(300);
    let psbt = miner_psbt(&block, &challenge.script);
    let b64 = psbt.to_string();
    let parsed = parse_block_psbt(&b64).unwrap();
    assert!(crate::signet_finalize::is_signet_psbt(&parsed));
    let decoded = decode_psbt(&parsed, &challenge).unwrap();
    // keyguard's commitment equals the one the miner's code builds independently.
    assert_eq!(decoded.to_spend, miner_txs(&block, &challenge.script).0);
    // A to_spend for another block: refused, named.
    let mut lying = psbt.clone();
    lying.inputs[0].non_witness_utxo = Some(miner_txs(&block_at(301), &challenge.script).0);
    assert_eq!(rule_of(decode_psbt(&lying, &challenge)), rule::COMMITMENT);
    // A foreign challenge.
    let foreign = miner_psbt(&block, &p2wpkh().script);
    assert_eq!(rule_of(decode_psbt(&foreign, &challenge)), rule::CHALLENGE);
    // The answer carries the solution where the miner reads it.
    let sig = sign(&secret(), &decoded.payload(&challenge));
    let out = finalize(&decoded, &challenge, &public(), &sig).unwrap();
    let answered = out.answer_psbt(parsed);
    assert_eq!(
        answered.inputs[0].final_script_sig.as_ref(),
        Some(&out.solution.script_sig)
    );
    assert!(crate::signet_finalize::is_signet_psbt(&answered));
}

fn rule_of<T: std::fmt::Debug>(r: Result<T, keyguard_chain::Rejection>) -> String {
    match r.unwrap_err() {
        keyguard_chain::Rejection::Policy { rule, .. } => rule.to_string(),
        other => format!("invalid: {other:?}"),
    }
}

#[test]
fn malformed_blocks_are_named() {
    let challenge = multisig();
    let good = block_at(300);
    // Already solved: a second signature for the same block would be another block.
    let solved = signed(&good, &challenge).block;
    assert_eq!(
        rule_of(decode_block(&serialize(&solved), &challenge)),
        rule::BLOCK
    );
    // Merkle root not matching.
    let mut bad = good.clone();
    bad.header.merkle_root = bitcoin::TxMerkleNode::all_zeros();
    assert_eq!(
        rule_of(decode_block(&serialize(&bad), &challenge)),
        rule::BLOCK
    );
    // Witness commitment not last.
    let mut bad = good.clone();
    bad.txdata[0].output.push(TxOut {
        value: Amount::ZERO,
        script_pubkey: reward_script(),
    });
    bad.header.merkle_root = bad.compute_merkle_root().unwrap();
    assert_eq!(
        rule_of(decode_block(&serialize(&bad), &challenge)),
        rule::BLOCK
    );
    // No BIP34 height.
    let mut bad = good.clone();
    bad.txdata[0].input[0].script_sig = ScriptBuf::from_bytes(vec![0x6a, 0x51]);
    bad.header.merkle_root = bad.compute_merkle_root().unwrap();
    assert_eq!(
        rule_of(decode_block(&serialize(&bad), &challenge)),
        rule::BLOCK
    );
    // A wrong witness commitment, even in a block without witnesses (Core checks it).
    let mut bad = good.clone();
    let last = bad.txdata[0].output.len() - 1;
    let mut script = bad.txdata[0].output[last].script_pubkey.to_bytes();
    script[10] ^= 1;
    bad.txdata[0].output[last].script_pubkey = ScriptBuf::from_bytes(script);
    bad.header.merkle_root = bad.compute_merkle_root().unwrap();
    assert_eq!(
        rule_of(decode_block(&serialize(&bad), &challenge)),
        rule::BLOCK
    );
    // A non-canonical push after the commitment (Core would re-encode it: another commitment).
    let mut bad = good.clone();
    let mut script = bad.txdata[0].output[last].script_pubkey.to_bytes();
    script.extend([0x4c, 0x01, 0xff]);
    bad.txdata[0].output[last].script_pubkey = ScriptBuf::from_bytes(script);
    bad.header.merkle_root = bad.compute_merkle_root().unwrap();
    assert_eq!(
        rule_of(decode_block(&serialize(&bad), &challenge)),
        rule::BLOCK
    );
    // The height pushed non-minimally (PUSHDATA1) is not Core's `CScript() << height`.
    let mut bad = good.clone();
    bad.txdata[0].input[0].script_sig = ScriptBuf::from_bytes(vec![0x4c, 0x02, 0x2c, 0x01]);
    bad.header.merkle_root = bad.compute_merkle_root().unwrap();
    assert_eq!(
        rule_of(decode_block(&serialize(&bad), &challenge)),
        rule::BLOCK
    );
    // The same transaction twice (a merkle-mutated block).
    let mut spec = BlockSpec::new(300, genesis(), 1_700_000_000, reward_script());
    spec.txs = vec![crate::signet_testkit::filler_tx(1, 72); 2];
    assert_eq!(
        rule_of(decode_block(&serialize(&spec.build()), &challenge)),
        rule::BLOCK
    );
    // Trailing bytes and truncation are invalid requests.
    let mut bytes = serialize(&good);
    bytes.push(0);
    assert!(decode_block(&bytes, &challenge).is_err());
    assert!(decode_block(&serialize(&good)[..100], &challenge).is_err());
    // Negative control: the good block decodes with its BIP34 heights (OP_N and pushes).
    assert_eq!(
        decode_block(&serialize(&good), &challenge).unwrap().height,
        300
    );
    assert_eq!(
        decode_block(&serialize(&block_at(5)), &challenge)
            .unwrap()
            .height,
        5
    );
}

#[test]
fn challenge_shapes() {
    assert!(Challenge::parse(multisig_challenge(&public())).is_ok());
    // 2-of-2 needs another signer; OP_TRUE needs no key.
    let mut two = vec![0x52, 0x21];
    two.extend(public().serialize());
    two.push(0x21);
    two.extend(public().serialize());
    two.extend([0x52, 0xae]);
    assert!(Challenge::parse(ScriptBuf::from_bytes(two)).is_err());
    assert!(Challenge::parse(ScriptBuf::from_bytes(vec![0x51])).is_err());
    let other = bitcoin::secp256k1::SecretKey::from_slice(&[9; 32])
        .unwrap()
        .public_key(&bitcoin::secp256k1::Secp256k1::new());
    assert!(multisig().solvable_by(&public()) && !multisig().solvable_by(&other));
    assert!(p2wpkh().solvable_by(&public()) && !p2wpkh().solvable_by(&other));
}

#[test]
fn subsidy_halves() {
    assert_eq!(subsidy(1), Amount::from_int_btc(50));
    assert_eq!(subsidy(210_000), Amount::from_int_btc(25));
    assert_eq!(subsidy(210_000 * 64), Amount::ZERO);
}

#[test]
fn a_transaction_with_a_huge_count_claim_is_an_invalid_request_not_an_allocation() {
    // Header + a varint claiming 2^32 transactions.
    let mut bytes = serialize(&block_at(300).header);
    bytes.extend([0xfe, 0xff, 0xff, 0xff, 0xff]);
    assert!(decode_block(&bytes, &multisig()).is_err());
}

#[test]
fn oversized_blocks_and_duplicate_psbt_keys_are_invalid_requests() {
    let challenge = multisig();
    let huge = vec![0u8; MAX_BLOCK_BYTES + 1];
    assert!(matches!(
        decode_block(&huge, &challenge),
        Err(keyguard_chain::Rejection::InvalidParams { .. })
    ));
    // The block key twice in the global map: which block would be signed?
    let block = block_at(300);
    let (to_spend, spend) = miner_txs(&block, &challenge.script);
    let kv = |k: &[u8], v: &[u8]| {
        let mut out = serialize(&k.to_vec());
        out.extend(serialize(&v.to_vec()));
        out
    };
    let key = b"\xfc\x06signetb";
    let mut raw = b"psbt\xff".to_vec();
    raw.extend(kv(&[0x00], &serialize(&spend)));
    raw.extend(kv(key, &serialize(&block)));
    let once_end = raw.len();
    raw.extend(kv(key, &serialize(&block_at(301))));
    let tail = {
        let mut t = vec![0x00];
        t.extend(kv(&[0x00], &serialize(&to_spend)));
        t.extend([0x00, 0x00]);
        t
    };
    raw.extend(&tail);
    use bitcoin::base64::prelude::{Engine as _, BASE64_STANDARD};
    assert!(parse_block_psbt(&BASE64_STANDARD.encode(&raw)).is_err());
    // Negative control: the same bytes with the key once parse and decode.
    let mut once = raw[..once_end].to_vec();
    once.extend(&tail);
    let psbt = parse_block_psbt(&BASE64_STANDARD.encode(&once)).unwrap();
    assert_eq!(decode_psbt(&psbt, &challenge).unwrap().height, 300);
}

/// Bitcoin's default signet challenge (1-of-2 bare multisig).
const DEFAULT_SIGNET: &str = "512103ad5e0edad18cb1f0fc0d28a3d4f1f3e445640337489abb10404f2d1e086be430210359ef5021964fe22d6f8e05b2463c9540ce96883fe3b278760f048f5189f2e6c452ae";

#[test]
fn real_default_signet_blocks() {
    let challenge = Challenge::parse(ScriptBuf::from_hex(DEFAULT_SIGNET).unwrap()).unwrap();
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/bitcoin/signet");
    for (file, height) in [("118509.hex", 118_509u32), ("118511.hex", 118_511)] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let real: Block = deserialize(&hex::decode(text.trim()).unwrap()).unwrap();
        // The signers' solution, found and stripped by this file's own reading of Core's rule.
        core_check(&real, &challenge.script).unwrap();
        let idx = real.txdata[0].output.len() - 1;
        let script = real.txdata[0].output[idx].script_pubkey.to_bytes();
        let (push, end) = next_push(&script, 38);
        assert_eq!(end, script.len(), "{file}: the solution is the last push");
        let data = push.unwrap();
        assert_eq!(data[..4], SIGNET_HEADER);
        let (script_sig, used): (ScriptBuf, usize) =
            bitcoin::consensus::deserialize_partial(&data[4..]).unwrap();
        let witness: bitcoin::Witness = deserialize(&data[4 + used..]).unwrap();
        let solution = Solution {
            script_sig,
            witness,
        };
        let mut unsolved = real.clone();
        unsolved.txdata[0].output[idx].script_pubkey = ScriptBuf::from_bytes(script[..38].to_vec());
        unsolved.header.merkle_root = unsolved.compute_merkle_root().unwrap();
        // keyguard decodes the unsolved block and rebuilds the commitment the signers signed.
        let decoded = decode_block(&serialize(&unsolved), &challenge).unwrap();
        assert_eq!(decoded.height, height);
        let mut spend = decoded.spend.clone();
        spend.input[0].script_sig = solution.script_sig.clone();
        spend.input[0].witness = solution.witness.clone();
        let verify = |tx: &bitcoin::Transaction| {
            bitcoinconsensus::verify_with_flags(
                challenge.script.as_bytes(),
                0,
                &serialize(tx),
                None,
                0,
                FLAGS,
            )
        };
        verify(&spend).unwrap_or_else(|e| panic!("{file}: {e:?}"));
        // Adding that solution the way keyguard does gives the real block back, byte for byte.
        assert_eq!(
            serialize(&solved_block(&decoded, &solution)),
            serialize(&real),
            "{file}"
        );
        // Negative control: keyguard's commitment for the block one second later does not verify.
        let mut later = unsolved.clone();
        later.header.time += 1;
        let other = decode_block(&serialize(&later), &challenge).unwrap();
        let mut spend = other.spend.clone();
        spend.input[0].script_sig = solution.script_sig.clone();
        spend.input[0].witness = solution.witness.clone();
        assert!(
            verify(&spend).is_err(),
            "{file}: a signature for another block verifies"
        );
    }
}
