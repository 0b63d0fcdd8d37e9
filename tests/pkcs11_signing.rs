//! The PKCS#11 backend in-process on a real SoftHSM2 token: high-S normalisation (signing
//! until the token returns a high S) and Ed25519 keys with both `CKA_EC_PARAMS` forms. Every
//! signature is checked with libsecp256k1 / ed25519-dalek, not with the backend's own k256
//! code. One test per process: a PKCS#11 library is initialised once per process.

#[path = "support/softhsm.rs"]
mod softhsm;

use std::time::Duration;

use keyguard::backend::pkcs11::{settings_from_config, Pkcs11Backend};
use keyguard::backend::KeyBackend;
use keyguard::config::Config;
use keyguard_chain::{KeyId, PublicKey, Signature, SigningPayload};
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, Secp256k1};
use softhsm::SoftToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_signatures_are_low_s_recoverable_and_verified() {
    let Some(token) = SoftToken::new("kg-inproc") else {
        return;
    };
    token.generate("eth", "secp256k1");
    token.generate("ed-oid", "ed25519"); // keyguard writes the RFC 8410 OID
    token.pkcs11_tool_keypair("ed-name", "EC:edwards25519", &["--id", "0e"]); // "edwards25519"

    // This process is the only user of the library: point it at the test token.
    for (k, v) in token.envs() {
        std::env::set_var(k, v);
    }
    let config = Config::load(&token.config("sessions = 2")).expect("config");
    let p = config.keystore.pkcs11.as_ref().expect("pkcs11 table");
    let backend = Pkcs11Backend::open(
        settings_from_config(p).expect("settings"),
        2,
        Duration::from_secs(5),
    )
    .expect("open backend");

    let id = KeyId::new("eth").expect("id");
    let PublicKey::Secp256k1(pk) = backend.public_key(&id).expect("pk") else {
        panic!("eth is not secp256k1");
    };
    let expected = secp256k1::PublicKey::from_slice(&pk).expect("point");
    let secp = Secp256k1::verification_only();
    // About half of the token's signatures are high-S; 200 tries without one is ~2^-200.
    let mut i = 0u32;
    while backend.stats().high_s_normalized < 3 {
        assert!(i < 200, "the token never produced a high-S signature");
        let digest: [u8; 32] = sha2_digest(i);
        let before = backend.stats().high_s_normalized;
        let sig = backend
            .sign(&id, &SigningPayload::Secp256k1Prehash(digest))
            .await
            .expect("sign");
        let Signature::Secp256k1 { r, s, recovery_id } = sig else {
            panic!("not an ECDSA signature");
        };
        let mut rs = [0u8; 64];
        rs[..32].copy_from_slice(&r);
        rs[32..].copy_from_slice(&s);
        let rec = RecoverableSignature::from_compact(
            &rs,
            RecoveryId::try_from(i32::from(recovery_id)).expect("recovery id"),
        )
        .expect("signature");
        let msg = Message::from_digest(digest);
        assert_eq!(secp.recover_ecdsa(&msg, &rec).expect("recovers"), expected);
        // libsecp's verify rejects high S: this is the low-S check.
        secp.verify_ecdsa(&msg, &rec.to_standard(), &expected)
            .expect("low-S signature that verifies");
        if backend.stats().high_s_normalized > before {
            eprintln!(
                "signature {i}: token returned high S; released low S, recovery id {recovery_id}"
            );
        }
        i += 1;
    }

    for label in ["ed-oid", "ed-name"] {
        let id = KeyId::new(label).expect("id");
        let PublicKey::Ed25519(pk) = backend.public_key(&id).expect("pk") else {
            panic!("{label} is not ed25519");
        };
        let msg = b"keyguard pkcs11 ed25519".to_vec();
        let Signature::Ed25519(sig) = backend
            .sign(&id, &SigningPayload::Ed25519Message(msg.clone()))
            .await
            .expect("sign ed25519")
        else {
            panic!("not ed25519");
        };
        ed25519_dalek::VerifyingKey::from_bytes(&pk)
            .expect("key")
            .verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
            .expect("ed25519 signature verifies");
    }
    // A payload for the other scheme is refused before the token is asked.
    assert!(backend
        .sign(&id, &SigningPayload::Ed25519Message(vec![1]))
        .await
        .is_err());
}

fn sha2_digest(i: u32) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(i.to_be_bytes()).into()
}
