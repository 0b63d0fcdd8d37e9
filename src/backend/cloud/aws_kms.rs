//! AWS KMS `ECC_SECG_P256K1` keys through the official SDK (`aws-sdk-kms`).
//!
//! One `Sign` call per signature: `MessageType=DIGEST` over keyguard's own digest (Keccak-256,
//! the BIP143 sighash), so KMS never hashes or sees the transaction. The public key is read
//! once at start with `GetPublicKey`; the recovery id is found against it locally, never by a
//! second call. Credentials come from the SDK's standard chain (environment, shared profile,
//! web identity, ECS, IMDSv2); keyguard never reads or logs them. TLS is rustls with ring, the
//! same stack as the rest of keyguard.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec};
use keyguard_chain::{KeyId, PublicKey, Signature, SigningPayload};

use super::{ecdsa, CallError, Caller, Fault};
use crate::backend::{BackendError, KeyBackend, KeyInfo};
use crate::config::AwsKmsConfig;

/// The backend's name in configs, metrics, logs and `--backend`.
pub const NAME: &str = "aws-kms";

/// Failures while opening the backend or creating a key. None carries credentials.
#[derive(Debug, thiserror::Error)]
pub enum AwsKmsError {
    /// A KMS call failed.
    #[error("AWS KMS {operation} for {key}: {reason}")]
    Call {
        /// The KMS operation.
        operation: &'static str,
        /// keyguard's key id.
        key: String,
        /// What KMS or the transport said.
        reason: String,
    },
    /// The KMS key cannot be used.
    #[error("AWS KMS key for {key} cannot be used: {reason}")]
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

#[derive(Debug)]
struct Key {
    /// KMS key id, ARN or alias, as configured.
    remote: String,
    info: KeyInfo,
}

impl super::CloudKey for Key {
    fn info(&self) -> &KeyInfo {
        &self.info
    }
}

/// Counters for metrics, tests and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AwsKmsStats {
    /// Signatures released.
    pub signatures: u64,
    /// Of those, how many KMS returned with a high S.
    pub high_s_normalized: u64,
    /// `Sign` requests sent (retries included).
    pub sign_calls: u64,
}

/// Keys in AWS KMS.
#[derive(Debug)]
pub struct AwsKmsBackend {
    client: aws_sdk_kms::Client,
    caller: Caller,
    keys: BTreeMap<KeyId, Key>,
    signatures: AtomicU64,
    high_s: AtomicU64,
    sign_calls: AtomicU64,
}

/// An SDK client for `config`: one TLS stack (rustls + ring), the SDK's own retries off
/// (keyguard retries throttling only), the standard credential chain.
async fn client(config: &AwsKmsConfig) -> aws_sdk_kms::Client {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let attempt = Duration::from_millis(config.limits.timeout_ms);
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(attempt.min(Duration::from_secs(2)))
                .operation_attempt_timeout(attempt)
                .operation_timeout(attempt)
                .build(),
        )
        .region(aws_config::Region::new(config.region.clone()));
    if let Some(profile) = &config.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    aws_sdk_kms::Client::new(&loader.load().await)
}

/// One SDK error to a [`Fault`]: throttling is retried, outages open the breaker, everything
/// else is the service refusing this request.
fn classify<E>(e: SdkError<E>) -> Fault
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("").to_owned();
            let message = service.err().message().unwrap_or("");
            let reason = brief(format!("{code} (HTTP {status}): {message}"));
            classify_answer(status, &code, reason)
        }
        SdkError::TimeoutError(_) => Fault::TimedOut,
        SdkError::DispatchFailure(d) if d.is_timeout() => Fault::TimedOut,
        SdkError::ConstructionFailure(_) => Fault::Rejected(brief(chain(&e))),
        _ => Fault::Unavailable(brief(format!("unreachable: {}", chain(&e)))),
    }
}

/// An error and its sources on one line, without the SDK's Debug dump.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn brief(s: String) -> String {
    s.chars().take(300).collect()
}

/// KMS's error code and HTTP status to a [`Fault`].
fn classify_answer(status: u16, code: &str, reason: String) -> Fault {
    match code {
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded" => Fault::Throttled(reason),
        _ if status == 429 => Fault::Throttled(reason),
        "KMSInternalException"
        | "DependencyTimeoutException"
        | "KeyUnavailableException"
        | "ServiceUnavailable"
        | "InternalFailure" => Fault::Unavailable(reason),
        _ if status >= 500 => Fault::Unavailable(reason),
        _ => Fault::Rejected(reason),
    }
}

impl AwsKmsBackend {
    /// Builds the client and reads every configured key's public key (once; a key that is not
    /// an `ECC_SECG_P256K1` signing key refuses the start).
    pub async fn open(config: &AwsKmsConfig) -> Result<Self, AwsKmsError> {
        let client = client(config).await;
        let caller = Caller::new(NAME, &config.limits);
        let mut keys = BTreeMap::new();
        for (id, remote) in &config.keys {
            let key_id = KeyId::new(id.as_str()).map_err(|e| AwsKmsError::Unusable {
                key: id.clone(),
                reason: e.to_string(),
            })?;
            let public_key = read_public_key(&client, &caller, id, remote).await?;
            keys.insert(
                key_id.clone(),
                Key {
                    remote: remote.clone(),
                    info: KeyInfo {
                        id: key_id,
                        public_key,
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
            sign_calls: AtomicU64::new(0),
        })
    }

    /// Counters since open.
    pub fn stats(&self) -> AwsKmsStats {
        AwsKmsStats {
            signatures: self.signatures.load(Ordering::Relaxed),
            high_s_normalized: self.high_s.load(Ordering::Relaxed),
            sign_calls: self.sign_calls.load(Ordering::Relaxed),
        }
    }

    /// `Err(reason)` while the circuit breaker is open.
    pub fn health(&self) -> Result<(), String> {
        self.caller.health()
    }

    /// One raw `Sign` of `digest`, nothing checked: for `keyguard bench`'s baseline.
    pub async fn raw_sign(&self, key: &KeyId, digest: [u8; 32]) -> Result<Vec<u8>, String> {
        let remote = &self.keys.get(key).ok_or("unknown key")?.remote;
        self.client
            .sign()
            .key_id(remote)
            .message(Blob::new(digest.to_vec()))
            .message_type(MessageType::Digest)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(|e| chain(&e))?
            .signature
            .map(Blob::into_inner)
            .ok_or_else(|| "no signature".into())
    }

    fn unavailable(reason: String) -> BackendError {
        BackendError::Unavailable {
            backend: NAME,
            reason,
        }
    }
}

async fn read_public_key(
    client: &aws_sdk_kms::Client,
    caller: &Caller,
    id: &str,
    remote: &str,
) -> Result<PublicKey, AwsKmsError> {
    let out = caller
        .call("get_public_key", || async {
            client
                .get_public_key()
                .key_id(remote)
                .send()
                .await
                .map_err(classify)
        })
        .await
        .map_err(|e| AwsKmsError::Call {
            operation: "GetPublicKey",
            key: id.to_owned(),
            reason: match e {
                CallError::Unavailable(r) | CallError::Rejected(r) => r,
            },
        })?;
    let unusable = |reason: String| AwsKmsError::Unusable {
        key: id.to_owned(),
        reason,
    };
    if out.key_spec() != Some(&KeySpec::EccSecgP256K1) {
        return Err(unusable(format!(
            "key spec {:?}; keyguard needs ECC_SECG_P256K1",
            out.key_spec().map(KeySpec::as_str)
        )));
    }
    if out.key_usage() != Some(&KeyUsageType::SignVerify) {
        return Err(unusable("key usage is not SIGN_VERIFY".into()));
    }
    if !out
        .signing_algorithms()
        .contains(&SigningAlgorithmSpec::EcdsaSha256)
    {
        return Err(unusable(
            "ECDSA_SHA_256 is not among its signing algorithms".into(),
        ));
    }
    let der = out
        .public_key()
        .ok_or_else(|| unusable("GetPublicKey returned no public key".into()))?;
    ecdsa::secp256k1_from_spki(der.as_ref())
        .map(PublicKey::Secp256k1)
        .ok_or_else(|| unusable("the public key is not a secp256k1 SubjectPublicKeyInfo".into()))
}

#[async_trait]
impl KeyBackend for AwsKmsBackend {
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
        let PublicKey::Secp256k1(public) = &k.info.public_key else {
            return Err(BackendError::UnknownKey(key.clone()));
        };
        let der = self
            .caller
            .call("sign", || async {
                self.sign_calls.fetch_add(1, Ordering::Relaxed);
                let out = self
                    .client
                    .sign()
                    .key_id(&k.remote)
                    .message(Blob::new(digest.to_vec()))
                    .message_type(MessageType::Digest)
                    .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
                    .send()
                    .await
                    .map_err(classify)?;
                out.signature
                    .map(Blob::into_inner)
                    .ok_or_else(|| Fault::Unavailable("Sign returned no signature".into()))
            })
            .await
            .map_err(|e| match e {
                CallError::Unavailable(reason) => Self::unavailable(reason),
                CallError::Rejected(reason) => BackendError::SigningFailed {
                    key: key.clone(),
                    reason: format!("AWS KMS refused: {reason}"),
                },
            })?;
        let out = ecdsa::from_der(&der, digest, public).map_err(|fault| {
            tracing::error!(key = %key, %fault, "aws-kms: bad signature from KMS");
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

/// `keyguard keys generate --backend aws-kms`: creates an `ECC_SECG_P256K1` `SIGN_VERIFY` key
/// and points the alias the config names for `id` at it. Needs `allow_generate = true` and an
/// `alias/...` reference that does not exist yet (an existing key is never replaced).
pub async fn generate_key(config: &AwsKmsConfig, id: &KeyId) -> Result<KeyInfo, AwsKmsError> {
    if !config.allow_generate {
        return Err(AwsKmsError::Generate(
            "keystore.aws_kms.allow_generate is false: create the key in AWS and name it in \
             keystore.aws_kms.keys"
                .into(),
        ));
    }
    let alias = config
        .keys
        .get(id.as_str())
        .ok_or_else(|| {
            AwsKmsError::Generate(format!(
                "{id} is not in keystore.aws_kms.keys: add `{id} = \"alias/...\"` first"
            ))
        })?
        .clone();
    if !alias.starts_with("alias/") || alias.starts_with("alias/aws/") {
        return Err(AwsKmsError::Generate(format!(
            "keystore.aws_kms.keys.{id} = {alias:?}: generate needs an alias/... name (not \
             alias/aws/...) for the new key"
        )));
    }
    let client = client(config).await;
    let caller = Caller::new(NAME, &config.limits);
    let call_error = |operation: &'static str| {
        move |e: CallError| AwsKmsError::Call {
            operation,
            key: id.to_string(),
            reason: match e {
                CallError::Unavailable(r) | CallError::Rejected(r) => r,
            },
        }
    };
    let exists = caller
        .call("describe_key", || async {
            match client.describe_key().key_id(&alias).send().await {
                Ok(_) => Ok(true),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_not_found_exception()) =>
                {
                    Ok(false)
                }
                Err(e) => Err(classify(e)),
            }
        })
        .await
        .map_err(call_error("DescribeKey"))?;
    if exists {
        return Err(AwsKmsError::Generate(format!(
            "{alias} already names a KMS key; keyguard never replaces a key"
        )));
    }
    let created = caller
        .call("create_key", || async {
            client
                .create_key()
                .key_spec(KeySpec::EccSecgP256K1)
                .key_usage(KeyUsageType::SignVerify)
                .description(format!("keyguard key {id}"))
                .send()
                .await
                .map_err(classify)
        })
        .await
        .map_err(call_error("CreateKey"))?;
    let target = created
        .key_metadata()
        .map(|m| m.key_id().to_owned())
        .ok_or_else(|| AwsKmsError::Generate("CreateKey returned no key id".into()))?;
    caller
        .call("create_alias", || async {
            client
                .create_alias()
                .alias_name(&alias)
                .target_key_id(&target)
                .send()
                .await
                .map_err(classify)
        })
        .await
        .map_err(call_error("CreateAlias"))?;
    let public_key = read_public_key(&client, &caller, id.as_str(), &alias).await?;
    Ok(KeyInfo {
        id: id.clone(),
        public_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_retried_outages_break_the_rest_is_refused() {
        let t = |status, code: &str| classify_answer(status, code, String::new());
        assert_eq!(
            t(400, "ThrottlingException"),
            Fault::Throttled(String::new())
        );
        assert_eq!(t(429, "Whatever"), Fault::Throttled(String::new()));
        assert_eq!(
            t(500, "KMSInternalException"),
            Fault::Unavailable(String::new())
        );
        assert_eq!(t(503, ""), Fault::Unavailable(String::new()));
        assert_eq!(
            t(400, "AccessDeniedException"),
            Fault::Rejected(String::new())
        );
        assert_eq!(t(400, "DisabledException"), Fault::Rejected(String::new()));
        assert_eq!(
            t(400, "KMSInvalidStateException"),
            Fault::Rejected(String::new())
        );
    }
}
