//! Table-driven tests of the rule engine: every rule kind, with the boundary value of each limit
//! (exactly at the limit signs, one unit over is refused by the named rule and field).

use alloy_dyn_abi::{DynSolValue, JsonAbiExt};
use alloy_primitives::{address, Address, U256};
use keyguard_chain::Rejection;
use serde_json::{json, Value};

use crate::abi::Abi;
use crate::{decode_sign_transaction_params, EvmPolicy, TxIntent};

const FROM: &str = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf";
const USDC: Address = address!("0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48");
const ALICE: Address = address!("0x00000000000000000000000000000000000a11ce");
const BOB: Address = address!("0x0000000000000000000000000000000000000b0b");
const INBOX: Address = address!("0xff00000000000000000000000000000000000010");
/// 2026-11-26 (a Thursday) 12:00 UTC.
const THURSDAY_NOON: u64 = 1_795_694_400_000;

const POLICY: &str = r#"
chain_ids = [1, 31337]
to = "any"
max_value = "10 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
max_gas = 1000000
max_calldata_bytes = 4096
max_blobs = 2

[[rules]]
name = "deny-bob"
action = "deny"
to = ["0x0000000000000000000000000000000000000b0b"]

[[rules]]
name = "pay-alice"
to = ["0x00000000000000000000000000000000000a11ce"]
max_value = "1 ether"

[[rules]]
name = "usdc-transfer"
chain_ids = [1]
to = ["USDC"]
abi = "erc20"
functions = ["transfer", "approve"]
args.to = { one_of = ["0x00000000000000000000000000000000000a11ce", "0x0000000000000000000000000000000000000b0b"] }
args.amount = { max = "1000 USDC" }

[[rules]]
name = "usdc-approve-router"
chain_ids = [1]
to = ["USDC"]
abi = "erc20"
functions = ["approve"]
args.spender = { eq = "0x00000000000000000000000000000000000a11ce" }

[[rules]]
name = "batch-inbox"
to = ["0xff00000000000000000000000000000000000010"]
calldata = "any"
days = ["mon", "tue", "wed", "thu", "fri"]
hours = [8, 18]

[[tokens]]
token = "USDC"
max_transfer = "500 USDC"
max_approval = "2000 USDC"

[[velocity]]
name = "eth-daily"
asset = "ETH"
max = "2"
window = "24h"

[[velocity]]
name = "tx-hourly"
asset = "tx"
max = "50"
window = "1h"

[[velocity]]
name = "usdc-per-recipient"
asset = "USDC"
max = "400"
window = "24h"
per_destination = true
"#;

fn policy() -> EvmPolicy {
    let p: EvmPolicy = toml::from_str(POLICY).unwrap();
    p.prepare(std::path::Path::new(".")).unwrap();
    p
}

fn erc20_call(function: &str, args: &[DynSolValue]) -> String {
    let abi = Abi::builtin("erc20").unwrap();
    let _ = abi;
    let json: alloy_json_abi::JsonAbi = serde_json::from_str(crate::abi::ERC20_JSON).unwrap();
    let f = &json.function(function).unwrap()[0];
    format!("0x{}", hex::encode(f.abi_encode_input(args).unwrap()))
}

fn usdc(units: u64) -> U256 {
    U256::from(units) * U256::from(1_000_000u64)
}

fn tx(chain: u64, to: Address, value: U256, input: &str, extra: Value) -> TxIntent {
    let mut v = json!({
        "from": FROM, "to": to, "gas": "0x5208", "nonce": "0x1",
        "chainId": format!("{chain:#x}"), "value": format!("{value:#x}"), "input": input,
        "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1",
    });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    decode_sign_transaction_params(&json!([v])).unwrap()
}

fn eth(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18))
}

fn outcome(p: &EvmPolicy, t: &TxIntent, now: u64) -> Result<&'static str, (String, String)> {
    match p.decide(t, now) {
        Ok(d) => Ok(d.allowed_by),
        Err(Rejection::Policy { rule, field, .. }) => Err((rule.to_string(), field)),
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[test]
fn every_rule_kind_at_and_over_its_boundary() {
    let p = policy();
    let transfer = |to, amount| {
        erc20_call(
            "transfer",
            &[DynSolValue::Address(to), DynSolValue::Uint(amount, 256)],
        )
    };
    let approve = |to, amount| {
        erc20_call(
            "approve",
            &[DynSolValue::Address(to), DynSolValue::Uint(amount, 256)],
        )
    };
    let none = json!({});
    type Case = (
        &'static str,
        TxIntent,
        Result<&'static str, (&'static str, &'static str)>,
    );
    let cases: Vec<Case> = vec![
        (
            "native at rule max",
            tx(1, ALICE, eth(1), "0x", none.clone()),
            Ok("pay-alice"),
        ),
        (
            "native over rule max",
            tx(1, ALICE, eth(1) + U256::from(1), "0x", none.clone()),
            Err(("pay-alice", "value")),
        ),
        (
            "plain transfer with calldata",
            tx(1, ALICE, U256::ZERO, "0x01", none.clone()),
            Err(("pay-alice", "input")),
        ),
        (
            "deny rule wins",
            tx(1, BOB, U256::from(1), "0x", none.clone()),
            Err(("deny-bob", "to")),
        ),
        (
            "unknown destination",
            tx(
                1,
                address!("0x0000000000000000000000000000000000000123"),
                U256::from(1),
                "0x",
                none.clone(),
            ),
            Err(("evm.no_rule", "to")),
        ),
        (
            "usdc transfer at token max",
            tx(
                1,
                USDC,
                U256::ZERO,
                &transfer(ALICE, usdc(400)),
                none.clone(),
            ),
            Ok("usdc-transfer"),
        ),
        (
            "usdc transfer over token max",
            tx(
                1,
                USDC,
                U256::ZERO,
                &transfer(ALICE, usdc(500) + U256::from(1)),
                none.clone(),
            ),
            Err(("evm.token_max_transfer", "input.amount")),
        ),
        (
            "usdc transfer to non-listed",
            tx(1, USDC, U256::ZERO, &transfer(INBOX, usdc(1)), none.clone()),
            Err(("usdc-transfer", "input.to")),
        ),
        (
            "usdc on a chain the rule does not cover",
            tx(
                31337,
                USDC,
                U256::ZERO,
                &transfer(ALICE, usdc(1)),
                none.clone(),
            ),
            Err(("evm.no_rule", "to")),
        ),
        (
            "usdc approve within both rules (the first wins)",
            tx(
                1,
                USDC,
                U256::ZERO,
                &approve(ALICE, usdc(400)),
                none.clone(),
            ),
            Ok("usdc-transfer"),
        ),
        (
            // Allowed by usdc-approve-router, then refused because approvals count toward
            // velocity like transfers (docs/evm-movement.md).
            "usdc approve to the router, over the spender's velocity",
            tx(
                1,
                USDC,
                U256::ZERO,
                &approve(ALICE, usdc(2000)),
                none.clone(),
            ),
            Err(("evm.velocity", "input.amount")),
        ),
        (
            "usdc approve to another spender (args.to binds transfer only)",
            tx(1, USDC, U256::ZERO, &approve(BOB, usdc(1)), none.clone()),
            Ok("usdc-transfer"),
        ),
        (
            "usdc approve over token approval max",
            tx(
                1,
                USDC,
                U256::ZERO,
                &approve(ALICE, usdc(2000) + U256::from(1)),
                none.clone(),
            ),
            Err(("evm.token_max_approval", "input.amount")),
        ),
        (
            "unlimited approval refused",
            tx(
                1,
                USDC,
                U256::ZERO,
                &approve(ALICE, U256::MAX),
                none.clone(),
            ),
            Err(("evm.unlimited_approval", "input.amount")),
        ),
        (
            "function not listed",
            tx(
                1,
                USDC,
                U256::ZERO,
                &erc20_call(
                    "transferFrom",
                    &[
                        DynSolValue::Address(ALICE),
                        DynSolValue::Address(ALICE),
                        DynSolValue::Uint(U256::from(1), 256),
                    ],
                ),
                none.clone(),
            ),
            Err(("usdc-transfer", "input")),
        ),
        (
            "trailing byte refused",
            tx(
                1,
                USDC,
                U256::ZERO,
                &(transfer(ALICE, usdc(1)) + "00"),
                none.clone(),
            ),
            // A movement selector that is not its exact encoding, whatever rule would match.
            Err(("evm.movement_undecodable", "input")),
        ),
        (
            "wrong selector refused",
            tx(1, USDC, U256::ZERO, "0xdeadbeef", none.clone()),
            Err(("usdc-transfer", "input")),
        ),
        (
            "batch inbox in window",
            tx(1, INBOX, U256::ZERO, "0x00aabb", none.clone()),
            Ok("batch-inbox"),
        ),
        (
            "max gas at cap",
            tx(1, ALICE, U256::ZERO, "0x", json!({"gas": "0xf4240"})),
            Ok("pay-alice"),
        ),
        (
            "max gas over cap",
            tx(1, ALICE, U256::ZERO, "0x", json!({"gas": "0xf4241"})),
            Err(("evm.max_gas", "gas")),
        ),
        (
            "calldata at cap",
            tx(
                1,
                INBOX,
                U256::ZERO,
                &format!("0x{}", "ab".repeat(4096)),
                none.clone(),
            ),
            Ok("batch-inbox"),
        ),
        (
            "calldata over cap",
            tx(
                1,
                INBOX,
                U256::ZERO,
                &format!("0x{}", "ab".repeat(4097)),
                none.clone(),
            ),
            Err(("evm.max_calldata_bytes", "input")),
        ),
        (
            "velocity single tx over window max",
            tx(1, ALICE, eth(3), "0x", none.clone()),
            Err(("pay-alice", "value")),
        ),
    ];
    for (name, t, want) in cases {
        let got = outcome(&p, &t, THURSDAY_NOON);
        let want = want.map_err(|(r, f)| (r.to_string(), f.to_string()));
        assert_eq!(got, want, "case {name}");
    }
}

#[test]
fn blobs_and_time_windows() {
    let p = policy();
    let hash = format!("0x01{}", "ab".repeat(31));
    let blobs =
        |n: usize| json!({"blobVersionedHashes": vec![hash.clone(); n], "maxFeePerBlobGas": "0x1"});
    let t2 = tx(1, INBOX, U256::ZERO, "0x", blobs(2));
    let t3 = tx(1, INBOX, U256::ZERO, "0x", blobs(3));
    assert_eq!(outcome(&p, &t2, THURSDAY_NOON), Ok("batch-inbox"));
    assert_eq!(
        outcome(&p, &t3, THURSDAY_NOON),
        Err(("evm.max_blobs".into(), "blobVersionedHashes".into()))
    );
    // 18:00 is outside [8, 18); 17:59 inside; Saturday outside.
    let inbox = tx(1, INBOX, U256::ZERO, "0x", json!({}));
    assert_eq!(
        outcome(&p, &inbox, THURSDAY_NOON + 6 * 3_600_000 - 60_000),
        Ok("batch-inbox")
    );
    assert_eq!(
        outcome(&p, &inbox, THURSDAY_NOON + 6 * 3_600_000),
        Err(("batch-inbox".into(), "time".into()))
    );
    assert_eq!(
        outcome(&p, &inbox, THURSDAY_NOON + 2 * 86_400_000),
        Err(("batch-inbox".into(), "time".into()))
    );
}

#[test]
fn velocity_debits_count_value_tokens_and_transactions() {
    let p = policy();
    let d = p
        .decide(&tx(1, ALICE, eth(1), "0x", json!({})), THURSDAY_NOON)
        .unwrap();
    let names: Vec<_> = d
        .debits
        .iter()
        .map(|d| (d.counter.as_str(), d.amount))
        .collect();
    assert_eq!(
        names,
        vec![("eth-daily", eth(1)), ("tx-hourly", U256::from(1))]
    );
    assert_eq!(d.debits[0].max, eth(2));
    let transfer = erc20_call(
        "transfer",
        &[
            DynSolValue::Address(ALICE),
            DynSolValue::Uint(usdc(400), 256),
        ],
    );
    let d = p
        .decide(
            &tx(1, USDC, U256::ZERO, &transfer, json!({})),
            THURSDAY_NOON,
        )
        .unwrap();
    assert_eq!(
        d.debits[1].counter,
        format!("usdc-per-recipient@{ALICE:#x}")
    );
    assert_eq!(d.debits[1].amount, usdc(400));
    assert_eq!(d.token.unwrap().amount, usdc(400));
}

#[test]
fn legacy_policies_without_rules_still_allow_within_limits() {
    let p: EvmPolicy = toml::from_str(
        r#"chain_ids = [1]
           to = "any"
           max_value = "1 ether"
           max_fee_per_gas = "1 gwei"
           max_priority_fee_per_gas = "1 gwei"
           max_fee_per_blob_gas = "1 gwei"
        "#,
    )
    .unwrap();
    assert_eq!(
        outcome(&p, &tx(1, BOB, eth(1), "0x", json!({})), 0),
        Ok("policy.limits")
    );
    // Unlimited approvals are refused even by a policy with no rule list.
    let approve = erc20_call(
        "approve",
        &[
            DynSolValue::Address(ALICE),
            DynSolValue::Uint(U256::MAX, 256),
        ],
    );
    assert_eq!(
        outcome(&p, &tx(1, USDC, U256::ZERO, &approve, json!({})), 0),
        Err(("evm.unlimited_approval".into(), "input.amount".into()))
    );
}

#[test]
fn the_dry_run_reports_every_rule() {
    let p = policy();
    let (trace, r) = p.explain(&tx(1, BOB, U256::from(1), "0x", json!({})), THURSDAY_NOON);
    assert!(r.is_err());
    let rules: Vec<_> = trace.iter().map(|o| (o.rule.as_str(), o.outcome)).collect();
    assert!(rules.contains(&("evm.chain_id", "pass")));
    assert!(rules.contains(&("deny-bob", "deny")));
    assert!(rules.contains(&("usdc-transfer", "skip")));
}

#[test]
fn config_mistakes_are_load_errors() {
    let bad = [
        ("abi = \"nope\"", "unknown ABI"),
        ("abi = \"erc20\"\nfunctions = [\"mint\"]", "not in ABI"),
        ("args.x = { max = \"1\" }", "need an abi"),
        ("to = [\"NOTATOKEN\"]", "not the native asset"),
        ("hours = [8, 8]", "hours"),
        ("hours = [8, 25]", "hours"),
        (
            "to = [\"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD\"]",
            "checksum",
        ),
        (
            "abi = \"erc20\"\nfunctions = [\"transfer\"]\nargs.spender = { eq = \"0x00\" }",
            "no function of the rule has an argument",
        ),
    ];
    for (rule, want) in bad {
        let text = format!(
            "chain_ids = [1]\nto = \"any\"\nmax_value = \"1\"\nmax_fee_per_gas = \"1\"\n\
             max_priority_fee_per_gas = \"1\"\nmax_fee_per_blob_gas = \"1\"\n\
             [[rules]]\nname = \"r\"\n{rule}\n"
        );
        let p: EvmPolicy = toml::from_str(&text).unwrap();
        let e = p.prepare(std::path::Path::new(".")).unwrap_err();
        assert!(e.contains(want), "{rule}: {e}");
    }
}

#[test]
fn abi_and_profile_files_must_be_regular_files() {
    let text = "chain_ids = [1]\nto = \"any\"\nmax_value = \"1\"\nmax_fee_per_gas = \"1\"\n\
                max_priority_fee_per_gas = \"1\"\nmax_fee_per_blob_gas = \"1\"\n\
                abis = { z = \"/dev/zero\" }\n";
    let p: EvmPolicy = toml::from_str(text).unwrap();
    let e = p.prepare(std::path::Path::new(".")).unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
fn exact_decoding_refuses_dirty_padding() {
    let abi = Abi::builtin("erc20").unwrap();
    let good = erc20_call(
        "transfer",
        &[
            DynSolValue::Address(ALICE),
            DynSolValue::Uint(U256::from(5), 256),
        ],
    );
    let mut bytes = hex::decode(&good[2..]).unwrap();
    assert!(abi.decode(&bytes).is_ok());
    bytes[4] = 0x01; // a dirty high byte in the address word
    assert!(abi.decode(&bytes).is_err());
    assert!(abi.decode(&bytes[..10]).is_err());
}
