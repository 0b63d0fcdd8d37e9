"""LocalStack's KMS on 127.0.0.1 without Docker, for the AWS KMS backend tests, and a TCP relay
between keyguard and it that counts what keyguard sends and can cut the service off.

LocalStack runs from the key-services venv (tests/interop/requirements-services.txt, built by
tests/run; KEYGUARD_SERVICES_VENV names it): its pins conflict with web3's, and
localstack-core 2026.x no longer runs on Python 3.11 (see that file).

Nothing here uses keyguard code. `public_key_address` reads a key's public key with a raw KMS
JSON call and derives the address with eth-keys, so the suite checks keyguard's address for a
KMS key independently.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from eth_keys import keys as eth_keys

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
# LocalStack's documented dummy credentials: the emulator accepts any; these are no secret.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
SPKI_SECP256K1_PREFIX = bytes.fromhex("3056301006072a8648ce3d020106052b8104000a034200")


def services_bin(name: str) -> str | None:
    """A program of the key-services venv, or None when the venv was not built."""
    venv = os.environ.get("KEYGUARD_SERVICES_VENV") or str(REPO / "target" / "services-venv")
    p = os.path.join(venv, "bin", name)
    return p if os.access(p, os.X_OK) else None


def python() -> str | None:
    return services_bin("python")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStack:
    """One LocalStack process serving KMS only, on a free loopback port."""

    def __init__(self, workdir: Path):
        py = python()
        if py is None:
            raise RuntimeError("key-services venv missing: run through tests/run (it builds target/services-venv)")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "localstack.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "LOCALSTACK_")) and k not in ("SERVICES", "DEBUG")
        }
        env.update(
            GATEWAY_LISTEN=f"127.0.0.1:{self.port}",
            SERVICES="kms",
            EAGER_SERVICE_LOADING="1",
            # hypercorn: the default twisted server needs service_identity, not pinned here.
            GATEWAY_SERVER="hypercorn",
            DNS_ADDRESS="0",
            DISABLE_EVENTS="1",
            FILESYSTEM_ROOT=str(workdir / "fs"),
            TMPDIR=str(workdir),
        )
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [py, "-m", "localstack.runtime.main"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"LocalStack exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/_localstack/health", timeout=2) as r:
                    state = json.load(r)["services"].get("kms")
                    if state in ("available", "running"):
                        # The first KMS request loads the provider; take it here, not inside
                        # a test's per-call timeout.
                        self.kms("ListKeys", {})
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"LocalStack's KMS did not come up in 120 s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def kms(self, action: str, body: dict) -> dict:
        """A raw KMS JSON-protocol call (LocalStack reads the region from the Authorization
        header and does not check the signature)."""
        req = urllib.request.Request(
            self.url + "/",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": f"TrentService.{action}",
                "Authorization": f"AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/kms/aws4_request, "
                "SignedHeaders=content-type;host;x-amz-target, Signature=00",
            },
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def public_key_address(self, key_ref: str) -> str:
        """The checksummed Ethereum address of a KMS key, from GetPublicKey, by eth-keys."""
        out = self.kms("GetPublicKey", {"KeyId": key_ref})
        assert out["KeySpec"] == "ECC_SECG_P256K1", out
        spki = base64.b64decode(out["PublicKey"])
        assert spki.startswith(SPKI_SECP256K1_PREFIX) and len(spki) == len(SPKI_SECP256K1_PREFIX) + 65, spki.hex()
        return eth_keys.PublicKey(spki[-64:]).to_checksum_address()


class Relay:
    """A TCP relay 127.0.0.1:port -> target port. Counts the bytes clients send (so a test can
    prove nothing reached KMS) and can refuse service (`down()`: open connections are cut and
    new ones closed at once), like an emulator that stopped."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.bytes_up = 0
        self.refusing = False
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def down(self) -> None:
        with self._lock:
            self.refusing = True
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._open.clear()

    def up(self) -> None:
        with self._lock:
            self.refusing = False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                if self.refusing:
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    with self._lock:
                        self.bytes_up += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.down()
        self.sock.close()
