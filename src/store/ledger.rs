//! Conflict-guard state that must be durable before a signature leaves: velocity debits,
//! signed EVM nonces, CometBFT watermarks and signet block heights. Rows are written by the audit writer in the *same transaction* as the
//! audit row of the signature they belong to, so either both are on disk or neither is (and a
//! signature is released only after that commit).

use rusqlite::{params, Connection, OptionalExtension, Transaction};

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
    /// A signet block signed by `key_id` for the network of `challenge`: one statement checks
    /// that `tip.height` is above the highest height signed (less `reorg_depth`) and advances
    /// the row; if another writer got there first it fails with [`StoreError::StateConflict`]
    /// and the signature is withheld. It is the only row a signet entry carries, so a conflict
    /// leaves nothing behind.
    SignetHeight {
        /// The challenge script, hex (it identifies the signet: its magic derives from it).
        challenge: String,
        /// Signing key.
        key_id: String,
        /// How far below the highest signed height the operator allows a reorg.
        reorg_depth: u32,
        /// The block signed.
        tip: Box<keyguard_bitcoin::signet_rules::SignetTip>,
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
        StateWrite::SignetHeight {
            challenge,
            key_id,
            reorg_depth,
            tip,
        } => signet_advance(tx, request_id, challenge, key_id, *reorg_depth, tip)?,
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

/// The signet check-and-advance: one portable statement (`ON CONFLICT ... DO UPDATE ...
/// WHERE ... RETURNING`), so the row is the fence for every instance sharing the database.
fn signet_advance(
    tx: &Transaction<'_>,
    request_id: &str,
    challenge: &str,
    key_id: &str,
    reorg_depth: u32,
    tip: &keyguard_bitcoin::signet_rules::SignetTip,
) -> Result<(), StoreError> {
    let recent: String = tip
        .recent
        .iter()
        .map(|(h, t)| format!("{h}:{t}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut stmt = tx.prepare_cached(
        "INSERT INTO signet_heights (challenge, key_id, height, max_height, commitment, \
            prev_hash, merkle_root, version, block_time, recent, request_id, updated_ms) \
         VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
         ON CONFLICT (challenge, key_id) DO UPDATE SET height = excluded.height, \
            max_height = CASE WHEN excluded.height > signet_heights.max_height \
                THEN excluded.height ELSE signet_heights.max_height END, \
            commitment = excluded.commitment, prev_hash = excluded.prev_hash, \
            merkle_root = excluded.merkle_root, version = excluded.version, \
            block_time = excluded.block_time, recent = excluded.recent, \
            request_id = excluded.request_id, updated_ms = excluded.updated_ms \
         WHERE signet_heights.max_height < excluded.height + ?12 \
         RETURNING height",
    )?;
    let advanced: Option<i64> = stmt
        .query_row(
            params![
                challenge,
                key_id,
                i64::from(tip.height),
                tip.commitment,
                tip.prev_hash.to_string(),
                tip.merkle_root.to_string(),
                i64::from(tip.version),
                i64::from(tip.time),
                recent,
                request_id,
                super::now_ms(),
                i64::from(reorg_depth),
            ],
            |r| r.get(0),
        )
        .optional()?;
    match advanced {
        Some(_) => Ok(()),
        None => Err(StoreError::StateConflict(format!(
            "signet height {} of {key_id} is not above the stored watermark",
            tip.height
        ))),
    }
}

/// A signet watermark row as loaded at start.
#[derive(Debug, Clone)]
pub struct SignetRow {
    pub challenge: String,
    pub key_id: String,
    pub tip: keyguard_bitcoin::signet_rules::SignetTip,
}

pub(crate) fn signet_tips(conn: &Connection) -> Result<Vec<SignetRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT challenge, key_id, height, max_height, commitment, prev_hash, merkle_root, \
         version, block_time, recent FROM signet_heights",
    )?;
    let bad = |what: &str| StoreError::Corrupt {
        seq: 0,
        reason: format!("signet_heights: {what}"),
    };
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, String>(9)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(
            |(challenge, key_id, h, max, commitment, prev, root, version, time, recent)| {
                let num = |v: i64| u32::try_from(v).map_err(|_| bad("height or time"));
                let recent = recent
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|p| {
                        let (h, t) = p.split_once(':').ok_or_else(|| bad("recent"))?;
                        Ok((
                            h.parse().map_err(|_| bad("recent"))?,
                            t.parse().map_err(|_| bad("recent"))?,
                        ))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let tip = keyguard_bitcoin::signet_rules::SignetTip {
                    height: num(h)?,
                    max_height: num(max)?,
                    commitment,
                    prev_hash: prev.parse().map_err(|_| bad("prev_hash"))?,
                    merkle_root: root.parse().map_err(|_| bad("merkle_root"))?,
                    version: i32::try_from(version).map_err(|_| bad("version"))?,
                    time: num(time)?,
                    recent,
                };
                Ok(SignetRow {
                    challenge,
                    key_id,
                    tip,
                })
            },
        )
        .collect()
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

#[cfg(test)]
mod signet_tests {
    use keyguard_bitcoin::bitcoin::hashes::Hash;
    use keyguard_bitcoin::bitcoin::{BlockHash, TxMerkleNode};
    use keyguard_bitcoin::signet_rules::SignetTip;

    use super::*;

    fn advance(conn: &mut Connection, height: u32, depth: u32) -> Result<(), StoreError> {
        let tip = SignetTip {
            height,
            max_height: height,
            commitment: format!("{height:064x}"),
            prev_hash: BlockHash::all_zeros(),
            merkle_root: TxMerkleNode::all_zeros(),
            version: 0x2000_0000,
            time: 1_700_000_000 + height,
            recent: vec![(height, 1_700_000_000 + height)],
        };
        let tx = conn.transaction().unwrap();
        let w = StateWrite::SignetHeight {
            challenge: "51".into(),
            key_id: "k".into(),
            reorg_depth: depth,
            tip: Box::new(tip),
        };
        write(&tx, "r", &w)?;
        tx.commit().unwrap();
        Ok(())
    }

    #[test]
    fn the_signet_statement_advances_only_above_the_highest_height() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrations::migrate(&mut conn).unwrap();
        let conflict = |r: Result<(), StoreError>| matches!(r, Err(StoreError::StateConflict(_)));
        advance(&mut conn, 10, 0).unwrap();
        assert!(conflict(advance(&mut conn, 10, 0)), "same height twice");
        assert!(conflict(advance(&mut conn, 9, 0)), "below");
        advance(&mut conn, 11, 0).unwrap();
        // A reorg depth lets a lower height through, never lowering the highest signed.
        assert!(conflict(advance(&mut conn, 9, 2)));
        advance(&mut conn, 10, 2).unwrap();
        let rows = signet_tips(&conn).unwrap();
        assert_eq!((rows[0].tip.height, rows[0].tip.max_height), (10, 11));
        assert_eq!(rows[0].tip.recent, vec![(10, 1_700_000_010)]);
        assert!(conflict(advance(&mut conn, 9, 2)), "max_height stayed 11");
    }
}
