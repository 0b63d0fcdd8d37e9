//! Audit counts for the web console's overview: rows per hour, chain, decision and rule.
//!
//! Counted once, then kept up to date incrementally: each call counts only the rows appended
//! since the last one (a primary-key range), so the overview stays fast on a large log without
//! an extra index on the signing path's table.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use super::db::vals;
use super::{StateDb, StoreError};

const HOUR_MS: i64 = 3_600_000;
/// Oldest hour kept (and the furthest back a caller may ask).
const MAX_DAYS: i64 = 31;
/// Most groups kept; past that the oldest hours are dropped first.
const MAX_GROUPS: usize = 200_000;

/// Rows of one (hour, chain, decision, rule) group.
#[derive(Debug, Clone, Serialize)]
pub struct AuditCount {
    /// Start of the hour (unix ms).
    pub hour_ms: i64,
    pub chain: String,
    pub decision: String,
    pub rule: Option<String>,
    pub count: i64,
}

type Key = (i64, String, String, Option<String>);

#[derive(Debug, Default)]
struct State {
    /// Rows up to this seq are counted.
    last_seq: i64,
    /// First hour counted (`None`: nothing counted yet).
    first_hour: Option<i64>,
    counts: BTreeMap<Key, i64>,
}

/// The running counts.
#[derive(Debug, Default)]
pub struct AuditCounter(Mutex<State>);

impl AuditCounter {
    /// Counts of chain-bound rows from the hour of `since_ms` on (at most [`MAX_DAYS`] back).
    pub fn counts(
        &self,
        db: &StateDb,
        since_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<AuditCount>, StoreError> {
        let since_hour = since_ms
            .max(now_ms - MAX_DAYS * 86_400_000)
            .div_euclid(HOUR_MS);
        let mut st = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if st.first_hour.is_none_or(|h| since_hour < h) {
            // Asked further back than counted: count again from there.
            *st = State {
                first_hour: Some(since_hour),
                ..State::default()
            };
        }
        let first = st.first_hour.unwrap_or(since_hour);
        let head: i64 = db
            .rows("SELECT COALESCE(MAX(seq), 0) FROM audit_log", &[])?
            .first()
            .map(|r| r.get(0))
            .transpose()?
            .unwrap_or(0);
        if head > st.last_seq {
            let fresh = db.rows(
                "SELECT ts_ms / 3600000 AS hour, chain, decision, rule, COUNT(*) FROM audit_log \
                 WHERE seq > $1 AND seq <= $2 AND ts_ms >= $3 AND chain IS NOT NULL \
                 GROUP BY hour, chain, decision, rule",
                vals![st.last_seq, head, first * HOUR_MS],
            )?;
            for r in &fresh {
                let key: Key = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                let n: i64 = r.get(4)?;
                *st.counts.entry(key).or_default() += n;
            }
            st.last_seq = head;
        }
        // Forget hours nobody may ask for any more, and bound the table.
        let oldest = (now_ms - MAX_DAYS * 86_400_000).div_euclid(HOUR_MS);
        st.counts.retain(|k, _| k.0 >= oldest);
        while st.counts.len() > MAX_GROUPS {
            let Some(k) = st.counts.keys().next().cloned() else {
                break;
            };
            st.counts.remove(&k);
        }
        Ok(st
            .counts
            .range((since_hour, String::new(), String::new(), None)..)
            .map(|((hour, chain, decision, rule), n)| AuditCount {
                hour_ms: hour * HOUR_MS,
                chain: chain.clone(),
                decision: decision.clone(),
                rule: rule.clone(),
                count: *n,
            })
            .collect())
    }
}

/// The last height/round/step signed per CometBFT validator key (the overview's table).
#[derive(Debug, Clone, Serialize)]
pub struct ValidatorTip {
    pub chain_id: String,
    pub key_id: String,
    pub height: i64,
    pub round: i64,
    pub step: i64,
    pub updated_ms: i64,
}

impl StateDb {
    /// Every CometBFT watermark (at most 500), by chain and key.
    pub fn validator_tips(&self) -> Result<Vec<ValidatorTip>, StoreError> {
        self.rows(
            "SELECT chain_id, key_id, height, round, step, updated_ms FROM cometbft_watermarks \
             ORDER BY chain_id, key_id LIMIT 500",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(ValidatorTip {
                chain_id: r.get(0)?,
                key_id: r.get(1)?,
                height: r.get(2)?,
                round: r.get::<i64>(3)?,
                step: r.get::<i64>(4)?,
                updated_ms: r.get(5)?,
            })
        })
        .collect()
    }

    /// Milliseconds from request to its last approving vote, for approvals created since
    /// `since_ms` that are no longer pending (at most 1,000, newest first).
    pub fn approval_latencies(&self, since_ms: i64) -> Result<Vec<i64>, StoreError> {
        self.rows(
            "SELECT MAX(v.ts_ms) - a.created_ms FROM approvals a \
             JOIN approval_votes v ON v.approval_id = a.id \
             WHERE a.created_ms >= $1 AND a.state <> 'pending' AND a.state <> 'rejected' \
             AND v.vote = 'approve' GROUP BY a.id, a.created_ms ORDER BY a.created_ms DESC LIMIT 1000",
            vals![since_ms],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditEntry, Decision, Store};

    fn entry(i: usize, chain: Option<&str>, refused: bool) -> AuditEntry {
        AuditEntry {
            request_id: format!("r{i}"),
            client: "app".into(),
            key_id: Some("k".into()),
            chain: chain.map(str::to_owned),
            method: "eth_signTransaction".into(),
            summary: serde_json::Value::Null,
            decision: if refused {
                Decision::Refused
            } else {
                Decision::Signed
            },
            rule: refused.then(|| "evm.max_value".into()),
            reason: None,
            tx_hash: None,
        }
    }

    fn total(v: &[AuditCount], decision: &str) -> i64 {
        v.iter()
            .filter(|c| c.decision == decision)
            .map(|c| c.count)
            .sum()
    }

    #[test]
    fn incremental_counts_match_a_fresh_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("k.db")).unwrap();
        let (log, db) = (store.audit_log(), store.state_db().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let now = crate::store::now_ms();
        for i in 0..30 {
            rt.block_on(log.append(entry(i, Some("eip155:1"), i % 3 == 0)))
                .unwrap();
        }
        rt.block_on(log.append(entry(99, None, false))).unwrap();
        let counter = AuditCounter::default();
        let first = counter.counts(&db, now - 3_600_000, now).unwrap();
        assert_eq!(
            (total(&first, "signed"), total(&first, "refused")),
            (20, 10)
        );
        for i in 30..45 {
            rt.block_on(log.append(entry(i, Some("cosmos:hub"), i % 5 == 0)))
                .unwrap();
        }
        let later = counter.counts(&db, now - 3_600_000, now).unwrap();
        let fresh = AuditCounter::default()
            .counts(&db, now - 3_600_000, now)
            .unwrap();
        assert_eq!(
            (total(&later, "signed"), total(&later, "refused")),
            (32, 13)
        );
        assert_eq!(
            format!("{later:?}"),
            format!("{fresh:?}"),
            "incremental == recount"
        );
        // Rows without a chain (admin actions) are not charted.
        assert!(later.iter().all(|c| !c.chain.is_empty()));
        rt.block_on(log.shutdown()).unwrap();
    }
}
