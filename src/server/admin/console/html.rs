//! HTML output of the console: escaping, the page frame, and responses that always carry the
//! security headers (strict CSP with no inline script or style, no sniffing, no referrer, no
//! framing, no caching).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// Escapes text for HTML content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A response with `body`, its type, and the security headers.
pub fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    let set = |h: &mut hyper::HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(HeaderName::from_static(k), v);
        }
    };
    set(h, "content-type", content_type);
    set(h, "content-security-policy", CSP);
    set(h, "x-content-type-options", "nosniff");
    // `same-origin`, not `no-referrer`: under `no-referrer` browsers send `Origin: null` on form
    // posts, and the Origin check needs the real one. Nothing leaks to another site either way.
    set(h, "referrer-policy", "same-origin");
    set(h, "x-frame-options", "DENY");
    set(h, "cache-control", "no-store");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "strict-transport-security", "max-age=31536000");
    r
}

/// An HTML page.
pub fn page(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    response(status, "text/html; charset=utf-8", body)
}

/// A JSON answer (the passkey ceremonies).
pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    response(status, "application/json", v.to_string())
}

/// A `303 See Other` to a console path.
pub fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut r = response(StatusCode::SEE_OTHER, "text/plain", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(hyper::header::LOCATION, v);
    }
    r
}

/// Adds a `Set-Cookie`.
pub fn with_cookie(mut r: Response<Full<Bytes>>, cookie: &str) -> Response<Full<Bytes>> {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(hyper::header::SET_COOKIE, v);
    }
    r
}

/// The page frame: navigation for the signed-in user (if any), the CSRF token for the script,
/// and `main`.
pub fn frame(title: &str, user: Option<(&str, &str)>, main: &str) -> String {
    let nav = match user {
        Some((name, csrf)) => format!(
            "<nav><a href=\"/console/overview\">Overview</a><a href=\"/console/approvals\">Approvals</a>\
             <a href=\"/console/audit\">Audit</a><a href=\"/console/keys\">Keys</a>\
             <a href=\"/console/people\">Users &amp; clients</a>\
             <form method=\"post\" action=\"/console/signout\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Sign out {name}</button></form></nav>",
            name = esc(name),
            csrf = esc(csrf),
        ),
        None => String::new(),
    };
    let csrf = user.map(|(_, c)| esc(c)).unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"csrf\" content=\"{csrf}\">\
         <title>{title} · keyguard</title>\
         <link rel=\"stylesheet\" href=\"/console/static/app.css\">\
         <script src=\"/console/static/app.js\" defer></script></head>\
         <body><header><strong>keyguard</strong>{nav}</header><main>{main}</main></body></html>",
        title = esc(title),
    )
}

/// The hidden CSRF field and the TOTP field of a state-changing form.
pub fn action_fields(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input name=\"totp\" inputmode=\"numeric\" autocomplete=\"one-time-code\" \
         pattern=\"[0-9]{{6}}\" maxlength=\"6\" placeholder=\"TOTP code\" required>",
        esc(csrf)
    )
}

/// A JSON value as a definition list (the decoded intent of a request, an audit summary).
pub fn value(v: &serde_json::Value, depth: usize) -> String {
    use serde_json::Value;
    if depth > 6 {
        return "…".into();
    }
    match v {
        Value::Object(map) => {
            let mut s = String::from("<dl>");
            for (k, v) in map {
                s.push_str(&format!(
                    "<dt>{}</dt><dd>{}</dd>",
                    esc(k),
                    value(v, depth + 1)
                ));
            }
            s.push_str("</dl>");
            s
        }
        Value::Array(items) => {
            let mut s = String::from("<ol>");
            for v in items.iter().take(100) {
                s.push_str(&format!("<li>{}</li>", value(v, depth + 1)));
            }
            s.push_str("</ol>");
            s
        }
        Value::String(t) => format!("<code>{}</code>", esc(t)),
        Value::Null => "—".into(),
        other => format!("<code>{}</code>", esc(&other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_attributes() {
        assert_eq!(
            esc("<script>\"a\"&'b'</script>"),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;"
        );
        let v = serde_json::json!({"<k>": ["<img src=x onerror=1>"]});
        let html = value(&v, 0);
        assert!(!html.contains("<img") && !html.contains("<k>"), "{html}");
    }
}
