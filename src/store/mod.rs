//! SQLite store: numbered migrations and the hash-chained, append-only audit log.
//!
//! One dedicated writer thread owns the write connection and commits audit entries in groups
//! (many callers share one fsync); reads go through a separate connection (WAL lets them run
//! concurrently with the writer).

pub mod anchor;
mod audit;
mod chain_state;
mod checkpoint;
mod clients;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod ledger;
mod migrations;
mod read;
pub(crate) mod state;
mod watermarks;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_anchor;
#[cfg(test)]
mod tests_writer;

/// Bounds on audit growth: field caps, refusal budget, disk floor.
pub mod bounds;
#[cfg(test)]
mod tests_people;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use audit::{AuditEntry, AuditReceipt, AuditRow, AuditVerification, Decision, GENESIS_HASH};
pub use chain_state::SignedTxRow;
pub use clients::ClientRow;
pub use ledger::{NonceRow, SignetRow, StateWrite, VelocityRow};
pub use read::AuditFilter;
pub(crate) use state as state_sql;
pub use state::{ApprovalRecord, SecretKdfRow, StateDb, UserRecord};
pub use watermarks::{WatermarkError, WatermarkRow, WatermarkStore};
pub use writer::AuditLog;

pub use bounds::AuditLimits;

/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Said plainly because SQLite only reports "unable to open database file".
    #[error(
        "data directory {path} is on a read-only filesystem; keyguard records every signature \
         before releasing it, so it cannot sign from there"
    )]
    ReadOnly { path: PathBuf },
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("migration {version} failed: {source}")]
    Migration {
        version: u32,
        source: rusqlite::Error,
    },
    #[error("database schema version {found} is newer than this binary knows ({known})")]
    TooNew { found: u32, known: u32 },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("audit chain broken at seq {seq}: {reason}")]
    ChainBroken { seq: i64, reason: String },
    #[error("audit row {seq} is corrupt: {reason}")]
    Corrupt { seq: i64, reason: String },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The data directory's filesystem is below the configured free-space floor.
    #[error(
        "audit.disk_floor: {free} bytes free on the data directory, below the floor of \
         {floor}; no new work is accepted until space is freed"
    )]
    DiskFloor { free: u64, floor: u64 },
    /// A state row an entry carried no longer matches what its decision was made against;
    /// that entry (only) was not written.
    #[error("state conflict: {0}")]
    StateConflict(String),
}

/// The embedded SQLite store. `Send + Sync`; share it behind an `Arc`.
pub struct Store {
    path: PathBuf,
    reader: Mutex<Connection>,
    log: AuditLog,
    watermarks: WatermarkStore,
    writer: Mutex<Option<JoinHandle<()>>>,
    _checkpointer: checkpoint::Checkpointer,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// The wall clock ([`keyguard_chain::clock::now_ms`], the one clock reading) as SQLite's signed
/// INTEGER, the type of every stored timestamp.
pub fn now_ms() -> i64 {
    i64::try_from(keyguard_chain::clock::now_ms()).unwrap_or(i64::MAX)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn create_parent(path: &Path) -> Result<(), StoreError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

impl Store {
    /// Opens (creating if needed) the database at `path`, applies migrations and starts the
    /// audit writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        create_parent(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) == Err(rustix::io::Errno::ROFS)
            {
                return Err(StoreError::ReadOnly {
                    path: dir.to_path_buf(),
                });
            }
        }
        let existed = path.exists();
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut wconn = Connection::open(path).map_err(open_err)?;
        #[cfg(unix)]
        if !existed {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let mode: String = wconn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "{}: journal_mode is {mode}, WAL required",
                path.display()
            )));
        }
        configure(&wconn).map_err(open_err)?;
        checkpoint::disable_auto(&wconn).map_err(open_err)?;
        migrations::migrate(&mut wconn)?;
        let reader = Connection::open(path).map_err(open_err)?;
        configure(&reader).map_err(open_err)?;
        let wm = Connection::open(path).map_err(open_err)?;
        configure(&wm).map_err(open_err)?;
        checkpoint::disable_auto(&wm).map_err(open_err)?;
        let checkpointer = checkpoint::Checkpointer::start(path)?;
        let (log, handle) = writer::spawn(wconn)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        log.configure_bounds(
            AuditLimits::default(),
            Some(dir.map_or_else(|| PathBuf::from("."), Path::to_path_buf)),
        );
        Ok(Store {
            path: path.to_path_buf(),
            reader: Mutex::new(reader),
            log,
            watermarks: WatermarkStore::new(wm),
            writer: Mutex::new(Some(handle)),
            _checkpointer: checkpointer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A cheap, cloneable handle for appending audit entries.
    pub fn audit_log(&self) -> AuditLog {
        self.log.clone()
    }

    /// The CometBFT watermark table (its own connection; blocking calls).
    pub fn watermarks(&self) -> WatermarkStore {
        self.watermarks.clone()
    }

    /// Schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        migrations::current_version(&self.reader())
    }

    /// The newest `limit` audit rows, newest first. Blocking (use `spawn_blocking` in async code).
    pub fn recent_audit(&self, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        read::recent(&self.reader(), limit)
    }

    /// Audit rows matching `filter`. Blocking.
    pub fn query_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        read::query(&self.reader(), filter)
    }

    /// A connection for control state (users, approvals, kill switch).
    pub fn state_db(&self) -> Result<StateDb, StoreError> {
        StateDb::open(&self.path)
    }

    /// Velocity rows counted at or after `since_ms` (to rebuild counters at start). Blocking.
    pub fn velocity_since(&self, since_ms: i64) -> Result<Vec<VelocityRow>, StoreError> {
        ledger::velocity_since(&self.reader(), since_ms)
    }

    /// Every signed EVM nonce (to rebuild nonce rules at start). Blocking.
    pub fn evm_nonces(&self) -> Result<Vec<NonceRow>, StoreError> {
        ledger::nonces(&self.reader())
    }

    /// Every signet block watermark (to restore the tips at start). Blocking.
    pub fn signet_tips(&self) -> Result<Vec<SignetRow>, StoreError> {
        ledger::signet_tips(&self.reader())
    }

    /// Recomputes the whole hash chain from a consistent snapshot. Blocking, O(rows).
    pub fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        read::verify(&self.reader())
    }

    /// Verifies the chain of the database at `path`, opened read-only, without starting a writer
    /// or migrating (for `keyguard audit verify` against a copy or a live daemon's file).
    pub fn verify_path(path: &Path) -> Result<AuditVerification, StoreError> {
        read::verify(&Self::open_read_only(path)?)
    }

    /// Checks the database at `path` (opened read-only) against anchor lines signed by `key`:
    /// finds truncation, rollback to an older copy, and a forked chain.
    pub fn check_anchors_path(
        path: &Path,
        anchors: &str,
        key: &ed25519_dalek::VerifyingKey,
    ) -> Result<anchor::AnchorReport, anchor::AnchorError> {
        anchor::check(&Self::open_read_only(path)?, anchors, key)
    }

    /// `(seq, hash)` of the newest audit row (`(0, GENESIS_HASH)` when empty).
    pub fn audit_head(&self) -> Result<(i64, [u8; 32]), StoreError> {
        read::head(&self.reader())
    }

    /// Audit rows matching `filter` from the database at `path`, opened read-only.
    pub fn query_path(path: &Path, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        read::query(&Self::open_read_only(path)?, filter)
    }

    fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let (found, known) = (
            migrations::current_version(&conn)?,
            migrations::known_version(),
        );
        if found > known {
            return Err(StoreError::TooNew { found, known });
        }
        Ok(conn)
    }

    /// Stops the writer after everything queued has been written, and waits for its thread.
    /// Blocking; later appends through any handle fail with [`StoreError::Unavailable`].
    pub fn close(self) -> Result<(), StoreError> {
        self.log.send_shutdown();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        match handle {
            Some(h) => h
                .join()
                .map_err(|_| StoreError::Unavailable("audit writer panicked".into())),
            None => Ok(()),
        }
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}
