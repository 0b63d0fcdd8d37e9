//! A signet challenge key on a real SoftHSM2 token signs consecutive blocks through the real
//! binary: the challenge comes from `keyguard keys signet-challenge`, every block after the
//! first is proven to build on the one keyguard signed (`parent_header`), and every solution
//! (CKM_ECDSA, randomized, about half high-S from the token) is checked by Bitcoin Core's
//! script interpreter (`bitcoinconsensus`) against a commitment rebuilt by the test kit, not by
//! keyguard. A second block at a signed height is refused by name, and so is a block whose
//! parent is not keyguard's.

#[path = "support/bitcoin_verify.rs"]
mod bitcoin_verify;
mod common;
#[path = "support/softhsm.rs"]
mod softhsm;

use std::str::FromStr;

use bitcoin_verify::consensus_verify;
use keyguard_bitcoin::bitcoin::consensus::{deserialize, serialize};
use keyguard_bitcoin::bitcoin::{Amount, Block, BlockHash, ScriptBuf, TxOut, Witness};
use keyguard_bitcoin::signet::SIGNET_GENESIS;
use keyguard_bitcoin::signet_testkit::{miner_txs, BlockSpec};
use serde_json::{json, Value};
use softhsm::{SoftToken, PIN_ENV};

fn payee() -> ScriptBuf {
    ScriptBuf::from_hex("0014aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap()
}

fn config(token: &SoftToken, data: &std::path::Path, challenge: &str) -> String {
    format!(
        r#"
[data]
dir = "{data}"
[keystore]
backend = "pkcs11"
[keystore.pkcs11]
library = "{lib}"
token_label = "{label}"
pin_env = "{PIN_ENV}"
[[listeners]]
name = "evm"
protocol = "evm-jsonrpc"
address = "127.0.0.1:0"
chain_id = 1
auth = "none"
keys = ["*"]
max_body_bytes = 16777216
[[policies]]
name = "signet-miner"
keys = ["signet"]
[policies.signet]
challenge = "{challenge}"
start_height = 1
payout = ["script:{payee}"]
"#,
        data = data.join("var").display(),
        lib = token.library.display(),
        label = token.label,
        payee = payee().to_hex_string(),
    )
}

/// The solution against the commitment the test kit rebuilds from the unsolved block.
fn core_accepts(unsolved: &Block, challenge: &ScriptBuf, solution: &[u8]) -> Result<(), String> {
    let (_, mut spend) = miner_txs(unsolved, challenge);
    let (script_sig, used): (ScriptBuf, usize) =
        keyguard_bitcoin::bitcoin::consensus::deserialize_partial(solution)
            .map_err(|e| e.to_string())?;
    spend.input[0].script_sig = script_sig;
    spend.input[0].witness =
        deserialize::<Witness>(&solution[used..]).map_err(|e| e.to_string())?;
    let spent = TxOut {
        value: Amount::ZERO,
        script_pubkey: challenge.clone(),
    };
    consensus_verify(&spend, &[spent])
}

fn rule(resp: &Value) -> &str {
    resp["error"]["data"]["rule"].as_str().unwrap_or("")
}

#[test]
fn hsm_challenge_key_signs_consecutive_blocks_verified_by_core() {
    let Some(token) = SoftToken::new("kg-signet") else {
        return;
    };
    token.generate("signet", "secp256k1");
    let dir = tempfile::tempdir().unwrap();
    let envs = token.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // The challenge an operator puts in -signetchallenge, read from keyguard itself.
    let probe = token.config("");
    let out = token.keyguard(
        &[
            "keys",
            "signet-challenge",
            "--id",
            "signet",
            "--config",
            probe.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", softhsm::stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let hex = text
        .lines()
        .find_map(|l| l.strip_prefix("multisig "))
        .unwrap_or_else(|| panic!("{text}"))
        .to_string();
    let challenge = ScriptBuf::from_hex(&hex).unwrap();
    let daemon = common::Daemon::start(dir.path(), &config(&token, dir.path(), &hex), &envs);
    let rpc = daemon.rpc_addr();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let mut prev = BlockHash::from_str(SIGNET_GENESIS).unwrap();
    let mut parent: Option<String> = None;
    for height in 1..=8u32 {
        let time = now - 10_000 + height * 600;
        let unsolved = BlockSpec::new(height, prev, time, payee()).build();
        let mut params = json!({"block": hex::encode(serialize(&unsolved))});
        if let Some(p) = &parent {
            params["parent_header"] = json!(p);
        }
        let resp = common::rpc(&rpc, "btc_signSignetBlock", json!([params]));
        let r = &resp["result"];
        assert_eq!(r["height"], height, "{resp}");
        let solution = hex::decode(r["solution"].as_str().unwrap()).unwrap();
        core_accepts(&unsolved, &challenge, &solution).unwrap();
        // Low S, though the token returns high S about half the time.
        let sig_push = &solution[2..];
        let sig = keyguard_bitcoin::bitcoin::ecdsa::Signature::from_slice(
            &sig_push[1..1 + usize::from(sig_push[0])],
        )
        .unwrap();
        let mut low = sig.signature;
        low.normalize_s();
        assert_eq!(low, sig.signature, "high S released");
        // The solved block: merkle root recomputed over the coinbase with the solution.
        let mut solved: Block =
            deserialize(&hex::decode(r["block"].as_str().unwrap()).unwrap()).unwrap();
        assert!(solved.check_merkle_root() && solved.check_witness_commitment());
        // Negative control: the solution does not verify for another block.
        let other = BlockSpec::new(height, prev, time + 1, payee()).build();
        assert!(core_accepts(&other, &challenge, &solution).is_err());
        solved.header.nonce = height * 7; // the miner's grind
        prev = solved.block_hash();
        parent = Some(hex::encode(serialize(&solved.header)));
    }

    // A second block at height 8, and height 9 on a parent that is not keyguard's block.
    let again = BlockSpec::new(
        8,
        BlockHash::from_str(SIGNET_GENESIS).unwrap(),
        now,
        payee(),
    );
    let resp = common::rpc(
        &rpc,
        "btc_signSignetBlock",
        json!([{"block": hex::encode(serialize(&again.build()))}]),
    );
    assert_eq!(rule(&resp), "bitcoin.signet.height", "{resp}");
    let mut fake = deserialize::<keyguard_bitcoin::bitcoin::block::Header>(
        &hex::decode(parent.as_ref().unwrap()).unwrap(),
    )
    .unwrap();
    fake.time += 1;
    let beside = BlockSpec::new(9, fake.block_hash(), now, payee()).build();
    let resp = common::rpc(
        &rpc,
        "btc_signSignetBlock",
        json!([{"block": hex::encode(serialize(&beside)), "parent_header": hex::encode(serialize(&fake))}]),
    );
    assert_eq!(rule(&resp), "bitcoin.signet.prev_block", "{resp}");
}
