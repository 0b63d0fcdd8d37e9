//! Key management on the eth2 listener, for clients granted `eth2:keymanager` (a signing grant
//! such as `*` is not enough: importing or deleting keys is an operator's act): Web3Signer's
//! `POST /reload` and the keymanager API's `GET`/`POST`/`DELETE /eth/v1/keystores`
//! (import with an EIP-3076 file; delete answers the keys' slashing history).

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::eth2::{refusal, respond, Body};
use crate::access::Caller;
use crate::guard::eth2::{pubkey_hex, Eth2Guard, Eth2Refusal, Status};

/// The grant key management needs.
pub(crate) const GRANT: &str = "eth2:keymanager";

/// Largest keymanager body (keystores and an interchange file).
pub(crate) const MAX_BODY: usize = 16 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    keystores: Vec<String>,
    passwords: Vec<String>,
    #[serde(default)]
    slashing_protection: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    pubkeys: Vec<String>,
}

fn bad(field: &str, reason: impl Into<String>) -> Response<Body> {
    refusal(&Eth2Refusal {
        status: Status::BadRequest,
        rule: keyguard_chain::rules::common::REQUEST_INVALID,
        field: field.into(),
        reason: reason.into(),
    })
}

/// Whether `path` is a key-management route.
pub(crate) fn is_route(method: &Method, path: &str) -> bool {
    matches!(
        (method, path),
        (&Method::POST, "/reload")
            | (&Method::GET, "/eth/v1/keystores")
            | (&Method::POST, "/eth/v1/keystores")
            | (&Method::DELETE, "/eth/v1/keystores")
    )
}

/// The refusal of a caller without the key-management grant, checked before its body is read
/// (an up to 16 MiB body is read only for a caller that may use it).
pub(crate) fn not_granted(caller: &Caller) -> Option<Response<Body>> {
    (!caller.grants.iter().any(|g| g == GRANT)).then(|| {
        refusal(&Eth2Refusal {
            status: Status::Forbidden,
            rule: "access.method_not_granted",
            field: "path".into(),
            reason: format!("key management needs the {GRANT:?} grant"),
        })
    })
}

/// Answers a key-management route (see [`is_route`]) for a caller [`not_granted`] let in.
pub(crate) async fn handle(
    guard: &Eth2Guard,
    method: &Method,
    path: &str,
    body: Bytes,
) -> Response<Body> {
    let answer = match (method, path) {
        (&Method::POST, "/reload") => guard.reload_keys().await.map(|n| json!({"keys": n})),
        (&Method::GET, _) => Ok(
            json!({"data": guard.list_keys().iter().map(|(pk, origin)| json!({
            "validating_pubkey": pubkey_hex(pk),
            "derivation_path": if origin.starts_with("m/") { origin.clone() } else { String::new() },
            "readonly": false,
        })).collect::<Vec<_>>()}),
        ),
        (&Method::POST, _) => {
            let b: ImportBody = match serde_json::from_slice(&body) {
                Ok(b) => b,
                Err(e) => return bad("body", e.to_string()),
            };
            guard
                .import_keys(b.keystores, b.passwords, b.slashing_protection)
                .await
                .map(|data| json!({"data": data}))
        }
        _ => {
            let b: DeleteBody = match serde_json::from_slice(&body) {
                Ok(b) => b,
                Err(e) => return bad("body", e.to_string()),
            };
            let mut pks = Vec::with_capacity(b.pubkeys.len());
            for (i, p) in b.pubkeys.iter().enumerate() {
                match keyguard_eth2::parse_hex_fixed::<48>(&p.to_ascii_lowercase()) {
                    Some(pk) => pks.push(pk),
                    None => return bad(&format!("pubkeys[{i}]"), "expected 0x + 96 hex digits"),
                }
            }
            guard
                .delete_keys(pks)
                .await
                .map(|(data, history)| json!({"data": data, "slashing_protection": history}))
        }
    };
    match answer {
        Ok(v) => respond(StatusCode::OK, "application/json", v.to_string()),
        Err(r) => refusal(&r),
    }
}
