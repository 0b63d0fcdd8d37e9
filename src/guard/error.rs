//! The guard's refusals, one variant per JSON-RPC error class of DESIGN.md.

use keyguard_chain::Rejection;

use crate::store::Decision;

/// Why the guard did not release a signature.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Malformed request (`-32602`) or policy refusal (`-32001`).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The caller may not use this key (`-32005`).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The backend failed, pass 2 failed, or the audit log could not commit (`-32007`).
    #[error("backend failure: {0}")]
    Backend(String),
}

impl GuardError {
    /// The policy rule that refused, if a rule did.
    pub fn rule(&self) -> Option<&str> {
        match self {
            GuardError::Rejected(Rejection::Policy { rule, .. }) => Some(rule),
            GuardError::Rejected(Rejection::InvalidParams { .. }) => Some("request.invalid"),
            GuardError::Unauthorized(_) => Some("access.key_not_granted"),
            GuardError::Backend(_) => None,
        }
    }

    /// How the audit log records this outcome.
    pub fn decision(&self) -> Decision {
        match self {
            GuardError::Backend(_) => Decision::Failed,
            _ => Decision::Refused,
        }
    }
}
