//! Clients managed through the admin API, end to end through the real binary and CLI: the
//! token is shown once and only its hash is stored, the scope (keys, chains, methods, own rate
//! limit) is enforced from the very next request, widening needs a second admin, rotation and
//! removal revoke at once, config-file clients are read-only, and every action is audited.

mod common;
mod control;

use std::process::Command;

use common::{Daemon, POLICY};
use control::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A bearer listener with one config-file client (`batcher`, token `kg-test-batcher-token`).
fn bearer_config(dir: &std::path::Path) -> String {
    format!(
        r#"
{keystore}{listener}[[clients]]
name = "batcher"
token_sha256 = "67d421fb2e91fc94a62e63c8f285bb7203e6a8e6c325b6daf93ee26ecff5c869"
keys = ["*"]
[admin]
totp_single_use = false
{POLICY}
"#,
        keystore = common::software_keystore(dir, &["secp256k1"]),
        listener = common::BEARER_EVM_LISTENER
    )
}

/// A JSON-RPC call with `Authorization: Bearer token`.
fn rpc_as(addr: &str, token: &str, method: &str, params: Value) -> Value {
    use std::io::{Read, Write};
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (_, body) = out.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn sign_as(addr: &str, token: &str, from: &str, nonce: u64) -> Value {
    rpc_as(
        addr,
        token,
        "eth_signTransaction",
        json!([{"from": from, "to": "0x000000000000000000000000000000000000dEaD", "value": "0x1",
            "gas": "0x5208", "maxFeePerGas": "0x3b9aca00", "maxPriorityFeePerGas": "0x1",
            "nonce": format!("{nonce:#x}"), "chainId": "0x7a69"}]),
    )
}

/// `keyguard clients ARGS --config F --user U --totp CODE`; returns (success, stdout).
fn cli(daemon: &Daemon, user: &User, args: &[&str]) -> (bool, String) {
    let out = Command::new(common::binary())
        .arg("clients")
        .args(args)
        .arg("--config")
        .arg(&daemon.config)
        .args(["--user", &user.name, "--totp", &user.code()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn managed_clients_are_scoped_and_in_force_for_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &bearer_config(dir.path()), &[]);
    let (rpc, from, sock) = (daemon.rpc_addr(), address(&daemon), socket(dir.path()));
    let alice = bootstrap_admin(&daemon, "alice");
    let bob = bootstrap_admin(&daemon, "bob");

    let add = [
        "add",
        "app",
        "--key",
        "dev-secp256k1",
        "--chain",
        "eip155:31337",
        "--chain",
        "eip155:1",
        "--method",
        "eth_signTransaction",
        "--rate",
        "0.01/2",
        "--json",
    ];
    // A new client needs two admins: held after alice (no token), added by bob.
    let (ok, out) = cli(&daemon, &alice, &add);
    assert!(
        ok && out.contains("\"pending\"") && !out.contains("\"token\""),
        "{out}"
    );
    let (ok, out) = cli(&daemon, &bob, &add);
    assert!(ok, "{out}");
    let added: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let token = added["token"].as_str().unwrap().to_string();
    // Only the hash is stored.
    let conn = rusqlite::Connection::open(dir.path().join("var/keyguard.db")).unwrap();
    let stored: Vec<u8> = conn
        .query_row(
            "SELECT token_sha256 FROM clients WHERE name = 'app'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, Sha256::digest(token.as_bytes()).to_vec());
    let dump: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM clients WHERE scope LIKE ?1",
            [format!("%{token}%")],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dump, 0);

    // In force at once, within its scope: its method, its chain, its own burst of 2.
    let first = sign_as(&rpc, &token, &from, 0);
    assert!(first["result"].is_string(), "{first}");
    let msg = rpc_as(&rpc, &token, "personal_sign", json!(["0x68656c6c6f", from]));
    assert_eq!(error_code(&msg), Some(-32005), "{msg}");
    assert!(sign_as(&rpc, &token, &from, 1)["result"].is_string());
    let limited = sign_as(&rpc, &token, &from, 2);
    assert_eq!(error_code(&limited), Some(-32003), "{limited}");
    assert_eq!(error_code(&sign_as(&rpc, "wrong", &from, 2)), Some(-32005));
    // The config client is untouched by the managed client's limit.
    assert!(sign_as(&rpc, "kg-test-batcher-token", &from, 3)["result"].is_string());

    // Listing shows both kinds; the config one is marked read-only.
    let (ok, out) = cli(&daemon, &alice, &["list"]);
    assert!(ok, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("app")
            && l.contains("admin")
            && l.contains("rate=0.01/s burst 2")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("batcher") && l.contains("(read-only)")),
        "{out}"
    );

    // Raising the limit needs a second admin: held after alice, applied after bob.
    let raise = ["update", "app", "--rate", "100/100"];
    let (ok, out) = cli(&daemon, &alice, &raise);
    assert!(ok && out.contains("pending: widens rate_limit"), "{out}");
    assert_eq!(error_code(&sign_as(&rpc, &token, &from, 4)), Some(-32003));
    let (ok, out) = cli(&daemon, &bob, &raise);
    assert!(ok && out.contains("client app updated"), "{out}");
    assert!(sign_as(&rpc, &token, &from, 4)["result"].is_string());
    // So does widening the scope; narrowing needs one admin and holds for the next request.
    let widen = admin(
        &sock,
        &alice,
        "clients.update",
        json!({"name": "app", "methods": []}),
    );
    assert_eq!(widen["result"]["status"], "pending", "{widen}");
    let narrow = admin(
        &sock,
        &alice,
        "clients.update",
        json!({"name": "app", "chains": ["eip155:1"]}),
    );
    assert!(narrow["result"]["scope"].is_object(), "{narrow}");
    let off_chain = sign_as(&rpc, &token, &from, 5);
    assert_eq!(error_code(&off_chain), Some(-32005), "{off_chain}");
    assert!(off_chain["error"]["message"]
        .as_str()
        .unwrap()
        .contains("chain"));

    // Rotation: the new token works (also after a restart), the old one never again.
    let back = admin(
        &sock,
        &alice,
        "clients.update",
        json!({"name": "app", "chains": ["eip155:31337"]}),
    );
    assert_eq!(back["result"]["status"], "pending", "{back}");
    admin(
        &sock,
        &bob,
        "clients.update",
        json!({"name": "app", "chains": ["eip155:31337"]}),
    );
    // A new token is a new credential: two admins, and it goes to the second.
    let (ok, out) = cli(&daemon, &alice, &["rotate", "app"]);
    assert!(ok && out.contains("pending: clients.rotate:app"), "{out}");
    let (ok, out) = cli(&daemon, &bob, &["rotate", "app"]);
    assert!(ok, "{out}");
    let rotated = out
        .lines()
        .find_map(|l| l.strip_prefix("token (shown once, store it now): "))
        .unwrap()
        .to_string();
    assert_eq!(error_code(&sign_as(&rpc, &token, &from, 6)), Some(-32005));
    let config = daemon.config.clone();
    assert_eq!(daemon.terminate().code(), Some(0));
    let daemon = Daemon::start(dir.path(), &std::fs::read_to_string(&config).unwrap(), &[]);
    let rpc = daemon.rpc_addr();
    assert!(sign_as(&rpc, &rotated, &from, 6)["result"].is_string());

    // Config clients cannot be changed here; removal revokes at once.
    let refused = admin(&sock, &alice, "clients.remove", json!({"name": "batcher"}));
    assert_eq!(error_code(&refused), Some(-32010), "{refused}");
    let (ok, out) = cli(&daemon, &alice, &["remove", "app"]);
    assert!(ok, "{out}");
    assert_eq!(error_code(&sign_as(&rpc, &rotated, &from, 7)), Some(-32005));

    // Every action and refusal is in the audit log; no token is.
    let rows = audit_rows(&daemon.config, &[]);
    let methods: Vec<_> = rows.iter().filter_map(|r| r["method"].as_str()).collect();
    for m in [
        "admin.clients.add",
        "admin.clients.update",
        "admin.clients.rotate",
        "admin.clients.remove",
        "admin.clients.list",
    ] {
        assert!(methods.contains(&m), "{m} not audited");
    }
    let held = audit_rows(&daemon.config, &["--rule", "admin.two_admins"]);
    assert_eq!(held.len(), 5);
    let config_refusal = audit_rows(&daemon.config, &["--rule", "admin.config_client"]);
    assert_eq!(config_refusal.len(), 1);
    let scope_refusals = audit_rows(&daemon.config, &["--rule", "access.method_not_granted"]);
    assert_eq!(scope_refusals.len(), 1);
    let text = serde_json::to_string(&rows).unwrap();
    assert!(!text.contains(&token) && !text.contains(&rotated));
}

#[test]
fn only_admins_manage_clients() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &bearer_config(dir.path()), &[]);
    let sock = socket(dir.path());
    let alice = bootstrap_admin(&daemon, "alice");
    let olga = add_user(&sock, &alice, "olga", &["operator"], &[]);
    for method in [
        "clients.add",
        "clients.list",
        "clients.update",
        "clients.rotate",
        "clients.remove",
    ] {
        let r = admin(&sock, &olga, method, json!({"name": "x", "keys": ["*"]}));
        assert_eq!(error_code(&r), Some(-32005), "{method}: {r}");
    }
    assert_eq!(
        audit_rows(&daemon.config, &["--rule", "admin.role"]).len(),
        5
    );
}

#[test]
fn a_config_client_cannot_take_a_managed_clients_name() {
    let dir = tempfile::tempdir().unwrap();
    let text = bearer_config(dir.path());
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let sock = socket(dir.path());
    let alice = bootstrap_admin(&daemon, "alice");
    let bob = bootstrap_admin(&daemon, "bob");
    let app = json!({"name": "app", "keys": ["*"]});
    let held = admin(&sock, &alice, "clients.add", app.clone());
    assert_eq!(held["result"]["status"], "pending", "{held}");
    let added = admin(&sock, &bob, "clients.add", app);
    assert!(added["result"]["token"].is_string(), "{added}");
    let taken = admin(
        &sock,
        &alice,
        "clients.add",
        json!({"name": "batcher", "keys": ["*"]}),
    );
    assert_eq!(error_code(&taken), Some(-32010), "{taken}");
    let clash = text.replace(
        "[admin]",
        "[[clients]]\nname = \"app\"\ntoken_sha256 = \
         \"0000000000000000000000000000000000000000000000000000000000000001\"\nkeys = [\"*\"]\n[admin]",
    );
    std::fs::write(&daemon.config, clash).unwrap();
    daemon.signal(rustix::process::Signal::HUP);
    let line = daemon.wait_line("keyguard: reload");
    assert!(
        line.contains("reload rejected") && line.contains("\"app\""),
        "{line}"
    );
}
