//! The shared time-window shape on Ethereum: the case table of `keyguard_chain::window::cases`
//! run through the real policy, both as the key's `time_window` (rule `evm.time_window`) and
//! as a rule's own `days`/`hours`/`utc_offset` (the rule's name), field `time` either way.

use alloy_primitives::{address, Address, U256};
use keyguard_chain::window::cases::{at, INVALID, SAME_MEANING};
use keyguard_chain::Rejection;
use serde_json::json;

use crate::{decode_sign_transaction_params, EvmPolicy, TxIntent};

const ALICE: Address = address!("0x00000000000000000000000000000000000a11ce");
const BASE: &str =
    "chain_ids = [1]\nto = \"any\"\nmax_value = \"1 ether\"\nmax_fee_per_gas = \"1\"\n\
                    max_priority_fee_per_gas = \"1\"\nmax_fee_per_blob_gas = \"1\"\n";

fn transfer() -> TxIntent {
    let v = json!({
        "from": "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf", "to": ALICE, "gas": "0x5208",
        "nonce": "0x1", "chainId": "0x1", "value": format!("{:#x}", U256::from(1)), "input": "0x",
        "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1",
    });
    decode_sign_transaction_params(&json!([v])).unwrap()
}

fn load(text: &str) -> Result<EvmPolicy, String> {
    let p: EvmPolicy = toml::from_str(text).map_err(|e| e.to_string())?;
    p.prepare(std::path::Path::new("."))?;
    Ok(p)
}

/// The key's window, and the same window on an allow rule (inner fields of the inline table).
fn policies(window: &str) -> [(Result<EvmPolicy, String>, &'static str); 2] {
    let inner = window.trim().trim_start_matches('{').trim_end_matches('}');
    [
        (
            load(&format!("{BASE}time_window = {window}\n")),
            "evm.time_window",
        ),
        (
            load(&format!(
                "{BASE}rules = [{{ name = \"office\", to = [\"{ALICE}\"], {inner} }}]\n"
            )),
            "office",
        ),
    ]
}

#[test]
fn both_window_forms_mean_the_same_on_ethereum() {
    let t = transfer();
    for (window, now, signs) in SAME_MEANING {
        for (p, rule) in policies(window) {
            let p = p.unwrap_or_else(|e| panic!("{window}: {e}"));
            match (p.decide(&t, *now), signs) {
                (Ok(_), true) => {}
                (Err(Rejection::Policy { rule: r, field, .. }), false) => {
                    assert_eq!((r, field.as_str()), (rule, "time"), "{window} at {now}")
                }
                (other, _) => panic!("{window} ({rule}) at {now}: {other:?}"),
            }
        }
    }
}

#[test]
fn the_refusal_says_the_local_time_and_the_window() {
    let [(p, _), (r, _)] =
        policies(r#"{ days = ["mon"], hours = "08:00-18:00", utc_offset = "+01:00" }"#);
    for p in [p.unwrap(), r.unwrap()] {
        match p.decide(&transfer(), at(0, 17, 30)) {
            Err(Rejection::Policy { reason, .. }) => {
                assert!(reason.contains("mon 18:30 (UTC+01:00)"), "{reason}");
                assert!(reason.contains("08:00-18:00"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Control: an hour earlier is inside.
        assert!(p.decide(&transfer(), at(0, 16, 30)).is_ok());
    }
}

#[test]
fn an_invalid_window_is_a_load_error_naming_the_key() {
    for (window, key) in INVALID {
        for (p, where_) in policies(window) {
            let e = p.expect_err(window);
            assert!(e.contains(key), "{window} as {where_}: {e}");
        }
    }
    // Control: a rule's window error also names the rule.
    let [_, (r, _)] = policies("{ hours = [8, 25] }");
    assert!(r.unwrap_err().contains("rules[0].hours"));
}
