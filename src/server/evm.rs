//! The Ethereum JSON-RPC listener (HTTP and WebSocket on one port), as op-batcher's signer
//! client, web3.py, viem and geth's external-signer callers expect it.

use std::net::SocketAddr;
use std::sync::Arc;

use jsonrpsee::server::{BatchRequestConfig, Extensions, RpcModule, ServerConfig, ServerHandle};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde_json::Value;

use super::connections::{Listener, Slots};
use super::http_edge::Credential;
use super::rpc_error;
use super::unauth::UnauthGate;
use crate::access::clients::ClientBook;
use crate::access::{AuthSwitch, Authentication, Authenticator, Caller};
use crate::config::{Config, ListenerConfig, ResponseShape};
use crate::guard::Guard;

/// A running EVM listener.
pub struct EvmListener {
    /// Stops the server when told to.
    pub handle: ServerHandle,
    /// The bound address (the configured port may have been 0).
    pub local_addr: SocketAddr,
    /// Who may call; replaced on reload.
    pub auth: Arc<AuthSwitch>,
}

pub(super) struct EvmContext {
    pub(super) guard: Arc<Guard>,
    pub(super) chain_id: u64,
    pub(super) upstream: Option<Arc<crate::outbound::upstream::Upstream>>,
    pub(super) unauth: Arc<UnauthGate>,
}

/// The caller of this call, resolved now from the connection's credential (never cached at
/// the WebSocket upgrade: revocation and scope changes apply to the next message).
fn resolve(ext: &Extensions) -> Authentication {
    match ext.get::<Credential>() {
        Some(credential) => credential.resolve(),
        None => Authentication::Refused("no credential"),
    }
}

pub(super) fn caller(ext: &Extensions) -> Result<Caller, ErrorObjectOwned> {
    match resolve(ext) {
        Authentication::Caller(c) => Ok(c),
        Authentication::Refused(reason) => Err(rpc_error::unauthorized(reason)),
    }
}

/// The caller of a signing method. A refused credential is audited before the `-32005` goes
/// back: a signing attempt with a missing, unknown or revoked token is evidence an operator
/// must be able to find, not only a log line. Beyond the unauthenticated budget of the peer
/// (see `unauth`), attempts are counted into one summary row and answered `-32003`.
pub(super) async fn signing_caller(
    ext: &Extensions,
    ctx: &EvmContext,
    method: &str,
    chain: &str,
) -> Result<Caller, ErrorObjectOwned> {
    match resolve(ext) {
        Authentication::Caller(c) => Ok(c),
        Authentication::Refused(reason) => {
            let peer = ext.get::<Credential>().and_then(|c| c.peer).map(|p| p.ip());
            if !ctx.unauth.admit(peer) {
                return Err(rpc_error::from_guard(
                    &crate::guard::GuardError::RateLimited {
                        rule: super::unauth::RULE,
                        retry_after_ms: 1000 / u64::from(super::unauth::PER_SECOND),
                    },
                ));
            }
            ctx.guard.audit_unauthenticated(method, chain, reason).await;
            Err(rpc_error::unauthorized(reason))
        }
    }
}

fn build_module(ctx: EvmContext, proxied: &[String]) -> RpcModule<EvmContext> {
    let has_upstream = ctx.upstream.is_some();
    let mut module = RpcModule::new(ctx);
    super::evm_methods::register_signing(&mut module);
    if has_upstream {
        super::evm_methods::register_upstream(&mut module, proxied);
    }
    module
        .register_method("health_status", |_, _, _| "OK")
        .expect("unique method");
    module
        .register_method("eth_chainId", |_, ctx, _| format!("{:#x}", ctx.chain_id))
        .expect("unique method");
    module
        .register_method("eth_accounts", |_, ctx, ext| {
            caller(ext).map(|c| ctx.guard.evm_accounts(&c))
        })
        .expect("unique method");
    module
        .register_async_method(
            "eth_signTransaction",
            |params: Params<'static>, ctx, ext| async move {
                let chain = format!("eip155:{}", ctx.chain_id);
                let caller = signing_caller(&ext, &ctx, "eth_signTransaction", &chain).await?;
                let params: Value = match params.as_str() {
                    Some(raw) => serde_json::from_str(raw).map_err(|e| {
                        rpc_error::from_guard(
                            &keyguard_chain::Rejection::invalid("params", e.to_string()).into(),
                        )
                    })?,
                    None => Value::Null,
                };
                let signed = ctx
                    .guard
                    .sign_evm_transaction(&caller, ctx.chain_id, &params)
                    .await
                    .map_err(|e| rpc_error::from_guard(&e))?;
                Ok::<Value, ErrorObjectOwned>(match caller.response {
                    ResponseShape::Raw => Value::String(signed.raw.to_string()),
                    ResponseShape::Geth => signed.geth_json(),
                })
            },
        )
        .expect("unique method");
    super::bitcoin::register(&mut module);
    module
}

/// Binds and starts one EVM JSON-RPC listener.
pub async fn start(
    config: &Config,
    listener: &ListenerConfig,
    guard: Arc<Guard>,
    clients: Arc<ClientBook>,
) -> std::io::Result<EvmListener> {
    let auth = Arc::new(AuthSwitch::new(
        Authenticator::new(config, listener).with_managed(clients),
    ));
    let server_config = ServerConfig::builder()
        .max_request_body_size(listener.max_body_bytes)
        .max_connections(listener.connections.max)
        .set_batch_request_config(BatchRequestConfig::Limit(100))
        .build();
    let upstream = match &listener.upstream {
        Some(u) => Some(Arc::new(
            crate::outbound::upstream::Upstream::new(&u.url).map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    let proxied = listener
        .upstream
        .as_ref()
        .map(|u| u.proxy_methods.clone())
        .unwrap_or_default();
    let unauth = UnauthGate::start(&guard, format!("eip155:{}", listener.chain_id));
    let module = build_module(
        EvmContext {
            guard,
            chain_id: listener.chain_id,
            upstream,
            unauth,
        },
        &proxied,
    );
    let tls = match &listener.tls {
        Some(tls) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            super::tls::server_config(tls)?,
        ))),
        None => None,
    };
    // An idle timeout shorter than the approval wait would cut a parked call.
    let idle = std::time::Duration::from_secs(u64::from(listener.connections.idle_timeout_secs))
        .max(listener.approval_wait() + std::time::Duration::from_secs(60));
    let tcp = tokio::net::TcpListener::bind(listener.address).await?;
    let local_addr = tcp.local_addr()?;
    let (stop, handle) = jsonrpsee::server::stop_channel();
    tokio::spawn(super::connections::serve(
        tcp,
        Listener {
            methods: module.into(),
            server_config,
            auth: auth.clone(),
            max_body: listener.max_body_bytes as usize,
            tls,
            idle,
            slots: Slots::new(listener.connections),
        },
        stop,
    ));
    Ok(EvmListener {
        handle,
        local_addr,
        auth,
    })
}
