//! The CLI's side of the admin API over TLS (`--admin-url https://host:port`): one HTTP/1.1
//! POST per call, the server authenticated against `--ca-cert` (never the system roots: an
//! admin endpoint is pinned to the CA that issued it), with an optional client certificate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

/// Where and how to reach a TLS admin listener.
pub(crate) struct TlsTarget<'a> {
    pub(crate) url: &'a str,
    pub(crate) ca_cert: Option<&'a PathBuf>,
    pub(crate) client_cert: Option<&'a PathBuf>,
    pub(crate) client_key: Option<&'a PathBuf>,
}

fn client_config(target: &TlsTarget<'_>) -> anyhow::Result<rustls::ClientConfig> {
    let Some(ca) = target.ca_cert else {
        bail!("--admin-url needs --ca-cert (the CA that issued the admin certificate)");
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("reading {}", ca.display()))?)
            .with_context(|| format!("CA certificate {}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match (target.client_cert, target.client_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading {}", key.display()))?;
            builder.with_client_auth_cert(certs, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("give both --client-cert and --client-key"),
    })
}

/// `host:port` and host of an `https://host:port[/path]` URL.
fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let Some(rest) = url.strip_prefix("https://") else {
        bail!("--admin-url must start with https:// (the admin API is never plaintext)");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => bail!("--admin-url needs a port: https://host:port"),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((authority.to_owned(), host.to_owned()))
}

/// Posts one JSON-RPC request and returns the parsed response.
pub(crate) fn call(target: &TlsTarget<'_>, request: &Value) -> anyhow::Result<Value> {
    let (authority, host) = parse_url(target.url)?;
    let config = Arc::new(client_config(target)?);
    let name = ServerName::try_from(host.clone()).context("--admin-url host")?;
    let connection = rustls::ClientConnection::new(config, name)?;
    let tcp =
        TcpStream::connect(&authority).with_context(|| format!("connecting to {authority}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let body = request.to_string();
    write!(
        tls,
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .with_context(|| format!("TLS connection to {authority}"))?;
    tls.flush()?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tls.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            // The server may close without close_notify once the response is complete.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e).with_context(|| format!("TLS connection to {authority}")),
        }
        if complete(&response) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {authority}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{authority}: {}", head.lines().next().unwrap_or(""));
    }
    serde_json::from_str(body).context("reading the response")
}

/// Whether a whole response (headers and a `Content-Length` body) has arrived.
fn complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .is_some_and(|len| body.len() >= len)
}
