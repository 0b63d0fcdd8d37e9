//! The Google Cloud KMS backend through the official crate against a stub of Cloud KMS's REST
//! API (`GET /v1/{version}/publicKey`, `POST /v1/{version}:asymmetricSign`, base64 bytes,
//! int64 CRC32C as strings): request shape, CRC32C both ways, throttling, refusals. The stub
//! signs with libsecp256k1; released signatures are checked with k256's recovery.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::super::stub_common::{assert_recovers, hot};
use super::*;
use crate::config::CallLimits;

const VERSION: &str = "projects/p/locations/global/keyRings/r/cryptoKeys/hot/cryptoKeyVersions/1";

#[derive(Clone, PartialEq)]
enum Answer {
    Sign { high_s: bool },
    Status(u16, &'static str),
    BadSignatureCrc,
    DigestNotVerified,
}

struct Stub {
    key: secp256k1::SecretKey,
    algorithm: &'static str,
    pem_crc_ok: bool,
    answers: Vec<Answer>,
    signs: Vec<(String, Value)>,
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn pem(sk: &secp256k1::SecretKey) -> String {
    let pk = secp256k1::PublicKey::from_secret_key(&secp256k1::Secp256k1::new(), sk);
    let mut der = hex::decode("3056301006072a8648ce3d020106052b8104000a034200").unwrap();
    der.extend_from_slice(&pk.serialize_uncompressed());
    let b64 = B64.encode(der);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
        &b64[..64],
        &b64[64..]
    )
}

fn answer(stub: &Mutex<Stub>, method: &str, path: &str, body: Value) -> Response<Full<Bytes>> {
    let mut s = stub.lock().unwrap();
    let route = path.split('?').next().unwrap_or("");
    if method == "GET" && route == format!("/v1/{VERSION}/publicKey") {
        let pem = pem(&s.key);
        let crc = crc32c(pem.as_bytes()) + i64::from(!s.pem_crc_ok);
        return reply(
            200,
            json!({"pem": pem, "algorithm": s.algorithm, "pemCrc32c": crc.to_string(), "name": VERSION, "protectionLevel": "HSM"}),
        );
    }
    if method == "POST" && route == format!("/v1/{VERSION}:asymmetricSign") {
        let n = s.signs.len();
        s.signs.push((path.to_owned(), body.clone()));
        let a = s.answers.get(n).or(s.answers.last()).cloned().unwrap();
        if let Answer::Status(code, status) = a {
            return reply(
                code,
                json!({"error": {"code": code, "status": status, "message": "stub"}}),
            );
        }
        let digest: [u8; 32] = B64
            .decode(body["digest"]["sha256"].as_str().unwrap_or(""))
            .unwrap()
            .try_into()
            .unwrap();
        let sig = secp256k1::Secp256k1::new()
            .sign_ecdsa(&secp256k1::Message::from_digest(digest), &s.key);
        let mut der = sig.serialize_der().to_vec();
        if a == (Answer::Sign { high_s: true }) {
            let k = k256::ecdsa::Signature::from_der(&der).unwrap();
            der = k256::ecdsa::Signature::from_scalars(k.r(), -*k.s())
                .unwrap()
                .to_der()
                .as_bytes()
                .to_vec();
        }
        let crc = crc32c(&der) + i64::from(a == Answer::BadSignatureCrc);
        return reply(
            200,
            json!({
                "signature": B64.encode(&der),
                "signatureCrc32c": crc.to_string(),
                "verifiedDigestCrc32c": a != Answer::DigestNotVerified,
                "name": VERSION,
                "protectionLevel": "HSM",
            }),
        );
    }
    reply(
        404,
        json!({"error": {"code": 404, "status": "NOT_FOUND", "message": path}}),
    )
}

async fn serve(stub: Arc<Mutex<Stub>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
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
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        Ok::<_, Infallible>(answer(&stub, &method, &path, body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

async fn open_stub(
    answers: Vec<Answer>,
    algorithm: &'static str,
    pem_crc_ok: bool,
) -> (Result<GcpKmsBackend, GcpKmsError>, Arc<Mutex<Stub>>) {
    let stub = Arc::new(Mutex::new(Stub {
        key: secp256k1::SecretKey::from_slice(&[0x42; 32]).unwrap(),
        algorithm,
        pem_crc_ok,
        answers,
        signs: Vec::new(),
    }));
    let url = serve(stub.clone()).await;
    let config = GcpKmsConfig {
        endpoint: Some(url),
        keys: [("hot".to_string(), VERSION.to_string())].into(),
        limits: CallLimits {
            timeout_ms: 5000,
            max_retries: 2,
            requests_per_second: 1000,
            breaker_failures: 5,
            breaker_open_ms: 5000,
        },
    };
    let credentials = google_cloud_auth::credentials::anonymous::Builder::new().build();
    (GcpKmsBackend::open_with(&config, credentials).await, stub)
}

#[test]
fn crc32c_matches_the_published_check_value() {
    // CRC-32C of "123456789" is 0xE3069283 (RFC 3720 / the Castagnoli check value).
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_ne!(crc32c(b"123456780"), 0xE306_9283);
}

#[tokio::test]
async fn request_shape_crc32c_and_high_s_after_a_throttle() {
    let (backend, stub) = open_stub(
        vec![
            Answer::Status(429, "RESOURCE_EXHAUSTED"),
            Answer::Sign { high_s: true },
        ],
        "EC_SIGN_SECP256K1_SHA256",
        true,
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
    assert_eq!(s.signs.len(), 2, "one throttle, one answer");
    let body = &s.signs[1].1;
    assert_eq!(body["digest"], json!({"sha256": B64.encode(digest)}));
    assert_eq!(body["digestCrc32c"], json!(crc32c(&digest).to_string()));
}

#[tokio::test]
async fn integrity_failures_are_never_released() {
    for fault in [Answer::BadSignatureCrc, Answer::DigestNotVerified] {
        let (backend, _) = open_stub(vec![fault], "EC_SIGN_SECP256K1_SHA256", true).await;
        let err = backend
            .unwrap()
            .sign(&hot(), &SigningPayload::Secp256k1Prehash([1; 32]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BackendError::Unavailable { reason, .. } if reason.contains("CRC32C")),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn throttling_past_the_budget_and_refusals() {
    let (backend, stub) = open_stub(
        vec![Answer::Status(429, "RESOURCE_EXHAUSTED")],
        "EC_SIGN_SECP256K1_SHA256",
        true,
    )
    .await;
    let err = backend
        .unwrap()
        .sign(&hot(), &SigningPayload::Secp256k1Prehash([1; 32]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable { reason, .. } if reason.contains("throttled")),
        "{err:?}"
    );
    assert_eq!(stub.lock().unwrap().signs.len(), 3);
    let (backend, stub) = open_stub(
        vec![Answer::Status(403, "PERMISSION_DENIED")],
        "EC_SIGN_SECP256K1_SHA256",
        true,
    )
    .await;
    let err = backend
        .unwrap()
        .sign(&hot(), &SigningPayload::Secp256k1Prehash([1; 32]))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::SigningFailed { .. }), "{err:?}");
    assert_eq!(stub.lock().unwrap().signs.len(), 1);
}

#[tokio::test]
async fn a_wrong_algorithm_or_a_corrupted_public_key_refuses_the_start() {
    let (backend, _) = open_stub(vec![], "EC_SIGN_P256_SHA256", true).await;
    assert!(backend
        .unwrap_err()
        .to_string()
        .contains("EC_SIGN_SECP256K1_SHA256"));
    let (backend, _) = open_stub(vec![], "EC_SIGN_SECP256K1_SHA256", false).await;
    assert!(backend.unwrap_err().to_string().contains("CRC32C"));
}
