"""Bitcoin interop: PSBTs built by an independent library (embit, which bundles libsecp256k1),
signed by keyguard over `btc_signPsbt`, and verified by embit's own sighash and signature code.

Covers P2WPKH (BIP143, ECDSA) and P2TR key-path (BIP341, BIP340) inputs, PSBT v0 and v2, the
BIP143 fee attack and a tampered input amount."""

from __future__ import annotations

import pytest
from embit import bip32, bip39, ec, script
from embit.networks import NETWORKS
from embit.psbt import PSBT, DerivationPath
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

import kg

WORDS = "abandon " * 11 + "about"
NET = NETWORKS["regtest"]
ROOT = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(WORDS), version=NET["xprv"])
FP = ROOT.my_fingerprint


def key(purpose: int, chain: int, index: int):
    path = f"m/{purpose}h/1h/0h/{chain}/{index}"
    return ROOT.derive(path).key.get_public_key(), DerivationPath(FP, bip32.parse_path(path))


def bitcoin_config(data_dir):
    cfg = kg.base_config(data_dir, create_on_first_start=[], policies=[])
    cfg["policies"] = [
        {
            "name": "btc",
            "keys": ["hot"],
            "bitcoin": {
                "network": "regtest",
                "destinations": "any",
                "max_spend_per_tx": "0.01 btc",
                "max_fee": "10000 sat",
                "max_feerate_sat_vb": 100,
            },
        }
    ]
    return cfg


def import_seed(workdir, cfg):
    words = workdir / "words"
    words.write_text(WORDS)
    out = kg.run_cli(["keys", "seed", "import", "--config", str(workdir / "keyguard.toml"), "--id", "hot", "--mnemonic-file", str(words)])
    assert out.returncode == 0, out.stderr
    assert FP.hex() in out.stdout


@pytest.fixture(scope="module")
def daemon(start):
    return start(bitcoin_config, name="btc", before_start=import_seed)


def build(version: int | None = None):
    """A PSBT spending one P2WPKH and one P2TR output of ours to a foreign address, with P2TR
    change, as an independent wallet would write it."""
    wpkh_pub, wpkh_path = key(84, 0, 0)
    tr_pub, tr_path = key(86, 0, 1)
    change_pub, change_path = key(86, 1, 0)
    prevouts = [TransactionOutput(60_000, script.p2wpkh(wpkh_pub)), TransactionOutput(50_000, script.p2tr(tr_pub))]
    fund = Transaction(vin=[TransactionInput(b"\x07" * 32, 0)], vout=prevouts)
    dest = script.p2wpkh(ec.PrivateKey(b"\x09" * 32).get_public_key())
    spend = Transaction(
        vin=[TransactionInput(fund.txid(), 0, sequence=0xFFFFFFFD), TransactionInput(fund.txid(), 1, sequence=0xFFFFFFFD)],
        vout=[TransactionOutput(70_000, dest), TransactionOutput(39_000, script.p2tr(change_pub))],
    )
    psbt = PSBT(spend) if version is None else PSBT(spend, version=version)
    psbt.inputs[0].non_witness_utxo = fund
    psbt.inputs[0].witness_utxo = prevouts[0]
    psbt.inputs[0].bip32_derivations[wpkh_pub] = wpkh_path
    psbt.inputs[1].witness_utxo = prevouts[1]
    psbt.inputs[1].taproot_internal_key = tr_pub
    psbt.inputs[1].taproot_bip32_derivations[tr_pub] = ([], tr_path)
    psbt.outputs[1].taproot_internal_key = change_pub
    psbt.outputs[1].taproot_bip32_derivations[change_pub] = ([], change_path)
    return psbt, prevouts, (wpkh_pub, tr_pub)


def verify(tx: Transaction, prevouts, pubs, amounts=None) -> bool:
    """embit's own BIP143/BIP341 sighashes and libsecp256k1 checks of both witnesses."""
    amounts = amounts or [o.value for o in prevouts]
    # A fresh copy: embit caches the BIP143/BIP341 midstate hashes per transaction object.
    tx = Transaction.parse(tx.serialize())
    wpkh_pub, tr_pub = pubs
    w0 = tx.vin[0].witness.items
    assert w0[0][-1] == SIGHASH.ALL and ec.PublicKey.parse(w0[1]) == wpkh_pub
    h0 = tx.sighash_segwit(0, script.p2pkh(wpkh_pub), amounts[0], SIGHASH.ALL)
    ok0 = wpkh_pub.verify(ec.Signature.parse(w0[0][:-1]), h0)
    w1 = tx.vin[1].witness.items
    assert len(w1) == 1 and len(w1[0]) == 64  # SIGHASH_DEFAULT: no sighash byte
    h1 = tx.sighash_taproot(1, [o.script_pubkey for o in prevouts], amounts, SIGHASH.DEFAULT)
    ok1 = tr_pub.taproot_tweak(b"").schnorr_verify(ec.SchnorrSig.parse(w1[0]), h1)
    return ok0 and ok1


@pytest.mark.parametrize("version", [None, 2])
def test_embit_psbt_signed_by_keyguard_verifies_in_embit(daemon, version):
    psbt, prevouts, pubs = build(version)
    res = kg.result(daemon.url(), "btc_signPsbt", [{"psbt": psbt.to_string(), "finalize": True}])
    assert res["complete"] is True
    signed = PSBT.from_string(res["psbt"])  # embit parses keyguard's answer
    if version == 2:
        assert signed.version == 2
    tx = Transaction.from_string(res["hex"])
    assert tx.txid().hex() == res["txid"]
    assert verify(tx, prevouts, pubs)
    # Tampering with an input amount breaks verification.
    assert not verify(tx, prevouts, pubs, amounts=[60_001, 50_000])
    assert not verify(tx, prevouts, pubs, amounts=[60_000, 49_999])


def test_partial_signatures_are_embit_readable(daemon):
    psbt, _, (wpkh_pub, _) = build()
    res = kg.result(daemon.url(), "btc_signPsbt", [psbt.to_string()])
    assert res["complete"] is False
    signed = PSBT.from_string(res["psbt"])
    assert wpkh_pub in signed.inputs[0].partial_sigs
    # embit 0.8 keeps PSBT_IN_TAP_KEY_SIG (0x13) as an unknown field: a 64-byte BIP340 signature.
    assert len(signed.inputs[1].unknown[b"\x13"]) == 64


def test_fee_attack_refused(daemon, nothing_signed):
    psbt, _, _ = build()
    psbt.inputs[0].non_witness_utxo = None
    with nothing_signed(daemon):
        resp = kg.call(daemon.url(), "btc_signPsbt", [psbt.to_string()])
    err = resp["error"]
    assert err["code"] == -32001
    assert err["data"]["rule"] == "bitcoin.input_amount_proof"
    assert err["data"]["field"] == "inputs[0]"


def test_descriptors_match_embit_derivation(daemon):
    res = kg.result(daemon.url(), "btc_getDescriptors", [{}])
    assert res["fingerprint"] == FP.hex()
    xpub = ROOT.derive("m/84h/1h/0h").to_public()
    xpub.version = NET["xpub"]
    assert xpub.to_base58() in res["receive"][0]
