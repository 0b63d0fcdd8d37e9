//! Where the outbound node clients (`crate::outbound`) connect: `[bitcoin_node]` and a
//! listener's `upstream`. Defined here, below every client, so that validating a config never
//! needs the code that talks to the nodes.

use std::path::PathBuf;

use serde::Deserialize;

/// `[bitcoin_node]`: where the node is and how to log in (cookie file or user + password env).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitcoinNodeConfig {
    /// `http://127.0.0.1:8332` (mainnet), `:18443` (regtest)...
    pub url: String,
    /// Core's `.cookie` file.
    pub cookie_file: Option<PathBuf>,
    /// RPC user (with `password_env`).
    pub user: Option<String>,
    /// Environment variable holding the RPC password.
    pub password_env: Option<String>,
}

/// The node behind a listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// JSON-RPC URL of the node.
    pub url: String,
    /// Read-only methods passed through to the node (`eth_getBalance`, `net_version`, ...).
    #[serde(default)]
    pub proxy_methods: Vec<String>,
}

/// Methods that must never be proxied: they would sign with the node's own keys or move
/// keyguard's decisions elsewhere.
pub fn proxy_allowed(method: &str) -> Result<(), String> {
    let read_prefix = ["eth_", "net_", "web3_"]
        .iter()
        .any(|p| method.starts_with(p));
    let signing = method.starts_with("eth_sign")
        || method.starts_with("eth_send")
        || matches!(method, "eth_accounts" | "eth_chainId" | "eth_coinbase");
    if read_prefix && !signing {
        Ok(())
    } else {
        Err(format!(
            "{method:?} cannot be proxied (only read-only eth_*, net_*, web3_* methods)"
        ))
    }
}
