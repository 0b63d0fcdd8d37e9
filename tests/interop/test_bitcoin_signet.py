"""Signet block signing through the real binary: blocks and the miner's PSBT built here the way
Bitcoin Core's `contrib/signet/miner` builds them (raw bytes, no keyguard code), signed over
`btc_signPsbt` and `btc_signSignetBlock`, and the solution verified by embit (libsecp256k1)
against a BIP325 commitment recomputed here. Then the watermark: a second block at a signed
height and a block without its parent's proof are refused, each naming its rule."""

from __future__ import annotations

import base64
import json
import io
import struct
import time

import pytest
from embit import ec
from embit.hashes import double_sha256
from embit.script import Script
from embit.transaction import Transaction

import kg

SECRET = bytes([0x5A] * 32)
PUB = ec.PrivateKey(SECRET).get_public_key().sec()
CHALLENGE = b"\x51\x21" + PUB + b"\x51\xae"
PAYEE = bytes.fromhex("0014" + "aa" * 20)
GENESIS = bytes.fromhex("00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6")[::-1]
HEADER = bytes.fromhex("ecc7daa2")


def varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    return b"\xfe" + struct.pack("<I", n)


def push(data: bytes) -> bytes:
    assert len(data) < 0x4C or len(data) <= 0xFF
    return (bytes([len(data)]) if len(data) < 0x4C else b"\x4c" + bytes([len(data)])) + data


def tx_bytes(version, vin, vout, locktime, witness=None) -> bytes:
    """vin: [(prev_txid_le, vout, script_sig, sequence)], vout: [(value, script)]."""
    body = varint(len(vin)) + b"".join(p + struct.pack("<I", n) + varint(len(s)) + s + struct.pack("<I", q) for p, n, s, q in vin)
    body += varint(len(vout)) + b"".join(struct.pack("<q", v) + varint(len(s)) + s for v, s in vout)
    head = struct.pack("<i", version)
    if witness is None:
        return head + body + struct.pack("<I", locktime)
    wit = b"".join(varint(len(stack)) + b"".join(varint(len(i)) + i for i in stack) for stack in witness)
    return head + b"\x00\x01" + body + wit + struct.pack("<I", locktime)


def merkle(hashes: list[bytes]) -> bytes:
    while len(hashes) > 1:
        if len(hashes) % 2:
            hashes.append(hashes[-1])
        hashes = [double_sha256(hashes[i] + hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


def coinbase(height: int, extra: bytes = b"") -> tuple[bytes, bytes]:
    """(txid-form serialization, full serialization) of the miner's coinbase: BIP34 height,
    50 BTC to PAYEE, witness commitment of an otherwise empty block, last."""
    if height <= 16:
        sig = bytes([0x50 + height, 0x51])  # OP_N and a dummy, as the miner (2-byte minimum)
    else:
        num = height.to_bytes((height.bit_length() + 8) // 8, "little")  # minimal CScriptNum
        sig = push(num)
    commitment = double_sha256(b"\x00" * 32 + b"\x00" * 32)
    outs = [(50 * 10**8, PAYEE), (0, b"\x6a\x24\xaa\x21\xa9\xed" + commitment + extra)]
    vin = [(b"\x00" * 32, 0xFFFFFFFF, sig, 0xFFFFFFFE)]
    return tx_bytes(1, vin, outs, height - 1), tx_bytes(1, vin, outs, height - 1, witness=[[b"\x00" * 32]])


def block(height: int, prev: bytes, t: int) -> bytes:
    stripped, full = coinbase(height)
    root = double_sha256(stripped)
    header = struct.pack("<i", 0x20000000) + prev + root + struct.pack("<III", t, 0x1E0377AE, 0)
    return header + b"\x01" + full


def to_spend_spend(height: int, prev: bytes, t: int) -> tuple[bytes, bytes]:
    """BIP325 as the miner's signet_txs: header push on the commitment output, merkle root,
    to_spend committing to version/prev/root/time, spend of it."""
    stripped, _ = coinbase(height, extra=push(HEADER))
    root = merkle([double_sha256(stripped)])
    data = struct.pack("<i", 0x20000000) + prev + root + struct.pack("<I", t)
    to_spend = tx_bytes(0, [(b"\x00" * 32, 0xFFFFFFFF, b"\x00" + push(data), 0)], [(0, CHALLENGE)], 0)
    spend = tx_bytes(0, [(double_sha256(to_spend), 0, b"", 0)], [(0, b"\x6a")], 0)
    return to_spend, spend


def miner_psbt(blk: bytes, height: int, prev: bytes, t: int) -> str:
    to_spend, spend = to_spend_spend(height, prev, t)

    def kv(key: bytes, value: bytes) -> bytes:
        return varint(len(key)) + key + varint(len(value)) + value

    raw = b"psbt\xff" + kv(b"\x00", spend) + kv(b"\xfc\x06signetb", blk) + b"\x00"
    raw += kv(b"\x00", to_spend) + kv(b"\x03", struct.pack("<I", 1)) + b"\x00" + b"\x00"
    return base64.b64encode(raw).decode()


def verify_solution(script_sig: bytes, height: int, prev: bytes, t: int) -> bool:
    """`OP_0 <sig>` against the challenge: embit's legacy sighash of spend, libsecp256k1."""
    _, spend = to_spend_spend(height, prev, t)
    tx = Transaction.read_from(io.BytesIO(spend))
    assert script_sig[0] == 0x00
    sig = script_sig[2 : 2 + script_sig[1]]
    assert sig[-1] == 1  # SIGHASH_ALL
    digest = tx.sighash_legacy(0, Script(CHALLENGE), 1)
    return ec.PublicKey.parse(PUB).verify(ec.Signature.parse(sig[:-1]), digest)


def read_varint(b: io.BytesIO) -> int:
    n = b.read(1)[0]
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}.get(n)
    return int.from_bytes(b.read(width), "little") if width else n


def psbt_maps(raw: bytes) -> tuple[dict, dict]:
    """The global map and input 0's map of a PSBT (key -> value)."""
    b = io.BytesIO(raw)
    assert b.read(5) == b"psbt\xff"
    maps = []
    for _ in range(2):
        m = {}
        while (n := read_varint(b)) != 0:
            key = b.read(n)
            m[key] = b.read(read_varint(b))
        maps.append(m)
    return maps[0], maps[1]


def error(url: str, method: str, params) -> dict:
    resp = kg.call(url, method, params)
    assert "error" in resp, resp
    return resp["error"]


def signet_config(data_dir):
    cfg = kg.base_config(data_dir, create_on_first_start=[], policies=[], listeners=[kg.listener(max_body_bytes=16 * 1024 * 1024)])
    cfg["policies"] = [
        {
            "name": "signet-miner",
            "keys": ["signet"],
            "signet": {
                "challenge": CHALLENGE.hex(),
                "start_height": 1,
                "payout": ["script:" + PAYEE.hex()],
            },
        }
    ]
    return cfg


def import_key(workdir, cfg):
    secret = workdir / "secret"
    secret.write_text(SECRET.hex())
    out = kg.run_cli(["keys", "import", "--config", str(workdir / "keyguard.toml"), "--id", "signet", "--secret-hex-file", str(secret)])
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def daemon(start):
    return start(signet_config, name="signet", before_start=import_key)


def test_miner_psbt_then_block_on_top_then_the_watermark(daemon):
    t = int(time.time()) - 3600
    # Height 1 through the miner's PSBT on btc_signPsbt, as `walletprocesspsbt` would answer.
    b1 = block(1, GENESIS, t)
    res = kg.result(daemon.url(), "btc_signPsbt", [{"psbt": miner_psbt(b1, 1, GENESIS, t)}])
    assert res["complete"] is True
    glob, inputs = psbt_maps(base64.b64decode(res["psbt"]))
    assert glob[b"\xfc\x06signetb"] == b1  # the miner reads the block back from its answer
    script_sig = inputs[b"\x07"]  # PSBT_IN_FINAL_SCRIPTSIG
    assert verify_solution(script_sig, 1, GENESIS, t)
    assert not verify_solution(script_sig, 1, GENESIS, t + 1)  # another time: another commitment

    # The miner's finish_block: solution appended, merkle root recomputed, nonce ground.
    solution = varint(len(script_sig)) + script_sig + b"\x00"
    stripped, _ = coinbase(1, extra=push(HEADER + solution))
    header1 = struct.pack("<i", 0x20000000) + GENESIS + double_sha256(stripped) + struct.pack("<III", t, 0x1E0377AE, 42)
    hash1 = double_sha256(header1)

    # Height 2 on btc_signSignetBlock, with the parent's header as proof.
    b2 = block(2, hash1, t + 600)
    out = kg.result(daemon.url(), "btc_signSignetBlock", [{"block": b2.hex(), "parent_header": header1.hex()}])
    assert out["height"] == 2
    sol = bytes.fromhex(out["solution"])
    assert verify_solution(sol[1 : 1 + sol[0]], 2, hash1, t + 600)

    # A second block at height 2, and height 3 without its parent's header: refused, named.
    err = error(daemon.url(), "btc_signSignetBlock", [{"block": block(2, hash1, t + 601).hex()}])
    assert err["code"] == -32001 and err["data"]["rule"] == "bitcoin.signet.height", err
    err = error(daemon.url(), "btc_signSignetBlock", [{"block": block(3, b"\x11" * 32, t + 1200).hex()}])
    assert err["code"] == -32001 and err["data"]["rule"] == "bitcoin.signet.prev_block", err

    # The stored watermark, as the operator sees it.
    out = kg.run_cli(["state", "show", "--config", str(daemon.config_path), "--chain", "signet", "--json"])
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["key"], r["height"], r["max_height"]) for r in rows] == [("signet", 2, 2)], rows
