"""Every transaction type signed through keyguard's EVM JSON-RPC listener (HTTP and
WebSocket), each checked independently with eth-account / eth-keys / rlp."""

from __future__ import annotations

import json

import pytest
from eth_utils import keccak, to_checksum_address

import kg

KINDS = ["legacy", "2930", "1559", "4844", "7702"]


@pytest.fixture(scope="module")
def daemon(start, backend):
    return start(
        lambda data: kg.base_config(
            data,
            listeners=[kg.listener("evm"), kg.listener("evm-geth", response="geth")],
            backend=backend,
        ),
        name=f"signing-{backend}",
    )


@pytest.fixture(scope="module")
def addr(daemon):
    return daemon.address("dev-secp256k1")


def test_startup_lines(daemon):
    assert set(daemon.keys) >= {"dev-secp256k1", "dev-ed25519"}, daemon.stdout_lines
    scheme, address = daemon.keys["dev-secp256k1"]
    assert scheme == "secp256k1"
    assert address.startswith("0x") and len(address) == 42
    scheme, pub = daemon.keys["dev-ed25519"]
    assert scheme == "ed25519"
    assert len(bytes.fromhex(pub.removeprefix("0x"))) == 32
    for name in ("evm", "evm-geth"):
        lst = daemon.listeners[name]
        assert lst.protocol == "evm-jsonrpc"
        assert lst.http.startswith("http://127.0.0.1:") and not lst.http.endswith(":0")
        assert lst.ws == "ws://" + lst.http.removeprefix("http://")


def test_eth_accounts(daemon, addr):
    accounts = kg.result(daemon.url(), "eth_accounts", [])
    assert [a.lower() for a in accounts] == [addr.lower()]  # the ed25519 key is no EVM account


def test_eth_accounts_without_params_key(daemon, addr):
    # viem sends calls with no `params` key at all
    accounts = kg.result(daemon.url(), "eth_accounts")
    assert [a.lower() for a in accounts] == [addr.lower()]


def test_eth_chain_id(daemon):
    assert kg.result(daemon.url(), "eth_chainId", []) == "0x7a69"
    assert kg.result(daemon.url(), "eth_chainId") == "0x7a69"


def test_health_status(daemon):
    assert kg.result(daemon.url(), "health_status", []) == "OK"


@pytest.mark.parametrize("kind", KINDS)
def test_sign_each_type_over_http(daemon, addr, kind):
    req = kg.tx_request(kind, addr, nonce=kg.fresh_nonce())
    resp = kg.sign(daemon.url(), req)
    assert "error" not in resp, resp
    raw = resp["result"]
    assert isinstance(raw, str), f'response = "raw" must answer a hex string: {resp}'
    d = kg.verify_signed(raw, req, addr)
    assert d["type"] == {"legacy": 0, "2930": 1, "1559": 2, "4844": 3, "7702": 4}[kind]


def test_sign_4844_as_op_batcher_sends_it(daemon, addr):
    req = kg.tx_request("4844", addr, nonce=kg.fresh_nonce())
    assert req["gasPrice"] is None and req["data"] is None and req["input"] == "0xdeadbeef"
    raw = kg.result(daemon.url(), "eth_signTransaction", [req])
    d = kg.verify_signed(raw, req, addr)
    assert len(d["blobVersionedHashes"]) == 2
    assert d["maxFeePerBlobGas"] == 3 * kg.GWEI


def op_batcher_args(addr: str, blob: bool) -> dict:
    """Exactly the JSON that op-service's signer client marshals (key order, nulls and all):
    gasPrice and data null, input used, accessList null from a tx built without one,
    blob fields only for a blob tx."""
    tx = {
        "from": addr,
        "to": "0xff00000000000000000000000000000000042069",  # a batch inbox
        "gas": kg.q(21_000 + 16 * 4 + 100_000),
        "gasPrice": None,
        "maxFeePerGas": kg.q(12 * kg.GWEI),
        "maxPriorityFeePerGas": kg.q(kg.GWEI),
        "value": kg.q(0),
        "nonce": kg.q(kg.fresh_nonce()),
        "data": None,
        "input": "0x" if blob else "0x00" + "ab" * 120,
        "accessList": None,
        "chainId": kg.q(31337),
    }
    if blob:
        tx["blobVersionedHashes"] = ["0x01" + "%062x" % i for i in range(1, 7)]
        tx["maxFeePerBlobGas"] = kg.q(2 * kg.GWEI)
    return tx


@pytest.mark.parametrize("blob", [False, True], ids=["calldata-1559", "blobs-4844"])
def test_op_batcher_wire_format(daemon, addr, blob):
    req = op_batcher_args(addr, blob)
    raw = kg.result(daemon.url(), "eth_signTransaction", [req])
    d = kg.verify_signed(raw, req, addr)
    assert d["type"] == (3 if blob else 2)
    assert d["accessList"] == []


def test_sign_7702_authorization_is_carried_verbatim(daemon, addr):
    auth = kg.authorization(31337, kg.DELEGATE, 11)
    req = kg.tx_request("7702", addr, nonce=kg.fresh_nonce(), authorizationList=[auth], to=kg.AUTHORITY.address)
    raw = kg.result(daemon.url(), "eth_signTransaction", [req])
    d = kg.verify_signed(raw, req, addr)
    (a,) = d["authorizationList"]
    assert a["address"] == kg.DELEGATE
    # the authorization still recovers to the authority that signed it with eth-account
    import rlp
    from eth_keys import keys

    auth_hash = keccak(b"\x05" + rlp.encode([a["chainId"], bytes.fromhex(a["address"][2:]), a["nonce"]]))
    sig = keys.Signature(vrs=(a["yParity"], a["r"], a["s"]))
    assert sig.recover_public_key_from_msg_hash(auth_hash).to_checksum_address() == kg.AUTHORITY.address


@pytest.mark.parametrize("kind", ["legacy", "1559"])
def test_contract_creation(daemon, addr, kind):
    req = kg.tx_request(kind, addr, nonce=kg.fresh_nonce(), to=None, input="0x6000600055")
    raw = kg.result(daemon.url(), "eth_signTransaction", [req])
    d = kg.verify_signed(raw, req, addr)
    assert d["to"] is None


def test_explicit_consistent_type(daemon, addr):
    req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce(), type="0x2")
    raw = kg.result(daemon.url(), "eth_signTransaction", [req])
    assert kg.verify_signed(raw, req, addr)["type"] == 2


def test_data_and_input_equal_is_accepted(daemon, addr):
    req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce(), data="0xdeadbeef", input="0xdeadbeef")
    raw = kg.result(daemon.url(), "eth_signTransaction", [req])
    kg.verify_signed(raw, req, addr)


def test_data_only_is_accepted(daemon, addr):
    req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce(), input=None, data="0xcafe")
    raw = kg.result(daemon.url(), "eth_signTransaction", [req])
    d = kg.verify_signed(raw, dict(req, input="0xcafe"), addr)
    assert d["data"] == "0xcafe"


def test_large_values(daemon, addr):
    req = kg.tx_request(
        "1559", addr, nonce=2**64 - 2, gas=kg.q(30_000_000), value=kg.q(10**18),
        maxFeePerGas=kg.q(500 * kg.GWEI), maxPriorityFeePerGas=kg.q(500 * kg.GWEI),
    )
    raw = kg.result(daemon.url(), "eth_signTransaction", [req])
    kg.verify_signed(raw, req, addr)


def test_checksummed_and_lowercase_from(daemon, addr):
    for frm in (to_checksum_address(addr), addr.lower()):
        req = kg.tx_request("legacy", frm, nonce=kg.fresh_nonce())
        raw = kg.result(daemon.url(), "eth_signTransaction", [req])
        kg.verify_signed(raw, req, addr)


@pytest.mark.parametrize("kind", KINDS)
def test_geth_response_shape(daemon, addr, kind):
    req = kg.tx_request(kind, addr, nonce=kg.fresh_nonce())
    res = kg.result(daemon.url("evm-geth"), "eth_signTransaction", [req])
    assert isinstance(res, dict) and set(res) >= {"raw", "tx"}, res
    d = kg.verify_signed(res["raw"], req, addr)
    tx = res["tx"]
    assert tx["hash"] == d["hash"], "tx.hash must be keccak(raw)"
    assert int(tx["nonce"], 16) == d["nonce"]
    assert int(tx["gas"], 16) == d["gas"]
    assert int(tx["value"], 16) == d["value"]
    assert int(tx["type"], 16) == d["type"]
    assert int(tx["r"], 16) == d["r"] and int(tx["s"], 16) == d["s"]
    v = int(tx["v"], 16)
    assert v == (d["v"] if d["type"] == 0 else d["yParity"])
    assert tx["input"] == d["data"]
    assert (tx.get("to") or "").lower() == (d["to"] or "")
    if d["type"] != 0:
        assert int(tx["chainId"], 16) == d["chainId"]
        assert int(tx["yParity"], 16) == d["yParity"]
    if d["type"] == 3:
        assert [h.lower() for h in tx["blobVersionedHashes"]] == d["blobVersionedHashes"]


def test_sign_over_websocket(daemon, addr):
    from websockets.sync.client import connect

    req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce())
    with connect(daemon.ws_url(), open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}))
        assert json.loads(ws.recv(timeout=30)) == {"jsonrpc": "2.0", "id": 1, "result": "0x7a69"}
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "eth_accounts", "params": []}))
        accounts = json.loads(ws.recv(timeout=30))["result"]
        assert [a.lower() for a in accounts] == [addr.lower()]
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "eth_signTransaction", "params": [req]}))
        resp = json.loads(ws.recv(timeout=30))
    assert resp.get("id") == 3 and "error" not in resp, resp
    kg.verify_signed(resp["result"], req, addr)


def test_websocket_error_path(daemon, addr, nothing_signed):
    from websockets.sync.client import connect

    req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce(), chainId=kg.q(1))
    with nothing_signed(daemon), connect(daemon.ws_url(), open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "eth_signTransaction", "params": [req]}))
        resp = json.loads(ws.recv(timeout=30))
    kg.assert_error(resp, -32001, rule="evm.chain_id")


def test_7702_any_chain_authorization(daemon, addr):
    req = kg.tx_request("7702", addr, nonce=kg.fresh_nonce(), authorizationList=[kg.authorization(0, kg.DELEGATE, 0)])
    raw = kg.result(daemon.url(), "eth_signTransaction", [req])
    assert kg.verify_signed(raw, req, addr)["authorizationList"][0]["chainId"] == 0


def test_concurrent_requests(daemon, addr):
    """Many clients at once (HTTP and WebSocket): every answer is the signature of its own
    request."""
    from concurrent.futures import ThreadPoolExecutor

    reqs = [kg.tx_request(("legacy", "1559", "4844")[i % 3], addr, nonce=kg.fresh_nonce()) for i in range(48)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda r: kg.sign(daemon.url(), r), reqs))
    hashes = set()
    for req, resp in zip(reqs, answers):
        assert "error" not in resp, resp
        hashes.add(kg.verify_signed(resp["result"], req, addr)["hash"])
    assert len(hashes) == len(reqs)


def test_websocket_many_in_flight(daemon, addr):
    """Several requests sent before reading any answer: answers are matched by id."""
    from websockets.sync.client import connect

    reqs = {i: kg.tx_request("1559", addr, nonce=kg.fresh_nonce()) for i in range(100, 110)}
    with connect(daemon.ws_url(), open_timeout=10, close_timeout=5) as ws:
        for i, r in reqs.items():
            ws.send(json.dumps({"jsonrpc": "2.0", "id": i, "method": "eth_signTransaction", "params": [r]}))
        got = {}
        for _ in reqs:
            m = json.loads(ws.recv(timeout=30))
            got[m["id"]] = m
    assert set(got) == set(reqs)
    for i, r in reqs.items():
        kg.verify_signed(got[i]["result"], r, addr)


# ------------------------------------------------------------------------------------------
# Controls of the suite's own "nothing signed" check (it must be able to fail)
# ------------------------------------------------------------------------------------------


def test_nothing_signed_check_counts_a_real_signature(daemon, addr, nothing_signed):
    """Positive control: a released signature raises the signed count by exactly one, and the
    same signature inside `nothing_signed` fails the check."""
    before = daemon.signed_count()
    req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce())
    kg.verify_signed(kg.result(daemon.url(), "eth_signTransaction", [req]), req, addr)
    assert daemon.signed_count() == before + 1
    other = kg.tx_request("1559", addr, nonce=kg.fresh_nonce())
    with pytest.raises(AssertionError, match="1 new signature"):
        with nothing_signed(daemon):
            kg.result(daemon.url(), "eth_signTransaction", [other])


def test_nothing_signed_check_fails_when_the_audit_log_is_unreadable(daemon, tmp_path):
    """Negative control: an audit log the CLI cannot read fails the check instead of skipping."""
    import dataclasses

    broken = dataclasses.replace(daemon, config_path=tmp_path / "missing.toml")
    with pytest.raises(kg.AuditUnreadable):
        broken.signed_count()
    with pytest.raises(kg.AuditUnreadable):
        with broken.nothing_signed():
            pass
