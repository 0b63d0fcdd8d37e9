//! The PKCS#11 backend: keys that live in an HSM and never leave it.
//!
//! Layout of this module:
//! - [`Pkcs11Backend`] (here): the [`KeyBackend`] over a token, its state machine (ready or
//!   broken) and the recovery thread that reconnects after the token or library failed.
//! - `recovery`: the thread that reconnects after the token or library failed.
//! - `settings`: `[keystore.pkcs11]` to [`TokenSettings`], reading the PIN.
//! - `token`: one connection: library initialised, slot found by label, login, key discovery,
//!   signing sessions, key generation.
//! - `signing`: the token's raw signature to a releasable one (low S, recovery id, verified).
//! - `der`: `CKA_EC_PARAMS` / `CKA_EC_POINT` parsing.
//! - `workers`: one dedicated thread per session, fed from a bounded queue, doing `C_Sign`.
//!
//! A signature: the guard calls [`KeyBackend::sign`] -> the job is queued (bounded; full means
//! `-32007` at once) -> the next free signing thread takes an idle session and calls `C_Sign`
//! -> back on the caller, `signing` checks and normalizes -> pass 2 in the chain crate checks
//! again. PKCS#11 calls block, so they never run on the async workers. While the token is
//! broken, requests fail at once (`-32007`).

mod der;
mod recovery;
mod settings;
mod signing;
mod token;
mod workers;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use cryptoki::error::{Error as CkError, RvError};
use keyguard_chain::{KeyId, PublicKey, Scheme, Signature, SigningPayload};

use super::{BackendError, KeyBackend, KeyInfo};
pub use settings::settings_from_config;
use token::Connection;
pub use token::TokenSettings;

/// Failures of the PKCS#11 backend. None carries the PIN or key material.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    /// The library could not be loaded or initialised.
    #[error("PKCS#11 library {}: {reason}", path.display())]
    Library {
        /// The configured library.
        path: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
    /// No token with the configured label is present.
    #[error("no token labelled {0:?} (is it initialised and present?)")]
    TokenNotFound(String),
    /// More than one token has the label.
    #[error("several tokens are labelled {0:?}; labels must be unique")]
    TokenAmbiguous(String),
    /// The token refused the user PIN.
    #[error("token {0:?} refused the user PIN")]
    WrongPin(String),
    /// The user PIN is locked or expired on the token.
    #[error("the user PIN of token {0:?} is locked or expired")]
    PinLocked(String),
    /// The PIN could not be read from its source.
    #[error("user PIN: {0}")]
    Pin(String),
    /// A key listed in `keys` is not on the token.
    #[error("key {0:?} is listed in keystore.pkcs11.keys but no private key has that label")]
    MissingKey(String),
    /// A key listed in `key_ids` is not on the token.
    #[error(
        "key {key:?} is listed in keystore.pkcs11.key_ids but no private key has CKA_ID {ckid}"
    )]
    MissingKeyId {
        /// keyguard's key id.
        key: String,
        /// The CKA_ID, hex.
        ckid: String,
    },
    /// Two private keys share a label.
    #[error("several private keys are labelled {0:?}")]
    DuplicateLabel(String),
    /// A private key may exist outside the HSM.
    #[error("key {label:?} refused: {reason}")]
    KeyRefused {
        /// The key's label.
        label: String,
        /// Which attribute.
        reason: &'static str,
    },
    /// A key cannot be used (curve, missing public key, bad point).
    #[error("key {label:?} cannot be used: {reason}")]
    UnsupportedKey {
        /// The key's label.
        label: String,
        /// Why.
        reason: String,
    },
    /// `keys generate` with a label already on the token.
    #[error("an object labelled {0} already exists on the token")]
    KeyExists(KeyId),
    /// A PKCS#11 call failed.
    #[error("{operation}: {}", brief(source))]
    Token {
        /// The PKCS#11 function.
        operation: &'static str,
        /// cryptoki's error (return value names only).
        source: CkError,
    },
}

/// A cryptoki error in one line: the return value's name, not its paragraph of prose.
fn brief(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{function}: {rv:?}"),
        other => other.to_string(),
    }
}

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Stats {
    /// Signatures released by this backend.
    pub signatures: u64,
    /// Of those, how many the token returned with a high S (negated before release).
    pub high_s_normalized: u64,
    /// Successful reconnections after the token or library failed.
    pub reconnects: u64,
    /// Logins repeated after the token reported `CKR_USER_NOT_LOGGED_IN`.
    pub relogins: u64,
}

#[derive(Default)]
struct Counters {
    signatures: AtomicU64,
    high_s_normalized: AtomicU64,
    reconnects: AtomicU64,
    relogins: AtomicU64,
}

enum State {
    Ready(Arc<Connection>),
    /// Requests fail fast with `reason`; the recovery thread is reconnecting unless `final_`.
    Broken {
        reason: String,
        retired: Option<Arc<Connection>>,
        final_: bool,
    },
    Closed,
}

struct Shared {
    settings: TokenSettings,
    /// The keys and public keys read at start: the only ones ever used, whatever the token
    /// shows after a reconnect.
    keys: BTreeMap<KeyId, KeyInfo>,
    state: Mutex<State>,
    wake: Condvar,
    sessions: usize,
    timeout: Duration,
    counters: Counters,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `conn` broken (if it is still the current connection) and wakes recovery.
    fn mark_broken(&self, conn: &Arc<Connection>, reason: String) {
        let mut state = self.state();
        if let State::Ready(current) = &*state {
            if Arc::ptr_eq(current, conn) {
                tracing::error!(%reason, "pkcs11: token failed; failing requests until it recovers");
                crate::metrics::pkcs11_event("failure");
                crate::metrics::pkcs11_available(false);
                let retired = Some(current.clone());
                *state = State::Broken {
                    reason,
                    retired,
                    final_: false,
                };
                self.wake.notify_all();
            }
        }
    }
}

/// Keys in a PKCS#11 token.
pub struct Pkcs11Backend {
    shared: Arc<Shared>,
    workers: Option<workers::Workers>,
    recovery: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Pkcs11Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Backend")
            .field("settings", &self.shared.settings)
            .field("keys", &self.shared.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Pkcs11Backend {
    /// Connects, logs in and reads every key's public key. `sessions` bounds the signatures
    /// in flight; `timeout` bounds how long a request waits for a session or the token.
    pub fn open(
        settings: TokenSettings,
        sessions: usize,
        timeout: Duration,
    ) -> Result<Self, Pkcs11Error> {
        let conn = Connection::open(&settings, true)?;
        let keys = conn
            .keys
            .iter()
            .map(|(id, k)| (id.clone(), k.info.clone()))
            .collect();
        let sessions = sessions.max(1);
        let shared = Arc::new(Shared {
            settings,
            keys,
            state: Mutex::new(State::Ready(Arc::new(conn))),
            wake: Condvar::new(),
            sessions,
            timeout,
            counters: Counters::default(),
        });
        let worker = shared.clone();
        let recovery = std::thread::Builder::new()
            .name("pkcs11-recovery".into())
            .spawn(move || recovery::recovery_loop(&worker))
            .map_err(|e| Pkcs11Error::Library {
                path: shared.settings.library.clone(),
                reason: format!("starting the recovery thread: {e}"),
            })?;
        crate::metrics::pkcs11_available(true);
        let workers = workers::Workers::start(&shared).map_err(|e| Pkcs11Error::Library {
            path: shared.settings.library.clone(),
            reason: format!("starting the signing threads: {e}"),
        })?;
        Ok(Self {
            shared,
            workers: Some(workers),
            recovery: Some(recovery),
        })
    }

    /// Counters since open.
    pub fn stats(&self) -> Pkcs11Stats {
        let c = &self.shared.counters;
        Pkcs11Stats {
            signatures: c.signatures.load(Ordering::Relaxed),
            high_s_normalized: c.high_s_normalized.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            relogins: c.relogins.load(Ordering::Relaxed),
        }
    }

    /// `None` when ready, else why requests are failing.
    pub fn unavailable_reason(&self) -> Option<String> {
        match &*self.shared.state() {
            State::Ready(_) => None,
            State::Broken { reason, .. } => Some(reason.clone()),
            State::Closed => Some("closed".into()),
        }
    }

    fn unavailable(&self, reason: impl Into<String>) -> BackendError {
        BackendError::Unavailable {
            backend: "pkcs11",
            reason: reason.into(),
        }
    }
}

impl Drop for Pkcs11Backend {
    fn drop(&mut self) {
        let old = std::mem::replace(&mut *self.shared.state(), State::Closed);
        self.shared.wake.notify_all();
        if let Some(handle) = self.recovery.take() {
            let _ = handle.join();
        }
        // No signing thread holds a connection once they are joined.
        drop(self.workers.take());
        // Closes sessions and finalizes the library (once no signing thread holds it).
        drop(old);
    }
}

/// Creates a key pair on the token (private half sensitive, not extractable, a token object)
/// and returns its public info. For `keyguard keys generate`; a running daemon uses the key
/// after a restart. Needs the library to itself (not while a backend is open in-process).
pub fn generate_key(
    settings: &TokenSettings,
    id: &KeyId,
    scheme: Scheme,
) -> Result<KeyInfo, Pkcs11Error> {
    Connection::open(settings, false)?.generate(settings, id, scheme)
}

/// The keys a backend opened with `settings` would use (public info only), sorted by id.
pub fn list_keys(settings: &TokenSettings) -> Result<Vec<KeyInfo>, Pkcs11Error> {
    let conn = Connection::open(settings, true)?;
    Ok(conn.keys.values().map(|k| k.info.clone()).collect())
}

/// Raw token throughput for `keyguard bench`: `sessions` threads, each signing with its own
/// session in a loop for `duration` (`CKM_ECDSA` over distinct digests, nothing checked).
/// Returns each call's latency in microseconds. Needs the library to itself, like
/// [`generate_key`].
pub fn raw_sign_latencies(
    settings: &TokenSettings,
    key: &KeyId,
    sessions: usize,
    duration: Duration,
) -> Result<Vec<u32>, Pkcs11Error> {
    let conn = Connection::open(settings, true)?;
    if !conn.keys.contains_key(key) {
        return Err(Pkcs11Error::MissingKey(key.to_string()));
    }
    let start = std::time::Instant::now();
    let results: Vec<Result<Vec<u32>, CkError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..sessions.max(1))
            .map(|t| {
                let conn = &conn;
                s.spawn(move || {
                    let mut latencies = Vec::new();
                    let mut n = 0u64;
                    while start.elapsed() < duration {
                        let mut digest = [0u8; 32];
                        digest[..8].copy_from_slice(&(t as u64).to_be_bytes());
                        digest[8..16].copy_from_slice(&n.to_be_bytes());
                        let payload = SigningPayload::Secp256k1Prehash(digest);
                        let sent = std::time::Instant::now();
                        conn.sign_raw(key, &payload)?;
                        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        n += 1;
                    }
                    Ok(latencies)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or(Err(CkError::Pkcs11(
                    RvError::GeneralError,
                    cryptoki::context::Function::Sign,
                )))
            })
            .collect()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r.map_err(|source| Pkcs11Error::Token {
            operation: "C_Sign",
            source,
        })?);
    }
    Ok(all)
}

/// Errors that say nothing about the token's health: the request was wrong, not the token.
fn is_request_error(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::MechanismInvalid
                | RvError::MechanismParamInvalid
                | RvError::KeyTypeInconsistent
                | RvError::KeyFunctionNotPermitted,
            _
        )
    )
}

/// The token's raw output to a releasable signature (low S, recovery id, verified against
/// the public key read at start); `true` when a high S was normalized.
fn check(
    key: &KeyInfo,
    payload: &SigningPayload,
    raw: &[u8],
) -> Result<(Signature, bool), BackendError> {
    let checked = match (&key.public_key, payload) {
        (PublicKey::Secp256k1(pk), SigningPayload::Secp256k1Prehash(digest)) => {
            signing::secp256k1_from_token(raw, digest, pk)
                .map(|o| (o.signature, o.high_s_normalized))
        }
        (PublicKey::Ed25519(pk), SigningPayload::Ed25519Message(msg)) => {
            signing::ed25519_from_token(raw, msg, pk).map(|s| (s, false))
        }
        _ => {
            return Err(BackendError::SchemeMismatch {
                key: key.id.clone(),
                actual: key.scheme(),
                wanted: payload.scheme(),
            })
        }
    };
    checked.map_err(|fault| {
        tracing::error!(key = %key.id, %fault, "pkcs11: token returned a bad signature");
        BackendError::SigningFailed {
            key: key.id.clone(),
            reason: fault.to_string(),
        }
    })
}

#[async_trait]
impl KeyBackend for Pkcs11Backend {
    fn name(&self) -> &'static str {
        "pkcs11"
    }

    fn keys(&self) -> Vec<KeyInfo> {
        self.shared.keys.values().cloned().collect()
    }

    fn public_key(&self, key: &KeyId) -> Result<PublicKey, BackendError> {
        self.shared
            .keys
            .get(key)
            .map(|k| k.public_key.clone())
            .ok_or_else(|| BackendError::UnknownKey(key.clone()))
    }

    async fn sign(&self, key: &KeyId, payload: &SigningPayload) -> Result<Signature, BackendError> {
        let info = self
            .shared
            .keys
            .get(key)
            .cloned()
            .ok_or_else(|| BackendError::UnknownKey(key.clone()))?;
        if info.scheme() != payload.scheme() {
            return Err(BackendError::SchemeMismatch {
                key: key.clone(),
                actual: info.scheme(),
                wanted: payload.scheme(),
            });
        }
        if let Some(reason) = self.unavailable_reason() {
            return Err(self.unavailable(reason));
        }
        let timeout = self.shared.timeout;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.workers
            .as_ref()
            .ok_or_else(|| self.unavailable("closed"))?
            .submit(workers::Job {
                key: key.clone(),
                payload: payload.clone(),
                deadline: std::time::Instant::now() + timeout,
                reply,
            })?;
        let late = || {
            self.unavailable(format!(
                "the token did not answer within {} ms ({} sessions)",
                timeout.as_millis(),
                self.shared.sessions
            ))
        };
        let raw = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(raw)) => raw?,
            // The signing thread dropped the job: its deadline passed while it queued.
            Ok(Err(_)) | Err(_) => return Err(late()),
        };
        let (sig, high) = check(&info, payload, &raw)?;
        let c = &self.shared.counters;
        c.signatures.fetch_add(1, Ordering::Relaxed);
        crate::metrics::pkcs11_event("signature");
        if high {
            c.high_s_normalized.fetch_add(1, Ordering::Relaxed);
            crate::metrics::pkcs11_event("high_s_normalized");
        }
        Ok(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_errors_do_not_break_the_connection() {
        let f = cryptoki::context::Function::Sign;
        assert!(is_request_error(&CkError::Pkcs11(RvError::DataLenRange, f)));
        assert!(!is_request_error(&CkError::Pkcs11(
            RvError::DeviceRemoved,
            f
        )));
        assert!(!is_request_error(&CkError::Pkcs11(
            RvError::ObjectHandleInvalid,
            f
        )));
    }
}
