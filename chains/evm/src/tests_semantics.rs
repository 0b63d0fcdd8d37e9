//! Adversarial policy tables (issue 13, classes 1, 2 and 6): each row is a hostile request, the
//! policy it runs under and the rule (and field) that must refuse it, or the rule that allows
//! it. Variants cover every transaction type, calldata shapes (none, exact, trailing bytes,
//! dirty, garbage), value with calldata, contract creation and chain ids. Property tests state
//! the universal claims with a negative control each.

use alloy_dyn_abi::{DynSolValue, JsonAbiExt};
use alloy_primitives::{address, Address, U256};
use keyguard_chain::Rejection;
use proptest::prelude::*;
use serde_json::json;

use crate::{decode_sign_transaction_params, EvmPolicy, TxIntent};

const FROM: &str = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf";
pub(crate) const X: Address = address!("0x00000000000000000000000000000000000bad01");
pub(crate) const Y: Address = address!("0x00000000000000000000000000000000000a11ce");
const VAULT: Address = address!("0x000000000000000000000000000000000000fa17");
const DELEGATE: &str = "0x1111111111111111111111111111111111111111";
pub(crate) const NOW: u64 = 1_795_694_400_000;

/// Fixed limits shared by every table: wide, so the rules under test decide.
const BASE: &str = r#"
chain_ids = [1, 10]
to = "any"
max_value = "10 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "5 gwei"
max_fee_per_blob_gas = "500 gwei"
contract_creation = true
delegations = ["0x1111111111111111111111111111111111111111"]
"#;

pub(crate) const GWEI: u64 = 1_000_000_000;

pub(crate) fn milli_eth(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(15))
}

/// A vault ABI: `deposit()` is payable, `withdraw(uint256)` is not.
const VAULT_ABI: &str = r#"[
 {"type":"function","name":"deposit","stateMutability":"payable","inputs":[],"outputs":[]},
 {"type":"function","name":"withdraw","stateMutability":"nonpayable",
  "inputs":[{"name":"amount","type":"uint256"}],"outputs":[]}
]"#;

pub(crate) fn policy(rules: &str) -> Result<EvmPolicy, String> {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("keyguard-sem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vault.json"), VAULT_ABI).unwrap();
        dir
    });
    let text = format!("{BASE}\nabis = {{ vault = \"vault.json\" }}\n{rules}");
    let p: EvmPolicy = toml::from_str(&text).map_err(|e| e.to_string())?;
    p.prepare(dir)?;
    Ok(p)
}

fn call(abi: &str, function: &str, args: &[DynSolValue]) -> Vec<u8> {
    let json: alloy_json_abi::JsonAbi = serde_json::from_str(abi).unwrap();
    json.function(function).unwrap()[0]
        .abi_encode_input(args)
        .unwrap()
}

pub(crate) fn transfer(to: Address, amount: u64) -> Vec<u8> {
    call(
        crate::abi::ERC20_JSON,
        "transfer",
        &[
            DynSolValue::Address(to),
            DynSolValue::Uint(U256::from(amount), 256),
        ],
    )
}

fn approve(spender: Address, amount: U256) -> Vec<u8> {
    call(
        crate::abi::ERC20_JSON,
        "approve",
        &[
            DynSolValue::Address(spender),
            DynSolValue::Uint(amount, 256),
        ],
    )
}

/// Transaction type and its fee fields.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ty {
    Legacy(u64),
    AccessList(u64),
    /// `(maxFeePerGas, maxPriorityFeePerGas)`.
    Dynamic(u64, u64),
    Blob(u64, u64),
    SetCode(u64, u64),
}

pub(crate) const TYPES: [Ty; 5] = [
    Ty::Legacy(GWEI),
    Ty::AccessList(GWEI),
    Ty::Dynamic(2 * GWEI, GWEI),
    Ty::Blob(2 * GWEI, GWEI),
    Ty::SetCode(2 * GWEI, GWEI),
];

/// A transaction of type `ty` on `chain` to `to` (`None`: creation).
pub(crate) fn tx(ty: Ty, chain: u64, to: Option<Address>, value: U256, input: &[u8]) -> TxIntent {
    let mut v = json!({
        "from": FROM, "gas": "0x30000", "nonce": "0x1", "chainId": format!("{chain:#x}"),
        "value": format!("{value:#x}"), "input": format!("0x{}", hex::encode(input)),
    });
    if let Some(to) = to {
        v["to"] = json!(to);
    }
    let hexq = |n: u64| json!(format!("{n:#x}"));
    let extra = match ty {
        Ty::Legacy(p) => json!({"gasPrice": hexq(p)}),
        Ty::AccessList(p) => json!({"gasPrice": hexq(p), "accessList": []}),
        Ty::Dynamic(f, t) => json!({"maxFeePerGas": hexq(f), "maxPriorityFeePerGas": hexq(t)}),
        Ty::Blob(f, t) => json!({"maxFeePerGas": hexq(f), "maxPriorityFeePerGas": hexq(t),
            "maxFeePerBlobGas": "0x1", "blobVersionedHashes": [format!("0x01{}", "ab".repeat(31))]}),
        Ty::SetCode(f, t) => json!({"maxFeePerGas": hexq(f), "maxPriorityFeePerGas": hexq(t),
            "authorizationList": [{"chainId": format!("{chain:#x}"), "address": DELEGATE,
            "nonce": "0x0", "yParity": "0x1", "r": "0x1234", "s": "0x5678"}]}),
    };
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    decode_sign_transaction_params(&json!([v])).unwrap_or_else(|e| panic!("{ty:?}: {e}"))
}

/// `Ok(allowing rule)` or `Err((rule, field))`.
pub(crate) type Outcome = Result<String, (String, String)>;

pub(crate) fn outcome(p: &EvmPolicy, t: &TxIntent) -> Outcome {
    match p.decide(t, NOW) {
        Ok(d) => Ok(d.allowed_by.to_string()),
        Err(Rejection::Policy { rule, field, .. }) => Err((rule.to_string(), field)),
        Err(e) => panic!("unexpected {e:?}"),
    }
}

pub(crate) fn ok(rule: &str) -> Outcome {
    Ok(rule.into())
}

pub(crate) fn refused(rule: &str, field: &str) -> Outcome {
    Err((rule.into(), field.into()))
}

/// Runs a table; every row also runs through the dry run, which must name the same rule.
pub(crate) fn run(table: &str, p: &EvmPolicy, rows: Vec<(String, TxIntent, Outcome)>) {
    let mut failures = Vec::new();
    for (name, t, want) in &rows {
        let got = outcome(p, t);
        let any_refusal = want.as_ref().is_err_and(|(r, _)| r == "*");
        if any_refusal && got.is_ok() || !any_refusal && got != *want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
        let (trace, dry) = p.explain(t, NOW);
        let dry = dry.map(|d| d.allowed_by.to_string()).map_err(|e| match e {
            Rejection::Policy { rule, field, .. } => (rule.to_string(), field),
            other => panic!("{other:?}"),
        });
        if dry != got {
            failures.push(format!("{name}: dry run {dry:?} differs from {got:?}"));
        }
        if let Err((rule, _)) = &got {
            if !trace.iter().any(|o| o.rule == *rule && o.outcome == "fail") {
                failures.push(format!("{name}: trace does not name {rule} as failing"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{table}: {} of {} rows wrong:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// An ERC-20 movement selector whose arguments do not decode exactly. Issue 13 item 3 (another
/// branch) refuses these by their own rule, possibly before the rule list: rows with them
/// accept any refusal and make no positive claim.
fn dirty_movement(input: &[u8]) -> bool {
    let abi = crate::abi::Abi::builtin("erc20").unwrap();
    abi.function_of(input).is_some() && abi.decode(input).is_err()
}

/// Asserts the refusal; the rule must be `rule` unless the calldata is a dirty movement.
fn refused_unless_dirty(input: &[u8], rule: &str, field: &str) -> Outcome {
    if dirty_movement(input) {
        Err(("*".into(), "*".into()))
    } else {
        refused(rule, field)
    }
}

/// Calldata shapes a hostile caller puts on a transaction.
fn shapes() -> Vec<(&'static str, Vec<u8>)> {
    let t = transfer(Y, 1_000);
    let mut trailing = t.clone();
    trailing.push(0);
    let mut dirty = approve(Y, U256::from(1));
    dirty[4] = 0xff; // dirty address padding: not exact, still a call to approve
    vec![
        ("no calldata", vec![]),
        ("erc20 transfer", t),
        ("transfer + trailing byte", trailing),
        ("approve dirty padding", dirty),
        ("unknown selector", vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3]),
        ("three bytes", vec![0xa9, 0x05, 0x9c]),
    ]
}

const DENY_RULES: &str = r#"
[[rules]]
name = "deny-x"
action = "deny"
to = ["0x00000000000000000000000000000000000bad01"]

[[rules]]
name = "deny-approve"
action = "deny"
abi = "erc20"
functions = ["approve"]

[[rules]]
name = "deny-plain-to-vault"
action = "deny"
to = ["0x000000000000000000000000000000000000fa17"]
calldata = "none"

[[rules]]
name = "deny-chain-10-creation"
action = "deny"
chain_ids = [10]
create = true

[[rules]]
name = "erc20-anywhere"
abi = "erc20"

[[rules]]
name = "raw-anywhere"
calldata = "any"
max_value = "1 ether"

[[rules]]
name = "create"
create = true
calldata = "any"
"#;

#[test]
fn deny_rules_match_on_what_they_name_and_nothing_else() {
    let p = policy(DENY_RULES).unwrap();
    let mut rows = Vec::new();
    for ty in TYPES {
        for chain in [1, 10] {
            for (shape, input) in shapes() {
                for value in [U256::ZERO, milli_eth(900)] {
                    let at = format!("{ty:?} chain {chain} {shape} value {value}");
                    // Class 1: whatever the transaction carries, deny-x refuses it.
                    rows.push((
                        format!("to X: {at}"),
                        tx(ty, chain, Some(X), value, &input),
                        refused_unless_dirty(&input, "deny-x", "to"),
                    ));
                    // Negative control: the same transaction to Y is allowed (approve aside).
                    let want = if shape == "approve dirty padding" {
                        refused_unless_dirty(&input, "deny-approve", "input")
                    } else if dirty_movement(&input) {
                        continue;
                    } else if input.is_empty() || shape != "erc20 transfer" || !value.is_zero() {
                        ok("raw-anywhere")
                    } else {
                        ok("erc20-anywhere")
                    };
                    rows.push((
                        format!("to Y: {at}"),
                        tx(ty, chain, Some(Y), value, &input),
                        want,
                    ));
                }
            }
        }
    }
    let approve_exact = approve(Y, U256::from(5));
    let mut approve_trailing = approve_exact.clone();
    approve_trailing.extend([0u8; 3]);
    rows.extend([
        (
            "approve exact".into(),
            tx(TYPES[2], 1, Some(Y), U256::ZERO, &approve_exact),
            refused("deny-approve", "input"),
        ),
        (
            "approve + 3 bytes".into(),
            tx(TYPES[0], 1, Some(Y), U256::ZERO, &approve_trailing),
            refused_unless_dirty(&approve_trailing, "deny-approve", "input"),
        ),
        // calldata = "none" is a named condition: the deny covers plain transfers only.
        (
            "plain to vault".into(),
            tx(TYPES[2], 1, Some(VAULT), milli_eth(1), &[]),
            refused("deny-plain-to-vault", "to"),
        ),
        (
            "call to vault".into(),
            tx(TYPES[2], 1, Some(VAULT), milli_eth(1), &[1, 2, 3, 4]),
            ok("raw-anywhere"),
        ),
        // A creation deny on chain 10 only.
        (
            "create chain 10".into(),
            tx(TYPES[2], 10, None, U256::ZERO, &[0x60, 0x00]),
            refused("deny-chain-10-creation", "to"),
        ),
        (
            "create chain 1".into(),
            tx(TYPES[0], 1, None, U256::ZERO, &[0x60, 0x00]),
            ok("create"),
        ),
    ]);
    run("deny", &p, rows);
}

#[test]
fn a_deny_rule_without_destination_covers_creation_and_every_shape() {
    let p = policy(
        "[[rules]]\nname = \"deny-all-on-10\"\naction = \"deny\"\nchain_ids = [10]\n\
         [[rules]]\nname = \"raw\"\ncalldata = \"any\"\n[[rules]]\nname = \"create\"\ncreate = true\ncalldata = \"any\"\n",
    )
    .unwrap();
    let mut rows = Vec::new();
    for ty in [TYPES[0], TYPES[1], TYPES[2]] {
        for (shape, input) in shapes() {
            rows.push((
                format!("{ty:?} {shape} chain 10"),
                tx(ty, 10, Some(Y), U256::ZERO, &input),
                refused_unless_dirty(&input, "deny-all-on-10", "to"),
            ));
            if !dirty_movement(&input) {
                rows.push((
                    format!("{ty:?} {shape} chain 1"),
                    tx(ty, 1, Some(Y), U256::ZERO, &input),
                    ok("raw"),
                ));
            }
        }
        rows.push((
            format!("{ty:?} creation chain 10"),
            tx(ty, 10, None, U256::ZERO, &[0x60]),
            refused("deny-all-on-10", "to"),
        ));
        rows.push((
            format!("{ty:?} creation chain 1"),
            tx(ty, 1, None, U256::ZERO, &[0x60]),
            ok("create"),
        ));
    }
    run("deny without to", &p, rows);
}

const VALUE_RULES: &str = r#"
[[rules]]
name = "vault"
to = ["0x000000000000000000000000000000000000fa17"]
abi = "vault"
max_value = "2 ether"

[[rules]]
name = "pay-capped"
max_value = "0.5 ether"

[[rules]]
name = "erc20-anywhere"
abi = "erc20"

[[rules]]
name = "create-small"
create = true
calldata = "any"
max_value = "0.1 ether"
"#;

#[test]
fn abi_rules_allow_native_value_only_when_they_say_so() {
    let p = policy(VALUE_RULES).unwrap();
    let deposit = call(VAULT_ABI, "deposit", &[]);
    let withdraw = call(
        VAULT_ABI,
        "withdraw",
        &[DynSolValue::Uint(U256::from(1), 256)],
    );
    let mut rows = Vec::new();
    for ty in TYPES {
        let at = format!("{ty:?}");
        let t = |to, value, input: &[u8]| tx(ty, 1, Some(to), value, input);
        rows.extend([
            // The issue's case: 0.9 ETH + transfer calldata to an EOA.
            (
                format!("{at}: 0.9 ETH + transfer to EOA"),
                t(Y, milli_eth(900), &transfer(Y, 1)),
                refused("pay-capped", "value"),
            ),
            (
                format!("{at}: 0.4 ETH + transfer to EOA"),
                t(Y, milli_eth(400), &transfer(Y, 1)),
                refused("pay-capped", "input"),
            ),
            (
                format!("{at}: 1 wei + approve"),
                t(Y, U256::from(1), &approve(Y, U256::from(1))),
                refused("pay-capped", "input"),
            ),
            (
                format!("{at}: transfer, no value"),
                t(Y, U256::ZERO, &transfer(Y, 1)),
                ok("erc20-anywhere"),
            ),
            (
                format!("{at}: 0.4 ETH plain"),
                t(Y, milli_eth(400), &[]),
                ok("pay-capped"),
            ),
            (
                format!("{at}: 0.6 ETH plain"),
                t(Y, milli_eth(600), &[]),
                refused("pay-capped", "value"),
            ),
            (
                format!("{at}: 1 ETH deposit (payable)"),
                t(VAULT, milli_eth(1000), &deposit),
                ok("vault"),
            ),
            (
                format!("{at}: 3 ETH deposit"),
                t(VAULT, milli_eth(3000), &deposit),
                refused("vault", "value"),
            ),
            (
                format!("{at}: 1 ETH withdraw (not payable)"),
                t(VAULT, milli_eth(1000), &withdraw),
                refused("vault", "value"),
            ),
            (
                format!("{at}: withdraw, no value"),
                t(VAULT, U256::ZERO, &withdraw),
                ok("vault"),
            ),
        ]);
    }
    rows.extend([
        (
            "creation 0.1 ETH".into(),
            tx(TYPES[2], 1, None, milli_eth(100), &[0x60]),
            ok("create-small"),
        ),
        (
            "creation 0.2 ETH".into(),
            tx(TYPES[0], 1, None, milli_eth(200), &[0x60]),
            refused("create-small", "value"),
        ),
    ]);
    run("value", &p, rows);
}

fn any_ty() -> impl Strategy<Value = Ty> {
    (0u8..5, 1u64..=5 * GWEI, 1u64..=5 * GWEI).prop_map(|(k, a, b)| {
        let (fee, tip) = (a.max(b), a.min(b));
        match k {
            0 => Ty::Legacy(tip),
            1 => Ty::AccessList(tip),
            2 => Ty::Dynamic(fee, tip),
            3 => Ty::Blob(fee, tip),
            _ => Ty::SetCode(fee, tip),
        }
    })
}

/// Calldata: empty, random, or a known selector with a random tail.
fn any_input() -> impl Strategy<Value = Vec<u8>> {
    let selectors = [
        [0xa9, 0x05, 0x9c, 0xbb],
        [0x09, 0x5e, 0xa7, 0xb3],
        [0x23, 0xb8, 0x72, 0xdd],
        [0x39, 0x50, 0x93, 0x51],
    ];
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..100),
        (0usize..4, proptest::collection::vec(any::<u8>(), 0..100)).prop_map(move |(i, tail)| {
            let mut v = selectors[i].to_vec();
            v.extend(tail);
            v
        }),
        (any::<[u8; 20]>(), 0u64..u64::MAX).prop_map(|(a, n)| transfer(Address::from(a), n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// A deny rule on destination X refuses every transaction to X, whatever else it carries;
    /// the negative control sends the same transaction to Y, which the allow rules sign.
    #[test]
    fn a_deny_on_x_refuses_everything_to_x(
        ty in any_ty(),
        chain in prop_oneof![Just(1u64), Just(10u64)],
        value in 0u64..1_000_000_000_000_000_000,
        input in any_input(),
    ) {
        let p = policy(
            "[[rules]]\nname = \"deny-x\"\naction = \"deny\"\nto = [\"0x00000000000000000000000000000000000bad01\"]\n\
             [[rules]]\nname = \"erc20\"\nabi = \"erc20\"\n\
             [[rules]]\nname = \"raw\"\ncalldata = \"any\"\nmax_value = \"1 ether\"\n",
        ).unwrap();
        let value = U256::from(value);
        let to_x = outcome(&p, &tx(ty, chain, Some(X), value, &input));
        prop_assert!(to_x.is_err());
        if !dirty_movement(&input) {
            prop_assert_eq!(to_x, refused("deny-x", "to"));
            prop_assert!(outcome(&p, &tx(ty, chain, Some(Y), value, &input)).is_ok());
        }
    }
}

/// The shipped proposer policy: the bond rides on the payable `create` because the rule says
/// `max_value`; the same value on a view function, or over the cap, is refused.
#[test]
fn the_shipped_proposer_pays_its_bond_and_nothing_else() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs");
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(format!("{dir}/op-stack-batcher.toml")).unwrap())
            .unwrap();
    let evm = config["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("proposer"))
        .unwrap()["evm"]
        .clone();
    let p: EvmPolicy = evm.try_into().unwrap();
    p.prepare(std::path::Path::new(dir)).unwrap();
    let abi = std::fs::read_to_string(format!("{dir}/abi/dispute-game-factory.json")).unwrap();
    let create = call(
        &abi,
        "create",
        &[
            DynSolValue::Uint(U256::ZERO, 32),
            DynSolValue::FixedBytes(alloy_primitives::B256::repeat_byte(0x11), 32),
            DynSolValue::Bytes(U256::from(123).to_be_bytes::<32>().to_vec()),
        ],
    );
    let count = call(&abi, "gameCount", &[]);
    let factory = address!("0xe5965Ab5962eDc7477C8520243A95517CD252fA9");
    let t = |value, input: &[u8]| tx(Ty::Dynamic(50 * GWEI, GWEI), 1, Some(factory), value, input);
    run(
        "proposer",
        &p,
        vec![
            ("bond".into(), t(milli_eth(80), &create), ok("create-game")),
            (
                "bond over the cap".into(),
                t(milli_eth(101), &create),
                refused("evm.max_value", "value"),
            ),
            (
                "value on a view function".into(),
                t(milli_eth(80), &count),
                refused("create-game", "input"),
            ),
        ],
    );
}
