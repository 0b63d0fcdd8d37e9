//! The shared PostgreSQL store (issue 15) against real servers, and the same behaviour on
//! SQLite: every safety row is fenced in the statement that writes it, so of two instances
//! deciding the same height, nonce, outpoint or approval at once exactly one wins; a database
//! that is slow, gone, or lost its synchronous standby fails the request instead of letting a
//! signature out. Negative control: the `split-fence` fault (check and write in two statements,
//! the GHSA-6wxf-7784-62fp race) must make the concurrency test find double signatures.

#[path = "support/pg/mod.rs"]
mod pg;

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use keyguard::config::{PgSettings, PgTls};
use keyguard::store::{AuditEntry, Decision, StateWrite, Store, StoreError};
use keyguard_cometbft::{SignedState, Step};
use pg::{PgCluster, PgPair};

fn settings(c: &PgCluster, dir: &std::path::Path, deadline_ms: u64) -> PgSettings {
    c.store_settings(dir, deadline_ms, "keyguard-test")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn entry(request: &str, key: &str) -> AuditEntry {
    AuditEntry {
        request_id: request.into(),
        client: "test".into(),
        key_id: Some(key.into()),
        chain: Some("test".into()),
        method: "sign".into(),
        summary: serde_json::json!({}),
        decision: Decision::Signed,
        rule: None,
        reason: None,
        tx_hash: None,
    }
}

fn vote(height: i64, bytes: u8) -> SignedState {
    SignedState {
        height,
        round: 0,
        step: Step::Precommit,
        block_id: vec![bytes; 32],
        sign_bytes: vec![bytes; 8],
        signature: vec![bytes; 64],
        extension_signature: Vec::new(),
    }
}

fn watermark(height: i64, bytes: u8) -> StateWrite {
    StateWrite::Watermark {
        chain_id: "c".into(),
        key_id: "val".into(),
        next: Box::new(vote(height, bytes)),
    }
}

fn nonce(n: u64, hash: u8, replaces: Option<u8>) -> StateWrite {
    StateWrite::EvmNonce {
        key_id: "hot".into(),
        chain_id: 1,
        nonce: n,
        sighash: [hash; 32],
        max_fee: "100".into(),
        tip: "1".into(),
        replaces: replaces.map(|r| [r; 32]),
    }
}

fn spend(amount: u64) -> StateWrite {
    StateWrite::Velocity {
        key_id: "hot".into(),
        counter: "daily".into(),
        ts_ms: keyguard::store::now_ms(),
        amount: amount.to_string(),
        window_ms: 86_400_000,
        max: "1000".into(),
        rule: "evm.velocity".into(),
    }
}

fn claim(outpoint: &str, txid: &str, replaces: Option<&str>) -> StateWrite {
    StateWrite::BitcoinClaims {
        key_id: "btc".into(),
        txid: txid.into(),
        outpoints: vec![(outpoint.into(), replaces.map(str::to_owned))],
        ts_ms: keyguard::store::now_ms(),
    }
}

fn signet(height: u32) -> StateWrite {
    use keyguard_bitcoin::bitcoin::hashes::Hash;
    StateWrite::SignetHeight {
        challenge: "51".into(),
        key_id: "sig".into(),
        reorg_depth: 0,
        tip: Box::new(keyguard_bitcoin::signet_rules::SignetTip {
            height,
            max_height: height,
            commitment: format!("{height:064x}"),
            prev_hash: keyguard_bitcoin::bitcoin::BlockHash::all_zeros(),
            merkle_root: keyguard_bitcoin::bitcoin::TxMerkleNode::all_zeros(),
            version: 0x2000_0000,
            time: 1_700_000_000 + height,
            recent: vec![(height, 1_700_000_000 + height)],
        }),
    }
}

fn conflict_rule(r: &Result<keyguard::store::AuditReceipt, StoreError>) -> String {
    match r {
        Err(StoreError::StateConflict(c)) => c.split(':').next().unwrap_or_default().to_owned(),
        other => panic!("expected a state conflict, got {other:?}"),
    }
}

/// The behaviour every engine must have, run once on SQLite and once on PostgreSQL.
fn fences_hold(store: &Store) {
    let log = store.audit_log();
    let rt = rt();
    let put = |id: &str, key: &str, w: Vec<StateWrite>| {
        rt.block_on(log.append_with_state(entry(id, key), w))
    };
    // CometBFT: ahead wins; the same HRS with the same bytes is a re-send; other bytes, or
    // lower, lose and name the row that won.
    put("w1", "val", vec![watermark(10, 1)]).unwrap();
    put("w2", "val", vec![watermark(10, 1)]).unwrap();
    assert!(matches!(
        put("w3", "val", vec![watermark(10, 2)]),
        Err(StoreError::StateConflict(_))
    ));
    assert!(matches!(
        put("w4", "val", vec![watermark(9, 3)]),
        Err(StoreError::StateConflict(_))
    ));
    put("w5", "val", vec![watermark(11, 4)]).unwrap();
    assert_eq!(
        store.watermarks().load("c", "val").unwrap().unwrap().state,
        vote(11, 4)
    );
    // EVM: one transaction per nonce; the same one again is fine; a replacement only of the
    // transaction it was judged against.
    put("n1", "hot", vec![nonce(5, 1, None)]).unwrap();
    put("n2", "hot", vec![nonce(5, 1, None)]).unwrap();
    assert_eq!(
        conflict_rule(&put("n3", "hot", vec![nonce(5, 2, None)])),
        "evm.nonce_reuse"
    );
    assert_eq!(
        conflict_rule(&put("n4", "hot", vec![nonce(5, 3, Some(9))])),
        "evm.nonce_reuse"
    );
    put("n5", "hot", vec![nonce(5, 3, Some(1))]).unwrap();
    // Bitcoin: an outpoint belongs to one transaction unless replaced as judged or released.
    put("b1", "btc", vec![claim("aa:0", "t1", None)]).unwrap();
    assert_eq!(
        conflict_rule(&put("b2", "btc", vec![claim("aa:0", "t2", None)])),
        "bitcoin.conflicting_spend"
    );
    let db = store.state_db().unwrap();
    assert!(db
        .release_bitcoin_claim("btc", "aa:0", "t1", "ops")
        .unwrap());
    put("b3", "btc", vec![claim("aa:0", "t2", None)]).unwrap();
    // Kill switch: read in the transaction that records the signature.
    db.set_key_disabled("btc", true, "ops").unwrap();
    assert_eq!(
        conflict_rule(&put("b4", "btc", vec![claim("bb:0", "t3", None)])),
        "admin.kill_switch"
    );
    db.set_key_disabled("btc", false, "ops").unwrap();
    put("b5", "btc", vec![claim("bb:0", "t3", None)]).unwrap();
    // A conflicting entry leaves nothing behind (its savepoint rolls back): the nonce it
    // carried with a conflicting claim is still free.
    assert!(put(
        "mix",
        "btc",
        vec![nonce(77, 7, None), claim("bb:0", "t9", None)]
    )
    .is_err());
    put("free", "hot", vec![nonce(77, 8, None)]).unwrap();
    // Signet: one block per height (the operator's reorg depth aside).
    put("s1", "sig", vec![signet(100)]).unwrap();
    assert_eq!(
        conflict_rule(&put("s2", "sig", vec![signet(100)])),
        "bitcoin.signet.height"
    );
    put("s3", "sig", vec![signet(101)]).unwrap();
    // The chain is whole.
    let v = store.verify_audit().unwrap();
    assert_eq!(v.rows, 12);
}

#[test]
fn sqlite_store_fences_every_safety_row() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("k.db")).unwrap();
    fences_hold(&store);
    store.close().unwrap();
}

#[test]
fn postgres_store_fences_every_safety_row() {
    let c = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_postgres(&settings(&c, dir.path(), 5_000), Some(dir.path())).unwrap();
    fences_hold(&store);
    // Velocity (PostgreSQL re-checks the window in the writing statement).
    let rt = rt();
    let log = store.audit_log();
    rt.block_on(log.append_with_state(entry("v1", "hot"), vec![spend(600)]))
        .unwrap();
    let over = rt.block_on(log.append_with_state(entry("v2", "hot"), vec![spend(500)]));
    assert_eq!(conflict_rule(&over), "evm.velocity");
    rt.block_on(log.append_with_state(entry("v3", "hot"), vec![spend(400)]))
        .unwrap();
    // Every id is 64-bit.
    let narrow = c.psql(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' \
         AND data_type IN ('integer', 'smallint')",
    );
    assert_eq!(narrow.trim(), "0", "32-bit integer columns exist");
    store.close().unwrap();
}

/// Three instances (three stores, three writer connections) race for the same watermark,
/// nonce and velocity window at the same instant, many rounds: exactly one wins each
/// contested row, the window total never exceeds its limit, and `audit verify` checks one
/// chain written by all of them.
fn race(c: &PgCluster) -> (usize, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(c, dir.path(), 5_000);
    // Each instance with its own data directory (its own tripwire record).
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let stores: Vec<Arc<Store>> = dirs
        .iter()
        .map(|d| Arc::new(Store::open_postgres(&s, Some(d.path())).unwrap()))
        .collect();
    let rounds = 15;
    let (mut double_votes, mut double_nonces) = (0, 0);
    for round in 0..rounds {
        let barrier = Arc::new(Barrier::new(stores.len()));
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, store)| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let rt = rt();
                    let log = store.audit_log();
                    let id = format!("r{round}-i{i}");
                    barrier.wait();
                    let v = rt.block_on(log.append_with_state(
                        entry(&format!("{id}-v"), "val"),
                        vec![watermark(100 + round, i as u8 + 1)],
                    ));
                    let n = rt.block_on(log.append_with_state(
                        entry(&format!("{id}-n"), "hot"),
                        vec![nonce(round as u64, i as u8 + 1, None)],
                    ));
                    (v.is_ok(), n.is_ok())
                })
            })
            .collect();
        let results: Vec<(bool, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let votes = results.iter().filter(|r| r.0).count();
        let nonces = results.iter().filter(|r| r.1).count();
        assert!(votes >= 1 && nonces >= 1, "round {round}: nobody won");
        double_votes += votes - 1;
        double_nonces += nonces - 1;
    }
    // The velocity window under the same race: 3 × 10 requests of 60 against a limit of 1000.
    let handles: Vec<_> = stores
        .iter()
        .map(|store| {
            let store = store.clone();
            std::thread::spawn(move || {
                let rt = rt();
                let log = store.audit_log();
                (0..10)
                    .filter(|_| {
                        rt.block_on(log.append_with_state(entry("spend", "hot"), vec![spend(60)]))
                            .is_ok()
                    })
                    .count()
            })
        })
        .collect();
    let counted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let spent = counted * 60;
    let v = stores[0].verify_audit().unwrap();
    assert!(v.rows > 0);
    for s in stores {
        Arc::try_unwrap(s).unwrap().close().unwrap();
    }
    (double_votes, double_nonces, spent)
}

#[test]
fn three_instances_racing_never_double_sign() {
    let c = PgCluster::start();
    let (double_votes, double_nonces, spent) = race(&c);
    assert_eq!(
        double_votes, 0,
        "two instances signed one height/round/step"
    );
    assert_eq!(double_nonces, 0, "two instances signed one nonce");
    assert!(spent <= 1000, "window exceeded: {spent} > 1000");
    assert_eq!(spent, 960, "the window should fill exactly (16 × 60)");
}

/// Negative control: the same race with the check and the write split into two statements
/// (the `split-fence` fault, in a child process) signs twice.
#[cfg(feature = "fault-injection")]
#[test]
fn split_check_and_write_is_caught_by_the_race() {
    if std::env::var("KEYGUARD_FAULT").as_deref() == Ok("split-fence") {
        let c = PgCluster::start();
        let (double_votes, double_nonces, _) = race(&c);
        println!("\nDOUBLE votes={double_votes} nonces={double_nonces}");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "split_check_and_write_is_caught_by_the_race",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KEYGUARD_FAULT", "split-fence")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("DOUBLE "))
        .unwrap_or_else(|| panic!("no result line: {text}"));
    let n = |k: &str| -> usize {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    assert!(
        n("votes=") + n("nonces=") > 0,
        "the split fence signed nothing twice: the race test proves nothing ({line})"
    );
}

/// A database that stops answering fails the request within the deadline (never a signature
/// from cached state), and the store comes back with the server.
#[test]
fn unreachable_database_fails_closed_within_the_deadline_and_recovers() {
    let c = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_postgres(&settings(&c, dir.path(), 1_000), Some(dir.path())).unwrap();
    let rt = rt();
    let log = store.audit_log();
    rt.block_on(log.append_with_state(entry("a", "val"), vec![watermark(1, 1)]))
        .unwrap();
    // SIGSTOP: connections stay open, nothing answers (the worst case: no RST).
    let pid = c.pid().expect("postmaster pid") as i32;
    let stop = |sig| {
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(n) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().nth(1));
            if n == pid || ppid == Some(&pid.to_string()) {
                if let Some(p) = rustix::process::Pid::from_raw(n) {
                    let _ = rustix::process::kill_process(p, sig);
                }
            }
        }
    };
    stop(rustix::process::Signal::STOP);
    let t = Instant::now();
    let r = rt.block_on(log.append_with_state(entry("b", "val"), vec![watermark(2, 2)]));
    let took = t.elapsed();
    stop(rustix::process::Signal::CONT);
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(took < Duration::from_secs(5), "failed only after {took:?}");
    // Back: the next request reconnects (after the backoff) and is judged against the row.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = rt.block_on(log.append_with_state(entry("c", "val"), vec![watermark(3, 3)]));
        if r.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        store
            .watermarks()
            .load("c", "val")
            .unwrap()
            .unwrap()
            .state
            .height,
        3
    );
    store.close().unwrap();
}

/// A commit whose wait for the synchronous standby is cancelled is only local: PostgreSQL says
/// so in a WARNING and then reports success. The store must treat it as a failure (signature
/// withheld); with the standby up the same write succeeds (control).
#[test]
fn cancelled_synchronous_replication_is_a_failed_commit() {
    let pair = PgPair::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_postgres(
        &settings(pair.primary(), dir.path(), 20_000),
        Some(dir.path()),
    )
    .unwrap();
    let log = store.audit_log();
    let rt = rt();
    rt.block_on(log.append_with_state(entry("ok", "val"), vec![watermark(1, 1)]))
        .unwrap();
    pair.stop_standby();
    let waiting = std::thread::spawn({
        let log = log.clone();
        move || rt.block_on(log.append_with_state(entry("lost", "val"), vec![watermark(2, 2)]))
    });
    pair.wait_for_syncrep_waiters(1);
    assert_eq!(pair.cancel_waiting_backends(), 1);
    let r = waiting.join().unwrap();
    assert!(matches!(r, Err(StoreError::CommitUnknown(_))), "{r:?}");
    pair.start_standby();
    pair.wait_sync();
    let rt = self::rt();
    rt.block_on(log.append_with_state(entry("ok2", "val"), vec![watermark(3, 3)]))
        .unwrap();
    store.close().unwrap();
}

/// TLS with the server certificate checked against the configured CA; another CA is refused.
#[test]
fn tls_verify_full_connects_and_refuses_another_ca() {
    let c = PgCluster::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&c, dir.path(), 5_000);
    s.tls = PgTls::VerifyFull;
    s.ca_file = c.ca_pem().map(PathBuf::from);
    let store = Store::open_postgres(&s, None).unwrap();
    let rt = rt();
    rt.block_on(store.audit_log().append(entry("tls", "val")))
        .unwrap();
    store.close().unwrap();
    s.ca_file = Some(pg::other_ca(dir.path()));
    let err = Store::open_postgres(&s, None).unwrap_err();
    assert!(
        err.to_string().contains("certificate") || err.to_string().contains("connection"),
        "{err}"
    );
}

/// A failover to a standby that missed the last commit (asynchronous replication) rolls the
/// watermark back; the instance that released that height notices (timeline changed, row
/// behind its record) and refuses the key (`store.tripwire`). Negative control: the same
/// failover without the tripwire signs the height a second time.
fn failover(
    tripwire: bool,
) -> (
    Result<keyguard::store::AuditReceipt, StoreError>,
    PgPair,
    tempfile::TempDir,
    PgSettings,
) {
    let pair = PgPair::start();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(pair.primary(), dir.path(), 3_000);
    s.hosts = vec![
        format!("{}:{}", pair.primary().host(), pair.primary().port()),
        format!("{}:{}", pair.standby().host(), pair.standby().port()),
    ];
    let store = Store::open_postgres(&s, tripwire.then_some(dir.path())).unwrap();
    let log = store.audit_log();
    let rt = rt();
    rt.block_on(log.append_with_state(entry("h1", "val"), vec![watermark(1, 1)]))
        .unwrap();
    pair.wait_standby_replayed();
    // Asynchronous from here; the standby misses height 2.
    pair.set_async();
    pair.stop_standby();
    rt.block_on(log.append_with_state(entry("h2", "val"), vec![watermark(2, 2)]))
        .unwrap();
    pair.primary().stop_immediate();
    pair.start_standby();
    pair.promote_standby();
    // Height 2 again, other bytes: a double sign if it is released. The first attempt may
    // only find the old connection gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        let r = rt.block_on(log.append_with_state(entry("h2-again", "val"), vec![watermark(2, 9)]));
        match &r {
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(300));
            }
            _ => break r,
        }
    };
    store.close().unwrap();
    (r, pair, dir, s)
}

#[test]
fn failover_that_lost_a_commit_trips_the_key() {
    let (r, pair, dir, s) = failover(true);
    assert_eq!(conflict_rule(&r), "store.tripwire");
    // The operator's repair: `keyguard store trust` lists the key still behind and changes
    // nothing; after raising the watermark (state import) it accepts the new timeline.
    let (_, behind) = Store::trust_database(&s, dir.path(), false).unwrap();
    assert_eq!(behind.len(), 1, "{behind:?}");
    let store = Store::open_postgres(&s, Some(dir.path())).unwrap();
    store
        .watermarks()
        .import("c", "val", &vote(2, 2), "import:repair")
        .unwrap();
    store.close().unwrap();
    let (id, behind) = Store::trust_database(&s, dir.path(), false).unwrap();
    assert!(behind.is_empty(), "{behind:?}");
    assert_eq!(id.timeline, 2);
    let store = Store::open_postgres(&s, Some(dir.path())).unwrap();
    let rt = rt();
    let log = store.audit_log();
    // Height 2 is now fenced by the row itself; height 3 signs.
    assert!(rt
        .block_on(log.append_with_state(entry("again", "val"), vec![watermark(2, 9)]))
        .is_err());
    rt.block_on(log.append_with_state(entry("next", "val"), vec![watermark(3, 3)]))
        .unwrap();
    store.close().unwrap();
    drop(pair);
}

#[test]
fn failover_without_the_tripwire_signs_a_height_twice() {
    let (r, ..) = failover(false);
    assert!(
        r.is_ok(),
        "the negative control should sign height 2 again: {r:?}"
    );
}

/// `keyguard store copy`: a SQLite instance's state moves into an empty shared store with its
/// audit chain intact; a second copy into the now non-empty store is refused, and so is a copy
/// whose watermark differs from one the shared store already holds.
#[test]
fn sqlite_state_copies_into_postgres_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.db");
    {
        let store = Store::open(&file).unwrap();
        let rt = rt();
        let log = store.audit_log();
        rt.block_on(log.append_with_state(entry("w", "val"), vec![watermark(42, 1)]))
            .unwrap();
        rt.block_on(log.append_with_state(entry("n", "hot"), vec![nonce(7, 1, None)]))
            .unwrap();
        rt.block_on(log.append_with_state(entry("c", "btc"), vec![claim("cc:1", "t1", None)]))
            .unwrap();
        let db = store.state_db().unwrap();
        assert!(db
            .add_user("ann", &["admin".into()], &[], b"secret")
            .unwrap());
        db.set_key_disabled("hot", true, "ops").unwrap();
        store.close().unwrap();
    }
    let c = PgCluster::start();
    let s = settings(&c, dir.path(), 5_000);
    let report = keyguard::store::copy::copy(&file, &s).unwrap();
    assert_eq!(report.audit_rows, 3);
    let shared = Store::open_postgres(&s, None).unwrap();
    assert_eq!(shared.verify_audit().unwrap().rows, 3);
    assert_eq!(
        shared.watermarks().load("c", "val").unwrap().unwrap().state,
        vote(42, 1)
    );
    let db = shared.state_db().unwrap();
    assert!(db.user("ann").unwrap().is_some());
    assert_eq!(db.disabled_keys().unwrap(), vec!["hot".to_string()]);
    // The copied nonce and claim fence the next signatures exactly as before.
    let rt = rt();
    let log = shared.audit_log();
    assert_eq!(
        conflict_rule(
            &rt.block_on(log.append_with_state(entry("x", "btc"), vec![claim("cc:1", "t2", None)]))
        ),
        "bitcoin.conflicting_spend"
    );
    // The chain continues from the copied head.
    rt.block_on(log.append(entry("after", "val"))).unwrap();
    assert_eq!(shared.verify_audit().unwrap().rows, 4);
    shared.close().unwrap();
    // Again: the shared store has a log now.
    let again = keyguard::store::copy::copy(&file, &s).unwrap_err();
    assert!(again.to_string().contains("already has"), "{again}");
    // Into another empty database holding a different (newer) watermark: refused, nothing copied.
    c.psql("CREATE DATABASE other OWNER keyguard");
    let mut other = s.clone();
    other.dbname = "other".into();
    let o = Store::open_postgres(&other, None).unwrap();
    o.watermarks()
        .import("c", "val", &vote(50, 5), "import:test")
        .unwrap();
    o.close().unwrap();
    let e = keyguard::store::copy::copy(&file, &other).unwrap_err();
    assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    let o = Store::open_postgres(&other, None).unwrap();
    assert_eq!(o.verify_audit().unwrap().rows, 0);
    assert_eq!(
        o.watermarks()
            .load("c", "val")
            .unwrap()
            .unwrap()
            .state
            .height,
        50
    );
    o.close().unwrap();
}

/// An auditor's role with `SELECT` alone reads and verifies the shared log through
/// `AuditReader` (no migration, no writer). Control: opening the store as that role (what
/// `keyguard audit` did before) fails, because it migrates and writes.
#[test]
fn a_select_only_auditor_reads_and_verifies_the_shared_log() {
    let c = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let owner = settings(&c, dir.path(), 5_000);
    let store = Store::open_postgres(&owner, None).unwrap();
    let log = store.audit_log();
    let rt = rt();
    for i in 0..5 {
        rt.block_on(log.append(entry(&format!("r{i}"), "k")))
            .unwrap();
    }
    store.close().unwrap();
    c.psql(
        "CREATE ROLE auditor LOGIN PASSWORD 'auditorpw1'; \
         GRANT CONNECT ON DATABASE keyguard TO auditor; \
         GRANT USAGE ON SCHEMA public TO auditor; \
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO auditor;",
    );
    let pw = dir.path().join("auditor.pass");
    std::fs::write(&pw, "auditorpw1").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let auditor = PgSettings {
        user: "auditor".into(),
        password_file: Some(pw),
        ..owner.clone()
    };
    let reader = keyguard::store::AuditReader::open_postgres(&auditor).unwrap();
    assert_eq!(reader.verify().unwrap().rows, 5);
    let rows = reader.query(&Default::default()).unwrap();
    assert_eq!(rows.len(), 5);
    // Control: the full store needs more than SELECT.
    let opened = Store::open_postgres(&auditor, None);
    assert!(opened.is_err(), "a SELECT-only role opened the store");
    // And the reader wrote nothing: still five rows, verified by the owner.
    let store = Store::open_postgres(&owner, None).unwrap();
    assert_eq!(store.verify_audit().unwrap().rows, 5);
    store.close().unwrap();
}
