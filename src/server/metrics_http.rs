//! The metrics listener: `/metrics` (Prometheus text), `/health` (the process answers) and
//! `/ready` (every signing listener is bound, keys are loaded and the store is reachable). Kept apart from the signing
//! listeners so scraping never competes with, or exposes, the signing surface.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

/// Shared readiness flag, set once startup has finished.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the process ready.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::READY).set(1.0);
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

fn route(path: &str, handle: &PrometheusHandle, ready: &Readiness) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => respond(StatusCode::OK, "text/plain; version=0.0.4", handle.render()),
        "/health" => respond(StatusCode::OK, TEXT, "ok\n".into()),
        "/ready" if !ready.is_ready() => {
            respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "starting\n".into())
        }
        // The shared store unreachable: nothing can be recorded, so nothing can be signed.
        "/ready" if !crate::store::health::ready() => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "store unreachable\n".into(),
        ),
        "/ready" => respond(StatusCode::OK, TEXT, "ready\n".into()),
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// Binds the metrics listener and serves it in the background; returns the bound address.
pub async fn start(
    address: SocketAddr,
    handle: PrometheusHandle,
    ready: Readiness,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (handle, ready) = (handle.clone(), ready.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let response = route(req.uri().path(), &handle, &ready);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}
