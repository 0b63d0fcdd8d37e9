//! Starts the real `keyguard` binary on a config written to a temporary directory and reads its
//! stable startup lines, for integration tests that talk to it through real sockets.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

// The shared config builder: the pieces every test config starts from. A test's own config is
// `software_keystore(..)` + a listener + a policy + what the test is about, so a change to the
// keystore or listener schema is made here once.

/// `[data]` in `dir/var` and a software keystore creating one key per scheme in `schemes`
/// at first start (none: the test imports its keys), with a KDF cheap enough for tests.
pub fn software_keystore(dir: &Path, schemes: &[&str]) -> String {
    let schemes: Vec<String> = schemes.iter().map(|s| format!("{s:?}")).collect();
    let create = if schemes.is_empty() {
        String::new()
    } else {
        format!("create_on_first_start = [{}]\n", schemes.join(", "))
    };
    format!(
        "[data]\ndir = \"{}\"\n[keystore]\nbackend = \"software\"\n{create}\
         kdf_memory_kib = 1024\nkdf_iterations = 1\n",
        dir.join("var").display(),
    )
}

/// An EVM JSON-RPC listener for chain 31337 on a free loopback port, open to every key
/// (`auth = "none"`).
pub const OPEN_EVM_LISTENER: &str = "[[listeners]]\nname = \"evm\"\nprotocol = \"evm-jsonrpc\"\n\
address = \"127.0.0.1:0\"\nchain_id = 31337\nauth = \"none\"\nkeys = [\"*\"]\n";

/// The same listener with bearer authentication (grants come from `[[clients]]`); more
/// listener keys may follow it.
pub const BEARER_EVM_LISTENER: &str = "[[listeners]]\nname = \"evm\"\nprotocol = \"evm-jsonrpc\"\n\
address = \"127.0.0.1:0\"\nchain_id = 31337\nauth = \"bearer\"\n";

/// The `token_sha256` a config stores for a bearer `token` (hex SHA-256).
pub fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

pub const POLICY: &str = r#"
[[policies]]
name = "test"
keys = ["*"]
[policies.evm]
chain_ids = [31337]
to = "any"
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
"#;

/// A config with one open loopback EVM listener and a metrics listener, both on free ports.
pub fn config(dir: &Path, extra: &str) -> String {
    format!(
        "\n{}{OPEN_EVM_LISTENER}[metrics]\naddress = \"127.0.0.1:0\"\n{POLICY}\n{extra}\n",
        software_keystore(dir, &["secp256k1"])
    )
}

/// The binary under test; `KEYGUARD_BIN` overrides it (e.g. a release build, to measure).
pub fn binary() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("KEYGUARD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_keyguard").to_owned())
    })
}

/// A running daemon and what it printed at start.
pub struct Daemon {
    pub child: Child,
    pub lines: Vec<String>,
    pub config: PathBuf,
    later: mpsc::Receiver<String>,
}

impl Daemon {
    /// Writes `config_text` and starts `keyguard start`, waiting for `keyguard: ready`.
    pub fn start(dir: &Path, config_text: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with_stderr(dir, config_text, env, Stdio::inherit())
    }

    /// As [`Daemon::start`], with the daemon's stderr (its log) going to `stderr`.
    pub fn start_with_stderr(
        dir: &Path,
        config_text: &str,
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Daemon {
        let config = dir.join("keyguard.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut cmd = Command::new(binary());
        cmd.args(["start", "--config"])
            .arg(&config)
            .env("KEYGUARD_PASSPHRASE", "test-passphrase")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let done = line == "keyguard: ready";
                    lines.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("keyguard did not become ready; stdout: {lines:?}");
                }
            }
        }
        Daemon {
            child,
            lines,
            config,
            later: rx,
        }
    }

    /// Waits for a later stdout line starting with `prefix` and returns it.
    pub fn wait_line(&self, prefix: &str) -> String {
        loop {
            let line = self
                .later
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no line starting {prefix:?}"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// The value after `prefix` on the first startup line that has it.
    pub fn line_after(&self, prefix: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in {:?}", self.lines))
            .to_string()
    }

    /// `host:port` of the EVM listener.
    pub fn rpc_addr(&self) -> String {
        let rest = self.line_after("keyguard: listener evm evm-jsonrpc http://");
        rest.split_whitespace().next().unwrap().to_string()
    }

    /// `host:port` of the metrics listener.
    pub fn metrics_addr(&self) -> String {
        let rest = self.line_after("keyguard: metrics http://");
        rest.trim_end_matches("/metrics").to_string()
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 request over a fresh TCP connection; returns (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A JSON-RPC call over HTTP; returns the whole response object.
pub fn rpc(addr: &str, method: &str, params: serde_json::Value) -> serde_json::Value {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (_, text) = http(addr, "POST", "/", &body.to_string());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Sends one masked text frame and reads one text frame back (as JSON).
pub fn ws_call(s: &mut std::net::TcpStream, payload: &[u8]) -> serde_json::Value {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=65535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    std::io::Write::write_all(s, &frame).unwrap();
    let mut head = [0u8; 2];
    std::io::Read::read_exact(s, &mut head).unwrap();
    assert_eq!(head[0], 0x81, "a text frame");
    let len = match head[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            std::io::Read::read_exact(s, &mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            std::io::Read::read_exact(s, &mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut body = vec![0u8; len];
    std::io::Read::read_exact(s, &mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// A `Vm*` line of /proc/<pid>/status, in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
