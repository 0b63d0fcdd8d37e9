"""BeaconBlockBody of Bellatrix..Fulu as remerkleable containers (consensus-specs field order
and limits), and Nimbus-shaped Merkle proofs of `execution_payload.fee_recipient` and
`graffiti` against the body root.

Independent of keyguard: generalized indices come from remerkleable's own tree layout
(`key_to_static_gindex`), never from keyguard's table; every branch is checked here against
the body root with the spec's `is_valid_merkle_branch` before it is used.

Run as a script to regenerate `tests/vectors/eth2/block_proofs.json` (read by keyguard's unit
tests): `python tests/interop/eth2_body.py > tests/vectors/eth2/block_proofs.json`.
"""

import hashlib
import json
import sys

from remerkleable.basic import uint8, uint64, uint256
from remerkleable.bitfields import Bitlist, Bitvector
from remerkleable.byte_arrays import Bytes32, Bytes48, Bytes96, ByteList, ByteVector
from remerkleable.complex import Container, List, Vector

Address = ByteVector[20]
MAX_VALIDATORS_PER_COMMITTEE = 2048
MAX_COMMITTEES_PER_SLOT = 64


class Eth1Data(Container):
    deposit_root: Bytes32
    deposit_count: uint64
    block_hash: Bytes32


class BeaconBlockHeader(Container):
    slot: uint64
    proposer_index: uint64
    parent_root: Bytes32
    state_root: Bytes32
    body_root: Bytes32


class SignedBeaconBlockHeader(Container):
    message: BeaconBlockHeader
    signature: Bytes96


class ProposerSlashing(Container):
    signed_header_1: SignedBeaconBlockHeader
    signed_header_2: SignedBeaconBlockHeader


class Checkpoint(Container):
    epoch: uint64
    root: Bytes32


class AttestationData(Container):
    slot: uint64
    index: uint64
    beacon_block_root: Bytes32
    source: Checkpoint
    target: Checkpoint


class IndexedAttestation(Container):
    attesting_indices: List[uint64, MAX_VALIDATORS_PER_COMMITTEE]
    data: AttestationData
    signature: Bytes96


class IndexedAttestationElectra(Container):
    attesting_indices: List[uint64, MAX_VALIDATORS_PER_COMMITTEE * MAX_COMMITTEES_PER_SLOT]
    data: AttestationData
    signature: Bytes96


class AttesterSlashing(Container):
    attestation_1: IndexedAttestation
    attestation_2: IndexedAttestation


class AttesterSlashingElectra(Container):
    attestation_1: IndexedAttestationElectra
    attestation_2: IndexedAttestationElectra


class Attestation(Container):
    aggregation_bits: Bitlist[MAX_VALIDATORS_PER_COMMITTEE]
    data: AttestationData
    signature: Bytes96


class AttestationElectra(Container):
    aggregation_bits: Bitlist[MAX_VALIDATORS_PER_COMMITTEE * MAX_COMMITTEES_PER_SLOT]
    data: AttestationData
    signature: Bytes96
    committee_bits: Bitvector[MAX_COMMITTEES_PER_SLOT]


class DepositData(Container):
    pubkey: Bytes48
    withdrawal_credentials: Bytes32
    amount: uint64
    signature: Bytes96


class Deposit(Container):
    proof: Vector[Bytes32, 33]
    data: DepositData


class VoluntaryExit(Container):
    epoch: uint64
    validator_index: uint64


class SignedVoluntaryExit(Container):
    message: VoluntaryExit
    signature: Bytes96


class SyncAggregate(Container):
    sync_committee_bits: Bitvector[512]
    sync_committee_signature: Bytes96


Transaction = ByteList[1 << 30]


class Withdrawal(Container):
    index: uint64
    validator_index: uint64
    address: Address
    amount: uint64


class ExecutionPayloadBellatrix(Container):
    parent_hash: Bytes32
    fee_recipient: Address
    state_root: Bytes32
    receipts_root: Bytes32
    logs_bloom: ByteVector[256]
    prev_randao: Bytes32
    block_number: uint64
    gas_limit: uint64
    gas_used: uint64
    timestamp: uint64
    extra_data: ByteList[32]
    base_fee_per_gas: uint256
    block_hash: Bytes32
    transactions: List[Transaction, 1 << 20]


class ExecutionPayloadCapella(ExecutionPayloadBellatrix):
    withdrawals: List[Withdrawal, 16]


class ExecutionPayloadDeneb(ExecutionPayloadCapella):
    blob_gas_used: uint64
    excess_blob_gas: uint64


class BLSToExecutionChange(Container):
    validator_index: uint64
    from_bls_pubkey: Bytes48
    to_execution_address: Address


class SignedBLSToExecutionChange(Container):
    message: BLSToExecutionChange
    signature: Bytes96


class DepositRequest(Container):
    pubkey: Bytes48
    withdrawal_credentials: Bytes32
    amount: uint64
    signature: Bytes96
    index: uint64


class WithdrawalRequest(Container):
    source_address: Address
    validator_pubkey: Bytes48
    amount: uint64


class ConsolidationRequest(Container):
    source_address: Address
    source_pubkey: Bytes48
    target_pubkey: Bytes48


class ExecutionRequests(Container):
    deposits: List[DepositRequest, 8192]
    withdrawals: List[WithdrawalRequest, 16]
    consolidations: List[ConsolidationRequest, 2]


class BodyBellatrix(Container):
    randao_reveal: Bytes96
    eth1_data: Eth1Data
    graffiti: Bytes32
    proposer_slashings: List[ProposerSlashing, 16]
    attester_slashings: List[AttesterSlashing, 2]
    attestations: List[Attestation, 128]
    deposits: List[Deposit, 16]
    voluntary_exits: List[SignedVoluntaryExit, 16]
    sync_aggregate: SyncAggregate
    execution_payload: ExecutionPayloadBellatrix


class BodyCapella(Container):
    randao_reveal: Bytes96
    eth1_data: Eth1Data
    graffiti: Bytes32
    proposer_slashings: List[ProposerSlashing, 16]
    attester_slashings: List[AttesterSlashing, 2]
    attestations: List[Attestation, 128]
    deposits: List[Deposit, 16]
    voluntary_exits: List[SignedVoluntaryExit, 16]
    sync_aggregate: SyncAggregate
    execution_payload: ExecutionPayloadCapella
    bls_to_execution_changes: List[SignedBLSToExecutionChange, 16]


class BodyDeneb(Container):
    randao_reveal: Bytes96
    eth1_data: Eth1Data
    graffiti: Bytes32
    proposer_slashings: List[ProposerSlashing, 16]
    attester_slashings: List[AttesterSlashing, 2]
    attestations: List[Attestation, 128]
    deposits: List[Deposit, 16]
    voluntary_exits: List[SignedVoluntaryExit, 16]
    sync_aggregate: SyncAggregate
    execution_payload: ExecutionPayloadDeneb
    bls_to_execution_changes: List[SignedBLSToExecutionChange, 16]
    blob_kzg_commitments: List[Bytes48, 4096]


class BodyElectra(Container):
    randao_reveal: Bytes96
    eth1_data: Eth1Data
    graffiti: Bytes32
    proposer_slashings: List[ProposerSlashing, 16]
    attester_slashings: List[AttesterSlashingElectra, 1]
    attestations: List[AttestationElectra, 8]
    deposits: List[Deposit, 16]
    voluntary_exits: List[SignedVoluntaryExit, 16]
    sync_aggregate: SyncAggregate
    execution_payload: ExecutionPayloadDeneb
    bls_to_execution_changes: List[SignedBLSToExecutionChange, 16]
    blob_kzg_commitments: List[Bytes48, 4096]
    execution_requests: ExecutionRequests


# Fulu keeps Electra's BeaconBlockBody.
BODIES = {"BELLATRIX": BodyBellatrix, "CAPELLA": BodyCapella, "DENEB": BodyDeneb,
          "ELECTRA": BodyElectra, "FULU": BodyElectra}


def graffiti_bytes(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) <= 32
    return raw + bytes(32 - len(raw))


def make_body(version: str, fee_recipient: bytes, graffiti: bytes, seed: int = 1):
    """A body with non-trivial siblings: transactions, withdrawals, an exit, commitments."""
    ty = BODIES[version]
    payload_ty = ty.fields()["execution_payload"]
    b = lambda n, k=32: bytes([(seed * 31 + n) % 256]) * k
    payload = dict(parent_hash=Bytes32(b(1)), fee_recipient=Address(fee_recipient), state_root=Bytes32(b(2)),
                   receipts_root=Bytes32(b(3)), logs_bloom=ByteVector[256](b(4, 256)), prev_randao=Bytes32(b(5)),
                   block_number=21_000_000 + seed, gas_limit=36_000_000, gas_used=12_345_678, timestamp=1_765_000_000,
                   extra_data=ByteList[32](b"keyguard"), base_fee_per_gas=7 * 10**9, block_hash=Bytes32(b(6)),
                   transactions=List[Transaction, 1 << 20](Transaction(b"\x02" + b(7, 150)), Transaction(b(8, 40))))
    if "withdrawals" in payload_ty.fields():
        payload["withdrawals"] = List[Withdrawal, 16](
            Withdrawal(index=5, validator_index=77, address=Address(b(9, 20)), amount=1234))
    if "blob_gas_used" in payload_ty.fields():
        payload["blob_gas_used"] = 131072
        payload["excess_blob_gas"] = 0
    fields = dict(randao_reveal=Bytes96(b(10, 96)),
                  eth1_data=Eth1Data(deposit_root=Bytes32(b(11)), deposit_count=2_000_000, block_hash=Bytes32(b(12))),
                  graffiti=Bytes32(graffiti),
                  voluntary_exits=List[SignedVoluntaryExit, 16](
                      SignedVoluntaryExit(message=VoluntaryExit(epoch=10, validator_index=3), signature=Bytes96(b(13, 96)))),
                  sync_aggregate=SyncAggregate(sync_committee_bits=Bitvector[512](*([True, False] * 256)),
                                               sync_committee_signature=Bytes96(b(14, 96))),
                  execution_payload=payload_ty(**payload))
    if "blob_kzg_commitments" in ty.fields():
        fields["blob_kzg_commitments"] = List[Bytes48, 4096](Bytes48(b(15, 48)))
    return ty(**fields)


def gindex_of(body_type, path: list[str]) -> int:
    """The generalized index of `path` in `body_type`, from remerkleable's own layout."""
    g, ty = 1, body_type
    for key in path:
        sub = ty.key_to_static_gindex(key)
        depth = sub.bit_length() - 1
        g = (g << depth) | (sub - (1 << depth))
        ty = ty.fields()[key]
    return g


def branch(body, gindex: int) -> list[bytes]:
    """Sibling roots from the leaf up (the order `is_valid_merkle_branch` reads)."""
    node = body.get_backing()
    out, g = [], gindex
    while g > 1:
        out.append(bytes(node.getter(g ^ 1).merkle_root()))
        g >>= 1
    return out


def is_valid_merkle_branch(leaf: bytes, proof: list[bytes], gindex: int, root: bytes) -> bool:
    value = leaf
    for i, sib in enumerate(proof):
        if (gindex >> i) & 1:
            value = hashlib.sha256(sib + value).digest()
        else:
            value = hashlib.sha256(value + sib).digest()
    return len(proof) == gindex.bit_length() - 1 and value == root


def nimbus_proofs(body) -> tuple[list[dict], dict]:
    """Nimbus's `proofs` (fee recipient, then graffiti, as `--proven-block-property` lists them)."""
    ty = type(body)
    root = bytes(body.hash_tree_root())
    fee_g = gindex_of(ty, ["execution_payload", "fee_recipient"])
    graf_g = gindex_of(ty, ["graffiti"])
    out, info = [], {}
    for name, g in (("fee_recipient", fee_g), ("graffiti", graf_g)):
        leaf = bytes(body.get_backing().getter(g).merkle_root())
        proof = branch(body, g)
        assert is_valid_merkle_branch(leaf, proof, g, root)
        # Negative control of the checker itself: a flipped sibling byte fails.
        bad = [bytes([proof[0][0] ^ 1]) + proof[0][1:]] + proof[1:]
        assert not is_valid_merkle_branch(leaf, bad, g, root)
        out.append({"index": str(g), "proof": ["0x" + p.hex() for p in proof]})
        info[name] = {"gindex": g, "leaf": "0x" + leaf.hex()}
    return out, info


# Mainnet slots inside each fork (keyguard picks the layout from its own schedule).
SLOTS = {"BELLATRIX": 144896 * 32 + 3, "CAPELLA": 194048 * 32 + 3, "DENEB": 269568 * 32 + 3,
         "ELECTRA": 364032 * 32 + 3, "FULU": 411392 * 32 + 3}


def vectors() -> dict:
    cases = []
    for i, (version, slot) in enumerate(SLOTS.items()):
        fee = bytes([0xfe, i]) + bytes(range(18))
        graffiti = graffiti_bytes(f"keyguard {version.lower()}")
        body = make_body(version, fee, graffiti, seed=i + 1)
        proofs, info = nimbus_proofs(body)
        cases.append({"version": version, "slot": str(slot), "body_root": "0x" + bytes(body.hash_tree_root()).hex(),
                      "fee_recipient": "0x" + fee.hex(), "graffiti": "0x" + graffiti.hex(),
                      "fee_recipient_gindex": info["fee_recipient"]["gindex"],
                      "graffiti_gindex": info["graffiti"]["gindex"], "proofs": proofs})
    return {"source": "tests/interop/eth2_body.py (remerkleable "
                      "BeaconBlockBody trees; gindices from remerkleable's layout)", "cases": cases}


if __name__ == "__main__":
    json.dump(vectors(), sys.stdout, indent=1)
    sys.stdout.write("\n")
