//! Eth2 slashing protection on the shared PostgreSQL store: every EIP-3076 interchange test
//! case (complete strategy) answers as on SQLite (`store::tests_eth2`), and attestations that
//! all surround one another, sent at once by eight instances (eight `Store`s, each with its own
//! connections), record exactly one, for a new key (decided by the creation of its row) and for
//! a key with history (decided by the row lock: with the `FOR UPDATE` of `lock_validator`
//! removed, two or three were recorded in each of three runs, 2026-12-05). (The race's negative control, a check and a write in two
//! transactions, is the SQLite unit test `racing_surround_votes_negative_control_*`; the
//! vectors' is `interchange_vectors_fail_without_the_surround_check`.)

#[path = "support/pg/mod.rs"]
mod pg;
#[path = "support/eth2_vectors.rs"]
mod vectors;

use std::sync::{Arc, Barrier};

use keyguard::config::PgSettings;
use keyguard::store::eth2_slashing::{SlashingError, SlashingStore};
use keyguard::store::Store;
use keyguard_eth2::interchange::Interchange;
use pg::PgCluster;

fn settings(c: &PgCluster, dir: &std::path::Path) -> PgSettings {
    c.store_settings(dir, 10_000, "keyguard-eth2-test")
}

struct Pg {
    store: Store,
    s: SlashingStore,
}

fn ok<T>(r: Result<T, SlashingError>) -> bool {
    match r {
        Ok(_) => true,
        Err(SlashingError::Refused { .. }) => false,
        Err(e) => panic!("store failed: {e}"),
    }
}

impl vectors::Db for Pg {
    fn import(&mut self, file: &[u8], gvr: &[u8; 32]) -> bool {
        let _ = &self.store;
        Interchange::parse(file).is_ok_and(|f| self.s.import(&f, gvr).is_ok())
    }
    fn block(&mut self, pk: &[u8; 48], slot: u64, root: Option<[u8; 32]>) -> bool {
        ok(self.s.sign_block(pk, slot, root.as_ref()))
    }
    fn attestation(&mut self, pk: &[u8; 48], s: u64, t: u64, root: Option<[u8; 32]>) -> bool {
        ok(self.s.sign_attestation(pk, s, t, root.as_ref()))
    }
}

#[test]
fn postgres_interchange_vectors_and_race() {
    let dir = tempfile::tempdir().unwrap();
    let mut fails = Vec::new();
    let c = CLUSTER.with(|c| c.clone());
    let store = Store::open_postgres(&settings(&c, dir.path()), None).unwrap();
    let mut pgdb = Pg {
        s: store.eth2_slashing(),
        store,
    };
    // Both EIP-3076 strategies: the default (complete) and `slashing_strategy = "minimal"`.
    for (strategy, minimal) in [
        (vectors::Strategy::Complete, false),
        (vectors::Strategy::Minimal, true),
    ] {
        pgdb.s = pgdb.store.eth2_slashing().with_minimal_strategy(minimal);
        for case in vectors::cases() {
            // An empty slashing database per case.
            c.psql("TRUNCATE eth2_validators, eth2_signed_blocks, eth2_signed_attestations");
            fails.extend(
                vectors::run_case(&case, &mut pgdb, strategy)
                    .into_iter()
                    .map(|f| format!("{strategy:?}: {f}")),
            );
        }
    }
    pgdb.store.close().unwrap();
    assert!(fails.is_empty(), "{}", fails.join("\n"));
    c.psql("TRUNCATE eth2_validators, eth2_signed_blocks, eth2_signed_attestations");

    let st = settings(&c, dir.path());
    assert_eq!(
        race(&st, [3u8; 48]),
        1,
        "surrounding attestations of a new key from eight instances"
    );
    // A key with history already has its row: the race is decided by the row lock, not by the
    // row's creation.
    let store = Store::open_postgres(&st, None).unwrap();
    assert!(ok(store.eth2_slashing().sign_attestation(
        &[6u8; 48],
        1,
        2,
        Some(&[1; 32])
    )));
    store.close().unwrap();
    assert_eq!(
        race(&st, [6u8; 48]),
        1,
        "surrounding attestations of a known key from eight instances"
    );
    c.psql("TRUNCATE eth2_validators, eth2_signed_blocks, eth2_signed_attestations");

    // Pruning on PostgreSQL: the pruned target stays closed.
    let store = Store::open_postgres(&st, None).unwrap();
    let s = store.eth2_slashing();
    let pk = [4u8; 48];
    s.sign_attestation(&pk, 1, 2, Some(&[1; 32])).unwrap();
    s.sign_attestation(&pk, 2, 3, Some(&[2; 32])).unwrap();
    assert_eq!(s.prune(0, 3).unwrap(), (0, 1));
    assert!(
        !ok(s.sign_attestation(&pk, 0, 2, Some(&[3; 32]))),
        "pruned target 2 reopened"
    );
    assert!(ok(s.sign_attestation(&pk, 3, 4, Some(&[4; 32]))));
    store.close().unwrap();

    // `keyguard store copy` moves the history from SQLite: a conflicting vote is refused on
    // PostgreSQL afterwards.
    c.psql("TRUNCATE eth2_validators, eth2_signed_blocks, eth2_signed_attestations");
    let file = dir.path().join("kg.db");
    let lite = Store::open(&file).unwrap();
    let pk = [5u8; 48];
    lite.eth2_slashing()
        .sign_attestation(&pk, 7, 8, Some(&[8; 32]))
        .unwrap();
    lite.eth2_slashing()
        .sign_block(&pk, 99, Some(&[9; 32]))
        .unwrap();
    lite.close().unwrap();
    keyguard::store::copy::copy(&file, &st).unwrap();
    let store = Store::open_postgres(&st, None).unwrap();
    let s = store.eth2_slashing();
    assert!(
        !ok(s.sign_attestation(&pk, 7, 8, Some(&[0xee; 32]))),
        "copied vote protects"
    );
    assert!(
        !ok(s.sign_block(&pk, 99, Some(&[0xee; 32]))),
        "copied block protects"
    );
    assert!(
        ok(s.sign_attestation(&pk, 8, 9, Some(&[9; 32]))),
        "positive control"
    );
    store.close().unwrap();
}

thread_local! {
    static CLUSTER: Arc<PgCluster> = Arc::new(PgCluster::start());
}

/// Eight instances send attestations of `pk` that all surround one another at once; how many
/// were recorded.
fn race(st: &keyguard::config::PgSettings, pk: [u8; 48]) -> usize {
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            let (st, barrier) = (st.clone(), barrier.clone());
            std::thread::spawn(move || {
                let store = Store::open_postgres(&st, None).unwrap();
                let s = store.eth2_slashing();
                barrier.wait();
                let signed = ok(s.sign_attestation(&pk, 10 - i, 20 + i, Some(&[i as u8; 32])));
                store.close().unwrap();
                signed
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|s| *s)
        .count()
}
