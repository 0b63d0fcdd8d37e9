//! Bitcoin through the real binary: a seed imported by the CLI, `btc_getDescriptors`,
//! `btc_signPsbt` (v0 and v2, finalized transactions verified by Bitcoin Core's script
//! interpreter), policy refusals over JSON-RPC, the rolling window across a restart, the
//! seed's Ethereum key, and the Bitcoin Core external-signer command.

#[path = "support/bitcoin_verify.rs"]
mod bitcoin_verify;
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use bitcoin_verify::consensus_verify;
use keyguard_bitcoin::bitcoin::base64::prelude::{Engine as _, BASE64_STANDARD};
use keyguard_bitcoin::bitcoin::{Network, Transaction, TxOut};
use keyguard_bitcoin::testkit::{build_psbt, foreign_script, to_base64, OurInput, TestWallet};
use keyguard_bitcoin::ScriptKind;
use serde_json::{json, Value};

const WORDS: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                     abandon abandon about";

fn config(dir: &Path) -> String {
    format!(
        r#"
{keystore}[[listeners]]
name = "evm"
protocol = "evm-jsonrpc"
address = "127.0.0.1:0"
chain_id = 1
auth = "none"
keys = ["*"]
[[policies]]
name = "btc"
keys = ["hot"]
[policies.bitcoin]
network = "regtest"
destinations = "any"
max_spend_per_tx = "0.01 btc"
max_spend_per_window = "0.0025 btc"
max_fee = "10000 sat"
max_feerate_sat_vb = 100
[[policies]]
name = "eth"
keys = ["hot-eth"]
[policies.evm]
chain_ids = [1]
to = "any"
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
"#,
        keystore = common::software_keystore(dir, &[])
    )
}

fn keyguard(args: &[&str], env: &[(&str, &str)], stdin: &str) -> String {
    let mut cmd = Command::new(common::binary());
    cmd.args(args)
        .env("KEYGUARD_PASSPHRASE", "test-passphrase")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "keyguard {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn test_wallet() -> TestWallet {
    let seed = bip39::Mnemonic::parse(WORDS).unwrap().to_seed("");
    TestWallet::new(&seed, Network::Regtest)
}

/// Finalizes a PSBT from its partial signatures without keyguard's code: P2WPKH inputs get
/// `[signature, pubkey]`, P2TR key-path inputs `[signature]`.
fn finalize_by_hand(psbt: keyguard_bitcoin::bitcoin::Psbt) -> Transaction {
    use keyguard_bitcoin::bitcoin::Witness;
    let mut tx = psbt.unsigned_tx.clone();
    for (i, input) in psbt.inputs.iter().enumerate() {
        let witness = if let Some(sig) = input.tap_key_sig {
            Witness::from_slice(&[sig.to_vec()])
        } else {
            let (pk, sig) = input
                .partial_sigs
                .iter()
                .next()
                .unwrap_or_else(|| panic!("input {i} has no partial signature"));
            Witness::from_slice(&[sig.to_vec(), pk.to_bytes()])
        };
        tx.input[i].witness = witness;
    }
    tx
}

fn policy_error(resp: &Value) -> (String, String) {
    assert_eq!(resp["error"]["code"], -32001, "{resp}");
    let data = &resp["error"]["data"];
    (
        data["rule"].as_str().unwrap().into(),
        data["field"].as_str().unwrap().into(),
    )
}

#[test]
fn bitcoin_signing_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = config(dir);
    let cfg = dir.join("keyguard.toml");
    std::fs::write(&cfg, &text).unwrap();
    let words = dir.join("words");
    std::fs::write(&words, WORDS).unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let out = keyguard(
        &[
            "keys",
            "seed",
            "import",
            "--config",
            cfg_s,
            "--id",
            "hot",
            "--mnemonic-file",
            words.to_str().unwrap(),
        ],
        &[],
        "",
    );
    assert!(out.contains("fingerprint 73c5da0a"), "{out}");
    let listed = keyguard(&["keys", "list", "--config", cfg_s], &[], "");
    assert!(
        listed.contains("0x9858EfFD232B4033E47d90003D41EC34EcaEda94"),
        "{listed}"
    );
    let desc = keyguard(
        &[
            "keys",
            "descriptors",
            "--config",
            cfg_s,
            "--network",
            "regtest",
        ],
        &[],
        "",
    );
    assert!(
        desc.contains("wpkh([73c5da0a/84h/1h/0h]tpub") && !desc.contains("prv"),
        "{desc}"
    );

    let daemon = common::Daemon::start(dir, &text, &[]);
    let addr = daemon.rpc_addr();
    let d = common::rpc(&addr, "btc_getDescriptors", json!([{}]));
    assert_eq!(d["result"]["fingerprint"], "73c5da0a", "{d}");
    assert_eq!(d["result"]["network"], "regtest");
    // The seed's Ethereum key is an ordinary account.
    let accounts = common::rpc(&addr, "eth_accounts", json!([]));
    assert!(accounts
        .to_string()
        .to_lowercase()
        .contains("0x9858effd232b4033e47d90003d41ec34ecaeda94"));

    let tw = test_wallet();
    let inputs = [
        OurInput {
            kind: ScriptKind::P2wpkh,
            index: 0,
            sat: 60_000,
        },
        OurInput {
            kind: ScriptKind::P2tr,
            index: 1,
            sat: 50_000,
        },
    ];
    let psbt = build_psbt(
        &tw,
        &inputs,
        &[(foreign_script(9), 70_000)],
        Some((ScriptKind::P2tr, 0, 39_000)),
    );
    let prevouts: Vec<TxOut> = psbt
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    let resp = common::rpc(
        &addr,
        "btc_signPsbt",
        json!([{"psbt": to_base64(&psbt), "finalize": true}]),
    );
    let result = &resp["result"];
    assert_eq!(result["complete"], true, "{resp}");
    let tx: Transaction = keyguard_bitcoin::bitcoin::consensus::encode::deserialize_hex(
        result["hex"].as_str().unwrap(),
    )
    .unwrap();
    consensus_verify(&tx, &prevouts).unwrap();
    let mut lied = prevouts.clone();
    lied[0].value += keyguard_bitcoin::bitcoin::Amount::from_sat(1);
    assert!(consensus_verify(&tx, &lied).is_err());

    // The fee attack, refused over JSON-RPC with the rule and the input index.
    let mut attack = psbt.clone();
    attack.inputs[0].non_witness_utxo = None;
    let resp = common::rpc(&addr, "btc_signPsbt", json!([to_base64(&attack)]));
    assert_eq!(
        policy_error(&resp),
        ("bitcoin.input_amount_proof".into(), "inputs[0]".into())
    );

    // Not finalized: partial signatures come back in a PSBT. Finalized here by hand (witness
    // [sig, pubkey] for P2WPKH, [key-path sig] for P2TR) and run through Bitcoin Core's script
    // interpreter: the partial signatures themselves must be valid. The identical transaction signed
    // again spends nothing more, so it does not count against the window again.
    let resp = common::rpc(&addr, "btc_signPsbt", json!([to_base64(&psbt)]));
    assert_eq!(resp["result"]["complete"], false, "{resp}");
    let partial = BASE64_STANDARD
        .decode(resp["result"]["psbt"].as_str().unwrap())
        .unwrap();
    let partial = finalize_by_hand(keyguard_bitcoin::bitcoin::Psbt::deserialize(&partial).unwrap());
    consensus_verify(&partial, &prevouts).unwrap();
    assert!(consensus_verify(&partial, &lied).is_err());
    // Other transactions (other coins) of 71_000 each: spent so far 71_000 of 250_000...
    let other = |index: u32| {
        to_base64(&build_psbt(
            &tw,
            &[OurInput {
                kind: ScriptKind::P2wpkh,
                index,
                sat: 80_000,
            }],
            &[(foreign_script(9), 70_000)],
            Some((ScriptKind::P2tr, 0, 9_000)),
        ))
    };
    for index in [10, 11] {
        let resp = common::rpc(&addr, "btc_signPsbt", json!([other(index)]));
        assert!(resp["result"].is_object(), "{resp}");
    }
    // ...3 x 71_000 = 213_000: a fourth is not within the window.
    let resp = common::rpc(&addr, "btc_signPsbt", json!([other(12)]));
    assert_eq!(policy_error(&resp).0, "bitcoin.max_spend_per_window");

    // The window survives a restart (rebuilt from the audit log).
    daemon.terminate();
    let daemon = common::Daemon::start(dir, &text, &[]);
    let addr = daemon.rpc_addr();
    let resp = common::rpc(&addr, "btc_signPsbt", json!([other(12)]));
    assert_eq!(policy_error(&resp).0, "bitcoin.max_spend_per_window");

    // Bitcoin Core's external signer interface.
    let url = format!("http://{addr}");
    let env = [("KEYGUARD_URL", url.as_str())];
    let e: Value = serde_json::from_str(&keyguard(&["btc-signer", "enumerate"], &env, "")).unwrap();
    assert_eq!(e[0]["fingerprint"], "73c5da0a", "{e}");
    let g: Value = serde_json::from_str(&keyguard(
        &[
            "btc-signer",
            "--fingerprint",
            "73c5da0a",
            "--chain",
            "regtest",
            "getdescriptors",
            "--account",
            "0",
        ],
        &env,
        "",
    ))
    .unwrap();
    assert!(
        g["receive"][0]
            .as_str()
            .unwrap()
            .starts_with("wpkh([73c5da0a/84h/1h/0h]"),
        "{g}"
    );
    let wrong: Value = serde_json::from_str(&keyguard(
        &["btc-signer", "--chain", "main", "getdescriptors"],
        &env,
        "",
    ))
    .unwrap();
    assert!(wrong["error"].is_string(), "{wrong}");
}

#[test]
fn psbt_v2_over_rpc_comes_back_as_v2() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = config(dir).replace("max_spend_per_window = \"0.0025 btc\"\n", "");
    std::fs::write(dir.join("keyguard.toml"), &text).unwrap();
    let words = dir.join("words");
    std::fs::write(&words, WORDS).unwrap();
    let cfg = dir.join("keyguard.toml");
    keyguard(
        &[
            "keys",
            "seed",
            "import",
            "--config",
            cfg.to_str().unwrap(),
            "--id",
            "hot",
            "--mnemonic-file",
            words.to_str().unwrap(),
        ],
        &[],
        "",
    );
    let daemon = common::Daemon::start(dir, &text, &[]);
    let addr = daemon.rpc_addr();
    let tw = test_wallet();
    let inputs = [OurInput {
        kind: ScriptKind::P2tr,
        index: 2,
        sat: 80_000,
    }];
    let psbt = build_psbt(
        &tw,
        &inputs,
        &[(foreign_script(3), 50_000)],
        Some((ScriptKind::P2wpkh, 1, 29_000)),
    );
    let v2 = keyguard_bitcoin::testkit::to_v2(&psbt);
    let resp = common::rpc(
        &addr,
        "btc_signPsbt",
        json!({"psbt": BASE64_STANDARD.encode(v2), "finalize": true}),
    );
    let out = BASE64_STANDARD
        .decode(resp["result"]["psbt"].as_str().unwrap())
        .unwrap();
    // PSBT_GLOBAL_VERSION = 2 is present in the answer.
    assert!(
        out.windows(6)
            .any(|w| w == [0x01, 0xfb, 0x04, 0x02, 0x00, 0x00]),
        "{resp}"
    );
    assert_eq!(resp["result"]["complete"], true);
    // The finalized taproot spend is script-checked, with taproot flags, against its prevouts.
    let prevouts: Vec<TxOut> = psbt
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    let tx: Transaction = keyguard_bitcoin::bitcoin::consensus::encode::deserialize_hex(
        resp["result"]["hex"]
            .as_str()
            .expect("a finalized PSBT comes with its hex"),
    )
    .unwrap();
    assert_eq!(tx.compute_txid(), psbt.unsigned_tx.compute_txid());
    consensus_verify(&tx, &prevouts).unwrap();
    // Control: the same spend against a prevout amount it did not commit to fails.
    let mut lied = prevouts.clone();
    lied[0].value += keyguard_bitcoin::bitcoin::Amount::from_sat(1);
    assert!(consensus_verify(&tx, &lied).is_err());
}

#[test]
fn embit_written_psbts_decode_in_both_versions() {
    // Seed corpus of the fuzz target, written by embit (v0 and BIP370 v2).
    let seed = bip39::Mnemonic::parse(WORDS).unwrap().to_seed("");
    let tw = TestWallet::new(&seed, Network::Bitcoin);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/bitcoin_psbt");
    for (name, jobs) in [("seed-v0-0", 2), ("seed-v2-0", 2)] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let (psbt, format) = keyguard_bitcoin::decode::parse_psbt_bytes(&bytes).unwrap();
        let intent = keyguard_bitcoin::decode::decode_parsed(psbt, format, &tw.wallet).unwrap();
        assert_eq!(intent.jobs.len(), jobs, "{name}");
        assert!(matches!(
            intent.outputs[1].class,
            keyguard_bitcoin::OutputClass::Change { index: 0 }
        ));
    }
    // Without the previous transaction the segwit v0 input is refused (the fee attack).
    let bytes = std::fs::read(dir.join("seed-v2-1")).unwrap();
    let (psbt, format) = keyguard_bitcoin::decode::parse_psbt_bytes(&bytes).unwrap();
    let err = keyguard_bitcoin::decode::decode_parsed(psbt, format, &tw.wallet).unwrap_err();
    assert!(
        err.to_string().contains("bitcoin.input_amount_proof"),
        "{err}"
    );
}

type Utxos =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(String, u32), (f64, String)>>>;

/// A stand-in for Bitcoin Core speaking its JSON-RPC (`gettxout`, `sendrawtransaction`).
fn fake_node(runtime: &tokio::runtime::Runtime, utxos: Utxos) -> String {
    runtime.block_on(async move {
        let server = jsonrpsee::server::Server::builder()
            .build("127.0.0.1:0")
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let mut module = jsonrpsee::RpcModule::new(utxos);
        module
            .register_method("gettxout", |params, utxos, _| {
                let (txid, vout, _mempool): (String, u32, bool) = params.parse().unwrap();
                match utxos.lock().unwrap().get(&(txid, vout)) {
                    Some((btc, hex)) => json!({
                        "bestblock": "00".repeat(32), "confirmations": 1, "value": btc,
                        "scriptPubKey": {"asm": "", "hex": hex, "type": "witness_v0_keyhash"},
                        "coinbase": false
                    }),
                    None => Value::Null,
                }
            })
            .unwrap();
        module
            .register_method("getblockcount", |_, _, _| json!(200))
            .unwrap();
        module
            .register_method("sendrawtransaction", |params, _, _| {
                let (hex,): (String,) = params.parse().unwrap();
                let tx: Transaction =
                    keyguard_bitcoin::bitcoin::consensus::encode::deserialize_hex(&hex).unwrap();
                Value::String(tx.compute_txid().to_string())
            })
            .unwrap();
        let handle = server.start(module);
        std::mem::forget(handle);
        format!("http://{addr}")
    })
}

#[test]
fn upstream_node_checks_inputs_and_broadcasts() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let utxos: Utxos = Default::default();
    let url = fake_node(&runtime, utxos.clone());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = config(dir).replace(
        "[[policies]]\nname = \"btc\"",
        &format!("[bitcoin_node]\nurl = \"{url}\"\n[[policies]]\nname = \"btc\""),
    );
    let cfg = dir.join("keyguard.toml");
    std::fs::write(&cfg, &text).unwrap();
    std::fs::write(dir.join("words"), WORDS).unwrap();
    keyguard(
        &[
            "keys",
            "seed",
            "import",
            "--config",
            cfg.to_str().unwrap(),
            "--id",
            "hot",
            "--mnemonic-file",
            dir.join("words").to_str().unwrap(),
        ],
        &[],
        "",
    );
    let daemon = common::Daemon::start(dir, &text, &[]);
    let addr = daemon.rpc_addr();

    let tw = test_wallet();
    let inputs = [OurInput {
        kind: ScriptKind::P2wpkh,
        index: 4,
        sat: 60_000,
    }];
    let psbt = build_psbt(
        &tw,
        &inputs,
        &[(foreign_script(9), 30_000)],
        Some((ScriptKind::P2wpkh, 2, 29_000)),
    );
    let outpoint = psbt.unsigned_tx.input[0].previous_output;
    let key = (outpoint.txid.to_string(), outpoint.vout);
    let spk = psbt.inputs[0]
        .witness_utxo
        .as_ref()
        .unwrap()
        .script_pubkey
        .to_hex_string();
    let b64 = to_base64(&psbt);

    // Unknown to the node (spent or never existed): refused.
    let resp = common::rpc(&addr, "btc_signPsbt", json!([{"psbt": b64}]));
    assert_eq!(
        policy_error(&resp),
        ("bitcoin.node_utxo_spent".into(), "inputs[0]".into())
    );
    // The node disagrees about the amount.
    utxos
        .lock()
        .unwrap()
        .insert(key.clone(), (0.0007, spk.clone()));
    let resp = common::rpc(&addr, "btc_signPsbt", json!([{"psbt": b64}]));
    assert_eq!(
        policy_error(&resp),
        ("bitcoin.node_utxo_mismatch".into(), "inputs[0]".into())
    );
    // Agreeing node: signed, audited, then relayed.
    utxos.lock().unwrap().insert(key, (0.0006, spk));
    let resp = common::rpc(
        &addr,
        "btc_signPsbt",
        json!([{"psbt": b64, "finalize": true, "broadcast": true}]),
    );
    let result = &resp["result"];
    assert_eq!(result["broadcast"]["txid"], result["txid"], "{resp}");
    // Broadcast without finalize is a malformed request.
    let resp = common::rpc(
        &addr,
        "btc_signPsbt",
        json!([{"psbt": b64, "broadcast": true}]),
    );
    assert_eq!(resp["error"]["code"], -32602, "{resp}");
}

#[test]
fn conflicting_spend_refused_across_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = config(dir).replace("max_spend_per_window = \"0.0025 btc\"\n", "");
    let cfg = dir.join("keyguard.toml");
    std::fs::write(&cfg, &text).unwrap();
    std::fs::write(dir.join("words"), WORDS).unwrap();
    keyguard(
        &[
            "keys",
            "seed",
            "import",
            "--config",
            cfg.to_str().unwrap(),
            "--id",
            "hot",
            "--mnemonic-file",
            dir.join("words").to_str().unwrap(),
        ],
        &[],
        "",
    );
    let tw = test_wallet();
    let inputs = [OurInput {
        kind: ScriptKind::P2tr,
        index: 0,
        sat: 90_000,
    }];
    let pay = |dest: u8, fee: u64| {
        build_psbt(
            &tw,
            &inputs,
            &[(foreign_script(dest), 50_000)],
            Some((ScriptKind::P2tr, 0, 40_000 - fee)),
        )
    };
    let daemon = common::Daemon::start(dir, &text, &[]);
    let addr = daemon.rpc_addr();
    let first = common::rpc(&addr, "btc_signPsbt", json!([to_base64(&pay(9, 1_000))]));
    assert!(first["result"].is_object(), "{first}");
    // Signing the same transaction again is fine (idempotent retry)...
    assert!(
        common::rpc(&addr, "btc_signPsbt", json!([to_base64(&pay(9, 1_000))]))["result"]
            .is_object()
    );
    // ...paying someone else with the same coin is a double spend.
    let resp = common::rpc(&addr, "btc_signPsbt", json!([to_base64(&pay(8, 1_000))]));
    assert_eq!(
        policy_error(&resp),
        ("bitcoin.conflicting_spend".into(), "inputs[0]".into())
    );
    // A fee bump of the same payment is refused too unless the policy allows it.
    let resp = common::rpc(&addr, "btc_signPsbt", json!([to_base64(&pay(9, 2_000))]));
    assert_eq!(policy_error(&resp).0, "bitcoin.conflicting_spend");
    daemon.terminate();
    let daemon = common::Daemon::start(dir, &text, &[]);
    let resp = common::rpc(
        &daemon.rpc_addr(),
        "btc_signPsbt",
        json!([to_base64(&pay(8, 1_000))]),
    );
    assert_eq!(
        policy_error(&resp).0,
        "bitcoin.conflicting_spend",
        "forgotten after restart"
    );
    daemon.terminate();
    let bumping = text.replace(
        "max_feerate_sat_vb = 100\n",
        "max_feerate_sat_vb = 100\nallow_fee_bump = true\n",
    );
    let daemon = common::Daemon::start(dir, &bumping, &[]);
    let addr = daemon.rpc_addr();
    assert!(
        common::rpc(&addr, "btc_signPsbt", json!([to_base64(&pay(9, 2_000))]))["result"]
            .is_object()
    );
    let resp = common::rpc(&addr, "btc_signPsbt", json!([to_base64(&pay(8, 3_000))]));
    assert_eq!(policy_error(&resp).0, "bitcoin.conflicting_spend");
}

#[test]
fn hot_wallet_example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/bitcoin-hot-wallet.toml");
    let config = keyguard::config::Config::load(&path).unwrap();
    let btc = config.policies[0].bitcoin.as_ref().unwrap();
    assert_eq!(btc.network, Network::Regtest);
    assert_eq!(btc.max_spend_per_window.unwrap().to_sat(), 200_000_000);
    assert_eq!(config.policies[0].keys, ["hot"]);
    assert!(config.policies[1].evm.is_some() && config.policies[1].keys == ["hot-eth"]);
    assert!(btc.require_approval.is_some() && btc.time_window.is_none());
}
