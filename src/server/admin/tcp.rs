//! The admin API over TCP, for operators who cannot reach the Unix socket: always TLS (never
//! plaintext, since TOTP codes and enrolment URIs travel on it), optionally with required client
//! certificates, and HTTP/1.1 so standard tools work: `POST /` with one JSON-RPC request as the
//! body (`curl --cacert ca.pem https://host:9551 -d '{...}'`). Authentication and roles are the
//! same as on the socket; the certificate only decides who may connect.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::gate::Peer;
use super::{handle_line, AdminContext, MAX_LINE};
use crate::config::{parse_duration, AdminTlsConfig};
use crate::server::tls::{client_verifier, load_identity};

/// The rustls config of the admin listener.
fn server_config(tls: &AdminTlsConfig) -> std::io::Result<rustls::ServerConfig> {
    let (certs, key) = load_identity(&tls.cert, &tls.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?;
    let builder = match &tls.client_ca {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).map_err(|e| {
        std::io::Error::other(format!(
            "admin TLS certificate/key {}: {e}",
            tls.cert.display()
        ))
    })
}

/// Binds the TLS listener and serves it in the background; returns the bound address.
///
/// Every connection is counted against `[admin.limits]` before its handshake (over the cap it
/// is closed at once, `admin.connection_cap`), must finish the handshake within
/// `handshake_timeout`, and serves one request whose headers and body must arrive within
/// `idle_timeout`: a silent or slow peer cannot hold a connection (or a descriptor the signing
/// listeners need).
pub async fn start(
    address: SocketAddr,
    tls: &AdminTlsConfig,
    ctx: Arc<AdminContext>,
) -> std::io::Result<SocketAddr> {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(tls)?));
    let limits = ctx.gate.limits().clone();
    let handshake = parse_duration(&limits.handshake_timeout).unwrap_or(Duration::from_secs(5));
    let idle = parse_duration(&limits.idle_timeout).unwrap_or(Duration::from_secs(30));
    let listener = TcpListener::bind(address).await?;
    if ctx.console.is_some() {
        // Count the audit log for the console's overview now, not at the first page view.
        let warm = ctx.clone();
        tokio::task::spawn_blocking(move || {
            let now = crate::store::now_ms();
            if let Err(e) = warm.audit_counter.counts(&warm.db, now - 86_400_000, now) {
                tracing::warn!(error = %e, "counting the audit log for the console failed");
            }
        });
    }
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = ctx.gate.connect(peer.ip()) else {
                tracing::debug!(%peer, rule = "admin.connection_cap", "admin connection refused");
                drop(tcp);
                continue;
            };
            let (acceptor, ctx) = (acceptor.clone(), ctx.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let stream = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "admin TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
                let who = Peer::Tcp { ip: peer.ip() };
                let service = service_fn(move |req: Request<Incoming>| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(respond(&ctx, req, who, idle).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(idle)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                // A hard bound on the whole connection, whatever hyper waits for.
                match tokio::time::timeout(idle * 2 + MAX_HANDLING, conn).await {
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin connection ended"),
                    Err(_) => tracing::debug!(%peer, "admin connection timed out"),
                    Ok(Ok(())) => {}
                }
            });
        }
    });
    Ok(local)
}

/// Longest time one admin request may take once read (a reload, a vote).
const MAX_HANDLING: Duration = Duration::from_secs(60);

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn respond(
    ctx: &AdminContext,
    req: Request<Incoming>,
    peer: Peer,
    idle: Duration,
) -> Response<Full<Bytes>> {
    if super::console::is_console(req.uri().path()) {
        return super::console::respond(ctx, req, peer, idle).await;
    }
    if req.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"POST one JSON-RPC request"}"#.into(),
        );
    }
    let body = Limited::new(req.into_body(), MAX_LINE).collect();
    let body = match tokio::time::timeout(idle, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Err(_) => {
            return reply(
                StatusCode::REQUEST_TIMEOUT,
                r#"{"error":"request body too slow"}"#.into(),
            )
        }
        Ok(Err(_)) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                r#"{"error":"request too large"}"#.into(),
            )
        }
    };
    reply(
        StatusCode::OK,
        handle_line(ctx, &body, peer).await.to_string(),
    )
}
