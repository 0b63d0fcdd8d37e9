//! The approval lifecycle against a real SQLite file.

use super::*;
use crate::store::Store;

fn setup() -> (tempfile::TempDir, Approvals, StateDb) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("k.db")).unwrap();
    let db = store.state_db().unwrap();
    store.close().unwrap();
    for (name, groups) in [
        ("ann", "treasury"),
        ("bob", "treasury"),
        ("eve", "ops"),
        ("app", "treasury"),
    ] {
        db.add_user(name, &["approver".into()], &[groups.into()], &[7u8; 20])
            .unwrap();
    }
    (dir, Approvals::new(db.clone()), db)
}

fn req() -> ApprovalRequirement {
    ApprovalRequirement {
        rule: "evm.require_approval".into(),
        approvers: 2,
        group: "treasury".into(),
        within: Duration::from_secs(3600),
    }
}

#[test]
fn quorum_then_exactly_one_consumption() {
    let (_dir, approvals, db) = setup();
    let summary = serde_json::json!({"value": "11"});
    let intent = HeldIntent {
        key: "k",
        digest: &[1u8; 32],
        requester: "app",
        chain: Some("eip155:1"),
        summary: &summary,
    };
    let user = |n: &str| db.user(n).unwrap().unwrap();
    let ApprovalOutcome::Held(a) = approvals.decide(&intent, &req(), 1000).unwrap() else {
        panic!("not held");
    };
    // A retry before any vote is the same request, not a new one.
    let ApprovalOutcome::Held(again) = approvals.decide(&intent, &req(), 1001).unwrap() else {
        panic!("not held");
    };
    assert_eq!(again.id, a.id);
    assert!(matches!(
        approvals.vote(&a.id, &user("app"), true, 1002),
        Err(VoteError::SelfApproval)
    ));
    assert!(matches!(
        approvals.vote(&a.id, &user("eve"), true, 1002),
        Err(VoteError::NotInGroup(_))
    ));
    let one = approvals.vote(&a.id, &user("ann"), true, 1003).unwrap();
    assert_eq!((one.approved, one.state.as_str()), (1, "pending"));
    assert!(matches!(
        approvals.vote(&a.id, &user("ann"), true, 1004),
        Err(VoteError::AlreadyVoted(_))
    ));
    assert!(matches!(
        approvals.decide(&intent, &req(), 1005).unwrap(),
        ApprovalOutcome::Held(_)
    ));
    let two = approvals.vote(&a.id, &user("bob"), true, 1006).unwrap();
    assert_eq!((two.approved, two.state.as_str()), (2, "approved"));
    assert!(matches!(
        approvals.decide(&intent, &req(), 1007).unwrap(),
        ApprovalOutcome::Proceed(id) if id == a.id
    ));
    assert!(matches!(
        approvals.decide(&intent, &req(), 1008),
        Err(ApprovalError::Consumed(_))
    ));
    // A different intent of the same key is a different request.
    let other = HeldIntent {
        digest: &[2u8; 32],
        ..intent
    };
    assert!(matches!(
        approvals.decide(&other, &req(), 1009).unwrap(),
        ApprovalOutcome::Held(b) if b.id != a.id
    ));
}

#[test]
fn rejected_and_expired_never_sign() {
    let (_dir, approvals, db) = setup();
    let summary = serde_json::json!({});
    let intent = HeldIntent {
        key: "k",
        digest: &[3u8; 32],
        requester: "app",
        chain: None,
        summary: &summary,
    };
    let ApprovalOutcome::Held(a) = approvals.decide(&intent, &req(), 0).unwrap() else {
        panic!()
    };
    approvals
        .vote(&a.id, &db.user("ann").unwrap().unwrap(), false, 1)
        .unwrap();
    assert!(matches!(
        approvals.decide(&intent, &req(), 2),
        Err(ApprovalError::Rejected(_))
    ));
    // After the window a fresh request opens; votes on the old one are refused.
    let late = 3_600_001;
    assert!(matches!(
        approvals.decide(&intent, &req(), late).unwrap(),
        ApprovalOutcome::Held(b) if b.id != a.id
    ));
    assert!(matches!(
        approvals.vote(&a.id, &db.user("bob").unwrap().unwrap(), true, late),
        Err(VoteError::NotPending { .. })
    ));
}

/// Regression (found by the crash harness, tests/crash): a SIGKILL after an approval was
/// consumed but before the signature's audit row committed left it `consumed` with no
/// signature released, and the approved intent was refused forever (`approval.consumed`).
#[test]
fn a_consumption_whose_signature_never_left_is_given_back_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("k.db")).unwrap();
    let db = store.state_db().unwrap();
    for name in ["ann", "bob"] {
        db.add_user(name, &["approver".into()], &["treasury".into()], &[7u8; 20])
            .unwrap();
    }
    let approvals = Approvals::new(db.clone());
    let now = crate::store::now_ms();
    let summary = serde_json::json!({});
    let intent = |digest| HeldIntent {
        key: "k",
        digest,
        requester: "app",
        chain: None,
        summary: &summary,
    };
    let (released, lost) = (&[1u8; 32], &[2u8; 32]);
    let mut ids = Vec::new();
    for digest in [released, lost] {
        let ApprovalOutcome::Held(a) = approvals.decide(&intent(digest), &req(), now).unwrap()
        else {
            panic!("not held")
        };
        for who in ["ann", "bob"] {
            let user = db.user(who).unwrap().unwrap();
            approvals.vote(&a.id, &user, true, now + 1).unwrap();
        }
        assert!(matches!(
            approvals.decide(&intent(digest), &req(), now + 2).unwrap(),
            ApprovalOutcome::Proceed(id) if id == a.id
        ));
        ids.push(a.id);
    }
    // The first signature's audit row committed (it was released); the second never did.
    let row = crate::store::AuditEntry {
        request_id: "r-1".into(),
        client: "app".into(),
        key_id: Some("k".into()),
        chain: None,
        method: "eth_signTransaction".into(),
        summary: serde_json::json!({"approval_id": ids[0]}),
        decision: crate::store::Decision::Signed,
        rule: None,
        reason: None,
        tx_hash: Some("0x01".into()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store.audit_log().append(row)).unwrap();

    assert_eq!(
        approvals.recover_unreleased(now + 3).unwrap(),
        vec![ids[1].clone()]
    );
    assert!(matches!(
        approvals.decide(&intent(lost), &req(), now + 4).unwrap(),
        ApprovalOutcome::Proceed(id) if id == ids[1]
    ));
    assert!(matches!(
        approvals.decide(&intent(released), &req(), now + 4),
        Err(ApprovalError::Consumed(_))
    ));
}
