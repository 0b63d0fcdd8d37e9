//! The web console (docs/console.md): server-rendered pages for approvers, auditors, operators
//! and admins, on the admin TLS listener only (paths under `/console/`; `POST /` stays the
//! JSON-RPC API). Never on a signing listener: only [`super::tcp`] routes here.
//!
//! Every request goes through the same gate as the admin API (per-peer rate and sign-in
//! throttle). Pages read through [`super::handle_as`] with the session as proof, which allows
//! only read-only methods; every state-changing form carries the session's CSRF token, must
//! come from the configured Origin, and a fresh TOTP code that [`super::handle_as`] checks
//! exactly as on the socket (one permission table, one audit path).

mod assets;
mod charts;
pub mod html;
mod intent;
mod pages;
mod passkey;
mod people;
pub mod session;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use super::gate::Peer;
use super::{AdminContext, MAX_LINE};
use crate::config::{parse_duration, ConsoleConfig};
use html::{esc, frame, page};
use session::{Session, Sessions, SESSION_COOKIE};

/// The console's state: the WebAuthn relying party, sessions and ceremonies in progress.
pub struct Console {
    origin: String,
    webauthn: webauthn_rs::Webauthn,
    pub(crate) sessions: Sessions,
    flows: passkey::Flows,
    lifetime_s: i64,
    /// The operator's address book for the approvals page.
    pub(crate) labels: crate::config::Labels,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("origin", &self.origin)
            .finish()
    }
}

impl Console {
    /// The console for `config` (already validated).
    pub fn new(config: &ConsoleConfig) -> Result<Console, String> {
        let (origin, rp_id) = config.parsed_origin()?;
        let url = webauthn_rs::prelude::Url::parse(&origin).map_err(|e| e.to_string())?;
        let webauthn = webauthn_rs::WebauthnBuilder::new(&rp_id, &url)
            .and_then(|b| b.rp_name("keyguard").build())
            .map_err(|e| format!("WebAuthn relying party {rp_id}: {e}"))?;
        let ms = |s: &str, default: i64| {
            parse_duration(s).map_or(default, |d| i64::try_from(d.as_millis()).unwrap_or(default))
        };
        let lifetime = ms(&config.session_lifetime, 28_800_000);
        Ok(Console {
            origin,
            webauthn,
            sessions: Sessions::new(ms(&config.session_idle, 600_000), lifetime),
            flows: passkey::Flows::default(),
            lifetime_s: lifetime / 1000,
            labels: crate::config::Labels::new(&config.labels),
        })
    }
}

/// A configured key as the Keys page shows it.
#[derive(Clone, Debug)]
pub struct KeyRow {
    pub id: String,
    /// The key backend holding it (`software`, `pkcs11`, `aws-kms`, ...).
    pub backend: String,
    pub scheme: String,
    /// EVM address (secp256k1) or hex public key.
    pub public: String,
    /// Names of the policies that govern it.
    pub policy: String,
}

/// One parsed console request.
pub(crate) struct Req {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub form: HashMap<String, String>,
    pub body: Bytes,
    pub cookie: String,
    pub origin: Option<String>,
    pub peer: Peer,
}

impl Req {
    pub(crate) fn q(&self, k: &str) -> Option<&str> {
        self.query
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
    pub(crate) fn f(&self, k: &str) -> &str {
        self.form.get(k).map_or("", String::as_str)
    }
}

fn pairs(s: &[u8]) -> HashMap<String, String> {
    // First value wins: a repeated field cannot override what a check looked at.
    let mut m = HashMap::new();
    for (k, v) in form_urlencoded::parse(s).take(64) {
        m.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    m
}

/// Whether `path` is the console's.
pub fn is_console(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// Answers one console request.
pub async fn respond(
    ctx: &AdminContext,
    req: Request<Incoming>,
    peer: Peer,
    idle: Duration,
) -> Response<Full<Bytes>> {
    let Some(console) = ctx.console.as_deref() else {
        return page(
            StatusCode::NOT_FOUND,
            frame("Not found", None, "<p>The console is off.</p>"),
        );
    };
    let path = req.uri().path().to_owned();
    if let Some(asset) = assets::get(&path) {
        return asset;
    }
    if let Err(refusal) = ctx.gate.admit(peer) {
        super::peer_refused(ctx, peer, refusal).await;
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            frame(
                "Slow down",
                None,
                &format!("<p>Refused: {}</p>", refusal.rule()),
            ),
        );
    }
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let cookie = header(hyper::header::COOKIE).unwrap_or_default();
    let origin = header(hyper::header::ORIGIN);
    let method = req.method().clone();
    let query = pairs(req.uri().query().unwrap_or("").as_bytes());
    let body = if method == Method::POST {
        match tokio::time::timeout(idle, Limited::new(req.into_body(), MAX_LINE).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            _ => return page(StatusCode::PAYLOAD_TOO_LARGE, frame("Too large", None, "")),
        }
    } else {
        Bytes::new()
    };
    let form = pairs(&body);
    let r = Req {
        method,
        path,
        query,
        form,
        body,
        cookie,
        origin,
        peer,
    };
    route(ctx, console, r).await
}

async fn route(ctx: &AdminContext, console: &Console, r: Req) -> Response<Full<Bytes>> {
    let post = r.method == Method::POST;
    // Every POST must come from the console's own origin (browsers always send Origin on
    // POST); a cross-site form or fetch stops here, before any cookie is looked at.
    if post && r.origin.as_deref() != Some(console.origin.as_str()) {
        return page(
            StatusCode::FORBIDDEN,
            frame(
                "Refused",
                None,
                "<p class=\"err\" id=\"outcome\">Refused: admin.console_origin (request from another origin).</p>",
            ),
        );
    }
    if r.path.starts_with("/console/passkey/") && post {
        return passkey::ceremony(ctx, console, &r).await;
    }
    let now = crate::store::now_ms();
    let session_id = session::cookie(&r.cookie, SESSION_COOKIE).map(str::to_owned);
    let session = session_id.as_deref().and_then(|id| {
        if r.path == "/console/events" {
            console.sessions.peek(id, now)
        } else {
            console.sessions.get(id, now)
        }
    });
    let Some(session) = session else {
        return if r.path == "/console/signin" || r.path == "/console" || r.path == "/console/" {
            page(StatusCode::OK, passkey::signin_page())
        } else if post {
            page(
                StatusCode::UNAUTHORIZED,
                frame(
                    "Signed out",
                    None,
                    "<p class=\"err\" id=\"outcome\">Refused: admin.console_session (sign in first).</p>",
                ),
            )
        } else {
            html::redirect("/console/signin")
        };
    };
    // The user may have been removed since sign-in.
    if !matches!(ctx.db.user(&session.user), Ok(Some(_))) {
        console.sessions.remove_user(&session.user);
        return html::redirect("/console/signin");
    }
    if post && !session.csrf_ok(r.f("csrf")) {
        return page(
            StatusCode::FORBIDDEN,
            frame(
                "Refused",
                None,
                "<p class=\"err\" id=\"outcome\">Refused: admin.console_csrf (stale or missing form token).</p>",
            ),
        );
    }
    match (post, r.path.as_str()) {
        (false, "/console" | "/console/" | "/console/signin") => {
            html::redirect(landing(ctx, &session.user))
        }
        (true, "/console/signout") => {
            if let Some(id) = &session_id {
                console.sessions.remove(id);
            }
            html::with_cookie(
                html::redirect("/console/signin"),
                &session::set_cookie(SESSION_COOKIE, "", 0),
            )
        }
        (true, "/console/act") => act(ctx, console, &r, &session).await,
        (true, "/console/audit/verify") => pages::audit_verify(ctx, &r, &session).await,
        (false, "/console/events") => pages::events(ctx, &r, &session).await,
        (false, "/console/overview") => pages::overview(ctx, &r, &session).await,
        (false, "/console/approvals") => pages::approvals(ctx, &r, &session).await,
        (false, "/console/audit") => pages::audit(ctx, &r, &session).await,
        (false, "/console/audit/export") => pages::audit_export(ctx, &r, &session).await,
        (false, "/console/keys") => pages::keys(ctx, &r, &session).await,
        (false, "/console/people") => people::page_for(ctx, &r, &session).await,
        _ => page(
            StatusCode::NOT_FOUND,
            frame(
                "Not found",
                Some((&session.user, &session.csrf)),
                "<p>No such page.</p>",
            ),
        ),
    }
}

/// The first page for `user`: what their roles are for.
pub(crate) fn landing(ctx: &AdminContext, user: &str) -> &'static str {
    let roles = match ctx.db.user(user) {
        Ok(Some(u)) => u.roles,
        _ => Vec::new(),
    };
    let has = |r: &str| roles.iter().any(|x| x == r);
    if has("approver") {
        "/console/approvals"
    } else if has("auditor") || has("admin") {
        "/console/overview"
    } else {
        "/console/keys"
    }
}

/// A read-only admin method as the session's user, through the one admin path.
pub(crate) async fn read(
    ctx: &AdminContext,
    r: &Req,
    s: &Session,
    method: &str,
    params: Value,
) -> Result<Value, super::AdminError> {
    super::handle_as(ctx, method, params, r.peer, &s.user, super::Proof::Session).await
}

/// Methods a console form may call; each still goes through the role table and a fresh TOTP.
const ACTIONS: &[&str] = &[
    "approvals.approve",
    "approvals.reject",
    "keys.disable",
    "keys.enable",
    "policy.reload",
    "users.add",
    "users.remove",
    "clients.add",
    "clients.update",
    "clients.rotate",
    "clients.remove",
];

/// The parameters of a console form, as the admin API takes them.
fn action_params(r: &Req) -> Value {
    let list = |k: &str| -> Value {
        r.f(k)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Value::String(s.to_owned()))
            .collect()
    };
    let mut p = serde_json::Map::new();
    for k in ["id", "name", "key"] {
        if !r.f(k).is_empty() {
            p.insert(k.into(), Value::String(r.f(k).to_owned()));
        }
    }
    if r.f("all") == "true" {
        p.insert("all".into(), Value::Bool(true));
    }
    // An empty field is left out (for `clients.update`: kept as it is, never emptied).
    for k in ["roles", "groups", "keys", "chains", "methods"] {
        if !r.f(k).trim().is_empty() {
            p.insert(k.into(), list(k));
        }
    }
    Value::Object(p)
}

/// A state-changing form: the session's user, a fresh TOTP code, the same admin method.
async fn act(ctx: &AdminContext, console: &Console, r: &Req, s: &Session) -> Response<Full<Bytes>> {
    let method = r.f("method");
    let user = Some((s.user.as_str(), s.csrf.as_str()));
    if !ACTIONS.contains(&method) {
        return page(
            StatusCode::BAD_REQUEST,
            frame(
                "Refused",
                user,
                "<p class=\"err\" id=\"outcome\">Refused: admin.unknown_method.</p>",
            ),
        );
    }
    let params = action_params(r);
    let outcome = super::handle_as(
        ctx,
        method,
        params.clone(),
        r.peer,
        &s.user,
        super::Proof::Totp(r.f("totp")),
    )
    .await;
    let back = match method.split('.').next() {
        Some("approvals") => "/console/approvals",
        Some("keys") | Some("policy") => "/console/keys",
        _ => "/console/people",
    };
    let body = match outcome {
        Ok(result) => {
            if method == "users.remove" {
                if let Some(name) = params.get("name").and_then(Value::as_str) {
                    console.sessions.remove_user(name);
                }
            }
            format!(
                "<h1>Done: {m}</h1><div class=\"ok\" id=\"outcome\">{extra}{v}</div>\
                 <p><a href=\"{back}\">Back</a></p>",
                m = esc(method),
                extra = people::shown_once(&result),
                v = html::value(&result, 0),
            )
        }
        Err(e) => format!(
            "<h1>Refused: {m}</h1><p class=\"err\" id=\"outcome\">Refused: <code>{rule}</code> — {msg}</p>\
             <p><a href=\"{back}\">Back</a></p>",
            m = esc(method),
            rule = esc(e.rule()),
            msg = esc(e.message()),
        ),
    };
    page(StatusCode::OK, frame(method, user, &body))
}
