use std::sync::Arc;

use alloy_primitives::{B256, U256};
use keyguard_chain::KeyId;
use keyguard_evm::Debit;

use super::*;

fn debit(amount: u64, max: u64) -> Debit {
    Debit {
        rule: "evm.velocity",
        limit: "daily",
        counter: "daily".into(),
        amount: U256::from(amount),
        max: U256::from(max),
        window_ms: 1000,
    }
}

fn key() -> KeyId {
    KeyId::new("k").unwrap()
}

#[test]
fn concurrent_reservations_never_exceed_the_limit() {
    let ledger = Arc::new(Ledger::default());
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let l = ledger.clone();
            std::thread::spawn(move || match l.reserve(&key(), &[debit(3, 50)], None, 10) {
                Ok(r) => {
                    std::thread::yield_now();
                    r.commit();
                    1
                }
                Err(_) => 0,
            })
        })
        .collect();
    let signed: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(signed, 16, "16 x 3 = 48 fits under 50, a 17th would not");
}

#[test]
fn boundaries_release_and_window_expiry() {
    let l = Ledger::default();
    l.reserve(&key(), &[debit(5, 10)], None, 0)
        .unwrap()
        .commit();
    // Exactly at the limit passes; one more unit does not.
    let held = l.reserve(&key(), &[debit(5, 10)], None, 1).unwrap();
    assert!(l.reserve(&key(), &[debit(1, 10)], None, 2).is_err());
    drop(held); // a failed signature releases its reservation
    l.reserve(&key(), &[debit(5, 10)], None, 3)
        .unwrap()
        .commit();
    assert!(l.reserve(&key(), &[debit(1, 10)], None, 999).is_err());
    // The first debit (t=0) leaves the 1000 ms window at t=1001.
    assert!(l.reserve(&key(), &[debit(5, 10)], None, 1001).is_ok());
}

fn claim(hash: u8, fee: u128, replace: bool) -> Option<NonceClaim> {
    Some(NonceClaim {
        chain_id: 1,
        nonce: 7,
        sighash: B256::repeat_byte(hash),
        max_fee: fee,
        tip: fee,
        allow_replacement: replace,
        min_bump_percent: 10,
    })
}

#[test]
fn a_nonce_belongs_to_one_transaction_unless_replaced_with_higher_fees() {
    let l = Ledger::default();
    l.reserve(&key(), &[], claim(1, 100, false), 0)
        .unwrap()
        .commit();
    // The same transaction again is fine (idempotent re-sign).
    l.reserve(&key(), &[], claim(1, 100, false), 0)
        .unwrap()
        .commit();
    let rule = |r: Result<Reservation<'_>, Rejection>| match r {
        Err(Rejection::Policy { rule, .. }) => rule,
        _ => "ok",
    };
    assert_eq!(
        rule(l.reserve(&key(), &[], claim(2, 1000, false), 0)),
        "evm.nonce_reuse"
    );
    // Replacement: 10% bump on both fees is the boundary.
    assert_eq!(
        rule(l.reserve(&key(), &[], claim(2, 109, true), 0)),
        "evm.nonce_reuse"
    );
    l.reserve(&key(), &[], claim(2, 110, true), 0)
        .unwrap()
        .commit();
    // Two different transactions in flight for one nonce: the second waits its turn.
    let _held = l.reserve(&key(), &[], claim(3, 200, true), 0).unwrap();
    assert_eq!(
        rule(l.reserve(&key(), &[], claim(4, 300, true), 0)),
        "evm.nonce_reuse"
    );
}

#[test]
fn concurrent_approvals_never_exceed_the_allowance_window() {
    // Issue 13: approvals add up per (token, spender) through the same reservation lock as
    // velocity; 32 permits at once for one spender, each with a velocity debit too.
    let allowance = |amount| Debit {
        rule: keyguard_evm::accounting::ALLOWANCE_WINDOW,
        limit: "USDC",
        counter: "allowance@USDC:0xrouter".into(),
        amount: U256::from(amount),
        max: U256::from(100u64),
        window_ms: 86_400_000,
    };
    let ledger = Arc::new(Ledger::default());
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let l = ledger.clone();
            std::thread::spawn(move || {
                match l.reserve(&key(), &[allowance(7), debit(1, 1000)], None, 10) {
                    Ok(r) => {
                        std::thread::yield_now();
                        r.commit();
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let signed = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(signed, 14, "14 x 7 = 98 fits under 100, a 15th would not");
    // Every refusal names the allowance window, and the velocity counter was not charged for
    // the refused ones (negative control: a velocity-only reservation still fits).
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| e.contains("evm.allowance_window")));
    assert!(ledger
        .reserve(&key(), &[debit(986, 1000)], None, 11)
        .is_ok());
    assert!(ledger
        .reserve(&key(), &[debit(987, 1000)], None, 11)
        .is_err());
}
