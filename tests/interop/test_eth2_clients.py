"""Every request fixture in `tests/vectors/eth2/clients/<client>/<duty>.json` (each client's own
wire shape, README there says where from) is templated with slots and epochs near the wall clock,
sent to a running keyguard with that client's headers, and its answer checked: the shape the
client parses (JSON `{"signature"}` whether or not it sent `Accept`) and the signature, verified
with py_ecc over a signing root remerkleable computes from the very JSON sent. Where the client
sends `signingRoot`, the root computed here is what it carries, so keyguard's own cross-check
is exercised too; a fixture with a wrong root is refused (negative control).
"""

import http.client
import json
import urllib.parse
from pathlib import Path

import pytest
from py_ecc.bls import G2ProofOfPossession as bls
from remerkleable.basic import uint64
from remerkleable.bitfields import Bitlist, Bitvector
from remerkleable.byte_arrays import Bytes32, Bytes48, Bytes96, ByteVector

from test_eth2 import (GVR, AggregateAndProofElectra, AttestationData, AttestationElectra, BeaconBlockHeader,
                       Checkpoint, ContributionAndProof, SyncAggregatorSelectionData, SyncCommitteeContribution,
                       ValidatorRegistration, VoluntaryExit, _cfg, _eth2_url, _setup, domain, keys, now_slot,
                       signing_root, version_at)

FIXTURES = Path(__file__).resolve().parents[1] / "vectors/eth2/clients"
FEE = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
FEE_CHECKSUMMED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # EIP-55's own example
CLIENTS = ["lighthouse", "teku", "prysm", "nimbus", "lodestar"]
ALL = sorted(p for p in FIXTURES.glob("*/*.json"))


@pytest.fixture(scope="module")
def signer(start):
    def cfg(data):
        c = _cfg(data)
        c["eth2"]["policy"] = {"fee_recipients": [FEE]}
        return c
    return _eth2_url(start(cfg, name="eth2-clients", before_start=_setup))


def fill(v, values: dict):
    if isinstance(v, dict):
        return {k: fill(x, values) for k, x in v.items()}
    if isinstance(v, list):
        return [fill(x, values) for x in v]
    if isinstance(v, str) and v.startswith("{{"):
        return values[v[2:-2]]
    return v


def b(h: str) -> bytes:
    return bytes.fromhex(h[2:])


def att_data(a: dict) -> AttestationData:
    return AttestationData(slot=int(a["slot"]), index=int(a["index"]), beacon_block_root=Bytes32(b(a["beacon_block_root"])),
                           source=Checkpoint(epoch=int(a["source"]["epoch"]), root=Bytes32(b(a["source"]["root"]))),
                           target=Checkpoint(epoch=int(a["target"]["epoch"]), root=Bytes32(b(a["target"]["root"]))))


def bitlist(raw: bytes, limit: int):
    bits = [bool(raw[i // 8] >> (i % 8) & 1) for i in range(len(raw) * 8)]
    last = max(i for i, x in enumerate(bits) if x)
    return Bitlist[limit](*bits[:last])


def root_of(body: dict) -> bytes:
    """The signing root of a request, from its message, the spec's domains and mainnet's forks."""
    ty = body["type"]
    ver = lambda slot: version_at(int(slot) // 32)
    if ty == "BLOCK_V2":
        h = body["beacon_block"]["block_header"]
        hdr = BeaconBlockHeader(slot=int(h["slot"]), proposer_index=int(h["proposer_index"]), parent_root=Bytes32(b(h["parent_root"])),
                                state_root=Bytes32(b(h["state_root"])), body_root=Bytes32(b(h["body_root"])))
        return signing_root(bytes(hdr.hash_tree_root()), domain("00000000", ver(h["slot"])))
    if ty == "ATTESTATION":
        a = body["attestation"]
        return signing_root(bytes(att_data(a).hash_tree_root()), domain("01000000", version_at(int(a["target"]["epoch"]))))
    if ty == "RANDAO_REVEAL":
        e = int(body["randao_reveal"]["epoch"])
        return signing_root(bytes(uint64(e).hash_tree_root()), domain("02000000", version_at(e)))
    if ty == "AGGREGATION_SLOT":
        s = int(body["aggregation_slot"]["slot"])
        return signing_root(bytes(uint64(s).hash_tree_root()), domain("05000000", ver(s)))
    if ty in ("AGGREGATE_AND_PROOF", "AGGREGATE_AND_PROOF_V2"):
        m = body["aggregate_and_proof"]
        m = m["data"] if ty.endswith("_V2") else m
        a = m["aggregate"]
        agg = AggregateAndProofElectra(aggregator_index=int(m["aggregator_index"]), selection_proof=Bytes96(b(m["selection_proof"])),
                                       aggregate=AttestationElectra(aggregation_bits=bitlist(b(a["aggregation_bits"]), 2048 * 64),
                                                                    data=att_data(a["data"]), signature=Bytes96(b(a["signature"])),
                                                                    committee_bits=Bitvector[64].decode_bytes(b(a["committee_bits"]))))
        return signing_root(bytes(agg.hash_tree_root()), domain("06000000", ver(a["data"]["slot"])))
    if ty == "SYNC_COMMITTEE_MESSAGE":
        m = body["sync_committee_message"]
        return signing_root(b(m["beacon_block_root"]), domain("07000000", ver(m["slot"])))
    if ty == "SYNC_COMMITTEE_SELECTION_PROOF":
        m = body["sync_aggregator_selection_data"]
        sad = SyncAggregatorSelectionData(slot=int(m["slot"]), subcommittee_index=int(m["subcommittee_index"]))
        return signing_root(bytes(sad.hash_tree_root()), domain("08000000", ver(m["slot"])))
    if ty == "SYNC_COMMITTEE_CONTRIBUTION_AND_PROOF":
        m = body["contribution_and_proof"]
        c = m["contribution"]
        cp = ContributionAndProof(aggregator_index=int(m["aggregator_index"]), selection_proof=Bytes96(b(m["selection_proof"])),
                                  contribution=SyncCommitteeContribution(
                                      slot=int(c["slot"]), beacon_block_root=Bytes32(b(c["beacon_block_root"])),
                                      subcommittee_index=int(c["subcommittee_index"]),
                                      aggregation_bits=Bitvector[128].decode_bytes(b(c["aggregation_bits"])),
                                      signature=Bytes96(b(c["signature"]))))
        return signing_root(bytes(cp.hash_tree_root()), domain("09000000", ver(c["slot"])))
    if ty == "VALIDATOR_REGISTRATION":
        m = body["validator_registration"]
        reg = ValidatorRegistration(fee_recipient=ByteVector[20](b(m["fee_recipient"].lower())), gas_limit=int(m["gas_limit"]),
                                    timestamp=int(m["timestamp"]), pubkey=Bytes48(b(m["pubkey"])))
        return signing_root(bytes(reg.hash_tree_root()), domain("00000001", bytes(4), bytes(32)))
    if ty == "VOLUNTARY_EXIT":
        m = body["voluntary_exit"]
        ex = VoluntaryExit(epoch=int(m["epoch"]), validator_index=int(m["validator_index"]))
        return signing_root(bytes(ex.hash_tree_root()), domain("04000000", bytes.fromhex("03000000")))  # EIP-7044
    raise AssertionError(f"no root for {ty}")


def render(fx: dict, i: int, pk: str) -> tuple[dict, bytes]:
    """Fixture `i` of the run, with slots and epochs near the clock that no other fixture uses
    (one key signs them all: blocks at distinct slots, attestations on a chain of epochs)."""
    now = now_slot()
    slot = now - 2 - 3 * i
    epoch = slot // 32
    fork_epoch, prev, cur = 411392, "0x05000000", "0x06000000"  # mainnet FULU
    target = now // 32 - 60 + i
    values = {"slot": str(slot), "epoch": str(epoch), "epoch_minus_1": str(epoch - 1), "fork_epoch": str(fork_epoch),
              "prev_version": prev, "cur_version": cur, "gvr": "0x" + GVR.hex(), "version": "FULU",
              "proposer_index": str(100 + i), "body_root": "0x" + bytes([i + 1]).hex() * 32,
              "att_slot": str(target * 32), "source_epoch": str(target - 1), "target_epoch": str(target),
              "pubkey": pk, "fee_recipient": FEE, "fee_recipient_checksummed": FEE_CHECKSUMMED,
              "timestamp": str(now * 12 + 1606824023), "signing_root": "{{signing_root}}"}
    # Lodestar's fork_info.fork.epoch is the signing slot's epoch (the attestation's own).
    values["signing_epoch"] = values["target_epoch"] if fx["body"]["type"] == "ATTESTATION" else values["epoch"]
    body = fill(fx["body"], values)
    root = root_of(body)
    if body.get("signingRoot") == "{{signing_root}}":
        body["signingRoot"] = "0x" + root.hex()
    return body, root


def post(d, path: str, body: dict, headers: dict) -> tuple[int, bytes, str]:
    """Exactly the client's headers (urllib would add its own)."""
    u = urllib.parse.urlparse(d.eth2)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.putrequest("POST", path, skip_accept_encoding=True)
    data = json.dumps(body).encode()
    for k, v in {**headers, "Content-Length": str(len(data))}.items():
        conn.putheader(k, v)
    conn.endheaders(data)
    r = conn.getresponse()
    out = r.status, r.read(), r.getheader("Content-Type", "")
    conn.close()
    return out


def test_fixture_set_is_complete():
    readme = (FIXTURES / "README.md").read_text()
    for p in ALL:
        assert f"`{p.parent.name}/{p.name}`" in readme, f"{p} has no README line"
    for c in CLIENTS:
        assert (FIXTURES / c / "block_v2.json").exists() and (FIXTURES / c / "attestation.json").exists()


def test_every_client_fixture_signs_and_verifies(signer):
    pk = keys(signer)[0]
    seen = []
    for i, path in enumerate(ALL):
        fx = json.loads(path.read_text())
        body, root = render(fx, i, pk)
        status, raw, ctype = post(signer, f"/api/v1/eth2/sign/{pk}", body, fx["headers"])
        want = fx["expect"]
        assert status == want["status"], (path.name, fx["client"], raw)
        assert ctype.startswith("application/json"), (path, ctype)
        answer = json.loads(raw)
        if status != 200:
            assert answer["rule"] == want["rule"], (path, answer)
            continue
        assert set(answer) == {"signature"}, answer
        sig = bytes.fromhex(answer["signature"][2:])
        assert bls.Verify(bytes.fromhex(pk[2:]), root, sig), f"{path}: py_ecc rejects the signature"
        seen.append((fx["client"], fx["duty"]))
    assert {c for c, _ in seen} == set(CLIENTS)


def test_a_fixture_with_another_signing_root_is_refused(signer):
    """Negative control: the roots computed here are what keyguard checks; a client whose
    root differs (another message, another domain) is refused before signing."""
    pk = keys(signer)[1]
    fx = json.loads((FIXTURES / "lighthouse/randao_reveal.json").read_text())
    body, root = render(fx, 0, pk)
    body["signingRoot"] = "0x" + bytes([root[0] ^ 1]).hex() + root[1:].hex()
    status, raw, _ = post(signer, f"/api/v1/eth2/sign/{pk}", body, fx["headers"])
    assert status == 400 and json.loads(raw)["rule"] == "eth2.signing_root", raw
