//! Attestation signing throughput and latency for 1,000 BLS keys with slashing protection on
//! and durable (every signature's slashing record and audit row committed before it is
//! answered), on SQLite (`synchronous=FULL`) and on PostgreSQL on loopback (`fsync` and
//! `synchronous_commit` on), with the pieces of one signature measured in the same run:
//! `blst` signing alone (the ceiling), pass-2 verification alone and batched, hash-to-G2,
//! decoding (JSON and SSZ root), and each store's slashing and audit commits alone.
//! Ignored by default: `benches/eth2_sign.sh`, or
//! `cargo test --release --test eth2_bench -- --ignored --nocapture` (PostgreSQL from
//! Debian's packages or `KEYGUARD_PG_BIN`, as every PostgreSQL test: docs/testing.md).

#[path = "support/pg/mod.rs"]
mod pg;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blst::min_pk::{PublicKey, Signature};
use keyguard::backend::software::bls::BlsKeystore;
use keyguard::config::{Eth2Policy, PgSettings};
use keyguard::guard::eth2::{Eth2Caller, Eth2Guard};
use keyguard::store::{AuditEntry, Decision, Store};
use keyguard_eth2::bls::{decode_signature, verify_batch, BatchItem, DST};
use keyguard_eth2::{Context, Network};
use rand::RngCore;

const KEYS: usize = 1000;
const ROUNDS: u64 = 3;
const CONCURRENCY: usize = 64;
/// An operator's validators, whose attestations of one epoch the projection is for.
const OPERATOR: f64 = 10_000.0;
const GVR: &str = "0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rate(n: usize, t: Instant) -> f64 {
    n as f64 / t.elapsed().as_secs_f64()
}

fn attestation(target: u64) -> Vec<u8> {
    serde_json::json!({
        "type": "ATTESTATION",
        "fork_info": {"fork": {"previous_version": "0x05000000", "current_version": "0x06000000", "epoch": "411392"},
                      "genesis_validators_root": GVR},
        "attestation": {"slot": (target * 32).to_string(), "index": "0",
            "beacon_block_root": format!("0x{}", "11".repeat(32)),
            "source": {"epoch": (target - 1).to_string(), "root": format!("0x{}", "22".repeat(32))},
            "target": {"epoch": target.to_string(), "root": format!("0x{}", "33".repeat(32))}}
    })
    .to_string()
    .into_bytes()
}

/// hash-to-G2 of a signing root, the part of a signature (and again of its verification)
/// that depends only on the message; measured alone to show what sharing it would save.
#[allow(unsafe_code)]
fn hash_to_g2(root: &[u8; 32]) -> blst::blst_p2 {
    let mut out = blst::blst_p2::default();
    // SAFETY: blst reads `root` and `DST` for the lengths given and writes one point to `out`.
    unsafe {
        blst::blst_hash_to_g2(
            &mut out,
            root.as_ptr(),
            root.len(),
            DST.as_ptr(),
            DST.len(),
            std::ptr::null(),
            0,
        );
    }
    out
}

/// The crypto pieces, one thread each (rates per second).
struct Pieces {
    sign: f64,
    verify: f64,
    verify_batched: f64,
    hash_to_g2: f64,
    key_validate: f64,
    sig_decode: f64,
    decode: f64,
}

fn pieces(keys: &BlsKeystore, pks: &[[u8; 48]], net: &Network, now: u64) -> Pieces {
    let t = Instant::now();
    for (i, pk) in pks.iter().enumerate() {
        keys.sign(pk, &[i as u8; 32]).unwrap();
    }
    let sign = rate(pks.len(), t);
    let sigs: Vec<[u8; 96]> = pks
        .iter()
        .map(|pk| keys.sign(pk, &[1; 32]).unwrap())
        .collect();
    let t = Instant::now();
    for (pk, sig) in pks.iter().zip(&sigs) {
        assert!(keyguard_eth2::bls::verify(pk, &[1; 32], sig));
    }
    let verify = rate(pks.len(), t);
    let t = Instant::now();
    let decoded: Vec<PublicKey> = pks
        .iter()
        .map(|pk| PublicKey::key_validate(pk).unwrap())
        .collect();
    let key_validate = rate(pks.len(), t);
    // Signatures are decoded and group-checked on the signing threads; then batches of the
    // concurrency's size, as pass 2 sees them under this load. `blst` spreads one batch over
    // its own threads, so the batch rate is for every core.
    let mut rng = rand::rngs::OsRng;
    let t = Instant::now();
    let sigs: Vec<Signature> = sigs.iter().map(|s| decode_signature(s).unwrap()).collect();
    let sig_decode = rate(pks.len(), t);
    let t = Instant::now();
    for chunk in decoded
        .iter()
        .zip(&sigs)
        .collect::<Vec<_>>()
        .chunks(CONCURRENCY)
    {
        let items: Vec<BatchItem<'_>> = chunk
            .iter()
            .map(|(pk, sig)| BatchItem {
                pk,
                root: &[1; 32],
                sig,
            })
            .collect();
        assert!(verify_batch(&items, &mut || rng.next_u64())
            .iter()
            .all(|ok| *ok));
    }
    let verify_batched = rate(pks.len(), t);
    let t = Instant::now();
    for i in 0..pks.len() {
        std::hint::black_box(hash_to_g2(&[i as u8; 32]));
    }
    let hash_to_g2 = rate(pks.len(), t);
    let body = attestation(net.epoch_of(net.slot_at(now)));
    let t = Instant::now();
    for pk in pks {
        let ctx = Context {
            network: net,
            pubkey: pk,
            now_unix: now,
        };
        keyguard_eth2::decode(&body, &ctx).unwrap();
    }
    let decode = rate(pks.len(), t);
    Pieces {
        sign,
        verify,
        verify_batched,
        hash_to_g2,
        key_validate,
        sig_decode,
        decode,
    }
}

/// The store's share alone: slashing records from CONCURRENCY threads (group commit), then
/// signed audit rows CONCURRENCY at a time; rates per second.
fn store_alone(store: &Store, rt: &tokio::runtime::Runtime) -> (f64, f64) {
    let slashing = store.eth2_slashing();
    let per = KEYS / CONCURRENCY + 1;
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..CONCURRENCY {
            let slashing = slashing.clone();
            s.spawn(move || {
                for i in 0..per {
                    let mut pk = [0xee; 48];
                    pk[..8].copy_from_slice(&((th * per + i) as u64).to_be_bytes());
                    slashing
                        .sign_attestation(&pk, 1, 2, Some(&[2; 32]))
                        .unwrap();
                }
            });
        }
    });
    let records = rate(per * CONCURRENCY, t);
    let audit = store.audit_log();
    let t = Instant::now();
    rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let tasks: Vec<_> = (0..KEYS)
            .map(|i| {
                let (audit, sem) = (audit.clone(), sem.clone());
                tokio::spawn(async move {
                    let _p = sem.acquire().await.unwrap();
                    let entry = AuditEntry {
                        request_id: format!("alone-{i}"),
                        client: "bench".into(),
                        key_id: Some(format!("0x{}", "ab".repeat(48))),
                        chain: Some("eth2:mainnet".into()),
                        method: "eth2_attestation".into(),
                        summary: serde_json::json!({"duty": {"source": 1, "target": 2}}),
                        decision: Decision::Signed,
                        rule: None,
                        reason: None,
                        tx_hash: Some("cd".repeat(96)),
                    };
                    audit.append(entry).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    (records, rate(KEYS, t))
}

/// CPU seconds (user + system) used so far by process `pid` (`/proc/<pid>/stat`, 100 Hz).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// CPU seconds of this process plus, for PostgreSQL, its server's processes (the postmaster
/// and its children: the backends serving keyguard's connections).
fn cpu_now(server: Option<u32>) -> f64 {
    let mut total = cpu_secs(std::process::id());
    if let Some(pm) = server {
        total += cpu_secs(pm);
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            if rest.split_whitespace().nth(1) == Some(&pm.to_string()) {
                total += cpu_secs(pid);
            }
        }
    }
    total
}

/// What one end-to-end run measured.
struct Run {
    throughput: f64,
    p50: Duration,
    p99: Duration,
    batch: f64,
    /// CPU milliseconds per signature (keyguard, plus PostgreSQL's server when used).
    cpu_ms: f64,
}

/// End to end through the guard.
fn through_guard(
    store: &Store,
    keys: &Arc<BlsKeystore>,
    pks: &[[u8; 48]],
    rt: &tokio::runtime::Runtime,
    server: Option<u32>,
) -> Run {
    let net = Network::builtin("mainnet").unwrap();
    let now = keyguard_chain::clock::now_ms() / 1000;
    let epoch = net.epoch_of(net.slot_at(now));
    let guard = Arc::new(Eth2Guard::new(
        net,
        Eth2Policy::default(),
        keys.clone(),
        store.eth2_slashing(),
        store.audit_log(),
    ));
    let mut lat: Vec<Duration> = Vec::new();
    let cpu = cpu_now(server);
    let t = Instant::now();
    for r in 0..ROUNDS {
        let body = Arc::new(attestation(epoch - ROUNDS + r + 1));
        let mut round: Vec<Duration> = rt.block_on(async {
            let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
            let mut tasks = Vec::new();
            for pk in pks {
                let (g, b, pk, sem) = (guard.clone(), body.clone(), *pk, sem.clone());
                tasks.push(tokio::spawn(async move {
                    let _p = sem.acquire().await.unwrap();
                    let t = Instant::now();
                    let who = Eth2Caller {
                        client: "bench",
                        request_id: "b".into(),
                    };
                    g.sign(&who, &pk, &b, now).await.expect("signed");
                    t.elapsed()
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        lat.append(&mut round);
    }
    let throughput = rate(lat.len(), t);
    let cpu_ms = (cpu_now(server) - cpu) * 1e3 / lat.len() as f64;
    lat.sort();
    let (batches, checked) = guard.pass2_batches();
    Run {
        throughput,
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        batch: checked as f64 / batches.max(1) as f64,
        cpu_ms,
    }
}

fn report(
    label: &str,
    store: &Store,
    keys: &Arc<BlsKeystore>,
    pks: &[[u8; 48]],
    server: Option<u32>,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (records, audit) = store_alone(store, &rt);
    let r = through_guard(store, keys, pks, &rt, server);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "eth2 bench [{label}]: keys={KEYS} signatures={} concurrency={CONCURRENCY} \
         throughput={:.0}/s p50={:.2}ms p99={:.2}ms pass2_batch={:.1} | \
         10,000 validators' epoch: {:.1} s | CPU per signature {:.3} ms (cores to ourselves: \
         {:.0}/s, epoch {:.1} s) | store alone: slashing records {records:.0}/s, \
         audit rows {audit:.0}/s",
        KEYS as u64 * ROUNDS,
        r.throughput,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.batch,
        OPERATOR / r.throughput,
        r.cpu_ms,
        cores * 1e3 / r.cpu_ms,
        OPERATOR * r.cpu_ms / 1e3 / cores,
    );
}

fn pg_settings(c: &pg::PgCluster, dir: &std::path::Path) -> PgSettings {
    c.store_settings(dir, 10_000, "keyguard-eth2-bench")
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn eth2_attestation_throughput() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let keys = Arc::new(BlsKeystore::in_memory());
    let pks: Vec<[u8; 48]> = (0..KEYS).map(|_| keys.generate().unwrap()).collect();
    let net = Network::builtin("mainnet").unwrap();
    let now = keyguard_chain::clock::now_ms() / 1000;

    let p = pieces(&keys, &pks, &net, now);
    // A signed-and-verified attestation costs, in core time, one signing, one signature decode
    // and one share of a batch (whose rate above already used every core).
    let ceiling =
        cores as f64 / (1.0 / p.sign + 1.0 / p.sig_decode + cores as f64 / p.verify_batched);
    println!(
        "eth2 bench: cores={cores} | one thread: blst sign {:.0}/s, verify {:.0}/s, \
         hash-to-G2 {:.0}/s, key validate {:.0}/s, signature decode + group check {:.0}/s, \
         request decode (JSON + SSZ root) {:.0}/s | \
         all cores: batched verify of decoded signatures (batches of {CONCURRENCY}) {:.0}/s | \
         crypto ceiling (sign + batched verify, all cores) {ceiling:.0}/s, \
         with single verification {:.0}/s",
        p.sign,
        p.verify,
        p.hash_to_g2,
        p.key_validate,
        p.sig_decode,
        p.decode,
        p.verify_batched,
        cores as f64 / (1.0 / p.sign + 1.0 / p.verify),
    );

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("kg.db")).unwrap();
    report("sqlite", &store, &keys, &pks, None);
    store.close().unwrap();

    let cluster = pg::PgCluster::start();
    let store = Store::open_postgres(&pg_settings(&cluster, dir.path()), None).unwrap();
    report("postgres", &store, &keys, &pks, cluster.pid());
    store.close().unwrap();
}
