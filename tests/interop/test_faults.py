"""Negative controls of the suite's audit checks against a daemon with an injected fault.

`KEYGUARD_FAULT=release-before-audit` (cargo feature `fault-injection`, compiled into the
debug build tests/run makes; see src/fault.rs and docs/testing.md) makes keyguard answer a
signature before its audit row commits. The suite's check "a signature the client holds is
in the audit log" (`Daemon.signed_count`, the same count `nothing_signed` compares) must pass
against a healthy daemon and fail against the faulted one. The daemon is SIGKILLed the moment
the signature arrives, so the outcome does not depend on timing.
"""

from __future__ import annotations

import os

import pytest

import kg


def released_signature_is_audited(tmp_path, env: dict | None) -> None:
    """Signs one transaction, kills the daemon at once, and asserts the signed row is there."""
    d = kg.start_daemon(tmp_path / "kg", kg.base_config(tmp_path / "kg" / "var"), env=env)
    try:
        before = d.signed_count()
        addr = d.address()
        req = kg.tx_request("1559", addr, nonce=kg.fresh_nonce())
        kg.verify_signed(kg.result(d.url(), "eth_signTransaction", [req]), req, addr)
        d.proc.kill()
        d.proc.wait(timeout=10)
        if env and "FAULT INJECTION ACTIVE" not in d.stderr():
            msg = "KEYGUARD_BIN lacks --features fault-injection (tests/run builds it in)"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
        after = d.signed_count()
        assert after == before + 1, f"the client holds a signature the audit log does not ({before} -> {after} signed rows)"
    finally:
        d.stop()


def test_released_signature_is_in_the_audit_log(tmp_path):
    released_signature_is_audited(tmp_path, None)


def test_audit_check_fails_when_signatures_leave_before_their_audit_commit(tmp_path):
    with pytest.raises(AssertionError, match="does not"):
        released_signature_is_audited(tmp_path, {"KEYGUARD_FAULT": "release-before-audit"})
