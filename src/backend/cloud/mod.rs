//! Keys held by a cloud key service (AWS KMS; OpenBao transit), and what every such backend
//! shares: a per-call deadline, retries on throttling only, a circuit breaker, a client-side
//! rate limit, and metrics.
//!
//! Layout:
//! - [`Caller`] (here): runs one remote call under those rules and classifies its failure.
//! - `breaker`: the circuit breaker (fail fast while the service is down, one probe after).
//! - `ecdsa`: the service's secp256k1 signature (DER or r‖s) to a releasable one (low S,
//!   recovery id found against the public key read at start).
//! - `aws_kms`: the AWS KMS backend on the official SDK.
//! - `openbao`: OpenBao / Vault transit `ed25519` keys over its HTTP API.
//! - `azure_kv` (+ `azure_transport`): Azure Key Vault `P-256K` keys on the official SDK
//!   crates, given a hyper + rustls(ring) transport.
//! - `gcp_kms`: Google Cloud KMS `EC_SIGN_SECP256K1_SHA256` on the official crate, CRC32C both
//!   ways.
//!
//! Why: a cloud signer that hangs or is throttled must not hold keyguard's request slots, and a
//! retry on anything but throttling could sign twice what the caller sees as one failure (the
//! guard only ever releases one signature, but the service would bill and log two).

mod breaker;
#[cfg(any(feature = "aws-kms", feature = "azure-kv", feature = "gcp-kms"))]
pub mod ecdsa;

#[cfg(feature = "aws-kms")]
pub mod aws_kms;
#[cfg(feature = "azure-kv")]
pub mod azure_kv;
#[cfg(feature = "azure-kv")]
mod azure_transport;
#[cfg(feature = "gcp-kms")]
pub mod gcp_kms;
#[cfg(feature = "openbao")]
pub mod openbao;

use std::future::Future;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::CallLimits;
pub use breaker::Breaker;

/// What one attempt at a remote call ended with, as the backend classified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The service refused for rate (AWS `ThrottlingException`, HTTP 429): retried.
    Throttled(String),
    /// Unreachable or a server error: counts towards the breaker.
    Unavailable(String),
    /// No answer within the deadline (the SDK's own timer or keyguard's): like `Unavailable`.
    TimedOut,
    /// The service answered and refused this request (access denied, key disabled, bad
    /// input): not retried, and not a sign of an outage.
    Rejected(String),
}

/// Why a call failed after the rules were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Fail-fast `-32007`: breaker open, deadline passed, throttled past the retry budget, or
    /// the client-side rate limit left no room before the deadline.
    Unavailable(String),
    /// The service refused the request.
    Rejected(String),
}

/// Runs remote calls of one backend under its [`CallLimits`].
pub struct Caller {
    backend: &'static str,
    timeout: Duration,
    max_retries: u32,
    limiter: DefaultDirectRateLimiter,
    breaker: Breaker,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("backend", &self.backend)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

/// First backoff after a throttling answer; doubles per retry, full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(25);

impl Caller {
    /// A caller for `backend` (the metrics label) under `limits`.
    pub fn new(backend: &'static str, limits: &CallLimits) -> Self {
        let rate = NonZeroU32::new(limits.requests_per_second).unwrap_or(NonZeroU32::MIN);
        crate::metrics::cloud_available(backend, true);
        Self {
            backend,
            timeout: Duration::from_millis(limits.timeout_ms),
            max_retries: limits.max_retries,
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            breaker: Breaker::new(
                backend,
                limits.breaker_failures,
                Duration::from_millis(limits.breaker_open_ms),
            ),
        }
    }

    /// `Err(reason)` while the breaker is open (for `/ready`).
    pub fn health(&self) -> Result<(), String> {
        self.breaker.health()
    }

    /// Runs `attempt` until it succeeds, fails for a reason other than throttling, the retry
    /// budget is spent, or the deadline passes. `op` labels the latency histogram.
    pub async fn call<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Fault>>,
    {
        let deadline = Instant::now() + self.timeout;
        let probe = self.breaker.admit().map_err(|reason| {
            crate::metrics::cloud_event(self.backend, "breaker_refused");
            CallError::Unavailable(reason)
        })?;
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, self.limiter.until_ready())
            .await
            .is_err()
        {
            crate::metrics::cloud_event(self.backend, "rate_limited");
            probe.abandon();
            return Err(CallError::Unavailable(format!(
                "client-side rate limit: no room within {} ms",
                self.timeout.as_millis()
            )));
        }
        let mut retries = 0u32;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let started = Instant::now();
            let outcome = tokio::time::timeout(left, attempt()).await;
            crate::metrics::cloud_call(self.backend, op, started.elapsed());
            let fault = match outcome {
                Ok(Ok(value)) => {
                    probe.success();
                    return Ok(value);
                }
                Ok(Err(fault)) => fault,
                Err(_) => Fault::TimedOut,
            };
            match fault {
                Fault::Rejected(reason) => {
                    // The service answered: it is up.
                    probe.success();
                    crate::metrics::cloud_event(self.backend, "rejected");
                    return Err(CallError::Rejected(reason));
                }
                Fault::TimedOut => {
                    crate::metrics::cloud_event(self.backend, "timeout");
                    let reason = format!("no answer within {} ms", self.timeout.as_millis());
                    probe.failure(&reason);
                    return Err(CallError::Unavailable(reason));
                }
                Fault::Unavailable(reason) => {
                    crate::metrics::cloud_event(self.backend, "failure");
                    probe.failure(&reason);
                    return Err(CallError::Unavailable(reason));
                }
                Fault::Throttled(reason) => {
                    crate::metrics::cloud_event(self.backend, "throttled");
                    let wait = jitter(BACKOFF_BASE.saturating_mul(1 << retries.min(10)));
                    if retries >= self.max_retries || Instant::now() + wait >= deadline {
                        // Throttling says the service is up; the breaker is not charged.
                        probe.success();
                        crate::metrics::cloud_event(self.backend, "throttled_out");
                        return Err(CallError::Unavailable(format!(
                            "throttled by the service after {retries} retries: {reason}"
                        )));
                    }
                    retries += 1;
                    crate::metrics::cloud_event(self.backend, "retry");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Full jitter: a uniform wait in `[0, cap]`, so throttled callers do not retry in lockstep.
fn jitter(cap: Duration) -> Duration {
    use rand::Rng;
    let cap_us = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rand::thread_rng().gen_range(0..=cap_us))
}

/// A cloud key as a backend holds it: what `keys()` and `public_key()` answer.
pub(crate) trait CloudKey {
    fn info(&self) -> &crate::backend::KeyInfo;
}

/// `KeyBackend::keys` of a cloud backend.
pub(crate) fn key_infos<K: CloudKey>(
    keys: &std::collections::BTreeMap<keyguard_chain::KeyId, K>,
) -> Vec<crate::backend::KeyInfo> {
    keys.values().map(|k| k.info().clone()).collect()
}

/// `KeyBackend::public_key` of a cloud backend.
pub(crate) fn key_public<K: CloudKey>(
    keys: &std::collections::BTreeMap<keyguard_chain::KeyId, K>,
    key: &keyguard_chain::KeyId,
) -> Result<keyguard_chain::PublicKey, crate::backend::BackendError> {
    keys.get(key)
        .map(|k| k.info().public_key.clone())
        .ok_or_else(|| crate::backend::BackendError::UnknownKey(key.clone()))
}

/// The key and digest of a secp256k1 signing request to a cloud key, before any call: an
/// unknown key or another scheme's payload is refused without touching the service.
pub(crate) fn secp256k1_request<'a, K: CloudKey>(
    keys: &'a std::collections::BTreeMap<keyguard_chain::KeyId, K>,
    key: &keyguard_chain::KeyId,
    payload: &'a keyguard_chain::SigningPayload,
) -> Result<(&'a K, &'a [u8; 32]), crate::backend::BackendError> {
    let k = keys
        .get(key)
        .ok_or_else(|| crate::backend::BackendError::UnknownKey(key.clone()))?;
    match (&k.info().public_key, payload) {
        (
            keyguard_chain::PublicKey::Secp256k1(_),
            keyguard_chain::SigningPayload::Secp256k1Prehash(digest),
        ) => Ok((k, digest)),
        _ => Err(crate::backend::BackendError::SchemeMismatch {
            key: key.clone(),
            actual: k.info().scheme(),
            wanted: payload.scheme(),
        }),
    }
}

#[cfg(test)]
mod tests;

#[cfg(all(test, feature = "aws-kms"))]
mod aws_kms_stub;

#[cfg(all(
    test,
    any(feature = "aws-kms", feature = "azure-kv", feature = "gcp-kms")
))]
mod stub_common;

#[cfg(all(
    test,
    any(feature = "aws-kms", feature = "azure-kv", feature = "gcp-kms")
))]
mod live_tests;
