//! Config mistakes in rule semantics are load errors, user names cannot shadow built-in rule
//! namespaces, and the dry run names the same rule as the refusal (issue 13, one vocabulary).

use alloy_primitives::{address, U256};

use crate::tests_semantics::{ok, policy, refused, run, transfer, tx, NOW, TYPES, X, Y};

#[test]
fn semantics_mistakes_are_load_errors() {
    for (rules, needle) in [
        ("[[rules]]\nname = \"d\"\naction = \"deny\"\nmax_value = \"1 ether\"\n", "rules[0].max_value"),
        ("[[rules]]\nname = \"d\"\naction = \"deny\"\nallow_unlimited_approval = true\n", "rules[0].allow_unlimited_approval"),
        ("[[rules]]\nname = \"c\"\ncreate = true\nto = [\"0x00000000000000000000000000000000000a11ce\"]\n", "rules[0].create"),
        ("tx_types = []\n", "tx_types"),
        ("tx_types = [5]\n", "tx_types"),
        ("[[rules]]\nname = \"evm.max_value\"\n", "rules[0].name"),
        ("[[rules]]\nname = \"policy.limits\"\n", "rules[0].name"),
        ("[[rules]]\nname = \"kill_switch\"\n", "rules[0].name"),
        ("[[velocity]]\nname = \"evm.velocity\"\nasset = \"tx\"\nmax = \"1\"\nwindow = \"1h\"\n", "velocity[0].name"),
        ("[[messages]]\nname = \"admin.x\"\npattern = \"a\"\n", "messages[0].name"),
        ("[[typed_data]]\nname = \"approval.x\"\n", "typed_data[0].name"),
    ] {
        let e = policy(rules).expect_err(rules);
        assert!(e.contains(needle), "{rules}: {e}");
    }
    // Negative control: the same shapes with allowed names and conditions load.
    for rules in [
        "[[rules]]\nname = \"d\"\naction = \"deny\"\n",
        "[[rules]]\nname = \"my.evm.rule\"\n",
        "tx_types = [0, 1, 2, 3, 4]\n",
    ] {
        policy(rules).unwrap_or_else(|e| panic!("{rules}: {e}"));
    }
}

/// The dry run names the rule the refusal names: token limits under their own names, a failed
/// rule list under the closest rule or `evm.no_rule`, never a placeholder.
#[test]
fn the_dry_run_and_the_refusal_name_the_same_rule() {
    let p = policy(
        "[[tokens]]\ntoken = \"USDC\"\nmax_transfer = \"500 USDC\"\n\
         [[rules]]\nname = \"usdc\"\nchain_ids = [1]\nto = [\"USDC\"]\nabi = \"erc20\"\n\
         [[rules]]\nname = \"only-y\"\nto = [\"0x00000000000000000000000000000000000a11ce\"]\n",
    )
    .unwrap();
    let usdc = address!("0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48");
    let rows = vec![
        (
            "over the token limit".into(),
            tx(
                TYPES[2],
                1,
                Some(usdc),
                U256::ZERO,
                &transfer(Y, 501_000_000),
            ),
            refused("evm.token_max_transfer", "input.amount"),
        ),
        (
            "no rule covers X".into(),
            tx(TYPES[2], 1, Some(X), U256::ZERO, &[]),
            refused("evm.no_rule", "to"),
        ),
        (
            "closest rule".into(),
            tx(TYPES[2], 1, Some(Y), U256::ZERO, &[1, 2, 3, 4]),
            refused("only-y", "input"),
        ),
        (
            "within".into(),
            tx(
                TYPES[2],
                1,
                Some(usdc),
                U256::ZERO,
                &transfer(Y, 500_000_000),
            ),
            ok("usdc"),
        ),
    ];
    for (_, t, _) in &rows {
        let (trace, _) = p.explain(t, NOW);
        for o in &trace {
            assert!(
                !["evm.token_limits", "evm.rules"].contains(&o.rule.as_str()),
                "placeholder {} in the trace",
                o.rule
            );
        }
    }
    run("dry run names", &p, rows);
}
