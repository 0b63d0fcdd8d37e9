//! A rooted wallet application against the conflict guard and the spend window (issue 21
//! items 4 and 6, issue 13 item 8), through the running daemon: a locktimed consolidation
//! (the 30-day freeze), fake change, one outpoint spent twice, a foreign final witness, and
//! the identical transaction signed twice. Each row states what holds afterwards: the coins
//! are still spendable by a real payout (verified by Bitcoin Core's interpreter), a claim is
//! released only by two admins, the window counts a transaction once.

use std::path::Path;
use std::process::Command;

use keyguard_bitcoin::bitcoin::absolute::LockTime;
use keyguard_bitcoin::bitcoin::psbt::Psbt;
use keyguard_bitcoin::bitcoin::{Network, Transaction, TxOut, Witness};
use keyguard_bitcoin::testkit::{build_psbt, foreign_script, to_base64, OurInput, TestWallet};
use keyguard_bitcoin::ScriptKind;
use serde_json::{json, Value};

use crate::common::{self, Daemon};
use crate::helpers::{check_audit, check_rpc_error, mark, Audited};

const WORDS: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                     abandon abandon about";
const TOKEN: &str = "btc-freeze-token-0123456789";

fn config(dir: &Path, extra: &str) -> String {
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
name = "wallet-app"
token_sha256 = "{token}"
keys = ["*"]
[[policies]]
name = "btc"
keys = ["hot"]
[policies.bitcoin]
network = "regtest"
destinations = "any"
max_spend_per_tx = "0.01 btc"
max_fee = "10000 sat"
max_feerate_sat_vb = 100
{extra}
"#,
        keystore = crate::common::software_keystore(dir, &[]),
        token = crate::common::token_sha256(TOKEN),
    )
}

fn start(dir: &Path, extra: &str) -> Daemon {
    let text = config(dir, extra);
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
    Daemon::start(dir, &text, &[])
}

fn sign(addr: &str, psbt: &Psbt) -> Value {
    use std::io::{Read, Write};
    let params = json!([{"psbt": to_base64(psbt), "finalize": true}]);
    let body =
        json!({"jsonrpc": "2.0", "id": 1, "method": "btc_signPsbt", "params": params}).to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let text = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn wallet() -> TestWallet {
    let seed = bip39::Mnemonic::parse(WORDS).unwrap().to_seed("");
    TestWallet::new(&seed, Network::Regtest)
}

const COIN_A: OurInput = OurInput {
    kind: ScriptKind::P2wpkh,
    index: 0,
    sat: 60_000,
};
const COIN_B: OurInput = OurInput {
    kind: ScriptKind::P2tr,
    index: 1,
    sat: 50_000,
};

/// Coins A and B into our own change: pays nothing out.
fn consolidation(tw: &TestWallet, lock: u32) -> Psbt {
    let mut p = build_psbt(
        tw,
        &[COIN_A, COIN_B],
        &[],
        Some((ScriptKind::P2wpkh, 2, 109_000)),
    );
    p.unsigned_tx.lock_time = LockTime::from_consensus(lock);
    p
}

/// A real payout of 20k from coin A (change back to index 0).
fn payout(tw: &TestWallet, to: u8) -> Psbt {
    build_psbt(
        tw,
        &[COIN_A],
        &[(foreign_script(to), 20_000)],
        Some((ScriptKind::P2wpkh, 0, 39_000)),
    )
}

/// The answer signed, and the network transaction verifies in Bitcoin Core's interpreter.
fn assert_signed_and_valid(resp: &Value, psbt: &Psbt) {
    let hex = resp["result"]["hex"]
        .as_str()
        .unwrap_or_else(|| panic!("not signed and finalized: {resp}"));
    let tx: Transaction =
        keyguard_bitcoin::bitcoin::consensus::encode::deserialize_hex(hex).unwrap();
    verify_tx(&tx, psbt);
}

fn verify_tx(tx: &Transaction, psbt: &Psbt) {
    let prevouts: Vec<TxOut> = psbt
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().unwrap())
        .collect();
    crate::bitcoin_verify::consensus_verify(tx, &prevouts)
        .unwrap_or_else(|e| panic!("{e} (does not verify)"));
}

fn refused(cfg: &Path, rpc: &str, psbt: &Psbt, rule: &'static str, field: &str) {
    let before = mark(cfg);
    let resp = sign(rpc, psbt);
    check_rpc_error(&resp, -32001, &[("rule", rule), ("field", field)]).unwrap();
    assert!(
        !resp.to_string().contains("cHNidP"),
        "a PSBT came back: {resp}"
    );
    check_audit(
        cfg,
        before,
        Audited::Row {
            method: "btc_signPsbt",
            rule: Some(rule),
        },
    )
    .unwrap();
}

#[test]
fn no_cheap_freezes_and_no_lying_psbts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let daemon = start(dir, "");
    let (cfg, rpc) = (dir.join("keyguard.toml"), daemon.rpc_addr());
    let tw = wallet();

    // The reported freeze: a consolidation locked at 499,999,999 is refused by name...
    refused(
        &cfg,
        &rpc,
        &consolidation(&tw, 499_999_999),
        "bitcoin.locktime_freeze",
        "tx.locktime",
    );
    refused(
        &cfg,
        &rpc,
        &consolidation(&tw, 1),
        "bitcoin.locktime_freeze",
        "tx.locktime",
    );
    // ... and claimed nothing: a real payout from the same coin signs and is valid.
    let first = payout(&tw, 9);
    assert_signed_and_valid(&sign(&rpc, &first), &first);

    // Lies about the transaction, refused by name; nothing claimed by them either.
    let mut fake = payout(&tw, 9);
    fake.unsigned_tx.output[1].script_pubkey = foreign_script(66);
    refused(&cfg, &rpc, &fake, "bitcoin.fake_change", "outputs[1]");
    let mut twice = consolidation(&tw, 0);
    twice.unsigned_tx.input[1].previous_output = twice.unsigned_tx.input[0].previous_output;
    twice.inputs[1] = twice.inputs[0].clone();
    refused(&cfg, &rpc, &twice, "bitcoin.duplicate_input", "inputs[1]");
    let mut foreign = consolidation(&tw, 0);
    foreign.inputs[1].tap_key_origins.clear();
    foreign.inputs[1].tap_internal_key = None;
    foreign.inputs[1].final_script_witness = Some(Witness::from_slice(&[[0x11u8; 64]]));
    refused(&cfg, &rpc, &foreign, "bitcoin.foreign_input", "inputs[1]");

    // The identical payout again: the same transaction, signed again (not a conflict).
    assert_signed_and_valid(&sign(&rpc, &first), &first);
    // Another payout from coin A conflicts with the first (the guard holds)...
    let second = payout(&tw, 10);
    refused(
        &cfg,
        &rpc,
        &second,
        "bitcoin.conflicting_spend",
        "inputs[0]",
    );

    // ... until two admins release the first transaction's claim on coin A.
    let alice = crate::control::bootstrap_admin(&daemon, "alice");
    let bob = crate::control::bootstrap_admin(&daemon, "bob");
    let sock = dir.join("var/admin.sock");
    let params = json!({
        "key": "hot",
        "outpoint": first.unsigned_tx.input[0].previous_output.to_string(),
        "txid": first.unsigned_tx.compute_txid().to_string(),
    });
    let held = crate::control::admin(&sock, &alice, "bitcoin.release_claim", params.clone());
    assert_eq!(held["result"]["status"], "pending", "{held}");
    refused(
        &cfg,
        &rpc,
        &second,
        "bitcoin.conflicting_spend",
        "inputs[0]",
    );
    let done = crate::control::admin(&sock, &bob, "bitcoin.release_claim", params);
    assert_eq!(done["result"]["released"], true, "{done}");
    assert_signed_and_valid(&sign(&rpc, &second), &second);

    // The signed transactions are kept, ready to broadcast, and valid.
    let kept = crate::control::admin(
        &sock,
        &alice,
        "bitcoin.transactions",
        json!({"key": "hot", "txid": first.unsigned_tx.compute_txid().to_string()}),
    );
    let hex = kept["result"][0]["tx_hex"]
        .as_str()
        .unwrap_or_else(|| panic!("{kept}"));
    let tx: Transaction =
        keyguard_bitcoin::bitcoin::consensus::encode::deserialize_hex(hex).unwrap();
    verify_tx(&tx, &first);
    // The release is audited.
    let audit_rows = crate::helpers::audit_rows_after(&cfg, 0);
    assert!(audit_rows
        .iter()
        .any(|r| r["method"] == "admin.bitcoin.release_claim"));
}

#[test]
fn the_identical_transaction_counts_once_against_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A 20k payout spends 21k with its fee: one fits under 30k, two do not.
    let daemon = start(dir, "max_spend_per_window = \"30000 sat\"\n");
    let (cfg, rpc) = (dir.join("keyguard.toml"), daemon.rpc_addr());
    let tw = wallet();
    let first = payout(&tw, 9);
    for _ in 0..3 {
        assert_signed_and_valid(&sign(&rpc, &first), &first);
    }
    // Negative control: another 21k spend (from coin B) is refused by the window, so the
    // window is live and counted the first payout exactly once.
    let other = build_psbt(
        &tw,
        &[COIN_B],
        &[(foreign_script(9), 20_000)],
        Some((ScriptKind::P2wpkh, 0, 29_000)),
    );
    refused(
        &cfg,
        &rpc,
        &other,
        "bitcoin.max_spend_per_window",
        "outputs[0]",
    );
    // After a restart the window is rebuilt from the audit log the same way.
    drop(daemon);
    let daemon = Daemon::start(dir, &std::fs::read_to_string(&cfg).unwrap(), &[]);
    let rpc = daemon.rpc_addr();
    assert_signed_and_valid(&sign(&rpc, &first), &first);
    refused(
        &cfg,
        &rpc,
        &other,
        "bitcoin.max_spend_per_window",
        "outputs[0]",
    );
}

fn call(addr: &str, token: &str, method: &str, params: Value) -> Value {
    use std::io::{Read, Write};
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let text = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `btc_getDescriptors` honours a managed client's method and chain scope: a client scoped to
/// Ethereum learns no xpub even with every key granted.
#[test]
fn descriptors_follow_the_client_scope() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let daemon = start(dir, "");
    let rpc = daemon.rpc_addr();
    let alice = crate::control::bootstrap_admin(&daemon, "alice");
    let bob = crate::control::bootstrap_admin(&daemon, "bob");
    let sock = dir.join("var/admin.sock");
    let add = |name: &str, chains: &[&str], methods: &[&str]| -> String {
        let params = json!({"name": name, "keys": ["*"], "chains": chains, "methods": methods});
        let mut r = crate::control::admin(&sock, &alice, "clients.add", params.clone());
        if r["result"]["status"] == "pending" {
            r = crate::control::admin(&sock, &bob, "clients.add", params);
        }
        r["result"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("clients.add: {r}"))
            .to_owned()
    };
    let eth_methods = add("eth-methods", &[], &["eth_*"]);
    let eth_chains = add("eth-chains", &["eip155:*"], &[]);
    let btc = add("btc-only", &["bitcoin:*"], &["btc_*"]);
    for (token, reason) in [
        (&eth_methods, "method btc_getDescriptors is not granted"),
        (&eth_chains, "chain bitcoin:regtest is not granted"),
    ] {
        let r = call(&rpc, token, "btc_getDescriptors", json!([{"key": "hot"}]));
        assert_eq!(r["error"]["code"], -32005, "{r}");
        assert!(r.to_string().contains(reason), "{r}");
        assert!(!r.to_string().contains("tpub"), "an xpub leaked: {r}");
    }
    // Negative control: a Bitcoin-scoped client gets the descriptors.
    let ok = call(&rpc, &btc, "btc_getDescriptors", json!([{"key": "hot"}]));
    assert!(ok.to_string().contains("tpub"), "{ok}");
}

/// `config check` knows a seed-only key store: the seed (`hot`) and its Ethereum key
/// (`hot-eth`) are present; a key that is really missing is still reported.
#[test]
fn config_check_knows_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let daemon = start(dir, "");
    drop(daemon);
    let cfg = dir.join("keyguard.toml");
    let check = |text: &str| {
        let path = dir.join("check.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(common::binary())
            .args(["config", "check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let text = std::fs::read_to_string(&cfg).unwrap();
    let both = text.replace("keys = [\"hot\"]", "keys = [\"hot\", \"hot-eth\"]");
    let (ok, out) = check(&both);
    assert!(ok, "{out}");
    let missing = text.replace("keys = [\"hot\"]", "keys = [\"hot\", \"cold\"]");
    let (ok, out) = check(&missing);
    assert!(
        !ok && out.contains("\"cold\"") && !out.contains("\"hot\" is not"),
        "{out}"
    );
}
