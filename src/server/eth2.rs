//! The eth2 remote-signing listener, Web3Signer's REST API:
//! `POST /api/v1/eth2/sign/{pubkey}`, `GET /api/v1/eth2/publicKeys`, `GET /upcheck`,
//! `GET /healthcheck`, and key management (`POST /reload`, keymanager `/eth/v1/keystores`,
//! `eth2_keymanager`). Answers as Web3Signer does: the signature as JSON `{"signature"}` when
//! `Accept` names JSON or `*/*`, as text otherwise; 404 unknown key, 412 slashing protection,
//! 400 malformed; keyguard's policy refusals are 403 and every error body is
//! `{"error", "rule", "field", "reason"}` naming the rule.
//!
//! The body is capped before it is read ([`keyguard_eth2::MAX_BODY_BYTES`]); connections are
//! capped in total and per peer; with `auth = "bearer"` a request without a client token (or
//! TLS client certificate of a `[[clients]]` entry) never reaches the decoder.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::access::{Authentication, Authenticator, Caller};
use crate::config::{ConnectionLimits, Eth2Config};
use crate::guard::eth2::{pubkey_hex, Eth2Caller, Eth2Guard, Eth2Refusal, Status};

pub(crate) type Body = Full<Bytes>;

pub(crate) fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

pub(crate) fn refusal(r: &Eth2Refusal) -> Response<Body> {
    let status = match r.status {
        Status::BadRequest => StatusCode::BAD_REQUEST,
        Status::Forbidden => StatusCode::FORBIDDEN,
        Status::NotFound => StatusCode::NOT_FOUND,
        Status::Slashing => StatusCode::PRECONDITION_FAILED,
        Status::TooMany => StatusCode::TOO_MANY_REQUESTS,
        Status::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = json!({
        "error": format!("{}: {}: {}", r.rule, r.field, r.reason),
        "rule": r.rule, "field": r.field, "reason": r.reason,
    });
    respond(status, "application/json", body.to_string())
}

/// Whether `caller` was granted the eth2 key `hex` (`*`, `eth2:*` or the key itself).
fn granted(caller: &Caller, hex: &str) -> bool {
    caller.grants.iter().any(|g| {
        g == "*"
            || g == "eth2:*"
            || g.eq_ignore_ascii_case(hex)
            || g.eq_ignore_ascii_case(&format!("eth2:{hex}"))
    })
}

/// JSON when `Accept` names JSON or any type; text otherwise (Web3Signer's negotiation).
fn wants_json(accept: Option<&str>) -> bool {
    match accept {
        None => true,
        Some(a) => a.split(',').any(|t| {
            let t = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            t == "*/*" || t == "application/*" || t == "application/json"
        }),
    }
}

struct Ctx {
    guard: Arc<Eth2Guard>,
    auth: Authenticator,
}

/// The request body, at most `limit` bytes; over it (or unreadable): the 400 answer naming
/// the limit.
async fn read_body(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(refusal(&Eth2Refusal {
            status: Status::BadRequest,
            rule: keyguard_chain::rules::common::REQUEST_INVALID,
            field: "body".into(),
            reason: format!("larger than {limit} bytes or unreadable"),
        })),
    }
}

fn unix_now() -> u64 {
    keyguard_chain::clock::now_ms() / 1000
}

async fn handle(
    ctx: Arc<Ctx>,
    cert: Option<Arc<str>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/upcheck") => return respond(StatusCode::OK, TEXT, "OK".into()),
        (&Method::GET, "/healthcheck") => {
            let up = crate::store::health::ready();
            let (code, s) = if up {
                (StatusCode::OK, "UP")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "DOWN")
            };
            return respond(
                code,
                "application/json",
                json!({"status": s, "outcome": s}).to_string(),
            );
        }
        _ => {}
    }
    let authz = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let caller = match ctx
        .auth
        .authenticate_with_cert(cert.as_deref(), authz.as_deref())
    {
        Authentication::Caller(c) => c,
        Authentication::Refused(why) => {
            return refusal(&Eth2Refusal {
                status: Status::Forbidden,
                rule: "access.unauthenticated",
                field: "authorization".into(),
                reason: why.into(),
            })
            .tap_status(StatusCode::UNAUTHORIZED)
        }
    };
    if super::eth2_keymanager::is_route(req.method(), &path) {
        if let Some(refused) = super::eth2_keymanager::not_granted(&caller) {
            return refused;
        }
        let method = req.method().clone();
        let body = match read_body(req.into_body(), super::eth2_keymanager::MAX_BODY).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };
        return super::eth2_keymanager::handle(&ctx.guard, &method, &path, body).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/api/v1/eth2/publicKeys") => {
            let keys: Vec<String> = ctx
                .guard
                .public_keys()
                .iter()
                .map(pubkey_hex)
                .filter(|h| granted(&caller, h))
                .collect();
            respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&keys).unwrap_or_default(),
            )
        }
        (&Method::POST, p) if p.starts_with("/api/v1/eth2/sign/") => {
            let id = &p["/api/v1/eth2/sign/".len()..];
            let Some(pk) = keyguard_eth2::parse_hex_fixed::<48>(&id.to_ascii_lowercase()) else {
                return refusal(&Eth2Refusal {
                    status: Status::BadRequest,
                    rule: keyguard_chain::rules::common::REQUEST_INVALID,
                    field: "pubkey".into(),
                    reason: "expected 0x + 96 hex digits".into(),
                });
            };
            if !granted(&caller, &pubkey_hex(&pk)) {
                return refusal(&Eth2Refusal {
                    status: Status::Forbidden,
                    rule: "access.key_not_granted",
                    field: "pubkey".into(),
                    reason: "this client was not granted that key".into(),
                });
            }
            let json = wants_json(
                req.headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|v| v.to_str().ok()),
            );
            let body = match read_body(req.into_body(), keyguard_eth2::MAX_BODY_BYTES).await {
                Ok(b) => b,
                Err(refused) => return refused,
            };
            let who = Eth2Caller {
                client: &caller.name,
                request_id: format!("eth2-{:016x}", rand::random::<u64>()),
            };
            match ctx.guard.sign(&who, &pk, &body, unix_now()).await {
                Ok(sig) => {
                    let hex = format!("0x{}", hex::encode(sig));
                    if json {
                        respond(
                            StatusCode::OK,
                            "application/json",
                            json!({"signature": hex}).to_string(),
                        )
                    } else {
                        respond(StatusCode::OK, TEXT, hex)
                    }
                }
                Err(r) => refusal(&r),
            }
        }
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

trait TapStatus {
    fn tap_status(self, s: StatusCode) -> Self;
}
impl TapStatus for Response<Body> {
    fn tap_status(mut self, s: StatusCode) -> Self {
        *self.status_mut() = s;
        self
    }
}

/// Binds `[eth2]` and serves it in the background; the bound address.
pub async fn start(
    config: &crate::config::Config,
    e: &Eth2Config,
    guard: Arc<Eth2Guard>,
) -> std::io::Result<SocketAddr> {
    let tls = match &e.tls {
        Some(t) => Some(TlsAcceptor::from(Arc::new(super::tls::server_config(t)?))),
        None => None,
    };
    let listener = TcpListener::bind(e.address).await?;
    let local = listener.local_addr()?;
    let ctx = Arc::new(Ctx {
        guard,
        auth: Authenticator::for_eth2(config, e.auth, &e.keys),
    });
    let slots = super::connections::Slots::new(ConnectionLimits::default());
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let Some(slot) = slots.acquire(peer.ip()) else {
                continue;
            };
            let (ctx, tls) = (ctx.clone(), tls.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30));
                match tls {
                    Some(acceptor) => {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                                .await
                        else {
                            return;
                        };
                        let cert: Option<Arc<str>> = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(super::tls::first_dns_name)
                            .map(Into::into);
                        let svc = service_fn(move |req| {
                            let (ctx, cert) = (ctx.clone(), cert.clone());
                            async move { Ok::<_, Infallible>(handle(ctx, cert, req).await) }
                        });
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    None => {
                        let svc = service_fn(move |req| {
                            let ctx = ctx.clone();
                            async move { Ok::<_, Infallible>(handle(ctx, None, req).await) }
                        });
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    Ok(local)
}
