//! Chain state operators repair through the admin API (two admins each): a CometBFT watermark
//! lowered after a node pushed it ahead, a Bitcoin conflict-guard claim released, and the
//! Bitcoin transactions keyguard signed, kept so a locked one can be shown and broadcast.

use serde::Serialize;

use super::db::vals;

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
        let old = self.transaction(|tx| {
            super::watermarks::repair_in(tx, chain_id, key_id, height, &format!("repair:{by}"))
        })?;
        Ok(old.height)
    }

    /// Signed Bitcoin transactions of `key` (all keys: `None`), newest first, or one by txid.
    pub fn signed_bitcoin_txs(
        &self,
        key: Option<&str>,
        txid: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SignedTxRow>, StoreError> {
        // Empty text stands for "any" so the parameters have one type on both engines.
        self.rows(
            "SELECT txid, key_id, ts_ms, request_id, psbt, tx_hex FROM bitcoin_signed_txs
             WHERE ($1 = '' OR key_id = $1) AND ($2 = '' OR txid = $2)
             ORDER BY ts_ms DESC LIMIT $3",
            vals![
                key.unwrap_or(""),
                txid.unwrap_or(""),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
        )?
        .iter()
        .map(|r| {
            Ok(SignedTxRow {
                txid: r.get(0)?,
                key_id: r.get(1)?,
                ts_ms: r.get(2)?,
                request_id: r.get(3)?,
                psbt: r.get(4)?,
                tx_hex: r.get(5)?,
            })
        })
        .collect()
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
        let n = self.exec(
            "INSERT INTO bitcoin_claim_releases (key_id, outpoint, txid, released_ms,
                released_by) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            vals![key, outpoint, txid, now_ms(), by],
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
        Ok(!self
            .rows(
                "SELECT 1 FROM bitcoin_claim_releases WHERE key_id = $1 AND outpoint = $2
                 AND txid = $3",
                vals![key, outpoint, txid],
            )?
            .is_empty())
    }
}

#[cfg(test)]
mod tests {
    use keyguard_cometbft::{SignedState, Step};

    use super::super::{StateDb, Store, WatermarkError};

    fn at(height: i64, step: Step) -> SignedState {
        SignedState {
            height,
            round: 0,
            step,
            ..SignedState::default()
        }
    }

    /// Repairs lower only, never to or below what the signer released; imports never count as
    /// released.
    #[test]
    fn repair_stays_above_what_was_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        let wm = store.watermarks();
        let db = StateDb::open(&path).unwrap();
        let refused = |r: Result<i64, WatermarkError>| matches!(r, Err(WatermarkError::Repair(_)));
        assert!(refused(db.repair_watermark("c", "k", 5, "alice")));
        let signed = at(10, Step::Precommit);
        wm.advance("c", "k", &signed).unwrap();
        wm.import("c", "k", &at(900_000, Step::Prevote), "import:x")
            .unwrap();
        let row = wm.load("c", "k").unwrap().unwrap();
        assert_eq!(row.released, (10, 0, Step::Precommit));
        assert!(refused(db.repair_watermark("c", "k", 10, "alice")));
        assert!(refused(db.repair_watermark("c", "k", 900_001, "alice")));
        assert!(refused(db.repair_watermark("c", "k", 1_000_000, "alice")));
        assert_eq!(db.repair_watermark("c", "k", 11, "alice").unwrap(), 900_000);
        let row = wm.load("c", "k").unwrap().unwrap();
        assert_eq!((row.state.height, row.state.step), (11, Step::None));
        assert_eq!(row.source, "repair:alice");
        assert_eq!(row.released.0, 10);
        // The signer moves on from the repaired watermark and records what it released.
        wm.advance("c", "k", &at(12, Step::Prevote)).unwrap();
        assert_eq!(wm.load("c", "k").unwrap().unwrap().released.0, 12);
    }

    #[test]
    fn claim_releases_are_durable_and_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _store = Store::open(&path).unwrap();
        let db = StateDb::open(&path).unwrap();
        assert!(!db.bitcoin_claim_released("hot", "aa:0", "t1").unwrap());
        assert!(db
            .release_bitcoin_claim("hot", "aa:0", "t1", "bob")
            .unwrap());
        assert!(!db
            .release_bitcoin_claim("hot", "aa:0", "t1", "bob")
            .unwrap());
        assert!(db.bitcoin_claim_released("hot", "aa:0", "t1").unwrap());
        // Another transaction's claim, another outpoint or another key: not released.
        assert!(!db.bitcoin_claim_released("hot", "aa:0", "t2").unwrap());
        assert!(!db.bitcoin_claim_released("hot", "aa:1", "t1").unwrap());
        assert!(!db.bitcoin_claim_released("cold", "aa:0", "t1").unwrap());
        let again = StateDb::open(&path).unwrap();
        assert!(again.bitcoin_claim_released("hot", "aa:0", "t1").unwrap());
    }
}
