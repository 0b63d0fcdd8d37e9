"""The shipped example configs load, and their policies decide as their comments say
(checked with the dry run, `keyguard policy check --key`, which needs no keystore)."""

from __future__ import annotations

import json

import pytest

import kg
from conftest import REPO
from test_policy_engine import calldata, transfer

BATCH_INBOX = "0xFF00000000000000000000000000000000000010"
FACTORY = "0xe5965Ab5962eDc7477C8520243A95517CD252fA9"
USDC = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
COLD = "0x" + "11" * 20


@pytest.mark.parametrize("name", ["dev", "op-stack-batcher", "exchange-hot-wallet", "signet-miner"])
def test_example_config_is_valid(name):
    r = kg.run_cli(["config", "check", "--config", str(REPO / "configs" / f"{name}.toml")], cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def check(tmp_path, config: str, key: str, request: dict) -> dict:
    f = tmp_path / "request.json"
    f.write_text(json.dumps(request))
    r = kg.run_cli(["policy", "check", "--config", str(REPO / "configs" / config), "--key", key, "--request", str(f)], cwd=REPO)
    assert r.returncode in (0, 3), r.stdout + r.stderr
    return json.loads(r.stdout)["decision"]


def tx(to, data="0x", value=0, chain=1, **over):
    t = {"from": "0x" + "ab" * 20, "to": to, "input": data, "value": kg.q(value), "gas": kg.q(200_000),
         "nonce": "0x1", "chainId": kg.q(chain), "maxFeePerGas": kg.q(50 * kg.GWEI), "maxPriorityFeePerGas": kg.q(kg.GWEI)}
    t.update(over)
    return t


BLOB = {"blobVersionedHashes": ["0x01" + "ab" * 31], "maxFeePerBlobGas": kg.q(kg.GWEI)}
CREATE = "create(uint32,bytes32,bytes)"

S, R = "signed", "refused"
CASES = [
    ("op-stack-batcher.toml", "batcher", tx(BATCH_INBOX, "0x00" + "ab" * 100), S, "batch-inbox"),
    ("op-stack-batcher.toml", "batcher", tx(BATCH_INBOX, **BLOB), S, "batch-inbox"),
    ("op-stack-batcher.toml", "batcher", tx(COLD, value=1), R, "evm.to_allowlist"),
    ("op-stack-batcher.toml", "batcher", tx(BATCH_INBOX, value=1), R, "evm.max_value"),
    ("op-stack-batcher.toml", "proposer", tx(FACTORY, calldata(CREATE, ["uint32", "bytes32", "bytes"], [0, b"\x11" * 32, (123).to_bytes(32, "big")]), value=8 * 10**16), S, "create-game"),
    ("op-stack-batcher.toml", "proposer", tx(FACTORY, calldata(CREATE, ["uint32", "bytes32", "bytes"], [1, b"\x11" * 32, (123).to_bytes(32, "big")])), R, "create-game"),
    ("op-stack-batcher.toml", "proposer", tx(FACTORY, calldata("gameCount()", [], [])), R, "create-game"),
    ("exchange-hot-wallet.toml", "hot-1", tx(COLD, value=10**18), S, "eth-to-cold-and-makers"),
    ("exchange-hot-wallet.toml", "hot-1", tx(USDC, transfer(COLD, 1000 * 10**6)), S, "stablecoin-withdrawals"),
    ("exchange-hot-wallet.toml", "hot-1", tx(USDC, transfer(COLD, 250_001 * 10**6)), R, "evm.token_max_transfer"),
    ("exchange-hot-wallet.toml", "hot-1", tx(USDC, transfer("0x" + "99" * 20, 1)), R, "stablecoin-withdrawals"),
    ("exchange-hot-wallet.toml", "hot-1", tx("0x" + "99" * 20, value=1), R, "evm.no_rule"),
    ("exchange-hot-wallet.toml", "hot-1", tx(USDC, calldata("approve(address,uint256)", ["address", "uint256"], ["0x" + "33" * 20, 2**256 - 1])), R, "evm.unlimited_approval"),
]


@pytest.mark.parametrize("config,key,request_,decision,rule", CASES)
def test_example_policies_decide_as_documented(tmp_path, config, key, request_, decision, rule):
    d = check(tmp_path, config, key, request_)
    assert d["decision"] == decision, d
    assert d.get("allowed_by", d.get("rule")) == rule, d
