//! The signet block watermark's statements: one conditional upsert per signed block (the row is
//! the fence across instances) and the rows read back at start.

use super::db::{vals, Tx, Val};
use super::StoreError;

/// The signet check-and-advance: one portable statement (`ON CONFLICT ... DO UPDATE ...
/// WHERE ... RETURNING`), so the row is the fence for every instance sharing the database.
pub(super) fn advance(
    tx: &Tx<'_>,
    request_id: &str,
    challenge: &str,
    key_id: &str,
    reorg_depth: u32,
    tip: &keyguard_bitcoin::signet_rules::SignetTip,
) -> Result<(), StoreError> {
    let (sql, params) = statement(request_id, challenge, key_id, reorg_depth, tip);
    match tx.query_opt(&sql, &params)? {
        Some(_) => Ok(()),
        None => Err(signet_lost(key_id, tip.height)),
    }
}

fn signet_lost(key_id: &str, height: u32) -> StoreError {
    StoreError::StateConflict(format!(
        "bitcoin.signet.height: signet height {height} of {key_id} is not above the stored \
         watermark"
    ))
}

pub(super) fn statement(
    request_id: &str,
    challenge: &str,
    key_id: &str,
    reorg_depth: u32,
    tip: &keyguard_bitcoin::signet_rules::SignetTip,
) -> (String, Vec<Val>) {
    let recent: String = tip
        .recent
        .iter()
        .map(|(h, t)| format!("{h}:{t}"))
        .collect::<Vec<_>>()
        .join(",");
    (
        "INSERT INTO signet_heights (challenge, key_id, height, max_height, commitment, \
            prev_hash, merkle_root, version, block_time, recent, request_id, updated_ms) \
         VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (challenge, key_id) DO UPDATE SET height = excluded.height, \
            max_height = CASE WHEN excluded.height > signet_heights.max_height \
                THEN excluded.height ELSE signet_heights.max_height END, \
            commitment = excluded.commitment, prev_hash = excluded.prev_hash, \
            merkle_root = excluded.merkle_root, version = excluded.version, \
            block_time = excluded.block_time, recent = excluded.recent, \
            request_id = excluded.request_id, updated_ms = excluded.updated_ms \
         WHERE signet_heights.max_height < excluded.height + $12 \
         RETURNING height"
            .to_owned(),
        vals![
            challenge,
            key_id,
            i64::from(tip.height),
            &tip.commitment,
            tip.prev_hash.to_string(),
            tip.merkle_root.to_string(),
            i64::from(tip.version),
            i64::from(tip.time),
            recent,
            request_id,
            super::now_ms(),
            i64::from(reorg_depth)
        ]
        .to_vec(),
    )
}

/// A signet watermark row as loaded at start.
#[derive(Debug, Clone)]
pub struct SignetRow {
    pub challenge: String,
    pub key_id: String,
    pub tip: keyguard_bitcoin::signet_rules::SignetTip,
}

pub(crate) fn tips(tx: &Tx<'_>) -> Result<Vec<SignetRow>, StoreError> {
    let bad = |what: &str| StoreError::Corrupt {
        seq: 0,
        reason: format!("signet_heights: {what}"),
    };
    let rows = tx
        .query(
            "SELECT challenge, key_id, height, max_height, commitment, prev_hash, merkle_root, \
             version, block_time, recent FROM signet_heights",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<i64>(2)?,
                r.get::<i64>(3)?,
                r.get::<String>(4)?,
                r.get::<String>(5)?,
                r.get::<String>(6)?,
                r.get::<i64>(7)?,
                r.get::<i64>(8)?,
                r.get::<String>(9)?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
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
