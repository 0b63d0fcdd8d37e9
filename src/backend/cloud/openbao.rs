//! OpenBao (or HashiCorp Vault) transit `ed25519` keys: CometBFT consensus keys that never
//! leave the transit engine.
//!
//! At start, `GET /v1/<mount>/keys/<name>` reads the key's type, latest version and public key;
//! the version is pinned, so a key rotated on the server behind keyguard's back is not used
//! (every `sign` names `key_version`, and the answer must carry that version). Each signature
//! is verified (strict Ed25519) against the public key read at start before pass 2 checks it
//! again. Transit has no secp256k1 key type, so Ethereum and Bitcoin keys cannot live here:
//! such a key is refused by name. The token comes from an environment variable or a 0600 file
//! and only ever travels in the `X-Vault-Token` header.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keyguard_chain::{KeyId, PublicKey, Signature, SigningPayload};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{CallError, Caller, Fault};
use crate::backend::{BackendError, KeyBackend, KeyInfo};
use crate::config::OpenBaoConfig;

/// The backend's name in configs, metrics, logs and `--backend`.
pub const NAME: &str = "openbao";

/// Answers larger than this are refused unread (a key's metadata is a few hundred bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// Failures while opening the backend or creating a key. None carries the token.
#[derive(Debug, thiserror::Error)]
pub enum OpenBaoError {
    /// The token could not be read.
    #[error("OpenBao token: {0}")]
    Token(String),
    /// The HTTPS client could not be built.
    #[error("OpenBao client: {0}")]
    Client(String),
    /// A call failed.
    #[error("OpenBao {operation} for {key}: {reason}")]
    Call {
        /// What keyguard asked.
        operation: &'static str,
        /// keyguard's key id.
        key: String,
        /// What OpenBao or the transport said.
        reason: String,
    },
    /// The transit key cannot be used.
    #[error("OpenBao transit key for {key} cannot be used: {reason}")]
    Unusable {
        /// keyguard's key id.
        key: String,
        /// Why.
        reason: String,
    },
    /// `keys generate` refused.
    #[error("{0}")]
    Generate(String),
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The transit engine's HTTP API.
struct Transit {
    client: HttpsClient,
    base: String,
    token: Zeroizing<String>,
}

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transit")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn read_token(config: &OpenBaoConfig) -> Result<Zeroizing<String>, OpenBaoError> {
    let token =
        match (&config.token_env, &config.token_file) {
            (Some(var), _) => Zeroizing::new(std::env::var(var).map_err(|_| {
                OpenBaoError::Token(format!("environment variable {var} is not set"))
            })?),
            (None, Some(path)) => read_token_file(path)?,
            (None, None) => return Err(OpenBaoError::Token("give token_env or token_file".into())),
        };
    let token = Zeroizing::new(token.trim().to_owned());
    // A header value must be visible ASCII; anything else is not a token.
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(OpenBaoError::Token(
            "the token is empty or not printable ASCII".into(),
        ));
    }
    Ok(token)
}

fn read_token_file(path: &Path) -> Result<Zeroizing<String>, OpenBaoError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| OpenBaoError::Token(format!("{}: {e}", path.display())))?;
    if meta.mode() & 0o077 != 0 {
        return Err(OpenBaoError::Token(format!(
            "{} is readable by group or others; chmod 600 it",
            path.display()
        )));
    }
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| OpenBaoError::Token(format!("{}: {e}", path.display())))
}

/// OpenBao's answer to a [`Fault`]: 429 is a rate-limit quota (retried), 5xx an outage (503
/// is also a sealed server), any other error the server refusing this request.
fn classify(status: StatusCode, body: &[u8]) -> Fault {
    let errors = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("errors").cloned())
        .map(|e| e.to_string())
        .unwrap_or_default();
    let reason: String = format!("HTTP {}: {errors}", status.as_u16())
        .chars()
        .take(300)
        .collect();
    match status.as_u16() {
        429 => Fault::Throttled(reason),
        500..=599 => Fault::Unavailable(reason),
        _ => Fault::Rejected(reason),
    }
}

impl Transit {
    fn new(config: &OpenBaoConfig) -> Result<Self, OpenBaoError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| OpenBaoError::Client(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            base: format!(
                "{}/v1/{}",
                config.address.trim_end_matches('/'),
                config.mount.trim_matches('/')
            ),
            token: read_token(config)?,
        })
    }

    /// One request; `Ok(None)` for 404 (absent key).
    async fn call(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> Result<Option<Value>, Fault> {
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(format!("{}/{path}", self.base))
            .header("X-Vault-Token", self.token.as_str())
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| Fault::Rejected(format!("request: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| Fault::Unavailable(format!("unreachable: {}", chain(&e))))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| Fault::Unavailable(format!("reading the answer: {e}")))?
            .to_bytes();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(classify(status, &body));
        }
        if body.is_empty() {
            return Ok(Some(Value::Null));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|_| Fault::Unavailable("the answer is not JSON".into()))
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ").chars().take(300).collect()
}

#[derive(Debug)]
struct Key {
    name: String,
    version: u64,
    public: [u8; 32],
    info: KeyInfo,
}

/// Keys in OpenBao / Vault transit.
#[derive(Debug)]
pub struct OpenBaoBackend {
    transit: Transit,
    caller: Caller,
    keys: BTreeMap<KeyId, Key>,
    signatures: AtomicU64,
}

fn flatten(e: CallError) -> String {
    match e {
        CallError::Unavailable(r) | CallError::Rejected(r) => r,
    }
}

/// The transit key `name`'s latest version and its public key; refuses anything but ed25519.
async fn read_key(
    transit: &Transit,
    caller: &Caller,
    id: &str,
    name: &str,
) -> Result<(u64, [u8; 32]), OpenBaoError> {
    let answer = caller
        .call("read_key", || {
            transit.call(Method::GET, format!("keys/{name}"), None)
        })
        .await
        .map_err(|e| OpenBaoError::Call {
            operation: "read key",
            key: id.to_owned(),
            reason: flatten(e),
        })?;
    let unusable = |reason: String| OpenBaoError::Unusable {
        key: id.to_owned(),
        reason,
    };
    let data = answer
        .ok_or_else(|| unusable(format!("no transit key named {name:?}")))?
        .get("data")
        .cloned()
        .unwrap_or(Value::Null);
    match data.get("type").and_then(Value::as_str) {
        Some("ed25519") => {}
        Some(other) => {
            return Err(unusable(format!(
                "transit key {name:?} is {other}; keyguard uses transit for ed25519 only \
                 (transit has no secp256k1: keep Ethereum and Bitcoin keys in aws-kms, pkcs11 \
                 or the software keystore)"
            )))
        }
        None => return Err(unusable("the answer has no key type".into())),
    }
    let version = data
        .get("latest_version")
        .and_then(Value::as_u64)
        .ok_or_else(|| unusable("the answer has no latest_version".into()))?;
    let public = data
        .get("keys")
        .and_then(|k| k.get(version.to_string()))
        .and_then(|k| k.get("public_key"))
        .and_then(Value::as_str)
        .and_then(|b| B64.decode(b).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .filter(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_ok())
        .ok_or_else(|| unusable(format!("version {version} has no valid Ed25519 public key")))?;
    Ok((version, public))
}

/// `vault:v<version>:<base64>` -> the 64 signature bytes, verified strictly under `public`.
fn check_signature(
    answer: &str,
    version: u64,
    message: &[u8],
    public: &[u8; 32],
) -> Result<[u8; 64], String> {
    let prefix = format!("vault:v{version}:");
    let b64 = answer
        .strip_prefix(&prefix)
        .ok_or_else(|| format!("the signature is not from key version {version}"))?;
    let bytes: [u8; 64] = B64
        .decode(b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the signature is not 64 bytes of base64")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(public).map_err(|e| e.to_string())?;
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&bytes))
        .map_err(|_| "the signature does not verify under the key's public key".to_string())?;
    Ok(bytes)
}

impl OpenBaoBackend {
    /// Reads the token and every configured key (type, pinned version, public key).
    pub async fn open(config: &OpenBaoConfig) -> Result<Self, OpenBaoError> {
        let transit = Transit::new(config)?;
        let caller = Caller::new(NAME, &config.limits);
        let mut keys = BTreeMap::new();
        for (id, name) in &config.keys {
            let key_id = KeyId::new(id.as_str()).map_err(|e| OpenBaoError::Unusable {
                key: id.clone(),
                reason: e.to_string(),
            })?;
            let (version, public) = read_key(&transit, &caller, id, name).await?;
            keys.insert(
                key_id.clone(),
                Key {
                    name: name.clone(),
                    version,
                    public,
                    info: KeyInfo {
                        id: key_id,
                        public_key: PublicKey::Ed25519(public),
                    },
                },
            );
        }
        Ok(Self {
            transit,
            caller,
            keys,
            signatures: AtomicU64::new(0),
        })
    }

    /// `Err(reason)` while the circuit breaker is open.
    pub fn health(&self) -> Result<(), String> {
        self.caller.health()
    }

    /// Signatures released since open.
    pub fn signatures(&self) -> u64 {
        self.signatures.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl KeyBackend for OpenBaoBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn keys(&self) -> Vec<KeyInfo> {
        self.keys.values().map(|k| k.info.clone()).collect()
    }

    fn public_key(&self, key: &KeyId) -> Result<PublicKey, BackendError> {
        self.keys
            .get(key)
            .map(|k| k.info.public_key.clone())
            .ok_or_else(|| BackendError::UnknownKey(key.clone()))
    }

    async fn sign(&self, key: &KeyId, payload: &SigningPayload) -> Result<Signature, BackendError> {
        let k = self
            .keys
            .get(key)
            .ok_or_else(|| BackendError::UnknownKey(key.clone()))?;
        let SigningPayload::Ed25519Message(message) = payload else {
            return Err(BackendError::SchemeMismatch {
                key: key.clone(),
                actual: k.info.scheme(),
                wanted: payload.scheme(),
            });
        };
        let body = json!({ "input": B64.encode(message), "key_version": k.version });
        let answer = self
            .caller
            .call("sign", || {
                self.transit
                    .call(Method::POST, format!("sign/{}", k.name), Some(body.clone()))
            })
            .await
            .map_err(|e| match e {
                CallError::Unavailable(reason) => BackendError::Unavailable {
                    backend: NAME,
                    reason,
                },
                CallError::Rejected(reason) => BackendError::SigningFailed {
                    key: key.clone(),
                    reason: format!("OpenBao refused: {reason}"),
                },
            })?;
        let text = answer
            .as_ref()
            .and_then(|a| a.pointer("/data/signature"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let sig = check_signature(text, k.version, message, &k.public).map_err(|reason| {
            tracing::error!(key = %key, %reason, "openbao: bad signature from transit");
            crate::metrics::cloud_event(NAME, "bad_signature");
            BackendError::SigningFailed {
                key: key.clone(),
                reason,
            }
        })?;
        self.signatures.fetch_add(1, Ordering::Relaxed);
        crate::metrics::cloud_event(NAME, "signature");
        Ok(Signature::Ed25519(sig))
    }
}

/// `keyguard keys generate --backend openbao`: creates a non-exportable ed25519 transit key
/// under the name the config gives `id`. Needs `allow_generate = true`; an existing key is
/// never touched (transit's create is a silent no-op on an existing name, so it is read first).
pub async fn generate_key(config: &OpenBaoConfig, id: &KeyId) -> Result<KeyInfo, OpenBaoError> {
    if !config.allow_generate {
        return Err(OpenBaoError::Generate(
            "keystore.openbao.allow_generate is false: create the transit key in OpenBao and \
             name it in keystore.openbao.keys"
                .into(),
        ));
    }
    let name = config.keys.get(id.as_str()).ok_or_else(|| {
        OpenBaoError::Generate(format!(
            "{id} is not in keystore.openbao.keys: add `{id} = \"<transit key name>\"` first"
        ))
    })?;
    let transit = Transit::new(config)?;
    let caller = Caller::new(NAME, &config.limits);
    let call = |operation: &'static str| {
        move |e: CallError| OpenBaoError::Call {
            operation,
            key: id.to_string(),
            reason: flatten(e),
        }
    };
    let existing = caller
        .call("read_key", || {
            transit.call(Method::GET, format!("keys/{name}"), None)
        })
        .await
        .map_err(call("read key"))?;
    if existing.is_some() {
        return Err(OpenBaoError::Generate(format!(
            "transit key {name:?} already exists; keyguard never replaces a key"
        )));
    }
    let body = json!({"type": "ed25519", "exportable": false, "allow_plaintext_backup": false});
    caller
        .call("create_key", || {
            transit.call(Method::POST, format!("keys/{name}"), Some(body.clone()))
        })
        .await
        .map_err(call("create key"))?;
    let (_, public) = read_key(&transit, &caller, id.as_str(), name).await?;
    Ok(KeyInfo {
        id: id.clone(),
        public_key: PublicKey::Ed25519(public),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    #[test]
    fn signatures_are_version_pinned_and_verified() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let pk = sk.verifying_key().to_bytes();
        let sig = sk.sign(b"vote").to_bytes();
        let answer = format!("vault:v2:{}", B64.encode(sig));
        assert_eq!(check_signature(&answer, 2, b"vote", &pk), Ok(sig));
        assert!(check_signature(&answer, 3, b"vote", &pk)
            .unwrap_err()
            .contains("not from key version 3"));
        assert!(check_signature(&answer, 2, b"other vote", &pk)
            .unwrap_err()
            .contains("does not verify"));
        let short = format!("vault:v2:{}", B64.encode(&sig[..63]));
        assert!(check_signature(&short, 2, b"vote", &pk).is_err());
        assert!(check_signature("", 2, b"vote", &pk).is_err());
    }

    #[test]
    fn answers_are_classified() {
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, b""),
            Fault::Throttled(_)
        ));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, br#"{"errors":["Vault is sealed"]}"#),
            Fault::Unavailable(r) if r.contains("sealed")
        ));
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, br#"{"errors":["permission denied"]}"#),
            Fault::Rejected(r) if r.contains("permission denied")
        ));
    }
}
