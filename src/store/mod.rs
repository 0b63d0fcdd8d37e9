//! The store: numbered migrations, the hash-chained append-only audit log and the safety state
//! committed with it, on SQLite (embedded default, one process) or PostgreSQL (shared by
//! several keyguard instances).
//!
//! One dedicated writer thread owns the write connection and commits audit entries in groups
//! (many callers share one commit); reads go through separate connections.

pub mod anchor;
mod approvals_sql;
mod audit;
mod audit_reader;
mod audit_stats;
mod chain_state;
mod checkpoint;
mod clients;
mod commit;
pub mod copy;
pub(crate) mod db;
mod eth2_batch;
pub mod eth2_slashing;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod health;
mod ledger;
mod migrations;
mod migrations_pg;
mod passkeys;
mod read;
mod signet_rows;
pub(crate) mod state;
pub mod tripwire;
mod watermarks;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_anchor;
#[cfg(test)]
mod tests_eth2;
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

use crate::config::PgSettings;
use db::{Conn, PgLink, Shared};

pub use audit::{AuditEntry, AuditReceipt, AuditRow, AuditVerification, Decision, GENESIS_HASH};
pub use audit_reader::AuditReader;
pub use audit_stats::{AuditCount, AuditCounter, ValidatorTip};
pub use chain_state::SignedTxRow;
pub use clients::ClientRow;
pub use ledger::{NonceRow, StateWrite, VelocityRow};
pub use passkeys::MAX_PASSKEYS_PER_USER;
pub use read::AuditFilter;
pub use signet_rows::SignetRow;
pub(crate) use state as state_sql;
pub use state::{ApprovalRecord, SecretKdfRow, StateDb, UserRecord};
pub use watermarks::{WatermarkError, WatermarkRow, WatermarkStore};
pub use writer::AuditLog;

pub use bounds::AuditLimits;

/// Connections [`Store::nonce_reader`] spreads its reads over.
const NONCE_READERS: usize = 4;

/// Reads one signed nonce's row (key, chain id, nonce) from the shared store.
pub type NonceReader =
    std::sync::Arc<dyn Fn(&str, u64, u64) -> Result<Option<NonceRow>, StoreError> + Send + Sync>;

/// Reads every signet tip again ([`Store::signet_tip_reader`]).
pub type SignetTipReader =
    std::sync::Arc<dyn Fn() -> Result<Vec<SignetRow>, StoreError> + Send + Sync>;

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
    /// PostgreSQL refused a statement (SQLSTATE `code`).
    #[error("database error {code}: {message}")]
    Postgres { code: String, message: String },
    /// A commit whose durability is unknown (PostgreSQL cancelled its wait for the
    /// synchronous standby, or the answer never came): treated as written, its signature
    /// withheld.
    #[error("commit not confirmed by the synchronous standby: {0}")]
    CommitUnknown(String),
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
    /// Set when the store is the shared PostgreSQL database.
    postgres: Option<PgSettings>,
    reader: Shared,
    log: AuditLog,
    watermarks: WatermarkStore,
    eth2: eth2_slashing::SlashingStore,
    writer: Mutex<Option<JoinHandle<()>>>,
    _checkpointer: Option<checkpoint::Checkpointer>,
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
        let wconn = Connection::open(path).map_err(open_err)?;
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
        let mut wconn = Conn::Sqlite(wconn);
        migrations::migrate_conn(&mut wconn)?;
        let reader = Connection::open(path).map_err(open_err)?;
        configure(&reader).map_err(open_err)?;
        let wm = Connection::open(path).map_err(open_err)?;
        configure(&wm).map_err(open_err)?;
        checkpoint::disable_auto(&wm).map_err(open_err)?;
        let eth2 = Connection::open(path).map_err(open_err)?;
        configure(&eth2).map_err(open_err)?;
        checkpoint::disable_auto(&eth2).map_err(open_err)?;
        let checkpointer = checkpoint::Checkpointer::start(path)?;
        let (log, handle) = writer::spawn(wconn, None)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        log.configure_bounds(
            AuditLimits::default(),
            Some(dir.map_or_else(|| PathBuf::from("."), Path::to_path_buf)),
        );
        Ok(Store {
            path: path.to_path_buf(),
            postgres: None,
            reader: Shared::new(Conn::Sqlite(reader)),
            log,
            watermarks: WatermarkStore::new(Conn::Sqlite(wm)),
            eth2: eth2_slashing::SlashingStore::new(Conn::Sqlite(eth2)),
            writer: Mutex::new(Some(handle)),
            _checkpointer: Some(checkpointer),
        })
    }

    /// Connects to the shared PostgreSQL store, applies its migrations and starts the audit
    /// writer (its own connection, as are reads, watermarks and control state).
    ///
    /// `tripwire_dir` (the data directory) holds this instance's record of what it released
    /// ([`tripwire`]); `None` only for tools that never sign (audit readers, tests).
    pub fn open_postgres(
        settings: &PgSettings,
        tripwire_dir: Option<&Path>,
    ) -> Result<Store, StoreError> {
        let link = || Conn::Pg(PgLink::new(settings.clone()));
        let mut wconn = link();
        migrations::migrate_conn(&mut wconn)?;
        let wire = match tripwire_dir {
            Some(dir) => {
                create_parent(&dir.join(tripwire::FILE))?;
                Some(std::sync::Arc::new(tripwire::Tripwire::open(dir)?))
            }
            None => None,
        };
        let (log, handle) = writer::spawn(wconn, wire)?;
        log.configure_bounds(AuditLimits::default(), None);
        let hosts = settings.hosts.join(",");
        Ok(Store {
            path: PathBuf::from(format!(
                "postgresql://{}@{hosts}:{}/{}",
                settings.user, settings.port, settings.dbname
            )),
            postgres: Some(settings.clone()),
            reader: Shared::new(link()),
            log,
            watermarks: WatermarkStore::new(link()),
            eth2: eth2_slashing::SlashingStore::new(link()),
            writer: Mutex::new(Some(handle)),
            _checkpointer: None,
        })
    }

    /// Opens what `[store]` names: the SQLite file at `sqlite_path`, or PostgreSQL.
    pub fn open_configured(
        config: &crate::config::StoreConfig,
        sqlite_path: &Path,
    ) -> Result<Store, StoreError> {
        match (&config.backend, &config.postgres) {
            (crate::config::StoreBackend::Postgres, Some(pg)) => {
                #[allow(unused_mut)]
                let mut tripwire = sqlite_path.parent();
                // FAULT HOOK no-tripwire (test builds only, src/store/fault.rs).
                #[cfg(feature = "fault-injection")]
                if fault::is(fault::Fault::NoTripwire) {
                    tripwire = None;
                }
                Store::open_postgres(pg, tripwire)
            }
            (crate::config::StoreBackend::Postgres, None) => Err(StoreError::Unavailable(
                "store.backend = \"postgres\" needs a [store.postgres] table".into(),
            )),
            (crate::config::StoreBackend::Sqlite, _) => Store::open(sqlite_path),
        }
    }

    /// `keyguard store trust`: accepts the shared database's identity as it is now (after an
    /// operator repaired it) in the tripwire record of `data_dir`. Without `forget`, keys
    /// whose rows are still behind what this instance released are listed and nothing changes.
    pub fn trust_database(
        settings: &PgSettings,
        data_dir: &Path,
        forget: bool,
    ) -> Result<(tripwire::Identity, Vec<String>), StoreError> {
        let mut conn = Conn::Pg(PgLink::new(settings.clone()));
        conn.with(|t| {
            let id = tripwire::identity(t)?;
            let behind = tripwire::Tripwire::trust(data_dir, &id, forget, t)?;
            Ok((id, behind))
        })
    }

    /// For a shared store: a reader of one signed nonce's row, on its own connection. Another
    /// instance may have signed that nonce; deciding against the row (not only this process's
    /// memory) lets a replacement be judged and a conflict be refused before anything is
    /// signed. `None` for SQLite (this process is the only writer).
    pub fn nonce_reader(&self) -> Option<NonceReader> {
        let pg = self.postgres.as_ref()?;
        // A few connections, so concurrent requests do not queue behind one another's read.
        let conns: Vec<Shared> = (0..NONCE_READERS)
            .map(|_| Shared::new(Conn::Pg(PgLink::new(pg.clone()))))
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        Some(std::sync::Arc::new(
            move |key: &str, chain_id: u64, nonce: u64| {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % conns.len();
                conns[i]
                    .lock()
                    .with(|t| ledger::nonce(t, key, chain_id, nonce))
            },
        ))
    }

    /// Reads the signet tips on a connection of its own: an instance whose commit lost a
    /// height to another writer reloads them instead of refusing until it is restarted.
    pub fn signet_tip_reader(&self) -> Result<SignetTipReader, StoreError> {
        let conn = match &self.postgres {
            Some(pg) => Conn::Pg(PgLink::new(pg.clone())),
            None => {
                let c = Connection::open(&self.path).map_err(|source| StoreError::Open {
                    path: self.path.clone(),
                    source,
                })?;
                configure(&c)?;
                Conn::Sqlite(c)
            }
        };
        let conn = Shared::new(conn);
        Ok(std::sync::Arc::new(move || {
            conn.lock().with(signet_rows::tips)
        }))
    }

    /// The PostgreSQL settings when the store is shared (`None`: the SQLite file).
    pub fn postgres(&self) -> Option<&PgSettings> {
        self.postgres.as_ref()
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

    /// The Ethereum consensus slashing-protection tables (its own connection; blocking calls).
    pub fn eth2_slashing(&self) -> eth2_slashing::SlashingStore {
        self.eth2.clone()
    }

    /// Schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        migrations::version_of(&mut self.reader())
    }

    /// The newest `limit` audit rows, newest first. Blocking (use `spawn_blocking` in async code).
    pub fn recent_audit(&self, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        self.reader().with(|t| read::recent(t, limit))
    }

    /// Audit rows matching `filter`. Blocking.
    pub fn query_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        self.reader().with(|t| read::query(t, filter))
    }

    /// A connection for control state (users, approvals, kill switch).
    pub fn state_db(&self) -> Result<StateDb, StoreError> {
        match &self.postgres {
            Some(pg) => Ok(StateDb::from_conn(Conn::Pg(PgLink::new(pg.clone())))),
            None => StateDb::open(&self.path),
        }
    }

    /// Velocity rows counted at or after `since_ms` (to rebuild counters at start). Blocking.
    pub fn velocity_since(&self, since_ms: i64) -> Result<Vec<VelocityRow>, StoreError> {
        self.reader().with(|t| ledger::velocity_since(t, since_ms))
    }

    /// Every signed EVM nonce (to rebuild nonce rules at start). Blocking.
    pub fn evm_nonces(&self) -> Result<Vec<NonceRow>, StoreError> {
        self.reader().with(ledger::nonces)
    }

    /// Every signet block watermark (to restore the tips at start). Blocking.
    pub fn signet_tips(&self) -> Result<Vec<SignetRow>, StoreError> {
        self.reader().with(signet_rows::tips)
    }

    /// Recomputes the whole hash chain from a consistent snapshot. Blocking, O(rows).
    pub fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        self.reader().transaction(read::verify)
    }

    /// Verifies the chain of the database at `path`, opened read-only, without starting a writer
    /// or migrating (for `keyguard audit verify` against a copy or a live daemon's file).
    pub fn verify_path(path: &Path) -> Result<AuditVerification, StoreError> {
        read::verify(&db::Tx::Sqlite(&Self::open_read_only(path)?))
    }

    /// Checks the database at `path` (opened read-only) against anchor lines signed by `key`:
    /// finds truncation, rollback to an older copy, and a forked chain.
    pub fn check_anchors_path(
        path: &Path,
        anchors: &str,
        key: &ed25519_dalek::VerifyingKey,
    ) -> Result<anchor::AnchorReport, anchor::AnchorError> {
        anchor::check(&db::Tx::Sqlite(&Self::open_read_only(path)?), anchors, key)
    }

    /// Checks this store's log against anchor lines signed by `key` (any engine).
    pub fn check_anchors(
        &self,
        anchors: &str,
        key: &ed25519_dalek::VerifyingKey,
    ) -> Result<anchor::AnchorReport, anchor::AnchorError> {
        self.reader()
            .with(|t| Ok::<_, StoreError>(anchor::check(t, anchors, key)))?
    }

    /// `(seq, hash)` of the newest audit row (`(0, GENESIS_HASH)` when empty).
    pub fn audit_head(&self) -> Result<(i64, [u8; 32]), StoreError> {
        self.reader().with(read::head)
    }

    /// Audit rows matching `filter` from the database at `path`, opened read-only.
    pub fn query_path(path: &Path, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        read::query(&db::Tx::Sqlite(&Self::open_read_only(path)?), filter)
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

    fn reader(&self) -> MutexGuard<'_, Conn> {
        self.reader.lock()
    }
}
