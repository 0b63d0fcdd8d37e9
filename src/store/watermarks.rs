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
    /// The highest height/round/step this instance released a signature for (0: none); a
    /// repair never moves the watermark to or below its height.
    pub released: (i64, i32, Step),
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
    /// A repair that would reopen heights this instance signed, or is not a repair.
    #[error("{0}")]
    Repair(String),
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
                updated_ms, released_height, released_round, released_step
         FROM cometbft_watermarks WHERE chain_id = ?1 AND key_id = ?2",
        params![chain_id, key_id],
        |r| row(chain_id.to_owned(), key_id.to_owned(), r),
    )
    .optional()
}

fn step_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Step> {
    let step_n: i64 = r.get(i)?;
    Step::from_number(step_n).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Integer,
            format!("step {step_n}").into(),
        )
    })
}

fn row(chain_id: String, key_id: String, r: &rusqlite::Row<'_>) -> rusqlite::Result<WatermarkRow> {
    let step = step_at(r, 2)?;
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
        released: (r.get(9)?, r.get(10)?, step_at(r, 11)?),
    })
}

/// Writes a row; the signer's writes (`source = "signer"`) also record the state as released
/// (its signature leaves the process only after this commits).
fn write_row(
    conn: &Connection,
    chain_id: &str,
    key_id: &str,
    s: &SignedState,
    source: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO cometbft_watermarks (chain_id, key_id, height, round, step, block_id,
            sign_bytes, signature, ext_signature, source, updated_ms, released_height,
            released_round, released_step)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,
            CASE WHEN ?10 = 'signer' THEN ?3 ELSE 0 END,
            CASE WHEN ?10 = 'signer' THEN ?4 ELSE 0 END,
            CASE WHEN ?10 = 'signer' THEN ?5 ELSE 0 END)
         ON CONFLICT (chain_id, key_id) DO UPDATE SET height = ?3, round = ?4, step = ?5,
            block_id = ?6, sign_bytes = ?7, signature = ?8, ext_signature = ?9, source = ?10,
            updated_ms = ?11,
            released_height = CASE WHEN ?10 = 'signer' THEN ?3 ELSE released_height END,
            released_round = CASE WHEN ?10 = 'signer' THEN ?4 ELSE released_round END,
            released_step = CASE WHEN ?10 = 'signer' THEN ?5 ELSE released_step END",
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
    // FAULT HOOK watermark: skip-watermark / watermark-back (test builds only, src/store/fault.rs).
    #[cfg(feature = "fault-injection")]
    if let Some(instead) = super::fault::watermark(next) {
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
                    updated_ms, released_height, released_round, released_step, chain_id, key_id
             FROM cometbft_watermarks ORDER BY chain_id, key_id",
        )?;
        let rows = stmt
            .query_map([], |r| row(r.get(12)?, r.get(13)?, r))?
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

    /// Lowers a watermark (see [`repair_in`]); returns the state it replaced.
    pub fn repair(
        &self,
        chain_id: &str,
        key_id: &str,
        height: i64,
        source: &str,
    ) -> Result<SignedState, WatermarkError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let old = repair_in(&tx, chain_id, key_id, height, source)?;
        tx.commit()?;
        Ok(old)
    }
}

/// Lowers a watermark to `height` (round 0, before any step) after a node pushed it ahead of
/// the chain or a wrong state was imported. Refuses a height at or below the highest height
/// this instance released a signature for (signing there again could be a double sign), a row
/// that does not exist, and anything not lower than the current watermark (raising is `state
/// import`'s job). Returns the state it replaced; the caller commits.
pub(crate) fn repair_in(
    conn: &Connection,
    chain_id: &str,
    key_id: &str,
    height: i64,
    source: &str,
) -> Result<SignedState, WatermarkError> {
    let Some(current) = read_row(conn, chain_id, key_id)? else {
        return Err(WatermarkError::Repair(format!(
            "no watermark for {chain_id}/{key_id}"
        )));
    };
    let (released, ..) = current.released;
    if height <= released {
        return Err(WatermarkError::Repair(format!(
            "{chain_id}/{key_id}: this instance released a signature at height {released}; \
             a repair must stay above it (asked {height})"
        )));
    }
    let next = SignedState {
        height,
        round: 0,
        step: Step::None,
        ..SignedState::default()
    };
    if next.hrs() >= current.state.hrs() {
        return Err(WatermarkError::Repair(format!(
            "{chain_id}/{key_id}: {height} is not below the watermark {}; use state import \
             to raise it",
            current.state.height
        )));
    }
    write_row(conn, chain_id, key_id, &next, source)?;
    Ok(current.state)
}
