//! Google Cloud KMS `EC_SIGN_SECP256K1_SHA256` key versions through the official crate
//! (`google-cloud-kms-v1`, REST), with CRC32C integrity checks both ways.
//!
//! At start `GetPublicKey` reads each key version's PEM (its `pem_crc32c` checked) and
//! algorithm. `AsymmetricSign` sends keyguard's 32-byte digest as `digest.sha256` with its
//! CRC32C; the answer must say `verified_digest_crc32c`, name the same key version, and carry
//! a `signature_crc32c` that matches the signature, else it is a transport fault and nothing is
//! released. The DER signature is normalized to low S with the recovery id found against the
//! public key read at start. Credentials: Application Default Credentials (service account,
//! workload identity federation, the metadata server). The crate's default rustls provider is
//! aws-lc-rs; it is built without it and ring is installed as the process's provider.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use google_cloud_kms_v1::client::KeyManagementService;
use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionAlgorithm;
use google_cloud_kms_v1::model::Digest;
use keyguard_chain::{KeyId, PublicKey, Signature, SigningPayload};

use super::{ecdsa, CallError, Caller, Fault};
use crate::backend::{BackendError, KeyBackend, KeyInfo};
use crate::config::GcpKmsConfig;

/// The backend's name in configs, metrics and logs.
pub const NAME: &str = "gcp-kms";

/// Failures while opening the backend. None carries a credential.
#[derive(Debug, thiserror::Error)]
pub enum GcpKmsError {
    /// The credentials or client could not be built.
    #[error("Google Cloud KMS client: {0}")]
    Client(String),
    /// A call failed.
    #[error("Google Cloud KMS GetPublicKey for {key}: {reason}")]
    Call {
        /// keyguard's key id.
        key: String,
        /// What KMS or the transport said.
        reason: String,
    },
    /// The key version cannot be used.
    #[error("Google Cloud KMS key for {key} cannot be used: {reason}")]
    Unusable {
        /// keyguard's key id.
        key: String,
        /// Why.
        reason: String,
    },
}

/// CRC32C (Castagnoli), as Cloud KMS's integrity fields use it.
pub fn crc32c(bytes: &[u8]) -> i64 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    i64::from(CRC.checksum(bytes))
}

#[derive(Debug)]
struct Key {
    version: String,
    public: [u8; 65],
    info: KeyInfo,
}

impl super::CloudKey for Key {
    fn info(&self) -> &KeyInfo {
        &self.info
    }
}

/// Keys in Google Cloud KMS.
pub struct GcpKmsBackend {
    client: KeyManagementService,
    caller: Caller,
    keys: BTreeMap<KeyId, Key>,
    signatures: AtomicU64,
    high_s: AtomicU64,
}

impl std::fmt::Debug for GcpKmsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpKmsBackend")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// An SDK error to a [`Fault`]: 429 / RESOURCE_EXHAUSTED is throttling, 5xx, timeouts and
/// transport failures an outage, the rest (403, 404, a disabled version) a refusal.
fn classify(e: google_cloud_gax::error::Error) -> Fault {
    use google_cloud_gax::error::rpc::Code;
    let reason: String = e.to_string().chars().take(300).collect();
    if e.is_timeout() {
        return Fault::TimedOut;
    }
    let code = e.status().map(|s| s.code);
    match (e.http_status_code(), code) {
        (Some(429), _) | (_, Some(Code::ResourceExhausted)) => Fault::Throttled(reason),
        (Some(s), _) if s >= 500 => Fault::Unavailable(reason),
        (_, Some(Code::Unavailable | Code::Internal | Code::DeadlineExceeded)) => {
            Fault::Unavailable(reason)
        }
        (Some(_), _) | (_, Some(_)) => Fault::Rejected(reason),
        (None, None) if e.is_io() || e.is_connect() || e.is_transport() => {
            Fault::Unavailable(reason)
        }
        (None, None) => Fault::Rejected(reason),
    }
}

/// A PEM `PUBLIC KEY` to the secp256k1 point.
fn pem_point(pem: &str) -> Option<[u8; 65]> {
    let body: String = pem
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")?
        .strip_suffix("-----END PUBLIC KEY-----")?
        .split_whitespace()
        .collect();
    ecdsa::secp256k1_from_spki(&B64.decode(body).ok()?)
}

impl GcpKmsBackend {
    /// Builds the client with Application Default Credentials and reads every key version.
    pub async fn open(config: &GcpKmsConfig) -> Result<Self, GcpKmsError> {
        let credentials = google_cloud_auth::credentials::Builder::default()
            .build()
            .map_err(|e| GcpKmsError::Client(e.to_string()))?;
        Self::open_with(config, credentials).await
    }

    async fn open_with(
        config: &GcpKmsConfig,
        credentials: google_cloud_auth::credentials::Credentials,
    ) -> Result<Self, GcpKmsError> {
        // The crate is built without its aws-lc-rs provider: rustls needs a process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = KeyManagementService::builder()
            .with_credentials(credentials)
            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let client = builder
            .build()
            .await
            .map_err(|e| GcpKmsError::Client(e.to_string()))?;
        let caller = Caller::new(NAME, &config.limits);
        let mut keys = BTreeMap::new();
        for (id, version) in &config.keys {
            let key_id = KeyId::new(id.as_str()).map_err(|e| GcpKmsError::Unusable {
                key: id.clone(),
                reason: e.to_string(),
            })?;
            let answer = caller
                .call("get_public_key", || async {
                    client
                        .get_public_key()
                        .set_name(version.clone())
                        .send()
                        .await
                        .map_err(classify)
                })
                .await
                .map_err(|e| GcpKmsError::Call {
                    key: id.clone(),
                    reason: match e {
                        CallError::Unavailable(r) | CallError::Rejected(r) => r,
                    },
                })?;
            let unusable = |reason: &str| GcpKmsError::Unusable {
                key: id.clone(),
                reason: reason.to_owned(),
            };
            if answer.algorithm != CryptoKeyVersionAlgorithm::EcSignSecp256K1Sha256 {
                return Err(unusable(&format!(
                    "algorithm {:?}; keyguard needs EC_SIGN_SECP256K1_SHA256",
                    answer.algorithm
                )));
            }
            if answer.pem_crc32c != Some(crc32c(answer.pem.as_bytes())) {
                return Err(unusable(
                    "the public key's CRC32C does not match (corrupted in transit)",
                ));
            }
            let public = pem_point(&answer.pem)
                .ok_or_else(|| unusable("the PEM is not a secp256k1 public key"))?;
            keys.insert(
                key_id.clone(),
                Key {
                    version: version.clone(),
                    public,
                    info: KeyInfo {
                        id: key_id,
                        public_key: PublicKey::Secp256k1(public),
                    },
                },
            );
        }
        Ok(Self {
            client,
            caller,
            keys,
            signatures: AtomicU64::new(0),
            high_s: AtomicU64::new(0),
        })
    }

    /// `Err(reason)` while the circuit breaker is open.
    pub fn health(&self) -> Result<(), String> {
        self.caller.health()
    }

    /// Signatures released and, of those, high S normalized.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.signatures.load(Ordering::Relaxed),
            self.high_s.load(Ordering::Relaxed),
        )
    }
}

/// The integrity checks of an `AsymmetricSign` answer.
fn check_answer(
    version: &str,
    name: &str,
    verified_digest: bool,
    signature: &[u8],
    signature_crc32c: Option<i64>,
) -> Result<(), Fault> {
    if !verified_digest {
        return Err(Fault::Unavailable(
            "KMS did not verify the digest's CRC32C (request corrupted in transit)".into(),
        ));
    }
    if name != version {
        return Err(Fault::Unavailable(format!(
            "KMS answered for {name:?}, not the key version asked"
        )));
    }
    if signature_crc32c != Some(crc32c(signature)) {
        return Err(Fault::Unavailable(
            "the signature's CRC32C does not match (answer corrupted in transit)".into(),
        ));
    }
    Ok(())
}

#[async_trait]
impl KeyBackend for GcpKmsBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn keys(&self) -> Vec<KeyInfo> {
        super::key_infos(&self.keys)
    }

    fn public_key(&self, key: &KeyId) -> Result<PublicKey, BackendError> {
        super::key_public(&self.keys, key)
    }

    async fn sign(&self, key: &KeyId, payload: &SigningPayload) -> Result<Signature, BackendError> {
        let (k, digest) = super::secp256k1_request(&self.keys, key, payload)?;
        let der = self
            .caller
            .call("sign", || async {
                let answer = self
                    .client
                    .asymmetric_sign()
                    .set_name(k.version.clone())
                    .set_digest(Digest::new().set_sha256(bytes::Bytes::copy_from_slice(digest)))
                    .set_digest_crc32c(crc32c(digest))
                    .send()
                    .await
                    .map_err(classify)?;
                check_answer(
                    &k.version,
                    &answer.name,
                    answer.verified_digest_crc32c,
                    &answer.signature,
                    answer.signature_crc32c,
                )?;
                Ok(answer.signature)
            })
            .await
            .map_err(|e| match e {
                CallError::Unavailable(reason) => BackendError::Unavailable {
                    backend: NAME,
                    reason,
                },
                CallError::Rejected(reason) => BackendError::SigningFailed {
                    key: key.clone(),
                    reason: format!("Google Cloud KMS refused: {reason}"),
                },
            })?;
        let out = ecdsa::from_der(&der, digest, &k.public).map_err(|fault| {
            tracing::error!(key = %key, %fault, "gcp-kms: bad signature from KMS");
            crate::metrics::cloud_event(NAME, "bad_signature");
            BackendError::SigningFailed {
                key: key.clone(),
                reason: fault.to_string(),
            }
        })?;
        self.signatures.fetch_add(1, Ordering::Relaxed);
        crate::metrics::cloud_event(NAME, "signature");
        if out.high_s_normalized {
            self.high_s.fetch_add(1, Ordering::Relaxed);
            crate::metrics::cloud_event(NAME, "high_s_normalized");
        }
        Ok(out.signature)
    }
}

#[cfg(test)]
#[path = "gcp_kms_stub.rs"]
mod stub;
