//! Chaos run of the shared PostgreSQL store (issue 15): three keyguard daemons with the same
//! keys share one database. On every round, three EVM clients send conflicting transactions for
//! the same nonce to different instances at the same moment, and three mock validators (one per
//! instance) ask for conflicting blocks at the same height/round/step. Meanwhile a seeded fault
//! schedule hits instances and the database: SIGKILL (then restart), SIGSTOP/SIGCONT of an
//! instance, `pg_ctl restart -m immediate`, SIGSTOP/SIGCONT of the database server, a
//! partition between one instance and the database (its TCP relay stops forwarding), and
//! `pg_cancel_backend` on commits waiting for the synchronous standby (stopped for the fault):
//! the server reports those as success with a WARNING, and keyguard must withhold them. The
//! run ends with a failover: the primary dies, the synchronous standby is promoted, the
//! tripwire trips every key on the new timeline, the operator's `keyguard store trust` finds
//! nothing behind, and the clients replay their last rounds against the promoted database.
//!
//! The checker reads what the clients received: at most one transaction per nonce, at most one
//! block per height/round/step, every released signature has its signed audit row, and
//! `keyguard audit verify` passes on the one chain all instances wrote.
//!
//! `KEYGUARD_CHAOS_SECS` (default 15, the CI setting) and `KEYGUARD_CHAOS_SEED` set the length
//! and the schedule; `benches/chaos.sh` runs it long. Negative control: the same run with the
//! `split-fence` fault (check and write in two statements) must find double signatures, and so
//! must a failover after asynchronous replication with the daemons' tripwire off
//! (`no-tripwire`).
#![allow(unreachable_pub)]

#[path = "mockval/mod.rs"]
mod mockval;
#[path = "support/pg/mod.rs"]
mod pg;
#[path = "chaos/rig.rs"]
mod rig;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mockval::conn::NodeListener;
use mockval::node::{now, Ask, Node, Ver};
use pg::PgPair;
use rand::{Rng, SeedableRng};
use rig::*;
use rustix::process::Signal;

#[derive(Default)]
struct Book {
    /// nonce -> raw transactions received.
    txs: Mutex<BTreeMap<u64, BTreeSet<String>>>,
    /// (height, type) -> blocks released.
    blocks: Mutex<BTreeMap<(i64, i32), BTreeSet<u8>>>,
    /// Audit `tx_hash` values every released signature must have.
    released: Mutex<HashSet<String>>,
    refused: AtomicUsize,
    failed: AtomicUsize,
}

struct Report {
    faults: usize,
    /// Per kind: kill, stop, database restart, database freeze, partition, sync-rep cancel.
    kinds: [usize; 6],
    /// Commits whose wait for the standby was cancelled.
    cancelled: usize,
    evm_signed: usize,
    votes_signed: usize,
    /// Signatures released after the standby was promoted (0 without a failover).
    after_failover: usize,
    refused: usize,
    failed: usize,
    double_nonces: usize,
    double_blocks: usize,
    unaudited: usize,
    /// `keyguard audit verify` passed on the one shared chain.
    audit_ok: bool,
}

/// How the run ends, after its fault schedule.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Failover {
    /// No failover.
    None,
    /// The primary dies and its synchronous standby is promoted. The tripwire trips every key
    /// (a new timeline); the operator runs `keyguard store trust`, which must find nothing
    /// behind, and restarts; the clients then replay the last rounds (a validator retrying a
    /// height, a wallet re-sending a nonce) and go on.
    Synchronous,
    /// The negative control: replication turned asynchronous and the standby stopped halfway
    /// through the run, the daemons without their tripwire (`no-tripwire`); after the promotion
    /// the clients replay from where the standby stopped.
    AsynchronousNoTripwire,
}

/// Everything the clients drive.
struct Rig<'a> {
    instances: &'a [Instance],
    listeners: &'a [NodeListener],
    book: &'a Book,
    from: &'a str,
    round: &'a AtomicI64,
}

/// EVM clients and validators against every instance for `secs`, one round (one nonce, one
/// step) every 60 ms from the current `round`, with `beside` running on its own thread (the
/// fault schedule) until the time is up.
fn drive(rig: &Rig<'_>, secs: f64, beside: impl FnOnce(&AtomicBool) + Send) {
    let done = AtomicBool::new(false);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let Rig {
        instances,
        listeners,
        book,
        from,
        round,
    } = *rig;
    std::thread::scope(|s| {
        s.spawn(|| {
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(60));
                round.fetch_add(1, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        });
        // EVM clients: client i sends nonce r with value i+1 to instance i.
        for (i, inst) in instances.iter().enumerate() {
            let done = &done;
            s.spawn(move || {
                let mut last = -1;
                while !done.load(Ordering::SeqCst) {
                    let r = round.load(Ordering::SeqCst);
                    if r == last {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    last = r;
                    let tx = serde_json::json!([{
                        "from": from, "to": "0x000000000000000000000000000000000000dEaD",
                        "gas": "0x5208", "maxFeePerGas": "0x77359400",
                        "maxPriorityFeePerGas": "0x3b9aca00", "value": format!("0x{:x}", i + 1),
                        "nonce": format!("0x{r:x}"), "chainId": "0x7a69", "input": "0x"
                    }]);
                    match rpc(inst.port, "eth_signTransaction", tx) {
                        Some(v) if v["result"].is_string() => {
                            let raw = v["result"].as_str().unwrap().to_owned();
                            let bytes = hex::decode(raw.trim_start_matches("0x")).unwrap();
                            let hash =
                                format!("0x{}", hex::encode(alloy_primitives::keccak256(&bytes)));
                            book.released.lock().unwrap().insert(hash);
                            book.txs
                                .lock()
                                .unwrap()
                                .entry(r as u64)
                                .or_default()
                                .insert(raw);
                        }
                        Some(_) => {
                            book.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            book.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        // Validators: node i asks instance i for block i at the round's step.
        for (i, l) in listeners.iter().enumerate() {
            let done = &done;
            s.spawn(move || {
                let mut node: Option<Node> = None;
                let mut last = -1;
                while !done.load(Ordering::SeqCst) {
                    let mut n = match node.take() {
                        Some(n) => n,
                        None => match l.try_accept(Duration::from_millis(500)) {
                            Some(c) => {
                                let mut n = Node::new(c, Ver::V038, CHAIN);
                                if !matches!(n.pubkey(), Some(Ok(_))) {
                                    continue;
                                }
                                n
                            }
                            None => continue,
                        },
                    };
                    let r = round.load(Ordering::SeqCst);
                    if r == last {
                        node = Some(n);
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    last = r;
                    let (height, vote_type) = (r / 2 + 1, if r % 2 == 0 { 1 } else { 2 });
                    let block = i as u8 + 1;
                    match n.sign(&Ask::vote(vote_type, height, 0, Some(block), now())) {
                        Some(Ok(rel)) => {
                            book.released
                                .lock()
                                .unwrap()
                                .insert(hex::encode(&rel.signature));
                            book.blocks
                                .lock()
                                .unwrap()
                                .entry((height, vote_type))
                                .or_default()
                                .insert(block);
                            node = Some(n);
                        }
                        Some(Err(_)) => {
                            book.refused.fetch_add(1, Ordering::Relaxed);
                            node = Some(n);
                        }
                        None => {
                            book.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        let done = &done;
        s.spawn(move || beside(done));
    });
}

/// `keyguard <args> --config <instance's config>`.
fn keyguard(inst: &Instance, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(inst.config())
        .env("KEYGUARD_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap()
}

fn run(secs: u64, seed: u64, fault: Option<&str>, with_faults: bool, failover: Failover) -> Report {
    let pair = PgPair::start();
    let pg = pair.primary();
    let root = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    let mut instances = Vec::new();
    for i in 0..INSTANCES {
        let dir = root.path().join(format!("kg{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (l, addr) = NodeListener::unix(&dir.join("node.sock"));
        listeners.push(l);
        let port = free_port();
        let relay = Relay::start(pg.port());
        std::fs::write(
            dir.join("keyguard.toml"),
            config(&dir, port, &addr, pg, relay.port),
        )
        .unwrap();
        instances.push(Instance {
            dir,
            port,
            relay,
            child: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
    }
    // The first instance creates the keys; the others get copies (one key, three signers).
    instances[0].start_until_ready(fault);
    for inst in &instances[1..] {
        let (from, to) = (instances[0].dir.join("var/keys"), inst.dir.join("var/keys"));
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&from).unwrap().flatten() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        for d in [inst.dir.join("var"), to] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        inst.start_until_ready(fault);
    }
    let from = rpc(instances[0].port, "eth_accounts", serde_json::json!([]))
        .and_then(|v| v["result"][0].as_str().map(str::to_owned))
        .expect("eth_accounts");

    let book = Book::default();
    let round = AtomicI64::new(0);
    let rig = Rig {
        instances: &instances,
        listeners: &listeners,
        book: &book,
        from: &from,
        round: &round,
    };
    let faults = AtomicUsize::new(0);
    let kinds: [AtomicUsize; 6] = Default::default();
    let cancelled = AtomicUsize::new(0);
    // Where the clients replay from after a failover.
    let replay_from = AtomicI64::new(-1);
    drive(&rig, secs as f64, |done| {
        if failover == Failover::AsynchronousNoTripwire {
            // Halfway: replication turns asynchronous and the standby stops; the primary goes
            // on committing alone.
            std::thread::sleep(Duration::from_secs_f64(secs as f64 / 2.0));
            pair.set_async();
            replay_from.store(round.load(Ordering::SeqCst), Ordering::SeqCst);
            pair.stop_standby();
        }
        if !with_faults {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        while !done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(rng.gen_range(300..700)));
            if done.load(Ordering::SeqCst) {
                break;
            }
            let inst = &instances[rng.gen_range(0..INSTANCES)];
            let kind = rng.gen_range(0..6);
            kinds[kind].fetch_add(1, Ordering::SeqCst);
            match kind {
                4 => {
                    // A partition between this instance and the database.
                    inst.relay.cut.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(rng.gen_range(200..1500)));
                    inst.relay.cut.store(false, Ordering::SeqCst);
                }
                0 => {
                    inst.kill();
                    std::thread::sleep(Duration::from_millis(200));
                    inst.start_until_ready(fault);
                }
                1 => {
                    if inst.signal(Signal::STOP) {
                        inst.stopped.store(true, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
                        inst.signal(Signal::CONT);
                        inst.stopped.store(false, Ordering::SeqCst);
                    }
                }
                2 => pg.restart_immediate(),
                5 => {
                    // Commits waiting for the stopped standby, their wait cancelled: durable
                    // on the primary alone, answered "success" + WARNING.
                    pair.stop_standby();
                    let until = Instant::now() + Duration::from_millis(1000);
                    while pair.syncrep_waiters() == 0 && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let n = pair.cancel_waiting_backends();
                    cancelled.fetch_add(n, Ordering::SeqCst);
                    pair.start_standby();
                    pair.wait_sync();
                }
                _ => {
                    // The database server and its backends frozen: no answer, no RST.
                    if let Some(pid) = pg.pid() {
                        let all = with_children(pid);
                        for p in &all {
                            send(*p, Signal::STOP);
                        }
                        std::thread::sleep(Duration::from_millis(rng.gen_range(100..800)));
                        for p in &all {
                            send(*p, Signal::CONT);
                        }
                    }
                }
            }
            faults.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut after_failover = 0;
    if failover != Failover::None {
        let released_before = book.released.lock().unwrap().len();
        // The primary dies; the standby is promoted and takes its address.
        pg.stop_immediate();
        if failover == Failover::AsynchronousNoTripwire {
            pair.start_standby();
        } else {
            replay_from.store(round.load(Ordering::SeqCst) - 30, Ordering::SeqCst);
        }
        pair.promote_standby();
        for inst in &instances {
            inst.relay
                .upstream
                .store(pair.standby().port(), Ordering::SeqCst);
            inst.kill();
        }
        if failover == Failover::Synchronous {
            // The operator's repair: with a synchronous standby nothing is behind, so trust
            // succeeds without --forget-released.
            for inst in &instances {
                let out = keyguard(inst, &["store", "trust"]);
                assert!(
                    out.status.success(),
                    "store trust after a synchronous failover: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        for inst in &instances {
            inst.start_until_ready(fault);
        }
        round.store(replay_from.load(Ordering::SeqCst), Ordering::SeqCst);
        drive(&rig, 4.0, |_| {});
        after_failover = book.released.lock().unwrap().len() - released_before;
    }
    // Check: the audit log as one chain, with a signed row for everything released.
    for inst in &instances {
        inst.kill();
    }
    let verify = keyguard(&instances[0], &["audit", "verify"]);
    let out = keyguard(
        &instances[0],
        &["audit", "list", "--json", "--limit", "10000000"],
    );
    assert!(
        out.status.success(),
        "audit list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signed: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["decision"] == "signed")
        .filter_map(|v| v["tx_hash"].as_str().map(str::to_owned))
        .collect();
    let released = book.released.lock().unwrap();
    let txs = book.txs.lock().unwrap();
    let blocks = book.blocks.lock().unwrap();
    if !verify.status.success() {
        eprintln!("audit verify: {}", String::from_utf8_lossy(&verify.stderr));
    }
    Report {
        faults: faults.load(Ordering::SeqCst),
        kinds: std::array::from_fn(|i| kinds[i].load(Ordering::SeqCst)),
        cancelled: cancelled.load(Ordering::SeqCst),
        evm_signed: txs.values().map(BTreeSet::len).sum(),
        votes_signed: blocks.values().map(BTreeSet::len).sum(),
        after_failover,
        refused: book.refused.load(Ordering::SeqCst),
        failed: book.failed.load(Ordering::SeqCst),
        double_nonces: txs.values().filter(|t| t.len() > 1).count(),
        double_blocks: blocks.values().filter(|b| b.len() > 1).count(),
        unaudited: released.iter().filter(|h| !signed.contains(*h)).count(),
        audit_ok: verify.status.success(),
    }
}

fn print(name: &str, secs: u64, seed: u64, r: &Report) {
    eprintln!(
        "chaos {name}: {secs}s seed {seed}: {} faults injected (kill {}, stop {}, database \
         restart {}, database freeze {}, partition {}, sync-rep cancel {} with {} commits \
         cancelled); released {} EVM and {} CometBFT signatures, {} of them after the \
         failover ({} refused, {} failed requests); conflicts: {} nonces and {} steps signed \
         twice; {} released signatures without a signed audit row; audit verify {}",
        r.faults,
        r.kinds[0],
        r.kinds[1],
        r.kinds[2],
        r.kinds[3],
        r.kinds[4],
        r.kinds[5],
        r.cancelled,
        r.evm_signed,
        r.votes_signed,
        r.after_failover,
        r.refused,
        r.failed,
        r.double_nonces,
        r.double_blocks,
        r.unaudited,
        if r.audit_ok { "passed" } else { "FAILED" },
    );
}

fn secs() -> u64 {
    std::env::var("KEYGUARD_CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

fn seed() -> u64 {
    std::env::var("KEYGUARD_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

/// The fault schedule, then a failover to the synchronous standby with the operator's
/// `keyguard store trust`, then the last rounds replayed against the promoted database.
#[test]
fn three_instances_under_faults_never_double_sign() {
    let (secs, seed) = (secs(), seed());
    let r = run(secs, seed, None, true, Failover::Synchronous);
    print("healthy", secs, seed, &r);
    assert_eq!(
        r.double_nonces, 0,
        "a nonce was signed for two transactions"
    );
    assert_eq!(
        r.double_blocks, 0,
        "a height/round/step was signed for two blocks"
    );
    assert_eq!(
        r.unaudited, 0,
        "a released signature has no signed audit row"
    );
    assert!(r.audit_ok, "audit verify failed on the shared chain");
    assert!(r.faults > 0, "no fault was injected");
    assert!(
        r.evm_signed > 0 && r.votes_signed > 0,
        "too little was signed to mean anything"
    );
    assert!(
        r.after_failover > 0,
        "nothing was signed after the failover: the repair did not bring the instances back"
    );
}

/// Negative control: the daemons with the check and the write split into two statements.
#[cfg(feature = "fault-injection")]
#[test]
fn split_fence_is_caught_by_the_chaos_checker() {
    let (secs, seed) = (secs().min(8), seed());
    let r = run(secs, seed, Some("split-fence"), false, Failover::None);
    print("split-fence", secs, seed, &r);
    assert!(
        r.double_nonces + r.double_blocks > 0,
        "the checker found no double signature with the fence split: it proves nothing"
    );
}

/// Negative control of the failover: asynchronous replication, a promotion that loses the
/// standby's missing commits, and daemons without their tripwire sign replayed nonces and
/// heights again; the checker must see it.
#[cfg(feature = "fault-injection")]
#[test]
fn async_promotion_without_the_tripwire_is_caught() {
    let (secs, seed) = (secs().min(8), seed());
    let r = run(
        secs,
        seed,
        Some("no-tripwire"),
        false,
        Failover::AsynchronousNoTripwire,
    );
    print("async-promotion", secs, seed, &r);
    assert!(
        r.double_nonces + r.double_blocks > 0,
        "the checker found no double signature after a lossy failover without the tripwire: \
         it proves nothing"
    );
}
