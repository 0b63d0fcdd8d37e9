//! The Azure Key Vault backend through the official SDK crates against a stub that speaks Key
//! Vault's REST contract (challenge-based bearer auth, `GET /keys/{name}`,
//! `POST /keys/{name}/{version}/sign` with `ES256K`, base64url JWK and r‖s). The stub signs
//! with libsecp256k1; released signatures are checked with k256's recovery.

use std::convert::Infallible;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::super::stub_common::{assert_recovers, hot};
use super::*;
use crate::config::CallLimits;

const VAULT: &str = "https://kg.vault.azure.net";
const VERSION: &str = "0123456789abcdef0123456789abcdef";

#[derive(Clone)]
enum Answer {
    Sign { high_s: bool },
    Status(u16, &'static str),
    OtherKey,
}

struct Stub {
    key: secp256k1::SecretKey,
    crv: &'static str,
    answers: Vec<Answer>,
    /// (method, path and query, authorization, body) of every request.
    seen: Vec<(String, String, Option<String>, Value)>,
    signs: usize,
}

#[derive(Debug)]
struct FixedToken;

#[async_trait]
impl TokenCredential for FixedToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        assert_eq!(scopes, ["https://vault.azure.net/.default"]);
        Ok(azure_core::credentials::AccessToken::new(
            "stub-token",
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

fn reply(status: u16, body: Value, challenge: bool) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8");
    if challenge {
        r = r.header(
            "www-authenticate",
            r#"Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", resource="https://vault.azure.net""#,
        );
    }
    r.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

fn answer(
    stub: &Mutex<Stub>,
    method: &str,
    path: &str,
    auth: Option<String>,
    body: Value,
) -> Response<Full<Bytes>> {
    let mut s = stub.lock().unwrap();
    s.seen
        .push((method.into(), path.into(), auth.clone(), body.clone()));
    if auth.as_deref() != Some("Bearer stub-token") {
        return reply(401, json!({"error": {"code": "Unauthorized"}}), true);
    }
    let route = path.split('?').next().unwrap_or("");
    let pk = secp256k1::PublicKey::from_secret_key(&secp256k1::Secp256k1::new(), &s.key)
        .serialize_uncompressed();
    if method == "GET" && route.trim_end_matches('/') == "/keys/hot" {
        return reply(
            200,
            json!({
                "key": {
                    "kid": format!("{VAULT}/keys/hot/{VERSION}"),
                    "kty": "EC-HSM",
                    "crv": s.crv,
                    "key_ops": ["sign", "verify"],
                    "x": B64URL.encode(&pk[1..33]),
                    "y": B64URL.encode(&pk[33..]),
                },
                "attributes": {"enabled": true, "exportable": false},
            }),
            false,
        );
    }
    if method == "POST" && route == format!("/keys/hot/{VERSION}/sign") {
        let n = s.signs;
        s.signs += 1;
        let a = s.answers.get(n).or(s.answers.last()).cloned();
        let digest: [u8; 32] = B64URL
            .decode(body["value"].as_str().unwrap_or(""))
            .unwrap()
            .try_into()
            .unwrap();
        let (key, high) = match a {
            Some(Answer::Status(code, err)) => {
                return reply(
                    code,
                    json!({"error": {"code": err, "message": "stub"}}),
                    false,
                )
            }
            Some(Answer::OtherKey) => (
                secp256k1::SecretKey::from_slice(&[0x55; 32]).unwrap(),
                false,
            ),
            Some(Answer::Sign { high_s }) => (s.key, high_s),
            None => return reply(500, json!({}), false),
        };
        let sig = secp256k1::Secp256k1::new()
            .sign_ecdsa(&secp256k1::Message::from_digest(digest), &key)
            .serialize_compact();
        let mut raw = sig.to_vec();
        if high {
            let k = k256::ecdsa::Signature::from_slice(&sig).unwrap();
            raw = k256::ecdsa::Signature::from_scalars(k.r(), -*k.s())
                .unwrap()
                .to_bytes()
                .to_vec();
        }
        return reply(
            200,
            json!({"kid": format!("{VAULT}/keys/hot/{VERSION}"), "value": B64URL.encode(raw)}),
            false,
        );
    }
    reply(404, json!({"error": {"code": "KeyNotFound"}}), false)
}

async fn serve(stub: Arc<Mutex<Stub>>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let stub = stub.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let stub = stub.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        Ok::<_, Infallible>(answer(&stub, &method, &path, auth, body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn open(
    answers: Vec<Answer>,
    crv: &'static str,
) -> (Result<AzureKvBackend, AzureKvError>, Arc<Mutex<Stub>>) {
    let stub = Arc::new(Mutex::new(Stub {
        key: secp256k1::SecretKey::from_slice(&[0x42; 32]).unwrap(),
        crv,
        answers,
        seen: Vec::new(),
        signs: 0,
    }));
    let addr = serve(stub.clone()).await;
    let config = AzureKvConfig {
        vault_url: VAULT.into(),
        credential: AzureCredentialKind::ManagedIdentity,
        tenant_id: None,
        client_id: None,
        client_secret_env: None,
        keys: [("hot".to_string(), "hot".to_string())].into(),
        limits: CallLimits {
            timeout_ms: 5000,
            max_retries: 2,
            requests_per_second: 1000,
            breaker_failures: 5,
            breaker_open_ms: 5000,
        },
    };
    let transport = Arc::new(Transport::diverted(addr));
    (
        AzureKvBackend::open_with(&config, &transport, Arc::new(FixedToken)).await,
        stub,
    )
}

#[tokio::test]
async fn es256k_request_shape_pinned_version_and_high_s_after_a_throttle() {
    let (backend, stub) = open(
        vec![
            Answer::Status(429, "Throttled"),
            Answer::Sign { high_s: true },
        ],
        "P-256K",
    )
    .await;
    let backend = backend.unwrap();
    let digest = [0x17u8; 32];
    let sig = backend
        .sign(&hot(), &SigningPayload::Secp256k1Prehash(digest))
        .await
        .unwrap();
    assert_recovers(&sig, &digest);
    assert_eq!(backend.stats(), (1, 1));
    let s = stub.lock().unwrap();
    let signs: Vec<_> = s.seen.iter().filter(|r| r.0 == "POST").collect();
    // Challenge (no token), then the throttled and the answered attempt.
    assert_eq!(
        signs.len(),
        2,
        "{:?}",
        s.seen.iter().map(|r| &r.1).collect::<Vec<_>>()
    );
    let (_, path, auth, body) = signs[1];
    assert!(
        path.starts_with(&format!("/keys/hot/{VERSION}/sign?api-version=")),
        "{path}"
    );
    assert_eq!(auth.as_deref(), Some("Bearer stub-token"));
    assert_eq!(
        body,
        &json!({"alg": "ES256K", "value": B64URL.encode(digest)})
    );
    assert_eq!(
        s.seen[0].2, None,
        "the first request goes out without a token (challenge)"
    );
}

#[tokio::test]
async fn throttling_past_the_budget_and_refusals() {
    let (backend, stub) = open(vec![Answer::Status(429, "Throttled")], "P-256K").await;
    let err = backend
        .unwrap()
        .sign(&hot(), &SigningPayload::Secp256k1Prehash([1; 32]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable { backend: "azure-kv", reason } if reason.contains("throttled")),
        "{err:?}"
    );
    assert_eq!(stub.lock().unwrap().signs, 3, "1 + max_retries (2)");

    let (backend, stub) = open(vec![Answer::Status(403, "Forbidden")], "P-256K").await;
    let err = backend
        .unwrap()
        .sign(&hot(), &SigningPayload::Secp256k1Prehash([1; 32]))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::SigningFailed { .. }), "{err:?}");
    assert_eq!(stub.lock().unwrap().signs, 1, "a refusal is not retried");
}

#[tokio::test]
async fn a_signature_by_another_key_is_never_released() {
    let (backend, _) = open(vec![Answer::OtherKey], "P-256K").await;
    let err = backend
        .unwrap()
        .sign(&hot(), &SigningPayload::Secp256k1Prehash([1; 32]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::SigningFailed { reason, .. } if reason.contains("does not verify")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_p256_key_refuses_the_start() {
    let (backend, _) = open(vec![Answer::Sign { high_s: false }], "P-256").await;
    let err = backend.unwrap_err().to_string();
    assert!(err.contains("P-256K"), "{err}");
}

#[test]
fn jwk_points_are_checked() {
    let pk = secp256k1::PublicKey::from_secret_key(
        &secp256k1::Secp256k1::new(),
        &secp256k1::SecretKey::from_slice(&[0x42; 32]).unwrap(),
    )
    .serialize_uncompressed();
    let (x, y) = (&pk[1..33], &pk[33..]);
    let ok = jwk_point(
        Some(&KeyType::Ec),
        Some(&CurveName::P256K),
        Some(x),
        Some(y),
    );
    assert_eq!(ok.unwrap(), pk);
    let mut bad_y = y.to_vec();
    bad_y[31] ^= 1;
    assert!(jwk_point(
        Some(&KeyType::Ec),
        Some(&CurveName::P256K),
        Some(x),
        Some(&bad_y)
    )
    .is_err());
    assert!(jwk_point(
        Some(&KeyType::Rsa),
        Some(&CurveName::P256K),
        Some(x),
        Some(y)
    )
    .is_err());
    assert!(jwk_point(
        Some(&KeyType::EcHsm),
        Some(&CurveName::P256),
        Some(x),
        Some(y)
    )
    .is_err());
    assert!(jwk_point(
        Some(&KeyType::EcHsm),
        Some(&CurveName::P256K),
        Some(&x[1..]),
        Some(y)
    )
    .is_err());
}
