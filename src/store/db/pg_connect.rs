//! From `[store.postgres]` to a connection: the `tokio-postgres` configuration (hosts, sockets,
//! timeouts, `target_session_attrs=read-write`), the password from its env var or 0600 file,
//! and the rustls verifier for `tls = "verify-full"`.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::Config;

use crate::config::{PgSettings, PgTls};
use crate::store::StoreError;

/// Connection details the session needs beyond [`PgSettings`]' plain fields.
pub(crate) trait PgConnect {
    fn password(&self) -> Result<Option<zeroize::Zeroizing<String>>, StoreError>;
    fn client_config(&self) -> Result<Config, StoreError>;
    fn tls(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StoreError>;
}

impl PgConnect for PgSettings {
    fn password(&self) -> Result<Option<zeroize::Zeroizing<String>>, StoreError> {
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map(|p| Some(zeroize::Zeroizing::new(p)))
                .map_err(|_| StoreError::Unavailable(format!("password_env {var} is not set")));
        }
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(path).map_err(|e| {
                StoreError::Unavailable(format!("password_file {}: {e}", path.display()))
            })?;
            if meta.mode() & 0o077 != 0 {
                return Err(StoreError::Unavailable(format!(
                    "password_file {} is readable by group or others (chmod 600)",
                    path.display()
                )));
            }
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            StoreError::Unavailable(format!("password_file {}: {e}", path.display()))
        })?);
        Ok(Some(zeroize::Zeroizing::new(
            text.trim_end_matches(['\r', '\n']).to_owned(),
        )))
    }

    fn client_config(&self) -> Result<Config, StoreError> {
        let mut c = Config::new();
        // `host:port` entries carry their own port; then every host gets one.
        let split = |h: &str| match h.rsplit_once(':') {
            Some((host, port)) if !h.starts_with('/') => {
                port.parse::<u16>().ok().map(|p| (host.to_owned(), p))
            }
            _ => None,
        };
        let own_ports = self.hosts.iter().any(|h| split(h).is_some());
        for h in &self.hosts {
            match split(h) {
                Some((host, port)) => {
                    c.host(&host);
                    c.port(port);
                }
                None => {
                    c.host(h);
                    if own_ports {
                        c.port(self.port);
                    }
                }
            }
        }
        if !own_ports {
            c.port(self.port);
        }
        c.user(&self.user)
            .dbname(&self.dbname)
            .application_name(self.application_name.as_deref().unwrap_or("keyguard"))
            .connect_timeout(Duration::from_millis(self.connect_timeout_ms.max(1)))
            .tcp_user_timeout(self.deadline())
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3)
            .target_session_attrs(TargetSessionAttrs::ReadWrite);
        if let Some(p) = self.password()? {
            c.password(p.as_bytes());
        }
        if self.tls == PgTls::VerifyFull {
            c.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        Ok(c)
    }

    fn tls(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StoreError> {
        if self.tls == PgTls::Disable {
            return Ok(None);
        }
        let Some(ca) = &self.ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(ca)
            .map_err(|e| StoreError::Unavailable(format!("ca_file {}: {e}", ca.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert
                .map_err(|e| StoreError::Unavailable(format!("ca_file {}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| StoreError::Unavailable(format!("ca_file {}: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "ca_file {} holds no certificate",
                ca.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Unavailable(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}
