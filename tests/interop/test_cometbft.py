"""CometBFT privval end to end, verified independently of keyguard's code.

The test plays the validator node: it listens on a Unix socket, the real keyguard binary dials
in as the remote signer (plain frames: uvarint length + `tendermint.privval.Message`, v0.38
wire), and the test asks for the public key, a prevote, a precommit with a vote extension and a
proposal. The canonical sign bytes are built from `tests/vectors/cometbft/*.proto` compiled by
protoc (grpcio-tools) into Python classes — not by prost, not from keyguard's or tendermint-rs's
types — and each signature is checked with PyNaCl (libsodium), not ed25519-dalek.

Controls: the verifier rejects the same signature over the sign bytes of another chain id,
height or block (so it can fail), and a conflicting prevote is refused with nothing signed.
"""

from __future__ import annotations

import hashlib
import importlib
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

import kg

PROTO_DIR = Path(__file__).resolve().parents[1] / "vectors" / "cometbft"
CHAIN = "interop-chain"
BLOCK = hashlib.sha256(b"block one").digest()
OTHER = hashlib.sha256(b"block two").digest()
PARTS = hashlib.sha256(b"parts").digest()


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """The generated modules (`types_pb2`, `privval_pb2`), compiled by protoc for this run."""
    import grpc_tools

    out = tmp_path_factory.mktemp("cometbft_pb")
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    r = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{wkt}", f"--python_out={out}", "types.proto", "privval.proto"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    sys.path.insert(0, str(out))
    try:
        types = importlib.import_module("types_pb2")
        privval = importlib.import_module("privval_pb2")
    finally:
        sys.path.remove(str(out))
    return types, privval


# -- framing -----------------------------------------------------------------------------------


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def delimited(msg) -> bytes:
    """protobuf's length-delimited form: what CometBFT signs and what the wire carries."""
    body = msg.SerializeToString(deterministic=True)
    return uvarint(len(body)) + body


def read_frame(conn: socket.socket) -> bytes:
    n, shift = 0, 0
    while True:
        b = conn.recv(1)
        assert b, "keyguard closed the privval connection"
        n |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    body = b""
    while len(body) < n:
        chunk = conn.recv(n - len(body))
        assert chunk, "keyguard closed the privval connection mid-frame"
        body += chunk
    return body


class Node:
    """The validator side of one privval connection."""

    def __init__(self, pb, conn: socket.socket):
        self.types, self.pv = pb
        self.conn = conn

    def ask(self, **sum_field):
        msg = self.pv.Message(**sum_field)
        self.conn.sendall(delimited(msg))
        reply = self.pv.Message()
        reply.ParseFromString(read_frame(self.conn))
        return reply

    def pubkey(self) -> bytes:
        r = self.ask(pub_key_request=self.pv.PubKeyRequest(chain_id=CHAIN)).pub_key_response
        assert not r.HasField("error"), r.error
        assert r.pub_key.WhichOneof("sum") == "ed25519", r
        return r.pub_key.ed25519


# -- canonical sign bytes (built here, from the .proto) ------------------------------------------


def canonical_block_id(types, block_id):
    return types.CanonicalBlockID(
        hash=block_id.hash,
        part_set_header=types.CanonicalPartSetHeader(total=block_id.part_set_header.total, hash=block_id.part_set_header.hash),
    )


def vote_sign_bytes(types, vote, chain_id: str) -> bytes:
    cv = types.CanonicalVote(type=vote.type, height=vote.height, round=vote.round, chain_id=chain_id)
    if vote.HasField("block_id") and vote.block_id.hash:
        cv.block_id.CopyFrom(canonical_block_id(types, vote.block_id))
    cv.timestamp.CopyFrom(vote.timestamp)
    return delimited(cv)


def proposal_sign_bytes(types, prop, chain_id: str) -> bytes:
    cp = types.CanonicalProposal(type=prop.type, height=prop.height, round=prop.round, pol_round=prop.pol_round, chain_id=chain_id)
    cp.block_id.CopyFrom(canonical_block_id(types, prop.block_id))
    cp.timestamp.CopyFrom(prop.timestamp)
    return delimited(cp)


def verifies(pub: bytes, message: bytes, sig: bytes) -> bool:
    try:
        VerifyKey(pub).verify(message, sig)
        return True
    except BadSignatureError:
        return False


# -- the daemon as a remote signer ------------------------------------------------------------


def _remote_signer(start, pb, tmp_path_factory, request, backend: str):
    if backend == "openbao":
        request.getfixturevalue("openbao_transit")
    sock_dir = tmp_path_factory.mktemp("privval")
    path = sock_dir / "node.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def make(data):
        if backend == "openbao":
            cfg = kg.base_config(data, create_on_first_start=["secp256k1"])
            cfg["keystore"]["openbao"] = kg.openbao_table({"dev-ed25519": f"kg-{uuid.uuid4().hex[:16]}"})
        else:
            cfg = kg.base_config(data)
        cfg["validators"] = [
            {"name": "interop", "chain_id": CHAIN, "key": "dev-ed25519", "addr": f"unix://{path}", "protocol": "v0.38", "new_validator": True, "start_height": 1}
        ]
        return cfg

    daemon = start(make, name=f"cometbft-{backend}")
    listener.settimeout(30)
    conn, _ = listener.accept()
    conn.settimeout(30)
    node = Node(pb, conn)
    yield daemon, node
    conn.close()
    listener.close()


@pytest.fixture(scope="module", params=["software", "openbao"])
def signer(start, pb, tmp_path_factory, request):
    """The daemon as remote signer, the consensus key in the software keystore or in OpenBao
    transit (created by `keys generate --backend openbao`)."""
    yield from _remote_signer(start, pb, tmp_path_factory, request, request.param)


@pytest.fixture(scope="module")
def bao_signer(start, pb, tmp_path_factory, request):
    """A remote signer whose consensus key is in OpenBao transit only (for OpenBao's own tests)."""
    yield from _remote_signer(start, pb, tmp_path_factory, request, "openbao")


def block_id(types, h: bytes):
    return types.BlockID(hash=h, part_set_header=types.PartSetHeader(total=1, hash=PARTS))


def now(types):
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    ns = time.time_ns()
    t.seconds, t.nanos = ns // 1_000_000_000, ns % 1_000_000_000
    return t


def test_openbao_key_is_transits_own(bao_signer):
    """With the key in OpenBao, the privval public key is the transit key's (read from OpenBao
    over plain HTTP, not through keyguard)."""
    daemon, node = bao_signer
    bao_cfg = daemon.config["keystore"]["openbao"]
    assert node.pubkey() == kg.BAO.public_key(bao_cfg["keys"]["dev-ed25519"])
    # Negative control: another transit key differs.
    kg.BAO.api("POST", "transit/keys/kg-control", {"type": "ed25519"})
    assert node.pubkey() != kg.BAO.public_key("kg-control")


def test_pubkey_matches_the_key_keyguard_announced(signer):
    daemon, node = signer
    pub = node.pubkey()
    assert len(pub) == 32
    scheme, announced = daemon.keys["dev-ed25519"]
    assert scheme == "ed25519"
    assert pub.hex() in announced.lower() or announced.lower().endswith(pub.hex()), (announced, pub.hex())


def test_prevote_signature_verifies_independently(signer, pb):
    daemon, node = signer
    types, _ = pb
    pub = node.pubkey()
    before = daemon.signed_count()
    vote = types.Vote(
        type=types.SIGNED_MSG_TYPE_PREVOTE,
        height=5,
        round=0,
        block_id=block_id(types, BLOCK),
        timestamp=now(types),
        validator_address=hashlib.sha256(pub).digest()[:20],
        validator_index=0,
    )
    r = node.ask(sign_vote_request=node.pv.SignVoteRequest(vote=vote, chain_id=CHAIN)).signed_vote_response
    assert not r.HasField("error"), r.error
    signed = r.vote
    assert len(signed.signature) == 64
    # keyguard signs what was asked: every field but the signature comes back unchanged.
    echoed = types.Vote()
    echoed.CopyFrom(signed)
    echoed.signature = b""
    assert echoed == vote, (echoed, vote)
    assert verifies(pub, vote_sign_bytes(types, signed, CHAIN), signed.signature)
    assert daemon.signed_count() == before + 1
    # Controls: the same signature over other sign bytes must not verify.
    for chain, height, h in [("other-chain", 5, BLOCK), (CHAIN, 6, BLOCK), (CHAIN, 5, OTHER)]:
        changed = types.Vote()
        changed.CopyFrom(signed)
        changed.height = height
        changed.block_id.hash = h
        assert not verifies(pub, vote_sign_bytes(types, changed, chain), signed.signature), (chain, height)


def test_conflicting_prevote_is_refused_with_nothing_signed(signer, pb, nothing_signed):
    daemon, node = signer
    types, _ = pb
    vote = types.Vote(type=types.SIGNED_MSG_TYPE_PREVOTE, height=5, round=0, block_id=block_id(types, OTHER), timestamp=now(types))
    with nothing_signed(daemon):
        r = node.ask(sign_vote_request=node.pv.SignVoteRequest(vote=vote, chain_id=CHAIN)).signed_vote_response
    assert r.HasField("error") and r.error.code != 0, r
    assert not r.vote.signature, r
    assert "double_sign" in r.error.description or "regression" in r.error.description, r.error


def test_proposal_signature_verifies_independently(signer, pb):
    daemon, node = signer
    types, _ = pb
    pub = node.pubkey()
    prop = types.Proposal(
        type=types.SIGNED_MSG_TYPE_PROPOSAL,
        height=7,
        round=1,
        pol_round=-1,
        block_id=block_id(types, BLOCK),
        timestamp=now(types),
    )
    r = node.ask(sign_proposal_request=node.pv.SignProposalRequest(proposal=prop, chain_id=CHAIN)).signed_proposal_response
    assert not r.HasField("error"), r.error
    signed = r.proposal
    echoed = types.Proposal()
    echoed.CopyFrom(signed)
    echoed.signature = b""
    assert echoed == prop, (echoed, prop)
    assert verifies(pub, proposal_sign_bytes(types, signed, CHAIN), signed.signature)
    changed = types.Proposal()
    changed.CopyFrom(signed)
    changed.pol_round = 0
    assert not verifies(pub, proposal_sign_bytes(types, changed, CHAIN), signed.signature)


def test_precommit_and_its_extension_verify_independently(signer, pb):
    """v0.38 non-nil precommits carry a vote extension, signed separately over
    CanonicalVoteExtension (extension, height, round, chain_id)."""
    daemon, node = signer
    types, _ = pb
    pub = node.pubkey()
    vote = types.Vote(
        type=types.SIGNED_MSG_TYPE_PRECOMMIT,
        height=9,
        round=0,
        block_id=block_id(types, BLOCK),
        timestamp=now(types),
        extension=b"oracle prices",
    )
    r = node.ask(sign_vote_request=node.pv.SignVoteRequest(vote=vote, chain_id=CHAIN)).signed_vote_response
    assert not r.HasField("error"), r.error
    signed = r.vote
    assert verifies(pub, vote_sign_bytes(types, signed, CHAIN), signed.signature)
    ext = delimited(types.CanonicalVoteExtension(extension=b"oracle prices", height=9, round=0, chain_id=CHAIN))
    assert len(signed.extension_signature) == 64
    assert verifies(pub, ext, signed.extension_signature)
    other = delimited(types.CanonicalVoteExtension(extension=b"other prices", height=9, round=0, chain_id=CHAIN))
    assert not verifies(pub, other, signed.extension_signature)


def _bao_key(daemon) -> str:
    return daemon.config["keystore"]["openbao"]["keys"]["dev-ed25519"]


def _prevote(types, pub, height):
    return types.Vote(
        type=types.SIGNED_MSG_TYPE_PREVOTE,
        height=height,
        round=0,
        block_id=block_id(types, BLOCK),
        timestamp=now(types),
        validator_address=hashlib.sha256(pub).digest()[:20],
        validator_index=0,
    )


def test_a_key_rotated_in_transit_keeps_signing_with_the_pinned_version(bao_signer, pb):
    """Rotating the transit key behind keyguard's back must not change the consensus key: keyguard
    pinned the version it read at start and names it in every sign call."""
    daemon, node = bao_signer
    types, _ = pb
    name = _bao_key(daemon)
    pub = node.pubkey()
    kg.BAO.api("POST", f"transit/keys/{name}/rotate")
    assert kg.BAO.public_key(name) != pub, "control: the rotation made a new key version"
    vote = _prevote(types, pub, 40)
    r = node.ask(sign_vote_request=node.pv.SignVoteRequest(vote=vote, chain_id=CHAIN)).signed_vote_response
    assert not r.HasField("error"), r.error
    assert verifies(pub, vote_sign_bytes(types, r.vote, CHAIN), r.vote.signature)


def test_transit_down_fails_with_nothing_signed_then_recovers(bao_signer, pb):
    """OpenBao sealed (503 on every call): the vote is refused with an error naming the backend
    and nothing is signed; unsealed, signing resumes."""
    daemon, node = bao_signer
    types, _ = pb
    _bao_key(daemon)
    pub = node.pubkey()
    before = daemon.signed_count()
    kg.BAO.api("PUT", "sys/seal")
    try:
        r = node.ask(sign_vote_request=node.pv.SignVoteRequest(vote=_prevote(types, pub, 50), chain_id=CHAIN)).signed_vote_response
        assert r.HasField("error"), r
        assert "openbao" in r.error.description, r.error
        assert daemon.signed_count() == before
    finally:
        kg.BAO.unseal()
    deadline = time.monotonic() + 30
    while True:
        r = node.ask(sign_vote_request=node.pv.SignVoteRequest(vote=_prevote(types, pub, 51), chain_id=CHAIN)).signed_vote_response
        if not r.HasField("error"):
            break
        assert time.monotonic() < deadline, r.error
        time.sleep(0.3)
    assert verifies(pub, vote_sign_bytes(types, r.vote, CHAIN), r.vote.signature)
