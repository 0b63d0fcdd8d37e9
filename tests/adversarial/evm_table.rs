//! The Ethereum table: one row per hostile request, with the code and `data` it must get and
//! the audit row it must leave (see `evm.rs` for the daemon and the checks).

use serde_json::{json, Value};

use crate::evm::{GOOD, NARROW, REVOKED};
use crate::helpers::Audited;

/// A valid EIP-1559 transfer from `from`; rows change one field.
pub(crate) fn tx(from: &str) -> Value {
    json!({
        "from": from,
        "to": "0x000000000000000000000000000000000000dEaD",
        "value": "0x1",
        "gas": "0x5208",
        "maxFeePerGas": "0x3b9aca00",
        "maxPriorityFeePerGas": "0x1",
        "nonce": "0x1",
        "chainId": "0x7a69",
    })
}

pub(crate) fn with(from: &str, field: &str, value: Value) -> Value {
    let mut t = tx(from);
    if value.is_null() {
        t.as_object_mut().unwrap().remove(field);
    } else {
        t[field] = value;
    }
    json!([t])
}

/// How a row reaches the listener.
pub(crate) enum Send {
    /// A JSON-RPC call with this token.
    Call(Option<&'static str>, &'static str, Value),
    /// Raw body bytes with the good token.
    Raw(String),
}

pub(crate) struct Row {
    pub(crate) name: &'static str,
    pub(crate) send: Send,
    pub(crate) code: i64,
    pub(crate) data: Vec<(&'static str, &'static str)>,
    pub(crate) audited: Audited,
}

pub(crate) const SIGN: &str = "eth_signTransaction";

fn row(name: &'static str, params: Value, code: i64, data: &[(&'static str, &'static str)]) -> Row {
    let rule = data.iter().find(|(k, _)| *k == "rule").map(|(_, v)| *v);
    Row {
        name,
        send: Send::Call(Some(GOOD), SIGN, params),
        code,
        data: data.to_vec(),
        audited: Audited::Row {
            method: SIGN,
            rule: rule.or(if code == -32602 {
                Some("request.invalid")
            } else {
                None
            }),
        },
    }
}

/// An EIP-712 order of the allowed shape with `chain_id` in its domain (null: none).
fn order(chain_id: Value) -> Value {
    let mut domain = json!({"name": "Exchange"});
    let mut fields = vec![json!({"name": "name", "type": "string"})];
    if !chain_id.is_null() {
        domain["chainId"] = chain_id;
        fields.push(json!({"name": "chainId", "type": "uint256"}));
    }
    json!({
        "types": {"EIP712Domain": fields, "Order": [{"name": "amount", "type": "uint256"}]},
        "primaryType": "Order",
        "domain": domain,
        "message": {"amount": 1},
    })
}

/// A refused digest signature (typed data or message) on `method`, naming `rule`.
fn digest(name: &'static str, method: &'static str, params: Value, rule: &'static str) -> Row {
    Row {
        name,
        send: Send::Call(Some(GOOD), method, params),
        code: -32001,
        data: vec![("rule", rule)],
        audited: Audited::Row {
            method,
            rule: Some(rule),
        },
    }
}

pub(crate) fn table(from: &str) -> Vec<Row> {
    let u256_max = format!("0x{}", "f".repeat(64));
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let u256_max: &'static str = leak(u256_max);
    let over_u256: &'static str = leak(format!("0x1{}", "0".repeat(64)));
    let big_data: &'static str = leak(format!("0x{}", "ab".repeat(65)));
    let unauth = |name, token| Row {
        name,
        send: Send::Call(token, SIGN, json!([tx(from)])),
        code: -32005,
        data: vec![],
        audited: Audited::Row {
            method: SIGN,
            rule: Some("access.unauthenticated"),
        },
    };
    let mut huge_array = vec![tx(from)];
    huge_array.extend((0..5000).map(|i| json!(i)));
    vec![
        row("params missing", json!([]), -32602, &[("field", "params")]),
        row("params not a transaction", json!(["0x00"]), -32602, &[("field", "params[0]")]),
        row("empty object", json!([{}]), -32602, &[("field", "from")]),
        row(
            "unknown field",
            with(from, "evil", json!("0x1")),
            -32602,
            &[("field", "evil")],
        ),
        row("two transactions", json!([tx(from), tx(from)]), -32602, &[("field", "params")]),
        row("huge params array", Value::Array(huge_array), -32602, &[("field", "params")]),
        row(
            "value u256 max",
            with(from, "value", json!(u256_max)),
            -32001,
            &[("rule", "evm.max_value"), ("field", "value")],
        ),
        row(
            "value over u256",
            with(from, "value", json!(over_u256)),
            -32602,
            &[("field", "value")],
        ),
        row(
            "value negative",
            with(from, "value", json!("-0x1")),
            -32602,
            &[("field", "value")],
        ),
        row(
            "value as JSON number",
            with(from, "value", json!(1)),
            -32602,
            &[("field", "value")],
        ),
        row(
            "value empty hex",
            with(from, "value", json!("0x")),
            -32602,
            &[("field", "value")],
        ),
        row(
            "value not hex",
            with(from, "value", json!("0xzz")),
            -32602,
            &[("field", "value")],
        ),
        row(
            "nonce 2^64-1 (EIP-2681)",
            with(from, "nonce", json!("0xffffffffffffffff")),
            -32602,
            &[("field", "nonce")],
        ),
        row(
            "nonce 2^64",
            with(from, "nonce", json!("0x10000000000000000")),
            -32602,
            &[("field", "nonce")],
        ),
        row(
            "nonce missing",
            with(from, "nonce", Value::Null),
            -32602,
            &[("field", "nonce")],
        ),
        row(
            "gas over u64",
            with(from, "gas", json!("0x10000000000000000")),
            -32602,
            &[("field", "gas")],
        ),
        row(
            "chain id 0",
            with(from, "chainId", json!("0x0")),
            -32001,
            &[("rule", "evm.chain_id")],
        ),
        row(
            "chain id u64::MAX",
            with(from, "chainId", json!("0xffffffffffffffff")),
            -32001,
            &[("rule", "evm.chain_id"), ("field", "chainId")],
        ),
        row(
            "chain id huge",
            with(from, "chainId", json!(u256_max)),
            -32602,
            &[("field", "chainId")],
        ),
        row(
            "wrong chain (mainnet)",
            with(from, "chainId", json!("0x1")),
            -32001,
            &[("rule", "evm.chain_id"), ("field", "chainId")],
        ),
        row(
            "odd-length calldata",
            with(from, "data", json!("0x123")),
            -32602,
            &[("field", "data")],
        ),
        row(
            "calldata over cap",
            with(from, "data", json!(big_data)),
            -32001,
            &[("rule", "evm.max_calldata_bytes")],
        ),
        row(
            "fee over cap",
            with(from, "maxFeePerGas", json!("0xffffffffffffffffffff")),
            -32001,
            &[("rule", "evm.max_fee_per_gas")],
        ),
        row(
            "fee over u128",
            with(from, "maxFeePerGas", json!(u256_max)),
            -32602,
            &[("field", "maxFeePerGas")],
        ),
        row(
            "gasPrice and 1559 fees",
            with(from, "gasPrice", json!("0x1")),
            -32602,
            &[("field", "gasPrice")],
        ),
        row(
            "short to address",
            with(from, "to", json!("0xdead")),
            -32602,
            &[("field", "to")],
        ),
        row(
            "contract creation",
            with(from, "to", Value::Null),
            -32001,
            &[("rule", "evm.contract_creation")],
        ),
        row(
            "blob transaction",
            {
                let mut t = tx(from);
                t["blobVersionedHashes"] = json!([format!("0x01{}", "00".repeat(31))]);
                t["maxFeePerBlobGas"] = json!("0x1");
                json!([t])
            },
            -32001,
            &[("rule", "evm.max_blobs")],
        ),
        row(
            "blob sidecar",
            with(from, "blobs", json!(["0x00"])),
            -32602,
            &[("field", "blobs")],
        ),
        row(
            "7702 delegation",
            with(
                from,
                "authorizationList",
                json!([{"chainId": "0x7a69", "address": "0x000000000000000000000000000000000000dEaD", "nonce": "0x0", "yParity": "0x0", "r": "0x1", "s": "0x1"}]),
            ),
            -32001,
            &[("rule", "evm.delegation")],
        ),
        row(
            "wrong key (unknown from)",
            with(
                from,
                "from",
                json!("0x1111111111111111111111111111111111111111"),
            ),
            -32602,
            &[("field", "from")],
        ),
        row(
            "replay: other tx for a signed nonce",
            {
                let mut t = tx(from);
                t["nonce"] = json!("0x0");
                t["value"] = json!("0x2");
                json!([t])
            },
            -32001,
            &[("rule", "evm.nonce_reuse"), ("field", "nonce")],
        ),
        Row {
            name: "key not granted to client",
            send: Send::Call(Some(NARROW), SIGN, json!([tx(from)])),
            code: -32005,
            data: vec![],
            audited: Audited::Row {
                method: SIGN,
                rule: Some("access.key_not_granted"),
            },
        },
        unauth("no token", None),
        unauth("unknown token", Some("not-a-token")),
        unauth("revoked token", Some(REVOKED)),
        Row {
            name: "raw hash eth_sign",
            send: Send::Call(
                Some(GOOD),
                "eth_sign",
                json!([from, format!("0x{}", "11".repeat(32))]),
            ),
            code: -32001,
            data: vec![("rule", "evm.message")],
            audited: Audited::Row {
                method: "eth_sign",
                rule: Some("evm.message"),
            },
        },
        Row {
            name: "typed data without a rule",
            send: Send::Call(
                Some(GOOD),
                "eth_signTypedData_v4",
                json!([from, {
                    "types": {"EIP712Domain": [{"name": "chainId", "type": "uint256"}], "M": [{"name": "x", "type": "uint256"}]},
                    "primaryType": "M", "domain": {"chainId": 31337}, "message": {"x": 1}
                }]),
            ),
            code: -32001,
            data: vec![("rule", "evm.typed_data")],
            audited: Audited::Row {
                method: "eth_signTypedData_v4",
                rule: Some("evm.typed_data"),
            },
        },
        digest("typed data for another chain", "eth_signTypedData_v4", json!([from, order(json!(1))]), "evm.typed_data_chain_id"),
        digest("typed data without a domain chain id", "eth_signTypedData_v4", json!([from, order(Value::Null)]), "evm.typed_data_chain_id"),
        Row {
            name: "typed data with a cyclic type",
            send: Send::Call(Some(GOOD), "eth_signTypedData_v4", json!([from, {
                "types": {
                    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "chainId", "type": "uint256"}],
                    "Order": [{"name": "next", "type": "Order"}],
                },
                "primaryType": "Order",
                "domain": {"name": "Exchange", "chainId": 31337},
                "message": {"next": {"next": {}}},
            }])),
            code: -32602,
            data: vec![("field", "typedData.types")],
            audited: Audited::Row { method: "eth_signTypedData_v4", rule: Some("request.invalid") },
        },
        digest("personal_sign outside the pattern", "personal_sign", json!(["0x5472616e7366657220616c6c", from]), "evm.message"),
        digest("personal_sign of a bare hash", "personal_sign", json!([format!("0x{}", "22".repeat(32)), from]), "evm.message"),
        Row {
            name: "typed data uint8 overflow",
            send: Send::Call(Some(GOOD), "eth_signTypedData_v4", json!([from, {
                "types": {
                    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "chainId", "type": "uint256"}],
                    "Order": [{"name": "amount", "type": "uint8"}],
                },
                "primaryType": "Order",
                "domain": {"name": "Exchange", "chainId": 31337},
                "message": {"amount": 300},
            }])),
            code: -32602,
            data: vec![("field", "typedData")],
            audited: Audited::Row { method: "eth_signTypedData_v4", rule: Some("request.invalid") },
        },
        Row {
            name: "typed data missing its primary type",
            send: Send::Call(Some(GOOD), "eth_signTypedData_v4", json!([from, {
                "types": {"EIP712Domain": [{"name": "chainId", "type": "uint256"}]},
                "primaryType": "Order",
                "domain": {"chainId": 31337},
                "message": {},
            }])),
            code: -32602,
            data: vec![("field", "typedData.primaryType")],
            audited: Audited::Row { method: "eth_signTypedData_v4", rule: Some("request.invalid") },
        },
        Row {
            name: "eth_sign for a foreign address",
            send: Send::Call(Some(GOOD), "eth_sign", json!(["0x1111111111111111111111111111111111111111", "0x1234"])),
            code: -32602,
            data: vec![("field", "from")],
            audited: Audited::Row { method: "eth_sign", rule: Some("request.invalid") },
        },
        digest("personal_sign of 60 KB", "personal_sign", json!([format!("0x{}", "41".repeat(30_000)), from]), "evm.message"),
        Row {
            name: "Clef signTransaction on another chain",
            send: Send::Call(Some(GOOD), "account_signTransaction", with(from, "chainId", json!("0x1"))),
            code: -32001,
            data: vec![("rule", "evm.chain_id")],
            audited: Audited::Row { method: "account_signTransaction", rule: Some("evm.chain_id") },
        },
        row("quantity with a leading zero", with(from, "value", json!("0x01")), -32602, &[("field", "value")]),
        row("legacy tx without chain id (pre-EIP-155)", {
            let mut t = tx(from);
            let o = t.as_object_mut().unwrap();
            o.remove("maxFeePerGas");
            o.remove("maxPriorityFeePerGas");
            o.remove("chainId");
            o.insert("gasPrice".into(), json!("0x3b9aca00"));
            json!([t])
        }, -32602, &[("field", "chainId")]),
        Row {
            name: "batch of 101 calls",
            send: Send::Raw(Value::Array((0..101).map(|i| json!({"jsonrpc": "2.0", "id": i, "method": SIGN, "params": [tx(from)]})).collect()).to_string()),
            // jsonrpsee's own code for an oversized batch; no call of it runs.
            code: -32010,
            data: vec![],
            audited: Audited::Transport("batch over the limit, refused before any call runs"),
        },
        Row {
            name: "not JSON",
            send: Send::Raw("{\"jsonrpc\": \"2.0\", \"method\": ".into()),
            code: -32700,
            data: vec![],
            audited: Audited::Transport("no method could be read"),
        },
        Row {
            name: "body over max_body_bytes",
            send: Send::Raw(format!("{{\"pad\": \"{}\"}}", "a".repeat(70_000))),
            code: -32600,
            data: vec![("field", "body")],
            audited: Audited::Transport("refused before parsing (HTTP 413)"),
        },
    ]
}
