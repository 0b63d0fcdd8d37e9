//! Schema, hash chain and tamper-detection tests.

use super::audit::RowFields;
use super::*;
use rusqlite::Connection;
use serde_json::json;

pub(super) fn entry(i: usize) -> AuditEntry {
    let even = i.is_multiple_of(2);
    AuditEntry {
        request_id: format!("req-{i}"),
        client: "app".into(),
        key_id: Some("k1".into()),
        chain: Some("eip155:31337".into()),
        method: "eth_signTransaction".into(),
        summary: json!({"to": "0xabc", "value": i.to_string(), "nested": {"b": 1, "a": [1, 2]}}),
        decision: if even {
            Decision::Signed
        } else {
            Decision::Refused
        },
        rule: (!even).then(|| "max_value".into()),
        reason: (!even).then(|| "too much".into()),
        tx_hash: even.then(|| format!("0x{i:064x}")),
    }
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A store at a fresh path holding `n` appended entries, closed again.
fn store_with(n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/keyguard.db");
    let store = Store::open(&path).unwrap();
    let log = store.audit_log();
    rt().block_on(async {
        for i in 1..=n {
            let r = log.append(entry(i)).await.unwrap();
            assert_eq!(r.seq, i as i64);
        }
    });
    store.close().unwrap();
    (dir, path)
}

/// A raw connection with the append-only triggers removed, as an attacker with file access.
fn tamper(path: &std::path::Path, sql: &str) {
    let c = Connection::open(path).unwrap();
    c.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
        .unwrap();
    c.execute_batch(sql).unwrap();
}

fn broken_at(path: &std::path::Path) -> i64 {
    match Store::verify_path(path) {
        Err(StoreError::ChainBroken { seq, .. }) => seq,
        other => panic!("expected ChainBroken, got {other:?}"),
    }
}

#[test]
fn open_creates_private_dir_wal_and_reopen_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/keyguard.db");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), migrations::known_version());
    store.close().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    let store = Store::open(&path).unwrap();
    store.close().unwrap();
    let c = Connection::open(&path).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, migrations::MIGRATIONS.len() as i64);
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn open_refuses_newer_schema() {
    let (_d, path) = store_with(0);
    Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO schema_migrations VALUES (999, 0)", [])
        .unwrap();
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::TooNew { found: 999, .. })
    ));
    assert!(matches!(
        Store::verify_path(&path),
        Err(StoreError::TooNew { found: 999, .. })
    ));
}

#[test]
fn appends_chain_and_verify() {
    let (_d, path) = store_with(5);
    let v = Store::verify_path(&path).unwrap();
    assert_eq!(v.rows, 5);
    let store = Store::open(&path).unwrap();
    let rows = store.recent_audit(10).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [5, 4, 3, 2, 1]
    );
    assert_eq!(rows[0].hash, v.head);
    assert_eq!(rows[4].prev_hash, GENESIS_HASH);
    for w in rows.windows(2) {
        assert_eq!(w[1].hash, w[0].prev_hash);
    }
    assert_eq!(rows[4], {
        let e = entry(1);
        AuditRow {
            seq: 1,
            ts_ms: rows[4].ts_ms,
            request_id: e.request_id,
            client: e.client,
            key_id: e.key_id,
            chain: e.chain,
            method: e.method,
            summary: e.summary,
            decision: e.decision,
            rule: e.rule,
            reason: e.reason,
            tx_hash: e.tx_hash,
            prev_hash: GENESIS_HASH,
            hash: rows[4].hash,
        }
    });
    assert_eq!(store.recent_audit(2).unwrap().len(), 2);
    let json = serde_json::to_value(&rows[0]).unwrap();
    assert_eq!(json["hash"], hex::encode(v.head));
    assert_eq!(json["decision"], "refused");
    assert_eq!(store.verify_audit().unwrap(), v);
}

#[test]
fn empty_log_verifies_to_genesis() {
    let (_d, path) = store_with(0);
    let v = Store::verify_path(&path).unwrap();
    assert_eq!((v.rows, v.head), (0, GENESIS_HASH));
}

#[test]
fn triggers_make_the_log_append_only() {
    let (_d, path) = store_with(2);
    let c = Connection::open(&path).unwrap();
    let upd = c.execute("UPDATE audit_log SET reason = 'x' WHERE seq = 1", []);
    assert!(upd.unwrap_err().to_string().contains("append-only"));
    let del = c.execute("DELETE FROM audit_log WHERE seq = 2", []);
    assert!(del.unwrap_err().to_string().contains("append-only"));
    assert_eq!(Store::verify_path(&path).unwrap().rows, 2);
}

#[test]
fn edited_column_is_detected_at_its_seq() {
    for sql in [
        "UPDATE audit_log SET reason = 'fine' WHERE seq = 3",
        "UPDATE audit_log SET summary = '{\"to\":\"0xevil\"}' WHERE seq = 3",
        "UPDATE audit_log SET decision = 'signed' WHERE seq = 3",
        "UPDATE audit_log SET ts_ms = ts_ms + 1 WHERE seq = 3",
        "UPDATE audit_log SET key_id = NULL WHERE seq = 3",
        "UPDATE audit_log SET prev_hash = zeroblob(32) WHERE seq = 3",
    ] {
        let (_d, path) = store_with(5);
        tamper(&path, sql);
        assert_eq!(broken_at(&path), 3, "{sql}");
    }
}

#[test]
fn rehashed_edit_breaks_the_next_link() {
    let (_d, path) = store_with(5);
    // Attacker edits row 3 and recomputes its own hash, but cannot fix row 4's prev_hash.
    let store = Store::open(&path).unwrap();
    let r3 = store
        .recent_audit(5)
        .unwrap()
        .into_iter()
        .find(|r| r.seq == 3)
        .unwrap();
    store.close().unwrap();
    let summary = serde_json::to_string(&r3.summary).unwrap();
    let fields = RowFields {
        seq: 3,
        ts_ms: r3.ts_ms,
        request_id: &r3.request_id,
        client: &r3.client,
        key_id: r3.key_id.as_deref(),
        chain: r3.chain.as_deref(),
        method: &r3.method,
        summary: &summary,
        decision: "signed",
        rule: None,
        reason: None,
        tx_hash: r3.tx_hash.as_deref(),
    };
    let h = hex::encode(fields.hash(&r3.prev_hash));
    tamper(
        &path,
        &format!(
            "UPDATE audit_log SET decision = 'signed', rule = NULL, reason = NULL, \
             hash = X'{h}' WHERE seq = 3"
        ),
    );
    assert_eq!(broken_at(&path), 4);
}

#[test]
fn deleted_row_is_detected_as_gap() {
    let (_d, path) = store_with(5);
    tamper(&path, "DELETE FROM audit_log WHERE seq = 3");
    assert_eq!(broken_at(&path), 3);
    let (_d, path) = store_with(5);
    tamper(&path, "DELETE FROM audit_log WHERE seq = 1");
    assert_eq!(broken_at(&path), 1);
}

#[test]
fn reordered_rows_are_detected() {
    let (_d, path) = store_with(5);
    tamper(
        &path,
        "UPDATE audit_log SET seq = -2 WHERE seq = 2;
         UPDATE audit_log SET seq = 2 WHERE seq = 3;
         UPDATE audit_log SET seq = 3 WHERE seq = -2;",
    );
    assert_eq!(broken_at(&path), 2);
}

#[test]
fn canonical_encoding_is_unambiguous() {
    let base = RowFields {
        seq: 1,
        ts_ms: 2,
        request_id: "r",
        client: "ab",
        key_id: None,
        chain: None,
        method: "c",
        summary: "{}",
        decision: "signed",
        rule: None,
        reason: None,
        tx_hash: None,
    };
    let h = |f: RowFields<'_>| f.hash(&GENESIS_HASH);
    let shifted = RowFields {
        client: "a",
        method: "bc",
        ..base
    };
    let empty_some = RowFields {
        key_id: Some(""),
        ..base
    };
    let moved = RowFields {
        rule: Some("x"),
        ..base
    };
    let moved2 = RowFields {
        reason: Some("x"),
        ..base
    };
    let hashes = [h(base), h(shifted), h(empty_some), h(moved), h(moved2)];
    for i in 0..hashes.len() {
        for j in i + 1..hashes.len() {
            assert_ne!(hashes[i], hashes[j], "{i} vs {j}");
        }
    }
    assert_ne!(base.hash(&GENESIS_HASH), base.hash(&[1u8; 32]));
    assert_eq!(h(base), h(base));
}
