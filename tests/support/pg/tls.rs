//! The server certificate of `PgCluster::start_tls`: a CA and a leaf for `localhost` and
//! 127.0.0.1, made by the openssl CLI through the testkit's PKI helper (`tests/control/pki.rs`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::run::chown_to_server_user;

#[path = "../../control/pki.rs"]
mod pki;

/// Writes `<dir>/tls/{pg-ca.pem, server.pem, server.key}`, readable by the server's OS user
/// (the key 0600, as PostgreSQL requires); returns the CA's path.
pub(super) fn issue_server_cert(dir: &Path) -> PathBuf {
    let tls = dir.join("tls");
    std::fs::create_dir(&tls).expect("tls dir");
    pki::issue(&tls, "pg", "server", "DNS:localhost,IP:127.0.0.1");
    for entry in std::fs::read_dir(&tls).expect("tls dir") {
        chown_to_server_user(&entry.expect("tls entry").path());
    }
    chown_to_server_user(&tls);
    std::fs::set_permissions(
        tls.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod server.key");
    tls.join("pg-ca.pem")
}

/// A CA (PEM, in `dir`) that did not issue any server's certificate: a client trusting only
/// it must refuse the server (the negative control of certificate verification).
pub fn other_ca(dir: &Path) -> PathBuf {
    pki::issue(dir, "other", "unused", "DNS:localhost");
    dir.join("other-ca.pem")
}
