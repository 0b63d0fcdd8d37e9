//! Vote-signing latency through the real transports, watermark fsynced before every reply:
//! p50/p99 over 10,000 sequential votes per transport. Ignored in the normal run; see
//! `benches/privval_latency.sh` (release binary via `KEYGUARD_BIN`).

use std::time::Instant;

use crate::harness::{config_text, Keyguard, NodeListener, ValidatorSpec};
use crate::node::{now, v0_38, Ask, Node, Ver};

fn votes() -> usize {
    std::env::var("KEYGUARD_BENCH_VOTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn percentile(sorted: &[u128], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[test]
#[ignore = "benchmark: run benches/privval_latency.sh"]
fn vote_signing_latency() {
    let dir = tempfile::tempdir().unwrap();
    let (unix, unix_addr) = NodeListener::unix(&dir.path().join("bench.sock"));
    let (tcp, tcp_addr) = NodeListener::tcp();
    let specs = [("unix", unix_addr), ("secretconnection", tcp_addr)]
        .into_iter()
        .enumerate()
        .map(|(i, (name, addr))| ValidatorSpec {
            name: name.into(),
            chain_id: format!("bench-{i}"),
            addr,
            protocol: "v0.38",
            new_validator: true,
            extra: String::new(),
        })
        .collect::<Vec<_>>();
    let _kg = Keyguard::start(dir.path(), &config_text(dir.path(), &specs));
    // Accept both at once, as a node does, so neither handshake times out while the other
    // transport is measured.
    let mut nodes: Vec<(&str, Node)> = [("unix", &unix), ("secretconnection", &tcp)]
        .into_iter()
        .enumerate()
        .map(|(i, (name, l))| {
            (
                name,
                Node::new(l.accept(), Ver::V038, &format!("bench-{i}")),
            )
        })
        .collect();
    for (name, node) in nodes.iter_mut() {
        let name = *name;
        let chain = node.chain.clone();
        node.pubkey().unwrap().unwrap();
        let n = votes();
        let mut lat = Vec::with_capacity(n);
        for k in 0..n as i64 {
            let ask = Ask::vote(
                1 + (k % 2) as i32,
                k / 2 + 1,
                0,
                Some((k % 200) as u8),
                now(),
            );
            let t = Instant::now();
            let r = v0_38::sign(&mut node.conn, &chain, &ask).expect("connection");
            lat.push(t.elapsed().as_micros());
            assert!(r.is_ok(), "{r:?}");
        }
        // Spot-check that what was timed verifies.
        let ask = Ask::vote(1, n as i64 + 1, 0, Some(1), now());
        node.sign(&ask).unwrap().unwrap();
        lat.sort_unstable();
        println!(
            "privval {name}: {n} sequential votes, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            *lat.last().unwrap() as f64 / 1000.0
        );
    }
}
