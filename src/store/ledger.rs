//! Conflict-guard state that must be durable before a signature leaves: velocity debits,
//! signed EVM nonces, Bitcoin outpoint claims, CometBFT watermarks and signet block heights. Rows are written by the
//! audit writer in the *same transaction* as the audit row of the signature they belong to, so
//! either both are committed or neither is (and a signature is released only after that
//! commit).
//!
//! Each write carries the decision it was made under and re-checks it in the statement that
//! writes (`INSERT ... ON CONFLICT ... DO UPDATE ... WHERE <still allowed> RETURNING`): the row
//! is the fence. An instance whose in-memory view was stale (another instance sharing the
//! PostgreSQL store signed meanwhile) gets [`StoreError::StateConflict`] naming the rule, and
//! its signature is withheld.

use super::db::{vals, Dialect, Tx, Val};
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
        /// The window's length (ms): events older than `ts_ms - window_ms` no longer count.
        window_ms: i64,
        /// The limit (decimal base units) the window's total, this amount included, must stay
        /// within.
        max: String,
        /// The rule that set the limit (named in the conflict).
        rule: String,
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
        /// The signing hash the decision found on this nonce and accepted replacing (`None`:
        /// the nonce was free).
        replaces: Option<[u8; 32]>,
    },
    /// A CometBFT watermark moving to `next`, which must be strictly ahead of the stored row
    /// (or the same height/round/step with the same sign bytes); otherwise the entry fails with
    /// [`StoreError::StateConflict`] and nothing of it is written.
    Watermark {
        /// CometBFT chain id.
        chain_id: String,
        /// Consensus key.
        key_id: String,
        /// The new watermark.
        next: Box<keyguard_cometbft::SignedState>,
    },
    /// Outpoints a Bitcoin transaction spends, claimed for it: another transaction may take one
    /// only as the replacement the policy accepted, or after two admins released the claim.
    BitcoinClaims {
        /// Seed key.
        key_id: String,
        /// The transaction claiming them.
        txid: String,
        /// `(outpoint, txid the decision accepted replacing)`.
        outpoints: Vec<(String, Option<String>)>,
        /// When (Unix ms).
        ts_ms: i64,
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

fn conflict(rule: &str, what: String) -> StoreError {
    StoreError::StateConflict(format!("{rule}: {what}"))
}

pub(crate) fn write(tx: &Tx<'_>, request_id: &str, w: &StateWrite) -> Result<(), StoreError> {
    match w {
        StateWrite::Watermark {
            chain_id,
            key_id,
            next,
        } => {
            super::watermarks::advance_in(tx, chain_id, key_id, next).map_err(|e| match e {
                super::WatermarkError::Store(e) => e,
                conflict => StoreError::StateConflict(conflict.to_string()),
            })?;
        }
        StateWrite::SignetHeight {
            challenge,
            key_id,
            reorg_depth,
            tip,
        } => super::signet_rows::advance(tx, request_id, challenge, key_id, *reorg_depth, tip)?,
        StateWrite::Velocity {
            key_id,
            counter,
            ts_ms,
            amount,
            window_ms,
            max,
            rule,
        } => velocity(
            tx, request_id, key_id, counter, *ts_ms, amount, *window_ms, max, rule,
        )?,
        StateWrite::BitcoinTx { .. } => {
            if let Some((sql, params)) = kept_statement(request_id, w) {
                tx.query(&sql, &params)?;
            }
        }
        StateWrite::BitcoinClaims {
            key_id,
            txid,
            outpoints,
            ts_ms,
        } => {
            for (outpoint, replaces) in outpoints {
                let won = tx.query(
                    "INSERT INTO bitcoin_claims AS c (key_id, outpoint, txid, ts_ms, request_id) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id, outpoint) DO UPDATE SET \
                     txid = excluded.txid, ts_ms = excluded.ts_ms, \
                     request_id = excluded.request_id \
                     WHERE c.txid = excluded.txid OR c.txid = $6 OR EXISTS (SELECT 1 FROM \
                     bitcoin_claim_releases r WHERE r.key_id = c.key_id AND \
                     r.outpoint = c.outpoint AND r.txid = c.txid) RETURNING txid",
                    vals![
                        key_id,
                        outpoint,
                        txid,
                        *ts_ms,
                        request_id,
                        replaces.as_deref()
                    ],
                )?;
                if won.is_empty() {
                    return Err(conflict(
                        "bitcoin.conflicting_spend",
                        format!("outpoint {outpoint} is claimed by another signed transaction"),
                    ));
                }
            }
        }
        StateWrite::EvmNonce { nonce, .. } => {
            // FAULT HOOK split-fence (test builds only, src/store/fault.rs).
            #[cfg(feature = "fault-injection")]
            if let (
                true,
                StateWrite::EvmNonce {
                    key_id,
                    chain_id,
                    sighash,
                    max_fee,
                    tip,
                    replaces,
                    ..
                },
            ) = (super::fault::is(super::fault::Fault::SplitFence), w)
            {
                let held: Option<Vec<u8>> = tx
                    .query_opt(
                        "SELECT sighash FROM evm_nonces WHERE key_id = $1 AND chain_id = $2 \
                         AND nonce = $3",
                        vals![key_id, *chain_id as i64, *nonce as i64],
                    )?
                    .map(|r| r.get(0))
                    .transpose()?;
                let replaced = replaces.map(|r| r.to_vec());
                if held.is_some_and(|h| h != sighash[..] && replaced != Some(h)) {
                    return Err(conflict(
                        "evm.nonce_reuse",
                        format!("nonce {nonce} was signed"),
                    ));
                }
                std::thread::sleep(super::fault::SPLIT_GAP);
                tx.execute(
                    "INSERT INTO evm_nonces (key_id, chain_id, nonce, sighash, max_fee, tip, \
                     request_id) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key_id, \
                     chain_id, nonce) DO UPDATE SET sighash = excluded.sighash",
                    vals![
                        key_id,
                        *chain_id as i64,
                        *nonce as i64,
                        sighash,
                        max_fee,
                        tip,
                        request_id
                    ],
                )?;
                return Ok(());
            }
            let won = match nonce_statement(request_id, w) {
                Some((sql, params)) => tx.query(&sql, &params)?,
                None => Vec::new(),
            };
            if won.is_empty() {
                return Err(conflict(
                    "evm.nonce_reuse",
                    format!("nonce {nonce} was signed for another transaction"),
                ));
            }
        }
    }
    Ok(())
}

/// Counts `amount` in the window if the window's total stays within `max`, in the statement
/// that writes it (PostgreSQL, shared by several instances). A per-counter row lock, taken
/// first and held to the commit, orders concurrent writers so that statement sees every
/// earlier commit.
#[allow(clippy::too_many_arguments)]
fn velocity(
    tx: &Tx<'_>,
    request_id: &str,
    key_id: &str,
    counter: &str,
    ts_ms: i64,
    amount: &str,
    window_ms: i64,
    max: &str,
    rule: &str,
) -> Result<(), StoreError> {
    let since = ts_ms.saturating_sub(window_ms);
    let counted = match tx.dialect() {
        Dialect::Postgres => {
            tx.execute(
                "INSERT INTO velocity_locks (key_id, counter, n) VALUES ($1, $2, 1) \
                 ON CONFLICT (key_id, counter) DO UPDATE SET n = velocity_locks.n + 1",
                vals![key_id, counter],
            )?;
            !tx.query(
                "INSERT INTO velocity_events (key_id, counter, ts_ms, amount, request_id) \
                 SELECT $1, $2, $3, $4, $5 WHERE (SELECT COALESCE(SUM(CAST(amount AS NUMERIC)), \
                 0) FROM velocity_events WHERE key_id = $1 AND counter = $2 AND ts_ms >= $6) \
                 + CAST(CAST($4 AS TEXT) AS NUMERIC) <= CAST(CAST($7 AS TEXT) AS NUMERIC) \
                 RETURNING id",
                vals![key_id, counter, ts_ms, amount, request_id, since, max],
            )?
            .is_empty()
        }
        // One process owns a SQLite file: its ledger decided under its lock and its one
        // writer commits in decision order, so the count is exact without a re-check.
        Dialect::Sqlite => {
            tx.execute(
                "INSERT INTO velocity_events (key_id, counter, ts_ms, amount, request_id) \
                 VALUES ($1, $2, $3, $4, $5)",
                vals![key_id, counter, ts_ms, amount, request_id],
            )? == 1
        }
    };
    if counted {
        Ok(())
    } else {
        Err(conflict(
            rule,
            format!("{counter}: {amount} more would exceed {max} in the window"),
        ))
    }
}

/// The nonce fence statement of an [`StateWrite::EvmNonce`] (a row back: it wrote).
fn nonce_statement(request_id: &str, w: &StateWrite) -> Option<(String, Vec<Val>)> {
    let StateWrite::EvmNonce {
        key_id,
        chain_id,
        nonce,
        sighash,
        max_fee,
        tip,
        replaces,
    } = w
    else {
        return None;
    };
    Some((
        "INSERT INTO evm_nonces AS n (key_id, chain_id, nonce, sighash, max_fee, tip, \
         request_id) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (key_id, chain_id, nonce) DO UPDATE SET sighash = excluded.sighash, \
         max_fee = excluded.max_fee, tip = excluded.tip, request_id = excluded.request_id \
         WHERE n.sighash = excluded.sighash OR n.sighash = $8 RETURNING nonce"
            .to_owned(),
        vals![
            key_id,
            *chain_id as i64,
            *nonce as i64,
            sighash,
            max_fee,
            tip,
            request_id,
            replaces.as_ref().map(|r| r.to_vec())
        ]
        .to_vec(),
    ))
}

/// The row keeping a released Bitcoin transaction (no condition: it never conflicts).
fn kept_statement(request_id: &str, w: &StateWrite) -> Option<(String, Vec<Val>)> {
    let StateWrite::BitcoinTx {
        txid,
        key_id,
        ts_ms,
        psbt,
        tx_hex,
    } = w
    else {
        return None;
    };
    Some((
        "INSERT INTO bitcoin_signed_txs (txid, key_id, ts_ms, request_id, psbt, tx_hex) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (txid, key_id) DO UPDATE SET \
         ts_ms = excluded.ts_ms, request_id = excluded.request_id, \
         psbt = excluded.psbt, tx_hex = excluded.tx_hex RETURNING txid"
            .to_owned(),
        vals![txid, key_id, *ts_ms, request_id, psbt, tx_hex.as_deref()].to_vec(),
    ))
}

/// A write as one statement for a pipelined batch, with what losing means: a row back means it
/// wrote. `None`: this write needs several statements (velocity, claims) or a fault hook, and
/// the batch takes the one-by-one path.
pub(crate) fn single_statement(request_id: &str, w: &StateWrite) -> Option<(String, Vec<Val>)> {
    #[cfg(feature = "fault-injection")]
    if super::fault::is(super::fault::Fault::SplitFence) {
        return None;
    }
    match w {
        StateWrite::EvmNonce { .. } => nonce_statement(request_id, w),
        StateWrite::BitcoinTx { .. } => kept_statement(request_id, w),
        StateWrite::Watermark {
            chain_id,
            key_id,
            next,
        } => super::watermarks::advance_statement(chain_id, key_id, next),
        StateWrite::SignetHeight {
            challenge,
            key_id,
            reorg_depth,
            tip,
        } => Some(super::signet_rows::statement(
            request_id,
            challenge,
            key_id,
            *reorg_depth,
            tip,
        )),
        StateWrite::Velocity { .. } | StateWrite::BitcoinClaims { .. } => None,
    }
}

pub(crate) fn velocity_since(tx: &Tx<'_>, since_ms: i64) -> Result<Vec<VelocityRow>, StoreError> {
    tx.query(
        "SELECT key_id, counter, ts_ms, amount FROM velocity_events WHERE ts_ms >= $1 ORDER BY id",
        vals![since_ms],
    )?
    .iter()
    .map(|r| {
        Ok(VelocityRow {
            key_id: r.get(0)?,
            counter: r.get(1)?,
            ts_ms: r.get(2)?,
            amount: r.get(3)?,
        })
    })
    .collect()
}

/// One signed nonce's row.
pub(crate) fn nonce(
    tx: &Tx<'_>,
    key: &str,
    chain_id: u64,
    nonce: u64,
) -> Result<Option<NonceRow>, StoreError> {
    tx.query_opt(
        &format!(
            "SELECT {NONCE_COLUMNS} FROM evm_nonces \
             WHERE key_id = $1 AND chain_id = $2 AND nonce = $3"
        ),
        vals![key, chain_id as i64, nonce as i64],
    )?
    .map(|r| nonce_row(&r))
    .transpose()
}

pub(crate) fn nonces(tx: &Tx<'_>) -> Result<Vec<NonceRow>, StoreError> {
    tx.query(&format!("SELECT {NONCE_COLUMNS} FROM evm_nonces"), &[])?
        .iter()
        .map(nonce_row)
        .collect()
}

const NONCE_COLUMNS: &str = "key_id, chain_id, nonce, sighash, max_fee, tip";

fn nonce_row(r: &super::db::Row) -> Result<NonceRow, StoreError> {
    let hash: Vec<u8> = r.get(3)?;
    Ok(NonceRow {
        key_id: r.get(0)?,
        chain_id: r.get::<i64>(1)? as u64,
        nonce: r.get::<i64>(2)? as u64,
        sighash: hash.try_into().unwrap_or([0u8; 32]),
        max_fee: r.get(4)?,
        tip: r.get(5)?,
    })
}

#[cfg(test)]
mod signet_tests {
    use keyguard_bitcoin::bitcoin::hashes::Hash;
    use keyguard_bitcoin::bitcoin::{BlockHash, TxMerkleNode};
    use keyguard_bitcoin::signet_rules::SignetTip;
    use rusqlite::Connection;

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
        write(&Tx::Sqlite(&tx), "r", &w)?;
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
        let rows = super::super::signet_rows::tips(&Tx::Sqlite(&conn)).unwrap();
        assert_eq!((rows[0].tip.height, rows[0].tip.max_height), (10, 11));
        assert_eq!(rows[0].tip.recent, vec![(10, 1_700_000_010)]);
        assert!(conflict(advance(&mut conn, 9, 2)), "max_height stayed 11");
    }
}
