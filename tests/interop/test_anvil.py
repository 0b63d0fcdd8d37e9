"""A real Ethereum node (anvil, from npm @foundry-rs/anvil) accepts and mines what keyguard
signed via eth_sendTransaction: a plain transfer and an ERC-20 transfer to a deployed
OpenZeppelin token. keyguard fills nonce, gas and fees from the node and proxies reads."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
from eth_abi import decode, encode
from eth_utils import keccak

import kg
from conftest import node_modules
from test_policy_engine import PROFILE, TOKEN, TST, transfer

RECIPIENT = "0x" + "7e" * 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def anvil():
    binary = node_modules() / ".bin" / "anvil"
    assert binary.exists(), f"{binary} missing: tests/run installs @foundry-rs/anvil"
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=kg._die_with_parent,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if kg.result(url, "eth_chainId", []) == "0x7a69":
                break
        except Exception:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("anvil did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def wait_receipt(url: str, tx_hash: str) -> dict:
    for _ in range(100):
        r = kg.result(url, "eth_getTransactionReceipt", [tx_hash])
        if r:
            return r
        time.sleep(0.1)
    raise AssertionError(f"{tx_hash} not mined")


def balance_of(url: str, who: str) -> int:
    data = "0x" + (keccak(text="balanceOf(address)")[:4] + encode(["address"], [who])).hex()
    out = kg.result(url, "eth_call", [{"to": TOKEN, "input": data}, "latest"])
    return decode(["uint256"], bytes.fromhex(out[2:]))[0]


@pytest.fixture(scope="module")
def node(start, anvil):
    def make(data):
        (data.parent / "tokens.toml").write_text(PROFILE)
        pol = kg.policy("node")
        pol["evm"].update(
            max_fee_per_gas="50 gwei",
            max_priority_fee_per_gas="2 gwei",
            profiles=["tokens.toml"],
            rules=[
                {"name": "pay", "to": [RECIPIENT], "max_value": "1 ether"},
                {"name": "tst", "to": ["TST"], "abi": "erc20", "functions": ["transfer"], "args": {"to": {"one_of": [RECIPIENT]}}},
            ],
            tokens=[{"token": "TST", "max_transfer": "50 TST"}],
            velocity=[{"name": "tst-day", "asset": "TST", "max": "80", "window": "24h"}],
        )
        lst = kg.listener(upstream={"url": anvil, "proxy_methods": [
            "eth_getTransactionReceipt", "eth_getTransactionByHash", "eth_call", "eth_getBalance", "eth_blockNumber",
        ]})
        return kg.base_config(data, listeners=[lst], policies=[pol])

    d = start(make, name="node")
    addr = d.address()
    kg.result(anvil, "anvil_setBalance", [addr, kg.q(10 * kg.ETHER)])
    # Deploy an OpenZeppelin ERC20PresetFixedSupply from anvil's first dev account; all 1000
    # TST go to keyguard's key. Deterministic address: deployer nonce 0.
    artifact = node_modules() / "@openzeppelin" / "contracts" / "build" / "contracts" / "ERC20PresetFixedSupply.json"
    bytecode = json.loads(artifact.read_text())["bytecode"]
    args = encode(["string", "string", "uint256", "address"], ["Test", "TST", 1000 * TST, addr]).hex()
    deployer = kg.result(anvil, "eth_accounts", [])[0]
    h = kg.result(anvil, "eth_sendTransaction", [{"from": deployer, "input": bytecode + args, "gas": kg.q(3_000_000)}])
    assert wait_receipt(anvil, h)["contractAddress"].lower() == TOKEN.lower()
    return d


def test_plain_transfer_is_filled_signed_sent_and_mined(node, anvil):
    addr = node.address()
    before = int(kg.result(node.url(), "eth_getBalance", [RECIPIENT, "latest"]), 16)
    h = kg.result(node.url(), "eth_sendTransaction", [{"from": addr, "to": RECIPIENT, "value": kg.q(12345)}])
    receipt = wait_receipt(node.url(), h)
    assert receipt["status"] == "0x1"
    assert int(kg.result(node.url(), "eth_getBalance", [RECIPIENT, "latest"]), 16) == before + 12345
    tx = kg.result(node.url(), "eth_getTransactionByHash", [h])
    assert tx["from"].lower() == addr.lower()
    assert int(tx["maxFeePerGas"], 16) <= 50 * kg.GWEI and int(tx["maxPriorityFeePerGas"], 16) <= 2 * kg.GWEI


def test_erc20_transfer_is_mined_and_moves_tokens(node, anvil):
    addr = node.address()
    before = balance_of(node.url(), RECIPIENT)
    h = kg.result(node.url(), "eth_sendTransaction", [{"from": addr, "to": TOKEN, "data": transfer(RECIPIENT, 25 * TST)}])
    receipt = wait_receipt(node.url(), h)
    assert receipt["status"] == "0x1", receipt
    assert balance_of(node.url(), RECIPIENT) == before + 25 * TST
    assert balance_of(anvil, addr) == 975 * TST


def test_refused_transactions_never_reach_the_node(node, anvil, nothing_signed):
    addr = node.address()
    start_block = kg.result(anvil, "eth_blockNumber", [])
    with nothing_signed(node):
        r = kg.call(node.url(), "eth_sendTransaction", [{"from": addr, "to": TOKEN, "data": transfer(RECIPIENT, 51 * TST)}])
        kg.assert_error(r, -32001, rule="evm.token_max_transfer", field="input.amount")
        r = kg.call(node.url(), "eth_sendTransaction", [{"from": addr, "to": "0x" + "99" * 20, "value": kg.q(1)}])
        kg.assert_error(r, -32001, rule="evm.no_rule")
    assert kg.result(anvil, "eth_blockNumber", []) == start_block


def test_velocity_holds_across_sent_transactions(node, nothing_signed):
    addr = node.address()
    # Whatever earlier tests sent (none when run alone): every TST the recipient holds went
    # through keyguard's 80 TST/day counter. Fill it to within 5 TST, then 6 more exceed it.
    spent = balance_of(node.url(), RECIPIENT) // TST
    while 80 - spent >= 6:
        amount = min(80 - spent, 50)  # 50 TST is the per-transfer limit
        h = kg.result(node.url(), "eth_sendTransaction", [{"from": addr, "to": TOKEN, "data": transfer(RECIPIENT, amount * TST)}])
        assert wait_receipt(node.url(), h)["status"] == "0x1"
        spent += amount
    assert balance_of(node.url(), RECIPIENT) == spent * TST
    with nothing_signed(node):
        r = kg.call(node.url(), "eth_sendTransaction", [{"from": addr, "to": TOKEN, "data": transfer(RECIPIENT, 6 * TST)}])
        kg.assert_error(r, -32001, rule="evm.velocity")


def test_signing_methods_cannot_be_proxied(tmp_path):
    cfg = kg.base_config(tmp_path / "var", listeners=[kg.listener(upstream={"url": "http://127.0.0.1:1", "proxy_methods": ["eth_sign"]})])
    path = kg.write_config(tmp_path / "keyguard.toml", cfg)
    r = kg.run_cli(["config", "check", "--config", str(path)])
    assert r.returncode != 0 and "cannot be proxied" in (r.stdout + r.stderr), r
