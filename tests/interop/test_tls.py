"""TLS with client certificates (op-batcher / op-proposer `--signer.tls.*`): the client is the
first DNS name of its certificate; certificates from another CA never reach JSON-RPC; bearer
tokens still work on the same listener."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

import kg


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}", cwd=d)


def make_cert(d: Path, ca: str, name: str, san: str) -> None:
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def tls(start, tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    make_cert(d, "ca", "server", "DNS:localhost,IP:127.0.0.1")
    make_cert(d, "ca", "batcher", "DNS:op-batcher.internal,DNS:other.internal")
    make_cert(d, "ca", "stranger", "DNS:stranger.internal")
    make_cert(d, "rogue-ca", "rogue", "DNS:op-batcher.internal")

    def make(data):
        lst = kg.listener(auth="bearer", tls={"cert": str(d / "server.crt"), "key": str(d / "server.key"), "client_ca": str(d / "ca.crt")})
        clients = [
            {"name": "batcher", "cert_dns_name": "op-batcher.internal", "keys": ["*"]},
            {"name": "ops", "token_sha256": "67d421fb2e91fc94a62e63c8f285bb7203e6a8e6c325b6daf93ee26ecff5c869", "keys": ["*"]},
        ]
        return kg.base_config(data, listeners=[lst], clients=clients)

    daemon = start(make, name="tls")
    return daemon, d


def tls_call(url: str, pki: Path, client: str | None, method: str, params, headers=None) -> dict:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client:
        ctx.load_cert_chain(str(pki / f"{client}.crt"), str(pki / f"{client}.key"))
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=body, headers=h, method="POST")
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        return json.loads(r.read())


def test_the_certificate_name_is_the_client(tls):
    daemon, pki = tls
    url = daemon.url()
    assert url.startswith("https://")
    assert tls_call(url, pki, "batcher", "health_status", [])["result"] == "OK"
    addr = daemon.address()
    tx = kg.tx_request("1559", addr, nonce=kg.fresh_nonce())
    res = tls_call(url, pki, "batcher", "eth_signTransaction", [tx])
    kg.verify_signed(kg.raw_of(res["result"]), tx, addr)
    audit = daemon.audit()
    assert audit is not None and any(e.get("client") == "batcher" for e in audit)


def test_unknown_certificate_name_falls_back_to_bearer(tls, nothing_signed):
    daemon, pki = tls
    with nothing_signed(daemon):
        r = tls_call(daemon.url(), pki, "stranger", "eth_accounts", [])
    kg.assert_error(r, -32005)
    r = tls_call(daemon.url(), pki, "stranger", "eth_accounts", [], {"Authorization": "Bearer kg-test-batcher-token"})
    assert daemon.address().lower() in [a.lower() for a in r["result"]]


@pytest.mark.parametrize("client", [None, "rogue"])
def test_no_or_foreign_certificate_fails_the_handshake(tls, client):
    daemon, pki = tls
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        tls_call(daemon.url(), pki, client, "health_status", [])
