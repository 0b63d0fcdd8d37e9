"""Bearer-token listeners and key grants: -32005 for a missing/wrong token or a key that is not
granted; the right token signs."""

from __future__ import annotations

import hashlib
import secrets

import pytest

import kg

TOKEN = "kg-" + secrets.token_hex(24)
EDONLY_TOKEN = "kg-" + secrets.token_hex(24)


def sha(t: str) -> str:
    return hashlib.sha256(t.encode()).hexdigest()


@pytest.fixture(scope="module")
def daemon(start):
    return start(
        lambda data: kg.base_config(
            data,
            listeners=[
                kg.listener("authed", auth="bearer", response="raw"),
                kg.listener("edonly-open", auth="none", keys=["dev-ed25519"]),
            ],
            clients=[
                {"name": "batcher", "token_sha256": sha(TOKEN), "keys": ["dev-secp256k1"], "response": "geth"},
                {"name": "edonly", "token_sha256": sha(EDONLY_TOKEN), "keys": ["dev-ed25519"]},
            ],
        ),
        name="auth",
    )


@pytest.fixture(scope="module")
def addr(daemon):
    return daemon.address("dev-secp256k1")


def bearer(t: str) -> dict:
    return {"Authorization": f"Bearer {t}"}


def test_right_token_signs_with_client_response_override(daemon, addr):
    req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce())
    res = kg.result(daemon.url("authed"), "eth_signTransaction", [req], headers=bearer(TOKEN))
    assert isinstance(res, dict) and "raw" in res and "tx" in res, f'client response = "geth" must override: {res}'
    kg.verify_signed(res["raw"], req, addr)


def test_right_token_eth_accounts(daemon, addr):
    accounts = kg.result(daemon.url("authed"), "eth_accounts", [], headers=bearer(TOKEN))
    assert [a.lower() for a in accounts] == [addr.lower()]


@pytest.mark.parametrize(
    "headers",
    [
        None,
        bearer("wrong-" + TOKEN),
        bearer(""),
        bearer(sha(TOKEN)),  # the hash itself is not a credential
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ],
    ids=["missing", "wrong", "empty", "hash-as-token", "no-scheme", "basic"],
)
def test_missing_or_wrong_token(daemon, addr, nothing_signed, headers):
    req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce())
    with nothing_signed(daemon):
        resp = kg.sign(daemon.url("authed"), req, headers=headers)
    kg.assert_error(resp, -32005)


def test_missing_token_eth_accounts_refused(daemon, nothing_signed):
    with nothing_signed(daemon):
        resp = kg.call(daemon.url("authed"), "eth_accounts", [])
    kg.assert_error(resp, -32005)


def test_key_not_granted_to_client(daemon, addr, nothing_signed):
    req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce())
    with nothing_signed(daemon):
        resp = kg.sign(daemon.url("authed"), req, headers=bearer(EDONLY_TOKEN))
    kg.assert_error(resp, -32005)
    accounts = kg.result(daemon.url("authed"), "eth_accounts", [], headers=bearer(EDONLY_TOKEN))
    assert accounts == []


def test_key_not_granted_on_open_listener(daemon, addr, nothing_signed):
    assert kg.result(daemon.url("edonly-open"), "eth_accounts", []) == []
    req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce())
    with nothing_signed(daemon):
        resp = kg.sign(daemon.url("edonly-open"), req)
    kg.assert_error(resp, -32005)


def test_bearer_over_websocket(daemon, addr, nothing_signed):
    import json

    from websockets.sync.client import connect

    req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce())
    msg = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_signTransaction", "params": [req]})
    with connect(daemon.ws_url("authed"), additional_headers=bearer(TOKEN), open_timeout=10) as ws:
        ws.send(msg)
        resp = json.loads(ws.recv(timeout=30))
    assert "error" not in resp, resp
    kg.verify_signed(kg.raw_of(resp["result"]), req, addr)
    # without the token: refused at the handshake or per call, never signed
    from websockets.exceptions import InvalidStatus

    with nothing_signed(daemon):
        try:
            with connect(daemon.ws_url("authed"), open_timeout=10) as ws:
                ws.send(msg)
                resp = json.loads(ws.recv(timeout=30))
            kg.assert_error(resp, -32005)
        except InvalidStatus:  # handshake refused (HTTP 401/403) is fine too
            pass


def test_clients_token_cli():
    r = kg.run_cli(["clients", "token"])
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    assert set(fields) >= {"token", "token_sha256"}, r.stdout
    assert len(fields["token"]) >= 32
    assert fields["token_sha256"] == sha(fields["token"])
    r2 = kg.run_cli(["clients", "token"])
    assert dict(line.split(": ", 1) for line in r2.stdout.splitlines() if ": " in line)["token"] != fields["token"]
