"""Real client libraries against keyguard: web3.py (geth response shape) and viem (Node)."""

from __future__ import annotations

import pytest
from eth_account import Account

import conftest
import kg


@pytest.fixture(scope="module")
def daemon(start, backend):
    return start(
        lambda data: kg.base_config(
            data,
            listeners=[kg.listener("evm"), kg.listener("evm-geth", response="geth")],
            backend=backend,
        ),
        name=f"clients-{backend}",
    )


@pytest.fixture(scope="module")
def addr(daemon):
    return daemon.address("dev-secp256k1")


@pytest.mark.parametrize("kind", ["legacy", "2930", "1559"])
def test_web3py_sign_transaction(daemon, addr, kind):
    req = kg.tx_request(kind, addr, nonce=kg.fresh_nonce())
    signed = kg.web3_sign(daemon.url("evm-geth"), kg.web3_request(req))
    raw = "0x" + bytes(signed.raw).hex()
    assert Account.recover_transaction(raw) == addr
    d = kg.verify_signed(raw, req, addr)
    assert "0x" + bytes(signed.tx["hash"]).hex() == d["hash"]


def test_web3py_accounts_and_chain_id(daemon, addr):
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(daemon.url("evm-geth"), request_kwargs={"timeout": 30}))
    assert w3.eth.chain_id == 31337
    assert w3.eth.accounts == [addr]


def test_viem_json_rpc_account_sign_transaction(daemon, addr):
    reqs = [
        kg.tx_request("legacy", addr, nonce=kg.fresh_nonce()),
        kg.tx_request("2930", addr, nonce=kg.fresh_nonce(), type="eip2930"),
        kg.tx_request("1559", addr, nonce=kg.fresh_nonce()),
    ]
    viem_reqs = [kg.viem_request(r) for r in reqs]
    out = kg.run_viem(daemon.url(), addr, viem_reqs, conftest.node_modules())
    assert len(out) == len(reqs)
    for req, o in zip(reqs, out):
        assert "raw" in o, f"viem signTransaction failed: {o}"
        assert o["recovered"].lower() == addr.lower(), o
        kg.verify_signed(o["raw"], {k: v for k, v in req.items() if k != "type"}, addr)
