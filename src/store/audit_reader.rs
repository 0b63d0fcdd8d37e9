//! Read-only access to the shared store's audit log, for auditors and `keyguard audit` on a
//! PostgreSQL store: no migration, no writer, no DDL and no row written, so a role granted
//! `SELECT` alone is enough and reading the log never changes it.

use std::sync::MutexGuard;

use super::db::{Conn, Dialect, PgLink, Shared};
use super::{anchor, migrations, read, AuditFilter, AuditRow, AuditVerification, StoreError};
use crate::config::PgSettings;

/// A read-only connection to the shared store's audit log.
pub struct AuditReader {
    conn: Shared,
}

impl AuditReader {
    /// Connects and checks that the schema is the one this keyguard reads: an older one is
    /// migrated by starting an instance, never by a reader.
    pub fn open_postgres(settings: &PgSettings) -> Result<AuditReader, StoreError> {
        let mut conn = Conn::Pg(PgLink::new(settings.clone()));
        let found = migrations::version_of(&mut conn)?;
        let known = migrations::known_version_of(Dialect::Postgres);
        if found > known {
            return Err(StoreError::TooNew { found, known });
        }
        if found < known {
            return Err(StoreError::Unavailable(format!(
                "the database holds schema version {found}, this keyguard reads {known}: \
                 start a keyguard instance on it to migrate (a reader never does)"
            )));
        }
        Ok(AuditReader {
            conn: Shared::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock()
    }

    /// Audit rows matching `filter`.
    pub fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        self.conn().with(|t| read::query(t, filter))
    }

    /// Recomputes the whole hash chain.
    pub fn verify(&self) -> Result<AuditVerification, StoreError> {
        self.conn().transaction(read::verify)
    }

    /// Checks the log against anchor lines signed by `key`.
    pub fn check_anchors(
        &self,
        anchors: &str,
        key: &ed25519_dalek::VerifyingKey,
    ) -> Result<anchor::AnchorReport, anchor::AnchorError> {
        self.conn()
            .with(|t| Ok::<_, StoreError>(anchor::check(t, anchors, key)))?
    }
}
