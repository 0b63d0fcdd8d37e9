//! What a hostile caller leaves behind: log lines (no forged lines, no terminal escapes),
//! metric series (bounded whatever chain ids it sends), audit rows (bounded for floods without
//! a credential), and memory across many reloads.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, Daemon};
use crate::{address, bearer_config, call, code, status_kib, still_signs, tx, TOKEN};

#[test]
fn attacker_strings_cannot_forge_log_lines_or_emit_terminal_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let text = common::config(dir.path(), "");
    let mut daemon = Daemon::start_with_stderr(
        dir.path(),
        &text,
        &[("KEYGUARD_LOG", "info")],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let (addr, from) = (daemon.rpc_addr(), address(&daemon));
    let forged = "x\n2026-01-01T00:00:00Z  INFO keyguard::guard: FORGED signed\u{1b}[2J\r";
    let mut hostile = tx(&from, 0);
    hostile[forged] = json!(1);
    let r = call(&addr, None, "eth_signTransaction", json!([hostile]));
    assert_eq!(code(&r), Some(-32602), "{r}");
    call(&addr, None, forged, json!([]));
    still_signs(&mut daemon, None, 0);
    daemon.terminate();
    let bytes = std::fs::read(&log).unwrap();
    let out = String::from_utf8_lossy(&bytes);
    // Control: the attacker's string did reach the log (escaped).
    assert!(out.contains("FORGED signed"), "{out}");
    assert!(!bytes.contains(&0x1b), "an ESC byte in the log");
    assert!(!bytes.contains(&b'\r'), "a carriage return in the log");
    for line in out.lines() {
        assert!(
            !line.starts_with("2026-01-01T00:00:00Z"),
            "a forged line: {line}"
        );
    }
}

fn metric_chain_labels(metrics_addr: &str) -> (Vec<String>, usize) {
    let (_, body) = common::http(metrics_addr, "GET", "/metrics", "");
    let mut labels: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with("keyguard_request"))
        .filter_map(|l| l.split("chain=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    labels.sort();
    labels.dedup();
    (labels, body.lines().count())
}

#[test]
fn a_thousand_chain_ids_make_a_bounded_number_of_metric_series() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::config(dir.path(), "");
    let mut daemon = Daemon::start(dir.path(), &text, &[("KEYGUARD_LOG", "warn")]);
    let (addr, from) = (daemon.rpc_addr(), address(&daemon));
    still_signs(&mut daemon, None, 0);
    let (_, lines_before) = metric_chain_labels(&daemon.metrics_addr());
    for i in 0..1_000u64 {
        let mut t = tx(&from, 1);
        t["chainId"] = json!(format!("{:#x}", 1_000_000 + i * 7_919));
        let r = call(&addr, None, "eth_signTransaction", json!([t]));
        assert!(r["error"].is_object(), "{r}");
    }
    let (labels, lines_after) = metric_chain_labels(&daemon.metrics_addr());
    // Control: the configured chain keeps its own label.
    assert!(labels.contains(&"eip155:31337".to_string()), "{labels:?}");
    assert!(labels.len() <= 3, "chain labels: {labels:?}");
    assert!(
        lines_after < lines_before + 200,
        "{lines_before} -> {lines_after} metric lines"
    );
}

fn audit_rows(config: &std::path::Path) -> Vec<Value> {
    let out = Command::new(common::binary())
        .args(["audit", "query", "--json", "--config"])
        .arg(config)
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

#[test]
fn an_unauthenticated_flood_gets_bounded_audit_rows_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let text = bearer_config(dir.path(), TOKEN, "");
    let mut daemon = Daemon::start(dir.path(), &text, &[("KEYGUARD_LOG", "warn")]);
    let (addr, from) = (daemon.rpc_addr(), address(&daemon));
    let (mut unauthorized, mut limited) = (0, 0);
    for i in 0..400 {
        let r = call(&addr, None, "eth_signTransaction", json!([tx(&from, i)]));
        match code(&r) {
            Some(-32005) => unauthorized += 1,
            Some(-32003) => {
                assert_eq!(r["error"]["data"]["rule"], "rate_limit.unauthenticated");
                limited += 1;
            }
            _ => panic!("{r}"),
        }
    }
    assert!(
        limited > 0 && unauthorized >= 50,
        "{unauthorized} / {limited}"
    );
    // The summary row arrives within one interval (10 s); wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(40);
    let rows = loop {
        let rows = audit_rows(&daemon.config);
        if rows
            .iter()
            .any(|r| r["method"] == "rate_limit.unauthenticated")
            || Instant::now() > deadline
        {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let unauth: Vec<&Value> = rows
        .iter()
        .filter(|r| r["client"] == "unauthenticated")
        .collect();
    let summary = unauth
        .iter()
        .find(|r| r["method"] == "rate_limit.unauthenticated")
        .unwrap_or_else(|| panic!("no summary row in {unauth:?}"));
    assert!(
        summary["reason"].as_str().unwrap().contains("further"),
        "{summary}"
    );
    // One row per admitted attempt (the control: they are all there), one summary, no more.
    assert_eq!(unauth.len(), unauthorized + 1, "{} rows", unauth.len());
    assert!(
        unauth.len() < 400 / 2,
        "{} rows for 400 attempts",
        unauth.len()
    );
    still_signs(&mut daemon, Some(TOKEN), 0);
}

#[test]
fn two_hundred_reloads_keep_resident_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let text = bearer_config(dir.path(), TOKEN, "");
    let mut daemon = Daemon::start(dir.path(), &text, &[("KEYGUARD_LOG", "warn")]);
    let pid = daemon.child.id();
    let reload = |daemon: &Daemon| {
        daemon.signal(rustix::process::Signal::HUP);
        assert_eq!(daemon.wait_line("keyguard: reload"), "keyguard: reloaded");
    };
    for _ in 0..20 {
        reload(&daemon);
    }
    let warm = status_kib(pid, "VmRSS:");
    for _ in 0..200 {
        reload(&daemon);
    }
    let after = status_kib(pid, "VmRSS:");
    println!("VmRSS after 20 reloads: {warm} KiB; after 220: {after} KiB");
    assert!(after < warm + 8 * 1024, "{warm} -> {after} KiB");
    still_signs(&mut daemon, Some(TOKEN), 0);
}
