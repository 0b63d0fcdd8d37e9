//! The two guard stages that involve people rather than chains, kept chain-agnostic so every
//! signing path calls the same code:
//!
//! - the rate limits and kill switch the pipeline applies before any decoding
//!   (`super::pipeline`), so a disabled key or a flood costs nothing;
//! - [`Guard::approval_stage`], after policy: hold, or consume an approval exactly once. It
//!   runs without a kill-switch pass and gives up as soon as the key is switched off.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use keyguard_chain::{KeyId, Rejection};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Guard, GuardError};
use crate::access::kill::KillSwitch;
use crate::access::limits::RateLimits;
use crate::access::Caller;
use crate::approvals::{
    ApprovalError, ApprovalOutcome, ApprovalRequirement, Approvals, OwnedIntent,
};
use crate::config::Config;

/// How often a waiting approval call looks at the approval book again.
const APPROVAL_POLL: Duration = Duration::from_millis(200);

/// Kill switch, rate limits and the approval book, shared by every listener.
pub(super) struct Controls {
    pub(super) kill: Arc<KillSwitch>,
    pub(super) limits: RwLock<Arc<RateLimits>>,
    pub(super) approvals: Option<Approvals>,
}

impl Controls {
    /// In-memory kill switch, the configured limits, no approval book (approval rules refuse).
    pub(super) fn new(config: &Config) -> Self {
        Controls {
            kill: Arc::new(KillSwitch::default()),
            limits: RwLock::new(Arc::new(RateLimits::new(config.rate_limits.as_ref()))),
            approvals: None,
        }
    }
}

/// A stable digest of "this key signs these exact bytes on this chain": approvals bind to it,
/// so an approval of one transaction can never release another.
pub fn intent_digest(key: &KeyId, chain: &str, signing_bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"keyguard/intent/v1\0");
    for part in [key.as_str().as_bytes(), chain.as_bytes(), signing_bytes] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// What the approval stage knows about one request.
pub(super) struct ApprovalInput<'a> {
    pub(super) key: &'a KeyId,
    pub(super) chain: &'a str,
    pub(super) digest: [u8; 32],
    pub(super) summary: &'a Value,
    /// The request field the approval rule looked at (named if no approval book runs).
    pub(super) field: &'static str,
}

impl Guard {
    /// Attaches the persistent kill switch and the approval book (the daemon does; tests may not).
    pub fn with_people(mut self, kill: Arc<KillSwitch>, approvals: Approvals) -> Self {
        self.controls.kill = kill;
        self.controls.approvals = Some(approvals);
        self
    }

    /// Records a signing request whose credential was refused at the transport (missing,
    /// unknown or revoked token). Nothing is signed; the row exists so that credential
    /// stuffing and the use of a revoked token show up in the audit log, under the rule
    /// `access.unauthenticated`. Group commit keeps the cost of such rows to a shared fsync,
    /// and the configured `per_client` limit applies to the pseudo-client `unauthenticated`, so
    /// a flood without a credential cannot fill the disk with rows (beyond the limit it is only
    /// counted in the metrics). The per-method and per-key budgets of real clients are not
    /// touched, so such a flood cannot rate-limit them either.
    pub async fn audit_unauthenticated(&self, method: &str, chain: &str, reason: &str) {
        crate::metrics::rejection("access.unauthenticated");
        let limits = self
            .controls
            .limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !limits.client_allows("unauthenticated") {
            tracing::debug!(method, "unauthenticated flood: audit row skipped");
            return;
        }
        let entry = crate::store::AuditEntry {
            request_id: self.new_request_id(),
            client: "unauthenticated".into(),
            key_id: None,
            chain: Some(chain.to_owned()),
            method: method.to_owned(),
            summary: Value::Null,
            decision: crate::store::Decision::Refused,
            rule: Some("access.unauthenticated".into()),
            reason: Some(reason.to_owned()),
            tx_hash: None,
        };
        if let Err(e) = self.audit.append(entry).await {
            tracing::error!(method, error = %e, "audit of an unauthenticated request failed");
        }
        tracing::info!(method, reason, "unauthenticated signing request refused");
    }

    /// The kill switch requests pass through.
    pub fn kill_switch(&self) -> Arc<KillSwitch> {
        self.controls.kill.clone()
    }

    pub(super) fn reload_limits(&self, config: &Config) {
        let limits = Arc::new(RateLimits::new(config.rate_limits.as_ref()));
        *self
            .controls
            .limits
            .write()
            .unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// The rate limits in force (swapped whole on reload).
    pub(super) fn limits(&self) -> Arc<RateLimits> {
        self.controls
            .limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Refuses a chain outside the caller's scope (a managed client scoped to some chains).
    pub(super) fn check_chain(caller: &Caller, chain: &str) -> Result<(), GuardError> {
        if caller.may_use_chain(chain) {
            Ok(())
        } else {
            Err(GuardError::OutOfScope {
                rule: "access.chain_not_granted",
                reason: format!("chain {chain} is not granted to client {}", caller.name),
            })
        }
    }

    /// After policy: with no requirement, proceed; otherwise hold the request (`-32002`) until
    /// the quorum approved this exact intent, then consume the approval for this one signature.
    /// Returns the consumed approval's id.
    /// Answers a request that needs approvals: proceed, hold (-32002), or refuse.
    pub(super) async fn approval_stage(
        &self,
        caller: &Caller,
        input: ApprovalInput<'_>,
        requirement: Option<ApprovalRequirement>,
    ) -> Result<Option<String>, GuardError> {
        let Some(req) = requirement else {
            return Ok(None);
        };
        let Some(book) = self.controls.approvals.clone() else {
            return Err(Rejection::policy(
                "approval.unavailable",
                input.field,
                "this request needs approval but no approval book is running",
            )
            .into());
        };
        let intent = OwnedIntent {
            key: input.key.to_string(),
            digest: input.digest,
            requester: caller.name.to_string(),
            chain: input.chain.to_owned(),
            summary: input.summary.clone(),
        };
        let deadline = tokio::time::Instant::now() + caller.approval_wait;
        let decided = loop {
            let decided = book
                .decide_blocking(intent.clone(), req.clone())
                .await
                .map_err(|e| GuardError::Backend(format!("approval book: {e}")))?;
            // A listener with an approval wait holds the call open and asks again until the
            // quorum is met, the request is rejected or expires, or the wait runs out.
            let still_pending = matches!(decided, Ok(ApprovalOutcome::Held(_)));
            if !still_pending || tokio::time::Instant::now() >= deadline {
                break decided;
            }
            // Parked without a pass: a disable does not wait for this request, and the request
            // stops waiting (it would be refused after the wait anyway).
            if self.controls.kill.is_disabled(Some(input.key.as_str())) {
                return Err(GuardError::KeyDisabled(format!(
                    "key {} is disabled",
                    input.key
                )));
            }
            tokio::time::sleep(APPROVAL_POLL.min(deadline - tokio::time::Instant::now())).await;
        };
        match decided {
            Ok(ApprovalOutcome::Proceed(id)) => Ok(Some(id)),
            Ok(ApprovalOutcome::Held(a)) => Err(GuardError::ApprovalRequired {
                approval_id: a.id,
                required: a.required,
                approved: a.approved,
                expires_at_ms: a.expires_ms,
            }),
            Err(ApprovalError::Rejected(id)) => Err(Rejection::policy(
                "approval.rejected",
                "approval_id",
                format!("approval {id} was rejected"),
            )
            .into()),
            Err(ApprovalError::Consumed(id)) => Err(Rejection::policy(
                "approval.consumed",
                "approval_id",
                format!("this exact request was already signed with approval {id}"),
            )
            .into()),
            Err(e @ ApprovalError::Capped { .. }) => {
                Err(Rejection::policy("approval.pending_cap", "approval", e.to_string()).into())
            }
            Err(ApprovalError::Store(e)) => Err(GuardError::Backend(format!("approval book: {e}"))),
        }
    }

    /// Gives back an approval consumed by a request that then failed to sign.
    pub(super) fn restore_approval(&self, id: &str) {
        if let Some(book) = &self.controls.approvals {
            if let Err(e) = book.restore(id) {
                tracing::error!(approval = id, error = %e, "could not restore approval");
            }
        }
    }
}

/// The daemon-level form of an Ethereum approval rule.
pub(super) fn evm_requirement(rule: &keyguard_evm::EvmApprovalRule) -> ApprovalRequirement {
    ApprovalRequirement {
        rule: "evm.require_approval".into(),
        approvers: rule.approvers,
        group: rule.group.clone(),
        // Validated at load; an unparsable value here would mean a zero-length window.
        within: rule.within(),
    }
}

/// The daemon-level form of a Bitcoin approval rule (same book, same lifecycle as Ethereum's).
pub(super) fn bitcoin_requirement(
    rule: &keyguard_bitcoin::approval::BitcoinApprovalRule,
) -> ApprovalRequirement {
    ApprovalRequirement {
        rule: keyguard_bitcoin::approval::RULE.into(),
        approvers: rule.approvers,
        group: rule.group.clone(),
        // Validated at load, like the Ethereum rule.
        within: rule.within(),
    }
}
