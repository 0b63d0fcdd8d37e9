//! Control-state rules of the people controls (issue 21).

use super::*;

/// Issue 21: a removed admin's pending proposal still counted as the second admin.
#[test]
fn a_proposal_dies_with_its_proposer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("k.db")).unwrap();
    let db = store.state_db().unwrap();
    for name in ["alice", "bob", "carol"] {
        db.add_user(name, &["admin".into()], &[], &[7u8; 20])
            .unwrap();
    }
    assert!(db
        .propose("keys.enable:*", "bob", 60_000)
        .unwrap()
        .is_empty());
    assert!(db.remove_user("bob").unwrap());
    assert!(db
        .propose("keys.enable:*", "alice", 60_000)
        .unwrap()
        .is_empty());
    // Negative control: a live admin's proposal does count.
    assert_eq!(
        db.propose("keys.enable:*", "carol", 60_000).unwrap(),
        vec!["alice".to_string()]
    );
    // A proposal by a user who is not an admin (any more) never counts.
    db.add_user("olga", &["operator".into()], &[], &[7u8; 20])
        .unwrap();
    assert!(db
        .propose("users.remove:x", "olga", 60_000)
        .unwrap()
        .is_empty());
    assert!(db
        .propose("users.remove:x", "alice", 60_000)
        .unwrap()
        .is_empty());
}
