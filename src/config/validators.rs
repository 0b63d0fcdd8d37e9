//! `[[validators]]`: CometBFT nodes keyguard dials as their remote signer.

use std::path::PathBuf;
use std::str::FromStr;

use keyguard_cometbft::{BlockLimits, WireVersion};
use serde::Deserialize;

/// One validator node (a sentry) to serve. Several entries may share a chain and key; they
/// then share one watermark.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorConfig {
    /// Name used in logs and the audit log (default: `<chain_id>@<addr>`).
    #[serde(default)]
    pub name: Option<String>,
    /// CometBFT chain id; requests for any other chain are refused.
    pub chain_id: String,
    /// The consensus key (ed25519 or secp256k1) in the key store.
    pub key: String,
    /// `tcp://<node_id>@host:port` (SecretConnection, node id pinned) or `unix:///path`.
    pub addr: String,
    /// Privval wire version: `v0.34`, `v0.37`, `v0.38`, `v1` or `auto`.
    #[serde(default = "default_protocol")]
    pub protocol: WireVersion,
    /// Allow signing from an empty state (a validator that has never signed on this chain).
    /// Without it keyguard refuses a chain with no imported state: a validator moved from a file
    /// signer without its state file could otherwise re-sign heights it already signed.
    #[serde(default)]
    pub new_validator: bool,
    /// Refuse heights more than this above the last signed one.
    #[serde(default)]
    pub max_height_jump: Option<u64>,
    /// Refuse timestamps further than this from the local clock (milliseconds).
    #[serde(default)]
    pub max_timestamp_drift_ms: Option<u64>,
    /// Stop signing above this height (a planned upgrade height).
    #[serde(default)]
    pub max_height: Option<i64>,
    /// With no signing state (`new_validator`): the chain height the validator starts at. The
    /// first signature may be at most one burst (`max_height_jump`, default 100,000) above it.
    #[serde(default)]
    pub start_height: Option<i64>,
    /// Shortest time one height can take, in milliseconds (default 200; 0 disables): heights
    /// may advance at most one per this much local clock, plus one `max_height_jump` burst.
    #[serde(default)]
    pub min_block_time_ms: Option<u64>,
    /// Longest pause between reconnection attempts (milliseconds).
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_protocol() -> WireVersion {
    WireVersion::Auto
}

fn default_retry_max_ms() -> u64 {
    5_000
}

/// Where a validator node listens for its signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrivvalAddr {
    /// TCP with SecretConnection; the node's id (hex of 20 bytes) is pinned.
    Tcp {
        /// Expected node id.
        node_id: [u8; 20],
        /// `host:port`.
        host_port: String,
    },
    /// A Unix socket (plain frames).
    Unix(PathBuf),
}

impl FromStr for PrivvalAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err("unix:// needs a path".into());
            }
            return Ok(PrivvalAddr::Unix(PathBuf::from(path)));
        }
        let Some(rest) = s.strip_prefix("tcp://") else {
            return Err("expected tcp://<node_id>@host:port or unix:///path".into());
        };
        // The node id is required: without it anyone who can answer on the address could
        // pose as the validator and collect signatures.
        let Some((id, host_port)) = rest.split_once('@') else {
            return Err("tcp:// needs the node id: tcp://<node_id>@host:port".into());
        };
        let node_id: [u8; 20] = hex::decode(id)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("node id must be 40 hex digits")?;
        if host_port
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err("expected host:port after the node id".into());
        }
        Ok(PrivvalAddr::Tcp {
            node_id,
            host_port: host_port.to_owned(),
        })
    }
}

impl ValidatorConfig {
    /// The configured name or `<chain_id>@<addr>`.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}@{}", self.chain_id, self.addr))
    }

    /// The block-field limits.
    pub fn limits(&self) -> BlockLimits {
        BlockLimits {
            max_height_jump: self.max_height_jump,
            max_timestamp_drift_ms: self.max_timestamp_drift_ms,
            max_height: self.max_height,
            start_height: self.start_height,
            min_block_time_ms: self.min_block_time_ms,
        }
    }

    /// The parsed address (validated at load).
    pub fn parsed_addr(&self) -> Result<PrivvalAddr, String> {
        self.addr.parse()
    }
}
