//! Hostile Ethereum JSON-RPC requests against a bearer-token listener: malformed and oversized
//! bodies, boundary values, wrong chain, wrong or ungranted key, unknown and revoked tokens,
//! replays (nonce reuse, a consumed approval), an expired approval and a disabled key. Each row
//! names the JSON-RPC code and the `data` field or rule it must carry; every row is also checked
//! to have signed nothing and to have left its audit row.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::Daemon;
use crate::control::{add_user, admin, bootstrap_admin, User};
use crate::helpers::{carries_signature, check_audit, check_rpc_error, mark, Audited, Failures};

const GOOD: &str = "good-token-0123456789";
const NARROW: &str = "narrow-token-0123456789";
const REVOKED: &str = "revoked-token-0123456789";

fn sha(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

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
[data]
dir = "{data}"
[keystore]
backend = "software"
create_on_first_start = ["secp256k1"]
kdf_memory_kib = 1024
kdf_iterations = 1
[admin]
totp_single_use = false
[[listeners]]
name = "evm"
protocol = "evm-jsonrpc"
address = "127.0.0.1:0"
chain_id = 31337
auth = "bearer"
max_body_bytes = 65536
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
"#,
        data = dir.join("var").display(),
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

fn call(addr: &str, token: Option<&str>, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    post(addr, token, &body.to_string()).1
}

/// A valid EIP-1559 transfer from `from`; rows change one field.
fn tx(from: &str) -> Value {
    json!({
        "from": from,
        "to": "0x000000000000000000000000000000000000dEaD",
        "value": "0x1",
        "gas": "0x5208",
        "maxFeePerGas": "0x3b9aca00",
        "maxPriorityFeePerGas": "0x1",
        "nonce": "0x1",
        "chainId": "0x7a69",
    })
}

fn with(from: &str, field: &str, value: Value) -> Value {
    let mut t = tx(from);
    if value.is_null() {
        t.as_object_mut().unwrap().remove(field);
    } else {
        t[field] = value;
    }
    json!([t])
}

/// How a row reaches the listener.
enum Send {
    /// A JSON-RPC call with this token.
    Call(Option<&'static str>, &'static str, Value),
    /// Raw body bytes with the good token.
    Raw(String),
}

struct Row {
    name: &'static str,
    send: Send,
    code: i64,
    data: Vec<(&'static str, &'static str)>,
    audited: Audited,
}

const SIGN: &str = "eth_signTransaction";

fn row(name: &'static str, params: Value, code: i64, data: &[(&'static str, &'static str)]) -> Row {
    let rule = data.iter().find(|(k, _)| *k == "rule").map(|(_, v)| *v);
    Row {
        name,
        send: Send::Call(Some(GOOD), SIGN, params),
        code,
        data: data.to_vec(),
        audited: Audited::Row {
            method: SIGN,
            rule: rule.or(if code == -32602 {
                Some("request.invalid")
            } else {
                None
            }),
        },
    }
}

fn table(from: &str) -> Vec<Row> {
    let u256_max = format!("0x{}", "f".repeat(64));
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let u256_max: &'static str = leak(u256_max);
    let over_u256: &'static str = leak(format!("0x1{}", "0".repeat(64)));
    let big_data: &'static str = leak(format!("0x{}", "ab".repeat(65)));
    let unauth = |name, token| Row {
        name,
        send: Send::Call(token, SIGN, json!([tx(from)])),
        code: -32005,
        data: vec![],
        audited: Audited::Row {
            method: SIGN,
            rule: Some("access.unauthenticated"),
        },
    };
    let mut huge_array = vec![tx(from)];
    huge_array.extend((0..5000).map(|i| json!(i)));
    vec![
        row("params missing", json!([]), -32602, &[]),
        row("params not a transaction", json!(["0x00"]), -32602, &[]),
        row("empty object", json!([{}]), -32602, &[]),
        row(
            "unknown field",
            with(from, "evil", json!("0x1")),
            -32602,
            &[("field", "evil")],
        ),
        row("two transactions", json!([tx(from), tx(from)]), -32602, &[]),
        row("huge params array", Value::Array(huge_array), -32602, &[]),
        row(
            "value u256 max",
            with(from, "value", json!(u256_max)),
            -32001,
            &[("rule", "evm.max_value"), ("field", "value")],
        ),
        row(
            "value over u256",
            with(from, "value", json!(over_u256)),
            -32602,
            &[("field", "value")],
        ),
        row(
            "value negative",
            with(from, "value", json!("-0x1")),
            -32602,
            &[("field", "value")],
        ),
        row(
            "value as JSON number",
            with(from, "value", json!(1)),
            -32602,
            &[("field", "value")],
        ),
        row(
            "value empty hex",
            with(from, "value", json!("0x")),
            -32602,
            &[("field", "value")],
        ),
        row(
            "value not hex",
            with(from, "value", json!("0xzz")),
            -32602,
            &[("field", "value")],
        ),
        row(
            "nonce 2^64-1 (EIP-2681)",
            with(from, "nonce", json!("0xffffffffffffffff")),
            -32602,
            &[("field", "nonce")],
        ),
        row(
            "nonce 2^64",
            with(from, "nonce", json!("0x10000000000000000")),
            -32602,
            &[("field", "nonce")],
        ),
        row(
            "nonce missing",
            with(from, "nonce", Value::Null),
            -32602,
            &[("field", "nonce")],
        ),
        row(
            "gas over u64",
            with(from, "gas", json!("0x10000000000000000")),
            -32602,
            &[("field", "gas")],
        ),
        row(
            "chain id 0",
            with(from, "chainId", json!("0x0")),
            -32001,
            &[("rule", "evm.chain_id")],
        ),
        row(
            "chain id huge",
            with(from, "chainId", json!(u256_max)),
            -32602,
            &[("field", "chainId")],
        ),
        row(
            "wrong chain (mainnet)",
            with(from, "chainId", json!("0x1")),
            -32001,
            &[("rule", "evm.chain_id"), ("field", "chainId")],
        ),
        row(
            "odd-length calldata",
            with(from, "data", json!("0x123")),
            -32602,
            &[("field", "data")],
        ),
        row(
            "calldata over cap",
            with(from, "data", json!(big_data)),
            -32001,
            &[("rule", "evm.max_calldata_bytes")],
        ),
        row(
            "fee over cap",
            with(from, "maxFeePerGas", json!("0xffffffffffffffffffff")),
            -32001,
            &[("rule", "evm.max_fee_per_gas")],
        ),
        row(
            "fee over u128",
            with(from, "maxFeePerGas", json!(u256_max)),
            -32602,
            &[("field", "maxFeePerGas")],
        ),
        row(
            "gasPrice and 1559 fees",
            with(from, "gasPrice", json!("0x1")),
            -32602,
            &[],
        ),
        row(
            "short to address",
            with(from, "to", json!("0xdead")),
            -32602,
            &[("field", "to")],
        ),
        row(
            "contract creation",
            with(from, "to", Value::Null),
            -32001,
            &[("rule", "evm.contract_creation")],
        ),
        row(
            "blob transaction",
            {
                let mut t = tx(from);
                t["blobVersionedHashes"] = json!([format!("0x01{}", "00".repeat(31))]);
                t["maxFeePerBlobGas"] = json!("0x1");
                json!([t])
            },
            -32001,
            &[("rule", "evm.max_blobs")],
        ),
        row(
            "blob sidecar",
            with(from, "blobs", json!(["0x00"])),
            -32602,
            &[("field", "blobs")],
        ),
        row(
            "7702 delegation",
            with(
                from,
                "authorizationList",
                json!([{"chainId": "0x7a69", "address": "0x000000000000000000000000000000000000dEaD", "nonce": "0x0", "yParity": "0x0", "r": "0x1", "s": "0x1"}]),
            ),
            -32001,
            &[("rule", "evm.delegation")],
        ),
        row(
            "wrong key (unknown from)",
            with(
                from,
                "from",
                json!("0x1111111111111111111111111111111111111111"),
            ),
            -32602,
            &[("field", "from")],
        ),
        row(
            "replay: other tx for a signed nonce",
            {
                let mut t = tx(from);
                t["nonce"] = json!("0x0");
                t["value"] = json!("0x2");
                json!([t])
            },
            -32001,
            &[("rule", "evm.nonce_reuse"), ("field", "nonce")],
        ),
        Row {
            name: "key not granted to client",
            send: Send::Call(Some(NARROW), SIGN, json!([tx(from)])),
            code: -32005,
            data: vec![],
            audited: Audited::Row {
                method: SIGN,
                rule: Some("access.key_not_granted"),
            },
        },
        unauth("no token", None),
        unauth("unknown token", Some("not-a-token")),
        unauth("revoked token", Some(REVOKED)),
        Row {
            name: "raw hash eth_sign",
            send: Send::Call(
                Some(GOOD),
                "eth_sign",
                json!([from, format!("0x{}", "11".repeat(32))]),
            ),
            code: -32001,
            data: vec![("rule", "evm.message")],
            audited: Audited::Row {
                method: "eth_sign",
                rule: Some("evm.message"),
            },
        },
        Row {
            name: "typed data without a rule",
            send: Send::Call(
                Some(GOOD),
                "eth_signTypedData_v4",
                json!([from, {
                    "types": {"EIP712Domain": [{"name": "chainId", "type": "uint256"}], "M": [{"name": "x", "type": "uint256"}]},
                    "primaryType": "M", "domain": {"chainId": 31337}, "message": {"x": 1}
                }]),
            ),
            code: -32001,
            data: vec![("rule", "evm.typed_data")],
            audited: Audited::Row {
                method: "eth_signTypedData_v4",
                rule: Some("evm.typed_data"),
            },
        },
        Row {
            name: "not JSON",
            send: Send::Raw("{\"jsonrpc\": \"2.0\", \"method\": ".into()),
            code: -32700,
            data: vec![],
            audited: Audited::Transport("no method could be read"),
        },
        Row {
            name: "body over max_body_bytes",
            send: Send::Raw(format!("{{\"pad\": \"{}\"}}", "a".repeat(70_000))),
            code: -32600,
            data: vec![("field", "body")],
            audited: Audited::Transport("refused before parsing (HTTP 413)"),
        },
    ]
}

fn run_row(rpc: &str, r: &Row) -> Value {
    match &r.send {
        Send::Call(token, method, params) => call(rpc, *token, method, params.clone()),
        Send::Raw(body) => post(rpc, Some(GOOD), body).1,
    }
}

fn check(config: &Path, rpc: &str, r: &Row, failures: &mut Failures) {
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

    // Approvals: an expired one signs nothing, a consumed one cannot be replayed.
    let sock = dir.path().join("var/admin.sock");
    let alice = bootstrap_admin(&daemon, "alice");
    let ann = add_user(&sock, &alice, "ann", &["approver"], &["treasury"]);
    let big = with(&from, "value", json!("0xde0b6b3a7640000")); // 1 ether, over 0.5
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
            rule: Some("kill_switch"),
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
