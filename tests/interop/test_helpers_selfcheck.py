"""Self-check of the suite's own verifier on transactions that eth-account signs itself.

Runs without the daemon: if these fail, the verifier (not keyguard) is wrong.
"""

import pytest
from eth_account import Account

import kg

LOCAL = Account.from_key(b"\x07" * 32)


@pytest.mark.parametrize("kind", ["legacy", "2930", "1559", "4844", "7702"])
def test_verifier_accepts_eth_account_signatures(kind):
    req = kg.tx_request(kind, LOCAL.address, nonce=3)
    signed = Account.sign_transaction(kg.request_to_eth_account(req), LOCAL.key)
    d = kg.verify_signed("0x" + signed.raw_transaction.hex(), req, LOCAL.address)
    assert d["type"] == kg.expected_type(req)
    assert d["hash"] == "0x" + bytes(signed.hash).hex()


@pytest.mark.parametrize("kind", ["legacy", "1559"])
def test_verifier_accepts_contract_creation(kind):
    req = kg.tx_request(kind, LOCAL.address, to=None, input="0x6000600055")
    signed = Account.sign_transaction(kg.request_to_eth_account(req), LOCAL.key)
    d = kg.verify_signed("0x" + signed.raw_transaction.hex(), req, LOCAL.address)
    assert d["to"] is None


@pytest.mark.parametrize("kind", ["legacy", "1559", "4844", "7702"])
def test_verifier_rejects_wrong_fields(kind):
    req = kg.tx_request(kind, LOCAL.address, nonce=3)
    signed = Account.sign_transaction(kg.request_to_eth_account(req), LOCAL.key)
    raw = "0x" + signed.raw_transaction.hex()
    for field, value in [("nonce", "0x4"), ("gas", "0x1"), ("value", "0x1"), ("input", "0x00")]:
        with pytest.raises(AssertionError):
            kg.verify_signed(raw, dict(req, **{field: value}), LOCAL.address)
    with pytest.raises(AssertionError):
        kg.verify_signed(raw, req, Account.from_key(b"\x08" * 32).address)


def test_verifier_rejects_high_s():
    req = kg.tx_request("1559", LOCAL.address)
    signed = Account.sign_transaction(kg.request_to_eth_account(req), LOCAL.key)
    import rlp

    raw = bytes(signed.raw_transaction)
    f = rlp.decode(raw[1:])
    s = int.from_bytes(f[-1], "big")
    y = int.from_bytes(f[-3], "big")
    f[-1] = (kg.SECP256K1_N - s).to_bytes(32, "big").lstrip(b"\x00")
    f[-3] = b"" if y == 1 else b"\x01"
    flipped = "0x" + (raw[:1] + rlp.encode(f)).hex()
    with pytest.raises(AssertionError, match="high-s"):
        kg.verify_signed(flipped, req, LOCAL.address)


def test_toml_writer_round_trips():
    import tomllib

    cfg = kg.base_config(
        kg.Path("/tmp/x"),
        clients=[{"name": "c", "token_sha256": "ab", "keys": ["k"], "response": "geth"}],
    )
    back = tomllib.loads(kg.to_toml(cfg))
    assert back == cfg | {"data": {"dir": "/tmp/x"}}


# -- client plumbing against a reference signer (eth-account), no daemon needed -------------

import conftest  # noqa: E402
from fake_signer import FakeSigner  # noqa: E402


def test_web3_plumbing_against_reference_signer():
    fs = FakeSigner(LOCAL, response="geth")
    try:
        req = kg.tx_request("1559", LOCAL.address, nonce=9)
        signed = kg.web3_sign(fs.url, kg.web3_request(req))
        sent = fs.requests[-1]
        assert sent["method"] == "eth_signTransaction"
        kg.verify_signed("0x" + bytes(signed.raw).hex(), req, LOCAL.address)
    finally:
        fs.close()


def test_viem_plumbing_against_reference_signer():
    fs = FakeSigner(LOCAL, response="raw")
    try:
        reqs = [kg.tx_request("legacy", LOCAL.address, nonce=1), kg.tx_request("1559", LOCAL.address, nonce=2)]
        out = kg.run_viem(fs.url, LOCAL.address, [kg.viem_request(r) for r in reqs], conftest.node_modules())
        for req, o in zip(reqs, out):
            assert "raw" in o, o
            assert o["recovered"].lower() == LOCAL.address.lower()
            kg.verify_signed(o["raw"], req, LOCAL.address)
        methods = [m["method"] for m in fs.requests]
        assert "eth_signTransaction" in methods and "eth_chainId" in methods
    finally:
        fs.close()


def test_leak_scan_catches_signature_shaped_runs():
    """assert_error's leak scan: any hex run of 64+ digits (an r or s, a 64/65-byte signature,
    a raw transaction) and any base64 run long enough for a 64/65-byte signature."""
    import base64

    sig65 = bytes(range(65))
    sig64 = bytes(range(100, 164))
    for leak in [
        "0x" + sig65.hex(),
        sig65.hex(),
        sig64.hex(),
        "ab" * 32,  # a bare 32-byte r
        base64.b64encode(sig65).decode(),
        base64.b64encode(sig64).decode(),
        base64.b64encode(sig64).decode().rstrip("="),
        base64.urlsafe_b64encode(sig65).decode(),
    ]:
        resp = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": f"refused {leak} x"}}
        with pytest.raises(AssertionError, match="may be a signature"):
            kg.assert_error(resp, -32001)


def test_leak_scan_passes_ordinary_errors():
    """The scan must also be able to pass: addresses (40 hex), short ids and prose are fine."""
    resp = {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {
            "code": -32001,
            "message": "refused by rule evm.no_rule: to 0x" + "ab" * 20 + " is not allowed (request 1a2b3c-7)",
            "data": {"rule": "evm.no_rule", "field": "to", "reason": "x" * 40},
        },
    }
    kg.assert_error(resp, -32001, rule="evm.no_rule")
    # A refusal naming an amount: 2^256-1 in decimal is 78 digits, not a signature.
    amount = {"jsonrpc": "2.0", "id": 2, "error": {"code": -32001, "message": str(2**256 - 1)}}
    kg.assert_error(amount, -32001)
    # Control: the same length of hex with letters is still caught.
    leaked = {"jsonrpc": "2.0", "id": 3, "error": {"code": -32001, "message": "ab" * 39}}
    try:
        kg.assert_error(leaked, -32001)
    except AssertionError:
        pass
    else:
        raise AssertionError("a 78-character hex run passed the leak scan")
