//! What one audit commit writes, on either engine: every entry's fenced safety rows (each the
//! conditional statement that checks and writes at once), the kill switch read inside the same
//! transaction, and the audit rows linked after the chain's head. `writer.rs` owns the thread,
//! the batching and the retries; this module owns the statements.

use std::collections::HashSet;

use super::audit::{AuditEntry, AuditReceipt, Decision, RowFields};
use super::db::{vals, Dialect, Tx};
use super::ledger::{self, StateWrite};
use super::writer::Pending;
use super::StoreError;

/// Marks a batch the one-round-trip path handed back (rolled back, nothing of it written).
pub(super) const DECLINED: &str = "fast commit declined";

pub(super) type Committed = (Vec<Result<AuditReceipt, StoreError>>, (i64, [u8; 32]));

/// The common case on PostgreSQL in one round trip (plus the commit): the kill-switch read,
/// every entry's single-statement fence, the audit head's compare-and-set and the audit rows,
/// written together on the assumption that nothing conflicts. `None` when that assumption
/// failed (a key switched off, a fence lost, another instance moved the head) or a write needs
/// several statements: the caller rolls the transaction back and takes the one-by-one path,
/// which names each conflict. Safety is the same either way: every fence is still the one
/// conditional statement, and a lost one rolls the whole transaction back.
pub(super) fn fast_commit(
    tx: &Tx<'_>,
    batch: &[Pending],
    wire: Option<&super::tripwire::Tripwire>,
    ts_ms: i64,
    last_seq: i64,
    head: &[u8; 32],
) -> Result<Option<Committed>, StoreError> {
    let mut stmts: Vec<(String, Vec<super::db::Val>)> = Vec::new();
    let keys: Vec<String> = batch
        .iter()
        .filter(|(e, w, _)| e.decision == Decision::Signed && !w.is_empty())
        .filter_map(|(e, _, _)| e.key_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if keys
        .iter()
        .any(|k| wire.is_some_and(|w| w.refusal(k).is_some()))
    {
        return Ok(None);
    }
    let kill = !keys.is_empty();
    if kill {
        let mut params: Vec<super::db::Val> = keys.iter().map(super::db::Val::from).collect();
        params.push("*".into());
        let list = (1..=params.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        stmts.push((
            format!(
                "SELECT key_id FROM key_controls WHERE key_id IN ({list}) AND disabled = 1 \
                 FOR SHARE"
            ),
            params,
        ));
    }
    let fences_from = stmts.len();
    for (e, writes, _) in batch {
        for w in writes {
            match ledger::single_statement(&e.request_id, w) {
                Some(st) => stmts.push(st),
                None => return Ok(None),
            }
        }
    }
    let fences_to = stmts.len();
    let rows: Vec<&AuditEntry> = batch.iter().map(|(e, _, _)| &**e).collect();
    let chained = chain_rows(&rows, ts_ms, last_seq, head)?;
    let (seq, hash) = chained.last().map_or((last_seq, *head), |r| (r.0, r.1));
    let cas = stmts.len();
    stmts.push((
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1 AND seq = $3 AND hash = $4 \
         RETURNING seq"
            .to_owned(),
        vals![seq, &hash, last_seq, head].to_vec(),
    ));
    // If the compare-and-set fails these rows collide with another instance's; nothing is
    // inserted for them and the transaction is rolled back below.
    for chunk in chained.chunks(INSERT_CHUNK) {
        let (mut sql, params) = insert_statement(chunk);
        sql.push_str(" ON CONFLICT (seq) DO NOTHING");
        stmts.push((sql, params));
    }
    // Every fence returned its row, no key is switched off, the head moved as expected: only
    // then does the transaction commit (on PostgreSQL, without a trip back to this thread).
    let accept = move |results: &[Vec<super::db::Row>]| {
        (!kill || results[0].is_empty())
            && results[fences_from..fences_to]
                .iter()
                .all(|r| !r.is_empty())
            && !results[cas].is_empty()
    };
    let (_, committed) = tx.pipeline_commit(stmts, Box::new(accept))?;
    if !committed {
        return Ok(None);
    }
    let outcomes = chained
        .iter()
        .map(|r| {
            Ok(AuditReceipt {
                seq: r.0,
                ts_ms,
                hash: r.1,
            })
        })
        .collect();
    Ok(Some((outcomes, (seq, hash))))
}

/// One audit row ready to insert: seq, hash, and its column values.
type Chained = (i64, [u8; 32], Vec<super::db::Val>);

/// Links `rows` after `(seq, prev)`.
pub(super) fn chain_rows(
    rows: &[&AuditEntry],
    ts_ms: i64,
    seq: i64,
    prev: &[u8; 32],
) -> Result<Vec<Chained>, StoreError> {
    let (mut seq, mut prev) = (seq, *prev);
    let mut out = Vec::with_capacity(rows.len());
    for e in rows {
        seq += 1;
        let summary = serde_json::to_string(&e.summary)
            .map_err(|err| StoreError::Unavailable(format!("summary: {err}")))?;
        let fields = RowFields {
            seq,
            ts_ms,
            request_id: &e.request_id,
            client: &e.client,
            key_id: e.key_id.as_deref(),
            chain: e.chain.as_deref(),
            method: &e.method,
            summary: &summary,
            decision: e.decision.as_str(),
            rule: e.rule.as_deref(),
            reason: e.reason.as_deref(),
            tx_hash: e.tx_hash.as_deref(),
        };
        let hash = fields.hash(&prev);
        let values = vals![
            seq,
            ts_ms,
            fields.request_id,
            fields.client,
            fields.key_id,
            fields.chain,
            fields.method,
            fields.summary,
            fields.decision,
            fields.rule,
            fields.reason,
            fields.tx_hash,
            &prev[..],
            &hash[..]
        ]
        .to_vec();
        out.push((seq, hash, values));
        prev = hash;
    }
    Ok(out)
}

/// Rows per multi-row INSERT (a few statement shapes, far below either engine's parameter cap).
const INSERT_CHUNK: usize = 32;

/// Inserts the chained rows, many per statement (one round trip per chunk on PostgreSQL).
pub(super) fn insert_rows(tx: &Tx<'_>, rows: &[Chained]) -> Result<(), StoreError> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        let (sql, params) = insert_statement(chunk);
        tx.execute(&sql, &params)?;
    }
    Ok(())
}

/// One multi-row INSERT of `chunk`.
pub(super) fn insert_statement(chunk: &[Chained]) -> (String, Vec<super::db::Val>) {
    let mut sql = String::from(
        "INSERT INTO audit_log (seq, ts_ms, request_id, client, key_id, chain, method, \
         summary, decision, rule, reason, tx_hash, prev_hash, hash) VALUES ",
    );
    let mut params = Vec::with_capacity(chunk.len() * 14);
    for (i, row) in chunk.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let n = i * 14;
        sql.push('(');
        sql.push_str(
            &(1..=14)
                .map(|k| format!("${}", n + k))
                .collect::<Vec<_>>()
                .join(", "),
        );
        sql.push(')');
        params.extend(row.2.iter().cloned());
    }
    (sql, params)
}

/// Which of the batch's signing keys (or `*`) are switched off, read once for the batch in the
/// transaction that records the signatures. On PostgreSQL the rows are share-locked to the
/// commit and a switch-off takes the `*` row exclusively (`StateDb::set_key_disabled`): a
/// disable and a signature are strictly ordered across instances, never interleaved.
pub(super) fn switched_off(tx: &Tx<'_>, batch: &[Pending]) -> Result<HashSet<String>, StoreError> {
    let mut keys: Vec<String> = batch
        .iter()
        .filter(|(e, w, _)| e.decision == Decision::Signed && !w.is_empty())
        .filter_map(|(e, _, _)| e.key_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    keys.push("*".into());
    let list = (1..=keys.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let lock = match tx.dialect() {
        Dialect::Sqlite => "",
        Dialect::Postgres => " FOR SHARE",
    };
    let params: Vec<super::db::Val> = keys.iter().map(super::db::Val::from).collect();
    let rows = tx.query(
        &format!("SELECT key_id, disabled FROM key_controls WHERE key_id IN ({list}){lock}"),
        &params,
    )?;
    let mut off = HashSet::new();
    for r in rows {
        if r.get::<i64>(1)? == 1 {
            off.insert(r.get::<String>(0)?);
        }
    }
    Ok(off)
}

/// The shared chain's head, locked until the transaction ends.
pub(super) fn lock_head(tx: &Tx<'_>) -> Result<(i64, [u8; 32]), StoreError> {
    let row = tx
        .query_opt(
            "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
            &[],
        )?
        .ok_or_else(|| StoreError::Unavailable("audit_head row is missing".into()))?;
    let (seq, hash): (i64, Vec<u8>) = (row.get(0)?, row.get(1)?);
    let hash = hash.try_into().map_err(|_| StoreError::Corrupt {
        seq,
        reason: "audit_head hash is not 32 bytes".into(),
    })?;
    Ok((seq, hash))
}

/// Writes one entry's safety rows. The outer `Err` fails the whole batch (a database error);
/// the inner one is this entry's conflict, rolled back alone.
pub(super) fn fence_one(
    tx: &Tx<'_>,
    e: &AuditEntry,
    writes: &[StateWrite],
    wire: Option<&super::tripwire::Tripwire>,
    off: &HashSet<String>,
) -> Result<Result<(), StoreError>, StoreError> {
    let signature = e.decision == Decision::Signed && !writes.is_empty();
    if !signature && writes.is_empty() {
        return Ok(Ok(()));
    }
    // A failed check writes nothing; only an entry with several rows needs a savepoint to
    // undo the ones written before a later one conflicts.
    let guarded = writes.len() > 1;
    if guarded {
        tx.batch("SAVEPOINT entry")?;
    }
    let mut conflict = None;
    if signature {
        if let Some(key) = &e.key_id {
            if let Some(why) = wire.and_then(|w| w.refusal(key)) {
                conflict = Some(StoreError::StateConflict(format!(
                    "{}: {why}",
                    super::tripwire::RULE
                )));
            } else if off.contains(key) || off.contains("*") {
                conflict = Some(StoreError::StateConflict(format!(
                    "admin.kill_switch: key {key} was switched off"
                )));
            }
        }
    }
    if conflict.is_none() {
        for w in writes {
            match ledger::write(tx, &e.request_id, w) {
                Ok(()) => {}
                Err(StoreError::StateConflict(c)) => {
                    conflict = Some(StoreError::StateConflict(c));
                    break;
                }
                Err(other) => return Err(other),
            }
        }
    }
    if let Some(c) = conflict {
        if guarded {
            tx.batch("ROLLBACK TO SAVEPOINT entry; RELEASE SAVEPOINT entry")?;
        }
        return Ok(Err(c));
    }
    if guarded {
        tx.batch("RELEASE SAVEPOINT entry")?;
    }
    Ok(Ok(()))
}
