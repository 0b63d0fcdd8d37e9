//! Conflict-guard state that must be durable before a signature leaves: velocity debits,
//! signed EVM nonces and CometBFT watermarks. Rows are written by the audit writer in the *same transaction* as the
//! audit row of the signature they belong to, so either both are on disk or neither is (and a
//! signature is released only after that commit).

use rusqlite::{params, Connection, Transaction};

use super::StoreError;

/// A state row committed together with an audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateWrite {
    /// An amount counted against a rolling-window limit.
    Velocity {
        /// Key the limit belongs to.
        key_id: String,
        /// Counter name (limit name, `@destination` for per-destination limits).
        counter: String,
        /// When it was counted (Unix ms).
        ts_ms: i64,
        /// Decimal amount in base units.
        amount: String,
    },
    /// The transaction a nonce now belongs to (replaces an earlier one on replacement).
    EvmNonce {
        /// Signing key.
        key_id: String,
        /// EIP-155 chain id.
        chain_id: u64,
        /// Account nonce.
        nonce: u64,
        /// Signing hash of the transaction.
        sighash: [u8; 32],
        /// `maxFeePerGas` / `gasPrice`, decimal.
        max_fee: String,
        /// `maxPriorityFeePerGas` (or gas price), decimal.
        tip: String,
    },
    /// A CometBFT watermark moving from `expected` (what the signer decided against; `None`:
    /// no row) to `next`. Checked in the transaction: if the row is not `expected` or `next`
    /// would lower it, the entry fails with [`StoreError::StateConflict`] and nothing of it is
    /// written.
    Watermark {
        /// CometBFT chain id.
        chain_id: String,
        /// Consensus key.
        key_id: String,
        /// The row the decision was made against.
        expected: Option<Box<keyguard_cometbft::SignedState>>,
        /// The new watermark.
        next: Box<keyguard_cometbft::SignedState>,
    },
    /// A Bitcoin transaction as signed and released, kept so an operator can show and
    /// broadcast it (a locked transaction holds its coins until it is mined or released).
    BitcoinTx {
        /// Transaction id.
        txid: String,
        /// Seed key.
        key_id: String,
        /// When it was signed (Unix ms).
        ts_ms: i64,
        /// The signed PSBT as returned (base64).
        psbt: String,
        /// The network transaction when keyguard finalized it (hex).
        tx_hex: Option<String>,
    },
}

/// A velocity row as loaded at start.
#[derive(Debug, Clone)]
pub struct VelocityRow {
    pub key_id: String,
    pub counter: String,
    pub ts_ms: i64,
    pub amount: String,
}

/// A nonce row as loaded at start.
#[derive(Debug, Clone)]
pub struct NonceRow {
    pub key_id: String,
    pub chain_id: u64,
    pub nonce: u64,
    pub sighash: [u8; 32],
    pub max_fee: String,
    pub tip: String,
}

pub(crate) fn write(
    tx: &Transaction<'_>,
    request_id: &str,
    w: &StateWrite,
) -> Result<(), StoreError> {
    match w {
        StateWrite::Watermark {
            chain_id,
            key_id,
            expected,
            next,
        } => {
            super::watermarks::advance_in(tx, chain_id, key_id, expected.as_deref(), next)
                .map_err(|e| match e {
                    super::WatermarkError::Store(e) => e,
                    conflict => StoreError::StateConflict(conflict.to_string()),
                })?;
        }
        StateWrite::Velocity {
            key_id,
            counter,
            ts_ms,
            amount,
        } => {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO velocity_events (key_id, counter, ts_ms, amount, request_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            stmt.execute(params![key_id, counter, ts_ms, amount, request_id])?;
        }
        StateWrite::BitcoinTx {
            txid,
            key_id,
            ts_ms,
            psbt,
            tx_hex,
        } => {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO bitcoin_signed_txs \
                 (txid, key_id, ts_ms, request_id, psbt, tx_hex) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            stmt.execute(params![txid, key_id, ts_ms, request_id, psbt, tx_hex])?;
        }
        StateWrite::EvmNonce {
            key_id,
            chain_id,
            nonce,
            sighash,
            max_fee,
            tip,
        } => {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO evm_nonces \
                 (key_id, chain_id, nonce, sighash, max_fee, tip, request_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            stmt.execute(params![
                key_id,
                *chain_id as i64,
                *nonce as i64,
                &sighash[..],
                max_fee,
                tip,
                request_id
            ])?;
        }
    }
    Ok(())
}

pub(crate) fn velocity_since(
    conn: &Connection,
    since_ms: i64,
) -> Result<Vec<VelocityRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT key_id, counter, ts_ms, amount FROM velocity_events WHERE ts_ms >= ?1 ORDER BY id",
    )?;
    let rows = stmt
        .query_map([since_ms], |r| {
            Ok(VelocityRow {
                key_id: r.get(0)?,
                counter: r.get(1)?,
                ts_ms: r.get(2)?,
                amount: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(crate) fn nonces(conn: &Connection) -> Result<Vec<NonceRow>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT key_id, chain_id, nonce, sighash, max_fee, tip FROM evm_nonces")?;
    let rows = stmt
        .query_map([], |r| {
            let hash: Vec<u8> = r.get(3)?;
            Ok(NonceRow {
                key_id: r.get(0)?,
                chain_id: r.get::<_, i64>(1)? as u64,
                nonce: r.get::<_, i64>(2)? as u64,
                sighash: hash.try_into().unwrap_or([0u8; 32]),
                max_fee: r.get(4)?,
                tip: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
