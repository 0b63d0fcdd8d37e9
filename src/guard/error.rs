//! The guard's refusals, one variant per outcome of `docs/design.md` ("Outcomes").

use keyguard_chain::Rejection;

use crate::store::Decision;

/// Rule of a signature that pass 2 rejected.
pub const PASS2_MISMATCH: &str = "guard.pass2_mismatch";

/// Why the guard did not release a signature.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Malformed request (`-32602`) or policy refusal (`-32001`).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The caller may not use this key (`-32005`).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The caller's scope does not cover this method or chain (`-32005`); `rule` is
    /// `access.method_not_granted` or `access.chain_not_granted`.
    #[error("unauthorized: {reason}")]
    OutOfScope { rule: &'static str, reason: String },
    /// The backend failed or the audit log could not commit (`-32007`).
    #[error("backend failure: {0}")]
    Backend(String),
    /// The backend returned a signature that pass 2 rejected (wrong key, wrong bytes, a fault):
    /// withheld, and kept apart from an outage because it may mean a compromised or faulty
    /// signer. Rule [`PASS2_MISMATCH`], audit decision `withheld`; on the wire still `-32007`
    /// (`docs/design.md`: "pass 2 rejected the signature").
    #[error("signature withheld: pass 2 rejected the backend's signature: {0}")]
    Pass2Mismatch(String),
    /// Held until enough humans approve this exact intent (`-32002`).
    #[error("approval {approval_id} required: {approved} of {required} approvals")]
    ApprovalRequired {
        approval_id: String,
        required: u32,
        approved: u32,
        /// Unix milliseconds after which the request can no longer be approved.
        expires_at_ms: i64,
    },
    /// A rate limit is exhausted (`-32003`).
    #[error("rate limited by {rule}; retry after {retry_after_ms} ms")]
    RateLimited {
        rule: &'static str,
        retry_after_ms: u64,
    },
    /// The key (or every key) is switched off (`-32004`).
    #[error("key disabled: {0}")]
    KeyDisabled(String),
}

impl GuardError {
    /// The policy rule that refused, if a rule did.
    pub fn rule(&self) -> Option<&str> {
        match self {
            GuardError::Rejected(Rejection::Policy { rule, .. }) => Some(rule),
            GuardError::Rejected(Rejection::InvalidParams { .. }) => Some("request.invalid"),
            GuardError::Unauthorized(_) => Some("access.key_not_granted"),
            GuardError::OutOfScope { rule, .. } => Some(rule),
            GuardError::Backend(_) => None,
            GuardError::Pass2Mismatch(_) => Some(PASS2_MISMATCH),
            GuardError::ApprovalRequired { .. } => Some("approval.required"),
            GuardError::RateLimited { rule, .. } => Some(rule),
            GuardError::KeyDisabled(_) => Some(keyguard_chain::rules::common::KILL_SWITCH),
        }
    }

    /// How the audit log records this outcome.
    pub fn decision(&self) -> Decision {
        match self {
            GuardError::Backend(_) => Decision::Failed,
            GuardError::Pass2Mismatch(_) => Decision::Withheld,
            GuardError::ApprovalRequired { .. } => Decision::Held,
            _ => Decision::Refused,
        }
    }
}
