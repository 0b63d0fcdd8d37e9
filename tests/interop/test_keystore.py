"""Key management CLI: keystore-v3 / hex import, generate, list; bad configs fail loudly."""

from __future__ import annotations

import json

import pytest
from eth_account import Account

import kg

PW = "import-password-\u00e9"
SCRYPT_KEY = Account.from_key(bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"))
PBKDF2_KEY = Account.from_key(b"\x5a" * 32)
HEX_KEY = Account.from_key(b"\x33" * 32)


def _import(workdir, cfg):
    conf = str(workdir / "keyguard.toml")
    files = {}
    for name, acct, kdf, n in (("scrypt", SCRYPT_KEY, "scrypt", 2**12), ("pbkdf2", PBKDF2_KEY, "pbkdf2", 1000)):
        ks = Account.encrypt(acct.key, PW, kdf=kdf, iterations=n)
        f = workdir / f"{name}.json"
        f.write_text(json.dumps(ks))
        files[name] = f
    for key_id in ("scrypt", "pbkdf2"):
        r = kg.run_cli(
            ["keys", "import", "--config", conf, "--id", f"imported-{key_id}", "--keystore-v3", str(files[key_id])],
            env={"KEYGUARD_IMPORT_PASSWORD": PW},
        )
        assert r.returncode == 0, f"keys import --keystore-v3 failed:\n{r.stdout}\n{r.stderr}"
    hexf = workdir / "secret.hex"
    hexf.write_text(HEX_KEY.key.hex() + "\n")
    r = kg.run_cli(["keys", "import", "--config", conf, "--id", "imported-hex", "--secret-hex-file", str(hexf)])
    assert r.returncode == 0, f"keys import --secret-hex-file failed:\n{r.stdout}\n{r.stderr}"
    r = kg.run_cli(["keys", "generate", "--config", conf, "--id", "generated-ed", "--scheme", "ed25519"])
    assert r.returncode == 0, f"keys generate failed:\n{r.stdout}\n{r.stderr}"
    r = kg.run_cli(["keys", "generate", "--config", conf, "--id", "generated-k1"])
    assert r.returncode == 0, f"keys generate failed:\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="module")
def daemon(start):
    return start(lambda data: kg.base_config(data, create_on_first_start=[]), name="keystore", before_start=_import)


def test_imported_keys_are_announced(daemon):
    assert daemon.keys["imported-scrypt"][0] == "secp256k1"
    assert daemon.keys["imported-scrypt"][1].lower() == SCRYPT_KEY.address.lower()
    assert daemon.keys["imported-pbkdf2"][1].lower() == PBKDF2_KEY.address.lower()
    assert daemon.keys["imported-hex"][1].lower() == HEX_KEY.address.lower()
    assert daemon.keys["generated-ed"][0] == "ed25519"
    assert daemon.keys["generated-k1"][0] == "secp256k1"
    assert "dev-secp256k1" not in daemon.keys, "create_on_first_start = [] must not create dev keys"


def test_eth_accounts_contains_imported(daemon):
    accounts = {a.lower() for a in kg.result(daemon.url(), "eth_accounts", [])}
    want = {SCRYPT_KEY.address, PBKDF2_KEY.address, HEX_KEY.address, daemon.address("generated-k1")}
    assert accounts == {a.lower() for a in want}


@pytest.mark.parametrize("acct", [SCRYPT_KEY, PBKDF2_KEY, HEX_KEY], ids=["scrypt", "pbkdf2", "hex"])
def test_imported_key_signs(daemon, acct):
    req = kg.tx_request("1559", acct.address, nonce=kg.fresh_nonce())
    raw = kg.result(daemon.url(), "eth_signTransaction", [req])
    assert Account.recover_transaction(raw) == acct.address
    kg.verify_signed(raw, req, acct.address)


def test_keys_list(daemon):
    r = kg.run_cli(["keys", "list", "--config", str(daemon.config_path)])
    assert r.returncode == 0, r.stderr
    for key_id in ("imported-scrypt", "imported-pbkdf2", "imported-hex", "generated-ed", "generated-k1"):
        assert key_id in r.stdout, r.stdout
    assert SCRYPT_KEY.address.lower() in r.stdout.lower()


def test_no_secret_on_stdout_or_stderr(daemon):
    out = "\n".join(daemon.stdout_lines) + daemon.stderr()
    for acct in (SCRYPT_KEY, PBKDF2_KEY, HEX_KEY):
        assert acct.key.hex() not in out.lower()
    assert kg.PASSPHRASE not in out and PW not in out


def test_restart_keeps_keys(daemon, start):
    """A second daemon on the same data dir (after the first stops) serves the same keys and
    creates none."""
    daemon.stop()
    again = start(lambda data: dict(daemon.config), name="restart")
    assert again.keys == daemon.keys
    req = kg.tx_request("legacy", HEX_KEY.address, nonce=kg.fresh_nonce())
    kg.verify_signed(kg.result(again.url(), "eth_signTransaction", [req]), req, HEX_KEY.address)
    again.stop()


def test_dev_config_falls_back_to_default_passphrase(tmp_path):
    import os

    cfg = kg.base_config(tmp_path / "var")
    cfg["dev"] = True
    env_clean = {k: v for k, v in os.environ.items() if k != "KEYGUARD_PASSPHRASE"}
    kg.write_config(tmp_path / "dev.toml", cfg)
    import subprocess

    p = subprocess.Popen([kg.keyguard_bin(), "start", "--config", str(tmp_path / "dev.toml")], env=env_clean,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        lines = []
        for line in p.stdout:
            lines.append(line)
            if line.strip() == "keyguard: ready":
                break
        assert lines and lines[-1].strip() == "keyguard: ready", "".join(lines)
    finally:
        p.terminate()
        _, err = p.communicate(timeout=10)
    assert "passphrase" in err.lower(), f"the default passphrase must be announced loudly:\n{err}"


def test_import_wrong_password_fails(tmp_path):
    cfg = kg.write_config(tmp_path / "k.toml", kg.base_config(tmp_path / "var", create_on_first_start=[]))
    f = tmp_path / "ks.json"
    f.write_text(json.dumps(Account.encrypt(PBKDF2_KEY.key, PW, kdf="pbkdf2", iterations=1000)))
    r = kg.run_cli(["keys", "import", "--config", str(cfg), "--id", "x", "--keystore-v3", str(f)],
                   env={"KEYGUARD_IMPORT_PASSWORD": "not-the-password"})
    assert r.returncode != 0
    assert r.stderr.strip(), "a failed import must say why"


def test_wrong_passphrase_refuses_to_start(daemon, tmp_path):
    """A copy of the key files under another passphrase: start must fail, naming the cause."""
    import shutil
    import subprocess

    src_keys = daemon.config_path.parent / "var" / "keys"
    assert src_keys.is_dir(), f"expected key files under {src_keys}"
    shutil.copytree(src_keys, tmp_path / "var" / "keys")
    cfg = kg.write_config(tmp_path / "c.toml", kg.base_config(tmp_path / "var", create_on_first_start=[]))
    r = subprocess.run([kg.keyguard_bin(), "start", "--config", str(cfg)], env=kg.base_env({"KEYGUARD_PASSPHRASE": "wrong"}),
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "keyguard: ready" not in r.stdout, r.stdout
    assert any(w in r.stderr.lower() for w in ("passphrase", "decrypt")), r.stderr


# -- bad configs: non-zero exit with a clear message ----------------------------------------


def _start_fails(tmp_path, cfg_text: str, env=None) -> str:
    p = tmp_path / "bad.toml"
    p.write_text(cfg_text)
    import subprocess

    r = subprocess.run([kg.keyguard_bin(), "start", "--config", str(p)], env=kg.base_env(env),
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode != 0, f"keyguard started with a bad config:\n{cfg_text}\n{r.stdout}"
    assert "keyguard: ready" not in r.stdout
    assert r.stderr.strip(), "no message on stderr"
    return r.stderr


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda c: c | {"bogus": 1}, "bogus"),
        (lambda c: c | {"listeners": [kg.listener() | {"bogus_key": 1}]}, "bogus_key"),
        (lambda c: c | {"policies": [kg.policy(max_vlaue="1 ether")]}, "max_vlaue"),
        (lambda c: c | {"policies": [kg.policy(max_value="1 bitcoin")]}, "max_value"),
        (lambda c: c | {"listeners": [kg.listener(address="0.0.0.0:0", auth="none")]}, "loopback"),
        (lambda c: c | {"listeners": [kg.listener(protocol="nope")]}, "nope"),
    ],
    ids=["unknown-top-key", "unknown-listener-key", "unknown-policy-key", "bad-unit", "auth-none-not-loopback", "bad-protocol"],
)
def test_bad_config_exits_nonzero(tmp_path, mutate, needle):
    cfg = mutate(kg.base_config(tmp_path / "var"))
    err = _start_fails(tmp_path, kg.to_toml(cfg))
    assert needle.lower() in err.lower(), f"message does not name {needle!r}:\n{err}"


def test_missing_passphrase_without_dev_fails(tmp_path):
    cfg = kg.base_config(tmp_path / "var")
    import os

    env = {k: v for k, v in os.environ.items() if k != "KEYGUARD_PASSPHRASE"}
    p = tmp_path / "c.toml"
    p.write_text(kg.to_toml(cfg))
    import subprocess

    r = subprocess.run([kg.keyguard_bin(), "start", "--config", str(p)], env=env, capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "keyguard: ready" not in r.stdout
    assert "KEYGUARD_PASSPHRASE" in r.stderr, r.stderr
