//! `[keystore.aws_kms]` and `[keystore.openbao]`: keys held by a cloud key service, chosen per
//! key beside the primary backend (software or PKCS#11).
//!
//! Plain data, always compiled: a config naming a cloud service parses in a build without its
//! cargo feature, which then refuses to start by name instead of failing on an unknown table.
//! No credential is ever read from this file: AWS credentials come from the SDK's standard
//! chain, the OpenBao token from an environment variable or a 0600 file.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde::Deserialize;

/// How keyguard calls a cloud key service: the limits shared by every cloud backend.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallLimits {
    /// One signature (all attempts and waits) fails with `-32007` after this long.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries after a throttling answer (and only then), with jittered backoff.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Client-side ceiling on calls per second, kept below the account quota (AWS: 300 ECC
    /// `Sign` per second shared per account and region).
    #[serde(default = "default_rate")]
    pub requests_per_second: u32,
    /// Consecutive failures (unreachable, timeout, 5xx) that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// While open, requests fail at once (`-32007`) for this long; then one request probes.
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            timeout_ms: default_timeout_ms(),
            max_retries: default_max_retries(),
            requests_per_second: default_rate(),
            breaker_failures: default_breaker_failures(),
            breaker_open_ms: default_breaker_open_ms(),
        }
    }
}

fn default_timeout_ms() -> u64 {
    3000
}
fn default_max_retries() -> u32 {
    3
}
fn default_rate() -> u32 {
    250
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_ms() -> u64 {
    5000
}

impl CallLimits {
    fn problems(&self) -> Option<(&'static str, String)> {
        if !(100..=60_000).contains(&self.timeout_ms) {
            return Some(("timeout_ms", "must be between 100 and 60000".into()));
        }
        if self.max_retries > 10 {
            return Some(("max_retries", "must be at most 10".into()));
        }
        if !(1..=100_000).contains(&self.requests_per_second) {
            return Some(("requests_per_second", "must be between 1 and 100000".into()));
        }
        if !(1..=1000).contains(&self.breaker_failures) {
            return Some(("breaker_failures", "must be between 1 and 1000".into()));
        }
        if !(100..=600_000).contains(&self.breaker_open_ms) {
            return Some(("breaker_open_ms", "must be between 100 and 600000".into()));
        }
        None
    }
}

/// AWS KMS `ECC_SECG_P256K1` keys.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsConfig {
    /// The region (`eu-west-1`). Required: a key lives in one region.
    pub region: String,
    /// Another endpoint (VPC endpoint, FIPS endpoint, an emulator on loopback).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A named profile of the shared AWS config files; default: the standard chain.
    #[serde(default)]
    pub profile: Option<String>,
    /// keyguard key id -> KMS key (key id, ARN or `alias/...`).
    pub keys: BTreeMap<String, String>,
    /// `keyguard keys generate --backend aws-kms` may create keys (`CreateKey` + `CreateAlias`).
    #[serde(default)]
    pub allow_generate: bool,
    /// Timeouts, retries, rate and circuit breaker.
    #[serde(flatten)]
    pub limits: CallLimits,
}

/// OpenBao (or Vault) transit `ed25519` keys.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBaoConfig {
    /// The server (`https://bao.internal:8200`); plain http only on loopback.
    pub address: String,
    /// Where transit is mounted.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// Environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding the token (mode 0600).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// keyguard key id -> transit key name.
    pub keys: BTreeMap<String, String>,
    /// `keyguard keys generate --backend openbao` may create transit keys.
    #[serde(default)]
    pub allow_generate: bool,
    /// Timeouts, retries, rate and circuit breaker.
    #[serde(flatten)]
    pub limits: CallLimits,
}

/// Google Cloud KMS `EC_SIGN_SECP256K1_SHA256` key versions.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpKmsConfig {
    /// Another endpoint (Private Service Connect); default `https://cloudkms.googleapis.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// keyguard key id -> key version resource name
    /// (`projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N`).
    pub keys: BTreeMap<String, String>,
    /// Timeouts, retries, rate and circuit breaker.
    #[serde(flatten)]
    pub limits: CallLimits,
}

impl GcpKmsConfig {
    /// Problems as `(key, reason)`, keys relative to `keystore.gcp_kms`.
    pub(super) fn problems(&self) -> Option<(&'static str, String)> {
        if let Some(e) = &self.endpoint {
            if let Some(reason) = endpoint_problem(e) {
                return Some(("endpoint", reason));
            }
        }
        if let Some(p) = key_map_problems(&self.keys) {
            return Some(p);
        }
        for name in self.keys.values() {
            let parts: Vec<&str> = name.split('/').collect();
            let shape = parts.len() == 10
                && parts[0] == "projects"
                && parts[2] == "locations"
                && parts[4] == "keyRings"
                && parts[6] == "cryptoKeys"
                && parts[8] == "cryptoKeyVersions"
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && !p.starts_with('.')
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                });
            if !shape {
                return Some((
                    "keys",
                    format!(
                        "{name:?}: give a key version, projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N"
                    ),
                ));
            }
        }
        self.limits.problems()
    }
}

/// How keyguard signs in to Entra ID for Azure Key Vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AzureCredentialKind {
    /// The VM's, App Service's or container's managed identity (`client_id` picks a
    /// user-assigned one).
    ManagedIdentity,
    /// AKS workload identity (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`
    /// as the pod gets them, or `tenant_id` / `client_id` here).
    WorkloadIdentity,
    /// A service principal's client secret, read from `client_secret_env`.
    ClientSecret,
}

/// Azure Key Vault (or Managed HSM) `P-256K` keys.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureKvConfig {
    /// `https://<vault>.vault.azure.net` or `https://<hsm>.managedhsm.azure.net`.
    pub vault_url: String,
    /// How keyguard gets its Entra ID token.
    pub credential: AzureCredentialKind,
    /// Tenant (directory) id: required for `client-secret`.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Application (client) id: the service principal, or a user-assigned managed identity.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Environment variable holding the client secret (`client-secret` only).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// keyguard key id -> Key Vault key name.
    pub keys: BTreeMap<String, String>,
    /// Timeouts, retries, rate and circuit breaker.
    #[serde(flatten)]
    pub limits: CallLimits,
}

impl AzureKvConfig {
    /// Problems as `(key, reason)`, keys relative to `keystore.azure_kv`.
    pub(super) fn problems(&self) -> Option<(&'static str, String)> {
        match self.vault_url.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {}
            _ => return Some(("vault_url", "https://<vault>.vault.azure.net".into())),
        }
        let (secret, tenant) = (self.client_secret_env.is_some(), self.tenant_id.is_some());
        match self.credential {
            AzureCredentialKind::ClientSecret if !secret || !tenant || self.client_id.is_none() => {
                return Some((
                    "credential",
                    "client-secret needs tenant_id, client_id and client_secret_env (the secret \
                     is never inline)"
                        .into(),
                ))
            }
            AzureCredentialKind::ManagedIdentity | AzureCredentialKind::WorkloadIdentity
                if secret =>
            {
                return Some((
                    "client_secret_env",
                    "only used with credential = \"client-secret\"".into(),
                ))
            }
            _ => {}
        }
        if let Some(p) = key_map_problems(&self.keys) {
            return Some(p);
        }
        for name in self.keys.values() {
            let ok =
                name.len() <= 127 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return Some((
                    "keys",
                    format!("key name {name:?}: letters, digits and - only"),
                ));
            }
        }
        self.limits.problems()
    }
}

fn default_mount() -> String {
    "transit".into()
}

fn key_map_problems(keys: &BTreeMap<String, String>) -> Option<(&'static str, String)> {
    if keys.is_empty() {
        return Some(("keys", "name at least one key".into()));
    }
    let mut remote = HashSet::new();
    for (id, name) in keys {
        if let Err(e) = keyguard_chain::KeyId::new(id.as_str()) {
            return Some(("keys", e.to_string()));
        }
        if name.is_empty() || name.len() > 2048 || name.chars().any(char::is_control) {
            return Some(("keys", format!("{id}: not a usable key reference")));
        }
        if !remote.insert(name) {
            return Some(("keys", format!("{name:?} is named by two key ids")));
        }
    }
    None
}

impl AwsKmsConfig {
    /// Problems as `(key, reason)`, keys relative to `keystore.aws_kms`.
    pub(super) fn problems(&self) -> Option<(&'static str, String)> {
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 32
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Some(("region", "an AWS region name such as eu-west-1".into()));
        }
        if let Some(e) = &self.endpoint {
            if let Some(reason) = endpoint_problem(e) {
                return Some(("endpoint", reason));
            }
        }
        key_map_problems(&self.keys).or_else(|| self.limits.problems())
    }
}

impl OpenBaoConfig {
    /// Problems as `(key, reason)`, keys relative to `keystore.openbao`.
    pub(super) fn problems(&self) -> Option<(&'static str, String)> {
        if let Some(reason) = endpoint_problem(&self.address) {
            return Some(("address", reason));
        }
        match (&self.token_env, &self.token_file) {
            (Some(v), None) if !v.is_empty() => {}
            (None, Some(_)) => {}
            (Some(_), Some(_)) => {
                return Some(("token_env", "give token_env or token_file, not both".into()))
            }
            _ => return Some((
                "token_env",
                "give token_env (an environment variable) or token_file; the token is never inline"
                    .into(),
            )),
        }
        let mount_ok = !self.mount.is_empty()
            && self.mount.len() <= 128
            && self
                .mount
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_/".contains(&b))
            && !self.mount.starts_with('/')
            && !self.mount.contains("..");
        if !mount_ok {
            return Some(("mount", "letters, digits, - _ and / only".into()));
        }
        if let Some(p) = key_map_problems(&self.keys) {
            return Some(p);
        }
        for name in self.keys.values() {
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Some((
                    "keys",
                    format!("transit key {name:?}: letters, digits, - _ and . only"),
                ));
            }
        }
        self.limits.problems()
    }
}

/// `https://...`, or `http://` to a loopback host only (a token or signature over plain HTTP
/// on a network could be read or changed).
fn endpoint_problem(url: &str) -> Option<String> {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Some(format!("{url:?} is not a URL"));
    };
    let host = uri.host().unwrap_or("");
    if host.is_empty() || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Some(format!("{url:?}: give scheme://host[:port] only"));
    }
    match uri.scheme_str() {
        Some("https") => None,
        Some("http") => {
            let loopback = host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            (!loopback).then(|| format!("{url:?}: plain http is allowed to loopback only"))
        }
        _ => Some(format!("{url:?}: use https://")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws() -> AwsKmsConfig {
        AwsKmsConfig {
            region: "eu-west-1".into(),
            endpoint: None,
            profile: None,
            keys: [("treasury".to_string(), "alias/kg-treasury".to_string())].into(),
            allow_generate: false,
            limits: CallLimits::default(),
        }
    }

    const DEV: &str = include_str!("../../configs/dev.toml");
    const DOCS: &str = include_str!("../../docs/backends.md");

    /// The ```toml block of docs/backends.md that contains `marker`.
    fn doc_block(marker: &str) -> &'static str {
        DOCS.split("```toml")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .find(|b| b.contains(marker))
            .unwrap()
    }

    fn parse(extra: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::Config::parse(std::path::Path::new("t.toml"), &format!("{DEV}\n{extra}"))
    }

    #[test]
    fn the_documented_tables_parse() {
        let c = parse(doc_block("[keystore.aws_kms]")).unwrap();
        let aws = c.keystore.aws_kms.unwrap();
        assert_eq!(aws.region, "eu-west-1");
        assert_eq!(aws.keys["treasury"], "alias/keyguard-treasury");
        assert_eq!(aws.limits, CallLimits::default());
        let c = parse(doc_block("[keystore.openbao]")).unwrap();
        let bao = c.keystore.openbao.unwrap();
        assert_eq!(bao.keys["validator"], "cometbft-validator");
        assert_eq!(bao.token_env.as_deref(), Some("KEYGUARD_BAO_TOKEN"));
        let c = parse(doc_block("[keystore.azure_kv]")).unwrap();
        let az = c.keystore.azure_kv.unwrap();
        assert_eq!(az.credential, AzureCredentialKind::ManagedIdentity);
        assert_eq!(az.keys["treasury"], "keyguard-treasury");
        let c = parse(doc_block("[keystore.gcp_kms]")).unwrap();
        assert!(c.keystore.gcp_kms.unwrap().keys["treasury"].ends_with("/cryptoKeyVersions/1"));
    }

    #[test]
    fn gcp_keys_must_be_key_versions() {
        let gcp = doc_block("[keystore.gcp_kms]");
        // A key, not a key version; and a path that walks out of the resource name.
        for (from, to) in [
            ("/cryptoKeyVersions/1\"", "\""),
            ("/cryptoKeyVersions/1\"", "/cryptoKeyVersions/../1\""),
            ("/cryptoKeyVersions/1\"", "/cryptoKeyVersions/..\""),
        ] {
            let err = parse(&gcp.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(err.contains("keystore.gcp_kms.keys"), "{err}");
        }
    }

    #[test]
    fn azure_credentials_need_their_fields_and_no_inline_secret() {
        let az = doc_block("[keystore.azure_kv]");
        let secret = az.replace("\"managed-identity\"", "\"client-secret\"");
        let err = parse(&secret).unwrap_err().to_string();
        assert!(err.contains("keystore.azure_kv.credential"), "{err}");
        let full = secret.replace(
            "timeout_ms",
            "tenant_id = \"t\"\nclient_id = \"c\"\nclient_secret_env = \"S\"\ntimeout_ms",
        );
        assert!(parse(&full).is_ok());
        let inline = az.replace("timeout_ms", "client_secret = \"x\"\ntimeout_ms");
        assert!(parse(&inline)
            .unwrap_err()
            .to_string()
            .contains("client_secret"));
        let http = az.replace("https://my-vault", "http://my-vault");
        let err = parse(&http).unwrap_err().to_string();
        assert!(err.contains("keystore.azure_kv.vault_url"), "{err}");
    }

    #[test]
    fn misspelt_and_inline_secret_fields_are_refused() {
        let aws = doc_block("[keystore.aws_kms]");
        for (from, to) in [
            ("timeout_ms", "timout_ms"),
            ("region =", "secret_access_key = \"x\"\nregion ="),
        ] {
            let err = parse(&aws.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(err.contains(to.split(' ').next().unwrap()), "{err}");
        }
        let bao = doc_block("[keystore.openbao]");
        let err = parse(&bao.replace("mount =", "token = \"s.x\"\nmount ="))
            .unwrap_err()
            .to_string();
        assert!(err.contains("token"), "{err}");
        // A key id in both cloud tables.
        let both = format!("{aws}\n{}", bao.replace("validator = ", "treasury = "));
        let err = parse(&both).unwrap_err().to_string();
        assert!(err.contains("keystore.openbao.keys"), "{err}");
        // Plain http off loopback.
        let err = parse(&aws.replace(
            "region = \"eu-west-1\"",
            "region = \"eu-west-1\"\nendpoint = \"http://10.1.2.3\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("keystore.aws_kms.endpoint"), "{err}");
    }

    #[test]
    fn endpoints_are_https_or_loopback_http() {
        assert_eq!(
            endpoint_problem("https://kms.eu-west-1.amazonaws.com"),
            None
        );
        assert_eq!(endpoint_problem("http://127.0.0.1:4566"), None);
        assert_eq!(endpoint_problem("http://localhost:4566"), None);
        assert_eq!(endpoint_problem("http://[::1]:8200"), None);
        assert!(endpoint_problem("http://10.0.0.1:8200").is_some());
        assert!(endpoint_problem("ftp://127.0.0.1").is_some());
        assert!(endpoint_problem("https://h/v1/transit").is_some());
        assert!(endpoint_problem("not a url").is_some());
    }

    #[test]
    fn aws_config_problems_name_the_field() {
        assert_eq!(aws().problems(), None);
        let mut c = aws();
        c.region = "EU WEST".into();
        assert_eq!(c.problems().unwrap().0, "region");
        let mut c = aws();
        c.keys.insert("other".into(), "alias/kg-treasury".into());
        assert_eq!(c.problems().unwrap().0, "keys");
        let mut c = aws();
        c.keys.insert("bad id!".into(), "alias/x".into());
        assert_eq!(c.problems().unwrap().0, "keys");
        let mut c = aws();
        c.limits.max_retries = 11;
        assert_eq!(c.problems().unwrap().0, "max_retries");
        let mut c = aws();
        c.keys.clear();
        assert_eq!(c.problems().unwrap().0, "keys");
    }
}
