"""Helpers for keyguard's interop suite: config writing, daemon process control, JSON-RPC
client, and an independent decoder/verifier for signed Ethereum transactions.

Nothing here imports keyguard code: every check is made with eth-account / eth-keys / rlp, so
the suite verifies the daemon against independent implementations.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
import uuid
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rlp
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from eth_keys import keys as eth_keys
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
GWEI = 10**9
ETHER = 10**18

# Fixed addresses used by configs and requests.
DELEGATE = "0x" + "de" * 20  # an EIP-7702 delegate that the permissive policy allows
OTHER_DELEGATE = "0x" + "ad" * 20  # a delegate no policy allows
ALLOWED_TO = "0x" + "a1" * 20  # the only destination of the strict policy
RECIPIENT = "0x" + "11" * 20
PASSPHRASE = "interop-test-passphrase"


# ------------------------------------------------------------------------------------------
# TOML writing (a small subset: enough for keyguard's config)
# ------------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _table(out: list[str], header: str, body: dict) -> None:
    out.append(f"\n{header}")
    subtables = []
    arrays = []
    for k, v in body.items():
        if isinstance(v, dict):
            subtables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))  # arrays of tables, e.g. [[policies.evm.rules]]
        elif v is not None:
            out.append(f"{k} = {_toml_value(v)}")
    name = header.strip("[]")
    for k, v in subtables:
        _table(out, f"[{name}.{k}]", v)
    for k, v in arrays:
        for item in v:
            _table(out, f"[[{name}.{k}]]", item)


def to_toml(cfg: dict) -> str:
    """Top-level scalars, then tables (dicts), then arrays of tables (lists of dicts, whose dict
    values become sub-tables such as [policies.evm])."""
    out: list[str] = []
    for k, v in cfg.items():
        if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            continue
        if v is not None:
            out.append(f"{k} = {_toml_value(v)}")
    for k, v in cfg.items():
        if isinstance(v, dict):
            _table(out, f"[{k}]", v)
    for k, v in cfg.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                _table(out, f"[[{k}]]", item)
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------
# Config model
# ------------------------------------------------------------------------------------------


def listener(name: str = "evm", **kw: Any) -> dict:
    d = {
        "name": name,
        "protocol": "evm-jsonrpc",
        "address": "127.0.0.1:0",
        "chain_id": 31337,
        "auth": "none",
        "keys": ["*"],
        "response": "raw",
        "max_body_bytes": 1048576,
    }
    d.update(kw)
    if d.get("auth") == "bearer":
        d.pop("keys", None)  # bearer listeners take their grants from [[clients]]
    return d


def policy(name: str = "dev", keys: list[str] | None = None, **evm: Any) -> dict:
    """A [[policies]] entry; the EVM rules live in its [policies.evm] sub-table (keyguard's
    config model: one sub-table per chain family)."""
    rules = {
        "chain_ids": [1337, 31337],
        "to": "any",
        "max_value": "1 ether",
        "max_fee_per_gas": "500 gwei",
        "max_priority_fee_per_gas": "500 gwei",
        "max_fee_per_blob_gas": "500 gwei",
        "contract_creation": True,
        "delegations": [DELEGATE],
    }
    rules.update(evm)
    return {"name": name, "keys": ["*"] if keys is None else keys, "evm": rules}


def base_config(
    data_dir: Path,
    listeners: list[dict] | None = None,
    policies: list[dict] | None = None,
    clients: list[dict] | None = None,
    create_on_first_start: list[str] | None = None,
    backend: str = "software",
) -> dict:
    """backend="pkcs11": keys on a fresh SoftHSM2 token next to data_dir, created by
    `keyguard keys generate --backend pkcs11` with the same ids the software keystore uses
    (see provision_softhsm, which conftest's `start` runs)."""
    if backend == "software":
        keystore: dict[str, Any] = {
            "backend": "software",
            "passphrase_env": "KEYGUARD_PASSPHRASE",
            "create_on_first_start": ["secp256k1", "ed25519"] if create_on_first_start is None else create_on_first_start,
            "kdf_memory_kib": 8192,
            "kdf_iterations": 1,
        }
    elif backend == "aws-kms":
        # The secp256k1 key in KMS (created by `keys generate --backend aws-kms`, see
        # provision_aws_kms), the Ed25519 key in the software keystore: one daemon, two backends.
        keystore = {
            "backend": "software",
            "passphrase_env": "KEYGUARD_PASSPHRASE",
            "create_on_first_start": ["ed25519"],
            "kdf_memory_kib": 8192,
            "kdf_iterations": 1,
            "aws_kms": aws_kms_table({"dev-secp256k1": f"alias/kg-{uuid.uuid4().hex[:16]}"}),
        }
    elif backend == "pkcs11":
        keystore = {
            "backend": "pkcs11",
            "pkcs11": {
                "library": softhsm_library(),
                "token_label": "kg-interop",
                "pin_env": HSM_PIN_ENV,
                "sessions": 4,
            },
        }
    else:
        raise ValueError(backend)
    cfg: dict[str, Any] = {
        "dev": False,
        "data": {"dir": str(data_dir)},
        "keystore": keystore,
        "listeners": [listener()] if listeners is None else listeners,
    }
    if clients:
        cfg["clients"] = clients
    cfg["policies"] = [policy()] if policies is None else policies
    return cfg


# ------------------------------------------------------------------------------------------
# AWS KMS keys in LocalStack (tests/interop/localstack.py; the `localstack_kms` fixture)
# ------------------------------------------------------------------------------------------

AWS_ENDPOINT: str | None = None  # set by conftest's localstack_kms fixture


def aws_kms_table(keys: dict[str, str], endpoint: str | None = None, **limits: Any) -> dict:
    url = endpoint or AWS_ENDPOINT
    if url is None:
        raise RuntimeError("no LocalStack endpoint: the test must use the localstack_kms fixture")
    return {"region": "us-east-1", "endpoint": url, "allow_generate": True, "keys": keys, **limits}


def provision_aws_kms(workdir: Path, cfg: dict) -> dict:
    """Create every configured KMS key with keyguard's own `keys generate --backend aws-kms`;
    return the environment (LocalStack's dummy credentials) the daemon needs."""
    import localstack

    env = dict(localstack.AWS_ENV)
    cfg_path = write_config(workdir / "keyguard.toml", cfg)
    for key_id in cfg["keystore"]["aws_kms"]["keys"]:
        r = run_cli(["keys", "generate", "--backend", "aws-kms", "--id", key_id, "--config", str(cfg_path)], env=env)
        assert r.returncode == 0, f"keys generate --backend aws-kms {key_id}: {r.stderr}"
    return env


BAO = None  # the openbao.OpenBao of conftest's openbao_transit fixture


def openbao_table(keys: dict[str, str]) -> dict:
    if BAO is None:
        raise RuntimeError("no OpenBao server: the test must use the openbao_transit fixture")
    import openbao

    return {"address": BAO.url, "token_env": openbao.TOKEN_ENV, "allow_generate": True, "keys": keys}


def provision_openbao(workdir: Path, cfg: dict) -> dict:
    """Create every configured transit key with `keys generate --backend openbao`; return the
    environment holding the token."""
    env = BAO.env()
    cfg_path = write_config(workdir / "keyguard.toml", cfg)
    for key_id in cfg["keystore"]["openbao"]["keys"]:
        r = run_cli(["keys", "generate", "--backend", "openbao", "--id", key_id, "--scheme", "ed25519", "--config", str(cfg_path)], env=env)
        assert r.returncode == 0, f"keys generate --backend openbao {key_id}: {r.stderr}"
    return env


# ------------------------------------------------------------------------------------------
# SoftHSM2 token for the PKCS#11 backend
# ------------------------------------------------------------------------------------------

HSM_PIN_ENV = "KG_INTEROP_HSM_PIN"
HSM_PIN = "73159246"
HSM_SO_PIN = "64295173"


def softhsm_library() -> str:
    return os.environ.get("KEYGUARD_SOFTHSM2_LIB", "/usr/lib/softhsm/libsofthsm2.so")


def softhsm_available() -> bool:
    return os.path.exists(softhsm_library()) and shutil.which("softhsm2-util") is not None


def provision_softhsm(workdir: Path, cfg: dict, key_ids: tuple[tuple[str, str], ...] = (("dev-secp256k1", "secp256k1"), ("dev-ed25519", "ed25519"))) -> dict:
    """Create a fresh token in workdir/softhsm with its own SOFTHSM2_CONF, generate the keys
    through keyguard's CLI, and return the environment the daemon needs."""
    p = cfg["keystore"]["pkcs11"]
    tokens = workdir / "softhsm" / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = workdir / "softhsm" / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {"SOFTHSM2_CONF": str(conf), HSM_PIN_ENV: HSM_PIN}
    r = subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", p["token_label"], "--pin", HSM_PIN, "--so-pin", HSM_SO_PIN],
        env=dict(os.environ, **env), capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, f"softhsm2-util --init-token failed: {r.stderr}"
    cfg_path = write_config(workdir / "keyguard.toml", cfg)
    for key_id, scheme in key_ids:
        r = run_cli(["keys", "generate", "--backend", "pkcs11", "--id", key_id, "--scheme", scheme, "--config", str(cfg_path)], env=env)
        assert r.returncode == 0, f"keys generate {key_id}: {r.stderr}"
    return env


# ------------------------------------------------------------------------------------------
# Running the binary
# ------------------------------------------------------------------------------------------


def keyguard_bin() -> str:
    b = os.environ.get("KEYGUARD_BIN")
    if not b:
        raise RuntimeError("KEYGUARD_BIN is not set: run the suite through tests/run")
    if not os.access(b, os.X_OK):
        raise RuntimeError(f"KEYGUARD_BIN={b} is not an executable file")
    return b


def base_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    # A fault (test builds, src/fault.rs) only where a test asks for it by name.
    env.pop("KEYGUARD_FAULT", None)
    env["KEYGUARD_PASSPHRASE"] = PASSPHRASE
    env.setdefault("RUST_BACKTRACE", "1")
    if extra:
        env.update(extra)
    return env


def run_cli(args: list[str], env: dict | None = None, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [keyguard_bin(), *args],
        env=base_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_config(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(cfg))
    return path


@dataclass
class Listener:
    name: str
    protocol: str
    http: str
    ws: str


@dataclass
class Daemon:
    config_path: Path
    config: dict
    proc: subprocess.Popen
    stderr_path: Path
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (scheme, address/pubkey)
    listeners: dict[str, Listener] = field(default_factory=dict)
    stdout_lines: list[str] = field(default_factory=list)

    # -- convenience ------------------------------------------------------------------------
    def url(self, name: str = "evm") -> str:
        return self.listeners[name].http

    def ws_url(self, name: str = "evm") -> str:
        return self.listeners[name].ws

    def address(self, key_id: str = "dev-secp256k1") -> str:
        scheme, addr = self.keys[key_id]
        assert scheme == "secp256k1", (key_id, scheme)
        return addr

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    # -- audit -----------------------------------------------------------------------------
    def audit(self) -> list[dict]:
        """Audit entries via `keyguard audit list --config F --json` (one JSON object a line).
        Raises AuditUnreadable on any failure: a check that cannot read the log must fail,
        never switch itself off."""
        r = run_cli(["audit", "list", "--config", str(self.config_path), "--json", "--limit", "1000000"])
        if r.returncode != 0:
            raise AuditUnreadable(f"keyguard audit list exited {r.returncode}: {r.stderr.strip()}")
        entries = []
        for line in r.stdout.splitlines():
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError as err:
                raise AuditUnreadable(f"not a JSON audit row: {line!r}: {err}") from err
            if not isinstance(e, dict) or not isinstance(e.get("decision"), str):
                raise AuditUnreadable(f"audit row without a decision: {line!r}")
            entries.append(e)
        return entries

    def signed_count(self) -> int:
        """Audit rows whose decision is `signed` (the only word keyguard writes for a release)."""
        return sum(1 for e in self.audit() if e["decision"] == "signed")

    @contextlib.contextmanager
    def nothing_signed(self):
        """`with daemon.nothing_signed(): ...` fails if the audit log gained a signed row."""
        before = self.signed_count()
        yield
        after = self.signed_count()
        assert after == before, f"audit log shows {after - before} new signature(s) after a refused request"


class AuditUnreadable(AssertionError):
    """The audit log could not be read: the nothing-signed check fails rather than skip."""


KEY_RE = re.compile(r"^keyguard: key (\S+) (\S+) (\S+)\s*$")
LISTENER_RE = re.compile(r"^keyguard: listener (\S+) (\S+) (https?://\S+) (wss?://\S+)\s*$")


def _die_with_parent() -> None:
    """preexec_fn: the daemon gets SIGTERM if the test process dies (Linux prctl)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def start_daemon(workdir: Path, cfg: dict, env: dict | None = None, timeout: float = 60) -> Daemon:
    """Write cfg to workdir/keyguard.toml, run `keyguard start`, wait for `keyguard: ready`."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = write_config(workdir / "keyguard.toml", cfg)
    stderr_path = workdir / f"keyguard-{int(time.time() * 1000)}.stderr"
    errf = open(stderr_path, "wb")
    proc = subprocess.Popen(
        [keyguard_bin(), "start", "--config", str(cfg_path)],
        env=base_env(env),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=errf,
        text=True,
        bufsize=1,
        preexec_fn=_die_with_parent,
    )
    errf.close()
    d = Daemon(config_path=cfg_path, config=copy.deepcopy(cfg), proc=proc, stderr_path=stderr_path)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    ready = False
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.05, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        d.stdout_lines.append(line)
        if m := KEY_RE.match(line):
            d.keys[m.group(1)] = (m.group(2), m.group(3))
        elif m := LISTENER_RE.match(line):
            d.listeners[m.group(1)] = Listener(m.group(1), m.group(2), m.group(3), m.group(4))
        elif line.strip() == "keyguard: ready":
            ready = True
            break
    if not ready:
        d.stop()
        raise RuntimeError(
            "keyguard did not print 'keyguard: ready' "
            f"(exit code {proc.returncode}, within {timeout}s)\n"
            f"--- config {cfg_path}\n{cfg_path.read_text()}"
            f"--- stdout\n" + "\n".join(d.stdout_lines) + f"\n--- stderr\n{d.stderr()}"
        )
    return d


# ------------------------------------------------------------------------------------------
# JSON-RPC client
# ------------------------------------------------------------------------------------------


class RpcResponse:
    def __init__(self, status: int, body: bytes, headers: dict):
        self.status = status
        self.body = body
        self.headers = headers
        try:
            self.json = json.loads(body)
        except ValueError:
            self.json = None

    def __repr__(self) -> str:
        return f"RpcResponse(status={self.status}, body={self.body[:2000]!r})"


def post(url: str, body: bytes | str, headers: dict | None = None, timeout: float = 30) -> RpcResponse:
    if isinstance(body, str):
        body = body.encode()
    h = {"Content-Type": "application/json"}
    if headers:
        h.update(headers)
    req = urllib.request.Request(url, data=body, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return RpcResponse(r.status, r.read(), dict(r.headers))
    except urllib.error.HTTPError as e:
        return RpcResponse(e.code, e.read(), dict(e.headers or {}))


_ids = iter(range(1, 10**9))
_nonces = iter(range(1000, 10**9))


def fresh_nonce() -> int:
    """A nonce not used before in this test run (a signer may track nonces per key)."""
    return next(_nonces)


def call(url: str, method: str, params: Any = None, headers: dict | None = None) -> dict:
    """One JSON-RPC call; returns the whole response object (with `result` or `error`)."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": next(_ids), "method": method}
    if params is not None:
        msg["params"] = params
    r = post(url, json.dumps(msg), headers)
    assert r.json is not None, f"non-JSON answer to {method}: {r!r}"
    assert isinstance(r.json, dict), r
    assert r.json.get("id") == msg["id"], (msg, r.json)
    return r.json


def result(url: str, method: str, params: Any = None, headers: dict | None = None) -> Any:
    resp = call(url, method, params, headers)
    assert "error" not in resp, f"{method} failed: {resp['error']}"
    return resp["result"]


def sign(url: str, tx: dict, headers: dict | None = None) -> dict:
    return call(url, "eth_signTransaction", [tx], headers)


def raw_of(res: Any) -> str:
    """The signed raw tx from a result of shape "raw" ("0x..") or "geth" ({raw, tx})."""
    if isinstance(res, dict):
        return res["raw"]
    assert isinstance(res, str), res
    return res


# ------------------------------------------------------------------------------------------
# Building requests
# ------------------------------------------------------------------------------------------


def q(n: int) -> str:
    """geth hexutil quantity."""
    return hex(n)


def tx_request(kind: str, frm: str, nonce: int = 0, chain_id: int = 31337, **over: Any) -> dict:
    """A TransactionArgs of the given kind: legacy, 2930, 1559, 4844, 7702."""
    tx: dict[str, Any] = {
        "from": frm,
        "to": RECIPIENT,
        "gas": q(100_000),
        "value": q(12345),
        "nonce": q(nonce),
        "input": "0xdeadbeef",
        "chainId": q(chain_id),
    }
    al = [{"address": "0x" + "22" * 20, "storageKeys": ["0x" + "00" * 31 + "01", "0x" + "ff" * 32]}]
    if kind == "legacy":
        tx["gasPrice"] = q(2 * GWEI)
    elif kind == "2930":
        tx["gasPrice"] = q(2 * GWEI)
        tx["accessList"] = al
    elif kind == "1559":
        tx["maxFeePerGas"] = q(30 * GWEI)
        tx["maxPriorityFeePerGas"] = q(GWEI)
        tx["accessList"] = al
    elif kind == "4844":
        # as op-batcher's signer client sends it: sidecar stripped, gasPrice/data null
        tx["maxFeePerGas"] = q(30 * GWEI)
        tx["maxPriorityFeePerGas"] = q(GWEI)
        tx["maxFeePerBlobGas"] = q(3 * GWEI)
        tx["blobVersionedHashes"] = ["0x01" + "ab" * 31, "0x01" + "cd" * 31]
        tx["gasPrice"] = None
        tx["data"] = None
        tx["value"] = q(0)
    elif kind == "7702":
        tx["maxFeePerGas"] = q(30 * GWEI)
        tx["maxPriorityFeePerGas"] = q(GWEI)
        tx["authorizationList"] = [authorization(chain_id, DELEGATE, 5)]
    else:
        raise ValueError(kind)
    tx.update(over)
    return {k: v for k, v in tx.items() if v is not ...}


AUTHORITY = Account.from_key(b"\x42" * 32)  # the EOA that delegates in 7702 tests


def authorization(chain_id: int, address: str, nonce: int, signer=AUTHORITY) -> dict:
    a = signer.sign_authorization({"chainId": chain_id, "address": address, "nonce": nonce})
    return {
        "chainId": q(a.chain_id),
        "address": to_checksum_address(a.address),
        "nonce": q(a.nonce),
        "yParity": q(a.y_parity),
        "r": q(a.r),
        "s": q(a.s),
    }


def request_to_eth_account(tx: dict) -> dict:
    """The same transaction as an eth-account `sign_transaction` dict (for local checks)."""
    out: dict[str, Any] = {}
    intf = lambda v: int(v, 16)  # noqa: E731
    for k in ("nonce", "gas", "value", "chainId", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas", "maxFeePerBlobGas"):
        if tx.get(k) is not None:
            out[k] = intf(tx[k])
    if tx.get("to") is not None:
        out["to"] = to_checksum_address(tx["to"])
    data = tx.get("input") if tx.get("input") is not None else tx.get("data")
    out["data"] = data or "0x"
    if tx.get("accessList") is not None:
        out["accessList"] = tx["accessList"]
    if tx.get("blobVersionedHashes") is not None:
        out["blobVersionedHashes"] = tx["blobVersionedHashes"]
    if tx.get("authorizationList") is not None:
        out["authorizationList"] = [
            {
                "chainId": intf(a["chainId"]),
                "address": to_checksum_address(a["address"]),
                "nonce": intf(a["nonce"]),
                "yParity": intf(a["yParity"]),
                "r": intf(a["r"]),
                "s": intf(a["s"]),
            }
            for a in tx["authorizationList"]
        ]
    return out


# ------------------------------------------------------------------------------------------
# Independent decoding and verification of a signed transaction
# ------------------------------------------------------------------------------------------


def _int(b: bytes) -> int:
    assert b == b"" or b[0] != 0, f"non-canonical integer {b.hex()}"
    return int.from_bytes(b, "big")


def _addr(b: bytes) -> str | None:
    if b == b"":
        return None
    assert len(b) == 20, b.hex()
    return "0x" + b.hex()


def _access_list(items: list) -> list[dict]:
    out = []
    for item in items:
        addr, keys = item
        assert len(addr) == 20 and all(len(k) == 32 for k in keys)
        out.append({"address": "0x" + addr.hex(), "storageKeys": ["0x" + k.hex() for k in keys]})
    return out


def decode_raw(raw_hex: str) -> dict:
    """Decode a signed transaction with plain RLP (strict: rejects non-canonical encodings),
    compute its signing hash, recover the sender with eth-keys. Returns normalized fields."""
    raw = bytes.fromhex(raw_hex[2:] if raw_hex.startswith("0x") else raw_hex)
    assert raw, "empty raw transaction"
    d: dict[str, Any] = {}
    if raw[0] >= 0xC0:
        f = rlp.decode(raw, strict=True)
        assert len(f) == 9, f"legacy tx has {len(f)} fields"
        nonce, gas_price, gas, to, value, data, v, rb, sb = f
        v = _int(v)
        assert v >= 35, f"legacy v={v}: not EIP-155"
        chain_id = (v - 35) // 2
        y = (v - 35) % 2
        unsigned = rlp.encode([nonce, gas_price, gas, to, value, data, chain_id, 0, 0])
        sighash = keccak(unsigned)
        d.update(
            type=0, nonce=_int(nonce), gasPrice=_int(gas_price), gas=_int(gas), to=_addr(to),
            value=_int(value), data="0x" + data.hex(), chainId=chain_id, v=v,
        )
    else:
        t = raw[0]
        assert t in (1, 2, 3, 4), f"unknown tx type {t}"
        f = rlp.decode(raw[1:], strict=True)
        body, (yb, rb, sb) = f[:-3], f[-3:]
        y = _int(yb)
        sighash = keccak(bytes([t]) + rlp.encode(body))
        if t == 1:
            assert len(body) == 8
            cid, nonce, gp, gas, to, value, data, al = body
            d.update(type=1, chainId=_int(cid), nonce=_int(nonce), gasPrice=_int(gp), gas=_int(gas),
                     to=_addr(to), value=_int(value), data="0x" + data.hex(), accessList=_access_list(al))
        else:
            cid, nonce, tip, fee, gas, to, value, data, al = body[:9]
            d.update(type=t, chainId=_int(cid), nonce=_int(nonce), maxPriorityFeePerGas=_int(tip),
                     maxFeePerGas=_int(fee), gas=_int(gas), to=_addr(to), value=_int(value),
                     data="0x" + data.hex(), accessList=_access_list(al))
            rest = body[9:]
            if t == 2:
                assert not rest, "extra fields in a 1559 tx"
            elif t == 3:
                assert len(rest) == 2, "4844 tx must be in canonical form (no sidecar)"
                d["maxFeePerBlobGas"] = _int(rest[0])
                d["blobVersionedHashes"] = ["0x" + h.hex() for h in rest[1]]
                assert d["to"] is not None
            elif t == 4:
                assert len(rest) == 1
                auths = []
                for a in rest[0]:
                    acid, aaddr, anonce, ay, ar, as_ = a
                    auths.append({"chainId": _int(acid), "address": _addr(aaddr), "nonce": _int(anonce),
                                  "yParity": _int(ay), "r": _int(ar), "s": _int(as_)})
                d["authorizationList"] = auths
                assert d["to"] is not None
        assert y in (0, 1), f"yParity {y}"
        d["yParity"] = y
    r_i, s_i = _int(rb), _int(sb)
    d["r"], d["s"] = r_i, s_i
    assert 0 < r_i < SECP256K1_N and 0 < s_i < SECP256K1_N
    sig = eth_keys.Signature(vrs=(y, r_i, s_i))
    d["from"] = sig.recover_public_key_from_msg_hash(sighash).to_checksum_address()
    d["hash"] = "0x" + keccak(raw).hex()
    return d


def verify_signed(raw_hex: str, request: dict, expected_from: str) -> dict:
    """Full independent check of a signed tx against the request it answered.

    - eth-account's Account.recover_transaction gives expected_from,
    - our own RLP decode + eth-keys recovery gives expected_from,
    - eth-account's own decoder (TypedTransaction.from_bytes, or our rlp for legacy) agrees
      field by field with what was requested,
    - s is in the lower half of the curve order.
    """
    expected_from = to_checksum_address(expected_from)
    assert isinstance(raw_hex, str) and raw_hex.startswith("0x"), raw_hex
    raw = bytes.fromhex(raw_hex[2:])
    assert Account.recover_transaction(raw) == expected_from, "eth-account recovered another sender"
    d = decode_raw(raw_hex)
    assert d["from"] == expected_from, "own decoder recovered another sender"
    assert d["s"] <= SECP256K1_N // 2, "high-s signature"

    want = request_to_eth_account(request)
    want_type = expected_type(request)
    assert d["type"] == want_type, (d["type"], want_type)
    for k in ("nonce", "gas", "value", "chainId", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas", "maxFeePerBlobGas"):
        if k in want:
            assert d[k] == want[k], f"{k}: signed {d[k]} requested {want[k]}"
    if want_type == 0:
        assert "gasPrice" in want
        assert d["v"] in (2 * want["chainId"] + 35, 2 * want["chainId"] + 36)
    assert (d["to"] or None) == (request.get("to").lower() if request.get("to") else None)
    assert d["data"] == (want["data"] or "0x").lower()
    if want_type in (1, 2, 3, 4):
        assert d["accessList"] == normalize_access_list(request.get("accessList") or [])
    if want_type == 3:
        assert d["blobVersionedHashes"] == [h.lower() for h in request["blobVersionedHashes"]]
    if want_type == 4:
        got = [dict(a, address=to_checksum_address(a["address"])) for a in d["authorizationList"]]
        assert got == want["authorizationList"]

    # eth-account's own decoder must agree too (independent of our RLP code).
    if want_type != 0:
        ea = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        assert ea["type"] == want_type
        for k in ("nonce", "gas", "value", "chainId", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas", "maxFeePerBlobGas"):
            if k in ea:
                assert ea[k] == d[k], (k, ea[k], d[k])
        assert ("0x" + bytes(ea["data"]).hex()) == d["data"]
        ea_to = ("0x" + bytes(ea["to"]).hex()) if ea.get("to") else None
        assert ea_to == d["to"]
        if want_type == 3:
            assert ["0x" + bytes(h).hex() for h in ea["blobVersionedHashes"]] == d["blobVersionedHashes"]
        if want_type == 4:
            assert len(ea["authorizationList"]) == len(d["authorizationList"])
            for a, b in zip(ea["authorizationList"], d["authorizationList"]):
                assert a["chainId"] == b["chainId"] and a["nonce"] == b["nonce"]
                assert "0x" + bytes(a["address"]).hex() == b["address"]
                assert (a["yParity"], a["r"], a["s"]) == (b["yParity"], b["r"], b["s"])
    return d


def normalize_access_list(al: list) -> list[dict]:
    return [
        {"address": e["address"].lower(), "storageKeys": ["0x" + k[2:].lower().rjust(64, "0") for k in e["storageKeys"]]}
        for e in al
    ]


def expected_type(tx: dict) -> int:
    if tx.get("type") is not None:
        return int(tx["type"], 16)
    if tx.get("authorizationList") is not None:
        return 4
    if tx.get("blobVersionedHashes") is not None:
        return 3
    if tx.get("maxFeePerGas") is not None or tx.get("maxPriorityFeePerGas") is not None:
        return 2
    if tx.get("accessList") is not None:
        return 1
    return 0


def field_matches(got: Any, accepted: set | tuple | list | str) -> bool:
    """data.field names the offending field: exactly one of `accepted`, or a path inside it
    (`accessList[0].storageKeys[0]`, `authorizationList[0].s`)."""
    if not isinstance(got, str):
        return False
    if isinstance(accepted, str):
        accepted = {accepted}
    for a in accepted:
        if got == a or got.startswith(a + "[") or got.startswith(a + "."):
            return True
    return False


def assert_error(resp: dict, code: int, **data: Any) -> dict:
    """The response is a JSON-RPC error with this code (and these data fields, when given);
    nothing signed leaked."""
    assert "result" not in resp, f"expected error {code}, got a result: {resp}"
    err = resp.get("error")
    assert isinstance(err, dict), resp
    assert err.get("code") == code, f"expected code {code}, got {err}"
    d = err.get("data")
    for k, v in data.items():
        assert isinstance(d, dict), f"error data is not an object: {err}"
        if k == "field":
            assert field_matches(d.get("field"), v), f"data.field={d.get('field')!r}, expected {v!r}: {err}"
        elif isinstance(v, (set, tuple, list)):
            assert d.get(k) in v, f"data.{k}={d.get(k)!r} not in {v}: {err}"
        else:
            assert d.get(k) == v, f"data.{k}={d.get(k)!r} != {v!r}: {err}"
    leak = signature_leak(json.dumps(resp))
    assert leak is None, f"error carries what may be a signature ({leak}): {resp}"
    return err


# A 32-byte r or s is 64 hex digits; a 64-byte Ed25519 or 65-byte secp256k1 signature is
# 128/130 hex digits or 86-88 base64 characters. Any such run in an error is treated as a leak.
HEX_RUN = re.compile(r"(?:0x)?[0-9a-fA-F]{64,}")
BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{86,}={0,2}")


def signature_leak(text: str) -> str | None:
    """The first run in `text` long enough to carry a signature (hex >= 64 digits, base64 >= 86
    characters), or None."""
    for pattern in (HEX_RUN, BASE64_RUN):
        for m in pattern.finditer(text):
            # A decimal amount (2^256-1 is 78 digits) is what refusals name; a signature's hex
            # or base64 is all digits with probability (10/16)^64 < 1e-13.
            if m.group(0).isdigit():
                continue
            return f"{len(m.group(0))} characters: {m.group(0)[:20]}..."
    return None


# ------------------------------------------------------------------------------------------
# Other clients: viem (Node) and web3.py
# ------------------------------------------------------------------------------------------

HERE = Path(__file__).resolve().parent


def run_viem(url: str, address: str, txs: list[dict], node_modules: Path) -> list[dict]:
    """Run viem_sign.cjs: viem's JSON-RPC account signs each tx through `url`."""
    nm = Path(node_modules)
    assert (nm / "viem").is_dir(), f"viem is not installed in {nm} (tests/run installs it)"
    env = dict(os.environ, NODE_PATH=str(nm))
    r = subprocess.run(
        ["node", str(HERE / "viem_sign.cjs")],
        input=json.dumps({"url": url, "address": address, "txs": txs}),
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.returncode == 0, f"viem script failed ({r.returncode}):\n{r.stderr}\n{r.stdout}"
    return json.loads(r.stdout)


def web3_sign(url: str, tx: dict):
    """web3.py's w3.eth.sign_transaction through `url` (expects a geth-shaped {raw, tx})."""
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))
    return w3.eth.sign_transaction(tx)


def web3_request(tx: dict) -> dict:
    """A TransactionArgs (hex strings) as web3.py takes it (ints)."""
    out: dict[str, Any] = {}
    for k, v in tx.items():
        if v is None:
            continue
        if k in ("nonce", "gas", "value", "chainId", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas", "maxFeePerBlobGas"):
            out[k] = int(v, 16)
        elif k == "input":
            out["data"] = v
        else:
            out[k] = v
    if "to" in out:
        out["to"] = to_checksum_address(out["to"])
    out["from"] = to_checksum_address(out["from"])
    return out


def viem_request(tx: dict) -> dict:
    """A TransactionArgs as a viem signTransaction parameter (bigints as decimal strings)."""
    out: dict[str, Any] = {}
    for k, v in tx.items():
        if v is None or k in ("from", "chainId"):
            continue
        if k in ("gas", "value", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas", "maxFeePerBlobGas"):
            out[k] = str(int(v, 16))
        elif k == "nonce":
            out[k] = int(v, 16)
        elif k == "input":
            out["data"] = v
        else:
            out[k] = v
    return out
