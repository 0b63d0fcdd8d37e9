//! The HTTP transport keyguard gives the Azure SDK: hyper with rustls on ring, the same TLS
//! stack as the rest of keyguard. (The SDK's own transport is reqwest 0.13, which brings
//! aws-lc-rs: a second TLS library in a signing service.)

use std::net::SocketAddr;

use async_trait::async_trait;
use azure_core::http::headers::Headers;
use azure_core::http::{
    AsyncRawResponse, Body, HttpClient, Request as AzRequest, StatusCode as AzStatus,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Answers larger than this are refused unread (keys and signatures are a few KiB at most).
const MAX_ANSWER: usize = 256 * 1024;

/// hyper + rustls(ring) for the Azure SDK's pipelines (Key Vault and Entra ID).
pub(super) struct Transport {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Tests only: send every request, in plain HTTP, to this stub instead of its host.
    divert: Option<SocketAddr>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    /// An HTTPS transport with the system's trust roots.
    pub(super) fn new() -> std::io::Result<Self> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            divert: None,
        })
    }

    /// Tests: every request goes to the stub at `addr` over plain HTTP, its `Host` unchanged.
    #[cfg(test)]
    pub(super) fn diverted(addr: SocketAddr) -> Self {
        let mut t = Self::new().expect("native roots");
        t.divert = Some(addr);
        t
    }
}

fn io_error(e: impl std::fmt::Display) -> azure_core::Error {
    azure_core::Error::with_message(azure_core::error::ErrorKind::Io, e.to_string())
}

#[async_trait]
impl HttpClient for Transport {
    async fn execute_request(&self, request: &AzRequest) -> azure_core::Result<AsyncRawResponse> {
        let url = request.url();
        let host = url.host_str().unwrap_or_default().to_owned();
        let uri = match self.divert {
            Some(addr) => format!("http://{addr}{}", request.path_and_query()),
            None => url.to_string(),
        };
        let body = match request.body() {
            Body::Bytes(b) => Bytes::copy_from_slice(b),
            Body::SeekableStream(_) => {
                return Err(io_error("streamed request bodies are not used by keyguard"))
            }
        };
        let mut builder = hyper::Request::builder()
            .method(request.method().as_ref())
            .uri(uri);
        if self.divert.is_some() {
            builder = builder.header("host", host);
        }
        for (name, value) in request.headers().iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let req = builder.body(Full::new(body)).map_err(io_error)?;
        let response = self.client.request(req).await.map_err(io_error)?;
        let status = AzStatus::from(response.status().as_u16());
        let mut headers = Headers::new();
        for (name, value) in response.headers() {
            if let Ok(v) = value.to_str() {
                headers.insert(name.as_str().to_owned(), v.to_owned());
            }
        }
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(io_error)?
            .to_bytes();
        Ok(AsyncRawResponse::from_bytes(status, headers, bytes))
    }
}
