"""Fixtures for keyguard's interop suite.

`start` (module scope) writes a config into a tmp dir, runs `$KEYGUARD_BIN start --config F`,
waits for `keyguard: ready` (60 s, stderr shown on failure) and stops every daemon it started at
the end of the module. The daemon's stderr is attached to the report of any failing test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kg
import pgcluster
import localstack
import openbao

REPO = Path(__file__).resolve().parents[2]
_running: list[kg.Daemon] = []


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    started: list[kg.Daemon] = []

    def _start(make_config, name: str = "kg", env: dict | None = None, before_start=None) -> kg.Daemon:
        """make_config(data_dir) -> config dict; before_start(workdir, cfg) runs CLI set-up."""
        workdir = tmp_path_factory.mktemp(name)
        cfg = make_config(workdir / "var")
        if cfg["keystore"]["backend"] == "pkcs11":
            env = dict(env or {}, **kg.provision_softhsm(workdir, cfg))
        if "aws_kms" in cfg["keystore"]:
            env = dict(env or {}, **kg.provision_aws_kms(workdir, cfg))
        if "openbao" in cfg["keystore"]:
            env = dict(env or {}, **kg.provision_openbao(workdir, cfg))
        if before_start is not None:
            kg.write_config(workdir / "keyguard.toml", cfg)
            before_start(workdir, cfg)
        d = kg.start_daemon(workdir, cfg, env)
        started.append(d)
        _running.append(d)
        return d

    yield _start
    for d in started:
        d.stop()
        _running.remove(d)


@pytest.fixture(scope="session")
def localstack_kms(tmp_path_factory):
    """LocalStack's KMS for the session (tests/interop/localstack.py); sets kg.AWS_ENDPOINT."""
    if localstack.python() is None:
        if os.environ.get("CI") or os.environ.get("KEYGUARD_SKIP_AWS_KMS") != "1":
            pytest.fail("the key-services venv is missing: run through tests/run (it builds it)")
        pytest.skip("LocalStack venv missing (KEYGUARD_SKIP_AWS_KMS=1)")
    ls = localstack.LocalStack(tmp_path_factory.mktemp("localstack"))
    kg.AWS_ENDPOINT = ls.url
    yield ls
    kg.AWS_ENDPOINT = None
    ls.stop()


@pytest.fixture(scope="session")
def openbao_transit(tmp_path_factory):
    """An OpenBao dev server with transit (tests/interop/openbao.py); sets kg.BAO."""
    if localstack.services_bin("bao") is None:
        if os.environ.get("CI") or os.environ.get("KEYGUARD_SKIP_OPENBAO") != "1":
            pytest.fail("the key-services venv (bao) is missing: run through tests/run (it builds it)")
        pytest.skip("bao missing (KEYGUARD_SKIP_OPENBAO=1)")
    bao = openbao.OpenBao(tmp_path_factory.mktemp("openbao"))
    kg.BAO = bao
    yield bao
    kg.BAO = None
    bao.stop()


@pytest.fixture(scope="module", params=["software", "pkcs11", "aws-kms"])
def backend(request):
    """The key backend a module's daemon uses: signing tests run once per backend (software
    keystore, PKCS#11 on a fresh SoftHSM2 token, the secp256k1 key in LocalStack's KMS beside
    a software Ed25519 key)."""
    if request.param == "pkcs11" and not kg.softhsm_available():
        if os.environ.get("CI") or os.environ.get("KEYGUARD_SKIP_PKCS11") != "1":
            pytest.fail("SoftHSM2 is not installed: run through tests/run (it installs it)")
        pytest.skip("SoftHSM2 is not installed (tests/run warned: KEYGUARD_SKIP_PKCS11=1)")
    if request.param == "aws-kms":
        request.getfixturevalue("localstack_kms")
    return request.param


@pytest.fixture
def pg_cluster():
    """A throwaway PostgreSQL server (pgcluster.PgCluster), stopped and removed after the test.
    A missing PostgreSQL fails the test, never a skip."""
    try:
        cluster = pgcluster.PgCluster.start()
    except pgcluster.PgMissing as e:
        pytest.fail(str(e))
    yield cluster
    cluster.close()


@pytest.fixture
def nothing_signed():
    """`with nothing_signed(daemon): ...` asserts the audit log gained no signed row. Reading
    the log is required: if `keyguard audit list --json` fails, the test fails
    (kg.AuditUnreadable), it never silently skips the comparison."""

    def _check(daemon: kg.Daemon):
        return daemon.nothing_signed()

    return _check


def node_modules() -> Path:
    return Path(os.environ.get("KEYGUARD_NODE_MODULES", REPO / "target" / "node" / "node_modules"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _running:
        for d in _running:
            tail = d.stderr()[-6000:]
            rep.sections.append((f"keyguard stderr ({d.config_path})", tail))
