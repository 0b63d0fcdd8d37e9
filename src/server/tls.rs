//! TLS with client certificates for the EVM listener, as op-batcher / op-proposer's signer
//! client speaks it (`--signer.tls.*`). The client's identity is the first DNS name of its
//! certificate (what op-signer does); it is mapped to a `[[clients]]` entry by `cert_dns_name`.
//! Bearer tokens still work on the same listener for clients without a certificate name.
//!
//! The accept loop is `connections` (shared with plain listeners).
//!
//! A certificate must chain to the configured client CA, or the handshake fails: no request
//! from an unknown machine ever reaches the JSON-RPC layer.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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
