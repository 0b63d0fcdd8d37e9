//! Decoding, rules and pass 2 on hand-built requests. Interop with independent implementations
//! (eth-account, web3.py, viem) is proven by the daemon's integration tests.

use alloy_consensus::Transaction;
use alloy_primitives::{address, Address, U256};
use k256::ecdsa::SigningKey;
use keyguard_chain::{PublicKey, Rejection, Signature};
use serde_json::{json, Value};

use crate::{decode_sign_transaction_params, finalize, EvmPolicy, TxIntent};
use keyguard_chain::SigningPayload;

const TO: &str = "0x000000000000000000000000000000000000dEaD";
const DELEGATE: Address = address!("0x1111111111111111111111111111111111111111");

fn key() -> SigningKey {
    SigningKey::from_slice(&[7u8; 32]).unwrap()
}

fn from() -> Address {
    let point = key().verifying_key().to_encoded_point(false);
    crate::address_of(&PublicKey::Secp256k1(point.as_bytes().try_into().unwrap())).unwrap()
}

fn base(extra: Value) -> Value {
    let mut v = json!({
        "from": from(), "to": TO, "gas": "0x5208", "nonce": "0x3", "chainId": "0x7a69",
        "value": "0x1",
    });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

fn decode(v: Value) -> Result<TxIntent, Rejection> {
    decode_sign_transaction_params(&json!([v]))
}

fn invalid_field(v: Value) -> String {
    match decode(v).unwrap_err() {
        Rejection::InvalidParams { field, .. } => field,
        other => panic!("expected invalid params, got {other:?}"),
    }
}

fn authorization() -> Value {
    json!([{"chainId": "0x7a69", "address": DELEGATE, "nonce": "0x0", "yParity": "0x1",
            "r": "0x1234", "s": "0x5678"}])
}

fn blob_hash() -> String {
    format!("0x01{}", "ab".repeat(31))
}

#[test]
fn types_are_inferred_as_geth_does() {
    let cases = [
        (json!({"gasPrice": "0x1"}), 0),
        (json!({"gasPrice": "0x1", "accessList": []}), 1),
        (
            json!({"maxFeePerGas": "0x2", "maxPriorityFeePerGas": "0x1"}),
            2,
        ),
        (
            json!({"maxFeePerGas": "0x2", "maxPriorityFeePerGas": "0x1",
                   "maxFeePerBlobGas": "0x1", "blobVersionedHashes": [blob_hash()]}),
            3,
        ),
        (
            json!({"maxFeePerGas": "0x2", "maxPriorityFeePerGas": "0x1",
                   "authorizationList": authorization()}),
            4,
        ),
    ];
    for (fields, ty) in cases {
        let intent = decode(base(fields.clone())).unwrap_or_else(|e| panic!("{fields}: {e}"));
        assert_eq!(intent.tx_type(), ty, "{fields}");
        assert_eq!(intent.chain_id(), 31337);
        assert_eq!(intent.tx.nonce(), 3);
    }
}

#[test]
fn explicit_type_must_fit_the_fields() {
    // viem sends `type`; a 2930 request may omit its access list.
    let t1 = decode(base(json!({"type": "0x1", "gasPrice": "0x1"}))).unwrap();
    assert_eq!(t1.tx_type(), 1);
    assert_eq!(
        invalid_field(base(json!({"type": "0x0", "maxFeePerGas": "0x1",
                                  "maxPriorityFeePerGas": "0x1"}))),
        "maxFeePerGas"
    );
    assert_eq!(
        invalid_field(base(json!({"type": "0x2", "gasPrice": "0x1"}))),
        "gasPrice"
    );
    assert_eq!(
        invalid_field(base(json!({"type": "0x7", "gasPrice": "0x1"}))),
        "type"
    );
}

#[test]
fn missing_required_fields_are_named() {
    for field in ["nonce", "gas", "chainId", "from"] {
        let mut v = base(json!({"gasPrice": "0x1"}));
        v.as_object_mut().unwrap().remove(field);
        assert_eq!(invalid_field(v), field);
    }
    assert_eq!(invalid_field(base(json!({}))), "gasPrice");
    assert_eq!(
        invalid_field(base(json!({"maxFeePerGas": "0x1"}))),
        "maxPriorityFeePerGas"
    );
    // null counts as absent
    assert_eq!(invalid_field(base(json!({"gasPrice": null}))), "gasPrice");
}

#[test]
fn bad_fields_are_refused_by_name() {
    let fee = json!({"gasPrice": "0x1"});
    let cases = [
        (json!({"gasLimit": "0x1"}), "gasLimit"),
        (json!({"blobs": ["0x00"]}), "blobs"),
        (json!({"data": "0x01", "input": "0x02"}), "input"),
        (json!({"nonce": "0x10000000000000000"}), "nonce"),
        (json!({"nonce": "0xffffffffffffffff"}), "nonce"),
        (json!({"value": "0x01"}), "value"),
        (json!({"to": "0x1234"}), "to"),
        (json!({"data": "0xabc"}), "data"),
        (
            json!({"accessList": [{"address": TO, "storageKeys": ["0x12"]}]}),
            "accessList[0].storageKeys[0]",
        ),
        (
            json!({"accessList": [{"address": TO}]}),
            "accessList[0].storageKeys",
        ),
    ];
    for (extra, field) in cases {
        let mut v = base(fee.clone());
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        assert_eq!(invalid_field(v), field, "{extra}");
    }
    let dynamic = json!({"maxFeePerGas": "0x2", "maxPriorityFeePerGas": "0x3"});
    assert_eq!(invalid_field(base(dynamic)), "maxPriorityFeePerGas");
    let blob = json!({"maxFeePerGas": "0x2", "maxPriorityFeePerGas": "0x1",
                      "maxFeePerBlobGas": "0x1",
                      "blobVersionedHashes": [format!("0x02{}", "ab".repeat(31))]});
    assert_eq!(invalid_field(base(blob)), "blobVersionedHashes[0]");
    let mut creation = base(json!({"maxFeePerGas": "0x2", "maxPriorityFeePerGas": "0x1",
                                   "authorizationList": authorization()}));
    creation.as_object_mut().unwrap().remove("to");
    assert_eq!(invalid_field(creation), "to");
    let empty_auth = base(json!({"maxFeePerGas": "0x2", "maxPriorityFeePerGas": "0x1",
                                 "authorizationList": []}));
    assert_eq!(invalid_field(empty_auth), "authorizationList");
    assert!(decode_sign_transaction_params(&json!([])).is_err());
    assert!(decode_sign_transaction_params(&json!({"from": TO})).is_err());
}

fn policy() -> EvmPolicy {
    toml::from_str(
        r#"
        chain_ids = [31337]
        to = ["0x000000000000000000000000000000000000dEaD"]
        max_value = "1 ether"
        max_fee_per_gas = "100 gwei"
        max_priority_fee_per_gas = "2 gwei"
        max_fee_per_blob_gas = "10 gwei"
        delegations = ["0x1111111111111111111111111111111111111111"]
        "#,
    )
    .unwrap()
}

fn rule(v: Value) -> Option<&'static str> {
    match policy().check(&decode(v).unwrap()) {
        Ok(()) => None,
        Err(Rejection::Policy { rule, .. }) => Some(rule),
        Err(other) => panic!("{other:?}"),
    }
}

#[test]
fn each_rule_names_itself() {
    let dynamic = |extra: Value| {
        let mut v = base(json!({"maxFeePerGas": "0x3b9aca00", "maxPriorityFeePerGas": "0x1"}));
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    assert_eq!(rule(dynamic(json!({}))), None);
    assert_eq!(
        rule(dynamic(json!({"chainId": "0x1"}))),
        Some("evm.chain_id")
    );
    assert_eq!(
        rule(dynamic(
            json!({"to": "0x000000000000000000000000000000000000bEEF"})
        )),
        Some("evm.to_allowlist")
    );
    assert_eq!(
        rule(dynamic(json!({"to": null}))),
        Some("evm.contract_creation")
    );
    assert_eq!(rule(dynamic(json!({"value": "0xde0b6b3a7640000"}))), None);
    assert_eq!(
        rule(dynamic(json!({"value": "0xde0b6b3a7640001"}))),
        Some("evm.max_value")
    );
    assert_eq!(
        rule(dynamic(json!({"maxFeePerGas": "0x174876e801"}))),
        Some("evm.max_fee_per_gas")
    );
    assert_eq!(
        rule(base(json!({"gasPrice": "0x174876e801"}))),
        Some("evm.max_fee_per_gas")
    );
    assert_eq!(
        rule(dynamic(
            json!({"maxFeePerGas": "0x174876e800", "maxPriorityFeePerGas": "0x77359401"})
        )),
        Some("evm.max_priority_fee_per_gas")
    );
    assert_eq!(
        rule(dynamic(json!({"maxFeePerBlobGas": "0x2540be401",
                            "blobVersionedHashes": [blob_hash()]}))),
        Some("evm.max_fee_per_blob_gas")
    );
    assert_eq!(
        rule(dynamic(json!({"authorizationList": authorization()}))),
        None
    );
    let mut other = authorization();
    other[0]["address"] = json!(TO);
    assert_eq!(
        rule(dynamic(json!({"authorizationList": other}))),
        Some("evm.delegation")
    );
}

#[test]
fn amounts_parse_with_units() {
    use crate::Wei;
    assert_eq!(
        "1 ether".parse::<Wei>().unwrap().0,
        U256::from(10u64.pow(18))
    );
    assert_eq!(
        "0.5 eth".parse::<Wei>().unwrap().0,
        U256::from(5 * 10u64.pow(17))
    );
    assert_eq!(
        "500 gwei".parse::<Wei>().unwrap().0,
        U256::from(500 * 10u64.pow(9))
    );
    assert_eq!("21000".parse::<Wei>().unwrap().0, U256::from(21000));
    assert!("1 btc".parse::<Wei>().is_err());
    assert!("-1 ether".parse::<Wei>().is_err());
    assert!("lots".parse::<Wei>().is_err());
}

fn sign(intent: &TxIntent, key: &SigningKey) -> Signature {
    let SigningPayload::Secp256k1Prehash(digest) = intent.payload() else {
        unreachable!()
    };
    let (sig, recid) = key.sign_prehash_recoverable(&digest).unwrap();
    let (r, s) = sig.split_bytes();
    Signature::Secp256k1 {
        r: r.into(),
        s: s.into(),
        recovery_id: recid.to_byte(),
    }
}

#[test]
fn pass_two_accepts_only_the_approved_transaction_from_the_right_key() {
    let intent = decode(base(
        json!({"maxFeePerGas": "0x2", "maxPriorityFeePerGas": "0x1"}),
    ))
    .unwrap();
    let good = finalize(&intent, &sign(&intent, &key())).unwrap();
    assert_eq!(good.raw[0], 2);
    assert_eq!(good.geth_json()["tx"]["hash"], json!(good.hash));

    let stranger = SigningKey::from_slice(&[9u8; 32]).unwrap();
    let err = finalize(&intent, &sign(&intent, &stranger)).unwrap_err();
    assert!(err.0.contains("recovers to"), "{err}");

    // A signature over another transaction recovers to some other address.
    let other = decode(base(
        json!({"maxFeePerGas": "0x3", "maxPriorityFeePerGas": "0x1"}),
    ))
    .unwrap();
    assert!(finalize(&intent, &sign(&other, &key())).is_err());

    // High-S (the malleable twin) is refused even though it recovers correctly.
    let Signature::Secp256k1 { r, s, recovery_id } = sign(&intent, &key()) else {
        unreachable!()
    };
    let n = U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )
    .unwrap();
    let high = Signature::Secp256k1 {
        r,
        s: (n - U256::from_be_bytes(s)).to_be_bytes(),
        recovery_id: recovery_id ^ 1,
    };
    assert!(finalize(&intent, &high).unwrap_err().0.contains("high s"));
    assert!(finalize(&intent, &Signature::Ed25519([0; 64])).is_err());
}
