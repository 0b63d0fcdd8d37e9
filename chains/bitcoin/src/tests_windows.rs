//! The shared time-window shape on Bitcoin: the case table of `keyguard_chain::window::cases`
//! run through the real policy (rule `bitcoin.time_window`, field `time`), the same table the
//! Ethereum tests run.

use keyguard_chain::window::cases::{INVALID, SAME_MEANING};
use keyguard_chain::Rejection;

use crate::testkit::{build_psbt, foreign_script, to_base64, OurInput};
use crate::tests::{policy, wallet};
use crate::wallet::ScriptKind;
use crate::{decode, BitcoinPolicy};

fn spend() -> crate::SpendIntent {
    let tw = wallet();
    let psbt = build_psbt(
        &tw,
        &[OurInput {
            kind: ScriptKind::P2wpkh,
            index: 1,
            sat: 100_000,
        }],
        &[(foreign_script(9), 60_000)],
        Some((ScriptKind::P2wpkh, 0, 39_000)),
    );
    decode(&to_base64(&psbt), &tw.wallet).expect("decodes")
}

#[test]
fn both_window_forms_mean_the_same_on_bitcoin() {
    let intent = spend();
    for (window, now, signs) in SAME_MEANING {
        let p = policy(&format!("time_window = {window}"));
        match (p.check(&intent, *now), signs) {
            (Ok(()), true) => {}
            (Err(Rejection::Policy { rule, field, .. }), false) => {
                assert_eq!(
                    (rule, field.as_str()),
                    ("bitcoin.time_window", "time"),
                    "{window} at {now}"
                )
            }
            (other, _) => panic!("{window} at {now}: {other:?}"),
        }
    }
}

#[test]
fn an_invalid_window_is_a_load_error_naming_the_key() {
    for (window, key) in INVALID {
        let text = format!(
            "network = \"regtest\"\ndestinations = \"any\"\nmax_spend_per_tx = \"1 btc\"\n\
             max_fee = \"0.001 btc\"\nmax_feerate_sat_vb = 200\ntime_window = {window}\n"
        );
        let e = toml::from_str::<BitcoinPolicy>(&text)
            .expect_err(window)
            .to_string();
        assert!(e.contains(key), "{window}: {e}");
    }
    // Control: the same base text with a valid window loads.
    policy(r#"time_window = { hours = "08:00-18:00", utc_offset = "+01:00" }"#);
}
