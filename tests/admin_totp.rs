//! TOTP at rest and under attack, through the real binary: secrets are sealed in the database
//! (rows left in plaintext are sealed by the daemon), and consecutive wrong codes lock a user
//! durably until the lock expires.

mod common;
mod control;

use std::time::Duration;

use common::Daemon;
use control::*;
use serde_json::json;

/// The stored secret of `name` and whether it is marked sealed (read with plain SQLite).
fn stored_secret(dir: &std::path::Path, name: &str) -> (Vec<u8>, bool) {
    let conn = rusqlite::Connection::open(dir.join("var/keyguard.db")).unwrap();
    conn.query_row(
        "SELECT totp_secret, totp_sealed FROM users WHERE name = ?1",
        [name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

#[test]
fn totp_secrets_are_sealed_at_rest_including_rows_written_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), REUSABLE_CODES);
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let sock = socket(dir.path());
    // The CLI here has no keystore passphrase: the first admin's row is written raw ...
    let alice = bootstrap_admin(&daemon, "alice");
    assert_eq!(
        stored_secret(dir.path(), "alice"),
        (alice.secret.clone(), false)
    );
    // ... and sealed by the daemon the first time alice signs in.
    let listed = admin(&sock, &alice, "users.list", json!({}));
    assert!(listed["result"].is_array(), "{listed}");
    let (stored, sealed) = stored_secret(dir.path(), "alice");
    assert!(sealed);
    assert!(!stored
        .windows(alice.secret.len())
        .any(|w| w == alice.secret));
    // Users added through the API are sealed from the start.
    let ann = add_user(&sock, &alice, "ann", &["auditor"], &[]);
    let (stored, sealed) = stored_secret(dir.path(), "ann");
    assert!(sealed && !stored.windows(ann.secret.len()).any(|w| w == ann.secret));

    // After a restart the same passphrase opens them; another passphrase does not start.
    assert_eq!(daemon.terminate().code(), Some(0));
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let ok = admin(&sock, &ann, "approvals.list", json!({}));
    assert!(ok["result"].is_array(), "{ok}");
    drop(daemon);
    // A raw row written while the daemon is down is sealed at the next start.
    let conn = rusqlite::Connection::open(dir.path().join("var/keyguard.db")).unwrap();
    conn.execute(
        "INSERT INTO users (name, roles, groups, totp_secret, created_ms) \
         VALUES ('olga', 'operator', '', x'0102030405060708090a0b0c0d0e0f1011121314', 0)",
        [],
    )
    .unwrap();
    drop(conn);
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let (stored, sealed) = stored_secret(dir.path(), "olga");
    assert!(sealed && stored.len() > 20);
    drop(daemon);
    let out = std::process::Command::new(common::binary())
        .args(["start", "--config"])
        .arg(dir.path().join("keyguard.toml"))
        .env("KEYGUARD_PASSPHRASE", "another-passphrase")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Every failed sign-in answers this, whatever the reason.
const AUTH_FAILED: &str = "authentication failed: unknown user, invalid TOTP code, or locked";

#[test]
fn consecutive_wrong_codes_lock_the_user_durably_until_the_lock_expires() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[admin]\ntotp_single_use = false\ntotp_max_failures = 3\ntotp_lockout = \"5s\"\n";
    let text = config(dir.path(), extra);
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let sock = socket(dir.path());
    let alice = bootstrap_admin(&daemon, "alice");
    let wrong = alice.wrong_code();
    for _ in 0..2 {
        let r = admin_raw(&sock, "alice", &wrong, "users.list", json!({}));
        assert_eq!(r["error"]["message"], AUTH_FAILED);
    }
    // A correct code resets the count ...
    assert!(admin(&sock, &alice, "users.list", json!({}))["result"].is_array());
    for _ in 0..2 {
        admin_raw(&sock, "alice", &wrong, "users.list", json!({}));
    }
    // ... so only the third consecutive wrong code locks.
    let locking = admin_raw(&sock, "alice", &wrong, "users.list", json!({}));
    assert_eq!(error_code(&locking), Some(-32005));
    // Locked: even the right code is refused, and across a restart. The answer is the same
    // as for a user who does not exist (no enumeration); the audit row names the rule.
    let locked = admin(&sock, &alice, "users.list", json!({}));
    let unknown = admin_raw(&sock, "nobody", "123456", "users.list", json!({}));
    for r in [&locking, &locked] {
        assert_eq!(r["error"], unknown["error"], "{r} vs {unknown}");
    }
    assert_eq!(unknown["error"]["data"]["rule"], "admin.auth");
    assert_eq!(daemon.terminate().code(), Some(0));
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let still = admin(&sock, &alice, "users.list", json!({}));
    assert_eq!(error_code(&still), Some(-32005), "{still}");
    // Once it expires a correct code gets in and starts the count again.
    std::thread::sleep(Duration::from_secs(6));
    let after = admin(&sock, &alice, "users.list", json!({}));
    assert!(after["result"].is_array(), "{after}");
    let r = admin_raw(&sock, "alice", &wrong, "users.list", json!({}));
    assert_eq!(r["error"]["message"], AUTH_FAILED);
    let rows = audit_rows(&daemon.config, &["--rule", "admin.totp_lockout"]);
    assert_eq!(
        rows.len(),
        3,
        "the locking code and two refusals while locked"
    );
    assert!(rows.iter().all(|r| r["decision"] == "refused"));
}
