//! Helpers for the people-and-control tests: an independent RFC 6238 implementation (hmac +
//! sha1, not the daemon's totp-rs), admin socket calls, and signing requests.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use crate::common::{self, Daemon};

pub mod pki;

/// Decodes RFC 4648 base32 (no padding), as found in `otpauth://` URIs.
pub fn base32_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut value, mut out) = (0u32, 0u64, Vec::new());
    for c in s.trim_end_matches('=').bytes() {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base32") as u64;
        value = (value << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((value >> bits) as u8);
            value &= (1 << bits) - 1;
        }
    }
    out
}

/// RFC 6238 / RFC 4226 with SHA-1, 6 digits, 30-second steps.
pub fn totp_at(secret: &[u8], unix: u64) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).unwrap();
    mac.update(&(unix / 30).to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    format!("{:06}", bin % 1_000_000)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A user as the tests know it: name and TOTP secret (from the enrolment URI).
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub secret: Vec<u8>,
}

impl User {
    pub fn from_uri(name: &str, uri: &str) -> User {
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        let secret = uri
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("secret="))
            .expect("secret in URI");
        User {
            name: name.into(),
            secret: base32_decode(secret),
        }
    }

    pub fn code(&self) -> String {
        totp_at(&self.secret, now())
    }

    /// A code that is certainly wrong now (and in the skew window).
    pub fn wrong_code(&self) -> String {
        let window: Vec<_> = [-30i64, 0, 30]
            .iter()
            .map(|d| totp_at(&self.secret, (now() as i64 + d) as u64))
            .collect();
        (0..1_000_000)
            .map(|n| format!("{n:06}"))
            .find(|c| !window.contains(c))
            .unwrap()
    }
}

/// Creates one of the first two admins locally through the CLI.
pub fn bootstrap_admin(daemon: &Daemon, name: &str) -> User {
    let out = Command::new(common::binary())
        .args(["users", "add", name, "--role", "admin", "--config"])
        .arg(&daemon.config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uri = stdout
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .expect("enrolment URI printed");
    User::from_uri(name, uri)
}

/// One admin API call as `user` with `code`; returns the whole response.
pub fn admin_raw(socket: &Path, user: &str, code: &str, method: &str, params: Value) -> Value {
    let mut params = params;
    params["auth"] = json!({"user": user, "totp": code});
    let mut s = UnixStream::connect(socket).unwrap();
    let req = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// An admin call with a correct code.
pub fn admin(socket: &Path, user: &User, method: &str, params: Value) -> Value {
    admin_raw(socket, &user.name, &user.code(), method, params)
}

/// Adds a user that one admin may add alone (operator, auditor) and returns it with its secret.
pub fn add_user(socket: &Path, by: &User, name: &str, roles: &[&str], groups: &[&str]) -> User {
    let r = admin(
        socket,
        by,
        "users.add",
        json!({"name": name, "roles": roles, "groups": groups}),
    );
    let uri = r["result"]["otpauth_uri"]
        .as_str()
        .unwrap_or_else(|| panic!("users.add (admins and approvers need add_user2): {r}"));
    User::from_uri(name, uri)
}

/// Adds an admin or approver: `first` proposes (held), `second` makes the same request and
/// receives the enrolment.
pub fn add_user2(
    socket: &Path,
    first: &User,
    second: &User,
    name: &str,
    roles: &[&str],
    groups: &[&str],
) -> User {
    let params = json!({"name": name, "roles": roles, "groups": groups});
    let held = admin(socket, first, "users.add", params.clone());
    assert_eq!(
        held["result"]["status"], "pending",
        "users.add by one admin: {held}"
    );
    add_user(socket, second, name, roles, groups)
}

pub fn error_code(response: &Value) -> Option<i64> {
    response["error"]["code"].as_i64()
}

/// The EVM address of the daemon's dev key.
pub fn address(daemon: &Daemon) -> String {
    daemon
        .line_after("keyguard: key dev-secp256k1 secp256k1 ")
        .trim()
        .to_string()
}

/// An `eth_signTransaction` of `value` wei with `nonce`.
pub fn sign(addr: &str, from: &str, value: u128, nonce: u64) -> Value {
    common::rpc(
        addr,
        "eth_signTransaction",
        json!([{
            "from": from,
            "to": "0x000000000000000000000000000000000000dEaD",
            "value": format!("{value:#x}"),
            "gas": "0x5208",
            "maxFeePerGas": "0x3b9aca00",
            "maxPriorityFeePerGas": "0x1",
            "nonce": format!("{nonce:#x}"),
            "chainId": "0x7a69",
        }]),
    )
}

pub const ETHER: u128 = 1_000_000_000_000_000_000;

/// The audit rows (JSON Lines export through the CLI).
pub fn audit_rows(config: &Path, extra: &[&str]) -> Vec<Value> {
    let out = Command::new(common::binary())
        .args(["audit", "export", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A loopback listener, an approval rule above 10 ETH, and `extra` appended.
pub fn config(dir: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
{keystore}{listener}[[policies]]
name = "treasury"
keys = ["*"]
[policies.evm]
chain_ids = [31337]
to = "any"
max_value = "100 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
require_approval = {{ above = "10 ether", approvers = 2, group = "treasury", within = "1h" }}
{extra}
"#,
        keystore = common::software_keystore(dir, &["secp256k1"]),
        listener = common::OPEN_EVM_LISTENER
    )
}

/// Tests call the API many times a minute as one user; single-use codes are tested separately.
pub const REUSABLE_CODES: &str = "[admin]\ntotp_single_use = false\n";

pub fn socket(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("var/admin.sock")
}
