//! Bitcoin methods on the signing listener: `btc_signPsbt`, `btc_signSignetBlock` and
//! `btc_getDescriptors`.
//!
//! `btc_signSignetBlock` takes `{"block": hex, "key"?, "parent_header"?: hex, "mtp"?,
//! "fees_sat"?}` (or `[block]`) and answers `{"height", "commitment", "solution", "block",
//! "merkle_root"}` (`docs/bitcoin-signet.md`); the miner's block PSBT on `btc_signPsbt` is
//! answered finalized, as `walletprocesspsbt` does.
//!
//! `btc_signPsbt` takes one object `{"psbt": base64, "key"?: seed id, "finalize"?: bool}` (or
//! the same as positional `[psbt, finalize?]`) and answers
//! `{"psbt", "complete", "txid", "hex"?, "signed_inputs"}`. With `"broadcast": true` (needs
//! `finalize` and a `[bitcoin_node]`) the audited transaction is relayed and the answer gains
//! `"broadcast": {"txid"} | {"error"}`.

use jsonrpsee::server::RpcModule;
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde_json::{json, Value};

use super::evm::{caller, signing_caller, EvmContext};
use super::rpc_error;

/// Positional `[psbt, finalize]` or `[{...}]` -> the object form.
fn normalize(params: &Params<'_>) -> Result<Value, ErrorObjectOwned> {
    let value: Value = match params.as_str() {
        Some(raw) => serde_json::from_str(raw).map_err(|e| {
            rpc_error::from_guard(
                &keyguard_chain::Rejection::invalid("params", e.to_string()).into(),
            )
        })?,
        None => Value::Null,
    };
    Ok(match value {
        Value::Array(items) => match items.as_slice() {
            [obj @ Value::Object(_)] => obj.clone(),
            [Value::String(p)] => json!({ "psbt": p }),
            [Value::String(p), f] => json!({ "psbt": p, "finalize": f }),
            [] => json!({}),
            _ => Value::Array(items),
        },
        Value::Null => json!({}),
        other => other,
    })
}

pub(super) fn register(module: &mut RpcModule<EvmContext>) {
    module
        .register_async_method(
            "btc_signPsbt",
            |params: Params<'static>, ctx, ext| async move {
                let caller = signing_caller(&ext, &ctx, "btc_signPsbt", "bitcoin").await?;
                let params = normalize(&params)?;
                let signed = ctx
                    .guard
                    .sign_bitcoin_psbt(&caller, &params)
                    .await
                    .map_err(|e| rpc_error::from_guard(&e))?;
                let mut out = json!({
                    "psbt": signed.psbt,
                    "complete": signed.complete,
                    "txid": signed.txid.to_string(),
                    "hex": signed.tx_hex,
                    "signed_inputs": signed.signed_inputs,
                });
                // Only after the signature is audited; a relay failure does not undo the signing,
                // so it is reported next to the signed result rather than as an error.
                if params.get("broadcast") == Some(&Value::Bool(true)) {
                    if let Some(hex) = &signed.tx_hex {
                        out["broadcast"] = match ctx.guard.bitcoin_broadcast(hex).await {
                            Ok(txid) => json!({ "txid": txid }),
                            Err(e) => json!({ "error": e.to_string() }),
                        };
                    }
                }
                Ok::<Value, ErrorObjectOwned>(out)
            },
        )
        .expect("unique method");
    module
        .register_async_method(
            "btc_signSignetBlock",
            |params: Params<'static>, ctx, ext| async move {
                let caller =
                    signing_caller(&ext, &ctx, "btc_signSignetBlock", "bitcoin:signet").await?;
                let params = match normalize(&params)? {
                    Value::Object(mut o) => {
                        // Positional `[block]` arrives as `psbt` from `normalize`.
                        if let Some(b) = o.remove("psbt").filter(|_| !o.contains_key("block")) {
                            o.insert("block".into(), b);
                        }
                        Value::Object(o)
                    }
                    other => other,
                };
                let signed = ctx
                    .guard
                    .sign_signet_block(&caller, &params)
                    .await
                    .map_err(|e| rpc_error::from_guard(&e))?;
                Ok::<Value, ErrorObjectOwned>(signed.to_json())
            },
        )
        .expect("unique method");
    module
        .register_method("btc_getDescriptors", |params, ctx, ext| {
            let caller = caller(ext)?;
            let params = normalize(&params)?;
            ctx.guard
                .bitcoin_descriptors(&caller, &params)
                .map_err(|e| rpc_error::from_guard(&e))
        })
        .expect("unique method");
}
