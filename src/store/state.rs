//! Mutable control state next to the audit log: users, approvals, the kill switch and two-admin
//! proposals. One connection behind a mutex; every change is its own transaction, durable (SQLite
//! `synchronous=FULL`, PostgreSQL `synchronous_commit`) before the caller acts on it.

use std::path::Path;
use std::sync::{Arc, MutexGuard};

use zeroize::Zeroizing;

use super::db::{vals, Conn, Dialect, Row, Shared, Tx};
use super::{configure, now_ms, StoreError};

/// A user as stored. The TOTP secret never leaves through `Debug`.
#[derive(Clone)]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// Role names (`admin`, `operator`, `approver`, `auditor`).
    pub roles: Vec<String>,
    /// Approval groups (e.g. `treasury`).
    pub groups: Vec<String>,
    /// The TOTP secret as stored: sealed (see `access::totp_vault`) or, in rows written
    /// before sealing or without a passphrase, the raw bytes.
    pub totp_secret: Zeroizing<Vec<u8>>,
    /// Whether `totp_secret` is sealed.
    pub totp_sealed: bool,
    /// Highest TOTP time step accepted so far (codes are single use).
    pub last_totp_step: i64,
    /// Consecutive wrong TOTP codes.
    pub totp_failures: u32,
    /// The user is refused until this time (unix ms) after too many wrong codes.
    pub locked_until_ms: i64,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// A stored approval request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApprovalRecord {
    pub id: String,
    pub key_id: String,
    #[serde(skip)]
    pub intent_digest: Vec<u8>,
    pub requester: String,
    pub chain: Option<String>,
    pub summary: serde_json::Value,
    pub rule: String,
    pub group: String,
    pub required: u32,
    pub approved: u32,
    pub approvers: Vec<String>,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// `pending`, `approved`, `rejected` or `consumed`.
    pub state: String,
}

/// Handle to the control-state connection; cheap to clone.
#[derive(Clone)]
pub struct StateDb {
    conn: Arc<Shared>,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateDb")
    }
}

pub(super) fn split(list: &str) -> Vec<String> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl StateDb {
    /// Opens a connection to an already migrated SQLite database.
    pub fn open(path: &Path) -> Result<StateDb, StoreError> {
        let conn = rusqlite::Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        configure(&conn)?;
        Ok(StateDb::from_conn(Conn::Sqlite(conn)))
    }

    pub(super) fn from_conn(conn: Conn) -> StateDb {
        StateDb {
            conn: Arc::new(Shared::new(conn)),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock()
    }

    /// Runs `f` in one transaction (committed only if `f` succeeds).
    pub(crate) fn transaction<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.lock().transaction(f)
    }

    /// One statement on its own (autocommit); rows changed.
    pub(super) fn exec(&self, sql: &str, params: &[super::db::Val]) -> Result<u64, StoreError> {
        self.lock().with(|t| t.execute(sql, params))
    }

    /// One query on its own.
    pub(super) fn rows(
        &self,
        sql: &str,
        params: &[super::db::Val],
    ) -> Result<Vec<Row>, StoreError> {
        self.lock().with(|t| t.query(sql, params))
    }

    /// Audit rows matching `filter` (read through this connection).
    pub fn query_audit(
        &self,
        filter: &super::AuditFilter,
    ) -> Result<Vec<super::AuditRow>, StoreError> {
        self.lock().with(|t| super::read::query(t, filter))
    }

    /// Recomputes the audit hash chain.
    pub fn verify_audit(&self) -> Result<super::AuditVerification, StoreError> {
        self.lock().with(super::read::verify)
    }

    // ---- users ------------------------------------------------------------------------------

    /// Number of users with the `admin` role.
    pub fn admin_count(&self) -> Result<usize, StoreError> {
        Ok(self
            .users()?
            .iter()
            .filter(|u| u.roles.iter().any(|r| r == "admin"))
            .count())
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.rows(
            &format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"),
            &[],
        )?
        .iter()
        .map(read_user)
        .collect()
    }

    /// One user.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.rows(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"),
            vals![name],
        )?
        .first()
        .map(read_user)
        .transpose()
    }

    /// Adds a user with a raw (unsealed) TOTP secret; false if the name is taken. The daemon
    /// adds users through `access::totp_vault`, which seals the secret first.
    pub fn add_user(
        &self,
        name: &str,
        roles: &[String],
        groups: &[String],
        secret: &[u8],
    ) -> Result<bool, StoreError> {
        self.insert_user(name, roles, groups, secret, false)
    }

    /// Adds a user with its TOTP secret as stored (`sealed` or raw); false if the name is taken.
    pub fn insert_user(
        &self,
        name: &str,
        roles: &[String],
        groups: &[String],
        stored_secret: &[u8],
        sealed: bool,
    ) -> Result<bool, StoreError> {
        let n = self.exec(
            "INSERT INTO users (name, roles, groups, totp_secret, totp_sealed, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
            vals![
                name,
                roles.join(","),
                groups.join(","),
                stored_secret,
                sealed,
                now_ms()
            ],
        )?;
        Ok(n == 1)
    }

    /// Replaces a raw TOTP secret by its sealed form; false if the row was already sealed.
    pub fn seal_user_secret(&self, name: &str, sealed_secret: &[u8]) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE users SET totp_secret = $2, totp_sealed = 1 WHERE name = $1 AND totp_sealed = 0",
            vals![name, sealed_secret],
        )?;
        Ok(n == 1)
    }

    /// Counts one wrong TOTP code; at `max` consecutive ones the user is locked until
    /// `now + lock_ms`. Returns the lock's end if the user is now locked.
    pub fn record_totp_failure(
        &self,
        name: &str,
        max: u32,
        lock_ms: i64,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.transaction(|tx| {
            let failures: Option<i64> = tx
                .query_opt(
                    "UPDATE users SET totp_failures = totp_failures + 1 WHERE name = $1 \
                     RETURNING totp_failures",
                    vals![name],
                )?
                .map(|r| r.get(0))
                .transpose()?;
            match failures {
                Some(f) if f >= i64::from(max) => {
                    let until = now.saturating_add(lock_ms);
                    tx.execute(
                        "UPDATE users SET locked_until_ms = $2 WHERE name = $1",
                        vals![name, until],
                    )?;
                    Ok(Some(until))
                }
                _ => Ok(None),
            }
        })
    }

    /// A correct code: the count of wrong ones starts again.
    pub fn reset_totp_failures(&self, name: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE users SET totp_failures = 0, locked_until_ms = 0 WHERE name = $1 \
             AND (totp_failures <> 0 OR locked_until_ms <> 0)",
            vals![name],
        )?;
        Ok(())
    }

    /// The sealing key's salt, argon2 cost `(memory_kib, iterations, parallelism)` and check
    /// value, if secrets were ever sealed in this database.
    pub fn secret_kdf(&self) -> Result<Option<SecretKdfRow>, StoreError> {
        self.rows(
            "SELECT salt, memory_kib, iterations, parallelism, check_value FROM secret_kdf \
             WHERE id = 1",
            &[],
        )?
        .first()
        .map(|r| {
            Ok(SecretKdfRow {
                salt: r.get(0)?,
                memory_kib: r.get(1)?,
                iterations: r.get(2)?,
                parallelism: r.get(3)?,
                check_value: r.get(4)?,
            })
        })
        .transpose()
    }

    /// Records the sealing parameters unless some are recorded already (first writer wins).
    pub fn init_secret_kdf(&self, row: &SecretKdfRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO secret_kdf (id, salt, memory_kib, iterations, parallelism, \
             check_value) VALUES (1, $1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            vals![
                &row.salt,
                row.memory_kib,
                row.iterations,
                row.parallelism,
                &row.check_value
            ],
        )?;
        Ok(())
    }

    /// Removes a user and, in the same transaction, every two-admin proposal it made: a
    /// proposal dies with its proposer, so a removed admin can never be the "second admin".
    pub fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        self.transaction(|tx| {
            tx.execute(
                "DELETE FROM admin_proposals WHERE proposer = $1",
                vals![name],
            )?;
            tx.execute(
                "DELETE FROM console_passkeys WHERE user_name = $1",
                vals![name],
            )?;
            Ok(tx.execute("DELETE FROM users WHERE name = $1", vals![name])? == 1)
        })
    }

    /// Records `step` as used if it is newer than the last accepted one (single-use codes).
    pub fn consume_totp_step(&self, name: &str, step: i64) -> Result<bool, StoreError> {
        let n = self.exec(
            "UPDATE users SET last_totp_step = $2 WHERE name = $1 AND last_totp_step < $2",
            vals![name, step],
        )?;
        Ok(n == 1)
    }

    // ---- kill switch ------------------------------------------------------------------------

    /// Persists a key's (or `*`'s) switch position. Every instance sharing the store sees it
    /// at its next signature: the audit writer's key fence reads this row in the same
    /// transaction that records the signature.
    pub fn set_key_disabled(&self, key: &str, disabled: bool, by: &str) -> Result<(), StoreError> {
        self.transaction(|tx| {
            if disabled && tx.dialect() == Dialect::Postgres {
                // Waits for every signature being recorded now; later ones see the switch.
                tx.query(
                    "SELECT key_id FROM key_controls WHERE key_id = '*' FOR UPDATE",
                    &[],
                )?;
            }
            tx.execute(
                "INSERT INTO key_controls (key_id, disabled, changed_ms, changed_by) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT(key_id) DO UPDATE SET \
                 disabled = excluded.disabled, changed_ms = excluded.changed_ms, \
                 changed_by = excluded.changed_by",
                vals![key, disabled, now_ms(), by],
            )?;
            Ok::<_, StoreError>(())
        })
    }

    /// Keys (and possibly `*`) currently disabled.
    pub fn disabled_keys(&self) -> Result<Vec<String>, StoreError> {
        self.lock().with(|t| {
            t.column(
                "SELECT key_id FROM key_controls WHERE disabled = 1 ORDER BY key_id",
                &[],
            )
        })
    }

    // ---- two-admin proposals ----------------------------------------------------------------

    /// Records `proposer`'s proposal of `action` and returns the other live proposers of the same
    /// action. Expired proposals are dropped first.
    pub fn propose(
        &self,
        action: &str,
        proposer: &str,
        ttl_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let now = now_ms();
        self.transaction(|tx| {
            tx.execute(
                "DELETE FROM admin_proposals WHERE expires_ms <= $1",
                vals![now],
            )?;
            tx.execute(
                "INSERT INTO admin_proposals (action, proposer, created_ms, expires_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT(action, proposer) DO UPDATE SET \
                 created_ms = excluded.created_ms, expires_ms = excluded.expires_ms",
                vals![action, proposer, now, now.saturating_add(ttl_ms)],
            )?;
            // Only proposals of users who are admins now count (belt and braces with
            // `remove_user`): a proposal never outlives its proposer's admin role.
            tx.column(
                "SELECT p.proposer FROM admin_proposals p JOIN users u ON u.name = p.proposer \
                 WHERE p.action = $1 AND p.proposer <> $2 \
                 AND (',' || u.roles || ',') LIKE '%,admin,%'",
                vals![action, proposer],
            )
        })
    }

    /// Forgets every proposal of `action` (after it was carried out).
    pub fn clear_proposals(&self, action: &str) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM admin_proposals WHERE action = $1",
            vals![action],
        )?;
        Ok(())
    }
}

/// The parameters TOTP secrets are sealed with (`secret_kdf`). Public values only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKdfRow {
    pub salt: Vec<u8>,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// A known value sealed under the key: a wrong passphrase is noticed at start.
    pub check_value: Vec<u8>,
}

const USER_COLUMNS: &str = "name, roles, groups, totp_secret, last_totp_step, totp_sealed, \
                            totp_failures, locked_until_ms";

fn read_user(r: &Row) -> Result<UserRecord, StoreError> {
    let roles: String = r.get(1)?;
    let groups: String = r.get(2)?;
    Ok(UserRecord {
        name: r.get(0)?,
        roles: split(&roles),
        groups: split(&groups),
        totp_secret: Zeroizing::new(r.get(3)?),
        last_totp_step: r.get(4)?,
        totp_sealed: r.get(5)?,
        totp_failures: r.get(6)?,
        locked_until_ms: r.get(7)?,
    })
}

// The approval book's statements live in `approvals_sql.rs`; `state_sql::*` keeps naming them.
pub(crate) use super::approvals_sql::*;
