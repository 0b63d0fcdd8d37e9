//! JSON-RPC error objects with the codes and `data` fields fixed in `docs/design.md` ("Outcomes").

use jsonrpsee::types::ErrorObjectOwned;
use keyguard_chain::Rejection;
use serde_json::json;

use crate::guard::GuardError;

/// `-32602` invalid params.
pub const INVALID_PARAMS: i32 = -32602;
/// `-32001` policy violation.
pub const POLICY_VIOLATION: i32 = -32001;
/// `-32002` approval required.
pub const APPROVAL_REQUIRED: i32 = -32002;
/// `-32003` rate limited.
pub const RATE_LIMITED: i32 = -32003;
/// `-32004` key disabled (kill switch).
pub const KEY_DISABLED: i32 = -32004;
/// `-32005` unauthorized.
pub const UNAUTHORIZED: i32 = -32005;
/// `-32007` backend failure.
pub const BACKEND_FAILURE: i32 = -32007;

/// Maps a guard refusal to its JSON-RPC error.
pub fn from_guard(e: &GuardError) -> ErrorObjectOwned {
    match e {
        GuardError::Rejected(Rejection::InvalidParams { field, reason }) => {
            ErrorObjectOwned::owned(
                INVALID_PARAMS,
                format!("invalid params: {field}: {reason}"),
                Some(json!({ "field": field, "reason": reason })),
            )
        }
        GuardError::Rejected(Rejection::Policy {
            rule,
            field,
            reason,
        }) => ErrorObjectOwned::owned(
            POLICY_VIOLATION,
            format!("policy violation: {rule}: {reason}"),
            Some(json!({ "rule": rule, "field": field, "reason": reason })),
        ),
        GuardError::Unauthorized(reason) | GuardError::OutOfScope { reason, .. } => {
            unauthorized(reason)
        }
        GuardError::Backend(reason) | GuardError::Pass2Mismatch(reason) => ErrorObjectOwned::owned(
            BACKEND_FAILURE,
            "backend failure",
            Some(json!({ "reason": reason })),
        ),
        GuardError::ApprovalRequired {
            approval_id,
            required,
            approved,
            expires_at_ms,
        } => ErrorObjectOwned::owned(
            APPROVAL_REQUIRED,
            format!("approval required: {approved} of {required}"),
            Some(json!({
                "approval_id": approval_id,
                "required": required,
                "approved": approved,
                "expires_at": expires_at_ms,
            })),
        ),
        GuardError::RateLimited {
            rule,
            retry_after_ms,
        } => ErrorObjectOwned::owned(
            RATE_LIMITED,
            "rate limited",
            Some(json!({ "rule": rule, "retry_after_ms": retry_after_ms })),
        ),
        GuardError::KeyDisabled(reason) => ErrorObjectOwned::owned(
            KEY_DISABLED,
            format!("key disabled: {reason}"),
            Some(json!({ "reason": reason })),
        ),
    }
}

/// `-32005` with the reason in `data`.
pub fn unauthorized(reason: &str) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(
        UNAUTHORIZED,
        format!("unauthorized: {reason}"),
        Some(json!({ "reason": reason })),
    )
}
