//! Bounded work on typed data: the shapes that crashed or pinned the daemon are refused with a
//! named cap, on a thread with a tokio worker's 2 MiB stack; the largest shapes inside the caps
//! hash to alloy's reference value with one type hash per struct type.

use serde_json::{json, Map, Value};

use crate::typed_bounds::{self, HashWork};
use keyguard_chain::Rejection;

const FROM: &str = "0x0000000000000000000000000000000000000001";

/// `n` types `T0 .. T{n-1}`, each with `fanout` fields of the next type wrapped in `suffix`.
fn chain(n: usize, fanout: usize, suffix: &str, message: Value) -> Value {
    let mut types = Map::new();
    for i in 0..n {
        let fields: Vec<Value> = if i + 1 < n {
            (0..fanout)
                .map(|f| json!({"name": format!("f{f}"), "type": format!("T{}{suffix}", i + 1)}))
                .collect()
        } else {
            vec![json!({"name": "amount", "type": "uint256"})]
        };
        types.insert(format!("T{i}"), Value::Array(fields));
    }
    json!({
        "types": types,
        "primaryType": "T0",
        "domain": {"name": "t", "chainId": 1},
        "message": message,
    })
}

/// Decodes on a 2 MiB stack, as a tokio worker would.
fn decode_small_stack(data: Value) -> Result<crate::TypedIntent, Rejection> {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || crate::decode_typed_data_params(&json!([FROM, data])))
        .unwrap()
        .join()
        .expect("decoder panicked")
}

fn refused_with_cap(data: Value, field_prefix: &str) {
    match decode_small_stack(data) {
        Err(Rejection::InvalidParams { field, reason }) => {
            assert!(field.starts_with(field_prefix), "{field}: {reason}");
            assert!(
                reason.contains("cap") || reason.contains("recursive"),
                "{reason}"
            );
        }
        other => panic!("expected a cap refusal, got {other:?}"),
    }
}

fn hash_and_work(data: &Value) -> (alloy_primitives::B256, HashWork) {
    let intent = crate::decode_typed_data_params(&json!([FROM, data])).expect("within caps");
    let (hash, work) = typed_bounds::signing_hash(&intent.data).unwrap();
    assert_eq!(hash, intent.hash);
    // Independent reference: alloy's own (unbounded) hash, safe to call inside the caps.
    assert_eq!(hash, intent.data.eip712_signing_hash().unwrap());
    (hash, work)
}

#[test]
fn issue_14_chain_of_1500_types_through_arrays_is_refused_not_a_crash() {
    refused_with_cap(chain(1_500, 1, "[]", json!({"f0": []})), "typedData.types");
    refused_with_cap(chain(1_500, 1, "", json!({})), "typedData.types");
    refused_with_cap(
        chain(1_500, 1, "[][][]", json!({"f0": []})),
        "typedData.types",
    );
    // Control: the same shape at the cap decodes, and hashes as alloy does.
    let ok = chain(typed_bounds::MAX_STRUCT_DEPTH, 1, "[]", json!({"f0": []}));
    hash_and_work(&ok);
}

#[test]
fn diamonds_that_expand_past_the_cap_are_refused() {
    refused_with_cap(chain(40, 2, "", json!({})), "typedData.types");
    // 11 levels of fanout 2 expand to 2^11 - 1 nodes, inside the cap: filled and hashed.
    let mut leaf = json!({"amount": "7"});
    for _ in 0..10 {
        leaf = json!({"f0": leaf.clone(), "f1": leaf});
    }
    let (_, work) = hash_and_work(&chain(11, 2, "", leaf));
    assert_eq!(work.type_hashes, 11, "one type hash per struct type");
}

#[test]
fn recursive_types_are_refused() {
    let data = json!({
        "types": {"Node": [{"name": "kids", "type": "Node[]"}],
                   "A": [{"name": "b", "type": "B"}], "B": [{"name": "a", "type": "A[]"}]},
        "primaryType": "Node",
        "domain": {"chainId": 1},
        "message": {"kids": []},
    });
    refused_with_cap(data, "typedData.types");
}

#[test]
fn counts_sizes_and_names_are_capped() {
    let many = chain(typed_bounds::MAX_TYPES + 1, 1, "[]", json!({"f0": []}));
    refused_with_cap(many, "typedData.types");
    let long_array = chain(
        2,
        1,
        "[]",
        json!({"f0": vec![json!({"amount": "1"}); 5_000]}),
    );
    refused_with_cap(long_array, "typedData.message");
    let fixed = chain(2, 1, "[100000]", json!({"f0": []}));
    refused_with_cap(fixed, "typedData.types");
    let dims = chain(2, 1, &"[]".repeat(25), json!({"f0": []}));
    refused_with_cap(dims, "typedData.types");
    let string = json!({
        "types": {"M": [{"name": "s", "type": "string"}]},
        "primaryType": "M", "domain": {"chainId": 1},
        "message": {"s": "x".repeat(typed_bounds::MAX_STRING_BYTES + 1)},
    });
    refused_with_cap(string, "typedData.message");
    let tuple_syntax = json!({
        "types": {"M": [{"name": "s", "type": "(uint256,(uint256))"}]},
        "primaryType": "M", "domain": {"chainId": 1}, "message": {},
    });
    assert!(matches!(
        decode_small_stack(tuple_syntax),
        Err(Rejection::InvalidParams { field, .. }) if field == "typedData.types.M"
    ));
    // Control: a string at the cap is fine.
    let at_cap = json!({
        "types": {"M": [{"name": "s", "type": "string"}]},
        "primaryType": "M", "domain": {"chainId": 1},
        "message": {"s": "x".repeat(typed_bounds::MAX_STRING_BYTES)},
    });
    hash_and_work(&at_cap);
}

#[test]
fn a_long_array_of_structs_builds_each_type_hash_once() {
    // 1,000 elements of a struct of a 15-type chain: the type hash of every struct value used to
    // be rebuilt from the graph; now each of the 16 types is hashed once per request.
    let mut leaf = json!({"amount": "1"});
    for _ in 0..14 {
        leaf = json!({"f0": leaf});
    }
    let mut data = chain(16, 1, "", json!({}));
    // T0 gets an array field of T1 instead of a single one.
    data["types"]["T0"] = json!([{"name": "f0", "type": "T1[]"}]);
    data["message"] = json!({"f0": vec![leaf; 1_000]});
    let (_, work) = hash_and_work(&data);
    assert_eq!(work.type_hashes, 16);
    assert!(work.words <= typed_bounds::MAX_VALUES, "{work:?}");
}

#[test]
fn permit_hashes_are_unchanged() {
    let permit = json!({
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "Permit": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"},
                       {"name": "value", "type": "uint256"}, {"name": "nonce", "type": "uint256"},
                       {"name": "deadline", "type": "uint256"}],
        },
        "primaryType": "Permit",
        "domain": {"name": "USD Coin", "version": "2", "chainId": 1,
                   "verifyingContract": "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"},
        "message": {"owner": FROM, "spender": FROM, "value": "1000", "nonce": 0, "deadline": "99"},
    });
    let (_, work) = hash_and_work(&permit);
    assert_eq!(work.type_hashes, 1);
    // Also as a JSON string, as viem and ethers send it.
    let s = Value::String(permit.to_string());
    let a = crate::decode_typed_data_params(&json!([FROM, s])).unwrap();
    assert_eq!(a.hash, permit_hash_reference(&permit));
}

fn permit_hash_reference(v: &Value) -> alloy_primitives::B256 {
    let t: alloy_dyn_abi::eip712::TypedData = serde_json::from_value(v.clone()).unwrap();
    t.eip712_signing_hash().unwrap()
}

#[test]
fn a_message_nested_deeper_than_any_type_is_refused_before_it_is_copied() {
    // Not reachable through JSON text (the parser stops at 128 levels), but the decoder is a
    // public API: 100,000 levels must be refused, not cloned recursively.
    // Built and moved without `json!` (which serializes, so clones recursively).
    let mut message = json!(1);
    for _ in 0..100_000 {
        let mut o = Map::new();
        o.insert("f0".into(), message);
        message = Value::Object(o);
    }
    let mut data = chain(2, 1, "", json!({}));
    data["message"] = message;
    let result = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let params = Value::Array(vec![Value::String(FROM.into()), data]);
            let r = crate::decode_typed_data_params(&params);
            // Dropping the Value recurses; leak it instead (the test's own limitation).
            std::mem::forget(params);
            r.map(|_| ())
        })
        .unwrap()
        .join()
        .expect("decoder panicked");
    assert!(
        matches!(&result, Err(Rejection::InvalidParams { field, reason })
            if field == "typedData.message" && reason.contains("cap")),
        "{result:?}"
    );
}
