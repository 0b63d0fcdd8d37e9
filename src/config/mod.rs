//! The TOML configuration model. Every table refuses keys it does not know (a misspelt limit
//! must not silently become no limit), and [`Config::load`] validates before anything starts.

mod audit;
mod console;
mod eth2;
mod labels;
mod nodes;
mod people;
mod store;

pub use audit::{AuditConfig, AuditLimits};
pub use console::ConsoleConfig;
pub use eth2::{graffiti_bytes, Eth2Approval, Eth2Config, Eth2Policy, SlashingStrategy};
pub use labels::Labels;
pub use nodes::{proxy_allowed, BitcoinNodeConfig, UpstreamConfig};
pub use people::{
    parse_duration, quota, AdminConfig, AdminListenerLimits, AdminTlsConfig, LimitConfig,
    RateLimitsConfig, DEFAULT_PENDING_PER_CLIENT, DEFAULT_PENDING_TOTAL,
};
pub use store::{PgSettings, PgTls, StoreBackend, StoreConfig};

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use keyguard_chain::{KeyId, Scheme};
use keyguard_evm::EvmPolicy;
use serde::Deserialize;

mod validators;
pub use validators::{PrivvalAddr, ValidatorConfig};
mod pkcs11;
pub use pkcs11::{PinSource, Pkcs11Config};
mod cloud;
pub use cloud::{
    AwsKmsConfig, AzureCredentialKind, AzureKvConfig, CallLimits, GcpKmsConfig, OpenBaoConfig,
};

/// A configuration problem, located by file and (from the TOML parser) line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this model.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// The file parsed but is not a safe or coherent configuration.
    #[error("{path}: {key}: {reason}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The offending key, as a TOML path.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A development setup: allows the default keystore passphrase (loudly).
    #[serde(default)]
    pub dev: bool,
    /// Where state lives.
    pub data: DataConfig,
    /// The key store.
    pub keystore: KeystoreConfig,
    /// Signing listeners.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Applications allowed to call, with their credentials and grants.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Upstream Bitcoin Core node: inputs checked unspent before signing; broadcast on request.
    #[serde(default)]
    pub bitcoin_node: Option<BitcoinNodeConfig>,
    /// Per-key policies.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// CometBFT validator nodes to serve as remote signer.
    #[serde(default)]
    pub validators: Vec<ValidatorConfig>,
    /// Prometheus metrics, health and readiness.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Ethereum consensus remote signing (Web3Signer eth2 API, `docs/eth2.md`).
    #[serde(default)]
    pub eth2: Option<Eth2Config>,
    /// The admin API (users, kill switch, approvals, audit).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Request rate limits, applied before any decoding.
    #[serde(default)]
    pub rate_limits: Option<RateLimitsConfig>,
    /// Bounds on audit growth: field caps, refusal budget, disk floor (`docs/people.md`); and
    /// `[audit.anchors]`, signed anchors of the audit head outside the data directory.
    #[serde(default)]
    pub audit: AuditLimits,
    /// Which engine holds the state: the SQLite file (default) or a PostgreSQL database shared
    /// by several instances (`docs/ha.md`).
    #[serde(default)]
    pub store: StoreConfig,
    /// Where this configuration was read from (for messages).
    #[serde(skip)]
    pub path: PathBuf,
}

/// The data directory: `<dir>/keyguard.db` and `<dir>/keys/`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Relative paths are taken from the working directory.
    pub dir: PathBuf,
}

impl DataConfig {
    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.dir.join("keyguard.db")
    }

    /// The admin API socket unless configured elsewhere.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// Dropping a file here disables every key (root's emergency stop).
    pub fn kill_file(&self) -> PathBuf {
        self.dir.join("KILL")
    }

    /// The software keystore directory.
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }
}

/// The metrics listener (`/metrics`, `/health`, `/ready`).
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Bind address; keep it on loopback or a management network.
    pub address: SocketAddr,
}

/// Which key backend holds the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The encrypted software keystore under the data directory.
    Software,
    /// A PKCS#11 token (HSM), configured in `[keystore.pkcs11]`.
    Pkcs11,
}

impl BackendKind {
    /// The name used in configs, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Software => "software",
            BackendKind::Pkcs11 => "pkcs11",
        }
    }
}

/// Key store settings.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeystoreConfig {
    /// The backend.
    pub backend: BackendKind,
    /// Environment variable holding the keystore passphrase.
    #[serde(default = "default_passphrase_env")]
    pub passphrase_env: String,
    /// Key schemes to create when the keystore is empty (`dev-<scheme>`).
    #[serde(default)]
    pub create_on_first_start: Vec<Scheme>,
    /// Argon2id memory cost in KiB for newly written key files.
    #[serde(default)]
    pub kdf_memory_kib: Option<u32>,
    /// Argon2id passes for newly written key files.
    #[serde(default)]
    pub kdf_iterations: Option<u32>,
    /// The token, when `backend = "pkcs11"`.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
    /// Keys in AWS KMS, beside the primary backend (`docs/backends.md`).
    #[serde(default)]
    pub aws_kms: Option<AwsKmsConfig>,
    /// Keys in OpenBao / Vault transit, beside the primary backend.
    #[serde(default)]
    pub openbao: Option<OpenBaoConfig>,
    /// Keys in Azure Key Vault, beside the primary backend.
    #[serde(default)]
    pub azure_kv: Option<AzureKvConfig>,
    /// Keys in Google Cloud KMS, beside the primary backend.
    #[serde(default)]
    pub gcp_kms: Option<GcpKmsConfig>,
}

fn default_passphrase_env() -> String {
    "KEYGUARD_PASSPHRASE".into()
}

/// Protocols a listener can speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// Ethereum JSON-RPC over HTTP and WebSocket.
    #[serde(rename = "evm-jsonrpc")]
    EvmJsonRpc,
}

/// How callers prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No credential: loopback listeners only.
    None,
    /// `Authorization: Bearer <token>`, matched against client token hashes.
    Bearer,
}

/// Shape of a successful `eth_signTransaction` result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResponseShape {
    /// The raw signed transaction as 0x-hex (Web3Signer, op-signer, viem).
    #[default]
    Raw,
    /// geth's `{raw, tx}` object (web3.py, geth).
    Geth,
}

/// One signing listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in logs and the audit log.
    pub name: String,
    /// Protocol spoken.
    pub protocol: Protocol,
    /// Bind address; port 0 picks a free port (printed at start).
    pub address: SocketAddr,
    /// The chain id `eth_chainId` answers.
    pub chain_id: u64,
    /// How callers authenticate.
    pub auth: AuthMode,
    /// Keys granted to callers of an `auth = "none"` listener (`"*"` for all).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Default response shape.
    #[serde(default)]
    pub response: ResponseShape,
    /// Requests with a larger body are refused before parsing.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u32,
    /// Upstream node: enables `eth_sendTransaction` and proxies `proxy_methods`.
    #[serde(default)]
    pub upstream: Option<UpstreamConfig>,
    /// TLS with required client certificates (op-batcher / op-proposer signer clients).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Seconds a signing call that needs approvals waits for them (0 answers -32002 at once).
    #[serde(default)]
    pub approval_wait_secs: u32,
    /// Connection caps and idle timeout of this listener (see docs/edge.md).
    #[serde(default)]
    pub connections: ConnectionLimits,
}

/// How many connections a listener holds, and for how long when they are idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Open connections in total; more are closed at accept.
    pub max: u32,
    /// Open connections from one IP address.
    pub per_peer: u32,
    /// Seconds without a byte in either direction before a connection is closed (raised to
    /// the approval wait plus a minute, so a parked call is never cut).
    pub idle_timeout_secs: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max: 1024,
            per_peer: 256,
            idle_timeout_secs: 300,
        }
    }
}

/// TLS settings of a listener (PEM files, relative to the working directory).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA that client certificates must chain to (client certificates are required).
    pub client_ca: PathBuf,
}

/// Longest approval wait a listener may configure: beyond it clients and proxies time out.
pub const MAX_APPROVAL_WAIT_SECS: u32 = 600;

impl ListenerConfig {
    /// The approval wait as a duration.
    pub fn approval_wait(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.approval_wait_secs))
    }
}

fn default_max_body() -> u32 {
    1024 * 1024
}

/// An application allowed to sign.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Name used in logs and the audit log.
    pub name: String,
    /// Hex SHA-256 of the bearer token (the token itself is never stored). May be empty for a
    /// client that authenticates by `cert_dns_name` only.
    #[serde(default)]
    pub token_sha256: String,
    /// First DNS name of the client's TLS certificate (op-signer's client identity).
    #[serde(default)]
    pub cert_dns_name: Option<String>,
    /// Keys this client may use (`"*"` for all).
    pub keys: Vec<String>,
    /// Overrides the listener's response shape for this client.
    #[serde(default)]
    pub response: Option<ResponseShape>,
}

/// A policy and the keys it governs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Name recorded with decisions.
    pub name: String,
    /// Keys governed (`"*"` for all); the first matching policy applies.
    pub keys: Vec<String>,
    /// Ethereum rules; a key with no `evm` table cannot sign Ethereum transactions.
    #[serde(default)]
    pub evm: Option<EvmPolicy>,
    /// Bitcoin rules (`[policies.bitcoin]`) for BIP32 seeds and single secp256k1 keys.
    #[serde(default)]
    pub bitcoin: Option<keyguard_bitcoin::BitcoinPolicy>,
    /// Signet block rules (`[policies.signet]`, `docs/bitcoin-signet.md`) for single
    /// secp256k1 keys that solve the network's challenge.
    #[serde(default)]
    pub signet: Option<keyguard_bitcoin::signet_rules::SignetPolicy>,
}

/// Whether a key pattern list (`"*"` or ids) covers `key`.
pub fn patterns_match(patterns: &[String], key: &KeyId) -> bool {
    patterns.iter().any(|p| p == "*" || p == key.as_str())
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates configuration text (`path` is used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config = Self::parse_unvalidated(path, text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a file without the semantic checks, so that `config check` can list
    /// every problem instead of the first.
    pub fn load_unvalidated(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_unvalidated(path, &text)
    }

    fn parse_unvalidated(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.path = path.to_owned();
        Ok(config)
    }

    fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    /// Every semantic problem of the configuration (empty when it is valid).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if let Err(e) = self.validate_keystore() {
            problems.push(e);
        }
        if let Err(e) = self.validate_validators() {
            problems.push(e);
        }
        if let Some(e) = &self.eth2 {
            for (key, reason) in e.problems() {
                problems.push(self.invalid(key, reason));
            }
            if e.backend == "software" && self.keystore.backend != BackendKind::Software {
                problems.push(self.invalid(
                    "eth2",
                    "eth2.key_backend: BLS keys live in the software keystore; \
                     keystore.backend = \"pkcs11\" has no BLS12-381 keys",
                ));
            }
        }
        match (&self.store.backend, &self.store.postgres) {
            (StoreBackend::Postgres, None) => problems.push(self.invalid(
                "store.postgres",
                "backend = \"postgres\" needs a [store.postgres] table",
            )),
            (StoreBackend::Sqlite, Some(_)) => problems
                .push(self.invalid("store.postgres", "only used with backend = \"postgres\"")),
            (StoreBackend::Postgres, Some(pg)) => {
                if let Err((field, reason)) = pg.validate() {
                    problems.push(self.invalid(format!("store.postgres.{field}"), reason));
                }
            }
            (StoreBackend::Sqlite, None) => {}
        }
        let mut names = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let key = |k: &str| format!("listeners[{i}].{k}");
            if !names.insert(&l.name) {
                problems
                    .push(self.invalid(key("name"), format!("duplicate listener {:?}", l.name)));
            }
            match l.auth {
                AuthMode::None if !l.address.ip().is_loopback() => problems.push(self.invalid(
                    key("auth"),
                    format!(
                        "auth = \"none\" is only allowed on loopback, not {}",
                        l.address
                    ),
                )),
                AuthMode::Bearer if !l.keys.is_empty() => problems.push(self.invalid(
                    key("keys"),
                    "grants on a bearer listener come from [[clients]], not the listener",
                )),
                _ => {}
            }
            for m in l.upstream.iter().flat_map(|u| &u.proxy_methods) {
                if let Err(e) = proxy_allowed(m) {
                    problems.push(self.invalid(key("upstream.proxy_methods"), e));
                }
            }
            if l.tls.is_some() && l.auth != AuthMode::Bearer {
                problems.push(self.invalid(
                    key("auth"),
                    "a TLS listener authenticates clients: use auth = \"bearer\" \
                     (certificates by cert_dns_name, or bearer tokens)",
                ));
            }
            if l.max_body_bytes < 1024 {
                problems.push(self.invalid(key("max_body_bytes"), "must be at least 1024"));
            }
            let c = l.connections;
            if c.max == 0 || c.per_peer == 0 || c.per_peer > c.max || c.idle_timeout_secs == 0 {
                problems.push(self.invalid(
                    key("connections"),
                    "max, per_peer and idle_timeout_secs must be positive, per_peer <= max",
                ));
            }
            if l.approval_wait_secs > MAX_APPROVAL_WAIT_SECS {
                problems.push(self.invalid(
                    key("approval_wait_secs"),
                    format!("at most {MAX_APPROVAL_WAIT_SECS}"),
                ));
            }
        }
        let mut client_names = HashSet::new();
        let mut hashes = HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            let key = |k: &str| format!("clients[{i}].{k}");
            if !client_names.insert(&c.name) {
                problems.push(self.invalid(key("name"), format!("duplicate client {:?}", c.name)));
            }
            let ok = c.token_sha256.len() == 64 && hex::decode(&c.token_sha256).is_ok();
            let cert_only = c.token_sha256.is_empty() && c.cert_dns_name.is_some();
            if !ok && !cert_only {
                problems.push(self.invalid(
                    key("token_sha256"),
                    "expected 64 hex digits (see `keyguard clients token`)",
                ));
            } else if ok && !hashes.insert(c.token_sha256.to_ascii_lowercase()) {
                problems.push(self.invalid(key("token_sha256"), "two clients share a token"));
            } else if let Some(weak) = well_known_token(&c.token_sha256) {
                problems.push(self.invalid(
                    key("token_sha256"),
                    format!(
                        "is the SHA-256 of the well-known token {weak:?}, which anyone can send; \
                         generate one with `keyguard clients token`"
                    ),
                ));
            }
        }
        let mut policy_names = HashSet::new();
        let base = self.path.parent().unwrap_or(Path::new("."));
        for (i, p) in self.policies.iter().enumerate() {
            if let Some(evm) = &p.evm {
                if let Err(e) = evm.prepare(base) {
                    problems.push(self.invalid(format!("policies[{i}].evm"), e));
                }
            }
            if !policy_names.insert(&p.name) {
                problems.push(self.invalid(
                    format!("policies[{i}].name"),
                    format!("duplicate policy {:?}", p.name),
                ));
            }
        }
        problems.extend(self.people_problems());
        problems.extend(self.audit_problems());
        for (key, pattern) in self.key_references() {
            if pattern != "*" {
                if let Err(e) = KeyId::new(pattern) {
                    problems.push(self.invalid(key, e.to_string()));
                }
            }
        }
        problems
    }

    /// The admin socket in force.
    pub fn admin_socket(&self) -> PathBuf {
        self.admin
            .socket
            .clone()
            .unwrap_or_else(|| self.data.admin_socket())
    }

    /// Every key pattern the configuration names, with its location (`clients[0].keys`).
    pub fn key_references(&self) -> Vec<(String, &str)> {
        let mut refs = Vec::new();
        for (what, lists) in [
            (
                "listeners",
                self.listeners.iter().map(|l| &l.keys).collect::<Vec<_>>(),
            ),
            ("clients", self.clients.iter().map(|c| &c.keys).collect()),
            ("policies", self.policies.iter().map(|p| &p.keys).collect()),
        ] {
            for (i, list) in lists.into_iter().enumerate() {
                refs.extend(
                    list.iter()
                        .map(|k| (format!("{what}[{i}].keys"), k.as_str())),
                );
            }
        }
        for (i, v) in self.validators.iter().enumerate() {
            refs.push((format!("validators[{i}].key"), v.key.as_str()));
        }
        refs
    }

    fn validate_keystore(&self) -> Result<(), ConfigError> {
        let ks = &self.keystore;
        if let Some(aws) = &ks.aws_kms {
            if let Some((key, reason)) = aws.problems() {
                return Err(self.invalid(format!("keystore.aws_kms.{key}"), reason));
            }
        }
        if let Some(gcp) = &ks.gcp_kms {
            if let Some((key, reason)) = gcp.problems() {
                return Err(self.invalid(format!("keystore.gcp_kms.{key}"), reason));
            }
            let others = ks.aws_kms.iter().flat_map(|c| c.keys.keys());
            let others = others.chain(ks.openbao.iter().flat_map(|c| c.keys.keys()));
            let others = others.chain(ks.azure_kv.iter().flat_map(|c| c.keys.keys()));
            if let Some(id) = others.into_iter().find(|id| gcp.keys.contains_key(*id)) {
                return Err(self.invalid(
                    "keystore.gcp_kms.keys",
                    format!("{id:?} is also a key of another cloud table"),
                ));
            }
        }
        if let Some(az) = &ks.azure_kv {
            if let Some((key, reason)) = az.problems() {
                return Err(self.invalid(format!("keystore.azure_kv.{key}"), reason));
            }
            let others = ks.aws_kms.iter().flat_map(|c| c.keys.keys());
            let others = others.chain(ks.openbao.iter().flat_map(|c| c.keys.keys()));
            if let Some(id) = others.into_iter().find(|id| az.keys.contains_key(*id)) {
                return Err(self.invalid(
                    "keystore.azure_kv.keys",
                    format!("{id:?} is also a key of another cloud table"),
                ));
            }
        }
        if let Some(bao) = &ks.openbao {
            if let Some((key, reason)) = bao.problems() {
                return Err(self.invalid(format!("keystore.openbao.{key}"), reason));
            }
            if let Some(aws) = &ks.aws_kms {
                if let Some(id) = bao.keys.keys().find(|id| aws.keys.contains_key(*id)) {
                    return Err(self.invalid(
                        "keystore.openbao.keys",
                        format!("{id:?} is also a keystore.aws_kms key"),
                    ));
                }
            }
        }
        match (ks.backend, &ks.pkcs11) {
            (BackendKind::Software, Some(_)) => Err(self.invalid(
                "keystore.pkcs11",
                "only used with backend = \"pkcs11\" (the software keystore ignores it)",
            )),
            (BackendKind::Pkcs11, None) => Err(self.invalid(
                "keystore.pkcs11",
                "backend = \"pkcs11\" needs a [keystore.pkcs11] table (library, token_label, pin)",
            )),
            (BackendKind::Pkcs11, Some(_)) if !ks.create_on_first_start.is_empty() => Err(self
                .invalid(
                    "keystore.create_on_first_start",
                    "not used with an HSM: create token keys with \
                     `keyguard keys generate --backend pkcs11`",
                )),
            (BackendKind::Pkcs11, Some(p)) => match p.problems() {
                Some((key, reason)) => Err(self.invalid(format!("keystore.pkcs11.{key}"), reason)),
                None => Ok(()),
            },
            (BackendKind::Software, None) => Ok(()),
        }
    }
}

impl Config {
    fn validate_validators(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        let mut new_flags = std::collections::HashMap::new();
        for (i, v) in self.validators.iter().enumerate() {
            let key = |k: &str| format!("validators[{i}].{k}");
            if !names.insert(v.display_name()) {
                return Err(self.invalid(key("name"), "duplicate validator name"));
            }
            if v.chain_id.is_empty() || v.chain_id.len() > 50 {
                return Err(self.invalid(key("chain_id"), "must be 1-50 characters"));
            }
            KeyId::new(v.key.as_str()).map_err(|e| self.invalid(key("key"), e.to_string()))?;
            v.parsed_addr().map_err(|e| self.invalid(key("addr"), e))?;
            // Sentries of one validator share a watermark, so they must agree on whether an
            // empty state may be signed from.
            let flag = new_flags
                .entry((v.chain_id.clone(), v.key.clone()))
                .or_insert(v.new_validator);
            if *flag != v.new_validator {
                return Err(self.invalid(
                    key("new_validator"),
                    "entries for one chain and key must agree on new_validator",
                ));
            }
            // Nothing else bounds a new validator's first vote: one at height 2^63-1 would
            // make every real vote a regression.
            if v.new_validator && v.start_height.is_none() && v.max_height.is_none() {
                return Err(self.invalid(
                    key("start_height"),
                    "new_validator = true needs start_height (or max_height) to bound the first vote",
                ));
            }
            if v.start_height.is_some_and(|h| h < 1) {
                return Err(self.invalid(key("start_height"), "must be at least 1"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

/// Tokens found in examples, tutorials and password lists: a client configured with one has no
/// credential at all.
const WELL_KNOWN_TOKENS: &[&str] = &[
    "",
    "secret",
    "password",
    "changeme",
    "change-me",
    "test",
    "token",
    "admin",
    "root",
    "default",
    "keyguard",
    "example",
    "dev",
    "devtoken",
    "letmein",
    "qwerty",
    "123456",
    "12345678",
    "1234",
    "pass",
    "passw0rd",
    "foobar",
    "foo",
    "bar",
    "hunter2",
    "s3cret",
    "mysecret",
    "supersecret",
    "bearer",
    "signer",
    "demo",
];

/// The well-known token whose SHA-256 is `token_sha256`, if any.
pub fn well_known_token(token_sha256: &str) -> Option<&'static str> {
    use sha2::{Digest, Sha256};
    let given = hex::decode(token_sha256).ok()?;
    WELL_KNOWN_TOKENS
        .iter()
        .find(|t| Sha256::digest(t.as_bytes()).as_slice() == given.as_slice())
        .copied()
}
