//! Audit anchors through the real binary: `keyguard audit anchor-key`, a daemon with `[audit.anchors]`
//! that anchors its head at start and at shutdown, and `keyguard audit verify --checkpoints`
//! passing on the intact log (control) and failing once the newest row is deleted, although the
//! hash chain alone still verifies.

mod common;

use std::process::Command;

use common::{binary, config, rpc, Daemon};
use serde_json::json;

fn keyguard(args: &[&str]) -> std::process::Output {
    Command::new(binary()).args(args).output().unwrap()
}

#[test]
fn truncating_the_audit_log_is_caught_by_its_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let key = outside.path().join("audit.key");
    let anchors = outside.path().join("anchors.jsonl");
    let made = keyguard(&["audit", "anchor-key", "--out", key.to_str().unwrap()]);
    assert!(made.status.success(), "{made:?}");
    let extra = format!(
        "[audit.anchors]\nanchor_key = \"{}\"\nanchor_file = \"{}\"\nanchor_interval = \"1h\"\n",
        key.display(),
        anchors.display()
    );
    let daemon = Daemon::start(dir.path(), &config(dir.path(), &extra), &[]);
    let addr = daemon.rpc_addr();
    let from = rpc(&addr, "eth_accounts", json!([]))["result"][0]
        .as_str()
        .unwrap()
        .to_owned();
    for nonce in 0..3 {
        let tx = json!([{"from": from, "to": from, "gas": "0x5208", "nonce": format!("{nonce:#x}"),
            "chainId": "0x7a69", "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1"}]);
        let answer = rpc(&addr, "eth_signTransaction", tx);
        assert!(answer.get("result").is_some(), "{answer}");
    }
    assert!(daemon.terminate().success());

    let config_path = dir.path().join("keyguard.toml");
    let verify = || {
        keyguard(&[
            "audit",
            "verify",
            "--config",
            config_path.to_str().unwrap(),
            "--checkpoints",
            anchors.to_str().unwrap(),
        ])
    };
    // Control: the intact log matches its anchors (start and shutdown).
    let ok = verify();
    let out = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(ok.status.success(), "{ok:?}");
    assert!(out.contains("anchors verified: 2 anchors"), "{out}");

    // Whoever has the file deletes the newest row.
    let db = dir.path().join("var/keyguard.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete; \
         DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log);",
    )
    .unwrap();
    drop(c);
    let chain_only = keyguard(&["audit", "verify", "--config", config_path.to_str().unwrap()]);
    assert!(
        chain_only.status.success(),
        "the chain alone cannot see a truncation"
    );
    let caught = verify();
    let err = String::from_utf8_lossy(&caught.stderr).to_string();
    assert!(!caught.status.success());
    assert!(err.contains("truncated or rolled back"), "{err}");
}
