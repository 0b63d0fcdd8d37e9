"""The Ethereum policy engine through the real daemon: ABI-bound rules, token limits, unlimited
approvals, velocity under concurrency and across a restart, nonce rules, and the dry run.
Every signature that is released is verified with eth-account."""

from __future__ import annotations

import concurrent.futures
import json

import pytest
from eth_abi import encode
from eth_utils import keccak

import kg

TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
ALICE = "0x" + "a1" * 20
MALLORY = "0x" + "66" * 20
ERC20 = "erc20"
TST = 10**6  # 6 decimals


def calldata(signature: str, types: list[str], values: list) -> str:
    return "0x" + (keccak(text=signature)[:4] + encode(types, values)).hex()


def transfer(to: str, amount: int) -> str:
    return calldata("transfer(address,uint256)", ["address", "uint256"], [to, amount])


def approve(spender: str, amount: int) -> str:
    return calldata("approve(address,uint256)", ["address", "uint256"], [spender, amount])


PROFILE = f"""chain_id = 31337
name = "anvil"
native_symbol = "ETH"
decimals = 18

[[tokens]]
symbol = "TST"
address = "{TOKEN}"
decimals = 6
"""


def engine_policy(**extra) -> dict:
    p = kg.policy("engine")
    p["evm"].update(
        profiles=["tokens.toml"],
        max_gas=500_000,
        rules=[
            {"name": "no-mallory", "action": "deny", "to": [MALLORY]},
            {"name": "pay-alice", "to": [ALICE], "max_value": "0.5 ether"},
            {
                "name": "tst-to-alice",
                "to": ["TST"],
                "abi": ERC20,
                "functions": ["transfer", "approve"],
                "args": {"to": {"one_of": [ALICE]}, "spender": {"one_of": [ALICE]}},
            },
        ],
        tokens=[{"token": "TST", "max_transfer": "60 TST", "max_approval": "1000 TST"}],
    )
    p["evm"].update(extra)
    return p


def make(policies):
    def _make(data):
        (data.parent / "tokens.toml").write_text(PROFILE)
        return kg.base_config(data, policies=policies)

    return _make


@pytest.fixture(scope="module")
def engine(start):
    return start(make([engine_policy()]), name="engine")


def req(addr, to, data="0x", value=0, **over):
    tx = {
        "from": addr, "to": to, "gas": kg.q(100_000), "value": kg.q(value), "input": data,
        "nonce": kg.q(kg.fresh_nonce()), "chainId": kg.q(31337),
        "maxFeePerGas": kg.q(30 * kg.GWEI), "maxPriorityFeePerGas": kg.q(kg.GWEI),
    }
    tx.update(over)
    return tx


def signs(d, tx):
    kg.verify_signed(kg.raw_of(kg.result(d.url(), "eth_signTransaction", [tx])), tx, tx["from"])


def refused(d, tx, rule, field):
    with d.nothing_signed():
        kg.assert_error(kg.call(d.url(), "eth_signTransaction", [tx]), -32001, rule=rule, field=field)


def test_token_transfer_at_the_token_limit_signs(engine):
    a = engine.address()
    signs(engine, req(a, TOKEN, transfer(ALICE, 60 * TST)))


CASES = {
    # id: (to, data, value, rule, field)
    "token-over-limit": (TOKEN, transfer(ALICE, 60 * TST + 1), 0, "evm.token_max_transfer", "input.amount"),
    "token-to-stranger": (TOKEN, transfer(kg.RECIPIENT, 1), 0, "tst-to-alice", "input.to"),
    "unlimited-approval": (TOKEN, approve(ALICE, 2**256 - 1), 0, "evm.unlimited_approval", "input.amount"),
    "approval-over-limit": (TOKEN, approve(ALICE, 1000 * TST + 1), 0, "evm.token_max_approval", "input.amount"),
    "trailing-bytes": (TOKEN, transfer(ALICE, 1) + "00", 0, "evm.movement_undecodable", "input"),
    "wrong-selector": (TOKEN, "0xa9059cbc" + transfer(ALICE, 1)[10:], 0, "tst-to-alice", "input"),
    "function-not-listed": (TOKEN, calldata("transferFrom(address,address,uint256)", ["address", "address", "uint256"], [ALICE, ALICE, 1]), 0, "tst-to-alice", "input"),
    "deny-rule": (MALLORY, "0x", 1, "no-mallory", "to"),
    "no-rule": (kg.RECIPIENT, "0x", 1, "evm.no_rule", "to"),
    "rule-max-value": (ALICE, "0x", kg.ETHER // 2 + 1, "pay-alice", "value"),
    "plain-rule-with-calldata": (ALICE, "0x01", 0, "pay-alice", "input"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_rule_refusals_name_rule_and_field(engine, nothing_signed, case):
    to, data, value, rule, field = CASES[case]
    with nothing_signed(engine):
        refused(engine, req(engine.address(), to, data, value), rule, field)


def test_gas_cap_boundary(engine, nothing_signed):
    a = engine.address()
    signs(engine, req(a, ALICE, gas=kg.q(500_000)))
    with nothing_signed(engine):
        refused(engine, req(a, ALICE, gas=kg.q(500_001)), "evm.max_gas", "gas")


def test_unknown_abi_function_or_file_is_a_start_error(tmp_path):
    bad = engine_policy()
    bad["evm"]["rules"][2]["functions"] = ["mint"]
    cfg = make([bad])(tmp_path / "var")
    path = kg.write_config(tmp_path / "keyguard.toml", cfg)
    r = kg.run_cli(["config", "check", "--config", str(path)])
    assert r.returncode != 0 and "mint" in (r.stdout + r.stderr), r


# ------------------------------------------------------------------------------------------
# Velocity: concurrency at the limit, durability across restart
# ------------------------------------------------------------------------------------------


def velocity_policy():
    return engine_policy(velocity=[{"name": "tst-daily", "asset": "TST", "max": "100", "window": "24h"}])


def test_concurrent_requests_at_a_velocity_limit_sign_exactly_the_allowed_total(start):
    d = start(make([velocity_policy()]), name="velocity")
    a = d.address()
    reqs = [req(a, TOKEN, transfer(ALICE, 30 * TST)) for _ in range(12)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda t: kg.call(d.url(), "eth_signTransaction", [t]), reqs))
    ok = [(t, r) for t, r in zip(reqs, answers) if "result" in r]
    assert len(ok) == 3, f"{len(ok)} signed; 3 x 30 fit under 100, a 4th does not"
    assert d.signed_count() == 3, "the audit log must hold exactly the 3 released signatures"
    for t, r in ok:
        kg.verify_signed(kg.raw_of(r["result"]), t, a)
    for r in answers:
        if "error" in r:
            kg.assert_error(r, -32001, rule="evm.velocity")
    # The remaining 10 TST still fit; 11 do not.
    refused(d, req(a, TOKEN, transfer(ALICE, 11 * TST)), "evm.velocity", "tst-daily")
    signs(d, req(a, TOKEN, transfer(ALICE, 10 * TST)))

    # Counters are durable: after a restart the window is still full.
    d.stop()
    again = kg.start_daemon(d.config_path.parent, d.config)
    try:
        refused(again, req(a, TOKEN, transfer(ALICE, 1)), "evm.velocity", "tst-daily")
    finally:
        again.stop()


# ------------------------------------------------------------------------------------------
# Nonce rules
# ------------------------------------------------------------------------------------------


def test_a_signed_nonce_is_not_signed_again_for_another_transaction(start):
    d = start(make([engine_policy(nonce={"allow_replacement": True, "min_fee_bump_percent": 10})]), name="nonce")
    a = d.address()
    first = req(a, ALICE, value=1, nonce=kg.q(7))
    signs(d, first)
    signs(d, dict(first))  # the same transaction again: idempotent
    other = dict(first, value=kg.q(2))
    refused(d, other, "evm.nonce_reuse", "nonce")
    # A replacement must raise both fees by 10%: 9% is refused, 10% signs.
    low = dict(other, maxFeePerGas=kg.q(30 * kg.GWEI * 109 // 100), maxPriorityFeePerGas=kg.q(kg.GWEI * 109 // 100))
    refused(d, low, "evm.nonce_reuse", "nonce")
    signs(d, dict(other, maxFeePerGas=kg.q(33 * kg.GWEI), maxPriorityFeePerGas=kg.q(kg.GWEI * 11 // 10)))


# ------------------------------------------------------------------------------------------
# Dry run
# ------------------------------------------------------------------------------------------


def test_policy_check_prints_every_rule_without_signing(engine, nothing_signed, tmp_path):
    a = engine.address()
    request = tmp_path / "request.json"
    request.write_text(json.dumps(req(a, TOKEN, transfer(ALICE, 61 * TST))))
    with nothing_signed(engine):
        r = kg.run_cli(["policy", "check", "--config", str(engine.config_path), "--request", str(request)])
    assert r.returncode == 3, r
    out = json.loads(r.stdout)
    assert out["decision"]["rule"] == "evm.token_max_transfer"
    rules = {o["rule"]: o["outcome"] for o in out["rules"]}
    assert rules["evm.chain_id"] == "pass"
    assert rules["no-mallory"] == "skip"
    assert rules["tst-to-alice"] == "allow"
    request.write_text(json.dumps(req(a, TOKEN, transfer(ALICE, 5 * TST))))
    r = kg.run_cli(["policy", "check", "--config", str(engine.config_path), "--request", str(request)])
    assert r.returncode == 0, r
    out = json.loads(r.stdout)
    assert out["decision"]["allowed_by"] == "tst-to-alice"
    assert out["decision"]["token"]["symbol"] == "TST"
    assert out["decision"]["call"]["function"] == "transfer(address,uint256)"
