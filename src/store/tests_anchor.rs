//! Anchors catch what the hash chain alone cannot: the newest rows deleted, an older copy of
//! the database put back, and a chain forked after either. Each attack has a control (the
//! intact database passes against the same anchors).

use ed25519_dalek::SigningKey;

use super::anchor::{Anchor, AnchorError};
use super::tests::{entry, rt};
use super::*;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}

/// Appends entries `from..=to` to the database at `path`.
fn append(path: &Path, from: usize, to: usize) {
    let store = Store::open(path).unwrap();
    let log = store.audit_log();
    rt().block_on(async {
        for i in from..=to {
            log.append(entry(i)).await.unwrap();
        }
    });
    store.close().unwrap();
}

/// An anchor of the current head of the database at `path`.
fn anchor_now(path: &Path, ts_ms: i64) -> String {
    let store = Store::open(path).unwrap();
    let (seq, head) = store.audit_head().unwrap();
    store.close().unwrap();
    Anchor::sign(&key(), seq, &head, ts_ms).to_line()
}

fn check(path: &Path, anchors: &str) -> Result<anchor::AnchorReport, AnchorError> {
    Store::verify_path(path).unwrap();
    Store::check_anchors_path(path, anchors, &key().verifying_key())
}

fn drop_tail(path: &Path, after: i64) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
        .unwrap();
    c.execute("DELETE FROM audit_log WHERE seq > ?1", [after])
        .unwrap();
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyguard.db");
    append(&path, 1, 3);
    let mut anchors = anchor_now(&path, 1);
    append(&path, 4, 6);
    anchors.push('\n');
    anchors.push_str(&anchor_now(&path, 2));
    (dir, path, anchors)
}

#[test]
fn intact_log_passes_its_anchors() {
    let (_dir, path, anchors) = setup();
    let report = check(&path, &anchors).unwrap();
    assert_eq!((report.anchors, report.newest_seq), (2, 6));
}

#[test]
fn truncation_of_the_newest_rows_is_caught() {
    let (_dir, path, anchors) = setup();
    drop_tail(&path, 4);
    // The chain alone still verifies: this is what anchors are for.
    assert_eq!(Store::verify_path(&path).unwrap().rows, 4);
    match check(&path, &anchors) {
        Err(AnchorError::Missing {
            seq: 6, last: 4, ..
        }) => {}
        other => panic!("truncation not caught: {other:?}"),
    }
}

#[test]
fn rollback_to_an_older_copy_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyguard.db");
    append(&path, 1, 3);
    let old = dir.path().join("old.db");
    std::fs::copy(&path, &old).unwrap();
    append(&path, 4, 6);
    let anchors = anchor_now(&path, 2);
    // Control: the live database passes.
    check(&path, &anchors).unwrap();
    std::fs::copy(&old, &path).unwrap();
    match check(&path, &anchors) {
        Err(AnchorError::Missing {
            seq: 6, last: 3, ..
        }) => {}
        other => panic!("rollback not caught: {other:?}"),
    }
}

#[test]
fn a_forked_chain_is_caught() {
    let (_dir, path, anchors) = setup();
    drop_tail(&path, 4);
    // New rows on top of the shortened chain: as long as before, another content.
    append(&path, 100, 101);
    assert_eq!(Store::verify_path(&path).unwrap().rows, 6);
    match check(&path, &anchors) {
        Err(AnchorError::Forked { seq: 6, .. }) => {}
        other => panic!("fork not caught: {other:?}"),
    }
}

#[test]
fn anchors_not_signed_by_the_audit_key_are_refused() {
    let (_dir, path, _) = setup();
    let store = Store::open(&path).unwrap();
    let (seq, head) = store.audit_head().unwrap();
    store.close().unwrap();
    let forged = Anchor::sign(&SigningKey::from_bytes(&[6; 32]), seq, &head, 1).to_line();
    assert!(matches!(
        check(&path, &forged),
        Err(AnchorError::BadSignature { line: 1 })
    ));
    // An altered field of a genuine anchor fails too.
    let mut genuine = Anchor::sign(&key(), seq, &head, 1);
    genuine.seq -= 1;
    assert!(matches!(
        check(&path, &genuine.to_line()),
        Err(AnchorError::BadSignature { .. })
    ));
}
