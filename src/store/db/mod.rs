//! One SQL surface over the two engines keyguard's state can live in.
//!
//! SQLite is the embedded default (one process); PostgreSQL is shared by several keyguard
//! instances. Statements are written once in the common subset (`$1` parameters, `ON
//! CONFLICT`, `RETURNING`, row values, 64-bit integers); the few that differ ask
//! [`Tx::dialect`]. Every function of the store takes a [`Tx`], so each behaviour is tested
//! against both engines with the same test.

pub(crate) mod pg;
mod pg_connect;
mod value;

use std::borrow::Cow;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::TransactionBehavior;

pub(crate) use pg::{CommitIf, PgSession};
pub(crate) use value::{vals, FromVal, Row, Val};

use crate::config::PgSettings;
use crate::store::StoreError;

/// Which engine a statement runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// `$1` → `?1` (SQLite's numbered form), outside string literals.
fn sqlite_sql(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '$' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn sqlite_rows(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[Val],
) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare_cached(&sqlite_sql(sql))?;
    let n = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut vals = Vec::with_capacity(n);
        for i in 0..n {
            vals.push(Val::from_sqlite(r.get_ref(i)?));
        }
        out.push(Row(vals));
    }
    Ok(out)
}

fn sqlite_execute(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[Val],
) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(&sqlite_sql(sql))?;
    Ok(stmt.execute(rusqlite::params_from_iter(params))? as u64)
}

/// A transaction (or, outside one, a connection in autocommit) to run statements on.
pub(crate) enum Tx<'a> {
    Sqlite(&'a rusqlite::Connection),
    Pg(&'a PgSession),
}

impl Tx<'_> {
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Pg(_) => Dialect::Postgres,
        }
    }

    /// Runs a statement; the number of rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        match self {
            Tx::Sqlite(c) => sqlite_execute(c, sql, params),
            Tx::Pg(s) => s.execute(sql, params),
        }
    }

    /// Every row a query returns.
    pub(crate) fn query(&self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        match self {
            Tx::Sqlite(c) => sqlite_rows(c, sql, params),
            Tx::Pg(s) => s.query(sql, params),
        }
    }

    /// The first row, if any.
    pub(crate) fn query_opt(&self, sql: &str, params: &[Val]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Column 0 of every row.
    pub(crate) fn column<T: FromVal>(
        &self,
        sql: &str,
        params: &[Val],
    ) -> Result<Vec<T>, StoreError> {
        self.query(sql, params)?.iter().map(|r| r.get(0)).collect()
    }

    /// Statements run in order; every one's rows. On PostgreSQL they travel together (one round
    /// trip for the lot).
    pub(crate) fn pipeline(
        &self,
        stmts: Vec<(String, Vec<Val>)>,
    ) -> Result<Vec<Vec<Row>>, StoreError> {
        match self {
            Tx::Sqlite(c) => stmts
                .iter()
                .map(|(sql, params)| sqlite_rows(c, sql, params))
                .collect(),
            Tx::Pg(s) => s.pipeline(stmts),
        }
    }

    /// Several statements without parameters (schema changes).
    /// [`Self::pipeline`] whose rows decide whether the transaction commits: on PostgreSQL
    /// the session thread commits or rolls back as soon as the answers arrive; on SQLite the
    /// enclosing [`Conn::transaction`] does (the caller returns an error to roll back).
    /// Returns the rows and `commit_if`'s verdict.
    pub(crate) fn pipeline_commit(
        &self,
        stmts: Vec<(String, Vec<Val>)>,
        commit_if: CommitIf,
    ) -> Result<(Vec<Vec<Row>>, bool), StoreError> {
        match self {
            Tx::Sqlite(_) => {
                let rows = self.pipeline(stmts)?;
                let ok = commit_if(&rows);
                Ok((rows, ok))
            }
            Tx::Pg(s) => s.pipeline_commit(stmts, commit_if),
        }
    }

    pub(crate) fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Tx::Pg(s) => s.batch(sql),
        }
    }
}

/// A PostgreSQL connection that comes back after a failure, at most once per backoff step.
pub(crate) struct PgLink {
    settings: PgSettings,
    session: Option<PgSession>,
    /// Successful connections so far (a new one may be another server after a failover).
    generation: u64,
    next_try: Option<Instant>,
    backoff: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl PgLink {
    pub(crate) fn new(settings: PgSettings) -> PgLink {
        PgLink {
            settings,
            session: None,
            generation: 0,
            next_try: None,
            backoff: BACKOFF_MIN,
        }
    }

    /// The live session, reconnecting if the last one broke (fails fast while backing off).
    pub(crate) fn session(&mut self) -> Result<&PgSession, StoreError> {
        if self.session.as_ref().is_some_and(PgSession::is_broken) {
            self.session = None;
            crate::store::health::lost();
        }
        if self.session.is_none() {
            if let Some(t) = self.next_try {
                let now = Instant::now();
                if now < t {
                    return Err(StoreError::Unavailable(format!(
                        "database unreachable; next attempt in {} ms",
                        (t - now).as_millis()
                    )));
                }
            }
            match PgSession::connect(&self.settings) {
                Ok(s) => {
                    self.generation += 1;
                    self.backoff = BACKOFF_MIN;
                    self.next_try = None;
                    crate::store::health::connected();
                    self.session = Some(s);
                }
                Err(e) => {
                    self.next_try = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    crate::store::health::failed();
                    return Err(e);
                }
            }
        }
        self.session
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("database connection lost".into()))
    }
}

/// One connection of either engine.
pub(crate) enum Conn {
    Sqlite(rusqlite::Connection),
    Pg(PgLink),
}

impl Conn {
    /// Connections made so far (0 for SQLite): a change means a new server session.
    pub(crate) fn generation(&self) -> u64 {
        match self {
            Conn::Sqlite(_) => 0,
            Conn::Pg(link) => link.generation,
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Pg(_) => Dialect::Postgres,
        }
    }

    /// Runs `f` in one transaction, committed only if `f` succeeds. SQLite: IMMEDIATE (the
    /// write lock is taken at BEGIN). PostgreSQL: READ COMMITTED, each statement seeing every
    /// commit before it; checks that must not race carry their condition in the statement that
    /// writes.
    pub(crate) fn transaction<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        match self {
            Conn::Sqlite(c) => {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(StoreError::from)?;
                let out = f(&Tx::Sqlite(&tx))?;
                tx.commit().map_err(StoreError::from)?;
                Ok(out)
            }
            Conn::Pg(link) => {
                // BEGIN rides with the transaction's first statement (one round trip).
                link.session()?.begin();
                let s = link.session()?;
                match f(&Tx::Pg(s)) {
                    Ok(out) => {
                        s.commit()?;
                        Ok(out)
                    }
                    Err(e) => {
                        if !s.take_ended() && !s.is_broken() && !s.begin_pending() {
                            let _ = s.batch("ROLLBACK");
                        }
                        s.clear_begin();
                        Err(e)
                    }
                }
            }
        }
    }

    /// Runs `f` outside an explicit transaction (each statement commits on its own).
    pub(crate) fn with<T>(
        &mut self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self {
            Conn::Sqlite(c) => f(&Tx::Sqlite(c)),
            Conn::Pg(link) => f(&Tx::Pg(link.session()?)),
        }
    }
}

/// A connection behind a mutex, shared by clones of a handle.
pub(crate) struct Shared(Mutex<Conn>);

impl Shared {
    pub(crate) fn new(conn: Conn) -> Shared {
        Shared(Mutex::new(conn))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Conn> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite_sql;

    #[test]
    fn numbered_parameters_become_sqlite_form_outside_literals() {
        assert_eq!(
            sqlite_sql("SELECT $1, '$2', json_extract(s, '$.a') FROM t WHERE a = $12"),
            "SELECT ?1, '$2', json_extract(s, '$.a') FROM t WHERE a = ?12"
        );
    }
}
