//! The AWS KMS backend through the real SDK against a stub that speaks KMS's JSON protocol
//! (`X-Amz-Target: TrentService.*`, `application/x-amz-json-1.1`): the request shape keyguard
//! sends, and what it does with throttling, refusals, a wrong key spec and a wrong signature.
//! The stub signs with libsecp256k1; results are checked with k256's recovery.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use aws_smithy_types::base64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use keyguard_chain::SigningPayload;
use serde_json::{json, Value};

use super::aws_kms::{AwsKmsBackend, AwsKmsError};
use super::stub_common::{assert_recovers, hot};
use crate::backend::{BackendError, KeyBackend};
use crate::config::{AwsKmsConfig, CallLimits};

/// What the stub answers to `Sign`, in order (the last repeats).
#[derive(Clone)]
enum Answer {
    Sign,
    /// The same signature with S negated (what KMS returns about half the time).
    SignHighS,
    SignWithOtherKey,
    Error(u16, &'static str),
}

struct Stub {
    key: secp256k1::SecretKey,
    key_spec: &'static str,
    answers: Vec<Answer>,
    signs: Vec<Value>,
    public_key_reads: u32,
}

fn spki(sk: &secp256k1::SecretKey) -> Vec<u8> {
    let pk = secp256k1::PublicKey::from_secret_key(&secp256k1::Secp256k1::new(), sk);
    let mut der = hex::decode("3056301006072a8648ce3d020106052b8104000a034200").unwrap();
    der.extend_from_slice(&pk.serialize_uncompressed());
    der
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn answer(stub: &Mutex<Stub>, target: &str, body: Value) -> Response<Full<Bytes>> {
    let mut s = stub.lock().unwrap();
    match target {
        "TrentService.GetPublicKey" => {
            s.public_key_reads += 1;
            reply(
                200,
                json!({
                    "KeyId": "arn:aws:kms:eu-west-1:111122223333:key/stub",
                    "PublicKey": base64::encode(spki(&s.key)),
                    "KeySpec": s.key_spec,
                    "KeyUsage": "SIGN_VERIFY",
                    "SigningAlgorithms": ["ECDSA_SHA_256"],
                }),
            )
        }
        "TrentService.Sign" => {
            let n = s.signs.len();
            s.signs.push(body.clone());
            let a = s.answers.get(n).or(s.answers.last()).cloned();
            match a {
                Some(Answer::Error(status, code)) => {
                    reply(status, json!({"__type": code, "message": "stub says no"}))
                }
                Some(a) => {
                    let digest: [u8; 32] = base64::decode(body["Message"].as_str().unwrap())
                        .unwrap()
                        .try_into()
                        .unwrap();
                    let key = match a {
                        Answer::SignWithOtherKey => {
                            secp256k1::SecretKey::from_slice(&[0x55; 32]).unwrap()
                        }
                        _ => s.key,
                    };
                    let sig = secp256k1::Secp256k1::new()
                        .sign_ecdsa(&secp256k1::Message::from_digest(digest), &key);
                    let mut der = sig.serialize_der().to_vec();
                    if matches!(a, Answer::SignHighS) {
                        let k = k256::ecdsa::Signature::from_der(&der).unwrap();
                        let high = k256::ecdsa::Signature::from_scalars(k.r(), -*k.s()).unwrap();
                        der = high.to_der().as_bytes().to_vec();
                    }
                    reply(
                        200,
                        json!({
                            "KeyId": "arn:aws:kms:eu-west-1:111122223333:key/stub",
                            "Signature": base64::encode(&der),
                            "SigningAlgorithm": "ECDSA_SHA_256",
                        }),
                    )
                }
                None => reply(500, json!({})),
            }
        }
        _ => reply(400, json!({"__type": "UnsupportedOperationException"})),
    }
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
                        let target = req
                            .headers()
                            .get("x-amz-target")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        Ok::<_, Infallible>(answer(&stub, &target, body))
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

async fn open(
    answers: Vec<Answer>,
    key_spec: &'static str,
) -> (Result<AwsKmsBackend, AwsKmsError>, Arc<Mutex<Stub>>) {
    let stub = Arc::new(Mutex::new(Stub {
        key: secp256k1::SecretKey::from_slice(&[0x42; 32]).unwrap(),
        key_spec,
        answers,
        signs: Vec::new(),
        public_key_reads: 0,
    }));
    let url = serve(stub.clone()).await;
    // The stub's dummy credentials; the SDK signs requests with them, the stub ignores them.
    std::env::set_var("AWS_ACCESS_KEY_ID", "stub");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "stub");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let config = AwsKmsConfig {
        region: "eu-west-1".into(),
        endpoint: Some(url),
        profile: None,
        keys: [("hot".to_string(), "alias/kg-hot".to_string())].into(),
        allow_generate: false,
        limits: CallLimits {
            timeout_ms: 5000,
            max_retries: 2,
            requests_per_second: 1000,
            breaker_failures: 5,
            breaker_open_ms: 5000,
        },
    };
    (AwsKmsBackend::open(&config).await, stub)
}

#[tokio::test]
async fn sign_request_shape_and_throttling_retried_within_budget() {
    let (backend, stub) = open(
        vec![
            Answer::Error(400, "ThrottlingException"),
            Answer::Error(400, "ThrottlingException"),
            Answer::SignHighS,
        ],
        "ECC_SECG_P256K1",
    )
    .await;
    let backend = backend.unwrap();
    let digest = [0x17u8; 32];
    let sig = backend
        .sign(&hot(), &SigningPayload::Secp256k1Prehash(digest))
        .await
        .unwrap();
    assert_recovers(&sig, &digest);
    let s = stub.lock().unwrap();
    assert_eq!(s.signs.len(), 3, "two throttles, then the signature");
    assert_eq!(
        s.signs[2],
        json!({
            "KeyId": "alias/kg-hot",
            "Message": base64::encode(digest),
            "MessageType": "DIGEST",
            "SigningAlgorithm": "ECDSA_SHA_256",
        }),
        "keyguard's digest, signed as a DIGEST (KMS must not hash it again)"
    );
    assert_eq!(
        s.public_key_reads, 1,
        "the public key is read once, at open"
    );
    assert_eq!(backend.stats().signatures, 1);
    assert_eq!(backend.stats().high_s_normalized, 1);
}

#[tokio::test]
async fn throttling_past_the_budget_is_unavailable() {
    let (backend, stub) = open(
        vec![Answer::Error(400, "ThrottlingException")],
        "ECC_SECG_P256K1",
    )
    .await;
    let err = backend
        .unwrap()
        .sign(&hot(), &SigningPayload::Secp256k1Prehash([1; 32]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable { backend: "aws-kms", reason } if reason.contains("throttled")),
        "{err:?}"
    );
    assert_eq!(
        stub.lock().unwrap().signs.len(),
        3,
        "1 + max_retries (2), no more"
    );
}

#[tokio::test]
async fn a_refusal_is_not_retried() {
    let (backend, stub) = open(
        vec![Answer::Error(400, "AccessDeniedException")],
        "ECC_SECG_P256K1",
    )
    .await;
    let err = backend
        .unwrap()
        .sign(&hot(), &SigningPayload::Secp256k1Prehash([1; 32]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::SigningFailed { reason, .. } if reason.contains("AccessDeniedException")),
        "{err:?}"
    );
    assert_eq!(stub.lock().unwrap().signs.len(), 1);
}

#[tokio::test]
async fn a_signature_by_another_key_is_never_released() {
    let (backend, _) = open(vec![Answer::SignWithOtherKey], "ECC_SECG_P256K1").await;
    let backend = backend.unwrap();
    let err = backend
        .sign(&hot(), &SigningPayload::Secp256k1Prehash([1; 32]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::SigningFailed { reason, .. } if reason.contains("does not verify")),
        "{err:?}"
    );
    assert_eq!(backend.stats().signatures, 0);
}

#[tokio::test]
async fn a_key_of_another_spec_refuses_the_start() {
    let (backend, _) = open(vec![Answer::Sign], "ECC_NIST_P256").await;
    let err = backend.unwrap_err();
    assert!(
        err.to_string().contains("ECC_NIST_P256") && err.to_string().contains("ECC_SECG_P256K1"),
        "{err}"
    );
}

#[tokio::test]
async fn ed25519_payloads_are_refused_before_any_call() {
    let (backend, stub) = open(vec![Answer::Sign], "ECC_SECG_P256K1").await;
    let err = backend
        .unwrap()
        .sign(&hot(), &SigningPayload::Ed25519Message(vec![1, 2]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, BackendError::SchemeMismatch { .. }),
        "{err:?}"
    );
    assert!(stub.lock().unwrap().signs.is_empty());
}
