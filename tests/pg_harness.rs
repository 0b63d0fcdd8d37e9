//! The PostgreSQL test servers themselves (tests/support/pg): what the store tests rely on is
//! checked here against the real server, each with the variant that must fail.

#[path = "support/pg/mod.rs"]
mod pg;

use std::time::Duration;

use pg::{psql_conninfo, PgCluster, PgPair};

const WAIT: Duration = Duration::from_secs(30);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// `sql` as the test role over `conninfo`; must succeed.
fn as_role(conninfo: &str, sql: &str) -> String {
    let out = psql_conninfo(conninfo, sql);
    assert!(out.status.success(), "{sql}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn cluster_serves_the_role_with_scram_over_tcp_and_the_socket() {
    let c = PgCluster::start();
    for conninfo in [c.conninfo(), c.socket_conninfo(), c.url()] {
        assert_eq!(
            as_role(
                &conninfo,
                "SELECT current_user || '/' || current_database()"
            ),
            "keyguard/keyguard"
        );
    }
    assert_eq!(
        as_role(&c.conninfo(), "SELECT inet_server_addr()::text"),
        "127.0.0.1/32"
    );
    // The role owns its database: the store can create its schema.
    as_role(&c.conninfo(), "CREATE TABLE t (id BIGINT PRIMARY KEY)");
    assert_eq!(
        c.psql("SELECT current_setting('fsync') || current_setting('synchronous_commit')"),
        "onon"
    );
    assert!(c
        .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'keyguard'")
        .starts_with("SCRAM-SHA-256$"));

    // Negative controls: a wrong password, no password over the socket, the superuser over
    // TCP. Each must be refused, so the accepted connections above did authenticate.
    let wrong = c.conninfo().replace(c.password(), "wrong");
    let out = psql_conninfo(&wrong, "SELECT 1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        stderr(&out)
    );
    let no_password = c
        .socket_conninfo()
        .replace(&format!("password={}", c.password()), "");
    let out = psql_conninfo(&no_password, "SELECT 1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no password supplied"),
        "{}",
        stderr(&out)
    );
    let superuser = format!(
        "host=127.0.0.1 port={} user=postgres dbname=keyguard",
        c.port()
    );
    assert!(!psql_conninfo(&superuser, "SELECT 1").status.success());
}

#[test]
fn restart_immediate_keeps_committed_rows_and_drops_open_transactions() {
    let c = PgCluster::start();
    as_role(
        &c.conninfo(),
        "CREATE TABLE t (id BIGINT PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    // Negative control: a row inserted in a transaction still open at the crash must vanish,
    // so the check below can tell a crash from a clean shutdown.
    let open = c.psql_spawn("BEGIN; INSERT INTO t VALUES (2); SELECT pg_sleep(60)");
    pg::run::poll(
        WAIT,
        || c.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'") == "1",
        || "the open transaction never started".into(),
    );
    let pid = c.pid().expect("running");
    c.restart_immediate();
    assert_ne!(c.pid().expect("running again"), pid);
    assert!(!open.wait(WAIT).status.success(), "its connection died");
    assert_eq!(c.psql("SELECT string_agg(id::text, ',') FROM t"), "1");
    assert!(
        c.log().contains("not properly shut down"),
        "{}",
        c.log_tail()
    );

    c.psql("INSERT INTO t VALUES (3)");
    c.stop_immediate();
    assert_eq!(c.pid(), None);
    assert!(!psql_conninfo(&c.conninfo(), "SELECT 1").status.success());
    c.start_server();
    assert_eq!(
        as_role(
            &c.conninfo(),
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        ),
        "1,3"
    );
}

#[test]
fn tls_cluster_verifies_with_its_ca_and_refuses_plaintext_and_other_cas() {
    let c = PgCluster::start_tls();
    let ca = c.ca_pem().expect("a CA");
    assert!(c.conninfo().contains("sslmode=verify-full"));
    for conninfo in [c.conninfo(), c.url()] {
        assert_eq!(
            as_role(
                &conninfo,
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ),
            "t"
        );
    }
    // The name in the certificate: localhost verifies as well as 127.0.0.1.
    let by_name = c.conninfo().replace("host=127.0.0.1", "host=localhost");
    as_role(&by_name, "SELECT 1");

    // Negative controls: plaintext TCP, and a CA that did not issue the certificate.
    let plain = format!("{} sslmode=disable", c.base_conninfo());
    let out = psql_conninfo(&plain, "SELECT 1");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no encryption"), "{}", stderr(&out));
    let other_dir = tempfile::tempdir().unwrap();
    let other = pg::other_ca(other_dir.path());
    let wrong_ca = c
        .conninfo()
        .replace(ca.to_str().unwrap(), other.to_str().unwrap());
    let out = psql_conninfo(&wrong_ca, "SELECT 1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("certificate verify failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn pair_replicates_to_a_read_only_standby() {
    let pair = PgPair::start();
    let (primary, standby) = (pair.primary(), pair.standby());
    assert_eq!(
        primary.psql("SHOW synchronous_standby_names"),
        pg::STANDBY_NAME
    );
    primary.psql("CREATE TABLE t (id BIGINT PRIMARY KEY); INSERT INTO t VALUES (7)");
    pair.wait_standby_replayed();
    assert_eq!(standby.psql("SELECT id FROM t"), "7");
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    let out = psql_conninfo(&standby.conninfo(), "INSERT INTO t VALUES (8)");
    assert!(
        stderr(&out).contains("read-only transaction"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cancelled_wait_for_the_standby_commits_locally_with_a_warning() {
    let pair = PgPair::start();
    let primary = pair.primary();
    primary.psql("CREATE TABLE t (id BIGINT PRIMARY KEY)");

    // Control: with the standby up the commit returns with no warning and nothing waits.
    let out = primary.psql_output("INSERT INTO t VALUES (1)");
    assert!(out.status.success());
    assert_eq!(stderr(&out), "");
    assert_eq!(pair.syncrep_waiters(), 0);
    assert_eq!(pair.cancel_waiting_backends(), 0);

    pair.stop_standby();
    let mut commit = primary.psql_spawn("INSERT INTO t VALUES (2)");
    pair.wait_for_syncrep_waiters(1);
    assert!(commit.is_running(), "the commit waits for the standby");
    assert_eq!(pair.cancel_waiting_backends(), 1);
    let out = commit.wait(WAIT);
    // psql exits 0: to the client this looks like success; only the WARNING tells.
    assert!(out.status.success(), "{}", stderr(&out));
    let warning = stderr(&out);
    assert!(
        warning.contains("WARNING:  canceling wait for synchronous replication"),
        "{warning}"
    );
    assert!(warning.contains("already committed locally"), "{warning}");
    assert_eq!(
        primary.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2"
    );

    pair.start_standby();
    pair.wait_sync();
    let out = primary.psql_output("INSERT INTO t VALUES (3)");
    assert_eq!(stderr(&out), "", "replication is whole again");
}

#[test]
fn promoted_standby_is_writable_and_keeps_synchronous_commits() {
    let pair = PgPair::start();
    let (primary, standby) = (pair.primary(), pair.standby());
    primary.psql("CREATE TABLE t (id BIGINT PRIMARY KEY); INSERT INTO t VALUES (1)");
    // What a tripwire can compare: a standby shares the primary's system identifier, and
    // promotion starts a new timeline.
    const IDENTITY: &str = "SELECT system_identifier FROM pg_control_system()";
    const TIMELINE: &str = "SELECT timeline_id FROM pg_control_checkpoint()";
    assert_eq!(standby.psql(IDENTITY), primary.psql(IDENTITY));
    assert_eq!(primary.psql(TIMELINE), "1");
    primary.stop_immediate();
    pair.promote_standby();
    standby.psql("CHECKPOINT");
    assert_eq!(standby.psql(TIMELINE), "2");
    as_role(&standby.conninfo(), "SELECT 1");
    standby.psql("INSERT INTO t VALUES (2)");
    assert_eq!(
        standby.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2"
    );
}

/// The negative control of the one above: with asynchronous replication, a commit the client
/// saw succeed is gone after promotion.
#[test]
fn async_replication_and_promotion_lose_a_commit() {
    let pair = PgPair::start();
    let primary = pair.primary();
    primary.psql("CREATE TABLE t (id BIGINT PRIMARY KEY); INSERT INTO t VALUES (1)");
    pair.wait_standby_replayed();
    pair.set_async();
    pair.stop_standby();
    let out = primary.psql_output("INSERT INTO t VALUES (2)");
    assert!(
        out.status.success() && stderr(&out).is_empty(),
        "no wait, no warning"
    );
    primary.stop_immediate();
    pair.start_standby();
    pair.promote_standby();
    assert_eq!(
        pair.standby()
            .psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1"
    );
}
