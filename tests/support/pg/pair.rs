//! A primary and a synchronous streaming standby (`pg_basebackup -R`), and the faults the
//! PostgreSQL store must survive or refuse: a commit waiting for a stopped standby, that wait
//! cancelled (PostgreSQL then reports success with only a WARNING, "already committed
//! locally"), promotion, and asynchronous replication as the negative control.

use super::run::{poll, TIMEOUT};
use super::PgCluster;

/// The standby's `application_name`, named by the primary's `synchronous_standby_names`.
pub const STANDBY_NAME: &str = "keyguard_standby";

/// Dropping it stops and removes both servers.
pub struct PgPair {
    primary: PgCluster,
    standby: PgCluster,
}

impl PgPair {
    /// Both servers running, the standby streaming and synchronous (`sync_state = 'sync'`).
    pub fn start() -> Self {
        let primary = PgCluster::start();
        let standby = PgCluster::standby_of(&primary, STANDBY_NAME);
        standby.start_server();
        let pair = Self { primary, standby };
        pair.set_sync();
        pair
    }

    pub fn primary(&self) -> &PgCluster {
        &self.primary
    }
    pub fn standby(&self) -> &PgCluster {
        &self.standby
    }

    /// Names the standby in `synchronous_standby_names` (reloaded) and waits until it streams
    /// as the synchronous standby.
    pub fn set_sync(&self) {
        self.set_standby_names(&format!("'{STANDBY_NAME}'"), STANDBY_NAME);
        self.wait_sync();
    }

    /// Clears `synchronous_standby_names` (reloaded): commits stop waiting for the standby,
    /// and the ones waiting now are released. The negative control: promotion can then lose
    /// commits the client saw succeed.
    pub fn set_async(&self) {
        self.set_standby_names("''", "");
    }

    fn set_standby_names(&self, literal: &str, shown: &str) {
        self.primary.psql(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = {literal}"
        ));
        self.primary.psql("SELECT pg_reload_conf()");
        poll(
            TIMEOUT,
            || self.primary.psql("SHOW synchronous_standby_names") == shown,
            || format!("synchronous_standby_names never became {literal}"),
        );
    }

    /// Waits until the standby streams and the primary counts it as synchronous.
    pub fn wait_sync(&self) {
        let query = format!(
            "SELECT state || '/' || sync_state FROM pg_stat_replication \
             WHERE application_name = '{STANDBY_NAME}'"
        );
        poll(
            TIMEOUT,
            || self.primary.psql(&query) == "streaming/sync",
            || {
                format!(
                    "the standby never became synchronous\nprimary:\n{}\nstandby:\n{}",
                    self.primary.log_tail(),
                    self.standby.log_tail()
                )
            },
        );
    }

    /// Waits until the standby has replayed everything the primary has written so far (a
    /// synchronous commit only waits for the standby's flush, not for its replay).
    pub fn wait_standby_replayed(&self) {
        let lsn = self.primary.psql("SELECT pg_current_wal_lsn()");
        poll(
            TIMEOUT,
            || {
                self.standby.psql(&format!(
                    "SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
                )) == "t"
            },
            || format!("the standby never replayed up to {lsn}"),
        );
    }

    /// Stops the standby (immediate): synchronous commits on the primary now wait.
    pub fn stop_standby(&self) {
        self.standby.stop_immediate();
    }

    /// Starts the standby again (it reconnects by itself when the primary runs; call
    /// `wait_sync` for that).
    pub fn start_standby(&self) {
        self.standby.start_server();
    }

    /// `pg_ctl promote` on the standby, waiting until it leaves recovery and accepts writes.
    pub fn promote_standby(&self) {
        super::run::run_ok(
            self.standby
                .server_cmd("pg_ctl")
                .args(["promote", "-D", "data", "-w", "-t", "30"]),
            TIMEOUT,
        );
        poll(
            TIMEOUT,
            || self.standby.psql("SELECT pg_is_in_recovery()") == "f",
            || "the standby never left recovery".to_string(),
        );
    }

    /// Backends on the primary whose commit waits for the synchronous standby.
    pub fn syncrep_waiters(&self) -> usize {
        self.primary
            .psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
            .parse()
            .expect("a count")
    }

    /// Waits (bounded) until at least `n` backends wait for the standby.
    pub fn wait_for_syncrep_waiters(&self, n: usize) {
        poll(
            TIMEOUT,
            || self.syncrep_waiters() >= n,
            || format!("fewer than {n} backends ever waited for the standby"),
        );
    }

    /// `pg_cancel_backend` on every backend waiting for the standby; returns how many were
    /// signalled. Each such commit is already durable on the primary alone, and its client gets
    /// success with the WARNING "canceling wait for synchronous replication ... already
    /// committed locally", which the store must treat as a failure.
    pub fn cancel_waiting_backends(&self) -> usize {
        self.primary
            .psql(
                "SELECT count(*) FROM (SELECT pg_cancel_backend(pid) AS ok FROM pg_stat_activity \
                 WHERE wait_event = 'SyncRep') c WHERE ok",
            )
            .parse()
            .expect("a count")
    }
}
