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

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Statement};

pub(crate) use super::pg_connect::PgConnect;
use super::value::{Row, Val};
use crate::config::PgSettings;
use crate::store::StoreError;

pub(crate) enum Outcome {
    Rows(Vec<Row>),
    Count(u64),
    Many(Vec<Vec<Row>>),
    /// A pipeline whose transaction the session thread ended: its rows, and whether it
    /// committed.
    Ended(Vec<Vec<Row>>, bool),
}

/// Decides from a pipeline's rows, on the session thread, whether its transaction commits:
/// the COMMIT then follows the answers without a round trip through the caller's thread.
pub(crate) type CommitIf = Box<dyn FnOnce(&[Vec<Row>]) -> bool + Send>;

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
        /// End the transaction here: COMMIT when this accepts the rows, ROLLBACK otherwise
        /// (and on any error).
        commit_if: Option<CommitIf>,
        reply: std_mpsc::SyncSender<Result<Outcome, StoreError>>,
    },
}

/// A live connection (see the module documentation).
pub(crate) struct PgSession {
    jobs: mpsc::UnboundedSender<Job>,
    /// A `BEGIN` waiting to ride with the next statement.
    begin: AtomicBool,
    /// The session thread already ended the open transaction ([`PgSession::pipeline_commit`]).
    ended: AtomicBool,
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
                ended: AtomicBool::new(false),
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
        self.ended.store(false, Ordering::Release);
        self.begin.store(true, Ordering::Release);
    }

    /// Whether the session thread already ended the transaction (no ROLLBACK to send).
    pub(crate) fn take_ended(&self) -> bool {
        self.ended.swap(false, Ordering::AcqRel)
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
            Outcome::Count(_) | Outcome::Many(_) | Outcome::Ended(..) => Ok(Vec::new()),
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
            commit_if: None,
            reply,
        })? {
            Outcome::Many(m) => Ok(m),
            _ => Err(StoreError::Unavailable(
                "pipeline answered out of shape".into(),
            )),
        }
    }

    /// [`Self::pipeline`] that also ends the transaction on the session thread: COMMIT (with
    /// the synchronous-replication check of [`Self::commit`]) when `commit_if` accepts the
    /// rows, ROLLBACK otherwise or on error. Returns the rows and whether it committed.
    pub(crate) fn pipeline_commit(
        &self,
        stmts: Vec<(String, Vec<Val>)>,
        commit_if: CommitIf,
    ) -> Result<(Vec<Vec<Row>>, bool), StoreError> {
        let begin = self.begin.swap(false, Ordering::AcqRel);
        self.ended.store(true, Ordering::Release);
        self.take_notices();
        match self.call(|reply| Job::Pipeline {
            stmts,
            begin,
            commit_if: Some(commit_if),
            reply,
        })? {
            Outcome::Ended(m, committed) => Ok((m, committed)),
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
            Outcome::Many(m) | Outcome::Ended(m, _) => Ok(m.len() as u64),
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
        if self.take_ended() {
            return Ok(()); // committed on the session thread
        }
        self.take_notices();
        if self.begin.swap(false, Ordering::AcqRel) {
            return Ok(()); // nothing was run: no transaction was opened
        }
        self.batch("COMMIT")?;
        unconfirmed(&self.notices)
    }

    fn take_notices(&self) -> Vec<String> {
        take(&self.notices)
    }
}

fn take(notices: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *notices.lock().unwrap_or_else(|p| p.into_inner()))
}

/// After a COMMIT: the server's warning that the wait for the synchronous standby was
/// cancelled (the commit is only local) makes the outcome unknown. The notice is kept before
/// the COMMIT's answer resolves: [`drive`] handles messages in the order they arrive.
fn unconfirmed(notices: &Mutex<Vec<String>>) -> Result<(), StoreError> {
    match take(notices)
        .into_iter()
        .find(|n| n.contains("synchronous replication"))
    {
        Some(n) => Err(StoreError::CommitUnknown(n)),
        None => Ok(()),
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
    let kept = notices.clone();
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
                commit_if: None,
                reply,
            } => (Box::pin(pipeline(&client, &mut cache, stmts, begin)), reply),
            Job::Pipeline {
                stmts,
                begin,
                commit_if: Some(commit_if),
                reply,
            } => {
                let work = pipeline_end(&client, &mut cache, stmts, begin, commit_if, &kept);
                (Box::pin(work), reply)
            }
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

/// [`pipeline`], then COMMIT or ROLLBACK right here ([`PgSession::pipeline_commit`]).
async fn pipeline_end(
    client: &Client,
    cache: &mut HashMap<String, Statement>,
    stmts: Vec<(String, Vec<Val>)>,
    begin: bool,
    commit_if: CommitIf,
    notices: &Mutex<Vec<String>>,
) -> Result<Outcome, StoreError> {
    let rows = match pipeline(client, cache, stmts, begin).await {
        Ok(Outcome::Many(rows)) => rows,
        other => {
            let _ = client.batch_execute("ROLLBACK").await;
            return other.and(Err(StoreError::Unavailable(
                "pipeline answered out of shape".into(),
            )));
        }
    };
    if !commit_if(&rows) {
        client
            .batch_execute("ROLLBACK")
            .await
            .map_err(|e| db_error(&e))?;
        return Ok(Outcome::Ended(rows, false));
    }
    take(notices);
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| db_error(&e))?;
    unconfirmed(notices)?;
    Ok(Outcome::Ended(rows, true))
}

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
