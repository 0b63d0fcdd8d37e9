//! The HTTP edge of a JSON-RPC listener: caps the body before anything parses it and attaches
//! the caller's identity for the method handlers (HTTP requests and WebSocket upgrades alike).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use serde_json::json;
use tower::{Layer, Service};

use crate::access::AuthSwitch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Tower layer installing [`EdgeService`].
#[derive(Clone)]
pub(crate) struct EdgeLayer {
    pub(crate) auth: Arc<AuthSwitch>,
    pub(crate) max_body: usize,
    /// The first DNS name of the TLS client certificate of this connection, if any.
    pub(crate) cert_name: Option<Arc<str>>,
}

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            inner,
            auth: self.auth.clone(),
            max_body: self.max_body,
            cert_name: self.cert_name.clone(),
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
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let authentication = self
            .auth
            .current()
            .authenticate_with_cert(self.cert_name.as_deref(), authorization);
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(authentication);
        // Take the service that was polled ready, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
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
