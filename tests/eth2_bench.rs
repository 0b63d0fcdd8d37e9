//! Attestation signing throughput and latency for 1,000 BLS keys with slashing protection on
//! and durable (SQLite, synchronous=FULL; every signature's slashing record and audit row
//! committed before it is answered), and `blst` signing alone as the ceiling, in one run.
//! Ignored by default: `cargo test --release --test eth2_bench -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyguard::backend::software::bls::BlsKeystore;
use keyguard::config::Eth2Policy;
use keyguard::guard::eth2::{Eth2Caller, Eth2Guard};
use keyguard::store::Store;
use keyguard_eth2::Network;

const KEYS: usize = 1000;
const ROUNDS: u64 = 3;
const CONCURRENCY: usize = 64;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn eth2_attestation_throughput() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("kg.db")).unwrap();
    let keys = Arc::new(BlsKeystore::in_memory());
    let pks: Vec<[u8; 48]> = (0..KEYS).map(|_| keys.generate().unwrap()).collect();

    // Ceiling: blst alone, same keys and roots.
    let t = Instant::now();
    for (i, pk) in pks.iter().enumerate() {
        keys.sign(pk, &[i as u8; 32]).unwrap();
    }
    let blst_rate = KEYS as f64 / t.elapsed().as_secs_f64();
    // Pass 2 costs a verification per signature (two pairings).
    let sigs: Vec<[u8; 96]> = pks
        .iter()
        .map(|pk| keys.sign(pk, &[1; 32]).unwrap())
        .collect();
    let t = Instant::now();
    for (pk, sig) in pks.iter().zip(&sigs) {
        assert!(keyguard_eth2::bls::verify(pk, &[1; 32], sig));
    }
    let verify_rate = KEYS as f64 / t.elapsed().as_secs_f64();

    let net = Network::builtin("mainnet").unwrap();
    let now = keyguard_chain::clock::now_ms() / 1000;
    let epoch = net.epoch_of(net.slot_at(now));
    let guard = Arc::new(Eth2Guard::new(
        net,
        Eth2Policy::default(),
        keys,
        store.eth2_slashing(),
        store.audit_log(),
    ));
    let gvr = "0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95";
    let mut lat: Vec<Duration> = Vec::new();
    let t = Instant::now();
    for r in 0..ROUNDS {
        let target = epoch - ROUNDS + r + 1;
        let body = serde_json::json!({
            "type": "ATTESTATION",
            "fork_info": {"fork": {"previous_version": "0x05000000", "current_version": "0x06000000", "epoch": "411392"},
                          "genesis_validators_root": gvr},
            "attestation": {"slot": (target * 32).to_string(), "index": "0",
                "beacon_block_root": format!("0x{}", "11".repeat(32)),
                "source": {"epoch": (target - 1).to_string(), "root": format!("0x{}", "22".repeat(32))},
                "target": {"epoch": target.to_string(), "root": format!("0x{}", "33".repeat(32))}}
        })
        .to_string();
        let body = Arc::new(body.into_bytes());
        let mut round: Vec<Duration> = rt.block_on(async {
            let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
            let mut tasks = Vec::new();
            for pk in &pks {
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
    let total = t.elapsed();
    lat.sort();
    let n = lat.len();
    println!(
        "eth2 bench: cores={cores} keys={KEYS} signatures={n} concurrency={CONCURRENCY} \
         throughput={:.0}/s p50={:.2}ms p99={:.2}ms | one thread: blst sign {:.0}/s, verify {:.0}/s",
        n as f64 / total.as_secs_f64(),
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        blst_rate,
        verify_rate
    );
    drop(guard);
    store.close().unwrap();
}
