//! CometBFT watermarks: the last signed height/round/step per (chain, key), on their own
//! connection so a watermark commit never queues behind audit batches.
//!
//! The signer's advance is ONE conditional statement that checks and writes at once (`INSERT
//! ... ON CONFLICT DO UPDATE ... WHERE (height, round, step) < new`): the row is the fence.
//! Two processes on one SQLite file, or several instances sharing PostgreSQL, deciding the same
//! height/round/step at the same moment get one success and one [`WatermarkError::Stale`]
//! carrying the row that won; no lease, lock or clock is involved. A state imported by
//! `keyguard state import` while the daemon runs can never be silently undone either.

use std::sync::{Arc, MutexGuard};

use keyguard_cometbft::{SignedState, Step};

use super::db::{vals, Conn, Row, Shared, Tx};
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

/// Handle to the watermark table. Cheap to clone; blocking (call from `spawn_blocking`).
#[derive(Clone)]
pub struct WatermarkStore {
    conn: Arc<Shared>,
}

impl std::fmt::Debug for WatermarkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatermarkStore")
    }
}

const COLUMNS: &str = "height, round, step, block_id, sign_bytes, signature, ext_signature, \
                       source, updated_ms, released_height, released_round, released_step, \
                       chain_id, key_id";

fn read_row(tx: &Tx<'_>, chain_id: &str, key_id: &str) -> Result<Option<WatermarkRow>, StoreError> {
    tx.query_opt(
        &format!("SELECT {COLUMNS} FROM cometbft_watermarks WHERE chain_id = $1 AND key_id = $2"),
        vals![chain_id, key_id],
    )?
    .map(|r| row(&r))
    .transpose()
}

fn step_at(r: &Row, i: usize) -> Result<Step, StoreError> {
    let step_n: i64 = r.get(i)?;
    Step::from_number(step_n)
        .ok_or_else(|| StoreError::Unavailable(format!("watermark row holds step {step_n}")))
}

fn row(r: &Row) -> Result<WatermarkRow, StoreError> {
    let step = step_at(r, 2)?;
    Ok(WatermarkRow {
        chain_id: r.get(12)?,
        key_id: r.get(13)?,
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
#[cfg(feature = "fault-injection")]
fn write_row(
    tx: &Tx<'_>,
    chain_id: &str,
    key_id: &str,
    s: &SignedState,
    source: &str,
) -> Result<(), StoreError> {
    upsert(tx, chain_id, key_id, s, source, "")?;
    Ok(())
}

/// The one statement every watermark write is; `fence` is an extra `WHERE` on the existing
/// row (empty: unconditional). Returns whether a row was written.
fn upsert(
    tx: &Tx<'_>,
    chain_id: &str,
    key_id: &str,
    s: &SignedState,
    source: &str,
    fence: &str,
) -> Result<bool, StoreError> {
    let (sql, params) = upsert_statement(chain_id, key_id, s, source, fence);
    Ok(!tx.query(&sql, &params)?.is_empty())
}

/// The statement of [`upsert`]; it returns a row exactly when it wrote.
fn upsert_statement(
    chain_id: &str,
    key_id: &str,
    s: &SignedState,
    source: &str,
    fence: &str,
) -> (String, Vec<super::db::Val>) {
    let signer = source == "signer";
    (
        format!(
            "INSERT INTO cometbft_watermarks AS w (chain_id, key_id, height, round, step, \
                block_id, sign_bytes, signature, ext_signature, source, updated_ms, \
                released_height, released_round, released_step)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (chain_id, key_id) DO UPDATE SET height = excluded.height, \
                round = excluded.round, step = excluded.step, block_id = excluded.block_id, \
                sign_bytes = excluded.sign_bytes, signature = excluded.signature, \
                ext_signature = excluded.ext_signature, source = excluded.source, \
                updated_ms = excluded.updated_ms,
                released_height = CASE WHEN $15 = 1 THEN excluded.height ELSE w.released_height END,
                released_round = CASE WHEN $15 = 1 THEN excluded.round ELSE w.released_round END,
                released_step = CASE WHEN $15 = 1 THEN excluded.step ELSE w.released_step END
             {fence}
             RETURNING height"
        ),
        vals![
            chain_id,
            key_id,
            s.height,
            s.round,
            s.step.number(),
            &s.block_id,
            &s.sign_bytes,
            &s.signature,
            &s.extension_signature,
            source,
            now_ms(),
            if signer { s.height } else { 0 },
            if signer { s.round } else { 0 },
            if signer { s.step.number() } else { 0 },
            signer
        ]
        .to_vec(),
    )
}

/// Strictly ahead, or the same height/round/step with the same sign bytes (a re-sent vote
/// whose extension is signed again).
const ADVANCE_FENCE: &str = "WHERE (w.height, w.round, w.step) < (excluded.height, excluded.round, \
                             excluded.step) OR ((w.height, w.round, w.step) = (excluded.height, \
                             excluded.round, excluded.step) AND w.sign_bytes = excluded.sign_bytes)";

/// The signer's advance as one statement (for a pipelined batch): a row back means it wrote.
/// `None` when a fault hook replaces the statement (test builds).
pub(crate) fn advance_statement(
    chain_id: &str,
    key_id: &str,
    next: &SignedState,
) -> Option<(String, Vec<super::db::Val>)> {
    #[cfg(feature = "fault-injection")]
    if super::fault::watermark(next).is_some() || super::fault::is(super::fault::Fault::SplitFence)
    {
        return None;
    }
    Some(upsert_statement(
        chain_id,
        key_id,
        next,
        "signer",
        ADVANCE_FENCE,
    ))
}

/// The check-and-write of [`WatermarkStore::advance`] inside a caller's transaction (the audit
/// writer's, so the watermark and the signature's audit row share one commit and one fsync).
pub(crate) fn advance_in(
    tx: &Tx<'_>,
    chain_id: &str,
    key_id: &str,
    next: &SignedState,
) -> Result<(), WatermarkError> {
    // FAULT HOOK watermark: skip-watermark / watermark-back / split-fence (test builds only,
    // src/store/fault.rs).
    #[cfg(feature = "fault-injection")]
    if let Some(instead) = super::fault::watermark(next) {
        return Ok(instead.map_or(Ok(()), |s| write_row(tx, chain_id, key_id, &s, "signer"))?);
    }
    #[cfg(feature = "fault-injection")]
    if super::fault::is(super::fault::Fault::SplitFence) {
        // The Horcrux bug on purpose: check in one statement, write in another.
        let current = read_row(tx, chain_id, key_id)?;
        if current.is_some_and(|c| next.hrs() <= c.state.hrs()) {
            return Err(stale(tx, chain_id, key_id)?);
        }
        std::thread::sleep(super::fault::SPLIT_GAP);
        return Ok(write_row(tx, chain_id, key_id, next, "signer")?);
    }
    if upsert(tx, chain_id, key_id, next, "signer", ADVANCE_FENCE)? {
        Ok(())
    } else {
        Err(stale(tx, chain_id, key_id)?)
    }
}

/// The row that won, as the error a losing writer gets.
fn stale(tx: &Tx<'_>, chain_id: &str, key_id: &str) -> Result<WatermarkError, StoreError> {
    let c = read_row(tx, chain_id, key_id)?
        .map(|r| r.state)
        .unwrap_or_default();
    Ok(WatermarkError::Stale {
        chain_id: chain_id.into(),
        key_id: key_id.into(),
        height: c.height,
        round: c.round,
        step: c.step,
        current: Box::new(c),
    })
}

impl WatermarkStore {
    pub(crate) fn new(conn: Conn) -> Self {
        WatermarkStore {
            conn: Arc::new(Shared::new(conn)),
        }
    }

    fn conn(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock()
    }

    /// Whether several instances share these rows (PostgreSQL): no cached copy can be trusted.
    pub fn is_shared(&self) -> bool {
        self.conn().dialect() == super::db::Dialect::Postgres
    }

    /// The stored watermark, if any.
    pub fn load(&self, chain_id: &str, key_id: &str) -> Result<Option<WatermarkRow>, StoreError> {
        self.conn().with(|t| read_row(t, chain_id, key_id))
    }

    /// Every stored watermark.
    pub fn list(&self) -> Result<Vec<WatermarkRow>, StoreError> {
        self.conn().with(|t| {
            t.query(
                &format!("SELECT {COLUMNS} FROM cometbft_watermarks ORDER BY chain_id, key_id"),
                &[],
            )?
            .iter()
            .map(row)
            .collect()
        })
    }

    /// Durably moves the watermark to `next`, which must be strictly ahead of the stored row or
    /// at the same height/round/step with the same sign bytes. Returns after the commit.
    pub fn advance(
        &self,
        chain_id: &str,
        key_id: &str,
        next: &SignedState,
    ) -> Result<(), WatermarkError> {
        self.conn()
            .transaction(|tx| advance_in(tx, chain_id, key_id, next))
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
        self.conn().transaction(|tx| {
            let current = read_row(tx, chain_id, key_id)?.map(|r| r.state);
            // Raise only, in the writing statement itself.
            let fence = "WHERE (w.height, w.round, w.step) < (excluded.height, excluded.round, \
                         excluded.step)";
            if !upsert(tx, chain_id, key_id, state, source, fence)? {
                let c = read_row(tx, chain_id, key_id)?
                    .map(|r| r.state)
                    .unwrap_or_default();
                return Err(WatermarkError::Backwards(format!(
                    "{chain_id}/{key_id}: stored {}/{}/{:?} is not below the imported {}/{}/{:?}",
                    c.height, c.round, c.step, state.height, state.round, state.step
                )));
            }
            Ok(current)
        })
    }

    /// Lowers a watermark (see [`repair_in`]); returns the state it replaced.
    pub fn repair(
        &self,
        chain_id: &str,
        key_id: &str,
        height: i64,
        source: &str,
    ) -> Result<SignedState, WatermarkError> {
        self.conn()
            .transaction(|tx| repair_in(tx, chain_id, key_id, height, source))
    }
}

/// Lowers a watermark to `height` (round 0, before any step) after a node pushed it ahead of
/// the chain or a wrong state was imported. Refuses a height at or below the highest height
/// this instance released a signature for (signing there again could be a double sign), a row
/// that does not exist, and anything not lower than the current watermark (raising is `state
/// import`'s job). Returns the state it replaced; the caller commits.
pub(crate) fn repair_in(
    tx: &Tx<'_>,
    chain_id: &str,
    key_id: &str,
    height: i64,
    source: &str,
) -> Result<SignedState, WatermarkError> {
    let Some(current) = read_row(tx, chain_id, key_id)? else {
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
    // Lower only if the row is still the one judged above (another instance may have signed
    // since): the judgement is repeated in the writing statement.
    let (h, r, st) = current.state.hrs();
    let fence = format!(
        "WHERE w.height = {h} AND w.round = {r} AND w.step = {} AND w.released_height < {height}",
        st.number()
    );
    if !upsert(tx, chain_id, key_id, &next, source, &fence)? {
        return Err(WatermarkError::Repair(format!(
            "{chain_id}/{key_id}: the watermark moved while the repair was judged; try again"
        )));
    }
    Ok(current.state)
}
