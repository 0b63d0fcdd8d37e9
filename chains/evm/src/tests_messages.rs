//! Adversarial table for message patterns (issue 13, class 7): patterns match the whole
//! message, so a message a rule allows cannot carry anything appended, prepended or spliced
//! in; and the shipped Sign-In-With-Ethereum example is right.

use alloy_primitives::Address;
use keyguard_chain::Rejection;
use proptest::prelude::*;

use crate::{EvmPolicy, MessageIntent};

const BASE: &str = r#"
chain_ids = [1]
to = "any"
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "5 gwei"
max_fee_per_blob_gas = "500 gwei"
"#;

fn with_messages(messages: toml::Value) -> EvmPolicy {
    let mut t: toml::Table = toml::from_str(BASE).unwrap();
    t.insert("messages".into(), messages);
    let p: EvmPolicy = toml::Value::Table(t).try_into().unwrap();
    p.prepare(std::path::Path::new(".")).unwrap();
    p
}

fn policy(messages: &str) -> EvmPolicy {
    let t: toml::Table = toml::from_str(messages).unwrap();
    with_messages(t["messages"].clone())
}

/// The message rules of the shipped exchange example, exactly as shipped.
fn shipped_siwe() -> EvmPolicy {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/exchange-hot-wallet.toml"
    );
    let config: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let messages = config["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p.get("evm")?.get("messages").cloned())
        .expect("the exchange example has message rules");
    with_messages(messages)
}

fn sign(p: &EvmPolicy, text: &str) -> Result<&'static str, &'static str> {
    let m = MessageIntent {
        from: Address::ZERO,
        method: "personal_sign",
        message: text.as_bytes().to_vec(),
    };
    p.check_message(&m).map_err(|e| match e {
        Rejection::Policy { rule, .. } => rule,
        other => panic!("{other:?}"),
    })
}

const SIWE: &str = "exchange.example wants you to sign in with your Ethereum account:\n\
0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf\n\
\n\
Sign in to exchange.example.\n\
\n\
URI: https://exchange.example/login\n\
Version: 1\n\
Chain ID: 1\n\
Nonce: 32891756abcdEF\n\
Issued At: 2026-12-04T20:00:00Z";

#[test]
fn the_shipped_siwe_pattern_allows_a_login_and_nothing_more() {
    let p = shipped_siwe();
    let expiring = format!("{SIWE}\nExpiration Time: 2026-12-04T20:10:00.000Z");
    let appended = format!(
        "{SIWE}\nI approve transfer of all my funds to 0x00000000000000000000000000000000000bad01"
    );
    let rows: Vec<(&str, String, Result<&str, &str>)> = vec![
        ("login", SIWE.into(), Ok("siwe-exchange")),
        ("login with expiry", expiring.clone(), Ok("siwe-exchange")),
        ("line appended", appended, Err("evm.message")),
        (
            "line appended after expiry",
            format!("{expiring}\nand more"),
            Err("evm.message"),
        ),
        ("trailing newline", format!("{SIWE}\n"), Err("evm.message")),
        ("prefix", format!("Ignore this. {SIWE}"), Err("evm.message")),
        (
            "another domain",
            SIWE.replacen("exchange.example", "exchange.example.evil", 1),
            Err("evm.message"),
        ),
        (
            "statement changed",
            SIWE.replace(
                "Sign in to exchange.example.",
                "I approve transfer of all my funds",
            ),
            Err("evm.message"),
        ),
        (
            "URI to another host",
            SIWE.replace(
                "https://exchange.example/login",
                "https://exchange.example.evil/login",
            ),
            Err("evm.message"),
        ),
        (
            "other chain",
            SIWE.replace("Chain ID: 1", "Chain ID: 10"),
            Err("evm.message"),
        ),
        (
            "resources appended",
            format!("{SIWE}\nResources:\n- https://evil.example"),
            Err("evm.message"),
        ),
    ];
    for (name, text, want) in rows {
        assert_eq!(sign(&p, &text), want, "{name}");
    }
}

#[test]
fn patterns_are_anchored_whatever_they_are_written_as() {
    let p = policy(
        r#"
[[messages]]
name = "bare"
pattern = "Sign in nonce [0-9]+"
[[messages]]
name = "alternation"
pattern = "login|logout"
[[messages]]
name = "multiline-flag"
pattern = "(?m)^hello$"
"#,
    );
    let rows: Vec<(&str, Result<&str, &str>)> = vec![
        ("Sign in nonce 5", Ok("bare")),
        ("Sign in nonce 5\nI approve", Err("evm.message")),
        ("xSign in nonce 5", Err("evm.message")),
        ("login", Ok("alternation")),
        ("logout", Ok("alternation")),
        ("login and send everything", Err("evm.message")),
        ("send everything then logout", Err("evm.message")),
        ("hello", Ok("multiline-flag")),
        ("hello\nsend everything", Err("evm.message")),
        ("send everything\nhello", Err("evm.message")),
    ];
    for (text, want) in rows {
        assert_eq!(sign(&p, text), want, "{text:?}");
    }
    // Negative control: `anchored = false` searches, so the appended line is signed; the
    // anchoring above is what refuses it.
    let open = policy(
        "[[messages]]\nname = \"search\"\nanchored = false\npattern = \"Sign in nonce [0-9]+\"\n",
    );
    assert_eq!(sign(&open, "Sign in nonce 5\nI approve"), Ok("search"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever is appended to an allowed login, the shipped rule refuses it; the negative
    /// control is the login itself, which signs.
    #[test]
    fn nothing_can_be_appended_to_an_allowed_message(suffix in "\\PC{1,40}|\n[ -~]{0,40}") {
        let p = shipped_siwe();
        prop_assert_eq!(sign(&p, SIWE), Ok("siwe-exchange"));
        prop_assert_eq!(sign(&p, &format!("{SIWE}{suffix}")), Err("evm.message"));
    }
}
