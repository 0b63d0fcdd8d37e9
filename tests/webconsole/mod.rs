//! Helpers for the web console tests: a minimal HTTPS "browser" (cookie jar, Origin, forms)
//! and a software passkey (ES256 with p256, CBOR written by hand) that is independent of the
//! daemon's webauthn-rs verifier.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use p256::ecdsa::{signature::Signer, Signature, SigningKey};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::Daemon;
use crate::control::pki::{client, issue};
use crate::control::{bootstrap_admin, config, socket, User};

/// One HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A browser session against the console: cookies, and the Origin it sends on POST.
pub struct Browser {
    pub addr: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub origin: String,
    pub cookies: HashMap<String, String>,
}

impl Browser {
    pub fn new(addr: &str, tls: Arc<rustls::ClientConfig>, origin: &str) -> Browser {
        Browser {
            addr: addr.into(),
            tls,
            origin: origin.into(),
            cookies: HashMap::new(),
        }
    }

    /// A raw request with `headers`; cookies from the jar are sent and updated.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let name = ServerName::try_from("localhost".to_string()).unwrap();
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).unwrap();
        let tcp = std::net::TcpStream::connect(&self.addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            head.push_str(&format!("Cookie: {}\r\n", jar.join("; ")));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).unwrap();
        tls.write_all(body.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let resp = Resp {
            status,
            headers,
            body: body.to_string(),
        };
        for c in resp.set_cookies() {
            let first = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = first.split_once('=') {
                if v.is_empty() || c.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), v.to_string());
                }
            }
        }
        resp
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, &[], "")
    }

    /// A JSON POST from the console's origin.
    pub fn post_json(&mut self, path: &str, body: &Value) -> Resp {
        let origin = self.origin.clone();
        self.send(
            "POST",
            path,
            &[("Origin", &origin), ("Content-Type", "application/json")],
            &body.to_string(),
        )
    }

    /// A form POST from `origin` (None: no Origin header).
    pub fn post_form_from(
        &mut self,
        origin: Option<&str>,
        path: &str,
        fields: &[(&str, &str)],
    ) -> Resp {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if let Some(o) = origin {
            headers.push(("Origin", o));
        }
        self.send("POST", path, &headers, &body)
    }

    pub fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let origin = self.origin.clone();
        self.post_form_from(Some(&origin), path, fields)
    }

    /// The CSRF token of the signed-in page at `path`.
    pub fn csrf(&mut self, path: &str) -> String {
        let page = self.get(path);
        let at = page
            .body
            .find("name=\"csrf\" content=\"")
            .expect("csrf meta")
            + 21;
        page.body[at..at + 64].to_string()
    }
}

/// A software passkey for `rp_id`.
pub struct Passkey {
    key: SigningKey,
    pub cred_id: Vec<u8>,
    rp_id: String,
    counter: u32,
    /// Whether the authenticator claims it verified the user (PIN/biometric).
    pub user_verified: bool,
}

/// base64url without padding (RFC 4648 §5).
pub fn b64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn cbor_bytes(out: &mut Vec<u8>, b: &[u8]) {
    match b.len() {
        n if n < 24 => out.push(0x40 | n as u8),
        n if n < 256 => out.extend([0x58, n as u8]),
        n => out.extend([0x59, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(b);
}

fn cbor_text(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 24);
    out.push(0x60 | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

impl Passkey {
    pub fn new(rp_id: &str, seed: u8) -> Passkey {
        let mut secret = [seed; 32];
        secret[0] = 1;
        Passkey {
            key: SigningKey::from_slice(&secret).unwrap(),
            cred_id: Sha256::digest([seed; 4]).to_vec(),
            rp_id: rp_id.into(),
            counter: 0,
            user_verified: true,
        }
    }

    fn auth_data(&mut self, attested: bool) -> Vec<u8> {
        self.counter += 1;
        let mut d = Sha256::digest(self.rp_id.as_bytes()).to_vec();
        let mut flags = 0x01; // user present
        if self.user_verified {
            flags |= 0x04;
        }
        if attested {
            flags |= 0x40;
        }
        d.push(flags);
        d.extend(self.counter.to_be_bytes());
        if attested {
            d.extend([0u8; 16]); // AAGUID
            d.extend((self.cred_id.len() as u16).to_be_bytes());
            d.extend(&self.cred_id);
            let point = self.key.verifying_key().to_encoded_point(false);
            // COSE_Key: {1: 2 (EC2), 3: -7 (ES256), -1: 1 (P-256), -2: x, -3: y}
            d.extend([0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21]);
            cbor_bytes(&mut d, point.x().unwrap());
            d.push(0x22);
            cbor_bytes(&mut d, point.y().unwrap());
        }
        d
    }

    fn client_data(&self, kind: &str, options: &Value, origin: &str) -> Vec<u8> {
        let challenge = options["publicKey"]["challenge"]
            .as_str()
            .expect("challenge");
        json!({"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": false})
            .to_string()
            .into_bytes()
    }

    /// `navigator.credentials.create()` answered, as the console's script sends it.
    pub fn register(&mut self, options: &Value, origin: &str) -> Value {
        let client_data = self.client_data("webauthn.create", options, origin);
        let auth_data = self.auth_data(true);
        let mut att = vec![0xa3];
        cbor_text(&mut att, "fmt");
        cbor_text(&mut att, "none");
        cbor_text(&mut att, "attStmt");
        att.push(0xa0);
        cbor_text(&mut att, "authData");
        cbor_bytes(&mut att, &auth_data);
        json!({
            "id": b64(&self.cred_id),
            "rawId": b64(&self.cred_id),
            "type": "public-key",
            "extensions": {},
            "response": {"attestationObject": b64(&att), "clientDataJSON": b64(&client_data)},
        })
    }

    /// `navigator.credentials.get()` answered.
    pub fn assert(&mut self, options: &Value, origin: &str) -> Value {
        let client_data = self.client_data("webauthn.get", options, origin);
        let auth_data = self.auth_data(false);
        let mut signed = auth_data.clone();
        signed.extend(Sha256::digest(&client_data));
        let sig: Signature = self.key.sign(&signed);
        json!({
            "id": b64(&self.cred_id),
            "rawId": b64(&self.cred_id),
            "type": "public-key",
            "extensions": {},
            "response": {
                "authenticatorData": b64(&auth_data),
                "clientDataJSON": b64(&client_data),
                "signature": b64(sig.to_der().as_bytes()),
                "userHandle": null,
            },
        })
    }
}

/// Enrols `passkey` for `user` (proving `totp`), then signs in; the session cookie is in the jar.
pub fn enrol_and_sign_in(b: &mut Browser, passkey: &mut Passkey, user: &str, totp: &str) {
    let origin = b.origin.clone();
    let opts = b.post_json(
        "/console/passkey/enrol/start",
        &json!({"user": user, "totp": totp}),
    );
    assert_eq!(opts.status, 200, "enrol start: {}", opts.body);
    let done = b.post_json(
        "/console/passkey/enrol/finish",
        &passkey.register(&opts.json(), &origin),
    );
    assert_eq!(done.status, 200, "enrol finish: {}", done.body);
    sign_in(b, passkey, user);
}

/// Signs in with an enrolled passkey; returns the finish response.
pub fn sign_in(b: &mut Browser, passkey: &mut Passkey, user: &str) -> Resp {
    let origin = b.origin.clone();
    let opts = b.post_json("/console/passkey/signin/start", &json!({"user": user}));
    assert_eq!(opts.status, 200, "sign-in start: {}", opts.body);
    b.post_json(
        "/console/passkey/signin/finish",
        &passkey.assert(&opts.json(), &origin),
    )
}

/// A daemon with the console on its admin TLS listener (origin `https://localhost:<port>`), and
/// two admins.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub daemon: Daemon,
    pub addr: String,
    pub origin: String,
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    pub sock: std::path::PathBuf,
    pub alice: User,
    pub adam: User,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn setup(single_use: bool) -> Setup {
    setup_with(single_use, 100.0, |_| {})
}

/// [`setup`] with the admin listener's per-peer rate and a step run on the data directory
/// (`dir/var`) before the daemon starts.
pub fn setup_with(
    single_use: bool,
    rate: f64,
    before_start: impl FnOnce(&std::path::Path),
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    issue(&pki, "server", "admin-server", "IP:127.0.0.1,DNS:localhost");
    let p = |f: &str| pki.join(f).display().to_string();
    let port = free_port();
    let origin = format!("https://localhost:{port}");
    let extra = format!(
        "[admin]\ntotp_single_use = {single_use}\ntcp = \"127.0.0.1:{port}\"\n\
         [admin.limits]\npeer_requests_per_second = {rate:.1}\npeer_burst = {burst}\n\
         [admin.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca_waived = true\n\
         [admin.console]\nenabled = true\norigin = \"{origin}\"\n\
         [admin.console.labels]\n\"0x000000000000000000000000000000000000dEaD\" = \"Burn address\"\n",
        p("admin-server.pem"),
        p("admin-server.key"),
        burst = (rate * 2.0) as u64,
    );
    std::fs::create_dir_all(dir.path().join("var")).unwrap();
    std::fs::set_permissions(
        dir.path().join("var"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    before_start(&dir.path().join("var"));
    let daemon = Daemon::start(dir.path(), &config(dir.path(), &extra), &[]);
    let addr = daemon
        .line_after("keyguard: admin https://")
        .trim()
        .to_string();
    let tls = client(std::path::Path::new(&p("server-ca.pem")), None);
    let sock = socket(dir.path());
    let alice = bootstrap_admin(&daemon, "alice");
    let adam = bootstrap_admin(&daemon, "adam");
    Setup {
        dir,
        daemon,
        addr,
        origin,
        tls,
        sock,
        alice,
        adam,
    }
}

impl Setup {
    pub fn browser(&self) -> Browser {
        Browser::new(&self.addr, self.tls.clone(), &self.origin)
    }
}
