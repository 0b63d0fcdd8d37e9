//! The console's static files, embedded in the binary (no CDN, no fonts, no inline script).

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::html::response;

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The asset at `path`, if it is one.
pub(super) fn get(path: &str) -> Option<Response<Full<Bytes>>> {
    let (ty, body) = match path {
        "/console/static/app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "/console/static/app.css" => ("text/css; charset=utf-8", APP_CSS),
        _ => return None,
    };
    Some(response(StatusCode::OK, ty, body))
}
