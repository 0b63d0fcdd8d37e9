"""The interop suite's PostgreSQL servers (pgcluster.py) work: the role logs in with its
password over TCP and the socket, a wrong password is refused, and a committed row survives a
crash restart while an uncommitted one does not."""

import pgcluster


def test_role_connects_with_its_password_and_a_wrong_one_is_refused(pg_cluster):
    for conninfo in (pg_cluster.conninfo, pg_cluster.socket_conninfo, pg_cluster.url):
        r = pgcluster.psql_conninfo(conninfo, "SELECT current_user || '/' || current_database()")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "keyguard/keyguard"
    settings = "SELECT current_setting('fsync') || current_setting('synchronous_commit')"
    assert pg_cluster.psql(settings) == "onon"
    # Negative control: the same connection with a wrong password must fail.
    wrong = pg_cluster.conninfo.replace(pg_cluster.password, "wrong")
    r = pgcluster.psql_conninfo(wrong, "SELECT 1")
    assert r.returncode != 0
    assert "password authentication failed" in r.stderr


def test_restart_immediate_keeps_committed_rows_only(pg_cluster):
    r = pgcluster.psql_conninfo(
        pg_cluster.conninfo, "CREATE TABLE t (id BIGINT PRIMARY KEY); INSERT INTO t VALUES (1)"
    )
    assert r.returncode == 0, r.stderr
    # Negative control: a transaction open at the crash loses its row.
    open_tx = pgcluster.psql_popen(
        pg_cluster.conninfo, "BEGIN; INSERT INTO t VALUES (2); SELECT pg_sleep(60)"
    )
    try:
        sleeping = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
        pgcluster.wait_until(lambda: pg_cluster.psql(sleeping) == "1", "the open transaction")
        pid = pg_cluster.pid()
        pg_cluster.restart_immediate()
        assert open_tx.wait(timeout=30) != 0, "its connection died"
    finally:
        open_tx.kill()
        open_tx.communicate()
    assert pg_cluster.pid() not in (None, pid)
    assert pg_cluster.psql("SELECT string_agg(id::text, ',') FROM t") == "1"
    pg_cluster.stop_immediate()
    assert pg_cluster.pid() is None
    pg_cluster.start_server()
    assert pg_cluster.psql("SELECT count(*) FROM t") == "1"
