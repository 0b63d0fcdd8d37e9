//! Chain state operators repair through the admin API (two admins each): a CometBFT watermark
//! lowered after a node pushed it ahead, a Bitcoin conflict-guard claim released, and the
//! Bitcoin transactions keyguard signed, kept so a locked one can be shown and broadcast.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now_ms, StateDb, StoreError, WatermarkError};

/// A Bitcoin transaction as keyguard signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignedTxRow {
    /// Transaction id.
    pub txid: String,
    /// Seed key.
    pub key_id: String,
    /// When (Unix ms).
    pub ts_ms: i64,
    /// The audit row's request id.
    pub request_id: String,
    /// The signed PSBT, base64.
    pub psbt: String,
    /// The network transaction, hex, when keyguard finalized it.
    pub tx_hex: Option<String>,
}

impl StateDb {
    /// Lowers a watermark ([`super::watermarks::repair_in`]); returns the old height.
    pub fn repair_watermark(
        &self,
        chain_id: &str,
        key_id: &str,
        height: i64,
        by: &str,
    ) -> Result<i64, WatermarkError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let old =
            super::watermarks::repair_in(&tx, chain_id, key_id, height, &format!("repair:{by}"))?;
        tx.commit()?;
        Ok(old.height)
    }

    /// Signed Bitcoin transactions of `key` (all keys: `None`), newest first, or one by txid.
    pub fn signed_bitcoin_txs(
        &self,
        key: Option<&str>,
        txid: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SignedTxRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT txid, key_id, ts_ms, request_id, psbt, tx_hex FROM bitcoin_signed_txs
             WHERE (?1 IS NULL OR key_id = ?1) AND (?2 IS NULL OR txid = ?2)
             ORDER BY ts_ms DESC LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![key, txid, limit as i64], |r| {
                Ok(SignedTxRow {
                    txid: r.get(0)?,
                    key_id: r.get(1)?,
                    ts_ms: r.get(2)?,
                    request_id: r.get(3)?,
                    psbt: r.get(4)?,
                    tx_hex: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Records that the claim of transaction `txid` on `outpoint` of `key` no longer blocks
    /// other spends; `false` if it was already released.
    pub fn release_bitcoin_claim(
        &self,
        key: &str,
        outpoint: &str,
        txid: &str,
        by: &str,
    ) -> Result<bool, StoreError> {
        let n = self.lock().execute(
            "INSERT OR IGNORE INTO bitcoin_claim_releases (key_id, outpoint, txid, released_ms,
                released_by) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key, outpoint, txid, now_ms(), by],
        )?;
        Ok(n == 1)
    }

    /// Whether the claim of `txid` on `outpoint` of `key` was released.
    pub fn bitcoin_claim_released(
        &self,
        key: &str,
        outpoint: &str,
        txid: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT 1 FROM bitcoin_claim_releases WHERE key_id = ?1 AND outpoint = ?2
                 AND txid = ?3",
                params![key, outpoint, txid],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}
