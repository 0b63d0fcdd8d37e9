//! Hostile `btc_signPsbt` requests: malformed and empty PSBTs, wrong params, the BIP143 fee
//! attack, foreign and mis-derived inputs, wrong network, wrong sighash, dust, over-limit
//! spends, negative and huge fees, frozen locktimes, a key not granted, unknown and revoked
//! tokens, and a disabled seed. Each row names the JSON-RPC code and the rule and field (input
//! or output index) it must carry; every row is checked to have signed nothing and to have left
//! an audit row.

use std::path::Path;
use std::process::Command;

use keyguard_bitcoin::bitcoin::base64::prelude::{Engine as _, BASE64_STANDARD};
use keyguard_bitcoin::bitcoin::psbt::Psbt;
use keyguard_bitcoin::bitcoin::{Amount, Network, TxOut};
use keyguard_bitcoin::testkit::{build_psbt, foreign_script, to_base64, OurInput, TestWallet};
use keyguard_bitcoin::ScriptKind;
use serde_json::{json, Value};

use crate::common::{self, Daemon};
use crate::helpers::{carries_signature, check_audit, check_rpc_error, mark, Audited, Failures};

const WORDS: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                     abandon abandon about";
pub const GOOD: &str = "btc-good-token-0123456789";
const NARROW: &str = "btc-narrow-token-0123456789";
const METHOD: &str = "btc_signPsbt";

use crate::common::token_sha256 as sha;

pub fn config(dir: &Path) -> String {
    format!(
        r#"
{keystore}[admin]
totp_single_use = false
[[listeners]]
name = "evm"
protocol = "evm-jsonrpc"
address = "127.0.0.1:0"
chain_id = 1
auth = "bearer"
[[clients]]
name = "good"
token_sha256 = "{good}"
keys = ["*"]
[[clients]]
name = "narrow"
token_sha256 = "{narrow}"
keys = ["hot-eth"]
[[policies]]
name = "btc"
keys = ["hot"]
[policies.bitcoin]
network = "regtest"
destinations = "any"
max_spend_per_tx = "0.01 btc"
max_fee = "10000 sat"
max_feerate_sat_vb = 100
max_op_return = 0
allow_time_locktime = false
"#,
        keystore = crate::common::software_keystore(dir, &[]),
        good = sha(GOOD),
        narrow = sha(NARROW),
    )
}

pub fn call(addr: &str, token: Option<&str>, params: Value) -> Value {
    use std::io::{Read, Write};
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": METHOD, "params": params}).to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let text = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {out}"))
}

pub fn wallet(network: Network) -> TestWallet {
    let seed = bip39::Mnemonic::parse(WORDS).unwrap().to_seed("");
    TestWallet::new(&seed, network)
}

/// A valid 1-in (P2WPKH, 60k sat) / 2-out PSBT; rows break one thing.
pub fn good_psbt(tw: &TestWallet) -> Psbt {
    build_psbt(
        tw,
        &[OurInput {
            kind: ScriptKind::P2wpkh,
            index: 0,
            sat: 60_000,
        }],
        &[(foreign_script(9), 20_000)],
        Some((ScriptKind::P2wpkh, 0, 39_000)),
    )
}

fn edited(tw: &TestWallet, edit: impl FnOnce(&mut Psbt)) -> Value {
    let mut p = good_psbt(tw);
    edit(&mut p);
    json!([{"psbt": to_base64(&p)}])
}

struct Row {
    name: &'static str,
    token: Option<&'static str>,
    params: Value,
    code: i64,
    data: Vec<(&'static str, &'static str)>,
    rule: Option<&'static str>,
}

fn row(name: &'static str, params: Value, code: i64, data: &[(&'static str, &'static str)]) -> Row {
    let rule = data.iter().find(|(k, _)| *k == "rule").map(|(_, v)| *v);
    Row {
        name,
        token: Some(GOOD),
        params,
        code,
        data: data.to_vec(),
        rule: rule.or((code == -32602).then_some("request.invalid")),
    }
}

fn table(tw: &TestWallet) -> Vec<Row> {
    let main = wallet(Network::Bitcoin);
    let good = json!([{"psbt": to_base64(&good_psbt(tw))}]);
    let unauth = |name, token| Row {
        name,
        token,
        params: good.clone(),
        code: -32005,
        data: vec![],
        rule: Some("access.unauthenticated"),
    };
    let many: Vec<(keyguard_bitcoin::bitcoin::ScriptBuf, u64)> = (0..2000)
        .map(|i| (foreign_script((i % 200 + 1) as u8), 1))
        .collect();
    vec![
        row("no params", json!([]), -32602, &[("field", "psbt")]),
        row(
            "psbt not base64",
            json!([{"psbt": "***"}]),
            -32602,
            &[("field", "psbt")],
        ),
        row(
            "psbt empty",
            json!([{"psbt": ""}]),
            -32602,
            &[("field", "psbt")],
        ),
        row(
            "psbt garbage bytes",
            json!([{"psbt": BASE64_STANDARD.encode([0u8; 64])}]),
            -32602,
            &[("field", "psbt")],
        ),
        row(
            "psbt magic only",
            json!([{"psbt": BASE64_STANDARD.encode(b"psbt\xff")}]),
            -32602,
            &[("field", "psbt")],
        ),
        row(
            "psbt as number",
            json!([{"psbt": 7}]),
            -32602,
            &[("field", "psbt")],
        ),
        row(
            "unknown param",
            json!([{"psbt": to_base64(&good_psbt(tw)), "evil": true}]),
            -32602,
            &[("field", "evil")],
        ),
        row(
            "misspelt finalize",
            json!([{"psbt": to_base64(&good_psbt(tw)), "finalise": true}]),
            -32602,
            &[("field", "finalise")],
        ),
        row(
            "unknown key",
            json!([{"psbt": to_base64(&good_psbt(tw)), "key": "nope"}]),
            -32001,
            &[("rule", "policy.none"), ("field", "key")],
        ),
        row(
            "fee attack (no previous tx)",
            edited(tw, |p| p.inputs[0].non_witness_utxo = None),
            -32001,
            &[
                ("rule", "bitcoin.input_amount_proof"),
                ("field", "inputs[0]"),
            ],
        ),
        row(
            "previous tx does not match",
            edited(tw, |p| {
                let prev = p.inputs[0].non_witness_utxo.as_mut().unwrap();
                prev.output[0].value = Amount::from_sat(1);
            }),
            -32001,
            &[
                ("rule", "bitcoin.input_amount_proof"),
                ("field", "inputs[0]"),
            ],
        ),
        row(
            "no input of ours",
            edited(tw, |p| p.inputs[0].bip32_derivation.clear()),
            -32602,
            &[("field", "psbt")],
        ),
        row(
            "foreign input next to ours",
            {
                let mut p = build_psbt(
                    tw,
                    &[
                        OurInput {
                            kind: ScriptKind::P2wpkh,
                            index: 0,
                            sat: 60_000,
                        },
                        OurInput {
                            kind: ScriptKind::P2wpkh,
                            index: 5,
                            sat: 10_000,
                        },
                    ],
                    &[(foreign_script(9), 20_000)],
                    Some((ScriptKind::P2wpkh, 0, 49_000)),
                );
                p.inputs[1].bip32_derivation.clear();
                json!([{"psbt": to_base64(&p)}])
            },
            -32001,
            &[("rule", "bitcoin.foreign_input"), ("field", "inputs[1]")],
        ),
        row(
            "finalize not a boolean",
            json!([{"psbt": to_base64(&good_psbt(tw)), "finalize": "yes"}]),
            -32602,
            &[("field", "finalize")],
        ),
        row(
            "broadcast without a node",
            json!([{"psbt": to_base64(&good_psbt(tw)), "finalize": true, "broadcast": true}]),
            -32602,
            &[("field", "broadcast")],
        ),
        row(
            "PSBT v2 header, garbage body",
            json!([{"psbt": BASE64_STANDARD.encode([&b"psbt\xff\x01\x00\x02\xfb\x04"[..], &[2, 0, 0, 0, 0xff, 0xff]].concat())}]),
            -32602,
            &[("field", "psbt")],
        ),
        row(
            "input already finalized",
            edited(tw, |p| {
                p.inputs[0].final_script_witness =
                    Some(keyguard_bitcoin::bitcoin::Witness::from_slice(&[
                        [1u8; 72].as_slice(),
                        &[2u8; 33],
                    ]));
            }),
            -32602,
            &[("field", "inputs[0]")],
        ),
        row(
            "mainnet keys on regtest",
            json!([{"psbt": to_base64(&good_psbt(&main))}]),
            -32001,
            &[("rule", "bitcoin.key_derivation"), ("field", "inputs[0]")],
        ),
        row(
            "sighash NONE",
            edited(tw, |p| {
                p.inputs[0].sighash_type = Some(
                    keyguard_bitcoin::bitcoin::psbt::PsbtSighashType::from_u32(2),
                );
            }),
            -32001,
            &[
                ("rule", "bitcoin.sighash_type"),
                ("field", "inputs[0].sighash_type"),
            ],
        ),
        row(
            "dust output",
            edited(tw, |p| {
                p.unsigned_tx.output[0].value = Amount::from_sat(1);
                p.unsigned_tx.output[1].value = Amount::from_sat(58_000);
            }),
            -32001,
            &[("rule", "bitcoin.dust"), ("field", "outputs[0]")],
        ),
        row(
            "OP_RETURN data",
            edited(tw, |p| {
                p.unsigned_tx.output.push(TxOut {
                    value: Amount::ZERO,
                    script_pubkey: keyguard_bitcoin::bitcoin::ScriptBuf::new_op_return([1u8; 8]),
                });
                p.outputs.push(Default::default());
            }),
            -32001,
            &[("rule", "bitcoin.op_return"), ("field", "outputs[2]")],
        ),
        row(
            "outputs exceed inputs",
            edited(tw, |p| {
                p.unsigned_tx.output[0].value = Amount::from_sat(30_000)
            }),
            -32001,
            &[("rule", "bitcoin.fee_positive")],
        ),
        row(
            "fee over max_fee",
            edited(tw, |p| {
                p.unsigned_tx.output[1].value = Amount::from_sat(20_000)
            }),
            -32001,
            &[("rule", "bitcoin.max_fee")],
        ),
        row(
            "spend over max_spend_per_tx",
            {
                let p = build_psbt(
                    tw,
                    &[OurInput {
                        kind: ScriptKind::P2tr,
                        index: 1,
                        sat: 5_000_000,
                    }],
                    &[(foreign_script(9), 4_995_000)],
                    None,
                );
                json!([{"psbt": to_base64(&p)}])
            },
            -32001,
            &[("rule", "bitcoin.max_spend_per_tx")],
        ),
        row(
            "timestamp locktime",
            edited(tw, |p| {
                p.unsigned_tx.lock_time =
                    keyguard_bitcoin::bitcoin::absolute::LockTime::from_consensus(1_700_000_000);
            }),
            -32001,
            &[("rule", "bitcoin.locktime")],
        ),
        row(
            "tx version 0x7fffffff",
            edited(tw, |p| {
                p.unsigned_tx.version = keyguard_bitcoin::bitcoin::transaction::Version(i32::MAX);
            }),
            -32001,
            &[("rule", "bitcoin.tx_version")],
        ),
        row(
            "2000 dust outputs",
            {
                let p = build_psbt(
                    tw,
                    &[OurInput {
                        kind: ScriptKind::P2wpkh,
                        index: 0,
                        sat: 60_000,
                    }],
                    &many,
                    None,
                );
                json!([{"psbt": to_base64(&p)}])
            },
            -32001,
            &[("rule", "bitcoin.dust")],
        ),
        Row {
            name: "key not granted to client",
            token: Some(NARROW),
            params: json!([{"psbt": to_base64(&good_psbt(tw)), "key": "hot"}]),
            code: -32005,
            data: vec![],
            rule: Some("access.key_not_granted"),
        },
        unauth("no token", None),
        unauth("unknown token", Some("not-a-token")),
    ]
}

fn check(cfg: &Path, rpc: &str, r: &Row) -> Result<(), String> {
    let before = mark(cfg);
    let resp = call(rpc, r.token, r.params.clone());
    check_rpc_error(&resp, r.code, &r.data)?;
    if carries_signature(&resp) || resp.to_string().contains("cHNidP") {
        return Err(format!("the error carries a PSBT or signature: {resp}"));
    }
    check_audit(
        cfg,
        before,
        Audited::Row {
            method: METHOD,
            rule: r.rule,
        },
    )
}

#[test]
fn bitcoin_hostile_psbts_are_refused_unsigned_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = config(dir);
    let cfg = dir.join("keyguard.toml");
    std::fs::write(&cfg, &text).unwrap();
    std::fs::write(dir.join("words"), WORDS).unwrap();
    let out = Command::new(common::binary())
        .args(["keys", "seed", "import", "--id", "hot", "--config"])
        .arg(&cfg)
        .arg("--mnemonic-file")
        .arg(dir.join("words"))
        .env("KEYGUARD_PASSPHRASE", "test-passphrase")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = Daemon::start(dir, &text, &[]);
    let rpc = daemon.rpc_addr();
    let tw = wallet(Network::Regtest);
    let ok = call(
        &rpc,
        Some(GOOD),
        json!([{"psbt": to_base64(&good_psbt(&tw))}]),
    );
    assert!(
        ok["result"]["psbt"].is_string(),
        "the control PSBT must sign: {ok}"
    );

    let rows = table(&tw);
    let mut failures = Failures::default();
    for r in &rows {
        failures.check(r.name, check(&cfg, &rpc, r));
    }

    // The kill switch.
    let alice = crate::control::bootstrap_admin(&daemon, "alice");
    let sock = dir.join("var/admin.sock");
    let off = crate::control::admin(&sock, &alice, "keys.disable", json!({"key": "hot"}));
    assert!(off["result"].is_object(), "{off}");
    let disabled = Row {
        name: "disabled seed",
        token: Some(GOOD),
        params: json!([{"psbt": to_base64(&good_psbt(&tw))}]),
        code: -32004,
        data: vec![],
        rule: Some("admin.kill_switch"),
    };
    failures.check(disabled.name, check(&cfg, &rpc, &disabled));
    failures.finish("bitcoin", rows.len() + 1);
}
