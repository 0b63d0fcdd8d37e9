//! A rooted validator node against the watermark (issue 21 item 3): a first vote at
//! `i64::MAX`, thousands of votes each jumping `max_height_jump`, and the recovery: a wrong
//! import lowered by `watermarks.repair`, which needs two admins and never goes to or below
//! what this instance released. Each row states what must hold afterwards (watermark where
//! it was, the next real height still signs).

use std::path::Path;

use serde_json::{json, Value};

use crate::harness::{cli, config_text, Keyguard, NodeListener, ValidatorSpec};
use crate::helpers::{check_audit, mark, Audited};
use crate::node::{now, Ask, Node, Ver};

const CHAIN: &str = "adv-state";

fn watermark(config: &Path) -> Value {
    let (ok, out, err) = cli(&[
        "state",
        "show",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(ok, "state show: {err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or(Value::Null)
}

fn height(config: &Path) -> Option<i64> {
    watermark(config)["height"].as_i64()
}

fn prevote(h: i64) -> Ask {
    Ask::vote(1, h, 0, Some(1), now())
}

fn refused_with(node: &mut Node, a: &Ask, rule: &str) {
    match node.sign(a).expect("connection") {
        Ok(_) => panic!("height {} was signed; {rule} expected", a.height),
        Err((code, desc)) => {
            assert_eq!(code, 1, "{desc}");
            assert!(desc.contains(rule), "expected {rule}: {desc}");
        }
    }
}

fn start(dir: &Path, extra: &str) -> (Keyguard, NodeListener, Node) {
    let (listener, addr) = NodeListener::unix(&dir.join("node.sock"));
    let spec = ValidatorSpec {
        name: "adv".into(),
        chain_id: CHAIN.into(),
        addr,
        protocol: "v1",
        new_validator: true,
        extra: extra.into(),
    };
    let text = config_text(dir, &[spec]) + "[admin]\ntotp_single_use = false\n";
    let kg = Keyguard::start(dir, &text);
    let mut node = Node::new(listener.accept(), Ver::V1, CHAIN);
    node.pubkey().unwrap().unwrap();
    (kg, listener, node)
}

#[test]
fn a_first_vote_at_the_end_of_time_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (kg, _l, mut node) = start(
        dir.path(),
        "start_height = 5000\nmax_height_jump = 1000\nmax_timestamp_drift_ms = 60000\n",
    );
    for h in [i64::MAX, i64::MAX - 1, 6_001, 1_000_000] {
        let before = mark(&kg.config);
        refused_with(&mut node, &prevote(h), "cometbft.first_height");
        // Nothing signed, no watermark created, the refusal audited.
        assert_eq!(height(&kg.config), None);
        check_audit(
            &kg.config,
            before,
            Audited::Row {
                method: "privval.SignVote",
                rule: Some("cometbft.first_height"),
            },
        )
        .unwrap();
    }
    // Negative control: the real chain height (within one burst of start_height) signs.
    node.sign(&prevote(5_200)).unwrap().unwrap();
    assert_eq!(height(&kg.config), Some(5_200));
}

#[test]
fn repeated_height_jumps_cannot_outrun_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    // One height per minute, burst 1,000: the test's own runtime refills at most a few.
    let (kg, _l, mut node) = start(
        dir.path(),
        "start_height = 1\nmax_height_jump = 1000\nmin_block_time_ms = 60000\n\
         max_timestamp_drift_ms = 60000\n",
    );
    node.sign(&prevote(10)).unwrap().unwrap();
    // The reported attack: vote after vote, each `max_height_jump` above the last signed.
    let mut last = 10;
    let mut signed = 0;
    for _ in 0..300 {
        if node.sign(&prevote(last + 1_000)).unwrap().is_ok() {
            last += 1_000;
            signed += 1;
        }
    }
    // The burst (1,000 heights from start_height 1) was nearly spent by height 10: none of
    // the +1,000 jumps fit, where 300 used to move the watermark 300,000 heights.
    assert_eq!(signed, 0, "jumps signed");
    assert_eq!(height(&kg.config), Some(10));
    refused_with(&mut node, &prevote(1_010), "cometbft.height_rate");
    // Negative control: the chain's next heights still sign (the validator is not locked out),
    // up to what the burst left.
    node.sign(&prevote(11)).unwrap().unwrap();
    node.sign(&prevote(900)).unwrap().unwrap();
    assert_eq!(height(&kg.config), Some(900));
}

fn add_admin(config: &Path, name: &str) -> crate::control::User {
    let (ok, out, err) = cli(&[
        "users",
        "add",
        name,
        "--role",
        "admin",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    let uri = out.lines().find(|l| l.starts_with("otpauth://")).unwrap();
    crate::control::User::from_uri(name, uri)
}

#[test]
fn a_wrong_import_is_repaired_by_two_admins_never_below_what_was_released() {
    let dir = tempfile::tempdir().unwrap();
    let (kg, _l, mut node) = start(
        dir.path(),
        "start_height = 1\nmax_height_jump = 1000\nmax_timestamp_drift_ms = 60000\n",
    );
    let cfg = kg.config.clone();
    node.sign(&prevote(10)).unwrap().unwrap();
    node.sign(&Ask::vote(2, 10, 0, Some(1), now()))
        .unwrap()
        .unwrap();
    assert_eq!(watermark(&cfg)["released_height"], 10);
    // A wrong state file (tmkms format) imported at height 900_000: every real vote is now a
    // regression.
    let file = dir.path().join("wrong_state.json");
    std::fs::write(
        &file,
        r#"{"height":"900000","round":"0","step":1,"block_id":null}"#,
    )
    .unwrap();
    let (ok, out, err) = cli(&[
        "state",
        "import",
        "--config",
        cfg.to_str().unwrap(),
        "--chain",
        CHAIN,
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    for _ in 0..2 {
        // The first request after the import meets the cached watermark and is withheld; the
        // second sees the import.
        assert!(node.sign(&prevote(11)).unwrap().is_err());
    }
    assert_eq!(height(&cfg), Some(900_000));

    let sock = dir.path().join("data/admin.sock");
    let alice = add_admin(&cfg, "alice");
    let bob = add_admin(&cfg, "bob");
    let repair = |who: &crate::control::User, h: i64| {
        crate::control::admin(
            &sock,
            who,
            "watermarks.repair",
            json!({"chain_id": CHAIN, "key": "dev-ed25519", "height": h}),
        )
    };
    // One admin alone: held, nothing moves.
    let before = mark(&cfg);
    let held = repair(&alice, 11);
    assert_eq!(held["result"]["status"], "pending", "{held}");
    let held_again = repair(&alice, 11);
    assert_eq!(held_again["result"]["status"], "pending", "{held_again}");
    assert_eq!(height(&cfg), Some(900_000));
    // Two admins, but at or below the released height 10: refused, nothing moves.
    assert_eq!(repair(&alice, 10)["result"]["status"], "pending");
    let low = repair(&bob, 10);
    assert_eq!(
        low["error"]["data"]["rule"], "admin.watermark_repair",
        "{low}"
    );
    assert_eq!(height(&cfg), Some(900_000));
    // Two admins, above what was released: the watermark comes down.
    let done = repair(&bob, 11);
    assert_eq!(done["result"]["from_height"], 900_000, "{done}");
    assert_eq!(height(&cfg), Some(11));
    assert_eq!(watermark(&cfg)["released_height"], 10);
    // Every admin call left an audit row.
    let rows = crate::helpers::audit_rows_after(&cfg, before.seq);
    let admin_rows = rows
        .iter()
        .filter(|r| r["method"] == "admin.watermarks.repair")
        .count();
    assert!(admin_rows >= 5, "{rows:#?}");
    // The first request after the repair re-reads the store; then the real chain signs again.
    let _ = node.sign(&prevote(11)).unwrap();
    node.sign(&prevote(12)).unwrap().unwrap();
    assert_eq!(height(&cfg), Some(12));
    // Height 10 (released before) stays behind the watermark.
    refused_with(&mut node, &prevote(10), "cometbft.height_regression");
}
