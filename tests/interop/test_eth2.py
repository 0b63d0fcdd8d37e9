"""Ethereum staking (Web3Signer eth2 API): every duty keyguard signs is checked by independent
implementations: the signing root is recomputed with remerkleable (SSZ) from the spec's
containers and domain functions written here, and the BLS signature verified with py_ecc.
Refusals: double vote and surround (412), unknown key (404), malformed (400, field named),
exits (403, rule named). Conflicting attestations racing from several connections sign once.
"""


import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from py_ecc.bls import G2ProofOfPossession as bls
from remerkleable.basic import uint64
from remerkleable.bitfields import Bitlist, Bitvector
from remerkleable.byte_arrays import Bytes4, Bytes32, Bytes48, Bytes96, ByteVector
from remerkleable.complex import Container

import kg

REPO = Path(__file__).resolve().parents[2]
MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
EIP2335_PASSWORD = "𝔱𝔢𝔰𝔱𝔭𝔞𝔰𝔰𝔴𝔬𝔯𝔡🔑"
EIP2335_PUBKEY = "0x9612d7a727c9d0a22e185a1c768478dfe919cada9266988cb32359c11f2b7b27f4ae4040902382ae2910c15e2b420d07"

# Mainnet, from the consensus specs' configs (independent of keyguard's table).
GVR = bytes.fromhex("4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95")
GENESIS_TIME = 1606824023
FORKS = [(0, "00000000"), (74240, "01000000"), (144896, "02000000"), (194048, "03000000"),
         (269568, "04000000"), (364032, "05000000"), (411392, "06000000")]
CAPELLA = bytes.fromhex("03000000")


class Checkpoint(Container):
    epoch: uint64
    root: Bytes32


class AttestationData(Container):
    slot: uint64
    index: uint64
    beacon_block_root: Bytes32
    source: Checkpoint
    target: Checkpoint


class BeaconBlockHeader(Container):
    slot: uint64
    proposer_index: uint64
    parent_root: Bytes32
    state_root: Bytes32
    body_root: Bytes32


class AttestationElectra(Container):
    aggregation_bits: Bitlist[2048 * 64]
    data: AttestationData
    signature: Bytes96
    committee_bits: Bitvector[64]


class AggregateAndProofElectra(Container):
    aggregator_index: uint64
    aggregate: AttestationElectra
    selection_proof: Bytes96


class SyncAggregatorSelectionData(Container):
    slot: uint64
    subcommittee_index: uint64


class SyncCommitteeContribution(Container):
    slot: uint64
    beacon_block_root: Bytes32
    subcommittee_index: uint64
    aggregation_bits: Bitvector[128]
    signature: Bytes96


class ContributionAndProof(Container):
    aggregator_index: uint64
    contribution: SyncCommitteeContribution
    selection_proof: Bytes96


class ValidatorRegistration(Container):
    fee_recipient: ByteVector[20]
    gas_limit: uint64
    timestamp: uint64
    pubkey: Bytes48


class VoluntaryExit(Container):
    epoch: uint64
    validator_index: uint64


class ForkData(Container):
    current_version: Bytes4
    genesis_validators_root: Bytes32


class SigningData(Container):
    object_root: Bytes32
    domain: Bytes32


def version_at(epoch: int) -> bytes:
    return bytes.fromhex([v for e, v in FORKS if e <= epoch][-1])


def domain(dtype: str, version: bytes, gvr: bytes = GVR) -> bytes:
    fdr = ForkData(current_version=Bytes4(version), genesis_validators_root=Bytes32(gvr)).hash_tree_root()
    return bytes.fromhex(dtype) + bytes(fdr)[:28]


def signing_root(obj_root: bytes, dom: bytes) -> bytes:
    return bytes(SigningData(object_root=Bytes32(obj_root), domain=Bytes32(dom)).hash_tree_root())


def now_slot() -> int:
    return (int(time.time()) - GENESIS_TIME) // 12


def fork_info() -> dict:
    return {"fork": {"previous_version": "0x05000000", "current_version": "0x06000000", "epoch": "411392"},
            "genesis_validators_root": "0x" + GVR.hex()}


def _setup(workdir: Path, cfg: dict) -> None:
    conf = str(workdir / "keyguard.toml")
    env = kg.base_env(None)
    r = subprocess.run([kg.keyguard_bin(), "eth2", "keys", "import-mnemonic", "--config", conf, "--count", "2"],
                       input=MNEMONIC, text=True, capture_output=True, env=env, cwd=workdir, timeout=120)
    assert r.returncode == 0, r.stderr
    pw = workdir / "pw.txt"
    pw.write_text(EIP2335_PASSWORD)
    r = subprocess.run([kg.keyguard_bin(), "eth2", "keys", "import-keystore", "--config", conf, "--password-file", str(pw),
                        str(REPO / "tests/vectors/eth2/eip2335_pbkdf2.json")],
                       text=True, capture_output=True, env=env, cwd=workdir, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == EIP2335_PUBKEY


def _cfg(data):
    c = kg.base_config(data, create_on_first_start=[])
    c["eth2"] = {"address": "127.0.0.1:0", "auth": "none", "keys": ["*", "eth2:keymanager"], "network": "mainnet",
                 "policy": {"fee_recipients": ["0x" + "ab" * 20], "max_gas_limit": 60_000_000}}
    return c


def _eth2_url(d):
    line = next(l for l in d.stdout_lines if l.startswith("keyguard: eth2 "))
    d.eth2 = re.search(r"(https?://\S+)", line).group(1)
    return d


@pytest.fixture(scope="module")
def signer(start):
    return _eth2_url(start(_cfg, name="eth2", before_start=_setup))


def call(d, path: str, body: dict | None = None, accept: str = "application/json", method: str | None = None):
    req = urllib.request.Request(d.eth2 + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Accept": accept},
                                 method=method or ("GET" if body is None else "POST"))
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type", "")


def keys(d) -> list[str]:
    status, body, _ = call(d, "/api/v1/eth2/publicKeys")
    assert status == 200
    return json.loads(body)


def sign_ok(d, pk: str, body: dict, root: bytes) -> bytes:
    status, text, _ = call(d, f"/api/v1/eth2/sign/{pk}", body)
    assert status == 200, text
    sig = bytes.fromhex(json.loads(text)["signature"][2:])
    assert bls.Verify(bytes.fromhex(pk[2:]), root, sig), "py_ecc rejects keyguard's signature"
    # Negative control: the same signature does not verify for another root.
    assert not bls.Verify(bytes.fromhex(pk[2:]), bytes(32), sig)
    return sig


def test_health_and_keys(signer):
    assert call(signer, "/upcheck")[0] == 200
    assert call(signer, "/healthcheck")[0] == 200
    ks = keys(signer)
    assert len(ks) == 3 and EIP2335_PUBKEY in ks


def test_every_duty_verifies_independently(signer):
    pk = keys(signer)[0]
    slot = now_slot()
    epoch = slot // 32
    v = version_at(epoch)
    root32 = lambda b: "0x" + bytes([b]) .hex() * 32
    att = {"slot": str(slot), "index": "3", "beacon_block_root": root32(0x11),
           "source": {"epoch": str(epoch - 1), "root": root32(0x22)},
           "target": {"epoch": str(epoch), "root": root32(0x33)}}
    ad = AttestationData(slot=slot, index=3, beacon_block_root=Bytes32(b"\x11" * 32),
                         source=Checkpoint(epoch=epoch - 1, root=Bytes32(b"\x22" * 32)),
                         target=Checkpoint(epoch=epoch, root=Bytes32(b"\x33" * 32)))
    sign_ok(signer, pk, {"type": "ATTESTATION", "fork_info": fork_info(), "attestation": att},
            signing_root(bytes(ad.hash_tree_root()), domain("01000000", v)))

    hdr = BeaconBlockHeader(slot=slot, proposer_index=7, parent_root=Bytes32(b"\x01" * 32),
                            state_root=Bytes32(b"\x02" * 32), body_root=Bytes32(b"\x03" * 32))
    body = {"type": "BLOCK_V2", "fork_info": fork_info(), "beacon_block": {"version": "FULU", "block_header": {
        "slot": str(slot), "proposer_index": "7", "parent_root": root32(1), "state_root": root32(2), "body_root": root32(3)}}}
    sign_ok(signer, pk, body, signing_root(bytes(hdr.hash_tree_root()), domain("00000000", v)))

    sign_ok(signer, pk, {"type": "RANDAO_REVEAL", "fork_info": fork_info(), "randao_reveal": {"epoch": str(epoch)}},
            signing_root(bytes(uint64(epoch).hash_tree_root()), domain("02000000", v)))
    sign_ok(signer, pk, {"type": "AGGREGATION_SLOT", "fork_info": fork_info(), "aggregation_slot": {"slot": str(slot)}},
            signing_root(bytes(uint64(slot).hash_tree_root()), domain("05000000", v)))

    bits = Bitlist[2048 * 64](*([True, False, True] + [False] * 10))
    cbits = Bitvector[64](*([True] + [False] * 63))
    agg = AggregateAndProofElectra(aggregator_index=9, aggregate=AttestationElectra(
        aggregation_bits=bits, data=ad, signature=Bytes96(b"\x44" * 96), committee_bits=cbits),
        selection_proof=Bytes96(b"\x55" * 96))
    body = {"type": "AGGREGATE_AND_PROOF_V2", "fork_info": fork_info(), "aggregate_and_proof": {"version": "FULU", "data": {
        "aggregator_index": "9", "selection_proof": "0x" + "55" * 96,
        "aggregate": {"aggregation_bits": "0x" + bits.encode_bytes().hex(), "data": att, "signature": "0x" + "44" * 96,
                      "committee_bits": "0x" + cbits.encode_bytes().hex()}}}}
    sign_ok(signer, pk, body, signing_root(bytes(agg.hash_tree_root()), domain("06000000", v)))

    sign_ok(signer, pk, {"type": "SYNC_COMMITTEE_MESSAGE", "fork_info": fork_info(),
                         "sync_committee_message": {"beacon_block_root": root32(0x66), "slot": str(slot)}},
            signing_root(b"\x66" * 32, domain("07000000", v)))
    sad = SyncAggregatorSelectionData(slot=slot, subcommittee_index=2)
    sign_ok(signer, pk, {"type": "SYNC_COMMITTEE_SELECTION_PROOF", "fork_info": fork_info(),
                         "sync_aggregator_selection_data": {"slot": str(slot), "subcommittee_index": "2"}},
            signing_root(bytes(sad.hash_tree_root()), domain("08000000", v)))
    cbits128 = Bitvector[128](*([False, True] * 64))
    cp = ContributionAndProof(aggregator_index=4, contribution=SyncCommitteeContribution(
        slot=slot, beacon_block_root=Bytes32(b"\x77" * 32), subcommittee_index=1, aggregation_bits=cbits128,
        signature=Bytes96(b"\x88" * 96)), selection_proof=Bytes96(b"\x99" * 96))
    body = {"type": "SYNC_COMMITTEE_CONTRIBUTION_AND_PROOF", "fork_info": fork_info(), "contribution_and_proof": {
        "aggregator_index": "4", "selection_proof": "0x" + "99" * 96, "contribution": {
            "slot": str(slot), "beacon_block_root": root32(0x77), "subcommittee_index": "1",
            "aggregation_bits": "0x" + cbits128.encode_bytes().hex(), "signature": "0x" + "88" * 96}}}
    sign_ok(signer, pk, body, signing_root(bytes(cp.hash_tree_root()), domain("09000000", v)))

    reg = ValidatorRegistration(fee_recipient=ByteVector[20](b"\xab" * 20), gas_limit=36_000_000,
                                timestamp=1_700_000_000, pubkey=Bytes48(bytes.fromhex(pk[2:])))
    body = {"type": "VALIDATOR_REGISTRATION", "validator_registration": {
        "fee_recipient": "0x" + "ab" * 20, "gas_limit": "36000000", "timestamp": "1700000000", "pubkey": pk}}
    sign_ok(signer, pk, body, signing_root(bytes(reg.hash_tree_root()), domain("00000001", bytes(4), bytes(32))))


def test_text_answer_without_json_accept(signer):
    pk = keys(signer)[1]
    epoch = now_slot() // 32
    status, text, ctype = call(signer, f"/api/v1/eth2/sign/{pk}",
                               {"type": "RANDAO_REVEAL", "fork_info": fork_info(), "randao_reveal": {"epoch": str(epoch)}},
                               accept="text/plain")
    assert status == 200 and ctype.startswith("text/plain") and re.fullmatch(r"0x[0-9a-f]{192}", text)


def test_bodies_over_the_cap_are_refused_unread_and_nothing_signs(signer):
    pk = keys(signer)[1]
    epoch = now_slot() // 32
    body = {"type": "RANDAO_REVEAL", "fork_info": fork_info(), "randao_reveal": {"epoch": str(epoch)},
            "pad": "x" * (64 * 1024)}
    status, text, _ = call(signer, f"/api/v1/eth2/sign/{pk}", body)
    assert status == 400, text
    err = json.loads(text)
    assert err["rule"] == "request.invalid" and err["field"] == "body", err
    assert "signature" not in text
    # Control: the same request without the padding signs.
    del body["pad"]
    status, text, _ = call(signer, f"/api/v1/eth2/sign/{pk}", body)
    assert status == 200, text


def test_slashing_and_policy_refusals(signer):
    pk = keys(signer)[2]
    slot = now_slot()
    epoch = slot // 32

    def att(src: int, tgt: int, b: int, s: int | None = None) -> dict:
        return {"type": "ATTESTATION", "fork_info": fork_info(), "attestation": {
            "slot": str(tgt * 32 if s is None else s), "index": "0", "beacon_block_root": "0x" + f"{b:02x}" * 32,
            "source": {"epoch": str(src), "root": "0x" + "00" * 32}, "target": {"epoch": str(tgt), "root": "0x" + "00" * 32}}}

    assert call(signer, f"/api/v1/eth2/sign/{pk}", att(epoch - 3, epoch - 1, 1))[0] == 200
    assert call(signer, f"/api/v1/eth2/sign/{pk}", att(epoch - 3, epoch - 1, 1))[0] == 200, "same root re-signed"
    status, text, _ = call(signer, f"/api/v1/eth2/sign/{pk}", att(epoch - 3, epoch - 1, 2))
    assert status == 412 and json.loads(text)["rule"] == "eth2.double_vote"
    status, text, _ = call(signer, f"/api/v1/eth2/sign/{pk}", att(epoch - 4, epoch, 3))
    assert status == 412 and json.loads(text)["rule"] == "eth2.surround_vote"
    status, text, _ = call(signer, f"/api/v1/eth2/sign/0x{'aa' * 48}", att(epoch - 1, epoch, 4))
    assert status == 404
    bad = att(epoch - 1, epoch, 5)
    bad["attestation"]["slot"] = 5
    status, text, _ = call(signer, f"/api/v1/eth2/sign/{pk}", bad)
    assert status == 400 and json.loads(text)["field"] == "attestation.slot"
    status, text, _ = call(signer, f"/api/v1/eth2/sign/{pk}", {"type": "VOLUNTARY_EXIT", "fork_info": fork_info(),
                                                              "voluntary_exit": {"epoch": str(epoch), "validator_index": "1"}})
    assert status == 403 and json.loads(text)["rule"] == "eth2.voluntary_exit"
    far = att(epoch + 100, epoch + 100, 6)
    status, text, _ = call(signer, f"/api/v1/eth2/sign/{pk}", far)
    assert status == 403 and json.loads(text)["rule"] == "eth2.clock_window"
    reg = {"type": "VALIDATOR_REGISTRATION", "validator_registration": {
        "fee_recipient": "0x" + "cd" * 20, "gas_limit": "36000000", "timestamp": "1700000000", "pubkey": pk}}
    status, text, _ = call(signer, f"/api/v1/eth2/sign/{pk}", reg)
    assert status == 403 and json.loads(text)["rule"] == "eth2.fee_recipient"


def test_conflicting_attestations_racing_sign_once(signer):
    pk = keys(signer)[1]
    epoch = now_slot() // 32 - 10
    results: list[int] = []

    def one(i: int) -> None:
        body = {"type": "ATTESTATION", "fork_info": fork_info(), "attestation": {
            "slot": str(epoch * 32), "index": "0", "beacon_block_root": "0x" + f"{i + 1:02x}" * 32,
            "source": {"epoch": str(epoch - 1), "root": "0x" + "00" * 32}, "target": {"epoch": str(epoch), "root": "0x" + "00" * 32}}}
        results.append(call(signer, f"/api/v1/eth2/sign/{pk}", body)[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [412] * 7, results


def surround_refused(d) -> bool:
    """Signs 5->6, then 4->7 (surrounds it): whether the second is refused as a surround vote."""
    pk = keys(d)[0]
    epoch = now_slot() // 32 - 20

    def att(src: int, tgt: int) -> dict:
        return {"type": "ATTESTATION", "fork_info": fork_info(), "attestation": {
            "slot": str((epoch + tgt) * 32), "index": "0", "beacon_block_root": "0x" + "aa" * 32,
            "source": {"epoch": str(epoch + src), "root": "0x" + "00" * 32},
            "target": {"epoch": str(epoch + tgt), "root": "0x" + "00" * 32}}}

    assert call(d, f"/api/v1/eth2/sign/{pk}", att(5, 6))[0] == 200
    status, text, _ = call(d, f"/api/v1/eth2/sign/{pk}", att(4, 7))
    return status == 412 and json.loads(text)["rule"] == "eth2.surround_vote"


def test_surround_vote_refused(signer):
    assert surround_refused(signer)


def test_negative_control_surround_check_off_signs_the_surround(start):
    """KEYGUARD_FAULT=eth2-no-surround (fault-injection build) drops the surround check: the
    same test must then see the surrounding attestation signed."""
    d = _eth2_url(start(_cfg, name="eth2-fault", env={"KEYGUARD_FAULT": "eth2-no-surround"}, before_start=_setup))
    refused = surround_refused(d)  # the fault is read (and announced) at its first use
    if "FAULT INJECTION ACTIVE" not in d.stderr():
        msg = "KEYGUARD_BIN lacks --features fault-injection (tests/run builds it in)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    assert not refused


def _cfg_signing_only(data):
    c = _cfg(data)
    c["eth2"]["keys"] = ["*"]
    return c


def test_keymanager_routes_need_their_grant(start):
    """A signing grant ("*") is not a key-management grant: every keymanager route is refused
    by name, a 1 MiB body included (refused before it is read); signing still works."""
    d = _eth2_url(start(_cfg_signing_only, name="eth2-nogrant", before_start=_setup))
    big = {"keystores": ["x" * (1 << 20)], "passwords": ["pw"]}
    for path, body, method in [("/eth/v1/keystores", None, "GET"), ("/eth/v1/keystores", big, "POST"),
                               ("/eth/v1/keystores", {"pubkeys": [EIP2335_PUBKEY]}, "DELETE"),
                               ("/reload", {}, "POST")]:
        status, text, _ = call(d, path, body, method=method)
        assert status == 403, (path, method, text)
        assert json.loads(text)["rule"] == "access.method_not_granted", text
    # Control: the same client signs, and its keys are still there (nothing was deleted).
    assert EIP2335_PUBKEY in keys(d)
    pk = keys(d)[0]
    status, text, _ = call(d, f"/api/v1/eth2/sign/{pk}", {"type": "RANDAO_REVEAL", "fork_info": fork_info(),
                                                          "randao_reveal": {"epoch": str(now_slot() // 32)}})
    assert status == 200, text


def test_keymanager_delete_keeps_history_and_reimport_is_protected(signer):
    listed = json.loads(call(signer, "/eth/v1/keystores")[1])["data"]
    paths = sorted(k["derivation_path"] for k in listed)
    assert paths == ["", "m/12381/3600/0/0/0", "m/12381/3600/1/0/0"], listed
    pbkdf2 = (REPO / "tests/vectors/eth2/eip2335_pbkdf2.json").read_text()
    scrypt = (REPO / "tests/vectors/eth2/eip2335_scrypt.json").read_text()
    status, text, _ = call(signer, "/eth/v1/keystores", {"keystores": [scrypt], "passwords": [EIP2335_PASSWORD]})
    assert status == 200 and json.loads(text)["data"][0]["status"] == "duplicate", text
    epoch = now_slot() // 32 - 30
    att = lambda b: {"type": "ATTESTATION", "fork_info": fork_info(), "attestation": {
        "slot": str(epoch * 32), "index": "0", "beacon_block_root": "0x" + b * 32,
        "source": {"epoch": str(epoch - 1), "root": "0x" + "00" * 32}, "target": {"epoch": str(epoch), "root": "0x" + "00" * 32}}}
    assert call(signer, f"/api/v1/eth2/sign/{EIP2335_PUBKEY}", att("01"))[0] == 200
    status, text, _ = call(signer, "/eth/v1/keystores", {"pubkeys": [EIP2335_PUBKEY, "0x" + "bb" * 48]}, method="DELETE")
    out = json.loads(text)
    assert status == 200 and [x["status"] for x in out["data"]] == ["deleted", "not_found"], text
    history = json.loads(out["slashing_protection"])
    assert history["data"][0]["pubkey"] == EIP2335_PUBKEY and history["data"][0]["signed_attestations"]
    assert call(signer, f"/api/v1/eth2/sign/{EIP2335_PUBKEY}", att("02"))[0] == 404, "a deleted key stops signing"
    status, text, _ = call(signer, "/eth/v1/keystores", {"keystores": [pbkdf2], "passwords": [EIP2335_PASSWORD],
                                                        "slashing_protection": out["slashing_protection"]})
    assert status == 200 and json.loads(text)["data"][0]["status"] == "imported", text
    status, text, _ = call(signer, f"/api/v1/eth2/sign/{EIP2335_PUBKEY}", att("02"))
    assert status == 412 and json.loads(text)["rule"] == "eth2.double_vote", "history survived delete + import"


def test_reload_picks_up_keys_added_by_the_cli(signer):
    before = len(keys(signer))
    r = subprocess.run([kg.keyguard_bin(), "eth2", "keys", "generate", "--config", str(signer.config_path)],
                       text=True, capture_output=True, env=kg.base_env(None), cwd=signer.config_path.parent, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(keys(signer)) == before, "not before /reload"
    status, text, _ = call(signer, "/reload", {})
    assert status == 200, text
    assert r.stdout.strip() in keys(signer)


# --- Nimbus verifying-web3signer: Merkle proofs of fee recipient and graffiti -------------------

PROOF_FEE = bytes.fromhex("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")
PROOF_GRAFFITI = "keyguard proofs"


@pytest.fixture(scope="module")
def proof_signer(start):
    def cfg(data):
        c = _cfg(data)
        c["eth2"]["policy"] = {"block_fee_recipients": ["0x" + PROOF_FEE.hex()], "block_graffiti": [PROOF_GRAFFITI],
                               "require_block_proofs": True}
        return c
    return _eth2_url(start(cfg, name="eth2-proofs", before_start=_setup))


def nimbus_block(slot: int, body, proofs: list | None) -> tuple[dict, bytes]:
    """Nimbus's BLOCK_V2 (no signingRoot; `proofs` beside `beacon_block`) and the signing root
    computed here from the header."""
    body_root = bytes(body.hash_tree_root())
    hdr = BeaconBlockHeader(slot=slot, proposer_index=9, parent_root=Bytes32(b"\x01" * 32),
                            state_root=Bytes32(b"\x02" * 32), body_root=Bytes32(body_root))
    req = {"type": "BLOCK_V2", "fork_info": fork_info(), "beacon_block": {"version": "FULU", "block_header": {
        "slot": str(slot), "proposer_index": "9", "parent_root": "0x" + "01" * 32, "state_root": "0x" + "02" * 32,
        "body_root": "0x" + body_root.hex()}}}
    if proofs is not None:
        req["proofs"] = proofs
    return req, signing_root(bytes(hdr.hash_tree_root()), domain("00000000", version_at(slot // 32)))


def test_nimbus_block_proofs_verified_and_policed(proof_signer):
    import eth2_body
    pk = keys(proof_signer)[0]
    slot = now_slot()
    url = f"/api/v1/eth2/sign/{pk}"
    ours = eth2_body.make_body("FULU", PROOF_FEE, eth2_body.graffiti_bytes(PROOF_GRAFFITI), seed=7)
    proofs, info = eth2_body.nimbus_proofs(ours)
    assert (info["fee_recipient"]["gindex"], info["graffiti"]["gindex"]) == (801, 18)

    # Refusals first (each leaves no slashing record), every one named.
    theirs = eth2_body.make_body("FULU", b"\xcd" * 20, eth2_body.graffiti_bytes(PROOF_GRAFFITI), seed=7)
    req, _ = nimbus_block(slot - 1, theirs, eth2_body.nimbus_proofs(theirs)[0])
    status, text, _ = call(proof_signer, url, req)
    assert status == 403 and json.loads(text)["rule"] == "eth2.block_fee_recipient", text
    assert json.loads(text)["field"] == "beacon_block.body.execution_payload.fee_recipient"
    other_graffiti = eth2_body.make_body("FULU", PROOF_FEE, eth2_body.graffiti_bytes("someone else"), seed=7)
    req, _ = nimbus_block(slot - 1, other_graffiti, eth2_body.nimbus_proofs(other_graffiti)[0])
    status, text, _ = call(proof_signer, url, req)
    assert status == 403 and json.loads(text)["rule"] == "eth2.graffiti", text
    req, _ = nimbus_block(slot, ours, None)
    status, text, _ = call(proof_signer, url, req)
    assert status == 403 and json.loads(text)["rule"] == "eth2.block_proof_required", text
    forged = json.loads(json.dumps(proofs))
    forged[0]["proof"][3] = "0x" + ("00" if forged[0]["proof"][3][2:4] != "00" else "01") + forged[0]["proof"][3][4:]
    req, _ = nimbus_block(slot, ours, forged)
    status, text, _ = call(proof_signer, url, req)
    assert status == 403 and json.loads(text)["rule"] == "eth2.block_fee_recipient", text
    wrong_index = json.loads(json.dumps(proofs))
    wrong_index[0]["index"] = "401"
    req, _ = nimbus_block(slot, ours, wrong_index)
    status, text, _ = call(proof_signer, url, req)
    assert status == 400 and json.loads(text)["rule"] == "eth2.block_proof" and json.loads(text)["field"] == "proofs[0].index"

    # Positive control: the honest request signs, and py_ecc verifies the signature.
    req, root = nimbus_block(slot, ours, proofs)
    sign_ok(proof_signer, pk, req, root)


def test_negative_control_unchecked_proofs_sign_a_forged_branch(start):
    """KEYGUARD_FAULT=eth2-no-block-proofs (fault-injection build) skips the Merkle check: the
    forged branch the test above sees refused must then be signed."""
    import eth2_body

    def cfg(data):
        c = _cfg(data)
        c["eth2"]["policy"] = {"block_fee_recipients": ["0x" + PROOF_FEE.hex()], "block_graffiti": [PROOF_GRAFFITI],
                               "require_block_proofs": True}
        return c
    d = _eth2_url(start(cfg, name="eth2-proofs-fault", env={"KEYGUARD_FAULT": "eth2-no-block-proofs"},
                        before_start=_setup))
    pk = keys(d)[0]
    theirs = eth2_body.make_body("FULU", b"\xcd" * 20, eth2_body.graffiti_bytes(PROOF_GRAFFITI), seed=8)
    req, _ = nimbus_block(now_slot(), theirs, eth2_body.nimbus_proofs(theirs)[0])
    status, text, _ = call(d, f"/api/v1/eth2/sign/{pk}", req)
    if "FAULT INJECTION ACTIVE" not in d.stderr():
        msg = "KEYGUARD_BIN lacks --features fault-injection (tests/run builds it in)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    assert status == 200, text
