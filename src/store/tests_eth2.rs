//! Slashing protection against every EIP-3076 interchange test case on SQLite, with the
//! negative control: the same cases with the surround check switched off must fail.

use keyguard_eth2::interchange::Interchange;

use super::eth2_slashing::{Checks, SlashingError, SlashingStore};
use super::Store;

#[path = "../../tests/support/eth2_vectors.rs"]
mod vectors;

struct Sqlite {
    _dir: tempfile::TempDir,
    store: Store,
    slashing: SlashingStore,
    checks: Checks,
}

impl Sqlite {
    fn new(checks: Checks) -> Sqlite {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kg.db")).unwrap();
        let slashing = store.eth2_slashing().with_minimal_strategy(checks.minimal);
        Sqlite {
            _dir: dir,
            store,
            slashing,
            checks,
        }
    }
}

impl vectors::Db for Sqlite {
    fn import(&mut self, file: &[u8], gvr: &[u8; 32]) -> bool {
        let _ = &self.store;
        match Interchange::parse(file) {
            Ok(f) => self.slashing.import(&f, gvr).is_ok(),
            Err(_) => false,
        }
    }
    fn block(&mut self, pk: &[u8; 48], slot: u64, root: Option<[u8; 32]>) -> bool {
        ok(self.slashing.sign_block(pk, slot, root.as_ref()))
    }
    fn attestation(&mut self, pk: &[u8; 48], s: u64, t: u64, root: Option<[u8; 32]>) -> bool {
        ok(self
            .slashing
            .sign_attestation_with(pk, s, t, root.as_ref(), self.checks))
    }
}

fn ok<T>(r: Result<T, SlashingError>) -> bool {
    match r {
        Ok(_) => true,
        Err(SlashingError::Refused { .. }) => false,
        Err(e) => panic!("store failed: {e}"),
    }
}

#[test]
fn interchange_vectors_all_pass() {
    let mut fails = Vec::new();
    for case in vectors::cases() {
        fails.extend(vectors::run_case(
            &case,
            &mut Sqlite::new(Checks::ALL),
            vectors::Strategy::Complete,
        ));
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

const MINIMAL: Checks = Checks {
    minimal: true,
    ..Checks::ALL
};

/// The minimal strategy's expectations (`should_succeed`) with `slashing_strategy =
/// "minimal"`; negative control: the complete checks fail them (repeats and older messages
/// sign), so the vectors tell the two apart.
#[test]
fn interchange_vectors_all_pass_with_the_minimal_strategy() {
    let run = |checks: Checks| {
        let mut fails = Vec::new();
        for case in vectors::cases() {
            fails.extend(vectors::run_case(
                &case,
                &mut Sqlite::new(checks),
                vectors::Strategy::Minimal,
            ));
        }
        fails
    };
    let fails = run(MINIMAL);
    assert!(fails.is_empty(), "{}", fails.join("\n"));
    assert!(
        !run(Checks::ALL).is_empty(),
        "the complete checks passed the minimal expectations: the vectors prove nothing"
    );
}

/// Negative control: without the surround check the official surround cases must fail.
#[test]
fn interchange_vectors_fail_without_the_surround_check() {
    let mut fails = Vec::new();
    for case in vectors::cases() {
        fails.extend(vectors::run_case(
            &case,
            &mut Sqlite::new(Checks {
                surround: false,
                ..Checks::ALL
            }),
            vectors::Strategy::Complete,
        ));
    }
    eprintln!("{}", fails.join("\n"));
    assert!(
        fails.iter().any(|f| f.contains("surround")),
        "the vectors did not notice a missing surround check"
    );
}

#[test]
fn export_then_import_round_trips() {
    let a = Sqlite::new(Checks::ALL);
    let pk = [7u8; 48];
    a.slashing.sign_block(&pk, 10, Some(&[1; 32])).unwrap();
    a.slashing
        .sign_attestation(&pk, 2, 3, Some(&[2; 32]))
        .unwrap();
    let file = a.slashing.export(&[9; 32]).unwrap();
    let b = Sqlite::new(Checks::ALL);
    b.slashing
        .import(
            &Interchange::parse(file.to_json().as_bytes()).unwrap(),
            &[9; 32],
        )
        .unwrap();
    assert!(b.slashing.sign_block(&pk, 10, Some(&[5; 32])).is_err());
    assert!(b
        .slashing
        .sign_attestation(&pk, 1, 4, Some(&[5; 32]))
        .is_err());
    assert!(
        b.slashing
            .sign_attestation(&pk, 3, 4, Some(&[5; 32]))
            .is_ok(),
        "positive control"
    );
    // Another network's file is refused before anything is written.
    assert!(b.slashing.import(&file, &[8; 32]).is_err());
}

/// Attestations that all surround one another, from eight connections (eight `Store`
/// handles on one file, as eight processes would be) at once: exactly one is recorded.
/// Negative control: the same race with the check and the write in two transactions records
/// several.
fn race(checks: Checks) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kg.db");
    drop(Store::open(&path).unwrap());
    let pk = [3u8; 48];
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                let store = Store::open(&path).unwrap();
                let s = store.eth2_slashing();
                barrier.wait();
                // (10-i, 20+i): each pair surrounds the other.
                let ok = s
                    .sign_attestation_with(&pk, 10 - i, 20 + i, Some(&[i as u8; 32]), checks)
                    .is_ok();
                store.close().unwrap();
                ok
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count()
}

#[test]
fn racing_surround_votes_record_exactly_one() {
    assert_eq!(race(Checks::ALL), 1);
}

#[test]
fn racing_surround_votes_negative_control_split_check_records_several() {
    let split = Checks {
        split: true,
        ..Checks::ALL
    };
    assert!(race(split) > 1, "the race test cannot see a split check");
}

/// Pruning never re-opens a pruned epoch: after deleting 1->2, a double vote at target 2 (0->2,
/// which surrounds nothing left) is refused, also after an old minimal file is imported.
/// Negative control: a prune that deletes without raising the watermark lets it sign.
fn pruned_double_vote_signs(raise: bool) -> bool {
    let a = Sqlite::new(Checks::ALL);
    let pk = [9u8; 48];
    for (s, t) in [(1, 2), (2, 3), (3, 4)] {
        a.slashing
            .sign_attestation(&pk, s, t, Some(&[t as u8; 32]))
            .unwrap();
    }
    a.slashing.sign_block(&pk, 10, Some(&[1; 32])).unwrap();
    assert_eq!(a.slashing.prune_with(15, 3, raise).unwrap(), (1, 1));
    if raise {
        assert!(
            a.slashing.sign_block(&pk, 10, Some(&[2; 32])).is_err(),
            "pruned slot stays closed"
        );
        let old = format!(
            r#"{{"metadata":{{"interchange_format_version":"5","genesis_validators_root":"0x{}"}},
            "data":[{{"pubkey":"0x{}","signed_blocks":[],"signed_attestations":[{{"source_epoch":"0","target_epoch":"1"}}]}}]}}"#,
            hex::encode([9u8; 32]),
            hex::encode(pk)
        );
        a.slashing
            .import(&Interchange::parse(old.as_bytes()).unwrap(), &[9u8; 32])
            .unwrap();
    }
    let ok = a
        .slashing
        .sign_attestation(&pk, 0, 2, Some(&[0xee; 32]))
        .is_ok();
    assert!(
        a.slashing
            .sign_attestation(&pk, 4, 5, Some(&[5; 32]))
            .is_ok(),
        "positive control: new epochs still sign"
    );
    ok
}

#[test]
fn pruning_keeps_pruned_epochs_closed() {
    assert!(!pruned_double_vote_signs(true));
}

#[test]
fn pruning_negative_control_without_the_watermark_reopens() {
    assert!(pruned_double_vote_signs(false));
}

/// The minimal strategy's refusals name `eth2.not_increasing`; a different root at a signed
/// slot is still a double proposal. Control: the complete strategy signs the repeat and the
/// older, non-conflicting messages.
#[test]
fn the_minimal_strategy_names_its_rule() {
    let rule_of = |r: Result<_, SlashingError>| match r {
        Err(SlashingError::Refused { rule, .. }) => rule,
        Ok(_) => "signed",
        Err(e) => panic!("{e}"),
    };
    for (checks, want) in [(MINIMAL, "eth2.not_increasing"), (Checks::ALL, "signed")] {
        let db = Sqlite::new(checks);
        let (s, pk) = (&db.slashing, [5u8; 48]);
        s.sign_block(&pk, 10, Some(&[1; 32])).unwrap();
        assert_eq!(
            rule_of(s.sign_block(&pk, 10, Some(&[1; 32]))),
            want,
            "repeat"
        );
        assert_eq!(
            rule_of(s.sign_block(&pk, 9, Some(&[2; 32]))),
            want,
            "older slot"
        );
        assert_eq!(
            rule_of(s.sign_block(&pk, 10, Some(&[3; 32]))),
            "eth2.double_proposal"
        );
        s.sign_attestation_with(&pk, 4, 6, Some(&[1; 32]), checks)
            .unwrap();
        let att = |so, t, r: u8| s.sign_attestation_with(&pk, so, t, Some(&[r; 32]), checks);
        assert_eq!(rule_of(att(4, 6, 1)), want, "repeat");
        assert_eq!(rule_of(att(4, 5, 2)), want, "older target");
    }
}
