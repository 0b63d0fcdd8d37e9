//! Adversarial table for fee caps (issue 13, class 6): no cap is escaped by choosing another
//! transaction type; `tx_types` refuses legacy/2930 outright.

use alloy_primitives::U256;
use proptest::prelude::*;

use crate::tests_semantics::{ok, outcome, policy, refused, run, tx, Ty, GWEI, TYPES, Y};

#[test]
fn no_fee_cap_is_escaped_by_transaction_type() {
    let p = policy("").unwrap();
    let cap = 5 * GWEI;
    let tip = "evm.max_priority_fee_per_gas";
    let mut rows = Vec::new();
    let t = |ty| tx(ty, 1, Some(Y), U256::ZERO, &[]);
    for (name, at, over, field) in [
        ("legacy", Ty::Legacy(cap), Ty::Legacy(cap + 1), "gasPrice"),
        (
            "legacy 300 gwei",
            Ty::Legacy(cap),
            Ty::Legacy(300 * GWEI),
            "gasPrice",
        ),
        (
            "2930",
            Ty::AccessList(cap),
            Ty::AccessList(cap + 1),
            "gasPrice",
        ),
        (
            "2930 300 gwei",
            Ty::AccessList(cap),
            Ty::AccessList(300 * GWEI),
            "gasPrice",
        ),
        (
            "1559",
            Ty::Dynamic(300 * GWEI, cap),
            Ty::Dynamic(300 * GWEI, cap + 1),
            "maxPriorityFeePerGas",
        ),
        (
            "4844",
            Ty::Blob(300 * GWEI, cap),
            Ty::Blob(300 * GWEI, cap + 1),
            "maxPriorityFeePerGas",
        ),
        (
            "7702",
            Ty::SetCode(300 * GWEI, cap),
            Ty::SetCode(300 * GWEI, cap + 1),
            "maxPriorityFeePerGas",
        ),
    ] {
        rows.push((format!("{name} at cap"), t(at), ok("policy.limits")));
        rows.push((format!("{name} over cap"), t(over), refused(tip, field)));
    }
    // The fee cap binds every type too.
    for ty in [Ty::Legacy(501 * GWEI), Ty::AccessList(501 * GWEI)] {
        rows.push((
            format!("{ty:?}"),
            t(ty),
            refused("evm.max_fee_per_gas", "gasPrice"),
        ));
    }
    for ty in [
        Ty::Dynamic(501 * GWEI, 1),
        Ty::Blob(501 * GWEI, 1),
        Ty::SetCode(501 * GWEI, 1),
    ] {
        rows.push((
            format!("{ty:?}"),
            t(ty),
            refused("evm.max_fee_per_gas", "maxFeePerGas"),
        ));
    }
    run("fees", &p, rows);

    // tx_types refuses legacy and 2930 outright, whatever their fees.
    let p = policy("tx_types = [2, 3, 4]").unwrap();
    let mut rows = Vec::new();
    for ty in [Ty::Legacy(1), Ty::AccessList(1)] {
        rows.push((format!("{ty:?}"), t(ty), refused("evm.tx_type", "type")));
    }
    for ty in [TYPES[2], TYPES[3], TYPES[4]] {
        rows.push((format!("{ty:?}"), t(ty), ok("policy.limits")));
    }
    run("tx_types", &p, rows);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the type and fees, a signed transaction's tip bound (maxPriorityFeePerGas, or
    /// the whole gasPrice of legacy/2930) is within the cap; the negative control is that at the
    /// cap every type signs, so the refusals come from the cap alone.
    #[test]
    fn signed_transactions_never_tip_over_the_cap(
        kind in 0u8..5,
        fee in 0u64..=600 * GWEI,
        tip in 0u64..=20 * GWEI,
    ) {
        let p = policy("").unwrap();
        let tip = tip.min(fee);
        let ty = match kind {
            0 => Ty::Legacy(fee),
            1 => Ty::AccessList(fee),
            2 => Ty::Dynamic(fee, tip),
            3 => Ty::Blob(fee, tip),
            _ => Ty::SetCode(fee, tip),
        };
        let bound = if kind < 2 { fee } else { tip };
        let signed = outcome(&p, &tx(ty, 1, Some(Y), U256::ZERO, &[])).is_ok();
        prop_assert_eq!(signed, bound <= 5 * GWEI && fee <= 500 * GWEI, "{:?}", ty);
    }
}
