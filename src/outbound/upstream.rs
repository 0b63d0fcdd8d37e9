//! The upstream Ethereum node of a listener: fills what `eth_sendTransaction` left out, relays
//! signed transactions, and proxies the read-only methods the config lists.
//!
//! The node is trusted for *liveness* only, never for safety: whatever it suggests (nonce, gas,
//! fees) goes through the same policy as a client-supplied value, and fees it suggests are
//! capped by the policy before signing, so a compromised node cannot burn the balance in fees.

use alloy_primitives::{Address, U256};
use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::ArrayParams;
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use serde_json::{json, Map, Value};

/// Why the node could not help.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Transport or JSON-RPC error from the node.
    #[error("upstream node: {0}")]
    Node(String),
    /// The node answered something keyguard cannot read.
    #[error("upstream node returned an unreadable {what}: {value}")]
    Unreadable {
        /// Which call.
        what: &'static str,
        /// What it returned.
        value: String,
    },
}

/// A JSON-RPC client for one node.
pub struct Upstream {
    client: HttpClient,
}

fn qty(what: &'static str, v: &Value) -> Result<U256, UpstreamError> {
    v.as_str()
        .and_then(|s| s.strip_prefix("0x"))
        .and_then(|h| U256::from_str_radix(h, 16).ok())
        .ok_or_else(|| UpstreamError::Unreadable {
            what,
            value: v.to_string(),
        })
}

fn hex(n: U256) -> Value {
    Value::String(format!("{n:#x}"))
}

impl Upstream {
    /// A client for `url` (http or https).
    pub fn new(url: &str) -> Result<Upstream, String> {
        let client = HttpClientBuilder::default()
            .request_timeout(std::time::Duration::from_secs(10))
            .build(url)
            .map_err(|e| format!("upstream {url}: {e}"))?;
        Ok(Upstream { client })
    }

    /// Calls `method` with positional `params`.
    pub async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, UpstreamError> {
        let mut p = ArrayParams::new();
        for v in params {
            p.insert(v)
                .map_err(|e| UpstreamError::Node(e.to_string()))?;
        }
        self.client
            .request::<Value, _>(method, p)
            .await
            .map_err(|e| UpstreamError::Node(e.to_string()))
    }

    /// Fills `chainId`, `nonce`, `gas` and fees that `args` leaves out. `caps` are the policy's
    /// `(max_fee_per_gas, max_priority_fee_per_gas)`; suggested fees are clamped to them.
    pub async fn fill(
        &self,
        args: &mut Map<String, Value>,
        chain_id: u64,
        caps: (U256, U256),
    ) -> Result<(), UpstreamError> {
        let absent = |a: &Map<String, Value>, k: &str| a.get(k).is_none_or(Value::is_null);
        if absent(args, "chainId") {
            args.insert("chainId".into(), hex(U256::from(chain_id)));
        }
        let from = args.get("from").cloned().unwrap_or(Value::Null);
        if absent(args, "nonce") {
            let n = self
                .call(
                    "eth_getTransactionCount",
                    vec![from.clone(), json!("pending")],
                )
                .await?;
            args.insert("nonce".into(), hex(qty("nonce", &n)?));
        }
        let legacy = !absent(args, "gasPrice");
        if !legacy && absent(args, "maxFeePerGas") {
            let tip = match args.get("maxPriorityFeePerGas").filter(|v| !v.is_null()) {
                Some(t) => qty("maxPriorityFeePerGas", t)?,
                None => qty(
                    "eth_maxPriorityFeePerGas",
                    &self.call("eth_maxPriorityFeePerGas", vec![]).await?,
                )?,
            };
            let block = self
                .call("eth_getBlockByNumber", vec![json!("latest"), json!(false)])
                .await?;
            let base = qty(
                "baseFeePerGas",
                block.get("baseFeePerGas").unwrap_or(&Value::Null),
            )?;
            let tip = tip.min(caps.1);
            let max_fee = (base.saturating_mul(U256::from(2)).saturating_add(tip)).min(caps.0);
            args.insert("maxFeePerGas".into(), hex(max_fee));
            args.insert("maxPriorityFeePerGas".into(), hex(tip.min(max_fee)));
        }
        if absent(args, "gas") {
            let mut probe = args.clone();
            for k in [
                "gas",
                "gasPrice",
                "maxFeePerGas",
                "maxPriorityFeePerGas",
                "nonce",
            ] {
                probe.remove(k);
            }
            let g = self
                .call("eth_estimateGas", vec![Value::Object(probe)])
                .await?;
            args.insert("gas".into(), hex(qty("gas", &g)?));
        }
        Ok(())
    }

    /// Sends signed bytes; returns the transaction hash the node reports.
    pub async fn send_raw(&self, raw: &str) -> Result<Value, UpstreamError> {
        self.call("eth_sendRawTransaction", vec![json!(raw)]).await
    }
}

/// The `from` of a request object.
pub fn from_of(args: &Map<String, Value>) -> Option<Address> {
    args.get("from")?.as_str()?.parse().ok()
}
