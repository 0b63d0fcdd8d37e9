//! `[store]`: which engine holds keyguard's state (SQLite file or shared PostgreSQL).

use std::path::PathBuf;
use std::time::Duration;

/// `[store]`.
#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite` (default: the embedded file under the data directory) or `postgres`.
    #[serde(default)]
    pub backend: StoreBackend,
    /// `[store.postgres]`, required with `backend = "postgres"`.
    #[serde(default)]
    pub postgres: Option<PgSettings>,
}

/// The store engine.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Sqlite,
    Postgres,
}

/// How to reach the shared PostgreSQL database (`[store.postgres]`).
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PgSettings {
    /// Host names, IP addresses (optionally `host:port`) or Unix socket directories (absolute
    /// paths), tried in order; only a read-write server is used
    /// (`target_session_attrs=read-write`).
    pub hosts: Vec<String>,
    /// Port (one for all hosts).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Role keyguard logs in as.
    pub user: String,
    /// Database name.
    pub dbname: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (must not be readable by group or others).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `verify-full` (default for TCP hosts: TLS, server certificate checked against
    /// `ca_file` and the host name) or `disable` (Unix sockets and loopback only).
    #[serde(default)]
    pub tls: PgTls,
    /// PEM file of the CA that signed the server certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Longest wait for any statement or commit; past it the request fails (-32007 /
    /// RemoteSignerError) and nothing is signed from cached state.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Longest wait to connect.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Name shown in `pg_stat_activity` (default: `keyguard`).
    #[serde(default)]
    pub application_name: Option<String>,
}

/// TLS mode of the PostgreSQL connection.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PgTls {
    #[default]
    VerifyFull,
    Disable,
}

fn default_port() -> u16 {
    5432
}
fn default_deadline_ms() -> u64 {
    2_000
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}

impl PgSettings {
    /// The per-statement deadline.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms.max(1))
    }

    /// Checks what can be checked without connecting; names the field at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.hosts.is_empty() {
            return Err(("hosts", "name at least one host or socket directory".into()));
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            return Err((
                "password_file",
                "set password_env or password_file, not both".into(),
            ));
        }
        if self.deadline_ms == 0 || self.deadline_ms > 60_000 {
            return Err(("deadline_ms", "must be between 1 and 60000".into()));
        }
        if self.tls == PgTls::VerifyFull {
            let tcp = self.hosts.iter().any(|h| !h.starts_with('/'));
            if tcp && self.ca_file.is_none() {
                return Err((
                    "ca_file",
                    "tls = \"verify-full\" needs the CA that signed the server's certificate"
                        .into(),
                ));
            }
        } else if let Some(h) = self
            .hosts
            .iter()
            .find(|h| !h.starts_with('/') && !is_loopback(h))
        {
            return Err((
                "tls",
                format!("tls = \"disable\" is only allowed for Unix sockets and loopback, not {h}"),
            ));
        }
        Ok(())
    }
}

/// Whether `h` (a host, optionally `host:port`) is the loopback interface.
fn is_loopback(h: &str) -> bool {
    let one = |h: &str| {
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    one(h)
        || h.rsplit_once(':')
            .is_some_and(|(host, port)| port.parse::<u16>().is_ok() && one(host))
}
