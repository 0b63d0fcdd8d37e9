//! Throwaway PostgreSQL servers for the PostgreSQL store tests (issue 15): `initdb` in a fresh
//! temporary directory, a free loopback port and a Unix socket inside that directory, SCRAM
//! passwords, `fsync` and `synchronous_commit` on. Never the machine's default cluster (no
//! `pg_ctlcluster`, no port 5432). Include it with
//! `#[path = "support/pg/mod.rs"] mod pg;` (see docs/testing.md, "PostgreSQL").
//!
//! - `run`: the binaries (`KEYGUARD_PG_BIN`), the OS user when root (`KEYGUARD_PG_USER`), and
//!   commands bounded by timeouts.
//! - this file: `PgCluster`, one server.
//! - `pair`: `PgPair`, a primary and a synchronous streaming standby.
//! - `tls`: the certificates of `PgCluster::start_tls`.
#![allow(dead_code, unreachable_pub)]

mod pair;
pub mod run;
mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rand::distributions::{Alphanumeric, DistString};

#[allow(unused_imports)]
pub use pair::{PgPair, STANDBY_NAME};
use run::{as_server_user, chown_to_server_user, poll, run, run_ok, try_run, TIMEOUT};
#[allow(unused_imports)]
pub use tls::other_ca;

/// The bootstrap superuser: reachable only over the socket, whose directory only the server's
/// OS user (and root) can enter.
pub const SUPERUSER: &str = "postgres";
/// The login role a store under test uses (SCRAM password, owner of `DATABASE`, no superuser).
pub const ROLE: &str = "keyguard";
pub const DATABASE: &str = "keyguard";
pub const HOST: &str = "127.0.0.1";

/// One PostgreSQL server in its own temporary directory (`data/`, `sock/`, `server.log`,
/// `tls/`). Dropping it stops the server (immediate mode) and removes the directory.
pub struct PgCluster {
    dir: tempfile::TempDir,
    port: u16,
    password: String,
    ca_pem: Option<PathBuf>,
    /// Settings only this server has (a standby's `cluster_name`).
    conf_extra: String,
}

impl PgCluster {
    /// A fresh server, running and ready, with the role and database made.
    pub fn start() -> Self {
        Self::init(false)
    }

    /// The same with `ssl = on` and `hostssl`-only TCP access: plaintext TCP is refused; the
    /// certificate (for `localhost` and 127.0.0.1) verifies against `ca_pem()`.
    pub fn start_tls() -> Self {
        Self::init(true)
    }

    fn init(tls: bool) -> Self {
        let mut cluster = Self::empty(Alphanumeric.sample_string(&mut rand::thread_rng(), 24));
        let out = run(
            cluster.server_cmd("initdb").args([
                "-D",
                "data",
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                // Skips initdb's final flush only; the server itself runs with fsync on.
                "--no-sync",
            ]),
            TIMEOUT,
        );
        assert!(
            out.status.success(),
            "initdb failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            cluster.ca_pem = Some(tls::issue_server_cert(cluster.dir()));
        }
        cluster.write_hba(tls);
        std::fs::write(
            cluster.data_dir().join("postgresql.conf"),
            std::fs::read_to_string(cluster.data_dir().join("postgresql.conf")).expect("conf")
                + "\ninclude 'keyguard.conf'\n",
        )
        .expect("postgresql.conf");
        cluster.launch_on_a_free_port();
        let password = cluster.password.clone();
        cluster.psql_in(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'"),
        );
        cluster.psql_in(
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {ROLE}"),
        );
        cluster
    }

    /// A directory for a server that does not exist yet, owned by the server's OS user.
    fn empty(password: String) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("keyguard-pg-")
            .tempdir()
            .expect("temp dir");
        chown_to_server_user(dir.path());
        std::fs::create_dir(dir.path().join("sock")).expect("socket dir");
        chown_to_server_user(&dir.path().join("sock"));
        let cluster = Self {
            dir,
            port: 0,
            password,
            ca_pem: None,
            conf_extra: String::new(),
        };
        // The server's OS user must reach the directory (a TMPDIR under a closed directory
        // would fail later, less clearly).
        if let Err(e) = try_run(cluster.server_cmd("pg_ctl").arg("--version"), TIMEOUT) {
            panic!(
                "the server's OS user cannot enter {} (is TMPDIR reachable by it?): {e}",
                cluster.dir().display()
            );
        }
        cluster
    }

    /// The server that `pg_basebackup -R` makes of `primary`: a streaming standby named
    /// `application_name` (and `cluster_name`), not started.
    pub(crate) fn standby_of(primary: &PgCluster, application_name: &str) -> Self {
        let mut standby = Self::empty(primary.password.clone());
        standby.conf_extra = format!("cluster_name = '{application_name}'\n");
        let source = format!(
            "host={} port={} user={SUPERUSER} application_name={application_name}",
            primary.socket_dir().display(),
            primary.port
        );
        run_ok(
            standby.server_cmd("pg_basebackup").args([
                "-d",
                &source,
                "-D",
                "data",
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ]),
            TIMEOUT,
        );
        standby.port = free_port();
        standby.write_conf();
        standby
    }

    // ---- connection details ------------------------------------------------------------

    pub fn host(&self) -> &str {
        HOST
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The Unix socket directory (libpq `host=` for a socket connection).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }
    pub fn user(&self) -> &str {
        ROLE
    }
    pub fn password(&self) -> &str {
        &self.password
    }
    pub fn dbname(&self) -> &str {
        DATABASE
    }
    /// keyguard's `[store.postgres]` for this cluster over TCP without TLS (loopback), the
    /// password in a 0600 file in `dir`.
    pub fn store_settings(
        &self,
        dir: &Path,
        deadline_ms: u64,
        application_name: &str,
    ) -> keyguard::config::PgSettings {
        use std::os::unix::fs::PermissionsExt;
        let pw = dir.join("pg.pass");
        std::fs::write(&pw, self.password()).unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        keyguard::config::PgSettings {
            hosts: vec![self.host().to_owned()],
            port: self.port(),
            user: self.user().to_owned(),
            dbname: self.dbname().to_owned(),
            password_env: None,
            password_file: Some(pw),
            tls: keyguard::config::PgTls::Disable,
            ca_file: None,
            deadline_ms,
            connect_timeout_ms: 3_000,
            application_name: Some(application_name.into()),
        }
    }

    /// The CA certificate (PEM) that issued the server's certificate (`start_tls` only).
    pub fn ca_pem(&self) -> Option<&Path> {
        self.ca_pem.as_deref()
    }

    /// libpq key/value connection string over TCP with the role's password (with TLS:
    /// `sslmode=verify-full sslrootcert=<ca_pem>`, libpq's keys, which psql honours;
    /// tokio-postgres's parser does not know `sslrootcert`: give it `base_conninfo()` and the
    /// CA through its TLS connector).
    pub fn conninfo(&self) -> String {
        let mut s = self.base_conninfo();
        if let Some(ca) = &self.ca_pem {
            s += &format!(" sslmode=verify-full sslrootcert={}", ca.display());
        }
        s
    }

    /// Host, port, role, password and database over TCP, without any TLS key.
    pub fn base_conninfo(&self) -> String {
        format!(
            "host={HOST} port={} user={ROLE} password={} dbname={DATABASE}",
            self.port, self.password
        )
    }

    /// The same over the Unix socket (the role still authenticates with SCRAM).
    pub fn socket_conninfo(&self) -> String {
        format!(
            "host={} port={} user={ROLE} password={} dbname={DATABASE}",
            self.socket_dir().display(),
            self.port,
            self.password
        )
    }

    /// `postgresql://keyguard:<password>@127.0.0.1:<port>/keyguard` (with TLS:
    /// `?sslmode=verify-full&sslrootcert=<ca_pem>`). The password is alphanumeric.
    pub fn url(&self) -> String {
        let mut s = format!(
            "postgresql://{ROLE}:{}@{HOST}:{}/{DATABASE}",
            self.password, self.port
        );
        if let Some(ca) = &self.ca_pem {
            s += &format!("?sslmode=verify-full&sslrootcert={}", ca.display());
        }
        s
    }

    // ---- files -------------------------------------------------------------------------

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    /// The server log so far (every start appends to it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The postmaster's pid, or `None` when it is not running.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    // ---- SQL ---------------------------------------------------------------------------

    /// Runs `sql` with `psql` as the superuser over the socket in `DATABASE`, expects success,
    /// returns the unaligned tuples-only output without the final newline.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(DATABASE, sql)
    }

    /// The same in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = self.psql_output_in(db, sql);
        assert!(
            out.status.success(),
            "psql {sql:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_string()
    }

    /// `psql(sql)` without the success check: exit status, stdout and stderr (notices and
    /// WARNINGs go to stderr).
    pub fn psql_output(&self, sql: &str) -> Output {
        self.psql_output_in(DATABASE, sql)
    }

    fn psql_output_in(&self, db: &str, sql: &str) -> Output {
        run(&mut self.superuser_psql(db, sql), TIMEOUT)
    }

    /// Starts `sql` in the background (a commit that will wait for a standby, a transaction
    /// held open); `PsqlChild::wait` collects it.
    pub fn psql_spawn(&self, sql: &str) -> PsqlChild {
        let child = self
            .superuser_psql(DATABASE, sql)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        PsqlChild { child: Some(child) }
    }

    fn superuser_psql(&self, db: &str, sql: &str) -> Command {
        let mut cmd = self.server_cmd("psql");
        cmd.args(PSQL_FLAGS).arg("-h").arg(self.socket_dir()).args([
            "-p",
            &self.port.to_string(),
            "-U",
            SUPERUSER,
            "-d",
            db,
            "-c",
            sql,
        ]);
        cmd
    }

    // ---- server control ----------------------------------------------------------------

    /// `pg_ctl stop -m immediate`: every process exits without a checkpoint, as in a crash;
    /// the next start runs crash recovery.
    pub fn stop_immediate(&self) {
        run_ok(
            self.server_cmd("pg_ctl").args([
                "stop",
                "-D",
                "data",
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
            ]),
            TIMEOUT,
        );
    }

    /// Starts the server again on the same data directory and port, and waits until it is
    /// ready. (A standby comes back as a standby.)
    pub fn start_server(&self) {
        let out = self.pg_ctl_start();
        assert!(
            out.status.success(),
            "pg_ctl start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        self.wait_ready();
    }

    /// `pg_ctl restart -m immediate`: a crash and a restart, committed rows must survive it.
    pub fn restart_immediate(&self) {
        run_ok(
            self.server_cmd("pg_ctl").args([
                "restart",
                "-D",
                "data",
                "-m",
                "immediate",
                "-l",
                "server.log",
                "-w",
                "-t",
                "30",
            ]),
            TIMEOUT,
        );
        self.wait_ready();
    }

    /// Waits (bounded) until `pg_isready` reports the server accepts connections.
    pub fn wait_ready(&self) {
        poll(
            TIMEOUT,
            || {
                try_run(
                    self.server_cmd("pg_isready")
                        .arg("-h")
                        .arg(self.socket_dir())
                        .args(["-p", &self.port.to_string(), "-t", "5"]),
                    Duration::from_secs(10),
                )
                .is_ok_and(|o| o.status.success())
            },
            || format!("pg_isready never succeeded\n{}", self.log_tail()),
        );
    }

    pub(crate) fn server_cmd(&self, program: &str) -> Command {
        as_server_user(program, self.dir.path())
    }

    fn launch_on_a_free_port(&mut self) {
        // Another process may take the port between our probe and the server's bind.
        for _ in 0..5 {
            self.port = free_port();
            self.write_conf();
            let out = self.pg_ctl_start();
            if out.status.success() {
                self.wait_ready();
                return;
            }
            if !self.log().contains("could not bind") {
                panic!(
                    "pg_ctl start failed:\n{}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log_tail()
                );
            }
        }
        panic!("no free port after 5 tries\n{}", self.log_tail());
    }

    fn pg_ctl_start(&self) -> Output {
        run(
            self.server_cmd("pg_ctl").args([
                "start",
                "-D",
                "data",
                "-l",
                "server.log",
                "-w",
                "-t",
                "30",
            ]),
            TIMEOUT,
        )
    }

    /// `keyguard.conf` (included by `postgresql.conf`): what makes this a test server.
    /// `ALTER SYSTEM` (`postgresql.auto.conf`) still overrides it.
    fn write_conf(&self) {
        let mut conf = format!(
            "# written by tests/support/pg\n\
             listen_addresses = '{HOST}'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             fsync = on\n\
             synchronous_commit = on\n\
             full_page_writes = on\n\
             password_encryption = 'scram-sha-256'\n\
             wal_level = replica\n\
             max_wal_senders = 4\n\
             max_connections = 50\n\
             shared_buffers = 16MB\n\
             log_line_prefix = '%m [%p] %a '\n",
            port = self.port,
            sock = self.socket_dir().display(),
        );
        if let Some(ca) = &self.ca_pem {
            let tls = ca.parent().expect("tls dir");
            conf += &format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                tls.join("server.pem").display(),
                tls.join("server.key").display()
            );
        } else {
            conf += "ssl = off\n";
        }
        conf += &self.conf_extra;
        let path = self.data_dir().join("keyguard.conf");
        std::fs::write(&path, conf).expect("keyguard.conf");
        chown_to_server_user(&path);
    }

    /// The superuser over the socket without a password (the socket's directory is closed to
    /// other OS users); the test role with SCRAM everywhere; TCP only on 127.0.0.1, and only
    /// with TLS when `tls`.
    fn write_hba(&self, tls: bool) {
        let tcp = if tls { "hostssl" } else { "host" };
        let hba = format!(
            "# written by tests/support/pg\n\
             local all         {SUPERUSER} trust\n\
             local replication {SUPERUSER} trust\n\
             local all         all         scram-sha-256\n\
             {tcp} all all {HOST}/32 scram-sha-256\n"
        );
        let path = self.data_dir().join("pg_hba.conf");
        std::fs::write(&path, hba).expect("pg_hba.conf");
        chown_to_server_user(&path);
    }

    /// The last 4,000 bytes of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let start = log.len().saturating_sub(4000);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(0);
        format!(
            "--- server log ({}) ---\n{}",
            self.dir().display(),
            &log[start..]
        )
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.pid().is_some() {
            let _ = try_run(
                self.server_cmd("pg_ctl").args([
                    "stop",
                    "-D",
                    "data",
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "10",
                ]),
                Duration::from_secs(15),
            );
        }
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Flags of every `psql` run: no psqlrc, never prompt for a password, stop at the first error,
/// unaligned tuples only, no command tags.
pub const PSQL_FLAGS: &[&str] = &["-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"];

/// Runs `sql` with `psql` as the calling OS user against `conninfo` (any libpq connection
/// string or URL): how a client that is not the server's OS user connects. No success check.
pub fn psql_conninfo(conninfo: &str, sql: &str) -> Output {
    run(
        run::program("psql")
            .args(PSQL_FLAGS)
            .args(["-d", conninfo, "-c", sql]),
        TIMEOUT,
    )
}

/// A `psql` running in the background; killed if dropped before `wait`.
pub struct PsqlChild {
    child: Option<Child>,
}

impl PsqlChild {
    /// Its output once it exits; panics if it runs longer than `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let child = self.child.take().expect("psql child");
        run::wait_bounded(child, timeout).unwrap_or_else(|e| panic!("psql: {e}"))
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for PsqlChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind((HOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
