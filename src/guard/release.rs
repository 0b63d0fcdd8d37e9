//! Helpers of the pipeline's last stage (`super::pipeline`): the outcome goes into its audit row, is counted,
//! and a signature is released only if that row committed. Kept in one place so no chain can
//! release a signature the audit log does not hold.

use std::time::Instant;

use keyguard_chain::Rejection;

use super::GuardError;
use crate::store::{AuditEntry, AuditReceipt, Decision, StoreError};

/// Writes a refusal's decision, rule and reason into its audit row.
pub(super) fn note_refusal(entry: &mut AuditEntry, refusal: &GuardError) {
    entry.decision = refusal.decision();
    entry.rule = refusal.rule().map(str::to_owned);
    entry.reason = Some(refusal.to_string());
}

/// Counts one request in the metrics once its audit commit is known.
pub(super) fn count(
    chain: &str,
    method: &'static str,
    refusal: Option<&GuardError>,
    committed: &Result<AuditReceipt, StoreError>,
    rule: Option<&str>,
    started: Instant,
) {
    let decision = match (refusal, committed) {
        (None, Ok(_)) => Decision::Signed,
        (None, Err(_)) => Decision::Failed,
        (Some(e), _) => e.decision(),
    };
    crate::metrics::request(chain, method, decision.as_str(), started.elapsed());
    if let (Decision::Refused | Decision::Withheld, Some(rule)) = (decision, rule) {
        crate::metrics::rejection(rule);
    }
}

/// The caller's error when nothing is released: a signature whose audit row did not commit is
/// withheld as a backend failure; a refusal is returned as it is (a failed audit of it is only
/// logged, since nothing leaves).
pub(super) fn unreleased(
    request_id: &str,
    who: &str,
    refusal: Option<GuardError>,
    audit: Option<StoreError>,
) -> GuardError {
    match (refusal, audit) {
        // Another instance (or process) signed first: its row is the fence. The refusal names
        // the rule the stale decision would have broken.
        (None, Some(StoreError::StateConflict(c))) => {
            tracing::warn!(request_id, conflict = %c, "state changed since the decision; signature withheld");
            let (name, reason) = c.split_once(": ").unwrap_or(("", c.as_str()));
            match keyguard_chain::rules::lookup(name) {
                Some(rule) => GuardError::Rejected(Rejection::policy(
                    rule.name,
                    "state",
                    format!("{reason} (decided by another signer sharing the store)"),
                )),
                None => GuardError::Backend(format!("signature withheld: {c}")),
            }
        }
        (None, audit) => {
            let e = audit.map_or_else(|| "no audit result".to_string(), |e| e.to_string());
            tracing::error!(request_id, error = %e, "audit commit failed; signature withheld");
            GuardError::Backend(format!("audit log unavailable, signature withheld: {e}"))
        }
        (Some(refusal), audit) => {
            if let Some(e) = audit {
                tracing::error!(request_id, error = %e, "audit commit of a refusal failed");
            }
            tracing::info!(request_id, who, %refusal, "refused");
            refusal
        }
    }
}
