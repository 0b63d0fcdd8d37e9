//! Asset movement through the running daemon (issue 13 items 3-5): movement calldata that is
//! not its exact encoding, permits keyguard cannot read or that grant too much, and approvals
//! that add up per spender across transactions, permits and a restart. Every refusal is checked
//! to carry the rule, sign nothing and leave its audit row; the allowed rows in the sequence
//! are the controls (the same limits let the in-limit request through).

use std::path::Path;

use alloy_primitives::U256;
use serde_json::{json, Value};

use crate::common::{rpc, Daemon};
use crate::helpers::{carries_signature, check_audit, check_rpc_error, mark, Audited, Failures};

const TUSD: &str = "0x00000000000000000000000000000000000070c0";
const OTHER_TOKEN: &str = "0x00000000000000000000000000000000000070c1";
const PERMIT2: &str = "0x000000000022d473030f116ddee9f6b43ac78ba3";
const ROUTER: &str = "0x00000000000000000000000000000000000a11ce";
const SHOP: &str = "0x0000000000000000000000000000000000005409";
const ATTACKER: &str = "0x0000000000000000000000000000000000bad000";
const TX: &str = "eth_signTransaction";
const TYPED: &str = "eth_signTypedData_v4";

fn config(dir: &Path) -> String {
    std::fs::write(
        dir.join("tokens.toml"),
        format!(
            "chain_id = 31337\nname = \"anvil\"\nnative_symbol = \"ETH\"\ndecimals = 18\n\
             [[tokens]]\nsymbol = \"TUSD\"\naddress = \"{TUSD}\"\ndecimals = 6\n"
        ),
    )
    .unwrap();
    format!(
        r#"
{keystore}{listener}[[policies]]
name = "movement"
keys = ["*"]
[policies.evm]
chain_ids = [31337]
to = "any"
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
profiles = ["tokens.toml"]
[[policies.evm.rules]]
name = "anything"
calldata = "any"
[[policies.evm.tokens]]
token = "TUSD"
max_transfer = "1000 TUSD"
max_approval = "2000 TUSD"
approval_window = "1h"
[[policies.evm.velocity]]
name = "tusd-daily"
asset = "TUSD"
max = "5000"
window = "24h"
[[policies.evm.typed_data]]
name = "router-permits"
spenders = ["{ROUTER}", "{SHOP}"]
"#,
        keystore = crate::common::software_keystore(dir, &["secp256k1"]),
        listener = crate::common::OPEN_EVM_LISTENER
    )
}

fn word_addr(a: &str) -> String {
    format!("{:0>64}", a.trim_start_matches("0x"))
}

fn word(u: U256) -> String {
    format!("{u:064x}")
}

fn tusd(units: u64) -> U256 {
    U256::from(units) * U256::from(1_000_000u64)
}

fn calldata(selector: &str, words: &[String]) -> String {
    format!("0x{selector}{}", words.concat())
}

fn transfer(to: &str, amount: U256) -> String {
    calldata("a9059cbb", &[word_addr(to), word(amount)])
}

fn approve(to: &str, amount: U256) -> String {
    calldata("095ea7b3", &[word_addr(to), word(amount)])
}

fn increase(to: &str, amount: U256) -> String {
    calldata("39509351", &[word_addr(to), word(amount)])
}

fn tx(from: &str, to: &str, data: &str) -> Value {
    json!([{
        "from": from, "to": to, "value": "0x0", "gas": "0x186a0", "data": data,
        "maxFeePerGas": "0x3b9aca00", "maxPriorityFeePerGas": "0x1", "nonce": "0x1",
        "chainId": "0x7a69",
    }])
}

fn fields(list: &[(&str, &str)]) -> Value {
    Value::Array(
        list.iter()
            .map(|(t, n)| json!({"name": n, "type": t}))
            .collect(),
    )
}

fn typed(from: &str, primary: &str, contract: &str, mut types: Value, message: Value) -> Value {
    types["EIP712Domain"] = fields(&[
        ("string", "name"),
        ("uint256", "chainId"),
        ("address", "verifyingContract"),
    ]);
    json!([from, {
        "types": types, "primaryType": primary, "message": message,
        "domain": {"name": "Token", "chainId": 31337, "verifyingContract": contract},
    }])
}

const EIP2612: &[(&str, &str)] = &[
    ("address", "owner"),
    ("address", "spender"),
    ("uint256", "value"),
    ("uint256", "nonce"),
    ("uint256", "deadline"),
];

fn permit(from: &str, spender: &str, value: U256) -> Value {
    typed(
        from,
        "Permit",
        TUSD,
        json!({"Permit": fields(EIP2612)}),
        json!({"owner": from, "spender": spender, "value": value.to_string(), "nonce": 0, "deadline": 1}),
    )
}

fn eip3009(from: &str, to: &str, value: U256, nonce: u8) -> Value {
    let f = [
        ("address", "from"),
        ("address", "to"),
        ("uint256", "value"),
        ("uint256", "validAfter"),
        ("uint256", "validBefore"),
        ("bytes32", "nonce"),
    ];
    typed(
        from,
        "TransferWithAuthorization",
        TUSD,
        json!({"TransferWithAuthorization": fields(&f)}),
        json!({"from": from, "to": to, "value": value.to_string(), "validAfter": 0,
               "validBefore": 1, "nonce": format!("0x{}", hex::encode([nonce; 32]))}),
    )
}

/// One step: a request and what it must get (`None`: signed).
struct Step {
    name: &'static str,
    method: &'static str,
    params: Value,
    refused_by: Option<&'static str>,
}

fn step(
    name: &'static str,
    method: &'static str,
    params: Value,
    rule: Option<&'static str>,
) -> Step {
    Step {
        name,
        method,
        params,
        refused_by: rule,
    }
}

fn run(cfg: &Path, addr: &str, s: &Step, failures: &mut Failures) {
    let before = mark(cfg);
    let resp = rpc(addr, s.method, s.params.clone());
    let result = match s.refused_by {
        None => match resp["result"].as_str() {
            Some(_) => Ok(()),
            None => Err(format!("expected a signature, got {resp}")),
        },
        Some(rule) => check_rpc_error(&resp, -32001, &[("rule", rule)])
            .and_then(|()| {
                if carries_signature(&resp) {
                    Err(format!("the error carries a signature: {resp}"))
                } else {
                    Ok(())
                }
            })
            .and_then(|()| {
                check_audit(
                    cfg,
                    before,
                    Audited::Row {
                        method: s.method,
                        rule: Some(rule),
                    },
                )
            }),
    };
    failures.check(s.name, result);
}

fn hostile_rows(from: &str) -> Vec<Step> {
    let million = tusd(1_000_000);
    let unlimited = U256::MAX - U256::from(1);
    let permit2_max = (U256::from(1) << 160) - U256::from(2);
    let mut dirty = transfer(ATTACKER, tusd(1));
    dirty.replace_range(10..12, "01");
    let short = transfer(ATTACKER, tusd(1))[..2 + 2 * 39].to_string();
    let permit2_approve = calldata(
        "87517c45",
        &[
            word_addr(TUSD),
            word_addr(ATTACKER),
            word(permit2_max),
            word(U256::from(1)),
        ],
    );
    let details = [
        ("address", "token"),
        ("uint160", "amount"),
        ("uint48", "expiration"),
        ("uint48", "nonce"),
    ];
    let permit_single = typed(
        from,
        "PermitSingle",
        PERMIT2,
        json!({
            "PermitSingle": fields(&[("PermitDetails", "details"), ("address", "spender"), ("uint256", "sigDeadline")]),
            "PermitDetails": fields(&details),
        }),
        json!({"details": {"token": TUSD, "amount": permit2_max.to_string(), "expiration": 1, "nonce": 0},
               "spender": ROUTER, "sigDeadline": 1}),
    );
    let batch_transfer = typed(
        from,
        "PermitBatchTransferFrom",
        PERMIT2,
        json!({
            "PermitBatchTransferFrom": fields(&[("TokenPermissions[]", "permitted"), ("address", "spender"), ("uint256", "nonce"), ("uint256", "deadline")]),
            "TokenPermissions": fields(&[("address", "token"), ("uint256", "amount")]),
        }),
        json!({"permitted": [{"token": TUSD, "amount": "1000000000000000000000000000000"}],
               "spender": ATTACKER, "nonce": 0, "deadline": 1}),
    );
    let dai = typed(
        from,
        "Permit",
        TUSD,
        json!({"Permit": fields(&[("address", "holder"), ("address", "spender"), ("uint256", "nonce"), ("uint256", "expiry"), ("bool", "allowed")])}),
        json!({"holder": from, "spender": ATTACKER, "nonce": 0, "expiry": 1, "allowed": true}),
    );
    let mut lookalike = permit(from, ROUTER, tusd(1));
    lookalike[1]["types"]["Permit"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "extra", "type": "uint256"}));
    lookalike[1]["message"]["extra"] = json!(1);
    vec![
        step(
            "transfer 1M + 00",
            TX,
            tx(from, TUSD, &(transfer(ATTACKER, million) + "00")),
            Some("evm.movement_undecodable"),
        ),
        step(
            "approve max + 00",
            TX,
            tx(from, TUSD, &(approve(ATTACKER, U256::MAX) + "00")),
            Some("evm.movement_undecodable"),
        ),
        step(
            "transfer with dirty padding",
            TX,
            tx(from, TUSD, &dirty),
            Some("evm.movement_undecodable"),
        ),
        step(
            "transfer cut short",
            TX,
            tx(from, TUSD, &short),
            Some("evm.movement_undecodable"),
        ),
        step(
            "transfer 1M exact (control: counted)",
            TX,
            tx(from, TUSD, &transfer(ATTACKER, million)),
            Some("evm.token_max_transfer"),
        ),
        step(
            "approve 2^256-2",
            TX,
            tx(from, TUSD, &approve(ATTACKER, unlimited)),
            Some("evm.unlimited_approval"),
        ),
        step(
            "permit2 approve 2^160-2",
            TX,
            tx(from, PERMIT2, &permit2_approve),
            Some("evm.unlimited_approval"),
        ),
        step(
            "approve of a token without limits",
            TX,
            tx(from, OTHER_TOKEN, &approve(ATTACKER, U256::from(1))),
            Some("evm.approval_unconfigured"),
        ),
        step(
            "DAI permit to the attacker",
            TYPED,
            dai,
            Some("router-permits"),
        ),
        step(
            "Permit2 batch transfer 10^30 to the attacker",
            TYPED,
            batch_transfer,
            Some("router-permits"),
        ),
        step(
            "PermitSingle 2^160-2 to the router",
            TYPED,
            permit_single,
            Some("evm.unlimited_approval"),
        ),
        step(
            "Permit with an extra field",
            TYPED,
            lookalike,
            Some("evm.typed_data_unrecognised"),
        ),
    ]
}

#[test]
fn evm_movement_is_counted_whatever_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path());
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let addr = daemon.rpc_addr();
    let from = crate::control::address(&daemon);
    let cfg = daemon.config.clone();
    let mut failures = Failures::default();

    let rows = hostile_rows(&from);
    for s in &rows {
        run(&cfg, &addr, s, &mut failures);
    }
    // Approvals add up per spender within approval_window (max_approval 2000 TUSD), across
    // transactions and permits; everything counts toward the 5000 TUSD daily velocity.
    let sequence = [
        step(
            "increaseAllowance 1500 to the router",
            TX,
            tx(&from, TUSD, &increase(ROUTER, tusd(1500))),
            None,
        ),
        step(
            "permit 600 more to the router",
            TYPED,
            permit(&from, ROUTER, tusd(600)),
            Some("evm.allowance_window"),
        ),
        step(
            "permit 500 more to the router (at the limit)",
            TYPED,
            permit(&from, ROUTER, tusd(500)),
            None,
        ),
        step(
            "approve 1 unit more to the router",
            TX,
            tx(&from, TUSD, &approve(ROUTER, U256::from(1))),
            Some("evm.allowance_window"),
        ),
        step(
            "approve 1000 to another spender",
            TX,
            tx(&from, TUSD, &approve(SHOP, tusd(1000))),
            None,
        ),
        step(
            "EIP-3009 transfer 1000",
            TYPED,
            eip3009(&from, ROUTER, tusd(1000), 1),
            None,
        ),
        step(
            "EIP-3009 transfer 1000 (velocity full)",
            TYPED,
            eip3009(&from, ROUTER, tusd(1000), 2),
            None,
        ),
        step(
            "EIP-3009 transfer 1 unit over velocity",
            TYPED,
            eip3009(&from, ROUTER, U256::from(1), 3),
            Some("evm.velocity"),
        ),
    ];
    for s in &sequence {
        run(&cfg, &addr, s, &mut failures);
    }
    drop(daemon);

    // The counters were written with the audit rows: a restart forgets nothing.
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let addr = daemon.rpc_addr();
    let after = [
        step(
            "after restart: approve 1 unit to the router",
            TX,
            tx(&from, TUSD, &approve(ROUTER, U256::from(1))),
            Some("evm.allowance_window"),
        ),
        step(
            "after restart: EIP-3009 1 unit",
            TYPED,
            eip3009(&from, ROUTER, U256::from(1), 4),
            Some("evm.velocity"),
        ),
        step(
            "after restart: a revocation commits nothing",
            TX,
            tx(&from, TUSD, &approve(ROUTER, U256::ZERO)),
            None,
        ),
    ];
    for s in &after {
        run(&cfg, &addr, s, &mut failures);
    }
    failures.finish("evm movement", rows.len() + sequence.len() + after.len());
}
