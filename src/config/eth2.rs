//! `[eth2]`: the Ethereum consensus remote signer (Web3Signer's eth2 REST API), its network
//! and its duty policy (`docs/eth2.md`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use keyguard_eth2::{CustomNetwork, DutyKind, Network};
use serde::Deserialize;

use super::{AuthMode, TlsConfig};

/// The `[eth2]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eth2Config {
    /// Bind address of the REST listener.
    pub address: SocketAddr,
    /// `bearer` (default: `[[clients]]` tokens, or TLS client certificates) or `none`
    /// (loopback only).
    #[serde(default = "bearer")]
    pub auth: AuthMode,
    /// Key grants of an `auth = "none"` listener (`"*"`, `"eth2:*"`, or `0x` public keys).
    #[serde(default)]
    pub keys: Vec<String>,
    /// TLS with required client certificates, as on the other listeners.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `mainnet`, `holesky`, `hoodi`, `sepolia`, `gnosis` or `custom` (then `[eth2.custom]`).
    #[serde(default = "mainnet")]
    pub network: String,
    /// A custom network.
    #[serde(default)]
    pub custom: Option<CustomNetwork>,
    /// Where BLS keys live; only `software` has BLS12-381 keys.
    #[serde(default = "software")]
    pub backend: String,
    /// The duty policy.
    #[serde(default)]
    pub policy: Eth2Policy,
    /// EIP-3076 strategy of slashing protection: `complete` (default: the full history decides;
    /// the same message may be signed again) or `minimal` (also: every block and attestation
    /// above all signed before, no repeats).
    #[serde(default)]
    pub slashing_strategy: SlashingStrategy,
}

/// `[eth2] slashing_strategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlashingStrategy {
    /// Refuse what the complete history shows slashable; repeats of a signed message sign.
    #[default]
    Complete,
    /// The complete checks, and nothing at or below the highest signed slot / epochs.
    Minimal,
}

/// `[eth2.policy]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Eth2Policy {
    /// Slots a duty may be ahead of the wall clock (a far-future block or attestation would
    /// lock the key out until then).
    pub max_future_slots: u64,
    /// Epochs a duty may be behind the wall clock (0: no limit).
    pub max_past_epochs: u64,
    /// Per public key (`0x` hex), the validator index its blocks must name.
    pub proposer_index: BTreeMap<String, u64>,
    /// Fee recipients a builder registration may name (empty: any).
    pub fee_recipients: Vec<String>,
    /// Fee recipients a proposed block's execution payload may pay, proven by Nimbus's
    /// `proofs` (empty: not checked). Separate from `fee_recipients`: with MEV-boost the
    /// payload pays the builder's address, not the one the validator registered.
    pub block_fee_recipients: Vec<String>,
    /// Graffiti a proposed block may carry, proven by Nimbus's `proofs` (empty: not checked):
    /// text of at most 32 bytes (zero-padded, as clients encode `--graffiti`) or `0x` + 64 hex.
    /// Exact values only: the proofs carry no leaf, so a prefix cannot be checked.
    pub block_graffiti: Vec<String>,
    /// Refuse a block unless it proves every property the two lists above constrain.
    pub require_block_proofs: bool,
    /// Lowest gas limit a registration may ask for.
    pub min_gas_limit: Option<u64>,
    /// Highest gas limit a registration may ask for.
    pub max_gas_limit: Option<u64>,
    /// Duties switched off (`sync_committee_message`, ...).
    pub disabled_duties: Vec<String>,
    /// Signatures per minute per key, by duty (`attestation = 10`).
    pub rate_limits: BTreeMap<String, u32>,
    /// M-of-N approval that lets voluntary exits be signed (absent: exits are refused).
    pub exit_approval: Option<Eth2Approval>,
    /// M-of-N approval that lets deposit messages be signed (absent: deposits are refused).
    pub deposit_approval: Option<Eth2Approval>,
}

/// `[eth2.policy.exit_approval]` / `deposit_approval`: who must approve, and how long a
/// request stays open (approvers vote through the admin API, `docs/people.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eth2Approval {
    /// Distinct approvals needed.
    pub approvers: u32,
    /// Group the approvers belong to.
    pub group: String,
    /// Seconds the request stays open (default one day).
    #[serde(default = "day")]
    pub within_secs: u64,
}

fn day() -> u64 {
    86_400
}

impl Default for Eth2Policy {
    fn default() -> Self {
        Eth2Policy {
            max_future_slots: 64,
            max_past_epochs: 0,
            proposer_index: BTreeMap::new(),
            fee_recipients: Vec::new(),
            block_fee_recipients: Vec::new(),
            block_graffiti: Vec::new(),
            require_block_proofs: false,
            min_gas_limit: None,
            max_gas_limit: None,
            disabled_duties: Vec::new(),
            rate_limits: BTreeMap::new(),
            exit_approval: None,
            deposit_approval: None,
        }
    }
}

fn bearer() -> AuthMode {
    AuthMode::Bearer
}
fn mainnet() -> String {
    "mainnet".into()
}
fn software() -> String {
    "software".into()
}

impl Eth2Config {
    /// The network this signer signs for.
    pub fn network(&self) -> Result<Network, String> {
        match (self.network.as_str(), &self.custom) {
            ("custom", Some(c)) => Network::custom(c),
            ("custom", None) => Err("network = \"custom\" needs an [eth2.custom] table".into()),
            (name, None) => Network::builtin(name).ok_or_else(|| {
                format!(
                    "unknown network {name:?} (mainnet, holesky, hoodi, sepolia, gnosis, custom)"
                )
            }),
            (_, Some(_)) => Err("[eth2.custom] is only read with network = \"custom\"".into()),
        }
    }

    /// Every problem as (field, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Err(e) = self.network() {
            out.push(("eth2.network".into(), e));
        }
        if self.backend != "software" {
            out.push((
                "eth2.backend".into(),
                format!(
                    "{}: {:?} has no BLS12-381 keys (PKCS#11 tokens and cloud KMS sign only \
                     secp256k1/ed25519); BLS keys live in the software keystore",
                    keyguard_chain::rules::eth2::KEY_BACKEND,
                    self.backend
                ),
            ));
        }
        if self.auth == AuthMode::None && !self.address.ip().is_loopback() {
            out.push((
                "eth2.auth".into(),
                "auth = \"none\" only on a loopback address".into(),
            ));
        }
        for d in self
            .policy
            .disabled_duties
            .iter()
            .chain(self.policy.rate_limits.keys())
        {
            if DutyKind::parse(d).is_none() {
                out.push(("eth2.policy".into(), format!("unknown duty {d:?}")));
            }
        }
        for (name, a) in [
            ("exit_approval", &self.policy.exit_approval),
            ("deposit_approval", &self.policy.deposit_approval),
        ] {
            if let Some(a) = a {
                if a.approvers == 0 || a.group.trim().is_empty() || a.within_secs == 0 {
                    out.push((
                        format!("eth2.policy.{name}"),
                        "needs approvers > 0, a group and within_secs > 0".into(),
                    ));
                }
            }
        }
        for pk in self.policy.proposer_index.keys() {
            if keyguard_eth2::parse_hex_fixed::<48>(pk).is_none() {
                out.push((
                    "eth2.policy.proposer_index".into(),
                    format!("{pk:?} is not a 0x public key"),
                ));
            }
        }
        for (name, list) in [
            ("fee_recipients", &self.policy.fee_recipients),
            ("block_fee_recipients", &self.policy.block_fee_recipients),
        ] {
            for f in list {
                if keyguard_eth2::parse_hex_fixed::<20>(&f.to_ascii_lowercase()).is_none() {
                    out.push((
                        format!("eth2.policy.{name}"),
                        format!("{f:?} is not a 0x address"),
                    ));
                }
            }
        }
        for g in &self.policy.block_graffiti {
            if let Err(e) = graffiti_bytes(g) {
                out.push(("eth2.policy.block_graffiti".into(), e));
            }
        }
        if self.policy.require_block_proofs
            && self.policy.block_fee_recipients.is_empty()
            && self.policy.block_graffiti.is_empty()
        {
            out.push((
                "eth2.policy.require_block_proofs".into(),
                "needs block_fee_recipients or block_graffiti: the proofs carry no value, \
                 so there is nothing to check them against"
                    .into(),
            ));
        }
        out
    }
}

/// A configured graffiti as the 32 bytes a block carries: `0x` + 64 hex as is, otherwise the
/// text's UTF-8 bytes right-padded with zeros.
pub fn graffiti_bytes(g: &str) -> Result<[u8; 32], String> {
    if g.starts_with("0x") && g.len() == 66 {
        return keyguard_eth2::parse_hex_fixed::<32>(&g.to_ascii_lowercase())
            .ok_or_else(|| format!("{g:?} is not 0x + 64 hex digits"));
    }
    if g.len() > 32 {
        return Err(format!("{g:?} is longer than 32 bytes"));
    }
    let mut out = [0u8; 32];
    out[..g.len()].copy_from_slice(g.as_bytes());
    Ok(out)
}
