"""EIP-712 typed data (web3.py signs through keyguard, eth-account recovers), permits counted as
approvals, eth_sign/personal_sign patterns, and Clef's account_* namespace."""

from __future__ import annotations

import copy

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from web3 import Web3

import kg
from test_policy_engine import ALICE, MALLORY, TOKEN, TST, make, engine_policy, req

PERMIT2 = "0x000000000022D473030F116dDEE9F6B43aC78BA3"

MAIL = {
    "types": {
        "EIP712Domain": [
            {"name": "name", "type": "string"},
            {"name": "version", "type": "string"},
            {"name": "chainId", "type": "uint256"},
            {"name": "verifyingContract", "type": "address"},
        ],
        "Person": [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}],
        "Mail": [
            {"name": "from", "type": "Person"},
            {"name": "to", "type": "Person"},
            {"name": "contents", "type": "string"},
        ],
    },
    "primaryType": "Mail",
    "domain": {
        "name": "Ether Mail",
        "version": "1",
        "chainId": 31337,
        "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC",
    },
    "message": {
        "from": {"name": "Cow", "wallet": "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},
        "to": {"name": "Bob", "wallet": "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},
        "contents": "Hello, Bob!",
    },
}


def permit(owner: str, spender: str, value: int) -> dict:
    return {
        "types": {
            "EIP712Domain": MAIL["types"]["EIP712Domain"],
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Permit",
        "domain": {"name": "Test Token", "version": "1", "chainId": 31337, "verifyingContract": TOKEN},
        # Wallets send big numbers as decimal strings (a JSON number would lose precision).
        "message": {"owner": owner, "spender": spender, "value": str(value), "nonce": 0, "deadline": 2**40},
    }


def permit2_single(spender: str, amount: int) -> dict:
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "PermitDetails": [
                {"name": "token", "type": "address"},
                {"name": "amount", "type": "uint160"},
                {"name": "expiration", "type": "uint48"},
                {"name": "nonce", "type": "uint48"},
            ],
            "PermitSingle": [
                {"name": "details", "type": "PermitDetails"},
                {"name": "spender", "type": "address"},
                {"name": "sigDeadline", "type": "uint256"},
            ],
        },
        "primaryType": "PermitSingle",
        "domain": {"name": "Permit2", "chainId": 31337, "verifyingContract": PERMIT2},
        "message": {
            "details": {"token": TOKEN, "amount": str(amount), "expiration": 2**40, "nonce": 0},
            "spender": spender,
            "sigDeadline": 2**40,
        },
    }


def typed_policy():
    p = engine_policy()
    p["evm"].update(
        typed_data=[
            {"name": "mail", "domain_name": "Ether Mail", "primary_types": ["Mail"]},
            {
                "name": "permit-alice",
                "domain_name": "Test Token",
                "verifying_contracts": ["TST"],
                "primary_types": ["Permit"],
                "spenders": [ALICE],
            },
            {"name": "permit2-alice", "verifying_contracts": [PERMIT2], "primary_types": ["PermitSingle"], "spenders": [ALICE]},
        ],
        messages=[
            {"name": "login", "methods": ["personal_sign"], "pattern": "^Sign in to example\\.org nonce [0-9]+$"},
        ],
    )
    return p


@pytest.fixture(scope="module")
def typed(start):
    return start(make([typed_policy()]), name="typed")


def recovered(data: dict, sig) -> str:
    return Account.recover_message(encode_typed_data(full_message=data), signature=sig)


def test_web3_signs_typed_data_through_keyguard(typed):
    addr = typed.address()
    w3 = Web3(Web3.HTTPProvider(typed.url()))
    sig = w3.eth.sign_typed_data(addr, copy.deepcopy(MAIL))
    assert recovered(MAIL, sig) == addr


def test_eth_signTypedData_v4_with_a_json_string(typed):
    import json

    addr = typed.address()
    sig = kg.result(typed.url(), "eth_signTypedData_v4", [addr, json.dumps(MAIL)])
    assert len(bytes.fromhex(sig[2:])) == 65 and recovered(MAIL, sig) == addr


def test_permit_to_an_allowed_spender_signs(typed):
    addr = typed.address()
    data = permit(addr, ALICE, 100 * TST)
    sig = kg.result(typed.url(), "eth_signTypedData_v4", [addr, data])
    assert recovered(data, sig) == addr


TYPED_CASES = {
    "permit-other-spender": (lambda a: permit(a, MALLORY, 1), "permit-alice", "message.spender"),
    "permit-unlimited": (lambda a: permit(a, ALICE, 2**256 - 1), "evm.unlimited_approval", "message.value"),
    "permit-over-token-max": (lambda a: permit(a, ALICE, 1000 * TST + 1), "evm.token_max_approval", "message.value"),
    "permit2-unlimited": (lambda a: permit2_single(ALICE, 2**160 - 1), "evm.unlimited_approval", "message.details.amount"),
    "permit2-other-spender": (lambda a: permit2_single(MALLORY, 5), "permit2-alice", "message.spender"),
    "unknown-domain": (lambda a: dict(MAIL, domain=dict(MAIL["domain"], name="Evil Mail")), "evm.typed_data", "domain"),
    "other-chain": (lambda a: dict(MAIL, domain=dict(MAIL["domain"], chainId=1)), "evm.typed_data_chain_id", "domain.chainId"),
}


@pytest.mark.parametrize("case", list(TYPED_CASES), ids=list(TYPED_CASES))
def test_typed_data_refusals(typed, nothing_signed, case):
    make_data, rule, field = TYPED_CASES[case]
    addr = typed.address()
    with nothing_signed(typed):
        resp = kg.call(typed.url(), "eth_signTypedData_v4", [addr, make_data(addr)])
        kg.assert_error(resp, -32001, rule=rule, field=field)


def test_permit2_within_limits_signs(typed):
    addr = typed.address()
    data = permit2_single(ALICE, 5 * TST)
    assert recovered(data, kg.result(typed.url(), "eth_signTypedData_v4", [addr, data])) == addr


def test_personal_sign_matching_the_pattern_signs(typed):
    addr = typed.address()
    text = "Sign in to example.org nonce 1234"
    sig = kg.result(typed.url(), "personal_sign", ["0x" + text.encode().hex(), addr])
    assert Account.recover_message(encode_defunct(text=text), signature=sig) == addr


@pytest.mark.parametrize(
    "method,params",
    [
        ("personal_sign", lambda a: ["0x" + b"Transfer all my funds".hex(), a]),
        ("eth_sign", lambda a: [a, "0x" + "ab" * 32]),  # a bare hash: never without allow_hash
        ("personal_sign", lambda a: ["0x" + "ab" * 32, a]),
        ("eth_sign", lambda a: [a, "0x" + b"Sign in to example.org nonce 1".hex()]),  # rule covers personal_sign only
    ],
)
def test_messages_are_refused_unless_a_rule_allows(typed, nothing_signed, method, params):
    with nothing_signed(typed):
        kg.assert_error(kg.call(typed.url(), method, params(typed.address())), -32001, rule="evm.message", field="data")


def test_clef_namespace(typed, nothing_signed):
    addr = typed.address()
    assert kg.result(typed.url(), "account_version", []) == "6.1.0"
    assert addr.lower() in [a.lower() for a in kg.result(typed.url(), "account_list", [])]
    tx = req(addr, ALICE, value=5)
    res = kg.result(typed.url(), "account_signTransaction", [tx, "transfer()"])
    assert set(res) == {"raw", "tx"}
    kg.verify_signed(res["raw"], tx, addr)
    text = "Sign in to example.org nonce 77"
    sig = kg.result(typed.url(), "account_signData", ["text/plain", addr, "0x" + text.encode().hex()])
    assert Account.recover_message(encode_defunct(text=text), signature=sig) == addr
    sig = kg.result(typed.url(), "account_signData", ["data/typed", addr, MAIL])
    assert recovered(MAIL, sig) == addr
    with nothing_signed(typed):
        kg.assert_error(kg.call(typed.url(), "account_signData", ["application/clique", addr, "0x00"]), -32602, field="contentType")
