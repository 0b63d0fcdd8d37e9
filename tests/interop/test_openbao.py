"""OpenBao transit at the CLI: keys generated inside transit, ed25519 only (transit has no
secp256k1, refused by name), the token never printed, a group-readable token file refused. The
CometBFT privval suite signs through transit in test_cometbft.py (its `openbao` run)."""

from __future__ import annotations

import os
import uuid

import kg


def config(tmp_path, keys: dict[str, str], **over) -> tuple:
    cfg = kg.base_config(tmp_path / "var", create_on_first_start=[])
    cfg["keystore"]["openbao"] = dict(kg.openbao_table(keys), **over)
    return cfg, kg.write_config(tmp_path / "keyguard.toml", cfg)


def outputs(r) -> str:
    return r.stdout + r.stderr


def test_generate_and_list_an_ed25519_transit_key(openbao_transit, tmp_path):
    name = f"kg-{uuid.uuid4().hex[:12]}"
    _, path = config(tmp_path, {"validator": name})
    r = kg.run_cli(["keys", "generate", "--backend", "openbao", "--id", "validator", "--scheme", "ed25519", "--config", str(path)], env=openbao_transit.env())
    assert r.returncode == 0, r.stderr
    pub = openbao_transit.public_key(name).hex()
    assert f"created validator ed25519 {pub} (openbao)" in r.stdout, r.stdout
    r = kg.run_cli(["keys", "list", "--config", str(path)], env=openbao_transit.env())
    assert r.returncode == 0, r.stderr
    assert f"validator ed25519 {pub} (openbao)" in r.stdout.splitlines(), r.stdout
    # Transit keys are created non-exportable.
    assert openbao_transit.api("GET", f"transit/keys/{name}")["data"]["exportable"] is False
    # A second generate never replaces the key.
    r = kg.run_cli(["keys", "generate", "--backend", "openbao", "--id", "validator", "--scheme", "ed25519", "--config", str(path)], env=openbao_transit.env())
    assert r.returncode != 0 and "already exists" in r.stderr, outputs(r)
    assert openbao_transit.public_key(name).hex() == pub
    assert openbao_transit.token not in outputs(r)


def test_secp256k1_is_refused_by_name(openbao_transit, tmp_path):
    _, path = config(tmp_path, {"eth": f"kg-{uuid.uuid4().hex[:12]}"})
    r = kg.run_cli(["keys", "generate", "--backend", "openbao", "--id", "eth", "--scheme", "secp256k1", "--config", str(path)], env=openbao_transit.env())
    assert r.returncode != 0
    assert "transit has no secp256k1" in r.stderr, outputs(r)


def test_a_transit_key_of_another_type_refuses_the_start(openbao_transit, tmp_path):
    name = f"kg-{uuid.uuid4().hex[:12]}"
    openbao_transit.api("POST", f"transit/keys/{name}", {"type": "ecdsa-p256"})
    _, path = config(tmp_path, {"eth": name})
    r = kg.run_cli(["keys", "list", "--config", str(path)], env=openbao_transit.env())
    assert r.returncode != 0
    assert "is ecdsa-p256" in r.stderr and "transit has no secp256k1" in r.stderr, outputs(r)
    assert openbao_transit.token not in outputs(r)


def test_a_group_readable_token_file_is_refused(openbao_transit, tmp_path):
    token_file = tmp_path / "bao-token"
    token_file.write_text(openbao_transit.token + "\n")
    os.chmod(token_file, 0o640)
    name = f"kg-{uuid.uuid4().hex[:12]}"
    openbao_transit.api("POST", f"transit/keys/{name}", {"type": "ed25519"})
    cfg, path = config(tmp_path, {"validator": name})
    cfg["keystore"]["openbao"].pop("token_env")
    cfg["keystore"]["openbao"]["token_file"] = str(token_file)
    kg.write_config(path, cfg)
    r = kg.run_cli(["keys", "list", "--config", str(path)])
    assert r.returncode != 0 and "chmod 600" in r.stderr, outputs(r)
    assert openbao_transit.token not in outputs(r)
    # Control: the same file at 0600 works.
    os.chmod(token_file, 0o600)
    r = kg.run_cli(["keys", "list", "--config", str(path)])
    assert r.returncode == 0, r.stderr
    assert f"validator ed25519 {openbao_transit.public_key(name).hex()} (openbao)" in r.stdout.splitlines()


def test_a_wrong_token_is_refused_without_echoing_it(openbao_transit, tmp_path):
    name = f"kg-{uuid.uuid4().hex[:12]}"
    openbao_transit.api("POST", f"transit/keys/{name}", {"type": "ed25519"})
    _, path = config(tmp_path, {"validator": name})
    wrong = "kg-wrong-" + uuid.uuid4().hex
    r = kg.run_cli(["keys", "list", "--config", str(path)], env={"KG_INTEROP_BAO_TOKEN": wrong})
    assert r.returncode != 0 and "HTTP 403" in r.stderr, outputs(r)
    assert wrong not in outputs(r)
