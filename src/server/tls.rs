//! TLS with client certificates for the EVM listener, as op-batcher / op-proposer's signer
//! client speaks it (`--signer.tls.*`). The client's identity is the first DNS name of its
//! certificate (what op-signer does); it is mapped to a `[[clients]]` entry by `cert_dns_name`.
//! Bearer tokens still work on the same listener for clients without a certificate name.
//!
//! A certificate must chain to the configured client CA, or the handshake fails: no request
//! from an unknown machine ever reaches the JSON-RPC layer.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::server::{Methods, ServerConfig, StopHandle};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::http_edge::EdgeLayer;
use crate::access::AuthSwitch;
use crate::config::TlsConfig;

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what} {}: {e}", path.display()))
}

/// The certificate chain and private key of a TLS server, from PEM files.
pub(crate) fn load_identity(
    cert: &Path,
    key: &Path,
) -> std::io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| io_err("reading certificate", cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io_err("reading certificate", cert, e))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| io_err("reading private key", key, e))?;
    Ok((certs, key))
}

/// A verifier that requires client certificates chaining to the CA(s) in `ca`.
pub(crate) fn client_verifier(
    ca: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> std::io::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| io_err("reading client CA", ca, e))? {
        let cert = cert.map_err(|e| io_err("reading client CA", ca, e))?;
        roots.add(cert).map_err(|e| io_err("client CA", ca, e))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| io_err("client CA", ca, e))
}

/// Builds the rustls server config: our certificate, and client certificates required and
/// verified against `client_ca`.
pub fn server_config(tls: &TlsConfig) -> std::io::Result<rustls::ServerConfig> {
    let (certs, key) = load_identity(&tls.cert, &tls.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = client_verifier(&tls.client_ca, provider.clone())?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| io_err("certificate/key", &tls.cert, e))
}

/// The first DNS name (SAN) of a verified client certificate.
pub fn first_dns_name(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let name = cert.valid_dns_names().next().map(str::to_owned);
    name
}

/// Accepts TLS connections until `stop` fires; each connection gets the edge layer with the
/// identity from its certificate.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    methods: Methods,
    server_config: ServerConfig,
    auth: Arc<AuthSwitch>,
    max_body: usize,
    stop: StopHandle,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.clone().shutdown() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, methods, cfg, auth, stop) = (
            acceptor.clone(),
            methods.clone(),
            server_config.clone(),
            auth.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            connection(tcp, peer, acceptor, methods, cfg, auth, max_body, stop).await;
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    methods: Methods,
    cfg: ServerConfig,
    auth: Arc<AuthSwitch>,
    max_body: usize,
    stop: StopHandle,
) {
    let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(first_dns_name);
    tracing::debug!(%peer, identity = ?identity, "TLS client connected");
    let edge = EdgeLayer {
        auth,
        max_body,
        cert_name: identity.map(Arc::from),
    };
    let service = jsonrpsee::server::Server::builder()
        .set_config(cfg)
        .set_http_middleware(tower::ServiceBuilder::new().layer(edge))
        .to_service_builder()
        .build(methods, stop.clone());
    if let Err(e) =
        jsonrpsee::server::serve_with_graceful_shutdown(stream, service, stop.shutdown()).await
    {
        tracing::debug!(%peer, error = %e, "TLS connection ended");
    }
}
