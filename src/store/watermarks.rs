//! CometBFT watermarks: the last signed height/round/step per (chain, key), on their own
//! connection so a watermark commit never queues behind audit batches.
//!
//! Every write is one `BEGIN IMMEDIATE` transaction (synchronous=FULL, so the WAL is fsynced
//! before `COMMIT` returns) that re-reads the row and refuses to move it backwards or to
//! overwrite a row other than the one the caller decided against: a state imported by
//! `keyguard state import` while the daemon runs, or another process on the same file, can
//! never be silently undone.

use std::sync::{Arc, Mutex, MutexGuard};

use keyguard_cometbft::{SignedState, Step};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{now_ms, StoreError};

/// One stored watermark row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatermarkRow {
    /// CometBFT chain id.
    pub chain_id: String,
    /// keyguard key id.
    pub key_id: String,
    /// The state.
    pub state: SignedState,
    /// Who wrote it last (`signer`, `import:<file>`).
    pub source: String,
    /// When, in Unix milliseconds.
    pub updated_ms: i64,
}

/// Why a watermark write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    /// The row changed since the caller read it; nothing was written.
    #[error("watermark of {chain_id}/{key_id} changed underneath (now {height}/{round}/{step:?})")]
    Stale {
        /// Chain.
        chain_id: String,
        /// Key.
        key_id: String,
        /// Current height.
        height: i64,
        /// Current round.
        round: i32,
        /// Current step.
        step: Step,
        /// The current row.
        current: Box<SignedState>,
    },
    /// The write would move the watermark backwards.
    #[error("refusing to move the watermark of {0} backwards")]
    Backwards(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for WatermarkError {
    fn from(e: rusqlite::Error) -> Self {
        WatermarkError::Store(StoreError::Sql(e))
    }
}

/// Handle to the watermark table. Cheap to clone; blocking (call from `spawn_blocking`).
#[derive(Clone)]
pub struct WatermarkStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for WatermarkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatermarkStore")
    }
}

fn read_row(
    conn: &Connection,
    chain_id: &str,
    key_id: &str,
) -> rusqlite::Result<Option<WatermarkRow>> {
    conn.query_row(
        "SELECT height, round, step, block_id, sign_bytes, signature, ext_signature, source,
                updated_ms
         FROM cometbft_watermarks WHERE chain_id = ?1 AND key_id = ?2",
        params![chain_id, key_id],
        |r| row(chain_id.to_owned(), key_id.to_owned(), r),
    )
    .optional()
}

fn row(chain_id: String, key_id: String, r: &rusqlite::Row<'_>) -> rusqlite::Result<WatermarkRow> {
    let step_n: i64 = r.get(2)?;
    let step = Step::from_number(step_n).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Integer,
            format!("step {step_n}").into(),
        )
    })?;
    Ok(WatermarkRow {
        chain_id,
        key_id,
        state: SignedState {
            height: r.get(0)?,
            round: r.get(1)?,
            step,
            block_id: r.get(3)?,
            sign_bytes: r.get(4)?,
            signature: r.get(5)?,
            extension_signature: r.get(6)?,
        },
        source: r.get(7)?,
        updated_ms: r.get(8)?,
    })
}

fn write_row(
    conn: &Connection,
    chain_id: &str,
    key_id: &str,
    s: &SignedState,
    source: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO cometbft_watermarks (chain_id, key_id, height, round, step, block_id,
            sign_bytes, signature, ext_signature, source, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (chain_id, key_id) DO UPDATE SET height = ?3, round = ?4, step = ?5,
            block_id = ?6, sign_bytes = ?7, signature = ?8, ext_signature = ?9, source = ?10,
            updated_ms = ?11",
        params![
            chain_id,
            key_id,
            s.height,
            s.round,
            s.step.number(),
            s.block_id,
            s.sign_bytes,
            s.signature,
            s.extension_signature,
            source,
            now_ms()
        ],
    )?;
    Ok(())
}

/// The check-and-write of [`WatermarkStore::advance`] inside a caller's transaction (the audit
/// writer's, so the watermark and the signature's audit row share one commit and one fsync).
pub(crate) fn advance_in(
    conn: &Connection,
    chain_id: &str,
    key_id: &str,
    expected: Option<&SignedState>,
    next: &SignedState,
) -> Result<(), WatermarkError> {
    // FAULT HOOK watermark: skip-watermark / watermark-back (test builds only, src/fault.rs).
    #[cfg(feature = "fault-injection")]
    if let Some(instead) = crate::fault::watermark(next) {
        return Ok(instead.map_or(Ok(()), |s| write_row(conn, chain_id, key_id, &s, "signer"))?);
    }
    let current = read_row(conn, chain_id, key_id)?.map(|r| r.state);
    if current.as_ref() != expected {
        let c = current.unwrap_or_default();
        return Err(WatermarkError::Stale {
            chain_id: chain_id.into(),
            key_id: key_id.into(),
            height: c.height,
            round: c.round,
            step: c.step,
            current: Box::new(c),
        });
    }
    if let Some(c) = &current {
        if next.hrs() < c.hrs() {
            return Err(WatermarkError::Backwards(format!("{chain_id}/{key_id}")));
        }
    }
    write_row(conn, chain_id, key_id, next, "signer")?;
    Ok(())
}

impl WatermarkStore {
    pub(crate) fn new(conn: Connection) -> Self {
        WatermarkStore {
            conn: Arc::new(Mutex::new(conn)),
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored watermark, if any.
    pub fn load(&self, chain_id: &str, key_id: &str) -> Result<Option<WatermarkRow>, StoreError> {
        Ok(read_row(&self.conn(), chain_id, key_id)?)
    }

    /// Every stored watermark.
    pub fn list(&self) -> Result<Vec<WatermarkRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT height, round, step, block_id, sign_bytes, signature, ext_signature, source,
                    updated_ms, chain_id, key_id
             FROM cometbft_watermarks ORDER BY chain_id, key_id",
        )?;
        let rows = stmt
            .query_map([], |r| row(r.get(9)?, r.get(10)?, r))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Durably replaces `expected` (None: no row) by `next`, which must be strictly ahead of it
    /// or at the same height/round/step (a re-signed extension). Returns after the fsync.
    pub fn advance(
        &self,
        chain_id: &str,
        key_id: &str,
        expected: Option<&SignedState>,
        next: &SignedState,
    ) -> Result<(), WatermarkError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        advance_in(&tx, chain_id, key_id, expected, next)?;
        tx.commit()?;
        Ok(())
    }

    /// Imports a state from a file signer; refuses to lower an existing watermark (an operator
    /// importing an old backup must not reopen signed heights).
    pub fn import(
        &self,
        chain_id: &str,
        key_id: &str,
        state: &SignedState,
        source: &str,
    ) -> Result<Option<SignedState>, WatermarkError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = read_row(&tx, chain_id, key_id)?.map(|r| r.state);
        if let Some(c) = &current {
            if state.hrs() <= c.hrs() {
                return Err(WatermarkError::Backwards(format!(
                    "{chain_id}/{key_id}: stored {}/{}/{:?} is not below the imported {}/{}/{:?}",
                    c.height, c.round, c.step, state.height, state.round, state.step
                )));
            }
        }
        write_row(&tx, chain_id, key_id, state, source)?;
        tx.commit()?;
        Ok(current)
    }
}
