//! The admin API over TCP with TLS, end to end: certificates made with the openssl CLI, the
//! real daemon, and the real CLI with `--admin-url https://... --ca-cert`. The Unix socket keeps
//! working next to it; a client without the required certificate, or trusting another CA, gets
//! nowhere.

mod common;
mod control;

use std::process::Command;

use common::Daemon;
use control::pki::issue;
use control::*;

/// `keyguard admin call keys.status` over TLS with `extra` arguments.
fn status_over_tls(url: &str, user: &User, extra: &[&str]) -> std::process::Output {
    Command::new(common::binary())
        .args(["admin", "call", "keys.status", "{}", "--admin-url", url])
        .args(["--user", &user.name, "--totp", &user.code()])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn the_admin_api_is_served_over_tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    issue(&pki, "server", "admin-server", "IP:127.0.0.1,DNS:localhost");
    issue(&pki, "client", "operator-laptop", "DNS:operator-laptop");
    issue(&pki, "rogue", "rogue-server", "IP:127.0.0.1");
    let p = |f: &str| pki.join(f).display().to_string();
    let extra = format!(
        "[admin]\ntotp_single_use = false\ntcp = \"127.0.0.1:0\"\n[admin.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        p("admin-server.pem"),
        p("admin-server.key"),
        p("client-ca.pem"),
    );
    let daemon = Daemon::start(dir.path(), &config(dir.path(), &extra), &[]);
    let url = format!("https://{}", daemon.line_after("keyguard: admin https://"));
    let alice = bootstrap_admin(&daemon, "alice");
    let (ca, cert, key) = (
        p("server-ca.pem"),
        p("operator-laptop.pem"),
        p("operator-laptop.key"),
    );

    let ok = status_over_tls(
        &url,
        &alice,
        &[
            "--ca-cert",
            &ca,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
        ],
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("\"all_disabled\": false"), "{stdout}");

    // Users and clients work the same way over TLS (TOTP and roles still apply).
    let out = Command::new(common::binary())
        .args([
            "clients",
            "add",
            "app",
            "--key",
            "*",
            "--json",
            "--admin-url",
            &url,
            "--ca-cert",
            &ca,
        ])
        .args([
            "--client-cert",
            &cert,
            "--client-key",
            &key,
            "--user",
            "alice",
            "--totp",
            &alice.code(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong_code = Command::new(common::binary())
        .args([
            "admin",
            "call",
            "keys.status",
            "{}",
            "--admin-url",
            &url,
            "--ca-cert",
            &ca,
        ])
        .args([
            "--client-cert",
            &cert,
            "--client-key",
            &key,
            "--user",
            "alice",
            "--totp",
            &alice.wrong_code(),
        ])
        .output()
        .unwrap();
    assert!(!wrong_code.status.success());
    assert!(String::from_utf8_lossy(&wrong_code.stderr).contains("-32005"));

    // No client certificate: the handshake is refused before any request is read.
    let no_cert = status_over_tls(&url, &alice, &["--ca-cert", &ca]);
    assert!(!no_cert.status.success());
    // A certificate from another CA is refused too.
    let rogue_client = status_over_tls(
        &url,
        &alice,
        &[
            "--ca-cert",
            &ca,
            "--client-cert",
            &p("rogue-server.pem"),
            "--client-key",
            &p("rogue-server.key"),
        ],
    );
    assert!(!rogue_client.status.success());
    // The CLI trusts only the given CA: a server certificate from another CA is refused.
    let wrong_ca = status_over_tls(
        &url,
        &alice,
        &[
            "--ca-cert",
            &p("rogue-ca.pem"),
            "--client-cert",
            &cert,
            "--client-key",
            &key,
        ],
    );
    assert!(!wrong_ca.status.success());
    assert!(String::from_utf8_lossy(&wrong_ca.stderr)
        .to_lowercase()
        .contains("certificate"));
    // Plain http is never accepted by the CLI.
    let plain = status_over_tls(&url.replace("https", "http"), &alice, &["--ca-cert", &ca]);
    assert!(!plain.status.success());

    // The socket stays the default and works next to it; every call was audited.
    let local = admin(
        &socket(dir.path()),
        &alice,
        "keys.status",
        serde_json::json!({}),
    );
    assert!(local["result"].is_object(), "{local}");
    let rows = audit_rows(&daemon.config, &["--method", "admin.keys.status"]);
    assert_eq!(
        rows.len(),
        3,
        "two over TLS (one refused), one over the socket"
    );
}

#[test]
fn tcp_without_tls_is_refused_by_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.toml");
    std::fs::write(
        &path,
        config(dir.path(), "[admin]\ntcp = \"127.0.0.1:9551\"\n"),
    )
    .unwrap();
    let out = Command::new(common::binary())
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("admin.tcp"), "{text}");
}
