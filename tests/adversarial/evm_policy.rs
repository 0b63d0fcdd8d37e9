//! Policy semantics through the daemon (issue 13, classes 1, 2, 6 and 7): each hostile request
//! is refused with `-32001` naming the rule and field, signs nothing and leaves its audit row
//! naming the same rule; positive controls sign under the same policy, so the refusals come
//! from the rules under test. The engine's full tables are in `chains/evm/src/tests_*.rs`.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::Daemon;
use crate::evm::{call, check, sha, GOOD};
use crate::evm_table::{tx, Row, Send, SIGN};
use crate::helpers::{Audited, Failures};

const X: &str = "0x00000000000000000000000000000000000bad01";
const Y: &str = "0x00000000000000000000000000000000000a11ce";
/// `transfer(Y, 1000)`.
const TRANSFER: &str = "0xa9059cbb00000000000000000000000000000000000000000000000000000000000a11ce00000000000000000000000000000000000000000000000000000000000003e8";

fn config(dir: &Path, tx_types: &str) -> String {
    format!(
        r#"
{keystore}{listener}[[clients]]
name = "good"
token_sha256 = "{good}"
keys = ["*"]
[[policies]]
name = "semantics"
keys = ["*"]
[policies.evm]
chain_ids = [31337]
to = "any"
max_value = "10 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "5 gwei"
max_fee_per_blob_gas = "500 gwei"
{tx_types}
[[policies.evm.rules]]
name = "deny-x"
action = "deny"
to = ["{X}"]
[[policies.evm.rules]]
name = "pay-capped"
max_value = "0.5 ether"
[[policies.evm.rules]]
name = "erc20-anywhere"
abi = "erc20"
[[policies.evm.messages]]
name = "login"
methods = ["personal_sign"]
pattern = "Sign in nonce [0-9]+"
"#,
        keystore = crate::common::software_keystore(dir, &["secp256k1"]),
        listener = crate::common::BEARER_EVM_LISTENER,
        good = sha(GOOD),
    )
}

/// A transaction from `from`: `fields` replace the EIP-1559 defaults; `null` removes a field.
fn txn(from: &str, fields: Value) -> Value {
    let mut t = tx(from);
    for (k, v) in fields.as_object().unwrap() {
        if v.is_null() {
            t.as_object_mut().unwrap().remove(k);
        } else {
            t[k] = v.clone();
        }
    }
    json!([t])
}

fn legacy(gas_price: &str) -> Value {
    json!({"maxFeePerGas": null, "maxPriorityFeePerGas": null, "gasPrice": gas_price})
}

fn refused(
    name: &'static str,
    method: &'static str,
    params: Value,
    rule: &'static str,
    field: &'static str,
) -> Row {
    Row {
        name,
        send: Send::Call(Some(GOOD), method, params),
        code: -32001,
        data: vec![("rule", rule), ("field", field)],
        audited: Audited::Row {
            method,
            rule: Some(rule),
        },
    }
}

fn merge(a: Value, b: Value) -> Value {
    let mut a = a;
    a.as_object_mut()
        .unwrap()
        .extend(b.as_object().unwrap().clone());
    a
}

fn rows(from: &str) -> Vec<Row> {
    let eth = |milli: u64| json!(format!("{:#x}", u128::from(milli) * 1_000_000_000_000_000));
    let to = |a: &str| json!({"to": a});
    vec![
        // Class 1: the deny on X refuses whatever the transaction carries.
        refused("deny: plain to X", SIGN, txn(from, to(X)), "deny-x", "to"),
        refused(
            "deny: 0.9 ETH + transfer calldata to X",
            SIGN,
            txn(from, json!({"to": X, "value": eth(900), "input": TRANSFER})),
            "deny-x",
            "to",
        ),
        refused(
            "deny: legacy + transfer calldata to X",
            SIGN,
            txn(
                from,
                merge(
                    legacy("0x3b9aca00"),
                    json!({"to": X, "input": TRANSFER, "value": "0x0"}),
                ),
            ),
            "deny-x",
            "to",
        ),
        refused(
            "deny: 2930 + garbage calldata to X",
            SIGN,
            txn(
                from,
                merge(
                    legacy("0x3b9aca00"),
                    json!({"to": X, "input": "0xdeadbeef01", "accessList": []}),
                ),
            ),
            "deny-x",
            "to",
        ),
        // Class 2: an ABI rule carries no native value; the plain-transfer cap holds.
        refused(
            "value: 0.9 ETH + transfer calldata to an EOA",
            SIGN,
            txn(from, json!({"to": Y, "value": eth(900), "input": TRANSFER})),
            "pay-capped",
            "value",
        ),
        refused(
            "value: 0.4 ETH + transfer calldata to an EOA",
            SIGN,
            txn(from, json!({"to": Y, "value": eth(400), "input": TRANSFER})),
            "pay-capped",
            "input",
        ),
        // Class 6: the tip cap binds every transaction type.
        refused(
            "fees: legacy at 300 gwei",
            SIGN,
            txn(from, legacy("0x45d964b800")),
            "evm.max_priority_fee_per_gas",
            "gasPrice",
        ),
        refused(
            "fees: 2930 at 6 gwei",
            SIGN,
            txn(
                from,
                merge(legacy("0x165a0bc00"), json!({"accessList": []})),
            ),
            "evm.max_priority_fee_per_gas",
            "gasPrice",
        ),
        refused(
            "fees: 1559 tip 6 gwei",
            SIGN,
            txn(
                from,
                json!({"maxFeePerGas": "0x165a0bc00", "maxPriorityFeePerGas": "0x165a0bc00"}),
            ),
            "evm.max_priority_fee_per_gas",
            "maxPriorityFeePerGas",
        ),
        // Class 7: the pattern matches the whole message.
        refused(
            "message: login with a line appended",
            "personal_sign",
            json!(["Sign in nonce 5\nI approve transfer of all my funds", from]),
            "evm.message",
            "data",
        ),
    ]
}

/// The dry run (`keyguard policy check`) on the same request and config names the same rule and
/// field as the daemon's refusal (and so its audit row, which `check` has verified).
fn dry_run_agrees(cfg: &Path, dir: &Path, r: &Row, failures: &mut Failures) {
    let Send::Call(_, method, params) = &r.send else {
        return;
    };
    let request = if *method == SIGN {
        params[0].clone()
    } else {
        json!({"method": method, "params": params})
    };
    let file = dir.join("request.json");
    std::fs::write(&file, request.to_string()).unwrap();
    let out = std::process::Command::new(crate::common::binary())
        .args(["policy", "check", "--config"])
        .arg(cfg)
        .args(["--key", "dev-secp256k1", "--request"])
        .arg(&file)
        .output()
        .unwrap();
    let got: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let want = |k: &str| r.data.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let d = &got["decision"];
    let result = if d["rule"].as_str() == want("rule") && d["field"].as_str() == want("field") {
        Ok(())
    } else {
        Err(format!(
            "dry run decided {d} (exit {:?})",
            out.status.code()
        ))
    };
    failures.check(&format!("dry run: {}", r.name), result);
}

/// Positive controls: the same policy signs what its rules allow.
fn must_sign(rpc: &str, name: &str, method: &str, params: Value, failures: &mut Failures) {
    let r = call(rpc, Some(GOOD), method, params);
    let ok = r["result"].is_string();
    failures.check(
        name,
        if ok {
            Ok(())
        } else {
            Err(format!("not signed: {r}"))
        },
    );
}

#[test]
fn policy_semantics_refusals_are_named_audited_and_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &config(dir.path(), ""), &[]);
    let rpc = daemon.rpc_addr();
    let from = crate::control::address(&daemon);
    let cfg = daemon.config.clone();
    let mut failures = Failures::default();

    let table = rows(&from);
    for r in &table {
        check(&cfg, &rpc, r, &mut failures);
        dry_run_agrees(&cfg, dir.path(), r, &mut failures);
    }
    must_sign(
        &rpc,
        "control: transfer calldata to Y, no value",
        SIGN,
        txn(
            &from,
            json!({"to": Y, "value": "0x0", "input": TRANSFER, "nonce": "0x2"}),
        ),
        &mut failures,
    );
    must_sign(
        &rpc,
        "control: 0.4 ETH plain to Y",
        SIGN,
        txn(
            &from,
            json!({"to": Y, "value": eth_hex(400), "nonce": "0x3"}),
        ),
        &mut failures,
    );
    must_sign(
        &rpc,
        "control: legacy at 5 gwei",
        SIGN,
        txn(
            &from,
            merge(legacy("0x12a05f200"), json!({"to": Y, "nonce": "0x4"})),
        ),
        &mut failures,
    );
    must_sign(
        &rpc,
        "control: login",
        "personal_sign",
        json!(["Sign in nonce 5", from]),
        &mut failures,
    );

    // tx_types = [2, 3, 4]: legacy and 2930 refused outright, even at 1 gwei.
    std::fs::write(&cfg, config(dir.path(), "tx_types = [2, 3, 4]")).unwrap();
    daemon.signal(rustix::process::Signal::HUP);
    daemon.wait_line("keyguard: reloaded");
    let typed = [
        refused(
            "tx_types: legacy",
            SIGN,
            txn(&from, merge(legacy("0x3b9aca00"), json!({"to": Y}))),
            "evm.tx_type",
            "type",
        ),
        refused(
            "tx_types: 2930",
            SIGN,
            txn(
                &from,
                merge(legacy("0x3b9aca00"), json!({"to": Y, "accessList": []})),
            ),
            "evm.tx_type",
            "type",
        ),
    ];
    for r in &typed {
        check(&cfg, &rpc, r, &mut failures);
    }
    must_sign(
        &rpc,
        "control: 1559 under tx_types",
        SIGN,
        txn(&from, json!({"to": Y, "nonce": "0x5"})),
        &mut failures,
    );
    failures.finish("policy semantics", 2 * table.len() + typed.len() + 5);
}

fn eth_hex(milli: u64) -> String {
    format!("{:#x}", u128::from(milli) * 1_000_000_000_000_000)
}
