//! Cloud key backends at the binary's edge: opening them beside the primary backend at start,
//! and `keys list` / `keys generate --backend aws-kms`.

use std::sync::Arc;

use anyhow::Context;
use keyguard_chain::{KeyId, Scheme};

use crate::backend::routed::Routed;
use crate::backend::{KeyBackend, KeyInfo};
use crate::config::Config;
use crate::server::metrics_http::{HealthCheck, Readiness};

/// Whether the config names any cloud key service.
pub(crate) fn configured(config: &Config) -> bool {
    let ks = &config.keystore;
    ks.aws_kms.is_some() || ks.openbao.is_some() || ks.azure_kv.is_some() || ks.gcp_kms.is_some()
}

/// `primary` alone, or routed together with the configured cloud backends (each registered
/// as a `/ready` check).
pub(crate) async fn with_cloud_keys(
    config: &Config,
    primary: Arc<dyn KeyBackend>,
    readiness: &Readiness,
) -> anyhow::Result<Arc<dyn KeyBackend>> {
    if !configured(config) {
        return Ok(primary);
    }
    let others = open_all(config, Some(readiness)).await?;
    Ok(Arc::new(
        Routed::new(primary, others).map_err(|e| anyhow::anyhow!(e))?,
    ))
}

async fn open_all(
    config: &Config,
    readiness: Option<&Readiness>,
) -> anyhow::Result<Vec<Arc<dyn KeyBackend>>> {
    let mut others: Vec<Arc<dyn KeyBackend>> = Vec::new();
    if let Some(aws) = &config.keystore.aws_kms {
        let (backend, health) = open_aws(aws).await?;
        if let Some(r) = readiness {
            r.add_check(health);
        }
        others.push(backend);
    }
    if let Some(bao) = &config.keystore.openbao {
        let (backend, health) = open_openbao(bao).await?;
        if let Some(r) = readiness {
            r.add_check(health);
        }
        others.push(backend);
    }
    if let Some(gcp) = &config.keystore.gcp_kms {
        let (backend, health) = open_gcp(gcp).await?;
        if let Some(r) = readiness {
            r.add_check(health);
        }
        others.push(backend);
    }
    if let Some(az) = &config.keystore.azure_kv {
        let (backend, health) = open_azure(az).await?;
        if let Some(r) = readiness {
            r.add_check(health);
        }
        others.push(backend);
    }
    Ok(others)
}

#[cfg(feature = "gcp-kms")]
async fn open_gcp(
    gcp: &crate::config::GcpKmsConfig,
) -> anyhow::Result<(Arc<dyn KeyBackend>, HealthCheck)> {
    let backend = Arc::new(
        crate::backend::cloud::gcp_kms::GcpKmsBackend::open(gcp)
            .await
            .context("opening the Google Cloud KMS keys")?,
    );
    let b = backend.clone();
    Ok((backend, Arc::new(move || b.health())))
}

#[cfg(not(feature = "gcp-kms"))]
async fn open_gcp(
    _gcp: &crate::config::GcpKmsConfig,
) -> anyhow::Result<(Arc<dyn KeyBackend>, HealthCheck)> {
    anyhow::bail!("keystore.gcp_kms: this keyguard was built without the `gcp-kms` feature")
}

#[cfg(feature = "azure-kv")]
async fn open_azure(
    az: &crate::config::AzureKvConfig,
) -> anyhow::Result<(Arc<dyn KeyBackend>, HealthCheck)> {
    let backend = Arc::new(
        crate::backend::cloud::azure_kv::AzureKvBackend::open(az)
            .await
            .context("opening the Azure Key Vault keys")?,
    );
    let b = backend.clone();
    Ok((backend, Arc::new(move || b.health())))
}

#[cfg(not(feature = "azure-kv"))]
async fn open_azure(
    _az: &crate::config::AzureKvConfig,
) -> anyhow::Result<(Arc<dyn KeyBackend>, HealthCheck)> {
    anyhow::bail!("keystore.azure_kv: this keyguard was built without the `azure-kv` feature")
}

#[cfg(feature = "aws-kms")]
async fn open_aws(
    aws: &crate::config::AwsKmsConfig,
) -> anyhow::Result<(Arc<dyn KeyBackend>, HealthCheck)> {
    let backend = Arc::new(
        crate::backend::cloud::aws_kms::AwsKmsBackend::open(aws)
            .await
            .context("opening the AWS KMS keys")?,
    );
    let b = backend.clone();
    Ok((backend, Arc::new(move || b.health())))
}

/// A build without the feature says so instead of pretending the table does not exist.
#[cfg(not(feature = "aws-kms"))]
async fn open_aws(
    _aws: &crate::config::AwsKmsConfig,
) -> anyhow::Result<(Arc<dyn KeyBackend>, HealthCheck)> {
    anyhow::bail!("keystore.aws_kms: this keyguard was built without the `aws-kms` feature")
}

#[cfg(feature = "openbao")]
async fn open_openbao(
    bao: &crate::config::OpenBaoConfig,
) -> anyhow::Result<(Arc<dyn KeyBackend>, HealthCheck)> {
    let backend = Arc::new(
        crate::backend::cloud::openbao::OpenBaoBackend::open(bao)
            .await
            .context("opening the OpenBao transit keys")?,
    );
    let b = backend.clone();
    Ok((backend, Arc::new(move || b.health())))
}

#[cfg(not(feature = "openbao"))]
async fn open_openbao(
    _bao: &crate::config::OpenBaoConfig,
) -> anyhow::Result<(Arc<dyn KeyBackend>, HealthCheck)> {
    anyhow::bail!("keystore.openbao: this keyguard was built without the `openbao` feature")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The cloud keys of a config with their public info (one `GetPublicKey` each).
pub(crate) fn list(config: &Config) -> anyhow::Result<Vec<(&'static str, KeyInfo)>> {
    if !configured(config) {
        return Ok(Vec::new());
    }
    runtime()?.block_on(async {
        let others = open_all(config, None).await?;
        Ok(others
            .iter()
            .flat_map(|b| b.keys().into_iter().map(|k| (b.name(), k)))
            .collect())
    })
}

/// `keys generate --backend aws-kms`.
#[cfg(feature = "aws-kms")]
pub(crate) fn generate_aws(config: &Config, id: KeyId, scheme: Scheme) -> anyhow::Result<KeyInfo> {
    let aws = config
        .keystore
        .aws_kms
        .as_ref()
        .context("the config has no [keystore.aws_kms] table")?;
    anyhow::ensure!(
        scheme == Scheme::Secp256k1,
        "AWS KMS keys are secp256k1 (ECC_SECG_P256K1); KMS has no Ed25519 signing key spec \
         keyguard uses"
    );
    Ok(runtime()?.block_on(crate::backend::cloud::aws_kms::generate_key(aws, &id))?)
}

/// `keys generate --backend aws-kms` in a build without the feature.
#[cfg(not(feature = "aws-kms"))]
pub(crate) fn generate_aws(
    _config: &Config,
    _id: KeyId,
    _scheme: Scheme,
) -> anyhow::Result<KeyInfo> {
    anyhow::bail!("this keyguard was built without the `aws-kms` feature")
}

/// `keys generate --backend openbao`.
#[cfg(feature = "openbao")]
pub(crate) fn generate_openbao(
    config: &Config,
    id: KeyId,
    scheme: Scheme,
) -> anyhow::Result<KeyInfo> {
    let bao = config
        .keystore
        .openbao
        .as_ref()
        .context("the config has no [keystore.openbao] table")?;
    anyhow::ensure!(
        scheme == Scheme::Ed25519,
        "OpenBao transit has no secp256k1 key type: keyguard keeps only ed25519 (CometBFT) keys          there; use aws-kms, pkcs11 or the software keystore for secp256k1"
    );
    Ok(runtime()?.block_on(crate::backend::cloud::openbao::generate_key(bao, &id))?)
}

/// `keys generate --backend openbao` in a build without the feature.
#[cfg(not(feature = "openbao"))]
pub(crate) fn generate_openbao(
    _config: &Config,
    _id: KeyId,
    _scheme: Scheme,
) -> anyhow::Result<KeyInfo> {
    anyhow::bail!("this keyguard was built without the `openbao` feature")
}
