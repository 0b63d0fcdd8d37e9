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

/// A health check of a dependency keyguard signs through (a cloud key service): `Err(why)`
/// while requests to it fail fast.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Shared readiness: set once startup has finished, and every registered check passing.
#[derive(Clone, Default)]
pub struct Readiness {
    started: Arc<AtomicBool>,
    checks: Arc<std::sync::RwLock<Vec<HealthCheck>>>,
}

impl Readiness {
    /// Marks the process ready.
    pub fn set_ready(&self) {
        self.started.store(true, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::READY).set(1.0);
    }

    /// Whether the process has finished starting.
    pub fn is_ready(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Adds a check `/ready` runs on every request.
    pub fn add_check(&self, check: HealthCheck) {
        self.checks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(check);
    }

    /// The first failing check's reason.
    pub fn failing(&self) -> Option<String> {
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        checks.iter().find_map(|c| c().err())
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
        "/ready" => match ready.failing() {
            None => respond(StatusCode::OK, TEXT, "ready\n".into()),
            Some(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("unavailable: {}\n", why.escape_debug()),
            ),
        },
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
