//! Reading audit rows back: listing, head lookup and full chain verification.

use super::db::{vals, Row, Tx, Val};

use super::audit::{AuditRow, AuditVerification, RowFields, GENESIS_HASH};
use super::StoreError;

const SELECT_COLUMNS: &str = "seq, ts_ms, request_id, client, key_id, chain, method, \
     summary, decision, rule, reason, tx_hash, prev_hash, hash";

/// A row as raw stored values (any read failure is reported against its seq).
struct RawRow {
    seq: i64,
    ts_ms: i64,
    text: [String; 5],        // request_id, client, method, summary, decision
    opt: [Option<String>; 5], // key_id, chain, rule, reason, tx_hash
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl RawRow {
    fn read(r: &Row) -> Result<Self, StoreError> {
        Ok(RawRow {
            seq: r.get(0)?,
            ts_ms: r.get(1)?,
            text: [r.get(2)?, r.get(3)?, r.get(6)?, r.get(7)?, r.get(8)?],
            opt: [r.get(4)?, r.get(5)?, r.get(9)?, r.get(10)?, r.get(11)?],
            prev_hash: r.get(12)?,
            hash: r.get(13)?,
        })
    }

    fn fields(&self) -> RowFields<'_> {
        RowFields {
            seq: self.seq,
            ts_ms: self.ts_ms,
            request_id: &self.text[0],
            client: &self.text[1],
            key_id: self.opt[0].as_deref(),
            chain: self.opt[1].as_deref(),
            method: &self.text[2],
            summary: &self.text[3],
            decision: &self.text[4],
            rule: self.opt[2].as_deref(),
            reason: self.opt[3].as_deref(),
            tx_hash: self.opt[4].as_deref(),
        }
    }
}

fn to32(v: &[u8], seq: i64, col: &str) -> Result<[u8; 32], StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt {
        seq,
        reason: format!("{col} is {} bytes, expected 32", v.len()),
    })
}

/// The newest `limit` rows, newest first.
pub(crate) fn recent(conn: &Tx<'_>, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
    let filter = AuditFilter {
        limit: Some(limit),
        newest_first: true,
        ..AuditFilter::default()
    };
    query(conn, &filter)
}

/// Which audit rows to read. Every set field must match; `None` matches anything.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditFilter {
    /// Rows at or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// Rows before this time (unix ms).
    pub until_ms: Option<i64>,
    pub chain: Option<String>,
    pub key: Option<String>,
    pub client: Option<String>,
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub method: Option<String>,
    /// Rows after this seq (for following the log).
    pub after_seq: Option<i64>,
    /// Rows before this seq (paging newest first, as the console does).
    pub before_seq: Option<i64>,
    /// At most this many rows.
    pub limit: Option<usize>,
    /// Newest first instead of in chain order.
    pub newest_first: bool,
}

/// Rows matching `filter`.
pub(crate) fn query(conn: &Tx<'_>, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
    use Val as Sql;
    let mut sql = format!("SELECT {SELECT_COLUMNS} FROM audit_log WHERE 1 = 1");
    let mut args: Vec<Sql> = Vec::new();
    let mut cond = |column: &str, op: &str, v: Sql| {
        args.push(v);
        sql.push_str(&format!(" AND {column} {op} ${}", args.len()));
    };
    if let Some(v) = filter.since_ms {
        cond("ts_ms", ">=", Sql::Int(v));
    }
    if let Some(v) = filter.until_ms {
        cond("ts_ms", "<", Sql::Int(v));
    }
    if let Some(v) = filter.after_seq {
        cond("seq", ">", Sql::Int(v));
    }
    if let Some(v) = filter.before_seq {
        cond("seq", "<", Sql::Int(v));
    }
    for (column, v) in [
        ("chain", &filter.chain),
        ("key_id", &filter.key),
        ("client", &filter.client),
        ("decision", &filter.decision),
        ("method", &filter.method),
    ] {
        if let Some(v) = v {
            cond(column, "=", Sql::Text(v.clone()));
        }
    }
    if let Some(v) = &filter.rule {
        // A renamed rule also finds the rows written under its old name (and vice versa).
        let mut names = vec![v.as_str()];
        for (old, new) in keyguard_chain::rules::ALIASES {
            if v == old {
                names.push(new);
            } else if v == new {
                names.push(old);
            }
        }
        let mut placeholders = Vec::new();
        for n in names {
            args.push(Sql::Text(n.to_string()));
            placeholders.push(format!("${}", args.len()));
        }
        sql.push_str(&format!(" AND rule IN ({})", placeholders.join(", ")));
    }
    sql.push_str(if filter.newest_first {
        " ORDER BY seq DESC"
    } else {
        " ORDER BY seq ASC"
    });
    if let Some(limit) = filter.limit {
        sql.push_str(&format!(
            " LIMIT {}",
            i64::try_from(limit).unwrap_or(i64::MAX)
        ));
    }
    conn.query(&sql, &args)?
        .iter()
        .map(|r| to_row(RawRow::read(r)?))
        .collect()
}

fn to_row(raw: RawRow) -> Result<AuditRow, StoreError> {
    let seq = raw.seq;
    let corrupt = |reason: String| StoreError::Corrupt { seq, reason };
    let [request_id, client, method, summary, decision] = raw.text;
    let [key_id, chain, rule, reason, tx_hash] = raw.opt;
    Ok(AuditRow {
        seq,
        ts_ms: raw.ts_ms,
        request_id,
        client,
        key_id,
        chain,
        method,
        summary: serde_json::from_str(&summary).map_err(|e| corrupt(format!("summary: {e}")))?,
        decision: decision.parse().map_err(corrupt)?,
        rule,
        reason,
        tx_hash,
        prev_hash: to32(&raw.prev_hash, seq, "prev_hash")?,
        hash: to32(&raw.hash, seq, "hash")?,
    })
}

/// Rows read per round trip while verifying (bounded memory on any log size).
const VERIFY_PAGE: i64 = 5_000;

/// Recomputes the whole chain; fails at the first row (or missing seq) that does not match.
pub(crate) fn verify(conn: &Tx<'_>) -> Result<AuditVerification, StoreError> {
    let sql =
        format!("SELECT {SELECT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq ASC LIMIT $2");
    let mut head = GENESIS_HASH;
    let mut expected: i64 = 1;
    loop {
        let page = conn.query(&sql, vals![expected - 1, VERIFY_PAGE])?;
        let full = page.len() as i64 == VERIFY_PAGE;
        for r in &page {
            let seq: i64 = r.get(0)?;
            let broken = |reason: String| StoreError::ChainBroken { seq, reason };
            if seq != expected {
                return Err(StoreError::ChainBroken {
                    seq: expected,
                    reason: format!("row {expected} is missing (next stored row is {seq})"),
                });
            }
            let raw = RawRow::read(r).map_err(|e| broken(format!("unreadable row: {e}")))?;
            if raw.prev_hash != head {
                return Err(broken(
                    "prev_hash does not match the previous row's hash".into(),
                ));
            }
            let computed = raw.fields().hash(&head);
            if raw.hash != computed {
                return Err(broken("hash does not match the row's content".into()));
            }
            head = computed;
            expected += 1;
        }
        if !full {
            break;
        }
    }
    Ok(AuditVerification {
        rows: (expected - 1) as u64,
        head,
    })
}

/// `(last seq, last hash)` or `(0, GENESIS_HASH)` for an empty log.
pub(crate) fn head(conn: &Tx<'_>) -> Result<(i64, [u8; 32]), StoreError> {
    let last = conn.query_opt(
        "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
        &[],
    )?;
    match last {
        None => Ok((0, GENESIS_HASH)),
        Some(r) => {
            let (seq, hash): (i64, Vec<u8>) = (r.get(0)?, r.get(1)?);
            Ok((seq, to32(&hash, seq, "hash")?))
        }
    }
}
