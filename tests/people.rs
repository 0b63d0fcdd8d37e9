//! People and control, end to end through the real binary: multi-party approval with TOTP,
//! the kill switch under load, rate limits, the role table, and audit tamper detection.
//! TOTP codes come from an independent RFC 6238 implementation (tests/control).

mod common;
mod control;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Daemon;
use control::*;
use serde_json::{json, Value};

fn signed_rows(config: &std::path::Path) -> Vec<Value> {
    audit_rows(config, &["--decision", "signed"])
}

#[test]
fn large_transfer_needs_two_approvals_and_signs_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), REUSABLE_CODES);
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let (rpc, from, sock) = (daemon.rpc_addr(), address(&daemon), socket(dir.path()));
    let mode = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let alice = bootstrap_admin(&daemon, "alice");
    let adam = bootstrap_admin(&daemon, "adam");
    let ann = add_user2(&sock, &alice, &adam, "ann", &["approver"], &["treasury"]);
    let bob = add_user2(&sock, &alice, &adam, "bob", &["approver"], &["treasury"]);
    let carl = add_user2(&sock, &alice, &adam, "carl", &["approver"], &["ops"]);
    // The requesting client's own identity (the anonymous listener's caller is `local`).
    let local = add_user2(&sock, &alice, &adam, "local", &["approver"], &["treasury"]);

    // Small transfers are not held.
    assert!(sign(&rpc, &from, ETHER / 2, 0)["result"].is_string());

    let held = sign(&rpc, &from, 11 * ETHER, 1);
    assert_eq!(error_code(&held), Some(-32002), "{held}");
    let data = &held["error"]["data"];
    let id = data["approval_id"].as_str().unwrap().to_string();
    assert_eq!(
        (data["required"].as_u64(), data["approved"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(data["expires_at"].as_i64().unwrap() > 0);
    // A retry is the same request, not a new one.
    assert_eq!(
        sign(&rpc, &from, 11 * ETHER, 1)["error"]["data"]["approval_id"],
        id
    );

    let pending = admin(&sock, &ann, "approvals.list", json!({}));
    let entry = &pending["result"][0];
    assert_eq!(entry["id"], id);
    assert_eq!(entry["summary"]["value"], (11 * ETHER).to_string());
    assert_eq!(entry["chain"], "eip155:31337");

    let approve = |u: &User| admin(&sock, u, "approvals.approve", json!({"id": id}));
    assert_eq!(
        error_code(&approve(&local)),
        Some(-32010),
        "self-approval must be refused"
    );
    assert_eq!(
        error_code(&approve(&carl)),
        Some(-32010),
        "other group must be refused"
    );
    let wrong = admin_raw(
        &sock,
        "ann",
        &ann.wrong_code(),
        "approvals.approve",
        json!({"id": id}),
    );
    assert_eq!(error_code(&wrong), Some(-32005), "{wrong}");
    let one = approve(&ann);
    assert_eq!(one["result"]["approved"], 1, "{one}");
    assert_eq!(
        error_code(&approve(&ann)),
        Some(-32010),
        "a second vote by ann"
    );
    let still = sign(&rpc, &from, 11 * ETHER, 1);
    assert_eq!(error_code(&still), Some(-32002));
    assert_eq!(still["error"]["data"]["approved"], 1);

    // Approvals are durable: restart between the two votes.
    drop(daemon);
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let rpc = daemon.rpc_addr();
    let two = approve(&bob);
    assert_eq!(two["result"]["state"], "approved", "{two}");

    let before = signed_rows(&daemon.config).len();
    let released = sign(&rpc, &from, 11 * ETHER, 1);
    assert!(
        released["result"].as_str().unwrap().starts_with("0x"),
        "{released}"
    );
    let replay = sign(&rpc, &from, 11 * ETHER, 1);
    assert_eq!(error_code(&replay), Some(-32001), "{replay}");
    assert_eq!(replay["error"]["data"]["rule"], "approval.consumed");
    let signed = signed_rows(&daemon.config);
    assert_eq!(signed.len(), before + 1, "exactly one new signature");
    assert_eq!(signed.last().unwrap()["summary"]["approval_id"], id);

    // A rejected request never signs.
    let other = sign(&rpc, &from, 12 * ETHER, 2);
    let other_id = other["error"]["data"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    admin(&sock, &ann, "approvals.reject", json!({"id": other_id}));
    let refused = sign(&rpc, &from, 12 * ETHER, 2);
    assert_eq!(
        refused["error"]["data"]["rule"], "approval.rejected",
        "{refused}"
    );

    // Refused votes and the wrong code are in the audit log.
    let rows = audit_rows(&daemon.config, &["--method", "admin.approvals.approve"]);
    let rules: Vec<_> = rows.iter().filter_map(|r| r["rule"].as_str()).collect();
    for rule in [
        "approval.self",
        "approval.group",
        "admin.auth",
        "approval.duplicate_vote",
    ] {
        assert!(rules.contains(&rule), "{rule} not audited: {rules:?}");
    }
    assert!(rows.iter().all(|r| !r.to_string().contains(&ann.code())));
}

#[test]
fn kill_switch_stops_every_new_signature_and_needs_two_admins_to_undo() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), REUSABLE_CODES);
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let (rpc, from, sock) = (daemon.rpc_addr(), address(&daemon), socket(dir.path()));
    let alice = bootstrap_admin(&daemon, "alice");
    let adam = bootstrap_admin(&daemon, "adam");
    let olga = add_user(&sock, &alice, "olga", &["operator"], &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<(Instant, bool)>::new()));
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let (stop, log, rpc, from) = (stop.clone(), log.clone(), rpc.clone(), from.clone());
            std::thread::spawn(move || {
                let mut nonce = w * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let r = sign(&rpc, &from, 1, nonce);
                    nonce += 1;
                    let ok = r["result"].is_string();
                    assert!(ok || error_code(&r) == Some(-32004), "{r}");
                    log.lock().unwrap().push((sent, ok));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let out = Command::new(common::binary())
        .args([
            "keys",
            "disable",
            "dev-secp256k1",
            "--user",
            "olga",
            "--totp",
            &olga.code(),
        ])
        .arg("--config")
        .arg(&daemon.config)
        .output()
        .unwrap();
    let disabled_at = Instant::now();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let log = log.lock().unwrap();
    assert!(
        log.iter().filter(|(_, ok)| *ok).count() > 0,
        "load produced signatures"
    );
    let late: Vec<_> = log
        .iter()
        .filter(|(sent, ok)| *ok && *sent >= disabled_at)
        .collect();
    assert!(
        late.is_empty(),
        "{} signatures for requests sent after disable",
        late.len()
    );
    assert!(log.iter().any(|(sent, ok)| !ok && *sent >= disabled_at));

    // In the audit log every signature precedes the disable action.
    let rows = audit_rows(&daemon.config, &[]);
    let disable_seq = rows
        .iter()
        .find(|r| r["method"] == "admin.keys.disable" && r["decision"] == "accepted")
        .unwrap()["seq"]
        .as_i64()
        .unwrap();
    assert!(rows
        .iter()
        .filter(|r| r["decision"] == "signed")
        .all(|r| r["seq"].as_i64().unwrap() < disable_seq));

    // Persistent across restarts; enabling needs two different admins.
    drop(daemon);
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let rpc = daemon.rpc_addr();
    assert_eq!(error_code(&sign(&rpc, &from, 1, 5)), Some(-32004));
    let key = json!({"key": "dev-secp256k1"});
    assert_eq!(
        error_code(&admin(&sock, &olga, "keys.enable", key.clone())),
        Some(-32005)
    );
    assert_eq!(
        admin(&sock, &alice, "keys.enable", key.clone())["result"]["status"],
        "pending"
    );
    assert_eq!(
        admin(&sock, &alice, "keys.enable", key.clone())["result"]["status"],
        "pending"
    );
    assert_eq!(error_code(&sign(&rpc, &from, 1, 6)), Some(-32004));
    assert_eq!(
        admin(&sock, &adam, "keys.enable", key)["result"]["enabled"],
        "dev-secp256k1"
    );
    assert!(sign(&rpc, &from, 1, 7)["result"].is_string());

    // Root's emergency paths need no TOTP: SIGUSR1, then the kill file.
    daemon.signal(rustix::process::Signal::USR1);
    daemon.wait_line("keyguard: all keys disabled (SIGUSR1)");
    assert_eq!(error_code(&sign(&rpc, &from, 1, 8)), Some(-32004));
    let all = json!({"all": true});
    admin(&sock, &alice, "keys.enable", all.clone());
    admin(&sock, &adam, "keys.enable", all.clone());
    assert!(sign(&rpc, &from, 1, 9)["result"].is_string());
    std::fs::write(dir.path().join("var/KILL"), b"").unwrap();
    assert_eq!(error_code(&sign(&rpc, &from, 1, 10)), Some(-32004));
    let refused = admin(&sock, &alice, "keys.enable", all);
    assert_eq!(error_code(&refused), Some(-32010), "{refused}");
}

#[test]
fn rate_limit_burst_accepts_exactly_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[rate_limits]\nper_client = { per_second = 0.01, burst = 5 }\n";
    let daemon = Daemon::start(dir.path(), &config(dir.path(), extra), &[]);
    let (rpc, from) = (daemon.rpc_addr(), address(&daemon));
    let results: Vec<_> = (0..12).map(|n| sign(&rpc, &from, 1, n)).collect();
    let accepted = results.iter().filter(|r| r["result"].is_string()).count();
    assert_eq!(accepted, 5);
    for r in results.iter().filter(|r| !r["result"].is_string()) {
        assert_eq!(error_code(r), Some(-32003), "{r}");
        assert!(r["error"]["data"]["retry_after_ms"].as_u64().unwrap() > 1000);
    }
    // Limits apply before decoding: even garbage is counted and refused cheaply.
    let junk = common::rpc(&rpc, "eth_signTransaction", json!([{"from": from}]));
    assert_eq!(error_code(&junk), Some(-32003));
    let limited = audit_rows(&daemon.config, &["--rule", "rate_limit.client"]);
    assert_eq!(limited.len(), 8);
}

#[test]
fn totp_codes_are_single_use_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &config(dir.path(), ""), &[]);
    let sock = socket(dir.path());
    let alice = bootstrap_admin(&daemon, "alice");
    let code = alice.code();
    let first = admin_raw(&sock, "alice", &code, "users.list", json!({}));
    assert!(first["result"].is_array(), "{first}");
    let reused = admin_raw(&sock, "alice", &code, "users.list", json!({}));
    assert_eq!(error_code(&reused), Some(-32005), "{reused}");
    let unknown = admin_raw(&sock, "mallory", &code, "users.list", json!({}));
    // An unknown user gets the same answer as a wrong code (no user enumeration).
    let wrong = admin_raw(&sock, "alice", &alice.wrong_code(), "users.list", json!({}));
    assert_eq!(unknown["error"], wrong["error"]);
    assert_eq!(unknown["error"]["data"]["rule"], "admin.auth");
}

#[test]
fn each_role_can_do_exactly_its_actions_and_refusals_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &config(dir.path(), REUSABLE_CODES), &[]);
    let sock = socket(dir.path());
    let alice = bootstrap_admin(&daemon, "alice");
    let adam = bootstrap_admin(&daemon, "adam");
    let users = [
        ("admin", alice.clone()),
        (
            "operator",
            add_user(&sock, &alice, "olga", &["operator"], &[]),
        ),
        (
            "approver",
            add_user2(&sock, &alice, &adam, "ann", &["approver"], &["treasury"]),
        ),
        ("auditor", add_user(&sock, &alice, "aud", &["auditor"], &[])),
    ];
    let table: &[(&str, &[&str])] = &[
        ("users.list", &["admin"]),
        ("users.remove", &["admin"]),
        ("users.add", &["admin"]),
        ("policy.reload", &["admin", "operator"]),
        ("keys.status", &["admin", "operator", "auditor"]),
        ("keys.disable", &["admin", "operator"]),
        ("keys.enable", &["admin"]),
        ("approvals.list", &["approver", "auditor"]),
        ("approvals.approve", &["approver"]),
        ("approvals.reject", &["approver"]),
        ("audit.query", &["admin", "auditor"]),
        ("audit.verify", &["admin", "auditor"]),
    ];
    let params = |m: &str| match m {
        "users.remove" => json!({"name": "nobody"}),
        "users.add" => json!({"name": "zed", "roles": ["admin"]}),
        "keys.disable" | "keys.enable" => json!({"key": "no-such-key"}),
        "approvals.approve" | "approvals.reject" => json!({"id": "apr-none"}),
        _ => json!({}),
    };
    let mut refusals = 0;
    for (role, user) in &users {
        for (method, allowed) in table {
            let r = admin(&sock, user, method, params(method));
            let role_refused = error_code(&r) == Some(-32005);
            assert_eq!(
                !role_refused,
                allowed.contains(role),
                "{role} {method}: {r}"
            );
            refusals += usize::from(role_refused);
        }
    }
    let expected: usize = table.iter().map(|(_, allowed)| 4 - allowed.len()).sum();
    assert_eq!(refusals, expected);
    let audited = audit_rows(&daemon.config, &["--rule", "admin.role"]);
    assert_eq!(audited.len(), refusals);
    assert!(audited.iter().all(|r| r["decision"] == "refused"));
    // The auditor reads the log through the API too, with filters.
    let q = admin(
        &sock,
        &users[3].1,
        "audit.query",
        json!({"filter": {"rule": "admin.role", "limit": 3}}),
    );
    assert_eq!(q["result"].as_array().unwrap().len(), 3);
}

#[test]
fn audit_verify_detects_any_single_row_edit_delete_or_reorder() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &config(dir.path(), REUSABLE_CODES), &[]);
    let (rpc, from) = (daemon.rpc_addr(), address(&daemon));
    for n in 0..6 {
        sign(&rpc, &from, 1, n);
    }
    sign(&rpc, &from, 1000 * ETHER, 99);
    let config_path = daemon.config.clone();
    assert_eq!(daemon.terminate().code(), Some(0));
    let verify = |path: &std::path::Path| {
        Command::new(common::binary())
            .args(["audit", "verify", "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    let ok = verify(&config_path);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let exported = audit_rows(&config_path, &[]);
    assert_eq!(exported.len(), 7);
    assert!(exported
        .iter()
        .all(|r| r["hash"].as_str().unwrap().len() == 64));

    let db = dir.path().join("var/keyguard.db");
    let original = std::fs::read(&db).unwrap();
    let attacks = [
        (
            "edit",
            "UPDATE audit_log SET decision = 'signed' WHERE seq = 7",
            7,
        ),
        (
            "edit summary",
            "UPDATE audit_log SET summary = '{}' WHERE seq = 3",
            3,
        ),
        ("delete", "DELETE FROM audit_log WHERE seq = 4", 4),
        (
            "reorder",
            "UPDATE audit_log SET seq = -1 WHERE seq = 2; \
             UPDATE audit_log SET seq = 2 WHERE seq = 5; \
             UPDATE audit_log SET seq = 5 WHERE seq = -1",
            2,
        ),
    ];
    for (name, sql, seq) in attacks {
        std::fs::write(&db, &original).unwrap();
        let _ = std::fs::remove_file(dir.path().join("var/keyguard.db-wal"));
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
            .unwrap();
        conn.execute_batch(sql).unwrap();
        drop(conn);
        let out = verify(&config_path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} not detected");
        assert!(stderr.contains(&format!("seq {seq}")), "{name}: {stderr}");
    }
}

#[test]
fn a_waiting_listener_holds_the_call_until_the_quorum_is_met() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), REUSABLE_CODES).replace(
        "keys = [\"*\"]\n[[policies]]",
        "keys = [\"*\"]\napproval_wait_secs = 60\n[[policies]]",
    );
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let (rpc, from, sock) = (daemon.rpc_addr(), address(&daemon), socket(dir.path()));
    let alice = bootstrap_admin(&daemon, "alice");
    let adam = bootstrap_admin(&daemon, "adam");
    let ann = add_user2(&sock, &alice, &adam, "ann", &["approver"], &["treasury"]);
    let bob = add_user2(&sock, &alice, &adam, "bob", &["approver"], &["treasury"]);

    let started = Instant::now();
    let call = {
        let (rpc, from) = (rpc.clone(), from.clone());
        std::thread::spawn(move || sign(&rpc, &from, 11 * ETHER, 7))
    };
    // The call is held open: it shows up as pending while nobody has answered it.
    let id = loop {
        let pending = admin(&sock, &ann, "approvals.list", json!({}));
        if let Some(id) = pending["result"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never became pending"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!call.is_finished());
    admin(&sock, &ann, "approvals.approve", json!({"id": id}));
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !call.is_finished(),
        "one approval of two must not release it"
    );
    admin(&sock, &bob, "approvals.approve", json!({"id": id}));
    let released = call.join().unwrap();
    assert!(
        released["result"].as_str().unwrap().starts_with("0x"),
        "{released}"
    );
    assert_eq!(signed_rows(&daemon.config).len(), 1);
}

/// Issue 21, item 6: pending approvals kept the rule in force when they were created. An
/// approval is judged at consumption by the rule in force then: tightening 2-of treasury to
/// 3-of board stops a request already approved under the old rule. Negative control: the new
/// quorum releases it. Also: `approvals.list` is paginated and bounded.
#[test]
fn tightening_the_rule_stops_an_in_flight_approval() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), REUSABLE_CODES);
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let (rpc, from, sock) = (daemon.rpc_addr(), address(&daemon), socket(dir.path()));
    let alice = bootstrap_admin(&daemon, "alice");
    let adam = bootstrap_admin(&daemon, "adam");
    let approver =
        |name: &str, group: &str| add_user2(&sock, &alice, &adam, name, &["approver"], &[group]);
    let (ann, bob) = (approver("ann", "treasury"), approver("bob", "treasury"));
    let board: Vec<User> = ["bea", "ben", "bo"]
        .iter()
        .map(|n| approver(n, "board"))
        .collect();

    let held = sign(&rpc, &from, 11 * ETHER, 0);
    let id = held["error"]["data"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Pages: limit 1 returns one; an out-of-range limit is refused by name.
    let page = admin(&sock, &ann, "approvals.list", json!({"limit": 1}));
    assert_eq!(page["result"].as_array().map(Vec::len), Some(1), "{page}");
    let next = admin(
        &sock,
        &ann,
        "approvals.list",
        json!({"limit": 1, "after": id}),
    );
    assert_eq!(next["result"], json!([]), "{next}");
    let too_many = admin(&sock, &ann, "approvals.list", json!({"limit": 100_000}));
    assert_eq!(
        too_many["error"]["data"]["rule"], "admin.invalid",
        "{too_many}"
    );

    admin(&sock, &ann, "approvals.approve", json!({"id": id}));
    let approved = admin(&sock, &bob, "approvals.approve", json!({"id": id}));
    assert_eq!(approved["result"]["state"], "approved", "{approved}");

    // Tighten the rule, then retry the approved request.
    let tight = std::fs::read_to_string(&daemon.config).unwrap().replace(
        "approvers = 2, group = \"treasury\"",
        "approvers = 3, group = \"board\"",
    );
    std::fs::write(&daemon.config, tight).unwrap();
    let reloaded = admin(&sock, &alice, "policy.reload", json!({}));
    assert_eq!(reloaded["result"]["reloaded"], true, "{reloaded}");
    let retry = sign(&rpc, &from, 11 * ETHER, 0);
    assert_eq!(
        error_code(&retry),
        Some(-32002),
        "approved under the old rule: {retry}"
    );
    assert_eq!(retry["error"]["data"]["required"], 3, "{retry}");
    assert_eq!(retry["error"]["data"]["approved"], 0, "{retry}");
    // Treasury votes do not count any more; the board's do.
    for (i, u) in board.iter().enumerate() {
        let r = admin(&sock, u, "approvals.approve", json!({"id": id}));
        assert!(r["result"].is_object(), "{r}");
        if i < 2 {
            assert_eq!(error_code(&sign(&rpc, &from, 11 * ETHER, 0)), Some(-32002));
        }
    }
    let signed = sign(&rpc, &from, 11 * ETHER, 0);
    assert!(
        signed["result"].is_string(),
        "the board's quorum must release it: {signed}"
    );
}
