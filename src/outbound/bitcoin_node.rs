//! A thin async JSON-RPC client for an upstream Bitcoin Core node, over the `corepc-types`
//! response types. `bitcoincore-rpc` is largely unmaintained and `corepc-client` is not yet
//! meant for production by its maintainers; this needs two calls (`gettxout`,
//! `sendrawtransaction`), so jsonrpsee's HTTP client with Core's basic auth is enough.

use jsonrpsee::core::client::ClientT;
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use keyguard_bitcoin::bitcoin::{Amount, OutPoint, ScriptBuf, TxOut};
use serde_json::{json, Value};

pub use crate::config::BitcoinNodeConfig;

/// Why the node could not answer.
#[derive(Debug, thiserror::Error)]
#[error("bitcoin node: {0}")]
pub struct NodeError(pub String);

/// One node.
pub struct BitcoinNode {
    client: HttpClient,
}

impl BitcoinNode {
    /// Builds the client; credentials are read once here.
    pub fn new(config: &BitcoinNodeConfig) -> Result<Self, NodeError> {
        let credentials = match (&config.cookie_file, &config.user, &config.password_env) {
            (Some(path), _, _) => std::fs::read_to_string(path)
                .map_err(|e| NodeError(format!("{}: {e}", path.display())))?
                .trim()
                .to_string(),
            (None, Some(user), Some(env)) => {
                let password =
                    std::env::var(env).map_err(|_| NodeError(format!("{env} is not set")))?;
                format!("{user}:{password}")
            }
            _ => String::new(),
        };
        let mut headers = http::HeaderMap::new();
        if !credentials.is_empty() {
            use keyguard_bitcoin::bitcoin::base64::prelude::{Engine as _, BASE64_STANDARD};
            let value = format!("Basic {}", BASE64_STANDARD.encode(credentials));
            let value = value
                .parse()
                .map_err(|_| NodeError("credentials are not a valid header".into()))?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let client = HttpClientBuilder::default()
            .set_headers(headers)
            .request_timeout(std::time::Duration::from_secs(10))
            .build(&config.url)
            .map_err(|e| NodeError(format!("{}: {e}", config.url)))?;
        Ok(BitcoinNode { client })
    }

    /// `gettxout txid vout true`: the unspent output (mempool included), or `None`.
    pub async fn utxo(&self, outpoint: &OutPoint) -> Result<Option<TxOut>, NodeError> {
        let answer: Value = self
            .client
            .request(
                "gettxout",
                jsonrpsee::rpc_params![outpoint.txid.to_string(), outpoint.vout, true],
            )
            .await
            .map_err(|e| NodeError(e.to_string()))?;
        if answer.is_null() {
            return Ok(None);
        }
        let out: corepc_types::v17::GetTxOut =
            serde_json::from_value(answer).map_err(|e| NodeError(format!("gettxout: {e}")))?;
        let value =
            Amount::from_btc(out.value).map_err(|e| NodeError(format!("gettxout value: {e}")))?;
        let script = ScriptBuf::from_hex(&out.script_pubkey.hex)
            .map_err(|e| NodeError(format!("gettxout script: {e}")))?;
        Ok(Some(TxOut {
            value,
            script_pubkey: script,
        }))
    }

    /// `getblockcount`: the height of the node's best chain (locktimes are judged by it).
    pub async fn tip(&self) -> Result<u32, NodeError> {
        let answer: Value = self
            .client
            .request("getblockcount", jsonrpsee::rpc_params![])
            .await
            .map_err(|e| NodeError(e.to_string()))?;
        answer
            .as_u64()
            .and_then(|h| u32::try_from(h).ok())
            .ok_or_else(|| NodeError(format!("getblockcount returned {answer}")))
    }

    /// `sendrawtransaction hex`: the txid the node accepted.
    pub async fn broadcast(&self, hex: &str) -> Result<String, NodeError> {
        let answer: Value = self
            .client
            .request("sendrawtransaction", jsonrpsee::rpc_params![hex])
            .await
            .map_err(|e| NodeError(e.to_string()))?;
        let txid: corepc_types::v17::SendRawTransaction = serde_json::from_value(answer.clone())
            .map_err(|_| NodeError(format!("sendrawtransaction returned {}", json!(answer))))?;
        Ok(txid.0)
    }
}
