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
    durable_write_reference(dir.path());
    sqlite_commit_reference(dir.path());
    // Accepted one after the other: keyguard drops a connection that is idle for 30 s (a real
    // node pings every few seconds), redials, and the mock skips the stale dials.
    for (i, (name, l)) in [("unix", &unix), ("secretconnection", &tcp)]
        .into_iter()
        .enumerate()
    {
        let mut node = Node::new(l.accept(), Ver::V038, &format!("bench-{i}"));
        let chain = node.chain.clone();
        node.pubkey().unwrap().unwrap();
        measure("keyguard", name, &mut node, &chain);
    }
}

/// The floor of any durable commit on this disk, measured in the same run: one 4 KiB `pwrite`
/// plus `fdatasync` of a file in the data directory's filesystem.
fn durable_write_reference(dir: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(dir.join("fdatasync.ref")).unwrap();
    let page = [7u8; 4096];
    let mut lat = Vec::with_capacity(2000);
    for i in 0..2000u64 {
        let t = Instant::now();
        f.write_at(&page, (i % 64) * 4096).unwrap();
        f.sync_data().unwrap();
        lat.push(t.elapsed().as_micros());
    }
    lat.sort_unstable();
    println!(
        "privval reference pwrite+fdatasync: 2000 writes, p50 {:.3} ms, p99 {:.3} ms",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
}

/// The floor of a durable one-row commit in SQLite with keyguard's settings (WAL,
/// `synchronous=FULL`), measured in the same run: what keyguard's SQLite path pays to the
/// database itself, with no protocol, signature or audit around it.
fn sqlite_commit_reference(dir: &std::path::Path) {
    let db = rusqlite::Connection::open(dir.join("floor.sqlite")).unwrap();
    let mode: String = db
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    db.pragma_update(None, "synchronous", "FULL").unwrap();
    db.execute_batch(
        "CREATE TABLE floor (id INTEGER PRIMARY KEY, h INTEGER); INSERT INTO floor VALUES (1, 0);",
    )
    .unwrap();
    let mut stmt = db
        .prepare("UPDATE floor SET h = h + 1 WHERE id = 1")
        .unwrap();
    let lat = timed(2000, || {
        stmt.execute([]).unwrap();
    });
    println!(
        "privval reference sqlite one-row commit: 2000 commits, p50 {:.3} ms, p99 {:.3} ms",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
}

/// The floor of a durable one-row commit in PostgreSQL on loopback over the Unix socket
/// (`synchronous_commit = on`, fsync on), with the same client library keyguard uses, and one
/// bare round trip (`SELECT 1`): what any PostgreSQL-backed signer pays before doing anything.
fn postgres_commit_reference(c: &crate::pg::PgCluster) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&c.socket_conninfo(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(
                "CREATE TABLE floor (id BIGINT PRIMARY KEY, h BIGINT); INSERT INTO floor VALUES (1, 0);",
            )
            .await
            .unwrap();
        let update = client
            .prepare("UPDATE floor SET h = h + 1 WHERE id = 1")
            .await
            .unwrap();
        let select = client.prepare("SELECT 1").await.unwrap();
        for (name, stmt) in [("one-row commit", &update), ("round trip (SELECT 1)", &select)] {
            let mut lat = Vec::with_capacity(2000);
            for _ in 0..2000 {
                let t = Instant::now();
                client.query(stmt, &[]).await.unwrap();
                lat.push(t.elapsed().as_micros());
            }
            lat.sort_unstable();
            println!(
                "privval reference postgres {name}: 2000 calls, p50 {:.3} ms, p99 {:.3} ms",
                percentile(&lat, 0.50),
                percentile(&lat, 0.99)
            );
        }
        client.batch_execute("DROP TABLE floor").await.unwrap();
    });
}

/// Runs `f` `n` times; the sorted latencies in µs.
fn timed(n: usize, mut f: impl FnMut()) -> Vec<u128> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        lat.push(t.elapsed().as_micros());
    }
    lat.sort_unstable();
    lat
}

/// The same votes with the watermark committed to PostgreSQL on loopback
/// (`synchronous_commit = on`, fsync on) instead of SQLite.
#[test]
#[ignore = "benchmark: run benches/privval_latency.sh"]
fn vote_signing_latency_postgres() {
    let c = crate::pg::PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (unix, unix_addr) = NodeListener::unix(&dir.path().join("bench.sock"));
    let specs = [ValidatorSpec {
        name: "unix".into(),
        chain_id: "bench-pg".into(),
        addr: unix_addr,
        protocol: "v0.38",
        new_validator: true,
        extra: String::new(),
    }];
    let text = config_text(dir.path(), &specs) + &crate::ha::pg_store_toml(&c, dir.path());
    postgres_commit_reference(&c);
    let _kg = Keyguard::start(dir.path(), &text);
    let mut node = Node::new(unix.accept(), Ver::V038, "bench-pg");
    let chain = node.chain.clone();
    node.pubkey().unwrap().unwrap();
    measure("keyguard-postgres", "unix", &mut node, &chain);
}

/// Times `votes()` sequential prevote/precommit pairs at increasing heights; prints p50/p99.
fn measure(signer: &str, name: &str, node: &mut Node, chain: &str) {
    let n = votes();
    let mut lat = Vec::with_capacity(n);
    for k in 0..n as i64 {
        let ask = Ask::vote(
            1 + (k % 2) as i32,
            k / 2 + 1,
            0,
            // Prevote and precommit the same block, as a validator does (tmkms refuses a
            // precommit for another block than its prevote).
            Some(((k / 2) % 200) as u8),
            now(),
        );
        let t = Instant::now();
        let r = v0_38::sign(&mut node.conn, chain, &ask).expect("connection");
        lat.push(t.elapsed().as_micros());
        assert!(r.is_ok(), "{r:?}");
    }
    // Spot-check that what was timed verifies.
    let ask = Ask::vote(1, n as i64 + 1, 0, Some(1), now());
    node.sign(&ask).unwrap().unwrap();
    lat.sort_unstable();
    println!(
        "privval {signer} {name}: {n} sequential votes, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        *lat.last().unwrap() as f64 / 1000.0
    );
}

/// The same harness against tmkms (`TMKMS_BIN`, built with `--features softsign`), which
/// writes its state file without fsync.
#[test]
#[ignore = "benchmark: run benches/privval_latency.sh with TMKMS_BIN set"]
fn tmkms_vote_signing_latency() {
    let Ok(tmkms) = std::env::var("TMKMS_BIN") else {
        eprintln!("TMKMS_BIN not set; skipping the tmkms comparison");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for key in ["consensus.key", "identity.key"] {
        let ok = std::process::Command::new(&tmkms)
            .args(["softsign", "keygen"])
            .arg(d.join(key))
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmkms softsign keygen failed");
    }
    let (unix, unix_addr) = NodeListener::unix(&d.join("tmkms.sock"));
    let (tcp, tcp_addr) = NodeListener::tcp();
    let mut config = String::new();
    for (i, addr) in [unix_addr, tcp_addr].iter().enumerate() {
        let state = d.join(format!("state-{i}.json"));
        std::fs::write(
            &state,
            r#"{"height":"0","round":"0","step":0,"block_id":null}"#,
        )
        .unwrap();
        config.push_str(&format!(
            "[[chain]]\nid = \"bench-{i}\"\nkey_format = {{ type = \"hex\" }}\n\
             state_file = \"{}\"\n\n[[validator]]\nchain_id = \"bench-{i}\"\n\
             addr = \"{addr}\"\nsecret_key = \"{}\"\nprotocol_version = \"v0.38\"\nreconnect = true\n\n",
            state.display(),
            d.join("identity.key").display(),
        ));
    }
    // tmkms allows one softsign consensus key, serving both chains.
    config.push_str(&format!(
        "[[providers.softsign]]\nchain_ids = [\"bench-0\", \"bench-1\"]\nkey_type = \"consensus\"\npath = \"{}\"\n",
        d.join("consensus.key").display()
    ));
    std::fs::write(d.join("tmkms.toml"), config).unwrap();
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Killed(
        std::process::Command::new(&tmkms)
            .args(["start", "-c"])
            .arg(d.join("tmkms.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // One after the other, like keyguard's run (an idle connection may be dropped and redialed).
    for (i, (name, l)) in [("unix", &unix), ("secretconnection", &tcp)]
        .into_iter()
        .enumerate()
    {
        let mut node = Node::new(l.accept(), Ver::V038, &format!("bench-{i}"));
        let chain = node.chain.clone();
        node.pubkey().unwrap().unwrap();
        measure("tmkms", name, &mut node, &chain);
    }
}
