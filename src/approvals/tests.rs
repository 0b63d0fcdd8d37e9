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

fn intent_with<'a>(digest: &'a [u8; 32], requester: &'a str, summary: &'a Value) -> HeldIntent<'a> {
    HeldIntent {
        key: "k",
        digest,
        requester,
        chain: Some("eip155:1"),
        summary,
    }
}

/// Issue 21: tightening a rule from 2-of treasury to 3-of board stopped nothing in flight.
/// The rule in force at consumption decides; votes of people outside it no longer count.
#[test]
fn an_approval_is_judged_by_the_rule_in_force_when_it_is_consumed() {
    let (_dir, approvals, db) = setup();
    for name in ["bea", "ben", "bo"] {
        db.add_user(name, &["approver".into()], &["board".into()], &[7u8; 20])
            .unwrap();
    }
    let summary = serde_json::json!({});
    let intent = intent_with(&[9u8; 32], "app", &summary);
    let user = |n: &str| db.user(n).unwrap().unwrap();
    let ApprovalOutcome::Held(a) = approvals.decide(&intent, &req(), 10).unwrap() else {
        panic!("not held");
    };
    approvals.vote(&a.id, &user("ann"), true, 11).unwrap();
    let done = approvals.vote(&a.id, &user("bob"), true, 12).unwrap();
    assert_eq!(done.state, "approved");
    let board = ApprovalRequirement {
        approvers: 3,
        group: "board".into(),
        ..req()
    };
    // The tightened rule: approved under 2-of treasury is not enough; open again, 0 of 3.
    let ApprovalOutcome::Held(again) = approvals.decide(&intent, &board, 13).unwrap() else {
        panic!("an approval under the old rule was consumed");
    };
    assert_eq!(
        (again.id.as_str(), again.approved, again.required),
        (a.id.as_str(), 0, 3)
    );
    assert_eq!(
        (again.group.as_str(), again.state.as_str()),
        ("board", "pending")
    );
    approvals.vote(&a.id, &user("bea"), true, 14).unwrap();
    approvals.vote(&a.id, &user("ben"), true, 15).unwrap();
    assert!(matches!(
        approvals.decide(&intent, &board, 16).unwrap(),
        ApprovalOutcome::Held(_)
    ));
    approvals.vote(&a.id, &user("bo"), true, 17).unwrap();
    // Negative control: the quorum of the rule in force does release it (once).
    assert!(matches!(
        approvals.decide(&intent, &board, 18).unwrap(),
        ApprovalOutcome::Proceed(id) if id == a.id
    ));
}

#[test]
fn a_removed_approver_no_longer_counts() {
    let (_dir, approvals, db) = setup();
    let summary = serde_json::json!({});
    let intent = intent_with(&[10u8; 32], "app", &summary);
    let user = |n: &str| db.user(n).unwrap().unwrap();
    let ApprovalOutcome::Held(a) = approvals.decide(&intent, &req(), 10).unwrap() else {
        panic!("not held");
    };
    approvals.vote(&a.id, &user("ann"), true, 11).unwrap();
    approvals.vote(&a.id, &user("bob"), true, 12).unwrap();
    assert!(db.remove_user("bob").unwrap());
    let ApprovalOutcome::Held(held) = approvals.decide(&intent, &req(), 13).unwrap() else {
        panic!("a removed approver's vote was counted");
    };
    assert_eq!(
        (held.approved, held.approvers.clone()),
        (1, vec!["ann".to_string()])
    );
}

#[test]
fn pending_requests_are_capped_per_client_and_overall_and_listed_in_pages() {
    let (_dir, approvals, _db) = setup();
    let approvals = approvals.with_caps(3, 5);
    let summary = serde_json::json!({});
    let digests: Vec<[u8; 32]> = (0u8..10).map(|i| [100 + i; 32]).collect();
    let mut held = Vec::new();
    for d in &digests[..3] {
        let out = approvals.decide(&intent_with(d, "app", &summary), &req(), 10);
        assert!(matches!(out, Ok(ApprovalOutcome::Held(_))));
        held.push(d);
    }
    // The client's own cap; a retry of an open request is not a new one.
    assert!(matches!(
        approvals.decide(&intent_with(&digests[3], "app", &summary), &req(), 11),
        Err(ApprovalError::Capped {
            scope: "client",
            cap: 3
        })
    ));
    assert!(matches!(
        approvals.decide(&intent_with(&digests[0], "app", &summary), &req(), 11),
        Ok(ApprovalOutcome::Held(_))
    ));
    // Another client still gets in, up to the overall cap.
    for d in &digests[4..6] {
        let out = approvals.decide(&intent_with(d, "eve", &summary), &req(), 12);
        assert!(matches!(out, Ok(ApprovalOutcome::Held(_))), "{out:?}");
    }
    assert!(matches!(
        approvals.decide(&intent_with(&digests[6], "bob", &summary), &req(), 13),
        Err(ApprovalError::Capped {
            scope: "total",
            cap: 5
        })
    ));
    // Pages: 2 + 2 + 1, no overlap, oldest first.
    let p1 = approvals.pending_page(14, None, 2).unwrap();
    let p2 = approvals.pending_page(14, Some(&p1[1].id), 2).unwrap();
    let p3 = approvals.pending_page(14, Some(&p2[1].id), 2).unwrap();
    let ids: Vec<_> = p1
        .iter()
        .chain(&p2)
        .chain(&p3)
        .map(|a| a.id.clone())
        .collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        5
    );
    assert_eq!(approvals.pending_page(14, None, 10_000).unwrap().len(), 5);
    // After expiry the slots are free again (expired requests do not count).
    assert!(matches!(
        approvals.decide(
            &intent_with(&digests[7], "app", &summary),
            &req(),
            3_600_100
        ),
        Ok(ApprovalOutcome::Held(_))
    ));
}
