//! The approval book's statements (M-of-N approvals and their votes), run by `approvals` inside
//! its own transactions. Consumption is one conditional UPDATE, so of two instances consuming
//! one approval at once exactly one succeeds.

use super::db::{vals, Dialect, Row, Tx};
use super::state::{split, ApprovalRecord};
use super::{now_ms, StoreError};

const APPROVAL_COLUMNS: &str = "id, key_id, intent_digest, requester, chain, summary, rule, grp, \
                                required, created_ms, expires_ms, state";

/// Reads one approval with its votes, inside a transaction or not.
pub(crate) fn approval(tx: &Tx<'_>, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
    let row = tx.query_opt(
        &format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"),
        vals![id],
    )?;
    row.map(|r| with_votes(tx, read_approval(&r)?)).transpose()
}

fn read_approval(r: &Row) -> Result<ApprovalRecord, StoreError> {
    let summary: String = r.get(5)?;
    Ok(ApprovalRecord {
        id: r.get(0)?,
        key_id: r.get(1)?,
        intent_digest: r.get(2)?,
        requester: r.get(3)?,
        chain: r.get(4)?,
        summary: serde_json::from_str(&summary).unwrap_or(serde_json::Value::Null),
        rule: r.get(6)?,
        group: r.get(7)?,
        required: r.get(8)?,
        approved: 0,
        approvers: Vec::new(),
        created_ms: r.get(9)?,
        expires_ms: r.get(10)?,
        state: r.get(11)?,
    })
}

fn with_votes(tx: &Tx<'_>, mut a: ApprovalRecord) -> Result<ApprovalRecord, StoreError> {
    a.approvers = tx.column(
        "SELECT \"user\" FROM approval_votes WHERE approval_id = $1 AND vote = 'approve' \
         ORDER BY ts_ms",
        vals![&a.id],
    )?;
    a.approved = u32::try_from(a.approvers.len()).unwrap_or(u32::MAX);
    Ok(a)
}

/// The newest approval for one key and intent.
pub(crate) fn latest_approval(
    tx: &Tx<'_>,
    key: &str,
    digest: &[u8],
) -> Result<Option<ApprovalRecord>, StoreError> {
    // Insertion order breaks ties of one millisecond.
    let ord = match tx.dialect() {
        Dialect::Sqlite => "rowid",
        Dialect::Postgres => "ord",
    };
    let row = tx.query_opt(
        &format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE key_id = $1 AND intent_digest = $2 \
             ORDER BY created_ms DESC, {ord} DESC LIMIT 1"
        ),
        vals![key, digest],
    )?;
    row.map(|r| with_votes(tx, read_approval(&r)?)).transpose()
}

/// Inserts a new pending approval.
pub(crate) fn insert_approval(tx: &Tx<'_>, a: &ApprovalRecord) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO approvals (id, key_id, intent_digest, requester, chain, summary, rule, grp, \
         required, created_ms, expires_ms, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending')",
        vals![
            &a.id,
            &a.key_id,
            &a.intent_digest,
            &a.requester,
            a.chain.as_deref(),
            a.summary.to_string(),
            &a.rule,
            &a.group,
            a.required,
            a.created_ms,
            a.expires_ms
        ],
    )?;
    Ok(())
}

/// Moves an approval from state `from` to `to`; true if it was in `from`. One conditional
/// statement: of two instances consuming the same approval at once, exactly one gets `true`.
pub(crate) fn transition(tx: &Tx<'_>, id: &str, from: &str, to: &str) -> Result<bool, StoreError> {
    let consumed = (to == "consumed").then(now_ms);
    let n = tx.execute(
        "UPDATE approvals SET state = $3, consumed_ms = COALESCE($4, consumed_ms) \
         WHERE id = $1 AND state = $2",
        vals![id, from, to, consumed],
    )?;
    Ok(n == 1)
}

/// How long a consumed approval must sit without its signed row before a PostgreSQL-backed
/// instance restores it (far above any signing deadline).
const SHARED_SETTLE_MS: i64 = 60_000;

/// Gives back approvals a crash consumed for a signature that was never released: the guard
/// consumes an approval (durably) before it signs, and the signature leaves only after its
/// audit row — naming the approval — commits. A `consumed` approval with no signed row naming
/// it was therefore never used, and leaving it consumed would refuse the approved intent forever
/// (`approval.consumed`). Only live approvals are restored (an expired one would be a fresh
/// request anyway); the scan covers signed rows from a day before the oldest candidate was
/// created, so a wall clock stepped back a little cannot hide its signature. Returns the ids.
///
/// With several instances sharing PostgreSQL, an approval another instance consumed a moment
/// ago and is still signing would look unreleased; only approvals consumed more than
/// [`SHARED_SETTLE_MS`] ago are restored.
pub(crate) fn restore_unreleased(tx: &Tx<'_>, now: i64) -> Result<Vec<String>, StoreError> {
    let (approval_id, settle_ms) = match tx.dialect() {
        Dialect::Sqlite => ("json_extract(summary, '$.approval_id')", i64::MIN),
        Dialect::Postgres => ("(summary::jsonb ->> 'approval_id')", SHARED_SETTLE_MS),
    };
    tx.column(
        &format!(
            "UPDATE approvals SET state = 'approved', consumed_ms = NULL \
             WHERE state = 'consumed' AND expires_ms > $1 AND COALESCE(consumed_ms, 0) <= $2 \
             AND id NOT IN ( \
               SELECT {approval_id} FROM audit_log \
               WHERE decision = 'signed' AND ts_ms >= ( \
                 SELECT MIN(created_ms) - 86400000 FROM approvals \
                 WHERE state = 'consumed' AND expires_ms > $1) \
               AND {approval_id} IS NOT NULL) \
             RETURNING id"
        ),
        // SQLite: one process, restoring before it signs anything: no settling needed.
        vals![
            now,
            if settle_ms == i64::MIN {
                i64::MAX
            } else {
                now.saturating_sub(settle_ms)
            }
        ],
    )
}

/// Records a vote; false if this user already voted on this approval.
pub(crate) fn insert_vote(
    tx: &Tx<'_>,
    id: &str,
    user: &str,
    vote: &str,
) -> Result<bool, StoreError> {
    let n = tx.execute(
        "INSERT INTO approval_votes (approval_id, \"user\", vote, ts_ms) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (approval_id, \"user\") DO NOTHING",
        vals![id, user, vote, now_ms()],
    )?;
    Ok(n == 1)
}

/// The users whose approve votes on `id` count under the rule in force now: they still exist,
/// still hold the approver role, are in `group`, and are not the requester. A vote cast by
/// someone since removed, demoted or moved to another group no longer counts.
pub(crate) fn valid_approvers(
    tx: &Tx<'_>,
    id: &str,
    group: &str,
    requester: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = tx.query(
        "SELECT v.\"user\", u.roles, u.groups FROM approval_votes v \
         JOIN users u ON u.name = v.\"user\" \
         WHERE v.approval_id = $1 AND v.vote = 'approve' ORDER BY v.ts_ms",
        vals![id],
    )?;
    let mut out = Vec::new();
    for r in rows {
        let (user, roles, groups): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if user != requester
            && split(&roles).iter().any(|r| r == "approver")
            && split(&groups).iter().any(|g| g == group)
        {
            out.push(user);
        }
    }
    Ok(out)
}

/// Puts an open approval under the rule in force now (rule name, group, approvals needed).
pub(crate) fn retarget_approval(
    tx: &Tx<'_>,
    id: &str,
    rule: &str,
    group: &str,
    required: u32,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE approvals SET rule = $2, grp = $3, required = $4 WHERE id = $1",
        vals![id, rule, group, required],
    )?;
    Ok(())
}

/// Live pending approvals, overall or of one requester.
pub(crate) fn count_pending(
    tx: &Tx<'_>,
    now: i64,
    requester: Option<&str>,
) -> Result<u64, StoreError> {
    let n: i64 = match requester {
        None => tx.query(
            "SELECT COUNT(*) FROM approvals WHERE state = 'pending' AND expires_ms > $1",
            vals![now],
        )?,
        Some(r) => tx.query(
            "SELECT COUNT(*) FROM approvals WHERE state = 'pending' AND expires_ms > $1 \
             AND requester = $2",
            vals![now, r],
        )?,
    }
    .first()
    .map_or(Ok(0), |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// One page of live approvals in `state`, oldest first, starting after approval `after`.
pub(crate) fn live_approvals_page(
    tx: &Tx<'_>,
    state: &str,
    now: i64,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match after {
        None => tx.query(
            &format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE state = $1 AND expires_ms > $2 \
                 ORDER BY created_ms, id LIMIT $3"
            ),
            vals![state, now, limit],
        )?,
        Some(after) => tx.query(
            &format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE state = $1 AND expires_ms > $2 \
                 AND (created_ms, id) > (SELECT created_ms, id FROM approvals WHERE id = $3) \
                 ORDER BY created_ms, id LIMIT $4"
            ),
            vals![state, now, after, limit],
        )?,
    };
    rows.iter()
        .map(|r| with_votes(tx, read_approval(r)?))
        .collect()
}

/// Approvals in `state` that have not expired, oldest first.
pub(crate) fn live_approvals(
    tx: &Tx<'_>,
    state: &str,
    now: i64,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    tx.query(
        &format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE state = $1 AND expires_ms > $2 \
             ORDER BY created_ms"
        ),
        vals![state, now],
    )?
    .iter()
    .map(|r| with_votes(tx, read_approval(r)?))
    .collect()
}
