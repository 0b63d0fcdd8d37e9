//! The PKCS#11 backend through the real binary on a real SoftHSM2 token: startup refusals
//! (wrong PIN, missing label, extractable key), the signing threads' priority, and recovery
//! when the token disappears under load. Signed transactions are checked with alloy's decoder and libsecp256k1 recovery, not
//! with the k256 code the backend uses.

#[path = "../support/softhsm.rs"]
mod softhsm;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use alloy_consensus::transaction::SignerRecoverable;
use alloy_consensus::TxEnvelope;
use alloy_eips::eip2718::Decodable2718;
use serde_json::{json, Value};
use softhsm::{stderr, SoftToken, PIN_ENV};

struct Daemon {
    child: Child,
    addr: String,
    keys: Vec<String>,
    metrics: Option<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(token: &SoftToken, extra: &str) -> Daemon {
    let config = token.config(extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyguard"))
        .args(["start", "--config", config.to_str().expect("utf-8")])
        .envs(token.envs())
        .env("KEYGUARD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keyguard");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut addr, mut keys, mut metrics) = (None, Vec::new(), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("keyguard did not become ready");
        if let Some(rest) = line.strip_prefix("keyguard: key ") {
            keys.push(rest.to_string());
        }
        if let Some(rest) = line.strip_prefix("keyguard: listener evm evm-jsonrpc http://") {
            addr = rest.split_whitespace().next().map(str::to_string);
        }
        if let Some(rest) = line.strip_prefix("keyguard: metrics http://") {
            metrics = rest.strip_suffix("/metrics").map(str::to_string);
        }
        if line == "keyguard: ready" {
            break;
        }
    }
    Daemon {
        child,
        addr: addr.expect("listener line"),
        keys,
        metrics,
    }
}

/// One JSON-RPC call over a fresh HTTP/1.1 connection.
fn rpc(addr: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (_, body) = resp.split_once("\r\n\r\n").expect("http response");
    serde_json::from_str(body).expect("json body")
}

fn sign_tx(addr: &str, from: &str, nonce: u64) -> Value {
    rpc(
        addr,
        "eth_signTransaction",
        json!([{
            "from": from, "to": "0x1111111111111111111111111111111111111111",
            "gas": "0x5208", "maxFeePerGas": "0x77359400", "maxPriorityFeePerGas": "0x1",
            "value": "0x1", "nonce": format!("{nonce:#x}"), "chainId": "0x7a69",
        }]),
    )
}

/// Decodes the signed tx with alloy and recovers the sender with libsecp256k1.
fn verify(raw: &str, from: &str) {
    let bytes = hex::decode(raw.trim_start_matches("0x")).expect("hex");
    let tx = TxEnvelope::decode_2718(&mut bytes.as_slice()).expect("decodes");
    let sig = tx.signature();
    assert!(sig.normalize_s().is_none(), "high S released");
    let signer = tx.recover_signer().expect("recovers");
    assert_eq!(signer.to_checksum(None), from);
}

fn address(daemon: &Daemon, id: &str) -> String {
    let line = daemon
        .keys
        .iter()
        .find(|l| l.starts_with(&format!("{id} secp256k1 ")))
        .expect("key line");
    line.rsplit(' ').next().expect("address").to_string()
}

#[test]
fn wrong_pin_is_refused_at_start_without_echoing_it() {
    let Some(token) = SoftToken::new("kg-wrong-pin") else {
        return;
    };
    token.generate("k", "secp256k1");
    let config = token.config("");
    let out = token.keyguard(
        &["start", "--config", config.to_str().expect("utf-8")],
        &[(PIN_ENV, "99999999")],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("refused the user PIN"), "{err}");
    assert!(!err.contains("99999999"), "PIN in output: {err}");
}

#[test]
fn missing_key_label_is_a_startup_error_naming_it() {
    let Some(token) = SoftToken::new("kg-missing") else {
        return;
    };
    token.generate("present", "secp256k1");
    let config = token.config(r#"keys = ["present", "absent-key"]"#);
    let out = token.keyguard(&["start", "--config", config.to_str().expect("utf-8")], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("\"absent-key\""), "{}", stderr(&out));
}

#[test]
fn extractable_key_is_refused_unless_allowed() {
    let Some(token) = SoftToken::new("kg-extract") else {
        return;
    };
    token.generate("good", "secp256k1");
    token.pkcs11_tool_keypair("copyable", "EC:secp256k1", &["--extractable", "--id", "0c"]);
    let config = token.config("");
    let list = |c: &std::path::Path| {
        token.keyguard(
            &["keys", "list", "--config", c.to_str().expect("utf-8")],
            &[],
        )
    };
    let out = list(&config);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("\"copyable\"") && err.contains("EXTRACTABLE"),
        "{err}"
    );
    // Listing only the good key does not touch the other one.
    let out = list(&token.config(r#"keys = ["good"]"#));
    assert!(out.status.success(), "{}", stderr(&out));
    // An explicit opt-in accepts it.
    let out = list(&token.config("allow_extractable = true"));
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("copyable secp256k1 0x") && listed.contains("good secp256k1 0x"));
}

#[test]
fn token_removed_under_load_fails_fast_then_recovers() {
    let Some(token) = SoftToken::new("kg-removal") else {
        return;
    };
    token.generate("hot", "secp256k1");
    let daemon = start(
        &token,
        "sessions = 2\ntimeout_ms = 2000\n\n[metrics]\naddress = \"127.0.0.1:0\"",
    );
    let from = address(&daemon, "hot");
    let r = sign_tx(&daemon.addr, &from, 0);
    verify(r["result"].as_str().expect("signed"), &from);

    // Load: two clients signing back to back; every outcome recorded with its latency.
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<(Instant, Duration, Value)>::new()));
    let workers: Vec<_> = (0..2u64)
        .map(|w| {
            let (stop, log, addr, from) =
                (stop.clone(), log.clone(), daemon.addr.clone(), from.clone());
            std::thread::spawn(move || {
                let mut nonce = 1000 * (w + 1);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = sign_tx(&addr, &from, nonce);
                    log.lock().expect("log").push((t, t.elapsed(), r));
                    nonce += 1;
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    let dir = token.token_dir();
    let away = token.dir.path().join("token-away");
    std::fs::rename(&dir, &away).expect("move token away");
    let removed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = daemon.metrics.clone().expect("metrics line");
    assert!(
        scrape(&metrics).contains("keyguard_pkcs11_available 0"),
        "the token is gone but the gauge says it is available"
    );
    std::fs::rename(&away, &dir).expect("move token back");
    let restored_at = Instant::now();

    // Wait until signatures flow again after the restore (recovery backoff is at most 2 s).
    let deadline = restored_at + Duration::from_secs(15);
    loop {
        let ok_after = log
            .lock()
            .expect("log")
            .iter()
            .filter(|(t, _, r)| *t > restored_at && r.get("result").is_some())
            .count();
        if ok_after >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery 15 s after the token came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }

    let log = log.lock().expect("log");
    let mut failed = 0;
    for (t, latency, r) in log.iter() {
        if let Some(raw) = r.get("result") {
            verify(raw.as_str().expect("raw hex"), &from);
        } else {
            assert_eq!(r["error"]["code"], -32007, "unexpected error {r}");
            assert!(
                *t + *latency >= removed_at,
                "failure before the token left: {r}"
            );
            failed += 1;
        }
    }
    // How fast a missing token fails is a measurement, not a test verdict (a loaded debug build
    // may take longer than the 2 s timeout); benches/ owns latency figures.
    let slowest = log.iter().map(|(_, l, _)| *l).max().unwrap_or_default();
    eprintln!("pkcs11 removal: slowest request {slowest:?}");
    assert!(failed > 0, "no request failed while the token was gone");
    let after = sign_tx(&daemon.addr, &from, 7);
    verify(
        after["result"].as_str().expect("signed after recovery"),
        &from,
    );
    let text = scrape(&metrics);
    for needle in [
        "keyguard_pkcs11_available 1",
        "keyguard_pkcs11_events_total{event=\"reconnect\"}",
        "keyguard_pkcs11_events_total{event=\"failure\"}",
        "keyguard_pkcs11_events_total{event=\"signature\"}",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from /metrics:\n{text}"
        );
    }
}

/// `GET /metrics` over plain HTTP/1.0.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics listener");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

/// A key made by another tool with a label that is no key id, chosen by its CKA_ID and named
/// by the config; a CKA_ID that is not on the token stops startup naming it.
#[test]
fn keys_are_chosen_by_cka_id() {
    let Some(token) = SoftToken::new("kg-ckid") else {
        return;
    };
    token.pkcs11_tool_keypair("Vendor Key #7", "EC:secp256k1", &["--id", "a1b2"]);
    let daemon = start(&token, "key_ids = { treasury = \"a1b2\" }");
    assert_eq!(daemon.keys.len(), 1, "{:?}", daemon.keys);
    assert!(daemon.keys[0].starts_with("treasury "), "{:?}", daemon.keys);
    let from = address(&daemon, "treasury");
    let r = sign_tx(&daemon.addr, &from, 0);
    verify(r["result"].as_str().expect("signed"), &from);
    drop(daemon);

    let config = token.config("key_ids = { treasury = \"a1b2\", cold = \"0x0f0f\" }");
    let out = token.keyguard(&["start", "--config", config.to_str().expect("utf-8")], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("\"cold\"") && err.contains("0f0f"), "{err}");
}

/// Nice value (field 19 of `/proc/<pid>/task/<tid>/stat`) of each thread with `prefix` in its name.
fn thread_nice(pid: u32, prefix: &str) -> Vec<i64> {
    let mut nice = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
        // The name (field 2) may hold spaces; fields after it start at 3 (state).
        let after_name = &stat[stat.rfind(')').expect("comm end") + 1..];
        let field = after_name
            .split_whitespace()
            .nth(19 - 3)
            .expect("nice field");
        nice.push(field.parse().expect("nice is a number"));
    }
    nice
}

/// This (test) process's nice value, field 19 of /proc/self/stat.
fn own_nice() -> i64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let after_name = &stat[stat.rfind(')').expect("comm end") + 1..];
    after_name
        .split_whitespace()
        .nth(19 - 3)
        .expect("nice field")
        .parse()
        .expect("nice is a number")
}

/// Whether this (test) process holds CAP_SYS_NICE, read from the kernel, not from keyguard.
fn has_cap_sys_nice() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff line");
    let bits = u64::from_str_radix(eff.trim(), 16).expect("hex capabilities");
    bits & (1 << 23) != 0
}

#[test]
fn signing_threads_run_at_raised_priority_when_allowed() {
    let Some(token) = SoftToken::new("kg-nice") else {
        return;
    };
    token.generate("hot", "secp256k1");
    let daemon = start(&token, "sessions = 2");
    // CI runs as root, so it holds CAP_SYS_NICE: there -10 must be seen, or a build where the
    // feature is missing would pass as "not allowed" (0).
    let ci = std::env::var("CI").unwrap_or_default();
    assert!(
        ci.is_empty() || has_cap_sys_nice(),
        "CI={ci} but the test process lacks CAP_SYS_NICE: the -10 case cannot be checked"
    );
    // The daemon inherits this process's niceness (0 normally, 10 under `nice -n 10`).
    let base = own_nice();
    let expected = if has_cap_sys_nice() { -10 } else { base };
    // The threads set their priority as they start, before they take a job.
    let from = address(&daemon, "hot");
    let r = sign_tx(&daemon.addr, &from, 0);
    verify(r["result"].as_str().expect("signed"), &from);
    assert_eq!(
        thread_nice(daemon.child.id(), "pkcs11-sign-"),
        vec![expected; 2],
        "one entry per signing session"
    );
    // Only the token's threads are raised: the request path keeps the default.
    let workers = thread_nice(daemon.child.id(), "tokio-rt-worker");
    assert!(
        !workers.is_empty() && workers.iter().all(|&n| n == base),
        "{workers:?}, expected {base}"
    );
}
