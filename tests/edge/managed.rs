//! Admin-API changes to a managed client reach a WebSocket opened before them: narrowing its
//! methods (`clients update`) and removing it (`clients remove`) apply at its next call.

use std::process::Command;

use serde_json::{json, Value};

use crate::common::{self, Daemon};
use crate::control::{bootstrap_admin, User};
use crate::{address, bearer_config, code, tx, ws_call, ws_open, TOKEN};

fn clients(daemon: &Daemon, user: &User, args: &[&str]) -> String {
    let out = Command::new(common::binary())
        .arg("clients")
        .args(args)
        .arg("--config")
        .arg(&daemon.config)
        .args(["--user", &user.name, "--totp", &user.code()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn on_ws(s: &mut std::net::TcpStream, id: u64, method: &str, params: Value) -> Value {
    let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    ws_call(s, request.to_string().as_bytes())
}

#[test]
fn clients_update_and_remove_reach_an_open_websocket_at_its_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[admin]\ntotp_single_use = false\n",
        bearer_config(dir.path(), TOKEN, "")
    );
    let daemon = Daemon::start(dir.path(), &text, &[("KEYGUARD_LOG", "warn")]);
    let (addr, from) = (daemon.rpc_addr(), address(&daemon));
    let alice = bootstrap_admin(&daemon, "alice");
    let bob = bootstrap_admin(&daemon, "bob");
    let add = [
        "add",
        "app2",
        "--key",
        "dev-secp256k1",
        "--chain",
        "eip155:31337",
        "--method",
        "eth_signTransaction",
        "--method",
        "personal_sign",
        "--json",
    ];
    // A new client takes two admins: held after alice, added (with its token) by bob.
    let held = clients(&daemon, &alice, &add);
    assert!(held.contains("\"pending\""), "{held}");
    let added = clients(&daemon, &bob, &add);
    let added: Value = serde_json::from_str(added.lines().next().unwrap()).unwrap();
    let token = added["token"].as_str().unwrap().to_string();
    let (mut ws, status) = ws_open(&addr, &format!("Authorization: Bearer {token}\r\n"));
    assert!(status.contains("101"), "{status}");
    let hello = json!(["0x68656c6c6f", from]);
    // Control: both methods work on the open socket.
    assert!(on_ws(&mut ws, 1, "eth_signTransaction", json!([tx(&from, 0)]))["result"].is_string());
    assert!(on_ws(&mut ws, 2, "personal_sign", hello.clone())["error"]["code"] != json!(-32005));

    clients(
        &daemon,
        &alice,
        &["update", "app2", "--method", "personal_sign"],
    );
    let r = on_ws(&mut ws, 3, "eth_signTransaction", json!([tx(&from, 1)]));
    assert_eq!(
        code(&r),
        Some(-32005),
        "a dropped method on the open socket: {r}"
    );
    let r = on_ws(&mut ws, 4, "personal_sign", hello.clone());
    assert_ne!(
        code(&r),
        Some(-32005),
        "the kept method still passes the scope: {r}"
    );

    clients(&daemon, &alice, &["remove", "app2"]);
    let r = on_ws(&mut ws, 5, "personal_sign", hello);
    assert_eq!(
        code(&r),
        Some(-32005),
        "a removed client on the open socket: {r}"
    );
}
