//! Durability promises of the CometBFT signer across a SIGKILL, each with its negative control
//! (a daemon started with `KEYGUARD_FAULT`, cargo feature `fault-injection`, `src/fault.rs`):
//!
//! | promise | fault that must break the check |
//! | --- | --- |
//! | a signature a node holds has a durable signed audit row | `release-before-audit` |
//! | after a restart the other block at a signed step is still refused | `skip-watermark`, `watermark-back` |

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::harness::{config_text, Keyguard, NodeListener, ValidatorSpec};
use crate::node::{now, Ask, Node, Ver};

const CHAIN: &str = "fault-chain";

fn start(dir: &Path, listener: &NodeListener, addr: &str, fault: Option<&str>) -> (Keyguard, Node) {
    let spec = ValidatorSpec {
        name: "f".into(),
        chain_id: CHAIN.into(),
        addr: addr.into(),
        protocol: "v1",
        new_validator: true,
        extra: String::new(),
    };
    let path = dir.join("keyguard.toml");
    std::fs::write(&path, config_text(dir, &[spec])).unwrap();
    let env: Vec<(String, String)> = fault
        .map(|f| vec![("KEYGUARD_FAULT".to_owned(), f.to_owned())])
        .unwrap_or_default();
    let kg = Keyguard::start_with_env(&path, &env);
    let mut node = Node::new(listener.accept(), Ver::V1, CHAIN);
    node.pubkey().unwrap().unwrap();
    (kg, node)
}

fn prevote(height: i64, block: u8) -> Ask {
    Ask::vote(1, height, 0, Some(block), now())
}

/// Signs one prevote and kills the daemon the moment the signature arrives; the signed audit
/// row naming that signature must already be on disk.
fn released_signature_is_durable(fault: Option<&str>) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let (listener, addr) = NodeListener::unix(&dir.path().join("node.sock"));
    let (mut kg, mut node) = start(dir.path(), &listener, &addr, fault);
    let released = node.sign(&prevote(5, 1)).unwrap().unwrap();
    kg.kill();
    let db = Connection::open_with_flags(
        dir.path().join("data/keyguard.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let sig = hex::encode(&released.signature);
    let rows: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM audit_log WHERE decision = 'signed' AND tx_hash = ?1",
            [&sig],
            |r| r.get(0),
        )
        .unwrap();
    match rows {
        1 => Ok(()),
        n => Err(format!(
            "{n} signed audit rows for the released signature {sig}"
        )),
    }
}

/// Signs a prevote and a precommit at height 5 for block 1, kills and restarts the daemon,
/// then asks for block 2 at both steps and for height 4: every one must be refused.
fn double_sign_guard_survives_restart(fault: Option<&str>) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let (listener, addr) = NodeListener::unix(&dir.path().join("node.sock"));
    let (mut kg, mut node) = start(dir.path(), &listener, &addr, fault);
    node.sign(&prevote(5, 1)).unwrap().unwrap();
    node.sign(&Ask::vote(2, 5, 0, Some(1), now()))
        .unwrap()
        .unwrap();
    kg.kill();
    drop(node);
    let (_kg, mut node) = start(dir.path(), &listener, &addr, fault);
    for (what, ask) in [
        ("prevote for block 2 at 5/0", prevote(5, 2)),
        (
            "precommit for block 2 at 5/0",
            Ask::vote(2, 5, 0, Some(2), now()),
        ),
        ("prevote at height 4", prevote(4, 2)),
    ] {
        match node.sign(&ask) {
            Some(Err(_)) => {}
            Some(Ok(_)) => return Err(format!("DOUBLE SIGN after restart: {what} was signed")),
            None => return Err(format!("{what}: connection dropped")),
        }
    }
    Ok(())
}

#[test]
fn privval_released_signature_is_audited_before_the_answer() {
    released_signature_is_durable(None).unwrap();
}

#[test]
fn privval_double_sign_guard_survives_sigkill() {
    double_sign_guard_survives_restart(None).unwrap();
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection (tests/run sets it)"
)]
fn fault_release_before_audit_fails_the_durability_check() {
    let e = released_signature_is_durable(Some("release-before-audit"))
        .expect_err("the check passed with signatures released before their audit commit");
    eprintln!("caught as expected: {e}");
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection (tests/run sets it)"
)]
fn fault_skip_watermark_fails_the_restart_check() {
    let e = double_sign_guard_survives_restart(Some("skip-watermark"))
        .expect_err("the check passed with watermark writes dropped");
    eprintln!("caught as expected: {e}");
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection (tests/run sets it)"
)]
fn fault_watermark_back_fails_the_restart_check() {
    let e = double_sign_guard_survives_restart(Some("watermark-back"))
        .expect_err("the check passed with the watermark stored one height low");
    eprintln!("caught as expected: {e}");
}
