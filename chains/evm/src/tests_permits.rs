//! Adversarial table for typed data (issue 13 item 4): permits and transfer authorizations are
//! read by exact type, lookalikes are refused under constraining rules, and what is read goes
//! through the same token limits, unlimited threshold and debits as calldata.

use alloy_primitives::{Address, U256};
use keyguard_chain::Rejection;
use serde_json::{json, Value};

use crate::decode_typed_data;
use crate::tests_movement::{
    any_calldata, load, pow2, refused, usdc, Outcome, ATTACKER, DAI, FROM, HEAD, NFT, PERMIT2,
    ROUTER, USDC,
};
use crate::EvmPolicy;

fn domain(name: &str, contract: Address) -> (Value, Value) {
    (
        json!([
            {"name": "name", "type": "string"},
            {"name": "chainId", "type": "uint256"},
            {"name": "verifyingContract", "type": "address"},
        ]),
        json!({"name": name, "chainId": 1, "verifyingContract": contract}),
    )
}

fn typed(primary: &str, contract: Address, mut types: Value, message: Value) -> Value {
    let (dt, d) = domain("Token", contract);
    types["EIP712Domain"] = dt;
    json!({"types": types, "primaryType": primary, "domain": d, "message": message})
}

fn fields(list: &[(&str, &str)]) -> Value {
    Value::Array(
        list.iter()
            .map(|(t, n)| json!({"name": n, "type": t}))
            .collect(),
    )
}

const EIP2612: &[(&str, &str)] = &[
    ("address", "owner"),
    ("address", "spender"),
    ("uint256", "value"),
    ("uint256", "nonce"),
    ("uint256", "deadline"),
];
const DAI_PERMIT: &[(&str, &str)] = &[
    ("address", "holder"),
    ("address", "spender"),
    ("uint256", "nonce"),
    ("uint256", "expiry"),
    ("bool", "allowed"),
];
const DETAILS: &[(&str, &str)] = &[
    ("address", "token"),
    ("uint160", "amount"),
    ("uint48", "expiration"),
    ("uint48", "nonce"),
];
const TOKEN_PERMISSIONS: &[(&str, &str)] = &[("address", "token"), ("uint256", "amount")];
const EIP3009: &[(&str, &str)] = &[
    ("address", "from"),
    ("address", "to"),
    ("uint256", "value"),
    ("uint256", "validAfter"),
    ("uint256", "validBefore"),
    ("bytes32", "nonce"),
];

fn eip2612(spender: Address, value: U256, shape: &[(&str, &str)]) -> Value {
    let mut msg = json!({
        "owner": FROM, "spender": spender, "value": value.to_string(), "nonce": 0, "deadline": 1,
    });
    if shape.iter().any(|(_, n)| *n == "extra") {
        msg["extra"] = json!(1);
    }
    typed("Permit", USDC, json!({"Permit": fields(shape)}), msg)
}

fn dai(spender: Address, allowed: bool) -> Value {
    typed(
        "Permit",
        DAI,
        json!({"Permit": fields(DAI_PERMIT)}),
        json!({
            "holder": FROM, "spender": spender, "nonce": 0, "expiry": 1, "allowed": allowed,
        }),
    )
}

fn permit2_single(
    spender: Address,
    amount: U256,
    details: &[(&str, &str)],
    primary: &str,
) -> Value {
    typed(
        primary,
        PERMIT2,
        json!({
            primary: fields(&[("PermitDetails", "details"), ("address", "spender"), ("uint256", "sigDeadline")]),
            "PermitDetails": fields(details),
        }),
        json!({
            "details": {"token": USDC, "amount": amount.to_string(), "expiration": 1, "nonce": 0},
            "spender": spender, "sigDeadline": 1,
        }),
    )
}

fn permit2_batch(spender: Address, amount: U256) -> Value {
    typed(
        "PermitBatch",
        PERMIT2,
        json!({
            "PermitBatch": fields(&[("PermitDetails[]", "details"), ("address", "spender"), ("uint256", "sigDeadline")]),
            "PermitDetails": fields(DETAILS),
        }),
        json!({
            "details": [
                {"token": DAI, "amount": "1", "expiration": 1, "nonce": 0},
                {"token": USDC, "amount": amount.to_string(), "expiration": 1, "nonce": 0},
            ],
            "spender": spender, "sigDeadline": 1,
        }),
    )
}

/// SignatureTransfer: batch or single, with or without a witness.
fn permit2_transfer(batch: bool, witness: bool, spender: Address, amount: U256) -> Value {
    let (primary, permitted_ty) = match (batch, witness) {
        (false, false) => ("PermitTransferFrom", "TokenPermissions"),
        (true, false) => ("PermitBatchTransferFrom", "TokenPermissions[]"),
        (false, true) => ("PermitWitnessTransferFrom", "TokenPermissions"),
        (true, true) => ("PermitBatchWitnessTransferFrom", "TokenPermissions[]"),
    };
    let mut f = vec![
        (permitted_ty, "permitted"),
        ("address", "spender"),
        ("uint256", "nonce"),
        ("uint256", "deadline"),
    ];
    if witness {
        f.push(("ExclusiveDutchOrder", "witness"));
    }
    let permission = json!({"token": USDC, "amount": amount.to_string()});
    let mut msg = json!({
        "permitted": if batch { json!([permission]) } else { permission },
        "spender": spender, "nonce": 0, "deadline": 1,
    });
    let mut types = json!({primary: fields(&f), "TokenPermissions": fields(TOKEN_PERMISSIONS)});
    if witness {
        types["ExclusiveDutchOrder"] = fields(&[("address", "swapper"), ("uint256", "minOut")]);
        msg["witness"] = json!({"swapper": FROM, "minOut": 1});
    }
    typed(primary, PERMIT2, types, msg)
}

fn eip3009(primary: &str, to: Address, value: U256) -> Value {
    typed(
        primary,
        USDC,
        json!({primary: fields(EIP3009)}),
        json!({
            "from": FROM, "to": to, "value": value.to_string(), "validAfter": 0, "validBefore": 1,
            "nonce": format!("0x{}", "11".repeat(32)),
        }),
    )
}

fn typed_outcome(p: &EvmPolicy, v: &Value) -> Outcome {
    let t = decode_typed_data(FROM.parse().unwrap(), v).unwrap_or_else(|e| panic!("{e:?}"));
    match p.decide_typed_data(&t) {
        Ok(d) => Ok(d.allowed_by),
        Err(Rejection::Policy { rule, field, .. }) => Err((rule.to_string(), field)),
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[test]
fn typed_data_movements_are_read_or_refused() {
    let p = any_calldata();
    let big = U256::from(10u64).pow(U256::from(30));
    let spender = |r: &str| refused(r, "message.spender");
    let mut reordered = EIP2612.to_vec();
    reordered.swap(3, 4);
    let mut widened = DETAILS.to_vec();
    widened[1] = ("uint256", "amount");
    let mut witness_extra = permit2_transfer(false, true, ATTACKER, big);
    witness_extra["types"]["PermitWitnessTransferFrom"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "more", "type": "uint256"}));
    witness_extra["message"]["more"] = json!(1);
    let rows: Vec<(&str, Value, Outcome)> = vec![
        (
            "eip2612 to router",
            eip2612(ROUTER, usdc(100), EIP2612),
            Ok("router-permits"),
        ),
        (
            "eip2612 to attacker",
            eip2612(ATTACKER, usdc(100), EIP2612),
            spender("router-permits"),
        ),
        (
            "eip2612 over max_approval",
            eip2612(ROUTER, usdc(2001), EIP2612),
            refused("evm.token_max_approval", "message.value"),
        ),
        (
            "eip2612 2^256-2",
            eip2612(ROUTER, U256::MAX - U256::from(1), EIP2612),
            refused("evm.unlimited_approval", "message.value"),
        ),
        (
            "eip2612 + a field",
            eip2612(
                ATTACKER,
                usdc(100),
                &[EIP2612, &[("uint256", "extra")]].concat(),
            ),
            refused("evm.typed_data_unrecognised", "primaryType"),
        ),
        (
            "eip2612 fields reordered",
            eip2612(ATTACKER, usdc(100), &reordered),
            refused("evm.typed_data_unrecognised", "primaryType"),
        ),
        (
            "dai allowed to attacker",
            dai(ATTACKER, true),
            spender("router-permits"),
        ),
        (
            "dai allowed to router (unlimited)",
            dai(ROUTER, true),
            refused("evm.unlimited_approval", "message.allowed"),
        ),
        (
            "dai revoke to router",
            dai(ROUTER, false),
            Ok("router-permits"),
        ),
        (
            "permit2 single to attacker",
            permit2_single(ATTACKER, usdc(1), DETAILS, "PermitSingle"),
            spender("router-permits"),
        ),
        (
            "permit2 single 2^160-2",
            permit2_single(ROUTER, pow2(160) - U256::from(2), DETAILS, "PermitSingle"),
            refused("evm.unlimited_approval", "message.details.amount"),
        ),
        (
            "permit2 single 100 USDC",
            permit2_single(ROUTER, usdc(100), DETAILS, "PermitSingle"),
            Ok("router-permits"),
        ),
        (
            "permit2 single renamed",
            permit2_single(ROUTER, usdc(100), DETAILS, "PermitSingleV2"),
            refused("evm.typed_data_unrecognised", "primaryType"),
        ),
        (
            "permit2 details widened",
            permit2_single(ROUTER, usdc(100), &widened, "PermitSingle"),
            refused("evm.typed_data_unrecognised", "primaryType"),
        ),
        (
            "permit2 batch to attacker",
            permit2_batch(ATTACKER, usdc(1)),
            spender("router-permits"),
        ),
        (
            "permit2 batch 10^30",
            permit2_batch(ROUTER, big),
            refused("evm.token_max_approval", "message.details.amount"),
        ),
        (
            "permit2 batch 100 USDC",
            permit2_batch(ROUTER, usdc(100)),
            Ok("router-permits"),
        ),
        (
            "transfer to attacker",
            permit2_transfer(false, false, ATTACKER, big),
            spender("router-permits"),
        ),
        (
            "batch transfer to attacker 10^30",
            permit2_transfer(true, false, ATTACKER, big),
            spender("router-permits"),
        ),
        (
            "batch transfer to router 10^30",
            permit2_transfer(true, false, ROUTER, big),
            refused("evm.token_max_approval", "message.permitted.amount"),
        ),
        (
            "witness transfer to attacker",
            permit2_transfer(false, true, ATTACKER, big),
            spender("router-permits"),
        ),
        (
            "batch witness transfer to attacker",
            permit2_transfer(true, true, ATTACKER, big),
            spender("router-permits"),
        ),
        (
            "witness transfer to router 100 USDC",
            permit2_transfer(false, true, ROUTER, usdc(100)),
            Ok("router-permits"),
        ),
        (
            "batch witness transfer to router 2^128",
            permit2_transfer(true, true, ROUTER, pow2(128)),
            refused("evm.unlimited_approval", "message.permitted.amount"),
        ),
        (
            "witness with an extra field",
            witness_extra,
            refused("evm.typed_data_unrecognised", "primaryType"),
        ),
        (
            "erc4494 to attacker",
            typed(
                "Permit",
                NFT,
                json!({"Permit": fields(&[("address", "spender"), ("uint256", "tokenId"), ("uint256", "nonce"), ("uint256", "deadline")])}),
                json!({"spender": ATTACKER, "tokenId": 7, "nonce": 0, "deadline": 1}),
            ),
            spender("router-permits"),
        ),
        (
            "erc4494 to router",
            typed(
                "Permit",
                NFT,
                json!({"Permit": fields(&[("address", "spender"), ("uint256", "tokenId"), ("uint256", "nonce"), ("uint256", "deadline")])}),
                json!({"spender": ROUTER, "tokenId": 7, "nonce": 0, "deadline": 1}),
            ),
            Ok("router-permits"),
        ),
        (
            "eip3009 transfer 1M to router",
            eip3009("TransferWithAuthorization", ROUTER, usdc(1_000_000)),
            refused("evm.token_max_transfer", "message.value"),
        ),
        (
            "eip3009 receive 1M to router",
            eip3009("ReceiveWithAuthorization", ROUTER, usdc(1_000_000)),
            refused("evm.token_max_transfer", "message.value"),
        ),
        (
            "eip3009 transfer to attacker",
            eip3009("TransferWithAuthorization", ATTACKER, usdc(1)),
            spender("router-permits"),
        ),
        (
            "eip3009 transfer 100 to router",
            eip3009("TransferWithAuthorization", ROUTER, usdc(100)),
            Ok("router-permits"),
        ),
        (
            "eip3009 renamed",
            eip3009("TransferWithAuthorisation", ROUTER, usdc(1)),
            refused("evm.typed_data_unrecognised", "primaryType"),
        ),
        (
            "unknown order under a spenders rule",
            typed(
                "Order",
                USDC,
                json!({"Order": fields(&[("uint256", "amount")])}),
                json!({"amount": 1}),
            ),
            refused("evm.typed_data_unrecognised", "primaryType"),
        ),
    ];
    let mut failures = Vec::new();
    for (name, v, want) in rows {
        let got = typed_outcome(&p, &v);
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn unknown_typed_data_passes_only_rules_that_constrain_nothing() {
    let rules = "[[typed_data]]\nname = \"orders\"\nprimary_types = [\"Order\", \"Permit\"]\n";
    // With token limits, a permit-like unknown structure is refused even without `spenders`.
    let limited = load(&format!("{HEAD}\n{rules}"));
    let bare = load(&format!(
        "chain_ids = [1]\nto = \"any\"\nmax_value = \"1\"\nmax_fee_per_gas = \"1\"\n\
         max_priority_fee_per_gas = \"1\"\nmax_fee_per_blob_gas = \"1\"\n{rules}"
    ));
    let order = typed(
        "Order",
        USDC,
        json!({"Order": fields(&[("uint256", "amount")])}),
        json!({"amount": 1}),
    );
    let lookalike = eip2612(
        ATTACKER,
        usdc(1),
        &[EIP2612, &[("uint256", "extra")]].concat(),
    );
    assert_eq!(typed_outcome(&limited, &order), Ok("orders"));
    assert_eq!(
        typed_outcome(&limited, &lookalike),
        refused("evm.typed_data_unrecognised", "primaryType")
    );
    // Control: a policy that limits no token has nothing the lookalike could bypass.
    assert_eq!(typed_outcome(&bare, &lookalike), Ok("orders"));
    // The recognised permit of a token without a limit passes only because the rule names
    // `Permit`; EIP-3009 transfers are debited toward velocity.
    assert_eq!(typed_outcome(&bare, &dai(ATTACKER, false)), Ok("orders"));
    let p = any_calldata();
    let t = decode_typed_data(
        FROM.parse().unwrap(),
        &eip3009("ReceiveWithAuthorization", ROUTER, usdc(100)),
    )
    .unwrap();
    let d = p.decide_typed_data(&t).unwrap();
    assert_eq!(d.debits.len(), 1, "{:?}", d.debits);
    assert_eq!(
        (d.debits[0].counter.as_str(), d.debits[0].amount),
        ("usdc-daily", usdc(100))
    );
    let t = decode_typed_data(
        FROM.parse().unwrap(),
        &permit2_single(ROUTER, usdc(100), DETAILS, "PermitSingle"),
    )
    .unwrap();
    let d = p.decide_typed_data(&t).unwrap();
    let rules: Vec<_> = d.debits.iter().map(|d| d.rule).collect();
    assert_eq!(rules, ["evm.allowance_window", "evm.velocity"]);
}
