//! The session proof through the one admin path: read-only methods pass (and are audited),
//! every state-changing method is refused without a fresh TOTP code, and the role table still
//! applies to reads.

use std::sync::Arc;

use serde_json::json;

use crate::access::kill::KillSwitch;
use crate::approvals::Approvals;
use crate::config::AdminConfig;
use crate::server::admin::gate::Peer;
use crate::server::admin::{handle_as, AdminContext, Proof, READ_ONLY};
use crate::store::{AuditFilter, Store};

fn context(dir: &std::path::Path) -> (Store, AdminContext) {
    let store = Store::open(&dir.join("k.db")).unwrap();
    let db = store.state_db().unwrap();
    let kill = Arc::new(KillSwitch::load(db.clone(), dir.join("kill")).unwrap());
    let (reload, _rx) = tokio::sync::mpsc::channel(1);
    let ctx = AdminContext::new(
        AdminConfig::default(),
        db.clone(),
        store.audit_log(),
        kill,
        Approvals::new(db),
        reload,
    );
    (store, ctx)
}

#[test]
fn a_session_reads_but_never_changes_state() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ctx) = context(dir.path());
    let db = store.state_db().unwrap();
    db.add_user(
        "ann",
        &["admin".into(), "auditor".into()],
        &[],
        b"0123456789abcdef0123",
    )
    .unwrap();
    db.add_user("aud", &["auditor".into()], &[], b"0123456789abcdef0123")
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let peer = Peer::Tcp {
        ip: "127.0.0.1".parse().unwrap(),
    };
    let run = |user: &str, method: &str, params| {
        rt.block_on(handle_as(&ctx, method, params, peer, user, Proof::Session))
    };
    // Positive control: a read passes on the session alone.
    assert!(run("ann", "keys.status", json!({})).is_ok());
    assert!(run("aud", "audit.verify", json!({})).is_ok());
    // Every state-changing method of the role table is refused, even for an admin.
    for (method, _) in crate::access::roles::PERMISSIONS {
        if READ_ONLY.contains(method) {
            continue;
        }
        let e = run("ann", method, json!({"key": "k", "name": "x", "id": "x"})).unwrap_err();
        assert_eq!(e.rule(), "admin.console_fresh_totp", "{method}");
    }
    // The role table still decides reads; a removed user has no session.
    assert_eq!(
        run("aud", "users.list", json!({})).unwrap_err().rule(),
        "admin.role"
    );
    assert_eq!(
        run("gone", "keys.status", json!({})).unwrap_err().rule(),
        "admin.auth"
    );
    assert!(
        !ctx.kill.status().0 && ctx.kill.status().1.is_empty(),
        "nothing was disabled"
    );
    // Each call went through the admin audit path.
    let rows = db.query_audit(&AuditFilter::default()).unwrap();
    assert!(rows.iter().any(|r| r.method == "admin.keys.disable"
        && r.rule.as_deref() == Some("admin.console_fresh_totp")));
    assert!(rows
        .iter()
        .any(|r| r.method == "admin.keys.status" && r.client == "user:ann"));
    rt.block_on(store.audit_log().shutdown()).unwrap();
}
