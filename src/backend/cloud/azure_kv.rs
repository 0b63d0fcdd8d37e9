//! Azure Key Vault (and Managed HSM) `P-256K` keys through the official SDK crates
//! (`azure_security_keyvault_keys`, `azure_identity`) on keyguard's own transport.
//!
//! At start `getKey` reads each key's JWK (kty `EC`/`EC-HSM`, crv `P-256K`) and its version,
//! which is pinned: every `sign` names it, so a key rotated in the vault behind keyguard's back
//! is not used. `sign` is `ES256K` over keyguard's 32-byte digest; the answer is raw r‖s (IEEE
//! P1363), normalized to low S with the recovery id found against the public key read at start.
//! Entra ID credentials: managed identity, workload identity, client secret (from an
//! environment variable). The SDK's retries are off: keyguard retries throttling only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, RetryOptions, StatusCode};
use azure_identity::{
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use azure_security_keyvault_keys::models::{
    CurveName, KeyClientGetKeyOptions, KeyClientSignOptions, KeyType, SignParameters,
    SignatureAlgorithm,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use keyguard_chain::{KeyId, PublicKey, Signature, SigningPayload};

use super::azure_transport::Transport;
use super::{ecdsa, CallError, Caller, Fault};
use crate::backend::{BackendError, KeyBackend, KeyInfo};
use crate::config::{AzureCredentialKind, AzureKvConfig};

/// The backend's name in configs, metrics and logs.
pub const NAME: &str = "azure-kv";

/// Failures while opening the backend. None carries a credential.
#[derive(Debug, thiserror::Error)]
pub enum AzureKvError {
    /// The credential or client could not be built.
    #[error("Azure Key Vault client: {0}")]
    Client(String),
    /// A call failed.
    #[error("Azure Key Vault getKey for {key}: {reason}")]
    Call {
        /// keyguard's key id.
        key: String,
        /// What the vault or the transport said.
        reason: String,
    },
    /// The key cannot be used.
    #[error("Azure Key Vault key for {key} cannot be used: {reason}")]
    Unusable {
        /// keyguard's key id.
        key: String,
        /// Why.
        reason: String,
    },
}

#[derive(Debug)]
struct Key {
    name: String,
    version: String,
    public: [u8; 65],
    info: KeyInfo,
}

impl super::CloudKey for Key {
    fn info(&self) -> &KeyInfo {
        &self.info
    }
}

/// Keys in Azure Key Vault.
pub struct AzureKvBackend {
    client: KeyClient,
    caller: Caller,
    keys: BTreeMap<KeyId, Key>,
    signatures: AtomicU64,
    high_s: AtomicU64,
}

impl std::fmt::Debug for AzureKvBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureKvBackend")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn client_options(transport: &Arc<Transport>) -> ClientOptions {
    ClientOptions {
        retry: RetryOptions::none(),
        transport: Some(azure_core::http::Transport::new(transport.clone())),
        ..ClientOptions::default()
    }
}

fn credential(
    config: &AzureKvConfig,
    transport: &Arc<Transport>,
) -> Result<Arc<dyn TokenCredential>, AzureKvError> {
    let err = |e: azure_core::Error| AzureKvError::Client(e.to_string());
    let client_options = client_options(transport);
    Ok(match config.credential {
        AzureCredentialKind::ManagedIdentity => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: config.client_id.clone().map(UserAssignedId::ClientId),
                client_options,
            }))
            .map_err(err)?
        }
        AzureCredentialKind::WorkloadIdentity => {
            let mut options = WorkloadIdentityCredentialOptions {
                client_id: config.client_id.clone(),
                tenant_id: config.tenant_id.clone(),
                ..Default::default()
            };
            options.credential_options.client_options = client_options;
            WorkloadIdentityCredential::new(Some(options)).map_err(err)?
        }
        AzureCredentialKind::ClientSecret => {
            let var = config.client_secret_env.as_deref().unwrap_or_default();
            let secret = std::env::var(var).map_err(|_| {
                AzureKvError::Client(format!("environment variable {var} is not set"))
            })?;
            ClientSecretCredential::new(
                config.tenant_id.as_deref().unwrap_or_default(),
                config.client_id.clone().unwrap_or_default(),
                Secret::from(secret),
                Some(ClientSecretCredentialOptions { client_options }),
            )
            .map_err(err)?
        }
    })
}

/// An SDK error to a [`Fault`]: 429 is throttling, 5xx and transport failures an outage, the
/// rest (403, 404, a disabled key, a refused token) the vault refusing this request.
fn classify(e: azure_core::Error) -> Fault {
    let reason: String = e.to_string().chars().take(300).collect();
    match e.http_status() {
        Some(StatusCode::TooManyRequests) => Fault::Throttled(reason),
        Some(s) if u16::from(s) >= 500 => Fault::Unavailable(reason),
        Some(_) => Fault::Rejected(reason),
        None => match e.kind() {
            azure_core::error::ErrorKind::Io => Fault::Unavailable(reason),
            _ => Fault::Rejected(reason),
        },
    }
}

/// A Key Vault JWK to the 65-byte point: `EC`/`EC-HSM`, `P-256K`, 32-byte x and y on the curve.
fn jwk_point(
    kty: Option<&KeyType>,
    crv: Option<&CurveName>,
    x: Option<&[u8]>,
    y: Option<&[u8]>,
) -> Result<[u8; 65], String> {
    if !matches!(kty, Some(KeyType::Ec | KeyType::EcHsm)) {
        return Err(format!("key type {kty:?}; keyguard needs EC or EC-HSM"));
    }
    if crv != Some(&CurveName::P256K) {
        return Err(format!("curve {crv:?}; keyguard needs P-256K (secp256k1)"));
    }
    let (Some(x), Some(y)) = (x, y) else {
        return Err("the JWK has no x or y".into());
    };
    if x.len() != 32 || y.len() != 32 {
        return Err("x and y must be 32 bytes".into());
    }
    let mut sec1 = [4u8; 65];
    sec1[1..33].copy_from_slice(x);
    sec1[33..].copy_from_slice(y);
    k256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| "the point is not on secp256k1")?;
    Ok(sec1)
}

impl AzureKvBackend {
    /// Builds the credential and client and reads every configured key (JWK, pinned version).
    pub async fn open(config: &AzureKvConfig) -> Result<Self, AzureKvError> {
        let transport =
            Arc::new(Transport::new().map_err(|e| AzureKvError::Client(e.to_string()))?);
        Self::open_with(config, &transport, credential(config, &transport)?).await
    }

    async fn open_with(
        config: &AzureKvConfig,
        transport: &Arc<Transport>,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<Self, AzureKvError> {
        let client = KeyClient::new(
            &config.vault_url,
            credential,
            Some(KeyClientOptions {
                client_options: client_options(transport),
                ..Default::default()
            }),
        )
        .map_err(|e| AzureKvError::Client(e.to_string()))?;
        let caller = Caller::new(NAME, &config.limits);
        let mut keys = BTreeMap::new();
        for (id, name) in &config.keys {
            let key_id = KeyId::new(id.as_str()).map_err(|e| AzureKvError::Unusable {
                key: id.clone(),
                reason: e.to_string(),
            })?;
            let key = caller
                .call("get_key", || async {
                    client
                        .get_key(name, None::<KeyClientGetKeyOptions<'_>>)
                        .await
                        .and_then(|r| r.into_model())
                        .map_err(classify)
                })
                .await
                .map_err(|e| AzureKvError::Call {
                    key: id.clone(),
                    reason: match e {
                        CallError::Unavailable(r) | CallError::Rejected(r) => r,
                    },
                })?;
            let unusable = |reason: String| AzureKvError::Unusable {
                key: id.clone(),
                reason,
            };
            let jwk = key
                .key
                .ok_or_else(|| unusable("getKey returned no JWK".into()))?;
            let public = jwk_point(
                jwk.kty.as_ref(),
                jwk.crv.as_ref(),
                jwk.x.as_deref(),
                jwk.y.as_deref(),
            )
            .map_err(unusable)?;
            // kid = https://<vault>/keys/<name>/<version>
            let version = jwk
                .kid
                .as_deref()
                .and_then(|kid| kid.rsplit('/').next())
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric()))
                .ok_or_else(|| unusable("the JWK has no versioned kid".into()))?
                .to_owned();
            keys.insert(
                key_id.clone(),
                Key {
                    name: name.clone(),
                    version,
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

#[async_trait]
impl KeyBackend for AzureKvBackend {
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
        let raw = self
            .caller
            .call("sign", || async {
                let parameters = SignParameters {
                    algorithm: Some(SignatureAlgorithm::Es256K),
                    value: Some(digest.to_vec()),
                };
                let content = parameters
                    .try_into()
                    .map_err(|e: azure_core::Error| Fault::Rejected(e.to_string()))?;
                let result = self
                    .client
                    .sign(
                        &k.name,
                        content,
                        Some(KeyClientSignOptions {
                            key_version: Some(k.version.clone()),
                            ..Default::default()
                        }),
                    )
                    .await
                    .and_then(|r| r.into_model())
                    .map_err(classify)?;
                result
                    .result
                    .ok_or_else(|| Fault::Unavailable("sign returned no result".into()))
            })
            .await
            .map_err(|e| match e {
                CallError::Unavailable(reason) => BackendError::Unavailable {
                    backend: NAME,
                    reason,
                },
                CallError::Rejected(reason) => BackendError::SigningFailed {
                    key: key.clone(),
                    reason: format!("Azure Key Vault refused: {reason}"),
                },
            })?;
        let out = ecdsa::from_p1363(&raw, digest, &k.public).map_err(|fault| {
            tracing::error!(key = %key, %fault, "azure-kv: bad signature from Key Vault");
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
#[path = "azure_kv_stub.rs"]
mod stub;
