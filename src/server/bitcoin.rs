//! Bitcoin methods on the signing listener: `btc_signPsbt` and `btc_getDescriptors`.
//!
//! `btc_signPsbt` takes one object `{"psbt": base64, "key"?: seed id, "finalize"?: bool}` (or
//! the same as positional `[psbt, finalize?]`) and answers
//! `{"psbt", "complete", "txid", "hex"?, "signed_inputs"}`.

use jsonrpsee::server::RpcModule;
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde_json::{json, Value};

use super::evm::{caller, EvmContext};
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
                let caller = caller(&ext)?;
                let params = normalize(&params)?;
                let signed = ctx
                    .guard
                    .sign_bitcoin_psbt(caller, &params)
                    .await
                    .map_err(|e| rpc_error::from_guard(&e))?;
                Ok::<Value, ErrorObjectOwned>(json!({
                    "psbt": signed.psbt,
                    "complete": signed.complete,
                    "txid": signed.txid.to_string(),
                    "hex": signed.tx_hex,
                    "signed_inputs": signed.signed_inputs,
                }))
            },
        )
        .expect("unique method");
    module
        .register_method("btc_getDescriptors", |params, ctx, ext| {
            let caller = caller(ext)?;
            let params = normalize(&params)?;
            ctx.guard
                .bitcoin_descriptors(caller, &params)
                .map_err(|e| rpc_error::from_guard(&e))
        })
        .expect("unique method");
}
