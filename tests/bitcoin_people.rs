//! Bitcoin rules that involve people and the clock, through the real binary: a large spend
//! held for two approvers of a group (approvers see destinations, amounts and fee; one approval
//! is not enough; the second releases exactly one signature, verified by Bitcoin Core's script
//! interpreter; a replay signs nothing new), the time window refusing outside its days, and
//! descriptors of several accounts for Bitcoin Core's `getdescriptors --account N`.

#[path = "support/bitcoin_verify.rs"]
mod bitcoin_verify;
mod common;
mod control;

use std::process::Command;

use control::*;
use keyguard_bitcoin::bitcoin::{Network, Transaction, TxOut};
use keyguard_bitcoin::testkit::{build_psbt, foreign_script, to_base64, OurInput, TestWallet};
use keyguard_bitcoin::ScriptKind;
use serde_json::{json, Value};

const WORDS: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                     abandon abandon about";

fn config(dir: &std::path::Path, rules: &str) -> String {
    format!(
        r#"
{keystore}[admin]
totp_single_use = false
[[listeners]]
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
accounts = [0, 1]
destinations = "any"
max_spend_per_tx = "1 btc"
max_fee = "10000 sat"
max_feerate_sat_vb = 100
{rules}
"#,
        keystore = common::software_keystore(dir, &[])
    )
}

/// Writes the config, imports the test seed as `hot` and starts the daemon.
fn start(dir: &std::path::Path, rules: &str) -> common::Daemon {
    let text = config(dir, rules);
    let cfg = dir.join("keyguard.toml");
    std::fs::write(&cfg, &text).unwrap();
    let words = dir.join("words");
    std::fs::write(&words, WORDS).unwrap();
    let out = Command::new(common::binary())
        .args(["keys", "seed", "import", "--config"])
        .arg(&cfg)
        .args(["--id", "hot", "--mnemonic-file"])
        .arg(&words)
        .env("KEYGUARD_PASSPHRASE", "test-passphrase")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::Daemon::start(dir, &text, &[])
}

fn test_wallet() -> TestWallet {
    let seed = bip39::Mnemonic::parse(WORDS).unwrap().to_seed("");
    TestWallet::new(&seed, Network::Regtest)
}

/// A PSBT paying `pay` sat from one input of `input_sat` at receive index `index` (distinct
/// inputs keep the conflict guard out of the way), change to internal index 0, fee 1000 sat.
fn psbt(tw: &TestWallet, index: u32, input_sat: u64, pay: u64) -> (String, Vec<TxOut>) {
    let p = build_psbt(
        tw,
        &[OurInput {
            kind: ScriptKind::P2wpkh,
            index,
            sat: input_sat,
        }],
        &[(foreign_script(9), pay)],
        Some((ScriptKind::P2wpkh, 0, input_sat - pay - 1_000)),
    );
    let prevouts = p
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    (to_base64(&p), prevouts)
}

fn sign_psbt(addr: &str, psbt: &str) -> Value {
    common::rpc(
        addr,
        "btc_signPsbt",
        json!([{"psbt": psbt, "finalize": true}]),
    )
}

fn consensus_verify(hex: &str, prevouts: &[TxOut]) {
    let tx: Transaction =
        keyguard_bitcoin::bitcoin::consensus::encode::deserialize_hex(hex).unwrap();
    bitcoin_verify::consensus_verify(&tx, prevouts).unwrap_or_else(|e| panic!("{e}"));
}

fn signed_psbt_rows(config: &std::path::Path) -> Vec<Value> {
    audit_rows(
        config,
        &["--decision", "signed", "--method", "btc_signPsbt"],
    )
}

#[test]
fn large_spend_needs_two_approvals_and_signs_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(
        dir.path(),
        r#"require_approval = { above = "0.005 btc", approvers = 2, group = "treasury", within = "1h" }"#,
    );
    let rpc = daemon.rpc_addr();
    let sock = dir.path().join("var/admin.sock");
    let alice = bootstrap_admin(&daemon, "alice");
    let adam = bootstrap_admin(&daemon, "adam");
    let ann = add_user2(&sock, &alice, &adam, "ann", &["approver"], &["treasury"]);
    let bob = add_user2(&sock, &alice, &adam, "bob", &["approver"], &["treasury"]);
    let local = add_user2(&sock, &alice, &adam, "local", &["approver"], &["treasury"]);
    let tw = test_wallet();

    // Below the threshold: signed at once.
    let (small, _) = psbt(&tw, 1, 1_000_000, 100_000);
    assert_eq!(sign_psbt(&rpc, &small)["result"]["complete"], true);

    let (big, prevouts) = psbt(&tw, 2, 5_000_000, 1_000_000);
    let held = sign_psbt(&rpc, &big);
    assert_eq!(error_code(&held), Some(-32002), "{held}");
    let data = &held["error"]["data"];
    let id = data["approval_id"].as_str().unwrap().to_string();
    assert_eq!(
        (data["required"].as_u64(), data["approved"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(data["expires_at"].as_i64().unwrap() > 0);
    assert_eq!(
        sign_psbt(&rpc, &big)["error"]["data"]["approval_id"],
        id,
        "a retry is the same request"
    );

    // What approvers see: the decoded intent, not the PSBT's labels.
    let pending = admin(&sock, &ann, "approvals.list", json!({}));
    let entry = &pending["result"][0];
    assert_eq!(entry["id"], id, "{pending}");
    assert_eq!(entry["chain"], "bitcoin:regtest");
    let shown = &entry["summary"];
    assert_eq!(shown["destinations"][0]["sat"], 1_000_000, "{shown}");
    assert_eq!(shown["destinations"][0]["output"], 0);
    assert!(shown["destinations"][0]["to"]
        .as_str()
        .unwrap()
        .starts_with("bcrt1q"));
    assert_eq!(shown["fee_sat"], 1_000);
    assert_eq!(shown["spend_sat"], 1_001_000);
    assert_eq!(shown["change_sat"], 5_000_000 - 1_001_000);

    let approve = |u: &User| admin(&sock, u, "approvals.approve", json!({"id": id}));
    assert_eq!(
        error_code(&approve(&local)),
        Some(-32010),
        "self-approval must be refused"
    );
    assert_eq!(approve(&ann)["result"]["approved"], 1);
    let still = sign_psbt(&rpc, &big);
    assert_eq!(
        error_code(&still),
        Some(-32002),
        "one approval is not enough"
    );
    assert_eq!(still["error"]["data"]["approved"], 1);
    assert_eq!(approve(&bob)["result"]["state"], "approved");

    let before = signed_psbt_rows(&daemon.config).len();
    let released = sign_psbt(&rpc, &big);
    let hex = released["result"]["hex"]
        .as_str()
        .unwrap_or_else(|| panic!("{released}"));
    consensus_verify(hex, &prevouts);
    let replay = sign_psbt(&rpc, &big);
    assert_eq!(error_code(&replay), Some(-32001), "{replay}");
    assert_eq!(replay["error"]["data"]["rule"], "approval.consumed");
    let rows = signed_psbt_rows(&daemon.config);
    assert_eq!(rows.len(), before + 1, "exactly one new signature");
    assert_eq!(rows.last().unwrap()["summary"]["approval_id"], id);

    // Another transaction of the same amount is another intent: a new approval.
    let (other, _) = psbt(&tw, 3, 5_000_000, 1_000_000);
    let held = sign_psbt(&rpc, &other);
    assert_eq!(error_code(&held), Some(-32002), "{held}");
    assert_ne!(held["error"]["data"]["approval_id"], id);
}

fn weekday_in(days: u64) -> &'static str {
    let today = control::now() / 86_400;
    // 1970-01-01 was a Thursday.
    ["thu", "fri", "sat", "sun", "mon", "tue", "wed"][((today + days) % 7) as usize]
}

#[test]
fn time_window_refuses_outside_its_days_and_descriptors_cover_every_account() {
    let dir = tempfile::tempdir().unwrap();
    // Only a day three days from now: refused today whatever the hour.
    let rules = format!(
        "time_window = {{ days = [\"{}\"], hours = \"00:00-24:00\", utc_offset = \"+00:00\" }}",
        weekday_in(3)
    );
    let daemon = start(dir.path(), &rules);
    let rpc = daemon.rpc_addr();
    let (p, _) = psbt(&test_wallet(), 1, 1_000_000, 100_000);
    let refused = sign_psbt(&rpc, &p);
    assert_eq!(error_code(&refused), Some(-32001), "{refused}");
    assert_eq!(refused["error"]["data"]["rule"], "bitcoin.time_window");
    assert_eq!(refused["error"]["data"]["field"], "time");

    // Accounts 0 and 1 are registered: both through btc_getDescriptors and Core's signer.
    let all = common::rpc(&rpc, "btc_getDescriptors", json!([{}]));
    let accounts: Vec<u64> = all["result"]["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account"].as_u64().unwrap())
        .collect();
    assert_eq!(accounts, [0, 1, 0, 1], "{all}"); // p2wpkh then p2tr
    let one = common::rpc(&rpc, "btc_getDescriptors", json!([{"account": 1}]));
    let receive = one["result"]["receive"].as_array().unwrap();
    assert_eq!(receive.len(), 2, "{one}");
    assert!(receive[0]
        .as_str()
        .unwrap()
        .starts_with("wpkh([73c5da0a/84h/1h/1h]"));
    assert!(receive[1]
        .as_str()
        .unwrap()
        .starts_with("tr([73c5da0a/86h/1h/1h]"));
    let missing = common::rpc(&rpc, "btc_getDescriptors", json!([{"account": 2}]));
    assert_eq!(error_code(&missing), Some(-32602), "{missing}");
    assert_eq!(missing["error"]["data"]["field"], "account");

    let url = format!("http://{rpc}");
    let signer = |account: &str| {
        let out = Command::new(common::binary())
            .args(["btc-signer", "--chain", "regtest", "getdescriptors"])
            .args(["--account", account])
            .env("KEYGUARD_URL", &url)
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let g = signer("1");
    assert!(
        g["internal"][0]
            .as_str()
            .unwrap()
            .starts_with("wpkh([73c5da0a/84h/1h/1h]"),
        "{g}"
    );
    assert!(signer("5")["error"]
        .as_str()
        .unwrap()
        .contains("not registered"));
}
