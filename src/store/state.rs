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

const APPROVAL_COLUMNS: &str = "id, key_id, intent_digest, requester, chain, summary, rule, grp, \
                                required, created_ms, expires_ms, state";

/// Reads one approval with its votes, inside a transaction or not.
pub(crate) fn approval(tx: &Tx<'_>, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
    let row = tx.query_opt(
        &format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"),
        vals![id],
    )?;
    row.map(|r| with_votes(tx, read_approval(&r)?)).transpose()
}

fn read_approval(r: &Row) -> Result<ApprovalRecord, StoreError> {
    let summary: String = r.get(5)?;
    Ok(ApprovalRecord {
        id: r.get(0)?,
        key_id: r.get(1)?,
        intent_digest: r.get(2)?,
        requester: r.get(3)?,
        chain: r.get(4)?,
        summary: serde_json::from_str(&summary).unwrap_or(serde_json::Value::Null),
        rule: r.get(6)?,
        group: r.get(7)?,
        required: r.get(8)?,
        approved: 0,
        approvers: Vec::new(),
        created_ms: r.get(9)?,
        expires_ms: r.get(10)?,
        state: r.get(11)?,
    })
}

fn with_votes(tx: &Tx<'_>, mut a: ApprovalRecord) -> Result<ApprovalRecord, StoreError> {
    a.approvers = tx.column(
        "SELECT \"user\" FROM approval_votes WHERE approval_id = $1 AND vote = 'approve' \
         ORDER BY ts_ms",
        vals![&a.id],
    )?;
    a.approved = u32::try_from(a.approvers.len()).unwrap_or(u32::MAX);
    Ok(a)
}

/// The newest approval for one key and intent.
pub(crate) fn latest_approval(
    tx: &Tx<'_>,
    key: &str,
    digest: &[u8],
) -> Result<Option<ApprovalRecord>, StoreError> {
    // Insertion order breaks ties of one millisecond.
    let ord = match tx.dialect() {
        Dialect::Sqlite => "rowid",
        Dialect::Postgres => "ord",
    };
    let row = tx.query_opt(
        &format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE key_id = $1 AND intent_digest = $2 \
             ORDER BY created_ms DESC, {ord} DESC LIMIT 1"
        ),
        vals![key, digest],
    )?;
    row.map(|r| with_votes(tx, read_approval(&r)?)).transpose()
}

/// Inserts a new pending approval.
pub(crate) fn insert_approval(tx: &Tx<'_>, a: &ApprovalRecord) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO approvals (id, key_id, intent_digest, requester, chain, summary, rule, grp, \
         required, created_ms, expires_ms, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending')",
        vals![
            &a.id,
            &a.key_id,
            &a.intent_digest,
            &a.requester,
            a.chain.as_deref(),
            a.summary.to_string(),
            &a.rule,
            &a.group,
            a.required,
            a.created_ms,
            a.expires_ms
        ],
    )?;
    Ok(())
}

/// Moves an approval from state `from` to `to`; true if it was in `from`. One conditional
/// statement: of two instances consuming the same approval at once, exactly one gets `true`.
pub(crate) fn transition(tx: &Tx<'_>, id: &str, from: &str, to: &str) -> Result<bool, StoreError> {
    let consumed = (to == "consumed").then(now_ms);
    let n = tx.execute(
        "UPDATE approvals SET state = $3, consumed_ms = COALESCE($4, consumed_ms) \
         WHERE id = $1 AND state = $2",
        vals![id, from, to, consumed],
    )?;
    Ok(n == 1)
}

/// How long a consumed approval must sit without its signed row before a PostgreSQL-backed
/// instance restores it (far above any signing deadline).
const SHARED_SETTLE_MS: i64 = 60_000;

/// Gives back approvals a crash consumed for a signature that was never released: the guard
/// consumes an approval (durably) before it signs, and the signature leaves only after its
/// audit row — naming the approval — commits. A `consumed` approval with no signed row naming
/// it was therefore never used, and leaving it consumed would refuse the approved intent forever
/// (`approval.consumed`). Only live approvals are restored (an expired one would be a fresh
/// request anyway); the scan covers signed rows from a day before the oldest candidate was
/// created, so a wall clock stepped back a little cannot hide its signature. Returns the ids.
///
/// With several instances sharing PostgreSQL, an approval another instance consumed a moment
/// ago and is still signing would look unreleased; only approvals consumed more than
/// [`SHARED_SETTLE_MS`] ago are restored.
pub(crate) fn restore_unreleased(tx: &Tx<'_>, now: i64) -> Result<Vec<String>, StoreError> {
    let (approval_id, settle_ms) = match tx.dialect() {
        Dialect::Sqlite => ("json_extract(summary, '$.approval_id')", i64::MIN),
        Dialect::Postgres => ("(summary::jsonb ->> 'approval_id')", SHARED_SETTLE_MS),
    };
    tx.column(
        &format!(
            "UPDATE approvals SET state = 'approved', consumed_ms = NULL \
             WHERE state = 'consumed' AND expires_ms > $1 AND COALESCE(consumed_ms, 0) <= $2 \
             AND id NOT IN ( \
               SELECT {approval_id} FROM audit_log \
               WHERE decision = 'signed' AND ts_ms >= ( \
                 SELECT MIN(created_ms) - 86400000 FROM approvals \
                 WHERE state = 'consumed' AND expires_ms > $1) \
               AND {approval_id} IS NOT NULL) \
             RETURNING id"
        ),
        // SQLite: one process, restoring before it signs anything: no settling needed.
        vals![
            now,
            if settle_ms == i64::MIN {
                i64::MAX
            } else {
                now.saturating_sub(settle_ms)
            }
        ],
    )
}

/// Records a vote; false if this user already voted on this approval.
pub(crate) fn insert_vote(
    tx: &Tx<'_>,
    id: &str,
    user: &str,
    vote: &str,
) -> Result<bool, StoreError> {
    let n = tx.execute(
        "INSERT INTO approval_votes (approval_id, \"user\", vote, ts_ms) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (approval_id, \"user\") DO NOTHING",
        vals![id, user, vote, now_ms()],
    )?;
    Ok(n == 1)
}

/// The users whose approve votes on `id` count under the rule in force now: they still exist,
/// still hold the approver role, are in `group`, and are not the requester. A vote cast by
/// someone since removed, demoted or moved to another group no longer counts.
pub(crate) fn valid_approvers(
    tx: &Tx<'_>,
    id: &str,
    group: &str,
    requester: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = tx.query(
        "SELECT v.\"user\", u.roles, u.groups FROM approval_votes v \
         JOIN users u ON u.name = v.\"user\" \
         WHERE v.approval_id = $1 AND v.vote = 'approve' ORDER BY v.ts_ms",
        vals![id],
    )?;
    let mut out = Vec::new();
    for r in rows {
        let (user, roles, groups): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if user != requester
            && split(&roles).iter().any(|r| r == "approver")
            && split(&groups).iter().any(|g| g == group)
        {
            out.push(user);
        }
    }
    Ok(out)
}

/// Puts an open approval under the rule in force now (rule name, group, approvals needed).
pub(crate) fn retarget_approval(
    tx: &Tx<'_>,
    id: &str,
    rule: &str,
    group: &str,
    required: u32,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE approvals SET rule = $2, grp = $3, required = $4 WHERE id = $1",
        vals![id, rule, group, required],
    )?;
    Ok(())
}

/// Live pending approvals, overall or of one requester.
pub(crate) fn count_pending(
    tx: &Tx<'_>,
    now: i64,
    requester: Option<&str>,
) -> Result<u64, StoreError> {
    let n: i64 = match requester {
        None => tx.query(
            "SELECT COUNT(*) FROM approvals WHERE state = 'pending' AND expires_ms > $1",
            vals![now],
        )?,
        Some(r) => tx.query(
            "SELECT COUNT(*) FROM approvals WHERE state = 'pending' AND expires_ms > $1 \
             AND requester = $2",
            vals![now, r],
        )?,
    }
    .first()
    .map_or(Ok(0), |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// One page of live approvals in `state`, oldest first, starting after approval `after`.
pub(crate) fn live_approvals_page(
    tx: &Tx<'_>,
    state: &str,
    now: i64,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match after {
        None => tx.query(
            &format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE state = $1 AND expires_ms > $2 \
                 ORDER BY created_ms, id LIMIT $3"
            ),
            vals![state, now, limit],
        )?,
        Some(after) => tx.query(
            &format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE state = $1 AND expires_ms > $2 \
                 AND (created_ms, id) > (SELECT created_ms, id FROM approvals WHERE id = $3) \
                 ORDER BY created_ms, id LIMIT $4"
            ),
            vals![state, now, after, limit],
        )?,
    };
    rows.iter()
        .map(|r| with_votes(tx, read_approval(r)?))
        .collect()
}

/// Approvals in `state` that have not expired, oldest first.
pub(crate) fn live_approvals(
    tx: &Tx<'_>,
    state: &str,
    now: i64,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    tx.query(
        &format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE state = $1 AND expires_ms > $2 \
             ORDER BY created_ms"
        ),
        vals![state, now],
    )?
    .iter()
    .map(|r| with_votes(tx, read_approval(r)?))
    .collect()
}
