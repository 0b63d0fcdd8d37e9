//! Console benchmark (ignored in the suite; `cargo test --test console_bench -- --ignored
//! --nocapture`, under a minute): console page latency with 100,000 audit rows, and EVM
//! signing latency (`keyguard bench`) without and with an auditor paging through the audit
//! log at the same time, in one run on the same cores. Prints the figures for
//! docs/console.md; asserts nothing about time (only that every page answered 200).

mod common;
mod control;
mod webconsole;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use keyguard::store::{AuditEntry, Decision, Store};
use serde_json::json;
use webconsole::{enrol_and_sign_in, setup_with, Passkey};

const ROWS: usize = 100_000;

/// 100,000 audit rows through the real writer (hash chain, group commit), before the daemon
/// starts: four chains, 20 keys, 50 clients, a tenth refused under six rules.
fn fill(data_dir: &std::path::Path) {
    let store = Store::open(&data_dir.join("keyguard.db")).unwrap();
    let log = store.audit_log();
    // The bench wants every refusal as its own row (the daemon folds floods of them).
    log.configure_bounds(
        keyguard::config::AuditLimits {
            refusal_rows_per_second: 1e9,
            refusal_burst: u32::MAX,
            total_refusal_rows_per_second: 1e9,
            ..Default::default()
        },
        None,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        for chunk in 0..(ROWS / 5_000) {
            let mut pending = Vec::with_capacity(5_000);
            for i in chunk * 5_000..(chunk + 1) * 5_000 {
                let refused = i % 10 == 0;
                let chain = ["eip155:1", "eip155:10", "cosmos:hub-4", "bip122:000000000019d6689c085ae165831e93"][i % 4];
                pending.push(log.append(AuditEntry {
                    request_id: format!("bench-{i}"),
                    client: format!("app-{}", i % 50),
                    key_id: Some(format!("key-{}", i % 20)),
                    chain: Some(chain.into()),
                    method: "eth_signTransaction".into(),
                    summary: json!({"to": "0x000000000000000000000000000000000000dead", "value": (i as u64 * 1_000_000_000).to_string()}),
                    decision: if refused { Decision::Refused } else { Decision::Signed },
                    rule: refused.then(|| ["evm.max_value", "evm.to_allowlist", "evm.velocity", "rate_limit.client", "evm.max_fee_per_gas", "access.key_not_granted"][i % 6].into()),
                    reason: None,
                    tx_hash: None,
                }));
            }
            for p in pending {
                p.await.unwrap();
            }
        }
    });
    println!(
        "console-bench: {ROWS} audit rows written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    rt.block_on(log.shutdown()).unwrap();
    drop(rt);
    store.close().unwrap();
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn evm_bench(bin: &str, rpc: &str, first_nonce: u64) -> String {
    let out = Command::new(bin)
        .args([
            "bench",
            "--connections",
            "4",
            "--duration",
            "6",
            "--ceiling",
            "0",
        ])
        .args([
            "--first-nonce",
            &first_nonce.to_string(),
            "--url",
            &format!("http://{rpc}"),
        ])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("latency"))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[test]
#[ignore = "benchmark: cargo test --test console_bench -- --ignored --nocapture"]
fn console_pages_with_100k_audit_rows_and_signing_beside_them() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("console-bench: {cores} cores, debug build unless KEYGUARD_BIN says otherwise");
    let s = setup_with(false, 10_000.0, fill);
    let aud = control::add_user(&s.sock, &s.alice, "aud", &["auditor"], &[]);
    let mut b = s.browser();
    enrol_and_sign_in(
        &mut b,
        &mut Passkey::new("localhost", 1),
        "aud",
        &aud.code(),
    );

    // Page latency, each page kind 40 times (the auditor's own view, end to end over TLS).
    let pages: Vec<(&str, String)> = vec![
        ("audit, newest page", "/console/audit".into()),
        (
            "audit, page 1000 deep",
            "/console/audit?before=50000".into(),
        ),
        (
            "audit, decision=refused",
            "/console/audit?decision=refused".into(),
        ),
        (
            "audit, key+rule filter",
            "/console/audit?key=key-7&rule=evm.velocity".into(),
        ),
        (
            "audit, chain+time filter",
            "/console/audit?chain=cosmos%3Ahub-4&since=2020-01-01".into(),
        ),
        ("audit, row detail", "/console/audit?seq=77777".into()),
        ("overview (charts, 24 h counts)", "/console/overview".into()),
        ("keys", "/console/keys".into()),
    ];
    for (label, path) in &pages {
        let mut ms = Vec::new();
        for _ in 0..40 {
            let t = Instant::now();
            let r = b.get(path);
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(r.status, 200, "{path}: {}", r.body);
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "console-bench: page {label}: p50 {:.1} ms, p99 {:.1} ms",
            pct(&ms, 0.5),
            pct(&ms, 0.99)
        );
    }

    // EVM signing latency alone, then with an auditor paging (four page kinds in a loop).
    let bin = common::binary();
    let rpc = s.daemon.rpc_addr();
    println!("console-bench: EVM alone: {}", evm_bench(bin, &rpc, 0));
    // An auditor paging at a person's pace (5 pages/s), then as fast as the console answers.
    for (label, pause_ms, nonce) in [("5 pages/s", 200u64, 1u64 << 40), ("flat out", 0, 2 << 40)] {
        let stop = Arc::new(AtomicBool::new(false));
        let paged = Arc::new(AtomicU64::new(0));
        let pager = {
            let (stop, paged) = (stop.clone(), paged.clone());
            let mut b2 = webconsole::Browser::new(&s.addr, s.tls.clone(), &s.origin);
            b2.cookies = b.cookies.clone();
            std::thread::spawn(move || {
                let paths = [
                    "/console/audit",
                    "/console/audit?before=60000",
                    "/console/audit?decision=refused",
                    "/console/overview",
                ];
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(b2.get(paths[i % paths.len()]).status, 200);
                    paged.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    std::thread::sleep(std::time::Duration::from_millis(pause_ms));
                }
            })
        };
        let figures = evm_bench(bin, &rpc, nonce);
        stop.store(true, Ordering::Relaxed);
        pager.join().unwrap();
        println!(
            "console-bench: EVM with an auditor paging {label} ({} pages): {figures}",
            paged.load(Ordering::Relaxed)
        );
    }
}
