//! The recovery thread: after the token or library failed, finalize the old library state
//! once no signing thread uses it, then reconnect with backoff until the token answers again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use super::token::Connection;
use super::{Pkcs11Error, Shared, State};

/// Waits for the state to turn broken, then reconnects with backoff until the token answers
/// again with the same keys. Stops on `Closed`, and after a refused PIN (retrying a wrong PIN
/// would lock the token's user PIN).
pub(super) fn recovery_loop(shared: &Shared) {
    let mut backoff = Duration::from_millis(200);
    let mut state = shared.state();
    loop {
        match &mut *state {
            State::Closed => return,
            State::Ready(_) | State::Broken { final_: true, .. } => {
                backoff = Duration::from_millis(200);
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            State::Broken { retired, .. } => {
                // Finalize the old library state only once no signing thread still uses it.
                if let Some(old) = retired.take() {
                    if Arc::strong_count(&old) > 1 {
                        *retired = Some(old);
                        state = wait(shared, state, Duration::from_millis(50));
                        continue;
                    }
                    drop(state);
                    drop(old);
                    state = shared.state();
                    continue;
                }
            }
        }
        drop(state);
        let result = Connection::open(&shared.settings, true).map(|conn| check_keys(shared, conn));
        state = shared.state();
        if matches!(*state, State::Closed) {
            return;
        }
        match result {
            Ok(conn) => {
                shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                crate::metrics::pkcs11_event("reconnect");
                crate::metrics::pkcs11_available(true);
                tracing::info!(keys = conn.keys.len(), "pkcs11: token reconnected");
                *state = State::Ready(Arc::new(conn));
            }
            Err(e @ (Pkcs11Error::WrongPin(_) | Pkcs11Error::PinLocked(_))) => {
                tracing::error!(error = %e, "pkcs11: login refused; not retrying (restart keyguard after fixing the PIN)");
                *state = State::Broken {
                    reason: e.to_string(),
                    retired: None,
                    final_: true,
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "pkcs11: reconnect failed");
                if let State::Broken { reason, .. } = &mut *state {
                    *reason = format!("token unavailable, reconnecting: {e}");
                }
                state = wait(shared, state, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

fn wait<'a>(
    shared: &'a Shared,
    state: MutexGuard<'a, State>,
    for_: Duration,
) -> MutexGuard<'a, State> {
    shared
        .wake
        .wait_timeout(state, for_)
        .map(|(s, _)| s)
        .unwrap_or_else(|p| p.into_inner().0)
}

/// After a reconnect, only keys whose public key is what was read at start are kept: a key
/// replaced on the token behind keyguard's back must not sign (pass 2 would also refuse it).
fn check_keys(shared: &Shared, mut conn: Connection) -> Connection {
    conn.keys.retain(|id, key| match shared.keys.get(id) {
        Some(known) if known.public_key == key.info.public_key => true,
        Some(_) => {
            tracing::error!(key = %id, "pkcs11: key changed on the token since start; not using it");
            false
        }
        None => false,
    });
    for id in shared.keys.keys().filter(|id| !conn.keys.contains_key(*id)) {
        tracing::error!(key = %id, "pkcs11: key missing on the token after reconnect");
    }
    conn
}
