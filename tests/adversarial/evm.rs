//! Hostile Ethereum JSON-RPC requests against a bearer-token listener: malformed and oversized
//! bodies, boundary values, wrong chain, wrong or ungranted key, unknown and revoked tokens,
//! replays (nonce reuse, a consumed approval), an expired approval and a disabled key. Each row
//! names the JSON-RPC code and the `data` field or rule it must carry; every row is also checked
//! to have signed nothing and to have left its audit row.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::Daemon;
use crate::control::{add_user2, admin, bootstrap_admin, User};
use crate::evm_table::{table, tx, with, Row, Send, SIGN};
use crate::helpers::{carries_signature, check_audit, check_rpc_error, mark, Audited, Failures};

pub(crate) const GOOD: &str = "good-token-0123456789";
pub(crate) const NARROW: &str = "narrow-token-0123456789";
pub(crate) const REVOKED: &str = "revoked-token-0123456789";

pub(crate) use crate::common::token_sha256 as sha;

fn config(dir: &Path, revoked_client: bool) -> String {
    let revoked = if revoked_client {
        format!(
            "[[clients]]\nname = \"revoked\"\ntoken_sha256 = \"{}\"\nkeys = [\"*\"]\n",
            sha(REVOKED)
        )
    } else {
        String::new()
    };
    format!(
        r#"
{keystore}[admin]
totp_single_use = false
{listener}max_body_bytes = 65536
[[clients]]
name = "good"
token_sha256 = "{good}"
keys = ["*"]
[[clients]]
name = "narrow"
token_sha256 = "{narrow}"
keys = ["some-other-key"]
{revoked}
[[policies]]
name = "adversarial"
keys = ["*"]
[policies.evm]
chain_ids = [31337]
to = "any"
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
max_calldata_bytes = 64
max_blobs = 0
nonce = {{ allow_replacement = false }}
require_approval = {{ above = "0.5 ether", approvers = 1, group = "treasury", within = "2s" }}
[[policies.evm.typed_data]]
name = "orders"
domain_name = "Exchange"
primary_types = ["Order"]
[[policies.evm.messages]]
name = "login"
methods = ["personal_sign"]
pattern = "^Sign in nonce [0-9]+$"
"#,
        keystore = crate::common::software_keystore(dir, &["secp256k1"]),
        listener = crate::common::BEARER_EVM_LISTENER,
        good = sha(GOOD),
        narrow = sha(NARROW),
    )
}

/// One HTTP POST with an optional bearer token; returns (status, parsed body or the raw text).
fn post(addr: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A peer that answers 413 early may reset before the whole body is written.
    let _ = s.write_all(body.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let text = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        status,
        serde_json::from_str(text).unwrap_or(Value::String(text.into())),
    )
}

pub(crate) fn call(addr: &str, token: Option<&str>, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    post(addr, token, &body.to_string()).1
}

fn run_row(rpc: &str, r: &Row) -> Value {
    match &r.send {
        Send::Call(token, method, params) => call(rpc, *token, method, params.clone()),
        Send::Raw(body) => post(rpc, Some(GOOD), body).1,
    }
}

pub(crate) fn check(config: &Path, rpc: &str, r: &Row, failures: &mut Failures) {
    let before = mark(config);
    let resp = run_row(rpc, r);
    let mut result = check_rpc_error(&resp, r.code, &r.data);
    if result.is_ok() && carries_signature(&resp) {
        result = Err(format!("the error carries a signature: {resp}"));
    }
    if result.is_ok() {
        result = check_audit(config, before, r.audited);
    }
    failures.check(r.name, result);
}

#[test]
fn evm_hostile_requests_are_refused_unsigned_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &config(dir.path(), true), &[]);
    let rpc = daemon.rpc_addr();
    let from = crate::control::address(&daemon);
    let cfg = daemon.config.clone();

    // One legitimate signature at nonce 0, so a different transaction for it is a replay.
    let ok = call(
        &rpc,
        Some(GOOD),
        SIGN,
        json!([with(&from, "nonce", json!("0x0"))[0]]),
    );
    assert!(ok["result"].is_string(), "{ok}");

    // Revoke a client by reloading the config without it.
    std::fs::write(&cfg, config(dir.path(), false)).unwrap();
    daemon.signal(rustix::process::Signal::HUP);
    daemon.wait_line("keyguard: reloaded");

    let rows = table(&from);
    let mut failures = Failures::default();
    for r in &rows {
        check(&cfg, &rpc, r, &mut failures);
    }
    // Refusals left nothing behind in the nonce ledger: nonce 1, which dozens of refused rows
    // named, still signs.
    let clean = call(&rpc, Some(GOOD), SIGN, json!([tx(&from)]));
    assert!(
        clean["result"].is_string(),
        "nonce 1 after the table: {clean}"
    );

    // Approvals: an expired one signs nothing, a consumed one cannot be replayed.
    let sock = dir.path().join("var/admin.sock");
    let alice = bootstrap_admin(&daemon, "alice");
    let adam = bootstrap_admin(&daemon, "adam");
    let ann = add_user2(&sock, &alice, &adam, "ann", &["approver"], &["treasury"]);
    let mut big = tx(&from);
    big["value"] = json!("0xde0b6b3a7640000"); // 1 ether, over 0.5
    big["nonce"] = json!("0x2");
    let big = json!([big]);
    let mut n = rows.len();
    n += approval_rows(&cfg, &rpc, &sock, &ann, big, &mut failures);

    // The kill switch: the key disabled through the admin API.
    let off = admin(
        &sock,
        &alice,
        "keys.disable",
        json!({"key": "dev-secp256k1"}),
    );
    assert!(off["result"].is_object(), "{off}");
    let disabled = Row {
        name: "disabled key",
        send: Send::Call(Some(GOOD), SIGN, json!([tx(&from)])),
        code: -32004,
        data: vec![],
        audited: Audited::Row {
            method: SIGN,
            rule: Some("admin.kill_switch"),
        },
    };
    check(&cfg, &rpc, &disabled, &mut failures);
    n += 1;
    failures.finish("ethereum", n);
}

/// Expired and replayed approvals. Returns how many rows it ran.
fn approval_rows(
    cfg: &Path,
    rpc: &str,
    sock: &Path,
    ann: &User,
    big: Value,
    failures: &mut Failures,
) -> usize {
    let held = call(rpc, Some(GOOD), SIGN, big.clone());
    assert_eq!(held["error"]["code"], -32002, "{held}");
    let first = held["error"]["data"]["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(2100));

    // Voting on the expired request is refused, audited, and signs nothing.
    let before = mark(cfg);
    let late = admin(sock, ann, "approvals.approve", json!({"id": first}));
    failures.check(
        "approve an expired approval",
        check_rpc_error(&late, -32010, &[("rule", "approval.expired")]).and_then(|()| {
            check_audit(
                cfg,
                before,
                Audited::Row {
                    method: "admin.approvals.approve",
                    rule: Some("approval.expired"),
                },
            )
        }),
    );

    // The retry after expiry is a fresh request, held again: the old approval is dead.
    let before = mark(cfg);
    let again = call(rpc, Some(GOOD), SIGN, big.clone());
    let fresh = again["error"]["data"]["approval_id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    failures.check(
        "retry after the approval expired",
        check_rpc_error(&again, -32002, &[])
            .and_then(|()| {
                if fresh != first {
                    Ok(())
                } else {
                    Err(format!("expired approval {first} reused"))
                }
            })
            .and_then(|()| {
                check_audit(
                    cfg,
                    before,
                    Audited::Row {
                        method: SIGN,
                        rule: Some("approval.required"),
                    },
                )
            }),
    );

    // Approve, sign once (legitimately), then replay.
    let yes = admin(sock, ann, "approvals.approve", json!({"id": fresh}));
    assert!(yes["result"].is_object(), "{yes}");
    let signed = call(rpc, Some(GOOD), SIGN, big.clone());
    assert!(signed["result"].is_string(), "{signed}");
    let before = mark(cfg);
    let replay = call(rpc, Some(GOOD), SIGN, big);
    failures.check(
        "replay of an approved request",
        check_rpc_error(&replay, -32001, &[("rule", "approval.consumed")]).and_then(|()| {
            check_audit(
                cfg,
                before,
                Audited::Row {
                    method: SIGN,
                    rule: Some("approval.consumed"),
                },
            )
        }),
    );
    3
}
