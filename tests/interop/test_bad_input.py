"""Malformed or ambiguous requests are refused with -32602 {field, reason} (or the transport
error the spec names) and nothing is signed."""

from __future__ import annotations

import json

import pytest

import kg

@pytest.fixture(scope="module")
def daemon(start):
    return start(lambda data: kg.base_config(data), name="badinput")


@pytest.fixture(scope="module")
def addr(daemon):
    return daemon.address("dev-secp256k1")


def good(addr, kind="1559", **over):
    tx = kg.tx_request(kind, addr, nonce=kg.fresh_nonce())
    tx.update(over)
    return tx


def drop(tx, *keys):
    return {k: v for k, v in tx.items() if k not in keys}


def test_control_good_request_signs(daemon, addr):
    """The base request of this module is valid: each case below differs from it in one way."""
    for kind in ("legacy", "1559"):
        req = good(addr, kind)
        kg.verify_signed(kg.result(daemon.url(), "eth_signTransaction", [req]), req, addr)


BAD_PARAMS = {
    # id: (kind, mutate(tx) -> tx, acceptable data.field values)
    "malformed-hex-quantity": ("1559", lambda t: dict(t, value="0xzz"), {"value"}),
    "malformed-hex-data": ("1559", lambda t: dict(t, input="0xzz12"), {"input", "data"}),
    "odd-length-data": ("1559", lambda t: dict(t, input="0x123"), {"input", "data"}),
    "quantity-without-0x": ("1559", lambda t: dict(t, nonce="12"), {"nonce"}),
    "empty-quantity": ("1559", lambda t: dict(t, gas="0x"), {"gas"}),
    "quantity-as-json-number": ("1559", lambda t: dict(t, nonce=1), {"nonce"}),
    "overflow-nonce-u64": ("1559", lambda t: dict(t, nonce="0x1" + "0" * 16), {"nonce"}),
    "overflow-gas-u64": ("1559", lambda t: dict(t, gas="0x1" + "0" * 16), {"gas"}),
    "overflow-value-u256": ("1559", lambda t: dict(t, value="0x1" + "0" * 64), {"value"}),
    "overflow-fee-u256": ("1559", lambda t: dict(t, maxFeePerGas="0x1" + "0" * 64), {"maxFeePerGas"}),
    "leading-zero-nonce": ("1559", lambda t: dict(t, nonce="0x01"), {"nonce"}),
    "leading-zero-value": ("1559", lambda t: dict(t, value="0x00"), {"value"}),
    "unknown-from": ("1559", lambda t: dict(t, **{"from": "0x" + "99" * 20}), {"from"}),
    "missing-from": ("1559", lambda t: drop(t, "from"), {"from"}),
    "bad-from-length": ("1559", lambda t: dict(t, **{"from": "0x1234"}), {"from"}),
    "bad-to-length": ("1559", lambda t: dict(t, to="0x" + "11" * 19), {"to"}),
    "unknown-field": ("1559", lambda t: dict(t, foo="0x1"), {"foo"}),
    "unknown-field-gasLimit": ("1559", lambda t: dict(t, gasLimit="0x5208"), {"gasLimit"}),
    "missing-nonce": ("1559", lambda t: drop(t, "nonce"), {"nonce"}),
    "missing-gas": ("1559", lambda t: drop(t, "gas"), {"gas"}),
    "missing-chainId": ("1559", lambda t: drop(t, "chainId"), {"chainId"}),
    "missing-fee-1559": ("1559", lambda t: drop(t, "maxFeePerGas", "maxPriorityFeePerGas"), {"gasPrice", "maxFeePerGas", "fee"}),
    "missing-priority-fee": ("1559", lambda t: drop(t, "maxPriorityFeePerGas"), {"maxPriorityFeePerGas"}),
    "missing-fee-legacy": ("legacy", lambda t: drop(t, "gasPrice"), {"gasPrice", "maxFeePerGas", "fee"}),
    "both-gasPrice-and-maxFee": ("1559", lambda t: dict(t, gasPrice=kg.q(kg.GWEI)), {"gasPrice", "maxFeePerGas"}),
    "legacy-missing-chainId-pre155": ("legacy", lambda t: drop(t, "chainId"), {"chainId"}),
    "data-differs-from-input": ("1559", lambda t: dict(t, data="0xdeadbeef", input="0xdeadbeee"), {"input", "data"}),
    "type-inconsistent": ("1559", lambda t: dict(t, type="0x0"), {"type", "maxFeePerGas", "maxPriorityFeePerGas"}),
    "type-unknown": ("1559", lambda t: dict(t, type="0x9"), {"type"}),
    "blob-hash-wrong-length": ("4844", lambda t: dict(t, blobVersionedHashes=["0x01" + "ab" * 30]), {"blobVersionedHashes"}),
    "blob-without-blob-fee": ("4844", lambda t: drop(t, "maxFeePerBlobGas"), {"maxFeePerBlobGas"}),
    "blob-without-to": ("4844", lambda t: dict(t, to=None), {"to"}),
    "7702-without-to": ("7702", lambda t: dict(t, to=None), {"to"}),
    "access-list-short-key": ("2930", lambda t: dict(t, accessList=[{"address": "0x" + "22" * 20, "storageKeys": ["0x" + "00" * 31]}]), {"accessList", "storageKeys"}),
    "authorization-missing-s": ("7702", lambda t: dict(t, authorizationList=[drop(t["authorizationList"][0], "s")]), {"authorizationList", "s"}),
}


@pytest.mark.parametrize("case", list(BAD_PARAMS), ids=list(BAD_PARAMS))
def test_invalid_params(daemon, addr, nothing_signed, case):
    kind, mutate, fields = BAD_PARAMS[case]
    req = mutate(good(addr, kind))
    with nothing_signed(daemon):
        resp = kg.sign(daemon.url(), req)
    err = kg.assert_error(resp, -32602)
    data = err.get("data")
    assert isinstance(data, dict) and isinstance(data.get("reason"), str) and data["reason"], err
    assert kg.field_matches(data.get("field"), fields), f"data.field={data.get('field')!r}, expected one of {fields}: {err}"


def test_wrong_chain_is_refused(daemon, addr, nothing_signed):
    with nothing_signed(daemon):
        resp = kg.sign(daemon.url(), good(addr, chainId=kg.q(1)))
    kg.assert_error(resp, -32001, rule="evm.chain_id", field="chainId")


def test_legacy_chain_id_zero_is_refused(daemon, addr, nothing_signed):
    """chainId 0 would be a replayable (pre-EIP-155-like) legacy tx: refused, as invalid params
    or by the chain-id rule."""
    with nothing_signed(daemon):
        resp = kg.sign(daemon.url(), good(addr, "legacy", chainId="0x0"))
    assert "result" not in resp, resp
    err = resp["error"]
    assert (err["code"], err["data"].get("rule")) in ((-32602, None), (-32001, "evm.chain_id")), err
    assert err["data"]["field"] == "chainId", err


def test_priority_fee_above_max_fee_is_refused(daemon, addr, nothing_signed):
    req = good(addr, maxFeePerGas=kg.q(kg.GWEI), maxPriorityFeePerGas=kg.q(2 * kg.GWEI))
    with nothing_signed(daemon):
        resp = kg.sign(daemon.url(), req)
    assert "result" not in resp and resp["error"]["code"] in (-32602, -32001), resp


@pytest.mark.parametrize(
    "params",
    [None, [], {}, "0x00", [None], [[]], ["0xdeadbeef"]],
    ids=["no-params", "empty-list", "object", "string", "null-tx", "list-tx", "hex-tx"],
)
def test_bad_params_shape(daemon, params, nothing_signed):
    with nothing_signed(daemon):
        resp = kg.call(daemon.url(), "eth_signTransaction", params)
    kg.assert_error(resp, -32602)


def test_two_transactions_in_params_refused(daemon, addr, nothing_signed):
    with nothing_signed(daemon):
        resp = kg.call(daemon.url(), "eth_signTransaction", [good(addr), good(addr)])
    kg.assert_error(resp, -32602)


def test_unknown_method(daemon, nothing_signed):
    for m in ("eth_sendTransaction", "eth_sign", "personal_sign", "no_such_method"):
        with nothing_signed(daemon):
            resp = kg.call(daemon.url(), m, ["0x" + "11" * 20, "0x" + "22" * 32])
        assert "result" not in resp and "error" in resp, resp


def _send_oversized(url: str, body: bytes) -> tuple[int, dict | None]:
    """POST over a raw socket: headers first, then (if the server has not answered from the
    Content-Length alone) the body, tolerating a server that stops reading; then the answer."""
    import select
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        head = (
            f"POST {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        sock.sendall(head)
        ready, _, _ = select.select([sock], [], [], 1.0)
        if not ready:
            try:
                sock.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                pass
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    if not data:
        return 0, None
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out = b""
        while rest:
            n, _, rest = rest.partition(b"\r\n")
            size = int(n, 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2 :]
        rest = out
    try:
        return status, json.loads(rest)
    except ValueError:
        return status, None


def test_oversized_body_is_413(daemon, addr, nothing_signed):
    req = good(addr, input="0x" + "ab" * (600 * 1024))  # ~1.2 MB of JSON > max_body_bytes
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_signTransaction", "params": [req]}).encode()
    assert len(body) > 1048576
    with nothing_signed(daemon):
        # A server that answers before reading the whole body may reset the connection under a
        # client still sending (the answer is then lost); a few attempts make that benign.
        for _ in range(5):
            status, answer = _send_oversized(daemon.url(), body)
            if status:
                break
    assert status == 413, f"HTTP {status}: {answer}"
    assert answer is not None, "413 without a JSON-RPC error body"
    err = answer["error"]
    assert err["code"] == -32600, err
    assert "body" in json.dumps(err.get("data")), f"error data must name the body: {err}"


def test_body_just_under_limit_is_processed(daemon, addr):
    req = good(addr, input="0x" + "ab" * (400 * 1024))
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_signTransaction", "params": [req]})
    assert len(body) < 1048576
    r = kg.post(daemon.url(), body)
    assert r.status == 200, r
    kg.verify_signed(r.json["result"], req, addr)


@pytest.mark.parametrize("body", ["not json", '{"jsonrpc": "2.0", "id": 1, "method": ', "\x00\x01"], ids=["text", "truncated", "binary"])
def test_non_json_is_parse_error(daemon, body, nothing_signed):
    with nothing_signed(daemon):
        r = kg.post(daemon.url(), body)
    assert r.json is not None, r
    assert r.json["error"]["code"] == -32700, r.json


def test_batch_answers_each_call(daemon, addr, nothing_signed):
    ok_req = good(addr)
    bad_req = good(addr, nonce="0x01")
    batch = [
        {"jsonrpc": "2.0", "id": 11, "method": "eth_signTransaction", "params": [ok_req]},
        {"jsonrpc": "2.0", "id": 12, "method": "eth_signTransaction", "params": [bad_req]},
        {"jsonrpc": "2.0", "id": 13, "method": "eth_chainId"},
    ]
    r = kg.post(daemon.url(), json.dumps(batch))
    assert r.status == 200, r
    assert isinstance(r.json, list) and len(r.json) == 3, r
    by_id = {m["id"]: m for m in r.json}
    kg.verify_signed(by_id[11]["result"], ok_req, addr)
    kg.assert_error(by_id[12], -32602, field="nonce")
    assert by_id[13]["result"] == "0x7a69"
