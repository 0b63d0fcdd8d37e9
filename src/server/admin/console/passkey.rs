//! Passkey enrolment and sign-in (WebAuthn, user verification required, webauthn-rs).
//!
//! Enrolment binds a passkey to an existing user only after the user proves their TOTP code
//! through the admin API's own [`super::super::authenticate`] (same lockouts, same single-use
//! rule). Sign-in makes a brand-new session. The challenge state stays server-side, bound to
//! the browser by a `__Host-` flow cookie, used once, and expires after two minutes.
//! Every enrolment and sign-in, good or bad, is audited (`admin.console.passkey_enrol`,
//! `admin.console.signin`).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Uuid,
};

use super::html::{self, frame};
use super::session::{self, random_token, FLOW_COOKIE, SESSION_COOKIE};
use super::{Console, Req};
use crate::server::admin::gate::Peer;
use crate::server::admin::{codes, AdminContext, AdminError, Done};
use crate::store::{now_ms, Decision};

/// How long a ceremony may take.
const FLOW_TTL_MS: i64 = 120_000;
/// Most ceremonies in progress at once, and per peer address (one address cannot take the
/// whole table and stop everybody else signing in).
const MAX_FLOWS: usize = 256;
const MAX_FLOWS_PER_PEER: usize = 8;

enum Ceremony {
    Enrol(Box<PasskeyRegistration>),
    SignIn(Box<PasskeyAuthentication>),
}

struct Flow {
    peer: Peer,
    user: String,
    ceremony: Ceremony,
    created_ms: i64,
}

/// Ceremonies in progress, by flow cookie.
#[derive(Default)]
pub(super) struct Flows(Mutex<HashMap<String, Flow>>);

impl Flows {
    fn insert(&self, flow: Flow) -> Option<String> {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = flow.created_ms;
        t.retain(|_, f| now - f.created_ms < FLOW_TTL_MS);
        let mine = t.values().filter(|f| f.peer == flow.peer).count();
        if t.len() >= MAX_FLOWS || mine >= MAX_FLOWS_PER_PEER {
            return None;
        }
        let id = random_token();
        t.insert(id.clone(), flow);
        Some(id)
    }

    /// Takes (single use) the live flow `id`.
    fn take(&self, id: &str, now: i64) -> Option<Flow> {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.remove(id).filter(|f| now - f.created_ms < FLOW_TTL_MS)
    }
}

/// The stable WebAuthn user handle of a user name.
fn user_handle(name: &str) -> Uuid {
    let d = Sha256::digest(format!("keyguard-console-user:{name}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    Uuid::from_bytes(b)
}

fn cred_key(p: &Passkey) -> String {
    hex::encode::<&[u8]>(p.cred_id().as_ref())
}

/// The sign-in page (also where a passkey is enrolled).
pub(super) fn signin_page() -> String {
    frame(
        "Sign in",
        None,
        "<h1>Sign in</h1>\
         <div class=\"card\"><h2>With your passkey</h2>\
         <label>User <input id=\"signin-user\" autocomplete=\"username webauthn\"></label> \
         <button id=\"signin\" type=\"button\">Sign in with passkey</button></div>\
         <div class=\"card\"><h2>First time: enrol a passkey</h2>\
         <p class=\"muted\">Prove who you are with your TOTP code; your device then makes a \
         passkey for this console (it asks for your PIN, fingerprint or face).</p>\
         <label>User <input id=\"enrol-user\" autocomplete=\"username\"></label> \
         <label>TOTP <input id=\"enrol-totp\" inputmode=\"numeric\" maxlength=\"6\" \
         autocomplete=\"one-time-code\"></label> \
         <button id=\"enrol\" type=\"button\">Enrol passkey</button></div>\
         <p id=\"status\" role=\"status\"></p>\
         <noscript><p class=\"err\">Passkeys need JavaScript.</p></noscript>",
    )
}

fn refused(status: StatusCode, rule: &str, message: &str) -> Response<Full<Bytes>> {
    html::json(status, &json!({"rule": rule, "error": message}))
}

/// Audits a ceremony's outcome through the admin audit path.
async fn audit(
    ctx: &AdminContext,
    r: &Req,
    user: &str,
    what: &str,
    outcome: &Result<(), AdminError>,
) -> bool {
    let outcome = match outcome {
        Ok(()) => Ok(Done {
            result: Value::Null,
            decision: Decision::Accepted,
            key: None,
        }),
        Err(e) => Err(AdminError::new(e.code, e.rule, e.message.clone())),
    };
    crate::server::admin::record(ctx, r.peer, user, what, json!({}), &outcome)
        .await
        .is_ok()
}

/// `POST /console/passkey/{enrol,signin}/{start,finish}`.
pub(super) async fn ceremony(
    ctx: &AdminContext,
    console: &Console,
    r: &Req,
) -> Response<Full<Bytes>> {
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let now = now_ms();
    let flow_id = session::cookie(&r.cookie, FLOW_COOKIE);
    match r.path.as_str() {
        "/console/passkey/enrol/start" => {
            let user = body.get("user").and_then(Value::as_str).unwrap_or("");
            let code = body.get("totp").and_then(Value::as_str).unwrap_or("");
            let who = crate::server::admin::authenticate(ctx, user, code, r.peer).await;
            let who = match who {
                Ok(u) => u,
                Err(e) => {
                    let ok = audit(
                        ctx,
                        r,
                        user,
                        "console.passkey_enrol",
                        &Err(AdminError::new(e.code, e.rule, e.message.clone())),
                    )
                    .await;
                    let e = e.on_the_wire();
                    let status = if ok {
                        StatusCode::UNAUTHORIZED
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    };
                    return refused(status, e.rule, &e.message);
                }
            };
            let existing: Vec<_> = match ctx.db.passkeys(&who.name) {
                Ok(v) => v
                    .iter()
                    .filter_map(|(_, j)| serde_json::from_str::<Passkey>(j).ok())
                    .map(|p| p.cred_id().clone())
                    .collect(),
                Err(e) => {
                    return refused(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "admin.internal",
                        &e.to_string(),
                    )
                }
            };
            let started = console.webauthn.start_passkey_registration(
                user_handle(&who.name),
                &who.name,
                &who.name,
                Some(existing),
            );
            let (options, state) = match started {
                Ok(s) => s,
                Err(e) => {
                    return refused(
                        StatusCode::BAD_REQUEST,
                        "admin.console_passkey",
                        &e.to_string(),
                    )
                }
            };
            start_flow(
                console,
                r.peer,
                &who.name,
                Ceremony::Enrol(Box::new(state)),
                now,
                json!(options),
            )
        }
        "/console/passkey/enrol/finish" => {
            let Some(Flow {
                user,
                ceremony: Ceremony::Enrol(state),
                ..
            }) = flow_id.and_then(|id| console.flows.take(id, now))
            else {
                return refused(
                    StatusCode::BAD_REQUEST,
                    "admin.console_passkey",
                    "no enrolment in progress (or it expired)",
                );
            };
            let outcome = serde_json::from_value::<RegisterPublicKeyCredential>(body)
                .map_err(|e| e.to_string())
                .and_then(|cred| {
                    console
                        .webauthn
                        .finish_passkey_registration(&cred, &state)
                        .map_err(|e| e.to_string())
                })
                .and_then(|pk| {
                    let stored = serde_json::to_string(&pk).map_err(|e| e.to_string())?;
                    match ctx.db.add_passkey(&user, &cred_key(&pk), &stored) {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(format!(
                            "passkey already enrolled, or {} passkeys already held",
                            crate::store::MAX_PASSKEYS_PER_USER
                        )),
                        Err(e) => Err(e.to_string()),
                    }
                })
                .map_err(|m| AdminError::new(codes::REFUSED, "admin.console_passkey", m));
            finish(
                ctx,
                r,
                &user,
                "console.passkey_enrol",
                outcome,
                json!({"enrolled": true}),
            )
            .await
        }
        "/console/passkey/signin/start" => {
            let user = body.get("user").and_then(Value::as_str).unwrap_or("");
            if ctx.gate.locked(r.peer, user) {
                ctx.gate.failed(r.peer, user);
                return refused(
                    StatusCode::UNAUTHORIZED,
                    "admin.auth",
                    "no passkey for this user",
                );
            }
            let keys: Vec<Passkey> = match ctx.db.user(user) {
                Ok(Some(_)) => ctx
                    .db
                    .passkeys(user)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|(_, j)| serde_json::from_str(j).ok())
                    .collect(),
                _ => Vec::new(),
            };
            if keys.is_empty() {
                // Unknown user and user without passkey answer alike (no name enumeration
                // beyond what enrolment already needs).
                ctx.gate.failed(r.peer, user);
                return refused(
                    StatusCode::UNAUTHORIZED,
                    "admin.auth",
                    "no passkey for this user",
                );
            }
            match console.webauthn.start_passkey_authentication(&keys) {
                Ok((options, state)) => start_flow(
                    console,
                    r.peer,
                    user,
                    Ceremony::SignIn(Box::new(state)),
                    now,
                    json!(options),
                ),
                Err(e) => refused(
                    StatusCode::BAD_REQUEST,
                    "admin.console_passkey",
                    &e.to_string(),
                ),
            }
        }
        "/console/passkey/signin/finish" => {
            let Some(Flow {
                user,
                ceremony: Ceremony::SignIn(state),
                ..
            }) = flow_id.and_then(|id| console.flows.take(id, now))
            else {
                return refused(
                    StatusCode::BAD_REQUEST,
                    "admin.console_passkey",
                    "no sign-in in progress (or it expired)",
                );
            };
            let outcome = serde_json::from_value::<PublicKeyCredential>(body)
                .map_err(|e| e.to_string())
                .and_then(|cred| {
                    console
                        .webauthn
                        .finish_passkey_authentication(&cred, &state)
                        .map_err(|e| e.to_string())
                })
                .and_then(|res| {
                    if !res.user_verified() {
                        return Err("the authenticator did not verify the user".into());
                    }
                    let stored = ctx.db.passkeys(&user).map_err(|e| e.to_string())?;
                    for (id, j) in stored {
                        let Ok(mut pk) = serde_json::from_str::<Passkey>(&j) else {
                            continue;
                        };
                        if pk.cred_id() == res.cred_id() {
                            if pk.update_credential(&res) == Some(true) {
                                let j = serde_json::to_string(&pk).map_err(|e| e.to_string())?;
                                ctx.db
                                    .update_passkey(&user, &id, &j)
                                    .map_err(|e| e.to_string())?;
                            }
                            return Ok(());
                        }
                    }
                    Err("passkey no longer enrolled".into())
                })
                .map_err(|m| AdminError::new(codes::UNAUTHORIZED, "admin.auth", m));
            if outcome.is_err() {
                ctx.gate.failed(r.peer, &user);
            } else {
                ctx.gate.succeeded(r.peer, &user);
            }
            let signed_in = outcome.is_ok();
            let response = finish(
                ctx,
                r,
                &user,
                "console.signin",
                outcome,
                json!({"next": super::landing(ctx, &user)}),
            )
            .await;
            if !signed_in || response.status() != StatusCode::OK {
                return response;
            }
            // A new id, and the id the browser came with (if any) is dropped: no fixation.
            let previous = session::cookie(&r.cookie, SESSION_COOKIE);
            let id = console.sessions.create(&user, previous, now);
            let response = html::with_cookie(
                response,
                &session::set_cookie(SESSION_COOKIE, &id, console.lifetime_s),
            );
            html::with_cookie(response, &session::set_cookie(FLOW_COOKIE, "", 0))
        }
        _ => refused(
            StatusCode::NOT_FOUND,
            "admin.console_passkey",
            "no such ceremony",
        ),
    }
}

fn start_flow(
    console: &Console,
    peer: Peer,
    user: &str,
    ceremony: Ceremony,
    now: i64,
    options: Value,
) -> Response<Full<Bytes>> {
    let Some(id) = console.flows.insert(Flow {
        peer,
        user: user.to_owned(),
        ceremony,
        created_ms: now,
    }) else {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin.console_busy",
            "too many sign-ins in progress",
        );
    };
    html::with_cookie(
        html::json(StatusCode::OK, &options),
        &session::set_cookie(FLOW_COOKIE, &id, FLOW_TTL_MS / 1000),
    )
}

async fn finish(
    ctx: &AdminContext,
    r: &Req,
    user: &str,
    what: &str,
    outcome: Result<(), AdminError>,
    ok_body: Value,
) -> Response<Full<Bytes>> {
    if !audit(ctx, r, user, what, &outcome).await {
        return refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "admin.internal",
            "audit log unavailable",
        );
    }
    match outcome {
        Ok(()) => html::json(StatusCode::OK, &ok_body),
        Err(e) => {
            tracing::info!(user = %user, rule = e.rule, "console passkey ceremony refused");
            refused(StatusCode::UNAUTHORIZED, e.rule, &e.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(peer: Peer, now: i64) -> Flow {
        let webauthn = webauthn_rs::WebauthnBuilder::new(
            "localhost",
            &webauthn_rs::prelude::Url::parse("https://localhost").unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let (_, state) = webauthn
            .start_passkey_registration(user_handle("ann"), "ann", "ann", None)
            .unwrap();
        Flow {
            peer,
            user: "ann".into(),
            ceremony: Ceremony::Enrol(Box::new(state)),
            created_ms: now,
        }
    }

    #[test]
    fn flows_are_single_use_expire_and_are_capped_per_peer() {
        let flows = Flows::default();
        let a = Peer::Tcp {
            ip: "10.0.0.1".parse().unwrap(),
        };
        let b = Peer::Tcp {
            ip: "10.0.0.2".parse().unwrap(),
        };
        let id = flows.insert(flow(a, 0)).unwrap();
        assert!(flows.take(&id, 1).is_some());
        assert!(flows.take(&id, 2).is_none(), "single use");
        let id = flows.insert(flow(a, 0)).unwrap();
        assert!(flows.take(&id, FLOW_TTL_MS).is_none(), "expired");
        for _ in 0..MAX_FLOWS_PER_PEER {
            assert!(flows.insert(flow(a, 10)).is_some());
        }
        assert!(flows.insert(flow(a, 10)).is_none(), "per-peer cap");
        assert!(
            flows.insert(flow(b, 10)).is_some(),
            "another peer still signs in"
        );
        // Expired flows free their slots.
        assert!(flows.insert(flow(a, 10 + FLOW_TTL_MS)).is_some());
    }
}
