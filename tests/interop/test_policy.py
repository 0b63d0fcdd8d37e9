"""Each policy rule refuses with -32001 and the exact data.rule; nothing is signed."""

from __future__ import annotations

import pytest

import kg

STRICT = dict(
    to=[kg.ALLOWED_TO],
    max_value="1 ether",
    max_fee_per_gas="500 gwei",
    max_priority_fee_per_gas="2 gwei",
    max_fee_per_blob_gas="10 gwei",
    contract_creation=False,
    delegations=[],
)


@pytest.fixture(scope="module")
def strict(start):
    return start(lambda data: kg.base_config(data, policies=[kg.policy("strict", **STRICT)]), name="strict")


@pytest.fixture(scope="module")
def addr(strict):
    return strict.address("dev-secp256k1")


def allowed(addr, kind="1559", **over):
    tx = kg.tx_request(kind, addr, nonce=kg.fresh_nonce(), to=kg.ALLOWED_TO, value=kg.q(kg.ETHER))
    if kind in ("1559", "4844", "7702"):
        tx.update(maxFeePerGas=kg.q(500 * kg.GWEI), maxPriorityFeePerGas=kg.q(2 * kg.GWEI))
    if kind == "4844":
        tx.update(maxFeePerBlobGas=kg.q(10 * kg.GWEI))
    if kind in ("legacy", "2930"):
        # A legacy/2930 gasPrice is fee cap and tip at once: it is bounded by both caps.
        tx.update(gasPrice=kg.q(2 * kg.GWEI))
    tx.update(over)
    return tx


@pytest.mark.parametrize("kind", ["legacy", "2930", "1559", "4844"])
def test_control_at_the_limits_signs(strict, addr, kind):
    """Exactly at every limit is allowed: the refusals below are caused by the one change."""
    req = allowed(addr, kind)
    kg.verify_signed(kg.result(strict.url(), "eth_signTransaction", [req]), req, addr)


def test_control_other_allowed_chain_signs(strict, addr):
    req = allowed(addr, chainId=kg.q(1337))
    kg.verify_signed(kg.result(strict.url(), "eth_signTransaction", [req]), req, addr)


def test_to_allowlist_is_case_insensitive(strict, addr):
    from eth_utils import to_checksum_address

    req = allowed(addr, to=to_checksum_address(kg.ALLOWED_TO))
    kg.verify_signed(kg.result(strict.url(), "eth_signTransaction", [req]), req, addr)


RULES = {
    # id: (kind, overrides, rule, acceptable fields)
    "chain-id": ("1559", dict(chainId=kg.q(1)), "evm.chain_id", {"chainId"}),
    "chain-id-4844": ("4844", dict(chainId=kg.q(10)), "evm.chain_id", {"chainId"}),
    "to-allowlist": ("1559", dict(to=kg.RECIPIENT), "evm.to_allowlist", {"to"}),
    "to-allowlist-legacy": ("legacy", dict(to=kg.RECIPIENT), "evm.to_allowlist", {"to"}),
    "max-value": ("1559", dict(value=kg.q(kg.ETHER + 1)), "evm.max_value", {"value"}),
    "max-value-legacy": ("legacy", dict(value=kg.q(2 * kg.ETHER)), "evm.max_value", {"value"}),
    "max-fee-per-gas-legacy-gasPrice": ("legacy", dict(gasPrice=kg.q(500 * kg.GWEI + 1)), "evm.max_fee_per_gas", {"gasPrice"}),
    "max-fee-per-gas-2930-gasPrice": ("2930", dict(gasPrice=kg.q(501 * kg.GWEI)), "evm.max_fee_per_gas", {"gasPrice"}),
    "max-fee-per-gas-1559": ("1559", dict(maxFeePerGas=kg.q(500 * kg.GWEI + 1)), "evm.max_fee_per_gas", {"maxFeePerGas"}),
    "max-priority-fee-per-gas": ("1559", dict(maxPriorityFeePerGas=kg.q(2 * kg.GWEI + 1)), "evm.max_priority_fee_per_gas", {"maxPriorityFeePerGas"}),
    "max-priority-fee-per-gas-legacy-gasPrice": ("legacy", dict(gasPrice=kg.q(2 * kg.GWEI + 1)), "evm.max_priority_fee_per_gas", {"gasPrice"}),
    "max-priority-fee-per-gas-2930-gasPrice": ("2930", dict(gasPrice=kg.q(300 * kg.GWEI)), "evm.max_priority_fee_per_gas", {"gasPrice"}),
    "max-fee-per-blob-gas": ("4844", dict(maxFeePerBlobGas=kg.q(10 * kg.GWEI + 1)), "evm.max_fee_per_blob_gas", {"maxFeePerBlobGas"}),
    "delegation-none-allowed": ("7702", dict(authorizationList=[kg.authorization(31337, kg.DELEGATE, 1)]), "evm.delegation", {"authorizationList"}),
}


@pytest.mark.parametrize("case", list(RULES), ids=list(RULES))
def test_policy_rule(strict, addr, nothing_signed, case):
    kind, over, rule, fields = RULES[case]
    req = allowed(addr, kind, **over)
    with nothing_signed(strict):
        resp = kg.sign(strict.url(), req)
    err = kg.assert_error(resp, -32001, rule=rule)
    data = err["data"]
    assert isinstance(data.get("reason"), str) and data["reason"], err
    assert kg.field_matches(data.get("field"), fields), f"data.field={data.get('field')!r}, expected one of {fields}: {err}"


# -- any destination, no contract creation, one allowed 7702 delegate -------------------------


@pytest.fixture(scope="module")
def permissive(start):
    pol = kg.policy("dev", to="any", contract_creation=False, delegations=[kg.DELEGATE])
    return start(lambda data: kg.base_config(data, policies=[pol]), name="delegate")


@pytest.mark.parametrize("kind", ["legacy", "1559"])
def test_contract_creation_refused(permissive, nothing_signed, kind):
    addr = permissive.address("dev-secp256k1")
    req = kg.tx_request(kind, addr, nonce=kg.fresh_nonce(), to=None, input="0x6000600055")
    with nothing_signed(permissive):
        resp = kg.sign(permissive.url(), req)
    kg.assert_error(resp, -32001, rule="evm.contract_creation")


def test_contract_creation_control_call_signs(permissive):
    addr = permissive.address("dev-secp256k1")
    req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce(), to=kg.RECIPIENT, input="0x6000600055")
    kg.verify_signed(kg.result(permissive.url(), "eth_signTransaction", [req]), req, addr)


def test_delegation_allowlisted_signs(permissive):
    addr = permissive.address("dev-secp256k1")
    req = kg.tx_request("7702", addr, nonce=kg.fresh_nonce(), authorizationList=[kg.authorization(31337, kg.DELEGATE, 3)])
    kg.verify_signed(kg.result(permissive.url(), "eth_signTransaction", [req]), req, addr)


@pytest.mark.parametrize("which", ["only-other", "one-of-two"])
def test_delegation_not_allowlisted(permissive, nothing_signed, which):
    addr = permissive.address("dev-secp256k1")
    auths = [kg.authorization(31337, kg.OTHER_DELEGATE, 4)]
    if which == "one-of-two":
        auths.insert(0, kg.authorization(31337, kg.DELEGATE, 5))
    req = kg.tx_request("7702", addr, nonce=kg.fresh_nonce(), authorizationList=auths)
    with nothing_signed(permissive):
        resp = kg.sign(permissive.url(), req)
    kg.assert_error(resp, -32001, rule="evm.delegation")


# -- no policy for the key ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def unpoliced(start):
    return start(lambda data: kg.base_config(data, policies=[]), name="nopolicy")


def test_no_policy_refuses(unpoliced, nothing_signed):
    addr = unpoliced.address("dev-secp256k1")
    for kind in ("legacy", "1559"):
        with nothing_signed(unpoliced):
            resp = kg.sign(unpoliced.url(), kg.tx_request(kind, addr, nonce=kg.fresh_nonce()))
        kg.assert_error(resp, -32001, rule="policy.none")
