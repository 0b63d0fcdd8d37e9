//! `GET /console/people`: users and roles, managed clients; add, scope, rotate and remove
//! through the admin methods. A new user's TOTP enrolment (QR code) and a client's token are
//! shown once, on the page that answers the action, and never stored by the console.

use std::fmt::Write as _;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::html::{action_fields, esc, frame, page};
use super::session::Session;
use super::{read, Req};
use crate::server::admin::AdminContext;

/// A QR code of `text` as an SVG (black modules on white, 4-module quiet zone).
pub(super) fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    let width = code.width();
    let size = width + 8;
    let mut path = String::new();
    for (i, c) in code.to_colors().iter().enumerate() {
        if *c == qrcode::Color::Dark {
            let _ = write!(path, "M{} {}h1v1h-1z", i % width + 4, i / width + 4);
        }
    }
    Some(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"qr\" viewBox=\"0 0 {size} {size}\" \
         role=\"img\" aria-label=\"TOTP enrolment QR code\"><rect width=\"{size}\" height=\"{size}\" \
         fill=\"#fff\"/><path d=\"{path}\" fill=\"#000\"/></svg>"
    ))
}

/// The secret part of an action's answer, with the warning that it is shown once.
pub(super) fn shown_once(result: &Value) -> String {
    let mut out = String::new();
    if let Some(uri) = result.get("otpauth_uri").and_then(Value::as_str) {
        let _ = write!(
            out,
            "<div class=\"secret\"><p><strong>Shown once.</strong> The new user scans this with \
             their authenticator app, then enrols a passkey on the sign-in page.</p>{}\
             <p><code id=\"otpauth\">{}</code></p></div>",
            qr_svg(uri).unwrap_or_default(),
            esc(uri)
        );
    }
    if let Some(token) = result.get("token").and_then(Value::as_str) {
        let _ = write!(
            out,
            "<div class=\"secret\"><p><strong>Shown once.</strong> Give this token to the \
             client now; keyguard keeps only its hash.</p><p><code id=\"token\">{}</code></p></div>",
            esc(token)
        );
    }
    out
}

fn strings(v: Option<&Value>) -> String {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(esc)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The page.
pub(super) async fn page_for(ctx: &AdminContext, r: &Req, s: &Session) -> Response<Full<Bytes>> {
    let fields = action_fields(&s.csrf);
    let mut body = String::from("<h1>Users &amp; clients</h1>");
    match read(ctx, r, s, "users.list", json!({})).await {
        Ok(users) => {
            body.push_str("<h2>Users</h2><table class=\"wide\" id=\"users\"><thead><tr><th>name</th><th>roles</th><th>groups</th><th>locked until</th></tr></thead><tbody>");
            for u in users.as_array().into_iter().flatten() {
                let locked = u
                    .get("locked_until_ms")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let _ = write!(
                    body,
                    "<tr><td data-label=\"name\">{}</td><td data-label=\"roles\">{}</td><td data-label=\"groups\">{}</td><td data-label=\"locked\">{}</td></tr>",
                    esc(u.get("name").and_then(Value::as_str).unwrap_or("")),
                    strings(u.get("roles")),
                    strings(u.get("groups")),
                    if locked > crate::store::now_ms() { super::pages::when(locked) } else { String::new() },
                );
            }
            body.push_str("</tbody></table>");
            let _ = write!(
                body,
                "<div class=\"card\"><h2>Add a user</h2><p class=\"muted\">An admin or approver needs a \
                 second admin making the same request.</p><form method=\"post\" action=\"/console/act\">\
                 <input name=\"name\" placeholder=\"name\" required aria-label=\"name\"> \
                 <input name=\"roles\" placeholder=\"roles: approver,auditor\" required aria-label=\"roles\"> \
                 <input name=\"groups\" placeholder=\"groups: treasury\" aria-label=\"groups\"> {fields}\
                 <button name=\"method\" value=\"users.add\" type=\"submit\">Add user</button></form>\
                 <h2>Remove a user</h2><form method=\"post\" action=\"/console/act\">\
                 <input name=\"name\" placeholder=\"name\" required aria-label=\"name\"> {fields}\
                 <button name=\"method\" value=\"users.remove\" class=\"danger\" type=\"submit\">Remove</button></form></div>"
            );
        }
        Err(e) => {
            let _ = write!(
                body,
                "<p class=\"muted\">Users: <code>{}</code> (admins only).</p>",
                esc(e.rule())
            );
        }
    }
    match read(ctx, r, s, "clients.list", json!({})).await {
        Ok(clients) => {
            body.push_str("<h2>Clients</h2><table class=\"wide\" id=\"clients\"><thead><tr><th>name</th><th>source</th><th>scope</th></tr></thead><tbody>");
            for c in clients.as_array().into_iter().flatten() {
                let _ = write!(
                    body,
                    "<tr><td data-label=\"name\">{}</td><td data-label=\"source\">{}</td><td data-label=\"scope\">{}</td></tr>",
                    esc(c.get("name").and_then(Value::as_str).unwrap_or("")),
                    esc(c.get("source").and_then(Value::as_str).unwrap_or("")),
                    super::html::value(c.get("scope").unwrap_or(&Value::Null), 0),
                );
            }
            body.push_str("</tbody></table>");
            let _ = write!(
                body,
                "<div class=\"card\"><h2>Add a client</h2><form method=\"post\" action=\"/console/act\">\
                 <input name=\"name\" placeholder=\"name\" required aria-label=\"name\"> \
                 <input name=\"keys\" placeholder=\"keys: k1,k2 or *\" required aria-label=\"keys\"> \
                 <input name=\"chains\" placeholder=\"chains (optional)\" aria-label=\"chains\"> \
                 <input name=\"methods\" placeholder=\"methods (optional)\" aria-label=\"methods\"> {fields}\
                 <button name=\"method\" value=\"clients.add\" type=\"submit\">Add client</button></form>\
                 <h2>Change a client's scope</h2><p class=\"muted\">Narrowing needs one admin; widening \
                 a second. Fields left empty are kept.</p><form method=\"post\" action=\"/console/act\">\
                 <input name=\"name\" placeholder=\"name\" required aria-label=\"name\"> \
                 <input name=\"keys\" placeholder=\"keys\" aria-label=\"keys\"> \
                 <input name=\"chains\" placeholder=\"chains\" aria-label=\"chains\"> \
                 <input name=\"methods\" placeholder=\"methods\" aria-label=\"methods\"> {fields}\
                 <button name=\"method\" value=\"clients.update\" type=\"submit\">Update scope</button></form>\
                 <h2>Rotate or remove a client</h2><form method=\"post\" action=\"/console/act\">\
                 <input name=\"name\" placeholder=\"name\" required aria-label=\"name\"> {fields}\
                 <button name=\"method\" value=\"clients.rotate\" type=\"submit\">Rotate token</button> \
                 <button name=\"method\" value=\"clients.remove\" class=\"danger\" type=\"submit\">Remove</button></form></div>"
            );
        }
        Err(e) => {
            let _ = write!(
                body,
                "<p class=\"muted\">Clients: <code>{}</code> (admins only).</p>",
                esc(e.rule())
            );
        }
    }
    page(
        StatusCode::OK,
        frame("Users & clients", Some((&s.user, &s.csrf)), &body),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn qr_code_is_an_svg_of_dark_modules() {
        let svg = super::qr_svg("otpauth://totp/keyguard:ann?secret=JBSWY3DPEHPK3PXP").unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("h1v1h-1z"));
        assert!(!svg.contains("<script"));
    }
}
