//! The adversarial edge suite (issue 14): a hostile application in front of keyguard sends the
//! shapes that crashed or pinned the daemon, floods it without credentials, drives it from a
//! browser, injects log lines and metric labels, and keeps a WebSocket open across revocation.
//! Each test also shows the legitimate variant still works (the negative control).
//!
//! - `shapes`: typed-data crash and CPU shapes, memory under concurrent hostile requests.
//! - `sockets`: revocation on an open WebSocket, Origin/Host, the upgrade flood, oversized
//!   WebSocket messages.
//! - `managed`: `clients update` / `clients remove` on an open WebSocket.
//! - `hygiene`: log injection, metric cardinality, unauthenticated audit rows, reloads.

#![allow(unreachable_pub)]

#[path = "../common/mod.rs"]
mod common;
#[path = "../control/mod.rs"]
mod control;
mod hygiene;
mod managed;
mod shapes;
mod sockets;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

pub const TOKEN: &str = "edge-suite-token-0001";
pub const OTHER_TOKEN: &str = "edge-suite-token-0002";

pub use common::token_sha256 as sha;
pub use common::{status_kib, ws_call};

/// A bearer listener with one client `app` holding `token`, and a metrics listener.
pub fn bearer_config(dir: &Path, token: &str, extra_listener: &str) -> String {
    format!(
        r#"
{keystore}{listener}{extra_listener}
[[clients]]
name = "app"
token_sha256 = "{hash}"
keys = ["*"]
[metrics]
address = "127.0.0.1:0"
{policy}
"#,
        keystore = common::software_keystore(dir, &["secp256k1"]),
        listener = common::BEARER_EVM_LISTENER,
        hash = sha(token),
        policy = common::POLICY,
    )
}

/// The daemon's signing address.
pub fn address(daemon: &common::Daemon) -> String {
    daemon
        .line_after("keyguard: key dev-secp256k1 secp256k1 ")
        .trim()
        .to_string()
}

/// A transaction the test policy signs.
pub fn tx(from: &str, nonce: u64) -> Value {
    json!({
        "from": from,
        "to": "0x000000000000000000000000000000000000dEaD",
        "value": "0x1",
        "gas": "0x5208",
        "maxFeePerGas": "0x3b9aca00",
        "maxPriorityFeePerGas": "0x1",
        "nonce": format!("{nonce:#x}"),
        "chainId": "0x7a69",
    })
}

/// One HTTP/1.1 request with the given extra header lines; returns (status, body).
pub fn http_with(addr: &str, headers: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let headers = if headers.contains("Host:") {
        headers.to_string()
    } else {
        format!("Host: {addr}\r\n{headers}")
    };
    write!(
        s,
        "POST / HTTP/1.1\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).to_string();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A JSON-RPC call over HTTP with optional bearer token; the whole response object.
pub fn call(addr: &str, token: Option<&str>, method: &str, params: Value) -> Value {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let (status, text) = http_with(addr, &auth, &body);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {e}: {text:.300}"))
}

/// The JSON-RPC error code of a response (`None` for a result).
pub fn code(response: &Value) -> Option<i64> {
    response["error"]["code"].as_i64()
}

/// Opens a WebSocket by hand with the given extra header lines; returns the socket and the
/// status line of the answer.
pub fn ws_open(addr: &str, headers: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let headers = if headers.contains("Host:") {
        headers.to_string()
    } else {
        format!("Host: {addr}\r\n{headers}")
    };
    write!(
        s,
        "GET / HTTP/1.1\r\n{headers}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read_exact(&mut byte).is_err() {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head.lines().next().unwrap_or_default().to_string();
    (s, status)
}

/// Asserts the daemon process is still running and signs an ordinary transaction.
pub fn still_signs(daemon: &mut common::Daemon, token: Option<&str>, nonce: u64) {
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon exited"
    );
    let from = address(daemon);
    let r = call(
        &daemon.rpc_addr(),
        token,
        "eth_signTransaction",
        json!([tx(&from, nonce)]),
    );
    assert!(
        r["result"].as_str().is_some_and(|s| s.starts_with("0x02")),
        "a normal request after the attack: {r}"
    );
}
