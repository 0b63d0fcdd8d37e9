//! Connections: revocation reaches an open WebSocket, an open listener refuses browsers, a
//! bearer listener refuses upgrades without a token (and a flood of them leaves a valid client
//! served), and an oversized WebSocket message gets keyguard's error code, not jsonrpsee's.

use serde_json::json;

use crate::common::{self, Daemon};
use crate::{address, bearer_config, call, code, sha, still_signs, tx, ws_call, ws_open};
use crate::{OTHER_TOKEN, TOKEN};

fn sign_over_ws(s: &mut std::net::TcpStream, from: &str, nonce: u64) -> serde_json::Value {
    let request = json!({"jsonrpc": "2.0", "id": nonce, "method": "eth_signTransaction",
                         "params": [tx(from, nonce)]});
    ws_call(s, request.to_string().as_bytes())
}

#[test]
fn a_token_change_and_sighup_reach_an_open_websocket_at_its_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let text = bearer_config(dir.path(), TOKEN, "");
    let daemon = Daemon::start(dir.path(), &text, &[("KEYGUARD_LOG", "warn")]);
    let (addr, from) = (daemon.rpc_addr(), address(&daemon));
    let (mut ws, status) = ws_open(&addr, &format!("Authorization: Bearer {TOKEN}\r\n"));
    assert!(status.contains("101"), "{status}");
    // Control: the open socket signs before the change.
    let r = sign_over_ws(&mut ws, &from, 0);
    assert!(r["result"].is_string(), "{r}");

    std::fs::write(&daemon.config, text.replace(&sha(TOKEN), &sha(OTHER_TOKEN))).unwrap();
    daemon.signal(rustix::process::Signal::HUP);
    assert_eq!(daemon.wait_line("keyguard: reload"), "keyguard: reloaded");

    let r = sign_over_ws(&mut ws, &from, 1);
    assert_eq!(
        code(&r),
        Some(-32005),
        "the old token on the open socket: {r}"
    );
    // Control: the new token works, on a new socket.
    let (mut ws2, status) = ws_open(&addr, &format!("Authorization: Bearer {OTHER_TOKEN}\r\n"));
    assert!(status.contains("101"), "{status}");
    assert!(sign_over_ws(&mut ws2, &from, 1)["result"].is_string());
}

#[test]
fn an_open_listener_refuses_foreign_origins_and_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::config(dir.path(), "");
    let mut daemon = Daemon::start(dir.path(), &text, &[("KEYGUARD_LOG", "warn")]);
    let addr = daemon.rpc_addr();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let body =
        json!({"jsonrpc": "2.0", "id": 1, "method": "eth_accounts", "params": []}).to_string();

    let refused = [
        format!("Host: evil.example:{port}\r\n"),
        format!("Host: 127.0.0.1.evil.example:{port}\r\n"),
        "Origin: https://evil.example\r\n".to_string(),
        "Origin: null\r\n".to_string(),
        format!("Origin: http://localhost.evil.example:{port}\r\n"),
    ];
    for headers in &refused {
        let (status, text) = crate::http_with(&addr, headers, &body);
        assert_eq!(status, 403, "HTTP with {headers:?}: {text}");
        let (_, status) = ws_open(&addr, headers);
        assert!(
            status.contains("403"),
            "WebSocket with {headers:?}: {status}"
        );
    }
    // Controls: loopback names and pages served from this machine are served.
    let accepted = [
        String::new(),
        format!("Host: localhost:{port}\r\n"),
        format!("Host: [::1]:{port}\r\n"),
        "Origin: http://localhost:3000\r\n".to_string(),
        "Origin: http://127.0.0.1:5173\r\n".to_string(),
    ];
    for headers in &accepted {
        let (status, text) = crate::http_with(&addr, headers, &body);
        assert_eq!(status, 200, "HTTP with {headers:?}: {text}");
        let (_, status) = ws_open(&addr, headers);
        assert!(
            status.contains("101"),
            "WebSocket with {headers:?}: {status}"
        );
    }
    still_signs(&mut daemon, None, 0);
}

#[test]
fn an_unauthenticated_upgrade_flood_is_refused_and_a_valid_client_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let text = bearer_config(dir.path(), TOKEN, "");
    let mut daemon = Daemon::start(dir.path(), &text, &[("KEYGUARD_LOG", "warn")]);
    let (addr, from) = (daemon.rpc_addr(), address(&daemon));
    // 2,000 upgrades without a valid token (far more than the per-peer cap of 256), each
    // refused at once and closed by the daemon: none is left holding a connection slot.
    for i in 0..2_000 {
        let headers = if i % 2 == 0 {
            ""
        } else {
            "Authorization: Bearer wrong-token\r\n"
        };
        let (mut s, status) = ws_open(&addr, headers);
        assert!(status.contains("401"), "upgrade {i}: {status}");
        if i % 100 == 0 {
            // The daemon closes the connection after the refusal (EOF after the body).
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut rest).unwrap();
        }
    }
    // The valid client is still served, over a WebSocket and over HTTP.
    let (mut ws, status) = ws_open(&addr, &format!("Authorization: Bearer {TOKEN}\r\n"));
    assert!(status.contains("101"), "{status}");
    assert!(sign_over_ws(&mut ws, &from, 0)["result"].is_string());
    still_signs(&mut daemon, Some(TOKEN), 1);
}

#[test]
fn an_oversized_websocket_message_gets_keyguards_invalid_request_not_32007() {
    let dir = tempfile::tempdir().unwrap();
    let text = bearer_config(dir.path(), TOKEN, "max_body_bytes = 4096");
    let daemon = Daemon::start(dir.path(), &text, &[("KEYGUARD_LOG", "warn")]);
    let (addr, from) = (daemon.rpc_addr(), address(&daemon));
    let (mut ws, status) = ws_open(&addr, &format!("Authorization: Bearer {TOKEN}\r\n"));
    assert!(status.contains("101"), "{status}");
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_accounts",
                     "params": ["x".repeat(8_000)]});
    let r = ws_call(&mut ws, big.to_string().as_bytes());
    assert_eq!(code(&r), Some(-32600), "{r}");
    assert_eq!(r["error"]["data"]["field"], "body");
    // The same over HTTP, and the socket still works for a normal call (control).
    let r = call(
        &addr,
        Some(TOKEN),
        "eth_accounts",
        json!(["x".repeat(8_000)]),
    );
    assert_eq!(code(&r), Some(-32600), "{r}");
    assert!(sign_over_ws(&mut ws, &from, 0)["result"].is_string());
}
