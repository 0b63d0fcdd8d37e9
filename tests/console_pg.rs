//! The console's store queries on PostgreSQL (the engine of HA deployments): passkeys bound,
//! counted, updated and removed with their user; the overview's counts, validator tips and
//! approval latencies. The SQLite side runs in tests/console.rs and the unit tests.

#[path = "support/pg/mod.rs"]
mod pg;

use keyguard::config::PgSettings;
use keyguard::store::{AuditCounter, AuditEntry, Decision, Store, MAX_PASSKEYS_PER_USER};
use keyguard_cometbft::{SignedState, Step};
use pg::PgCluster;

fn settings(c: &PgCluster, dir: &std::path::Path) -> PgSettings {
    c.store_settings(dir, 5_000, "keyguard-console-test")
}

#[test]
fn console_store_queries_on_postgres() {
    let c = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_postgres(&settings(&c, dir.path()), Some(dir.path())).unwrap();
    let db = store.state_db().unwrap();

    // Passkeys: bound once, capped per user, removed with the user.
    assert!(db
        .add_user("ann", &["approver".into()], &[], b"secret")
        .unwrap());
    assert!(db.add_passkey("ann", "c0", "{}").unwrap());
    assert!(
        !db.add_passkey("bob", "c0", "{}").unwrap(),
        "a credential binds to one user"
    );
    for i in 1..MAX_PASSKEYS_PER_USER {
        assert!(db.add_passkey("ann", &format!("c{i}"), "{}").unwrap());
    }
    assert!(!db.add_passkey("ann", "one-too-many", "{}").unwrap());
    db.update_passkey("ann", "c0", "{\"n\":1}").unwrap();
    assert_eq!(
        db.passkeys("ann").unwrap()[0],
        ("c0".to_owned(), "{\"n\":1}".to_owned())
    );
    assert!(db.remove_user("ann").unwrap());
    assert!(db.passkeys("ann").unwrap().is_empty());

    // Overview counts, incrementally.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = store.audit_log();
    let now = keyguard::store::now_ms();
    for i in 0..12 {
        let refused = i % 4 == 0;
        rt.block_on(log.append(AuditEntry {
            request_id: format!("r{i}"),
            client: "app".into(),
            key_id: Some("k".into()),
            chain: Some("eip155:1".into()),
            method: "eth_signTransaction".into(),
            summary: serde_json::Value::Null,
            decision: if refused {
                Decision::Refused
            } else {
                Decision::Signed
            },
            rule: refused.then(|| "evm.max_value".into()),
            reason: None,
            tx_hash: None,
        }))
        .unwrap();
    }
    let counts = AuditCounter::default()
        .counts(&db, now - 3_600_000, now)
        .unwrap();
    let sum = |d: &str| {
        counts
            .iter()
            .filter(|c| c.decision == d)
            .map(|c| c.count)
            .sum::<i64>()
    };
    assert_eq!((sum("signed"), sum("refused")), (9, 3), "{counts:?}");

    // Validator tips and approval latencies read on this engine.
    let state = SignedState {
        height: 42,
        round: 1,
        step: Step::Precommit,
        block_id: vec![1; 32],
        sign_bytes: vec![1; 8],
        signature: vec![1; 64],
        extension_signature: Vec::new(),
    };
    store.watermarks().advance("hub-4", "val", &state).unwrap();
    let tips = db.validator_tips().unwrap();
    assert_eq!(
        (tips.len(), tips[0].height, tips[0].round),
        (1, 42, 1),
        "{tips:?}"
    );
    assert!(db.approval_latencies(now - 3_600_000).unwrap().is_empty());
    rt.block_on(log.shutdown()).unwrap();
}
