//! The HTTP edge of a JSON-RPC listener: caps the body before anything parses it, refuses
//! browsers on an open (`auth = "none"`) listener, refuses WebSocket upgrades without a valid
//! credential on a bearer listener, and attaches the connection's [`Credential`] so the method
//! handlers resolve the caller at every call (HTTP requests and WebSocket messages alike).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use serde_json::json;
use tower::{Layer, Service};

use crate::access::{AuthSwitch, Authentication};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one connection presented. Kept instead of the caller it resolved to, so that a client
/// removed, narrowed or re-keyed (admin API, or a token change and SIGHUP) is refused at its
/// next call, also on a WebSocket opened before the change.
#[derive(Clone, Debug)]
pub(crate) struct Credential {
    auth: Arc<AuthSwitch>,
    cert_name: Option<Arc<str>>,
    authorization: Option<Bytes>,
    /// The peer's address (`None` only where a transport has none).
    pub(crate) peer: Option<SocketAddr>,
}

impl Credential {
    /// The caller as the authenticator in force now sees this credential.
    pub(crate) fn resolve(&self) -> Authentication {
        self.auth
            .current()
            .authenticate_with_cert(self.cert_name.as_deref(), self.authorization.as_deref())
    }
}

/// Tower layer installing [`EdgeService`] for one connection.
#[derive(Clone)]
pub(crate) struct EdgeLayer {
    pub(crate) auth: Arc<AuthSwitch>,
    pub(crate) max_body: usize,
    /// The first DNS name of the TLS client certificate of this connection, if any.
    pub(crate) cert_name: Option<Arc<str>>,
    /// The connection's peer.
    pub(crate) peer: Option<SocketAddr>,
}

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            inner,
            auth: self.auth.clone(),
            max_body: self.max_body,
            cert_name: self.cert_name.clone(),
            peer: self.peer,
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub(crate) struct EdgeService<S> {
    inner: S,
    auth: Arc<AuthSwitch>,
    max_body: usize,
    cert_name: Option<Arc<str>>,
    peer: Option<SocketAddr>,
}

/// A JSON-RPC error answered at the edge, with `Connection: close` (a refused client gets
/// no connection to hold).
fn refuse(status: http::StatusCode, code: i32, field: &str, reason: &str) -> HttpResponse {
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": reason, "data": {"field": field, "reason": reason}},
    });
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONNECTION, "close")
        .body(HttpBody::from(body.to_string()))
        .expect("static response")
}

/// Whether `host` (a `Host` value or an origin's authority, port allowed) names this machine.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inside, "")) => inside,
            Some((inside, port)) if port.strip_prefix(':').is_some_and(is_port) => inside,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Whether an `Origin` is a page served from this machine (`http(s)://localhost:port`).
pub(crate) fn is_loopback_origin(origin: &str) -> bool {
    ["http://", "https://"]
        .iter()
        .any(|scheme| origin.strip_prefix(scheme).is_some_and(is_loopback_host))
}

/// On an open listener, the request must come from this machine in the browser's sense too:
/// a foreign `Origin` is another site's page driving the signer from the user's browser, a
/// foreign `Host` is DNS rebinding (a name the attacker controls, resolved to 127.0.0.1).
fn browser_refusal<B>(request: &HttpRequest<B>) -> Option<HttpResponse> {
    let headers = request.headers();
    let host = headers
        .get(http::header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"))
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host {
        if !is_loopback_host(host) {
            return Some(refuse(
                http::StatusCode::FORBIDDEN,
                super::rpc_error::UNAUTHORIZED,
                "Host",
                "Host is not a loopback name (DNS rebinding refused on an auth = \"none\" listener)",
            ));
        }
    }
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        if !origin.to_str().is_ok_and(is_loopback_origin) {
            return Some(refuse(
                http::StatusCode::FORBIDDEN,
                super::rpc_error::UNAUTHORIZED,
                "Origin",
                "cross-origin request refused on an auth = \"none\" listener",
            ));
        }
    }
    None
}

fn is_upgrade<B>(request: &HttpRequest<B>) -> bool {
    request
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn too_large(limit: usize) -> HttpResponse {
    let reason = format!("request body exceeds {limit} bytes");
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32600, "message": reason, "data": {"field": "body", "reason": reason}},
    });
    http::Response::builder()
        .status(http::StatusCode::PAYLOAD_TOO_LARGE)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(HttpBody::from(body.to_string()))
        .expect("static response")
}

/// Most bytes read and discarded from an oversized body before answering 413. Closing a socket
/// with unread data makes the kernel send RST, which can destroy the 413 before the client reads
/// it; draining a bounded amount lets ordinary clients see the error, and the bound keeps a huge
/// upload from costing more than this.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

async fn drain<B>(body: B)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let _ = Limited::new(body, DRAIN_LIMIT).collect().await;
}

impl<S, B> Service<HttpRequest<B>> for EdgeService<S>
where
    S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: HttpRequest<B>) -> Self::Future {
        let limit = self.max_body;
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Box::pin(async move {
                drain(request.into_body()).await;
                Ok(too_large(limit))
            });
        }
        let authenticator = self.auth.current();
        if authenticator.is_open() {
            if let Some(refusal) = browser_refusal(&request) {
                return Box::pin(async move { Ok(refusal) });
            }
        }
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| Bytes::copy_from_slice(v.as_bytes()));
        let credential = Credential {
            auth: self.auth.clone(),
            cert_name: self.cert_name.clone(),
            authorization,
            peer: self.peer,
        };
        // A WebSocket is authenticated when it opens: without a valid credential there is no
        // connection to hold (each message is still re-authenticated, see [`Credential`]).
        if is_upgrade(&request) {
            if let Authentication::Refused(reason) = credential.resolve() {
                return Box::pin(async move {
                    Ok(refuse(
                        http::StatusCode::UNAUTHORIZED,
                        super::rpc_error::UNAUTHORIZED,
                        "Authorization",
                        reason,
                    ))
                });
            }
        }
        let large = match declared {
            Some(n) => n > crate::decode_gate::LARGE_BODY as u64,
            None => request
                .headers()
                .contains_key(http::header::TRANSFER_ENCODING),
        };
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(credential);
        // Take the service that was polled ready, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _permit = match large {
                true => crate::decode_gate::large_body_permit().await,
                false => None,
            };
            let body = match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Ok(too_large(limit))
                }
                Err(e) => return Err(e),
            };
            let request = HttpRequest::from_parts(parts, HttpBody::new(Full::new(body)));
            inner.call(request).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{is_loopback_host, is_loopback_origin};

    #[test]
    fn loopback_hosts_and_origins() {
        for ok in [
            "127.0.0.1:8550",
            "localhost",
            "LOCALHOST:1",
            "[::1]:8550",
            "[::1]",
            "127.9.9.9",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8550",
            "127.0.0.1.evil.example",
            "localhost.evil.example:80",
            "[::1]x",
            "10.0.0.1:8550",
            "",
            "127.0.0.1:",
            "127.0.0.1:port",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
        assert!(is_loopback_origin("http://localhost:3000"));
        assert!(is_loopback_origin("https://[::1]:443"));
        for bad in [
            "null",
            "https://evil.example",
            "file://",
            "chrome-extension://abc",
        ] {
            assert!(!is_loopback_origin(bad), "{bad}");
        }
    }
}
