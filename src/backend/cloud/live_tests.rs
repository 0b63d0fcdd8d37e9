//! Opt-in tests against the real services, for an operator with credentials: ignored unless
//! asked for (`cargo test --lib live_ -- --ignored`), and then they fail, never skip, when
//! their environment is missing. Each signs one digest with a configured key and checks the
//! signature with k256's recovery against the public key the backend read.
//!
//! - AWS: `KEYGUARD_LIVE_AWS_REGION`, `KEYGUARD_LIVE_AWS_KEY` (key id, ARN or alias), optional
//!   `KEYGUARD_LIVE_AWS_ENDPOINT`, and the SDK's standard credentials.
//! - Azure: `KEYGUARD_LIVE_AZURE_VAULT_URL`, `KEYGUARD_LIVE_AZURE_KEY` (key name); workload
//!   identity from the environment (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
//!   `AZURE_FEDERATED_TOKEN_FILE`) or managed identity (`KEYGUARD_LIVE_AZURE_CREDENTIAL`).
//! - Google: `KEYGUARD_LIVE_GCP_KEY` (key version name) and Application Default Credentials.

use keyguard_chain::{KeyId, PublicKey, Signature, SigningPayload};

use crate::backend::KeyBackend;
use crate::config::CallLimits;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("live test: set {name}"))
}

async fn sign_and_check(backend: &dyn KeyBackend) {
    use k256::ecdsa::{RecoveryId, Signature as K, VerifyingKey};
    let key = KeyId::new("live").unwrap();
    let PublicKey::Secp256k1(public) = backend.public_key(&key).unwrap() else {
        panic!("not secp256k1")
    };
    let digest = alloy_primitives::keccak256(b"keyguard live test").0;
    let sig = backend
        .sign(&key, &SigningPayload::Secp256k1Prehash(digest))
        .await
        .unwrap();
    let Signature::Secp256k1 { r, s, recovery_id } = sig else {
        panic!("not secp256k1")
    };
    let k = K::from_scalars(r, s).unwrap();
    assert!(k.normalize_s().is_none(), "high S released");
    let rec = VerifyingKey::recover_from_prehash(
        &digest,
        &k,
        RecoveryId::from_byte(recovery_id).unwrap(),
    )
    .unwrap();
    assert_eq!(rec.to_encoded_point(false).as_bytes(), &public[..]);
}

#[cfg(feature = "aws-kms")]
#[tokio::test]
#[ignore = "live AWS KMS: needs KEYGUARD_LIVE_AWS_* and AWS credentials"]
async fn live_aws_kms_signs() {
    let config = crate::config::AwsKmsConfig {
        region: env("KEYGUARD_LIVE_AWS_REGION"),
        endpoint: std::env::var("KEYGUARD_LIVE_AWS_ENDPOINT").ok(),
        profile: None,
        keys: [("live".to_string(), env("KEYGUARD_LIVE_AWS_KEY"))].into(),
        allow_generate: false,
        limits: CallLimits::default(),
    };
    let backend = super::aws_kms::AwsKmsBackend::open(&config).await.unwrap();
    sign_and_check(&backend).await;
}

#[cfg(feature = "azure-kv")]
#[tokio::test]
#[ignore = "live Azure Key Vault: needs KEYGUARD_LIVE_AZURE_* and an Entra identity"]
async fn live_azure_kv_signs() {
    use crate::config::AzureCredentialKind;
    let credential = match std::env::var("KEYGUARD_LIVE_AZURE_CREDENTIAL").as_deref() {
        Ok("managed-identity") => AzureCredentialKind::ManagedIdentity,
        _ => AzureCredentialKind::WorkloadIdentity,
    };
    let config = crate::config::AzureKvConfig {
        vault_url: env("KEYGUARD_LIVE_AZURE_VAULT_URL"),
        credential,
        tenant_id: None,
        client_id: None,
        client_secret_env: None,
        keys: [("live".to_string(), env("KEYGUARD_LIVE_AZURE_KEY"))].into(),
        limits: CallLimits::default(),
    };
    let backend = super::azure_kv::AzureKvBackend::open(&config)
        .await
        .unwrap();
    sign_and_check(&backend).await;
}

#[cfg(feature = "gcp-kms")]
#[tokio::test]
#[ignore = "live Google Cloud KMS: needs KEYGUARD_LIVE_GCP_KEY and Application Default Credentials"]
async fn live_gcp_kms_signs() {
    let config = crate::config::GcpKmsConfig {
        endpoint: None,
        keys: [("live".to_string(), env("KEYGUARD_LIVE_GCP_KEY"))].into(),
        limits: CallLimits::default(),
    };
    let backend = super::gcp_kms::GcpKmsBackend::open(&config).await.unwrap();
    sign_and_check(&backend).await;
}
