//! The EVM listener's methods beyond `eth_signTransaction`: typed data, messages, Clef's
//! `account_*` namespace, and (with an upstream node) `eth_sendTransaction` and proxied reads.

use jsonrpsee::server::RpcModule;
use jsonrpsee::types::{ErrorObjectOwned, Params};
use keyguard_chain::Rejection;
use serde_json::{json, Value};

use super::evm::{caller, signing_caller, EvmContext};
use super::rpc_error;
use crate::guard::{
    decode_clef_transaction, plain_decoder, DigestParams, DigestRequest, GuardError, TxDecoder,
};

fn params_value(params: &Params<'_>) -> Result<Value, ErrorObjectOwned> {
    match params.as_str() {
        Some(raw) => serde_json::from_str(raw).map_err(|e| {
            rpc_error::from_guard(&Rejection::invalid("params", e.to_string()).into())
        }),
        None => Ok(Value::Array(Vec::new())),
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> ErrorObjectOwned {
    rpc_error::from_guard(&Rejection::invalid(field, reason).into())
}

fn hex_sig(sig: [u8; 65]) -> Value {
    Value::String(format!("0x{}", hex::encode(sig)))
}

type Module = RpcModule<EvmContext>;

fn digest_method(module: &mut Module, name: &'static str, decode: fn(&Value) -> DigestRequest) {
    module
        .register_async_method(name, move |params: Params<'static>, ctx, ext| async move {
            let chain = format!("eip155:{}", ctx.chain_id);
            let caller = signing_caller(&ext, &ctx, name, &chain).await?;
            // Parsed and decoded inside the guard, after the rate limits, under the decode gate.
            let p = match params.as_str() {
                Some(raw) => DigestParams::Raw(raw.to_owned()),
                None => DigestParams::Parsed(Value::Array(Vec::new())),
            };
            let sig = ctx
                .guard
                .sign_evm_digest_params(&caller, ctx.chain_id, name, p, decode)
                .await
                .map_err(|e| rpc_error::from_guard(&e))?;
            Ok::<Value, ErrorObjectOwned>(hex_sig(sig))
        })
        .expect("unique method");
}

fn clef_sign_data(p: &Value) -> DigestRequest {
    let parts = p.as_array().map(Vec::as_slice).unwrap_or_default();
    let [Value::String(content_type), addr, data] = parts else {
        return DigestRequest::Message(Err(Rejection::invalid(
            "params",
            "expected [contentType, address, data]",
        )));
    };
    match content_type.as_str() {
        "text/plain" => {
            DigestRequest::Message(keyguard_evm::decode_personal_sign(&json!([data, addr])))
        }
        "data/typed" => DigestRequest::Typed(
            keyguard_evm::decode_typed_data_params(&json!([addr, data])).map(Box::new),
        ),
        other => DigestRequest::Message(Err(Rejection::invalid(
            "contentType",
            format!("{other:?} is not signed by keyguard (text/plain or data/typed)"),
        ))),
    }
}

/// `eth_sendTransaction`'s decoder: fee caps of the named account, fields filled by the
/// upstream node, then the strict transaction decoder.
fn send_decoder(
    upstream: std::sync::Arc<crate::outbound::upstream::Upstream>,
    guard: std::sync::Arc<crate::guard::Guard>,
    chain_id: u64,
) -> TxDecoder {
    Box::new(move |p: Value| {
        Box::pin(async move {
            let mut args = match p.as_array().map(Vec::as_slice) {
                Some([Value::Object(a)]) => a.clone(),
                _ => return Err(Rejection::invalid("params", "expected [TransactionArgs]").into()),
            };
            let from = crate::outbound::upstream::from_of(&args)
                .ok_or_else(|| Rejection::invalid("from", "missing or not an address"))?;
            let caps = guard.evm_fee_caps(from).ok_or_else(|| {
                Rejection::invalid("from", format!("{from} is not an account of this signer"))
            })?;
            upstream
                .fill(&mut args, chain_id, caps)
                .await
                .map_err(|e| GuardError::Backend(e.to_string()))?;
            Ok(keyguard_evm::decode_transaction_args(&Value::Object(args))?)
        })
    })
}

/// Registers typed data, messages and the Clef namespace.
pub(super) fn register_signing(module: &mut Module) {
    digest_method(module, "eth_signTypedData_v4", |p| {
        DigestRequest::Typed(keyguard_evm::decode_typed_data_params(p).map(Box::new))
    });
    digest_method(module, "eth_signTypedData", |p| {
        DigestRequest::Typed(keyguard_evm::decode_typed_data_params(p).map(Box::new))
    });
    digest_method(module, "account_signTypedData", |p| {
        DigestRequest::Typed(keyguard_evm::decode_typed_data_params(p).map(Box::new))
    });
    digest_method(module, "eth_sign", |p| {
        DigestRequest::Message(keyguard_evm::decode_eth_sign(p))
    });
    digest_method(module, "personal_sign", |p| {
        DigestRequest::Message(keyguard_evm::decode_personal_sign(p))
    });
    digest_method(module, "account_signData", clef_sign_data);
    module
        .register_method("account_version", |_, _, _| "6.1.0")
        .expect("unique method");
    module
        .register_method("account_list", |_, ctx, ext| {
            caller(ext).map(|c| ctx.guard.evm_accounts(&c))
        })
        .expect("unique method");
    module
        .register_async_method(
            "account_signTransaction",
            |params: Params<'static>, ctx, ext| async move {
                let chain = format!("eip155:{}", ctx.chain_id);
                let caller = signing_caller(&ext, &ctx, "account_signTransaction", &chain).await?;
                let p = params_value(&params)?;
                // A malformed envelope is refused inside the guard: limited and audited.
                let signed = ctx
                    .guard
                    .sign_evm_tx(
                        &caller,
                        ctx.chain_id,
                        "account_signTransaction",
                        &p,
                        plain_decoder(decode_clef_transaction),
                    )
                    .await
                    .map_err(|e| rpc_error::from_guard(&e))?;
                Ok::<Value, ErrorObjectOwned>(signed.geth_json())
            },
        )
        .expect("unique method");
}

/// Registers `eth_sendTransaction` and the proxied read-only methods.
pub(super) fn register_upstream(module: &mut Module, proxied: &[String]) {
    module
        .register_async_method(
            "eth_sendTransaction",
            |params: Params<'static>, ctx, ext| async move {
                let chain = format!("eip155:{}", ctx.chain_id);
                let caller = signing_caller(&ext, &ctx, "eth_sendTransaction", &chain).await?;
                let Some(upstream) = ctx.upstream.clone() else {
                    return Err(invalid("method", "no upstream node configured"));
                };
                let p = params_value(&params)?;
                // The upstream fill runs inside the guard, after the rate limits.
                let decode = send_decoder(upstream.clone(), ctx.guard.clone(), ctx.chain_id);
                let signed = ctx
                    .guard
                    .sign_evm_tx(&caller, ctx.chain_id, "eth_sendTransaction", &p, decode)
                    .await
                    .map_err(|e| rpc_error::from_guard(&e))?;
                upstream
                    .send_raw(&signed.raw.to_string())
                    .await
                    .map_err(|e| ErrorObjectOwned::owned(-32000, e.to_string(), None::<()>))?;
                Ok::<Value, ErrorObjectOwned>(Value::String(signed.hash.to_string()))
            },
        )
        .expect("unique method");
    for m in proxied {
        let name = intern(m);
        let registered = module.register_async_method(
            name,
            move |params: Params<'static>, ctx, ext| async move {
                caller(&ext)?;
                let Some(upstream) = ctx.upstream.clone() else {
                    return Err(invalid("method", "no upstream node configured"));
                };
                let list = match params_value(&params)? {
                    Value::Array(l) => l,
                    _ => return Err(invalid("params", "positional params only")),
                };
                upstream
                    .call(name, list)
                    .await
                    .map_err(|e| ErrorObjectOwned::owned(-32000, e.to_string(), None::<()>))
            },
        );
        if let Err(e) = registered {
            tracing::warn!(method = name, error = %e, "proxied method not registered");
        }
    }
}

/// jsonrpsee registers methods under `&'static str`. Each distinct proxied method name is
/// leaked once for the life of the process (a set bounded by the config), not once per
/// listener start or reload.
fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}
