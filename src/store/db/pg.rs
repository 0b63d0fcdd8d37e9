//! One PostgreSQL connection driven from blocking code, with a deadline on every statement.
//!
//! The store is called from plain threads (the audit writer) and from `spawn_blocking`, so each
//! session owns a thread with a current-thread runtime that drives `tokio-postgres`; callers
//! block on a reply for at most the deadline. A statement that misses its deadline breaks the
//! session (the socket is closed, so the server rolls back anything uncommitted) and the
//! caller gets [`StoreError::Unavailable`]: keyguard never waits on the database unboundedly
//! and never signs from state it could not confirm.
//!
//! PostgreSQL reports a commit whose wait for a synchronous standby was cancelled as a
//! WARNING ("canceling wait for synchronous replication ... already committed locally") and
//! then success. Such a commit may be lost by a failover, so [`PgSession::commit`] turns that
//! notice into [`StoreError::CommitUnknown`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use std::future::poll_fn;

use rustls_pki_types::pem::PemObject;
use tokio::sync::mpsc;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Statement};

use super::value::{Row, Val};
use crate::config::{PgSettings, PgTls};
use crate::store::StoreError;

/// Connection details the session needs beyond [`PgSettings`]' plain fields.
pub(crate) trait PgConnect {
    fn password(&self) -> Result<Option<zeroize::Zeroizing<String>>, StoreError>;
    fn client_config(&self) -> Result<Config, StoreError>;
    fn tls(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StoreError>;
}

impl PgConnect for PgSettings {
    fn password(&self) -> Result<Option<zeroize::Zeroizing<String>>, StoreError> {
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map(|p| Some(zeroize::Zeroizing::new(p)))
                .map_err(|_| StoreError::Unavailable(format!("password_env {var} is not set")));
        }
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(path).map_err(|e| {
                StoreError::Unavailable(format!("password_file {}: {e}", path.display()))
            })?;
            if meta.mode() & 0o077 != 0 {
                return Err(StoreError::Unavailable(format!(
                    "password_file {} is readable by group or others (chmod 600)",
                    path.display()
                )));
            }
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            StoreError::Unavailable(format!("password_file {}: {e}", path.display()))
        })?);
        Ok(Some(zeroize::Zeroizing::new(
            text.trim_end_matches(['\r', '\n']).to_owned(),
        )))
    }

    fn client_config(&self) -> Result<Config, StoreError> {
        let mut c = Config::new();
        // `host:port` entries carry their own port; then every host gets one.
        let split = |h: &str| match h.rsplit_once(':') {
            Some((host, port)) if !h.starts_with('/') => {
                port.parse::<u16>().ok().map(|p| (host.to_owned(), p))
            }
            _ => None,
        };
        let own_ports = self.hosts.iter().any(|h| split(h).is_some());
        for h in &self.hosts {
            match split(h) {
                Some((host, port)) => {
                    c.host(&host);
                    c.port(port);
                }
                None => {
                    c.host(h);
                    if own_ports {
                        c.port(self.port);
                    }
                }
            }
        }
        if !own_ports {
            c.port(self.port);
        }
        c.user(&self.user)
            .dbname(&self.dbname)
            .application_name(self.application_name.as_deref().unwrap_or("keyguard"))
            .connect_timeout(Duration::from_millis(self.connect_timeout_ms.max(1)))
            .tcp_user_timeout(self.deadline())
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3)
            .target_session_attrs(TargetSessionAttrs::ReadWrite);
        if let Some(p) = self.password()? {
            c.password(p.as_bytes());
        }
        if self.tls == PgTls::VerifyFull {
            c.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        Ok(c)
    }

    fn tls(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StoreError> {
        if self.tls == PgTls::Disable {
            return Ok(None);
        }
        let Some(ca) = &self.ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(ca)
            .map_err(|e| StoreError::Unavailable(format!("ca_file {}: {e}", ca.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert
                .map_err(|e| StoreError::Unavailable(format!("ca_file {}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| StoreError::Unavailable(format!("ca_file {}: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "ca_file {} holds no certificate",
                ca.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Unavailable(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}

pub(crate) enum Outcome {
    Rows(Vec<Row>),
    Count(u64),
    Many(Vec<Vec<Row>>),
}

enum Job {
    Query {
        sql: String,
        params: Vec<Val>,
        rows: bool,
        /// Send `BEGIN` first, in the same round trip (pipelined).
        begin: bool,
        reply: std_mpsc::SyncSender<Result<Outcome, StoreError>>,
    },
    Batch {
        sql: String,
        reply: std_mpsc::SyncSender<Result<Outcome, StoreError>>,
    },
    /// Several statements written at once and answered in order (one round trip).
    Pipeline {
        stmts: Vec<(String, Vec<Val>)>,
        begin: bool,
        reply: std_mpsc::SyncSender<Result<Outcome, StoreError>>,
    },
}

/// A live connection (see the module documentation).
pub(crate) struct PgSession {
    jobs: mpsc::UnboundedSender<Job>,
    /// A `BEGIN` waiting to ride with the next statement.
    begin: AtomicBool,
    deadline: Duration,
    broken: Arc<AtomicBool>,
    notices: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for PgSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSession")
            .field("broken", &self.is_broken())
            .finish()
    }
}

fn db_error(e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Postgres {
            code: db.code().code().to_owned(),
            message: db.message().to_owned(),
        },
        None => StoreError::Unavailable(format!("database connection: {e}")),
    }
}

impl PgSession {
    /// Connects (within the connect timeout) on a new session thread.
    pub(crate) fn connect(settings: &PgSettings) -> Result<PgSession, StoreError> {
        let config = settings.client_config()?;
        let tls = settings.tls()?;
        let deadline = settings.deadline();
        let broken = Arc::new(AtomicBool::new(false));
        let notices = Arc::new(Mutex::new(Vec::new()));
        let (jobs, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let (b, n) = (broken.clone(), notices.clone());
        std::thread::Builder::new()
            .name("keyguard-pg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Unavailable(e.to_string())));
                        return;
                    }
                };
                rt.block_on(session(config, tls, deadline, rx, ready_tx, b, n));
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start a database thread: {e}")))?;
        let wait = Duration::from_millis(settings.connect_timeout_ms.max(1)) + deadline;
        match ready_rx.recv_timeout(wait) {
            Ok(Ok(())) => Ok(PgSession {
                jobs,
                begin: AtomicBool::new(false),
                deadline,
                broken,
                notices,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Unavailable(format!(
                "database did not accept a connection within {} ms",
                wait.as_millis()
            ))),
        }
    }

    /// Whether the connection is gone (deadline missed, server closed it, network error).
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire) || self.jobs.is_closed()
    }

    fn call(
        &self,
        job: impl FnOnce(std_mpsc::SyncSender<Result<Outcome, StoreError>>) -> Job,
    ) -> Result<Outcome, StoreError> {
        if self.is_broken() {
            return Err(StoreError::Unavailable("database connection lost".into()));
        }
        let (reply, rx) = std_mpsc::sync_channel(1);
        self.jobs
            .send(job(reply))
            .map_err(|_| StoreError::Unavailable("database connection lost".into()))?;
        // The session thread enforces the deadline itself; this margin only covers a thread
        // that cannot run at all.
        match rx.recv_timeout(self.deadline + Duration::from_millis(500)) {
            Ok(r) => r,
            Err(_) => {
                self.broken.store(true, Ordering::Release);
                Err(StoreError::Unavailable(format!(
                    "database did not answer within {} ms",
                    self.deadline.as_millis()
                )))
            }
        }
    }

    /// Whether a BEGIN is still waiting (nothing of the transaction was sent).
    pub(crate) fn begin_pending(&self) -> bool {
        self.begin.load(Ordering::Acquire)
    }

    /// Drops a waiting BEGIN.
    pub(crate) fn clear_begin(&self) {
        self.begin.store(false, Ordering::Release);
    }

    /// Opens a transaction with the next statement (no round trip of its own).
    pub(crate) fn begin(&self) {
        self.begin.store(true, Ordering::Release);
    }

    pub(crate) fn query(&self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let begin = self.begin.swap(false, Ordering::AcqRel);
        match self.call(|reply| Job::Query {
            sql: sql.to_owned(),
            params: params.to_vec(),
            rows: true,
            begin,
            reply,
        })? {
            Outcome::Rows(r) => Ok(r),
            Outcome::Count(_) | Outcome::Many(_) => Ok(Vec::new()),
        }
    }

    /// Runs `stmts` in order in one round trip; every statement's rows. The first error fails
    /// the whole pipeline (inside a transaction the rest were aborted anyway).
    pub(crate) fn pipeline(
        &self,
        stmts: Vec<(String, Vec<Val>)>,
    ) -> Result<Vec<Vec<Row>>, StoreError> {
        let begin = self.begin.swap(false, Ordering::AcqRel);
        match self.call(|reply| Job::Pipeline {
            stmts,
            begin,
            reply,
        })? {
            Outcome::Many(m) => Ok(m),
            _ => Err(StoreError::Unavailable(
                "pipeline answered out of shape".into(),
            )),
        }
    }

    pub(crate) fn execute(&self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let begin = self.begin.swap(false, Ordering::AcqRel);
        match self.call(|reply| Job::Query {
            sql: sql.to_owned(),
            params: params.to_vec(),
            rows: false,
            begin,
            reply,
        })? {
            Outcome::Count(n) => Ok(n),
            Outcome::Rows(r) => Ok(r.len() as u64),
            Outcome::Many(m) => Ok(m.len() as u64),
        }
    }

    /// Runs several statements without parameters (migrations, BEGIN/ROLLBACK).
    pub(crate) fn batch(&self, sql: &str) -> Result<(), StoreError> {
        let sql = if self.begin.swap(false, Ordering::AcqRel) {
            format!("BEGIN; {sql}")
        } else {
            sql.to_owned()
        };
        self.call(|reply| Job::Batch { sql, reply }).map(|_| ())
    }

    /// COMMIT, failing when the server warned that the wait for a synchronous standby was
    /// cancelled (the commit is then only local and a failover may lose it).
    pub(crate) fn commit(&self) -> Result<(), StoreError> {
        self.take_notices();
        if self.begin.swap(false, Ordering::AcqRel) {
            return Ok(()); // nothing was run: no transaction was opened
        }
        self.batch("COMMIT")?;
        let notices = self.take_notices();
        if let Some(n) = notices
            .iter()
            .find(|n| n.contains("synchronous replication"))
        {
            return Err(StoreError::CommitUnknown(n.clone()));
        }
        Ok(())
    }

    fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

async fn session(
    config: Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    deadline: Duration,
    mut rx: mpsc::UnboundedReceiver<Job>,
    ready: std_mpsc::SyncSender<Result<(), StoreError>>,
    broken: Arc<AtomicBool>,
    notices: Arc<Mutex<Vec<String>>>,
) {
    let client = match tls {
        Some(tls) => match config.connect(tls).await {
            Ok((client, conn)) => {
                tokio::spawn(drive(conn, broken.clone(), notices));
                client
            }
            Err(e) => {
                let _ = ready.send(Err(db_error(&e)));
                return;
            }
        },
        None => match config.connect(NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(drive(conn, broken.clone(), notices));
                client
            }
            Err(e) => {
                let _ = ready.send(Err(db_error(&e)));
                return;
            }
        },
    };
    let _ = ready.send(Ok(()));
    let mut cache: HashMap<String, Statement> = HashMap::new();
    while let Some(job) = rx.recv().await {
        let (work, reply): (BoxFut<'_>, _) = match job {
            Job::Query {
                sql,
                params,
                rows,
                begin,
                reply,
            } => {
                let client = &client;
                let query = run(client, &mut cache, sql, params, rows);
                if begin {
                    // Written together, answered in order: one round trip.
                    (
                        Box::pin(async move {
                            let (b, q) = tokio::join!(client.batch_execute("BEGIN"), query);
                            b.map_err(|e| db_error(&e))?;
                            q
                        }),
                        reply,
                    )
                } else {
                    (Box::pin(query), reply)
                }
            }
            Job::Pipeline {
                stmts,
                begin,
                reply,
            } => (Box::pin(pipeline(&client, &mut cache, stmts, begin)), reply),
            Job::Batch { sql, reply } => {
                let client = &client;
                (
                    Box::pin(async move {
                        client
                            .batch_execute(&sql)
                            .await
                            .map(|()| Outcome::Count(0))
                            .map_err(|e| db_error(&e))
                    }),
                    reply,
                )
            }
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(result) => {
                let lost = matches!(&result, Err(StoreError::Unavailable(_)));
                let _ = reply.send(result);
                if lost || client.is_closed() {
                    broken.store(true, Ordering::Release);
                    return;
                }
            }
            Err(_) => {
                broken.store(true, Ordering::Release);
                let _ = reply.send(Err(StoreError::Unavailable(format!(
                    "database did not answer within {} ms",
                    deadline.as_millis()
                ))));
                // Dropping the client closes the socket: the server rolls back whatever was
                // not committed.
                return;
            }
        }
    }
}

type BoxFut<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Outcome, StoreError>> + 'a>>;

/// Prepares what is not cached (one round trip), then sends every statement (and `BEGIN`)
/// before reading any answer.
async fn pipeline(
    client: &Client,
    cache: &mut HashMap<String, Statement>,
    stmts: Vec<(String, Vec<Val>)>,
    begin: bool,
) -> Result<Outcome, StoreError> {
    let mut missing: Vec<&str> = Vec::new();
    for (sql, _) in &stmts {
        if !cache.contains_key(sql) && !missing.contains(&sql.as_str()) {
            missing.push(sql);
        }
    }
    let prepared = futures_util::future::join_all(missing.iter().map(|s| client.prepare(s))).await;
    for (sql, st) in missing.iter().zip(prepared) {
        cache.insert((*sql).to_owned(), st.map_err(|e| db_error(&e))?);
    }
    let mut work = Vec::with_capacity(stmts.len());
    for (sql, params) in &stmts {
        let st = cache
            .get(sql)
            .cloned()
            .ok_or_else(|| StoreError::Unavailable("statement not prepared".into()))?;
        work.push(async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            client.query(&st, &refs).await
        });
    }
    let begin_fut = async {
        if begin {
            client.batch_execute("BEGIN").await
        } else {
            Ok(())
        }
    };
    let (b, results) = tokio::join!(begin_fut, futures_util::future::join_all(work));
    b.map_err(|e| db_error(&e))?;
    let out = results
        .into_iter()
        .map(|r| to_rows(r.map_err(|e| db_error(&e))?))
        .collect::<Result<_, _>>()?;
    Ok(Outcome::Many(out))
}

/// Rows as the store's values (column types are read by [`Val`]'s `FromSql`).
fn to_rows(rows: Vec<tokio_postgres::Row>) -> Result<Vec<Row>, StoreError> {
    rows.iter()
        .map(|row| {
            (0..row.len())
                .map(|i| {
                    row.try_get::<_, Val>(i).map_err(|e| StoreError::Postgres {
                        code: String::new(),
                        message: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Row)
        })
        .collect()
}

async fn run(
    client: &Client,
    cache: &mut HashMap<String, Statement>,
    sql: String,
    params: Vec<Val>,
    rows: bool,
) -> Result<Outcome, StoreError> {
    let stmt = match cache.get(&sql) {
        Some(s) => s.clone(),
        None => {
            let s = client.prepare(&sql).await.map_err(|e| db_error(&e))?;
            cache.insert(sql, s.clone());
            s
        }
    };
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    if rows {
        let out = client.query(&stmt, &refs).await.map_err(|e| db_error(&e))?;
        Ok(Outcome::Rows(to_rows(out)?))
    } else {
        client
            .execute(&stmt, &refs)
            .await
            .map(Outcome::Count)
            .map_err(|e| db_error(&e))
    }
}

/// Drives the socket and keeps the server's notices for [`PgSession::commit`].
async fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    broken: Arc<AtomicBool>,
    notices: Arc<Mutex<Vec<String>>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notice(n))) => {
                if n.severity() == "NOTICE" || n.severity() == "INFO" {
                    tracing::debug!(message = %n.message(), "database notice");
                } else {
                    tracing::warn!(severity = %n.severity(), message = %n.message(), "database notice");
                }
                notices
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(n.message().to_owned());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::error!(error = %e, "database connection failed");
                broken.store(true, Ordering::Release);
                return;
            }
            None => {
                broken.store(true, Ordering::Release);
                return;
            }
        }
    }
}
