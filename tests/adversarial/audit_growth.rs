//! Issue 21: refusals that carry attacker-sized data used to fill the disk at the attacker's
//! speed (a privval `SignVote` with a 1 MB `chain_id`, a `btc_signPsbt` with a 500 kB output
//! script). Each vector runs for a fixed number of requests (not a time); afterwards the
//! database has grown by a bounded amount, what was written is capped, and legitimate signing
//! still works. The negative control of each: with the refusal budget lifted every refusal is
//! written, and the field caps alone still bound each row.

use std::path::Path;

use keyguard_bitcoin::bitcoin::ScriptBuf;
use keyguard_bitcoin::testkit::to_base64;
use serde_json::json;

use crate::harness::{config_text, Keyguard, NodeListener, ValidatorSpec};
use crate::node::{now, Ask, Node, Ver};

/// Database plus WAL, in bytes.
fn db_bytes(dir: &Path) -> u64 {
    ["keyguard.db", "keyguard.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

const CHAIN: &str = "flood-chain";
const VOTES: usize = 120;

/// Runs the 1 MB `chain_id` vector; returns (growth in bytes, refusal rows written).
fn privval_flood(budget: &str) -> (u64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let (listener, addr) = NodeListener::unix(&dir.path().join("node.sock"));
    let spec = ValidatorSpec {
        name: "flood".into(),
        chain_id: CHAIN.into(),
        addr,
        protocol: "v1",
        new_validator: true,
        extra: "max_height_jump = 1000\nmax_timestamp_drift_ms = 60000\n".into(),
    };
    let text = config_text(dir.path(), &[spec]) + budget;
    let kg = Keyguard::start(dir.path(), &text);
    let mut node = Node::new(listener.accept(), Ver::V1, CHAIN);
    node.pubkey().unwrap().unwrap();
    node.sign(&Ask::vote(1, 10, 0, Some(1), now()))
        .unwrap()
        .unwrap();
    let data = dir.path().join("data");
    let before = db_bytes(&data);
    // 1 MB: just under the privval message limit (1 MiB), so it is decoded and refused.
    node.chain = "c".repeat(1_000_000);
    for i in 0..VOTES {
        let out = node.sign(&Ask::vote(1, 11, 0, Some(1), now()));
        let Some(out) = out else {
            panic!("request {i}: the signer dropped the connection");
        };
        let (code, _) = out.expect_err("a vote for another chain was signed");
        assert_eq!(code, 1, "request {i}");
    }
    node.chain = CHAIN.into();
    // Legitimate signing continues.
    node.sign(&Ask::vote(1, 11, 0, Some(1), now()))
        .unwrap()
        .expect("the real vote after the flood");
    let grown = db_bytes(&data).saturating_sub(before);
    let rows = crate::helpers::audit_rows_after(&kg.config, 0);
    let refused = rows
        .iter()
        .filter(|r| r["rule"] == "cometbft.chain_id")
        .count();
    for r in &rows {
        let size = r.to_string().len();
        assert!(size < 24 << 10, "a {size}-byte audit row was stored");
    }
    (grown, refused)
}

#[test]
fn privval_1mb_chain_id_flood_grows_the_log_by_a_bounded_amount() {
    let (grown, refused) = privval_flood("");
    eprintln!("privval flood: {VOTES} votes x 1 MB chain_id, grew {grown} bytes, {refused} rows");
    // Unbounded: ~2 MB per row, 240 MB for this run.
    assert!(grown < 4 << 20, "grew {grown} bytes");
    assert!(refused <= 61, "{refused} refusal rows from one connection");
    // Negative control: without the budget every refusal is written, each still capped.
    let (grown, refused) = privval_flood(
        "[audit]\nrefusal_burst = 1000000\ntotal_refusal_rows_per_second = 1000000.0\n",
    );
    assert_eq!(
        refused, VOTES,
        "the budget was lifted: every refusal must be written"
    );
    assert!(grown < (VOTES as u64) * (40 << 10), "grew {grown} bytes");
}

const BTC_WORDS: &str = "abandon abandon abandon abandon abandon abandon abandon abandon \
                         abandon abandon abandon about";
const PSBTS: usize = 150;

#[test]
fn bitcoin_500kb_output_script_flood_grows_the_log_by_a_bounded_amount() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = crate::bitcoin::config(dir).replace(
        "auth = \"bearer\"",
        "auth = \"bearer\"\nmax_body_bytes = 4000000",
    );
    let cfg = dir.join("keyguard.toml");
    std::fs::write(&cfg, &text).unwrap();
    std::fs::write(dir.join("words"), BTC_WORDS).unwrap();
    let out = std::process::Command::new(crate::common::binary())
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
    let daemon = crate::common::Daemon::start(dir, &text, &[]);
    let rpc = daemon.rpc_addr();
    let tw = crate::bitcoin::wallet(keyguard_bitcoin::bitcoin::Network::Regtest);
    let good = json!([{"psbt": to_base64(&crate::bitcoin::good_psbt(&tw))}]);
    let mut huge = crate::bitcoin::good_psbt(&tw);
    huge.unsigned_tx.output[0].script_pubkey = ScriptBuf::from_bytes(vec![0x51; 500_000]);
    let huge = json!([{"psbt": to_base64(&huge)}]);
    let var = dir.join("var");
    let before = db_bytes(&var);
    for i in 0..PSBTS {
        let r = crate::bitcoin::call(&rpc, Some(crate::bitcoin::GOOD), huge.clone());
        assert!(r.get("result").is_none(), "request {i} signed: {r}");
    }
    let grown = db_bytes(&var).saturating_sub(before);
    let ok = crate::bitcoin::call(&rpc, Some(crate::bitcoin::GOOD), good);
    assert!(
        ok["result"]["psbt"].is_string(),
        "signing after the flood: {ok}"
    );
    let rows = crate::helpers::audit_rows_after(&daemon.config, 0);
    let written = rows.iter().filter(|r| r["decision"] == "refused").count();
    eprintln!("bitcoin flood: {PSBTS} PSBTs x 500 kB script, grew {grown} bytes, {written} rows");
    for r in &rows {
        let size = r.to_string().len();
        assert!(size < 24 << 10, "a {size}-byte audit row was stored");
    }
    // Unbounded: every row carried the script (1 MB of hex), 150 MB for this run.
    assert!(grown < 3 << 20, "grew {grown} bytes");
}
