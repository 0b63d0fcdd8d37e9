"""Two keyguard daemons with the same key sharing one PostgreSQL store (issue 15), driven as a
load-balanced EVM client would: a nonce signed by one instance is refused by the other for any
other transaction (its own memory never saw it; the row in the shared store is the fence),
conflicting requests sent to both at the same moment sign once, and `audit verify` on either
instance checks the one chain both wrote. Signatures are recovered with eth_account."""

import os
import shutil
import threading

from eth_account import Account

import kg


def pg_store(cluster, workdir):
    pw = workdir / "pg.pass"
    pw.write_text(cluster.password)
    os.chmod(pw, 0o600)
    return {
        "backend": "postgres",
        "postgres": {
            "hosts": [cluster.host],
            "port": cluster.port,
            "user": cluster.role,
            "dbname": cluster.dbname,
            "password_file": str(pw),
            "tls": "disable",
            "deadline_ms": 5000,
        },
    }


def two_instances(start, pg_cluster, tmp_path):
    pol = [kg.policy(nonce={"allow_replacement": True, "min_fee_bump_percent": 10})]

    def first(data):
        cfg = kg.base_config(data, policies=pol)
        cfg["store"] = pg_store(pg_cluster, tmp_path)
        return cfg

    a = start(first, name="ha-a")

    def second(data):
        # The same key: the second instance gets a copy of the first one's keystore.
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o700)
        shutil.copytree(a.config_path.parent / "var" / "keys", data / "keys")
        cfg = kg.base_config(data, create_on_first_start=[], policies=pol)
        cfg["store"] = pg_store(pg_cluster, tmp_path)
        return cfg

    b = start(second, name="ha-b")
    assert a.address() == b.address()
    return a, b


def recovered(raw: str) -> str:
    return Account.recover_transaction(raw)


def test_a_nonce_signed_by_one_instance_is_fenced_on_the_other(start, pg_cluster, tmp_path):
    a, b = two_instances(start, pg_cluster, tmp_path)
    frm = a.address()
    nonce = kg.fresh_nonce()
    first = kg.tx_request("1559", frm, nonce=nonce)
    raw = kg.raw_of(kg.result(a.url(), "eth_signTransaction", [first]))
    assert recovered(raw).lower() == frm.lower()
    # The same transaction again on B: allowed (the same signing hash).
    again = kg.raw_of(kg.result(b.url(), "eth_signTransaction", [first]))
    assert recovered(again).lower() == frm.lower()
    # Another transaction with that nonce on B, whose memory never saw it: refused by name.
    other = kg.tx_request("1559", frm, nonce=nonce, value=kg.q(999))
    with b.nothing_signed():
        err = kg.call(b.url(), "eth_signTransaction", [other])["error"]
    assert err["code"] == -32001, err
    assert err["data"]["rule"] == "evm.nonce_reuse", err
    # A replacement raising both fees by the policy's 10 %, on B: judged against the row A
    # wrote (B reads it before deciding), so it signs.
    bumped = kg.tx_request(
        "1559", frm, nonce=nonce, value=kg.q(7),
        maxFeePerGas=kg.q(40 * kg.GWEI), maxPriorityFeePerGas=kg.q(2 * kg.GWEI),
    )
    raw2 = kg.raw_of(kg.result(b.url(), "eth_signTransaction", [bumped]))
    assert recovered(raw2).lower() == frm.lower()
    # And the original is now the replaced one, on A too.
    with a.nothing_signed():
        err = kg.call(a.url(), "eth_signTransaction", [first])["error"]
    assert err["data"]["rule"] == "evm.nonce_reuse", err
    # One chain, written by both, verified from either side; the refusal is in it.
    for d in (a, b):
        r = kg.run_cli(["audit", "verify", "--config", str(d.config_path)])
        assert r.returncode == 0, r.stderr
    rows = a.audit()
    assert any(e["decision"] == "refused" and e.get("rule") == "evm.nonce_reuse" for e in rows)


def test_conflicting_requests_at_once_on_both_instances_sign_once(start, pg_cluster, tmp_path):
    a, b = two_instances(start, pg_cluster, tmp_path)
    frm = a.address()
    rounds = 8
    base = kg.fresh_nonce()
    signed: dict[int, list[str]] = {n: [] for n in range(base, base + rounds)}
    lock = threading.Lock()

    def send(d, n, value):
        res = kg.call(d.url(), "eth_signTransaction", [kg.tx_request("1559", frm, nonce=n, value=kg.q(value))])
        if "result" in res:
            raw = kg.raw_of(res["result"])
            assert recovered(raw).lower() == frm.lower()
            with lock:
                signed[n].append(raw)
        else:
            assert res["error"]["code"] in (-32001, -32007), res

    for n in signed:
        threads = [
            threading.Thread(target=send, args=(d, n, v))
            for d, v in ((a, 1), (b, 2), (a, 3), (b, 4))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for n, raws in signed.items():
        assert len(raws) == 1, f"nonce {n}: {len(raws)} different transactions signed"
    r = kg.run_cli(["audit", "verify", "--config", str(b.config_path)])
    assert r.returncode == 0, r.stderr
