//! A single secp256k1 key on a real SoftHSM2 token signs Bitcoin PSBTs through the real
//! binary: registered as `wpkh(<pubkey>)`, its P2WPKH inputs signed with CKM_ECDSA (low-S,
//! verified by Bitcoin Core's script interpreter, `bitcoinconsensus`), change back to the key
//! counted as change, and taproot inputs refused by name (PKCS#11 has no BIP340).

#[path = "support/bitcoin_verify.rs"]
mod bitcoin_verify;
mod common;
#[path = "support/softhsm.rs"]
mod softhsm;

use bitcoin_verify::consensus_verify;
use keyguard_bitcoin::bitcoin::secp256k1::PublicKey;
use keyguard_bitcoin::bitcoin::{Amount, Transaction, TxOut};
use keyguard_bitcoin::testkit::{build_single_psbt, foreign_script, to_base64};
use keyguard_bitcoin::ScriptKind;
use serde_json::{json, Value};
use softhsm::{SoftToken, PIN_ENV};

fn config(token: &SoftToken, data: &std::path::Path) -> String {
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
[[policies]]
name = "hsm-btc"
keys = ["btc"]
[policies.bitcoin]
network = "regtest"
script_types = ["p2wpkh"]
destinations = "any"
max_spend_per_tx = "0.01 btc"
max_fee = "10000 sat"
max_feerate_sat_vb = 100
"#,
        data = data.join("var").display(),
        lib = token.library.display(),
        label = token.label,
    )
}

#[test]
fn hsm_key_signs_p2wpkh_psbts_and_refuses_taproot() {
    let Some(token) = SoftToken::new("kg-btc") else {
        return;
    };
    token.generate("btc", "secp256k1");
    let dir = tempfile::tempdir().unwrap();
    let envs = token.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = common::Daemon::start(dir.path(), &config(&token, dir.path()), &envs);
    let rpc = daemon.rpc_addr();

    // The key is found without naming it, and is described as a bare-key descriptor.
    let d = common::rpc(&rpc, "btc_getDescriptors", json!([{}]));
    let result = &d["result"];
    assert_eq!(result["key"], "btc", "{d}");
    assert_eq!(result["single_key"], true);
    let desc = result["receive"][0].as_str().unwrap();
    let hex_key = desc
        .strip_prefix("wpkh(")
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("{desc}"));
    let key: PublicKey = hex_key.parse().expect("compressed public key");
    assert_eq!(result["internal"][0], desc);

    // Two inputs of the key, a payment, change back to the key. Twelve token signatures: about
    // half come back high-S from the token; every released one must be low-S (BIP146
    // standardness; consensus alone accepts high S, so it is checked separately).
    for round in 0..6u64 {
        let psbt = build_single_psbt(
            &key,
            &[
                (ScriptKind::P2wpkh, 70_000 + round),
                (ScriptKind::P2wpkh, 50_000),
            ],
            &[(foreign_script(3), 80_000)],
            Some(39_000 + round),
        );
        let prevouts: Vec<TxOut> = psbt
            .inputs
            .iter()
            .map(|i| i.witness_utxo.clone().unwrap())
            .collect();
        let resp = common::rpc(
            &rpc,
            "btc_signPsbt",
            json!([{"psbt": to_base64(&psbt), "finalize": true}]),
        );
        let r = &resp["result"];
        assert_eq!(r["complete"], true, "{resp}");
        assert_eq!(r["signed_inputs"], json!([0, 1]));
        let tx: Transaction = keyguard_bitcoin::bitcoin::consensus::encode::deserialize_hex(
            r["hex"].as_str().unwrap(),
        )
        .unwrap();
        consensus_verify(&tx, &prevouts).unwrap();
        for input in &tx.input {
            let sig =
                keyguard_bitcoin::bitcoin::ecdsa::Signature::from_slice(&input.witness[0]).unwrap();
            let mut low = sig.signature;
            low.normalize_s();
            assert_eq!(low, sig.signature, "high S released");
        }
        let mut lied = prevouts.clone();
        lied[1].value += Amount::from_sat(1);
        assert!(
            consensus_verify(&tx, &lied).is_err(),
            "amounts are committed"
        );
    }

    // The audit row counts only the payment and fee as spent: the change is the key's own.
    let rows = std::process::Command::new(common::binary())
        .args(["audit", "export", "--decision", "signed", "--config"])
        .arg(&daemon.config)
        .envs(token.envs())
        .output()
        .unwrap();
    let last: Value = String::from_utf8_lossy(&rows.stdout)
        .lines()
        .last()
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    assert_eq!(last["summary"]["spend_sat"], 81_000, "{last}");

    // Taproot: refused by name before the token is asked.
    let psbt = build_single_psbt(
        &key,
        &[(ScriptKind::P2wpkh, 70_000), (ScriptKind::P2tr, 50_000)],
        &[(foreign_script(3), 110_000)],
        None,
    );
    let resp = common::rpc(&rpc, "btc_signPsbt", json!([to_base64(&psbt)]));
    assert_eq!(resp["error"]["code"], -32001, "{resp}");
    let data = &resp["error"]["data"];
    assert_eq!(data["rule"], "bitcoin.script_type");
    assert_eq!(data["field"], "inputs[1]");
    assert!(
        data["reason"].as_str().unwrap().contains("PKCS#11"),
        "{resp}"
    );
}
