//! Daemon-side helpers for the kill switch's emergency paths and the periodic audit head log.

use std::sync::Arc;
use std::time::Duration;

use crate::access::kill::{KillSwitch, ALL_KEYS};
use crate::approvals::Approvals;
use crate::store::{AuditEntry, AuditFilter, AuditLog, Decision, StateDb};

/// Disables every key with no TOTP: the host's root can always stop signing, never start it.
pub(crate) async fn emergency_stop(kill: &KillSwitch, audit: &AuditLog, source: &str) {
    let persisted = kill.disable(ALL_KEYS, source).await;
    if let Err(e) = &persisted {
        tracing::error!(error = %e, "kill switch is on but could not be persisted");
    }
    println!("keyguard: all keys disabled ({source})");
    tracing::warn!(source, "emergency stop: all keys disabled");
    let entry = AuditEntry {
        request_id: format!("kill-{}", crate::store::now_ms()),
        client: format!("local:{source}"),
        key_id: Some(ALL_KEYS.into()),
        chain: None,
        method: "admin.keys.disable".into(),
        summary: serde_json::json!({"all": true, "source": source}),
        decision: Decision::Accepted,
        rule: Some(keyguard_chain::rules::common::KILL_SWITCH_EMERGENCY.into()),
        reason: persisted.err().map(|e| e.to_string()),
        tx_hash: None,
    };
    if let Err(e) = audit.append(entry).await {
        tracing::error!(error = %e, "audit of the emergency stop failed");
    }
}

/// Requests already see the kill file on every check; this makes it persistent, so deleting
/// the file later does not silently start signing again.
pub(crate) fn spawn_kill_file_watch(kill: Arc<KillSwitch>, audit: AuditLog) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut seen = false;
        loop {
            tick.tick().await;
            let present = kill.kill_file_present();
            if present && !seen {
                emergency_stop(&kill, &audit, "kill file").await;
            }
            seen = present;
        }
    });
}

/// Logs the audit head (seq and hash) periodically so an external log can anchor it.
pub(crate) fn spawn_head_log(state: StateDb, interval: &str) {
    let period = crate::config::parse_duration(interval).unwrap_or(Duration::from_secs(300));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let db = state.clone();
            let head = tokio::task::spawn_blocking(move || {
                db.query_audit(&AuditFilter {
                    limit: Some(1),
                    newest_first: true,
                    ..AuditFilter::default()
                })
            })
            .await;
            if let Ok(Ok(rows)) = head {
                if let Some(r) = rows.first() {
                    tracing::info!(seq = r.seq, head = %hex::encode(r.hash), "audit head");
                }
            }
        }
    });
}

/// Keeps the control-state gauges current: how many approvals wait and which keys are off.
/// Read from the same state the guard uses, every few seconds (cheap indexed queries).
pub(crate) fn spawn_control_gauges(kill: Arc<KillSwitch>, approvals: Approvals) {
    // Set once before the caller reports ready, so the first scrape already has them.
    update_control_gauges(&kill, &approvals);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let (kill, book) = (kill.clone(), approvals.clone());
            let _ = tokio::task::spawn_blocking(move || update_control_gauges(&kill, &book)).await;
        }
    });
}

fn update_control_gauges(kill: &KillSwitch, approvals: &Approvals) {
    let (all_off, keys) = kill.status();
    crate::metrics::keys_disabled(all_off, keys.len());
    if let Ok(n) = approvals.pending_count(crate::store::now_ms()) {
        crate::metrics::approvals_pending(usize::try_from(n).unwrap_or(usize::MAX));
    }
}
