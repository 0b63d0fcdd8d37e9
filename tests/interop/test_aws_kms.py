"""The AWS KMS backend against LocalStack's KMS (no Docker, 127.0.0.1): the key's address
checked against GetPublicKey independently, transactions / personal_sign / typed data recovered
with eth-account, low S although KMS returns high S about half the time, exactly one Sign per
signature, refusals that never reach KMS, and the service failing (cut off, frozen) and
recovering. The transaction battery of test_signing.py / test_clients.py also runs with this
backend (conftest's `backend` fixture).

keyguard reaches KMS through localstack.Relay, which counts the bytes keyguard sends and can
cut the service off."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

import kg
import localstack
from test_policy_engine import ALICE, MALLORY, PROFILE, req
from test_typed_messages import MAIL, recovered, typed_policy

BREAKER_OPEN_MS = 1500


@pytest.fixture(scope="module")
def relay(localstack_kms):
    r = localstack.Relay(localstack_kms.port)
    yield r
    r.close()


@pytest.fixture(scope="module")
def kms(start, relay):
    def make(data):
        (data.parent / "tokens.toml").write_text(PROFILE)
        cfg = kg.base_config(data, policies=[typed_policy()], backend="aws-kms")
        cfg["keystore"]["aws_kms"].update(
            endpoint=relay.url,
            timeout_ms=1500,
            max_retries=2,
            breaker_failures=2,
            breaker_open_ms=BREAKER_OPEN_MS,
        )
        cfg["metrics"] = {"address": "127.0.0.1:0"}
        return cfg

    return start(make, name="aws-kms")


def metrics_url(d: kg.Daemon) -> str:
    for line in d.stdout_lines:
        if m := re.match(r"^keyguard: metrics (http://\S+)/metrics$", line):
            return m.group(1)
    raise AssertionError(f"no metrics line in {d.stdout_lines}")


def metric(d: kg.Daemon, name: str, **labels: str) -> float:
    with urllib.request.urlopen(metrics_url(d) + "/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def ready(d: kg.Daemon) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(metrics_url(d) + "/ready", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def alias(d: kg.Daemon) -> str:
    return d.config["keystore"]["aws_kms"]["keys"]["dev-secp256k1"]


def sign_tx(d: kg.Daemon) -> dict:
    addr = d.address()
    tx = req(addr, ALICE, value=5)
    return kg.call(d.url(), "eth_signTransaction", [tx]), tx


def test_address_is_the_kms_keys_public_key(kms, localstack_kms):
    assert kms.keys["dev-secp256k1"][0] == "secp256k1"
    assert kms.keys["dev-ed25519"][0] == "ed25519", "the software key beside the KMS key"
    assert localstack_kms.public_key_address(alias(kms)) == kms.address()
    # Negative control: another KMS key has another address.
    other = localstack_kms.kms("CreateKey", {"KeySpec": "ECC_SECG_P256K1", "KeyUsage": "SIGN_VERIFY"})
    assert localstack_kms.public_key_address(other["KeyMetadata"]["KeyId"]) != kms.address()


def test_keys_list_shows_the_kms_key(kms):
    r = kg.run_cli(["keys", "list", "--config", str(kms.config_path)], env=localstack.AWS_ENV)
    assert r.returncode == 0, r.stderr
    assert f"dev-secp256k1 secp256k1 {kms.address()} (aws-kms)" in r.stdout.splitlines(), r.stdout


def test_transactions_are_low_s_one_sign_call_each(kms):
    calls = metric(kms, "keyguard_cloud_call_duration_seconds_count", backend="aws-kms", op="sign")
    high = metric(kms, "keyguard_cloud_events_total", backend="aws-kms", event="high_s_normalized")
    n = 24
    for _ in range(n):
        resp, tx = sign_tx(kms)
        assert "error" not in resp, resp
        # eth-account recovers the sender; verify_signed also refuses a high S.
        kg.verify_signed(kg.raw_of(resp["result"]), tx, kms.address())
    assert metric(kms, "keyguard_cloud_call_duration_seconds_count", backend="aws-kms", op="sign") - calls == n
    # All 24 low by chance: 2^-24. The normalisation path ran.
    assert metric(kms, "keyguard_cloud_events_total", backend="aws-kms", event="high_s_normalized") > high


def test_personal_sign_through_kms(kms):
    text = "Sign in to example.org nonce 4242"
    sig = kg.result(kms.url(), "personal_sign", ["0x" + text.encode().hex(), kms.address()])
    assert Account.recover_message(encode_defunct(text=text), signature=sig) == kms.address()


def test_typed_data_through_kms(kms):
    sig = kg.result(kms.url(), "eth_signTypedData_v4", [kms.address(), MAIL])
    assert recovered(MAIL, sig) == kms.address()


def test_a_policy_refusal_never_reaches_kms(kms, relay, nothing_signed):
    before = relay.bytes_up
    with nothing_signed(kms):
        tx = req(kms.address(), MALLORY, value=1)
        kg.assert_error(kg.call(kms.url(), "eth_signTransaction", [tx]), -32001, rule="no-mallory")
        kg.assert_error(
            kg.call(kms.url(), "personal_sign", ["0x" + b"Transfer all my funds".hex(), kms.address()]),
            -32001,
            rule="evm.message",
        )
    assert relay.bytes_up == before, "a refused request sent bytes to KMS"
    # Positive control: the relay does see a signature's Sign call.
    resp, _ = sign_tx(kms)
    assert "error" not in resp, resp
    assert relay.bytes_up > before


def wait_until_signing(d: kg.Daemon, within: float = 30) -> None:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last, _ = sign_tx(d)
        if "result" in last:
            return
        time.sleep(0.2)
    raise AssertionError(f"KMS signing did not recover: {last}")


def test_kms_cut_off_fails_fast_then_recovers(kms, relay, nothing_signed):
    relay.down()
    try:
        with nothing_signed(kms):
            for _ in range(2):  # breaker_failures = 2
                resp, _ = sign_tx(kms)
                err = kg.assert_error(resp, -32007)
                assert "aws-kms backend unavailable" in err["data"]["reason"], err
            sent = relay.bytes_up
            resp, _ = sign_tx(kms)
            err = kg.assert_error(resp, -32007)
            assert "circuit open" in err["data"]["reason"], err
            assert relay.bytes_up == sent, "an open circuit still called KMS"
        status, body = ready(kms)
        assert status == 503 and "aws-kms" in body, (status, body)
    finally:
        relay.up()
    wait_until_signing(kms)
    assert ready(kms)[0] == 200
    assert metric(kms, "keyguard_cloud_events_total", backend="aws-kms", event="breaker_opened") >= 1
    assert metric(kms, "keyguard_cloud_available", backend="aws-kms") == 1


def test_kms_cut_off_mid_load(kms, relay):
    """Eight callers signing while KMS is cut off and restored: every answer is a signature that
    verifies or `-32007`, nothing else (no hang, no other error, no unverified signature)."""
    wait_until_signing(kms)
    results: list[tuple[dict, dict]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def caller():
        while not stop.is_set():
            resp, tx = sign_tx(kms)
            with lock:
                results.append((resp, tx))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        while len(results) < 16:
            time.sleep(0.01)
        relay.down()
        cut_at = len(results)
        while len(results) < cut_at + 16:
            time.sleep(0.01)
    finally:
        relay.up()
        stop.set()
        for t in threads:
            t.join(timeout=60)
    failed = 0
    for resp, tx in results:
        if "result" in resp:
            kg.verify_signed(kg.raw_of(resp["result"]), tx, kms.address())
        else:
            kg.assert_error(resp, -32007)
            failed += 1
    assert failed > 0, "control: the cut-off must have failed some requests"
    wait_until_signing(kms)


def test_a_frozen_kms_is_cut_at_the_timeout(kms, localstack_kms, nothing_signed):
    wait_until_signing(kms)
    os.kill(localstack_kms.proc.pid, signal.SIGSTOP)
    try:
        with nothing_signed(kms):
            resp, _ = sign_tx(kms)
            err = kg.assert_error(resp, -32007)
            assert "no answer within 1500 ms" in err["data"]["reason"], err
    finally:
        os.kill(localstack_kms.proc.pid, signal.SIGCONT)
    assert metric(kms, "keyguard_cloud_events_total", backend="aws-kms", event="timeout") >= 1
    wait_until_signing(kms)
