//! Signet blocks through the real pipeline and store: the height watermark is written with the
//! audit row and survives a restart, one height is signed once however many requests race for
//! it, and a second instance on the same database cannot sign a height the first signed (the
//! conditional statement is the fence even when its memory is stale).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use k256::ecdsa::SigningKey;
use keyguard_bitcoin::bitcoin::consensus::serialize;
use keyguard_bitcoin::bitcoin::{BlockHash, ScriptBuf};
use keyguard_bitcoin::signet::SIGNET_GENESIS;
use keyguard_bitcoin::signet_testkit::{miner_psbt, multisig_challenge, BlockSpec};
use keyguard_chain::{KeyId, PublicKey, Rejection, Signature, SigningPayload};
use serde_json::json;

use super::tests::{caller, public, sign_prehash};
use super::{Guard, GuardError};
use crate::backend::{BackendError, KeyBackend, KeyInfo};
use crate::config::Config;
use crate::store::{AuditFilter, Store};

struct Hot(SigningKey);

#[async_trait]
impl KeyBackend for Hot {
    fn name(&self) -> &'static str {
        "hot"
    }
    fn keys(&self) -> Vec<KeyInfo> {
        vec![KeyInfo {
            id: KeyId::new("signet").unwrap(),
            public_key: public(&self.0),
        }]
    }
    fn public_key(&self, _: &KeyId) -> Result<PublicKey, BackendError> {
        Ok(public(&self.0))
    }
    async fn sign(&self, _: &KeyId, payload: &SigningPayload) -> Result<Signature, BackendError> {
        let SigningPayload::Secp256k1Prehash(d) = payload else {
            unreachable!()
        };
        Ok(sign_prehash(&self.0, d))
    }
}

fn payee() -> ScriptBuf {
    ScriptBuf::from_hex("0014aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap()
}

fn config(challenge: &ScriptBuf) -> Config {
    let text = format!(
        r#"
[data]
dir = "unused"
[keystore]
backend = "software"
[[policies]]
name = "signet-miner"
keys = ["signet"]
[policies.signet]
challenge = "{}"
start_height = 1
require_parent_proof = false
payout = ["script:{}"]
"#,
        challenge.to_hex_string(),
        payee().to_hex_string()
    );
    Config::parse(Path::new("t.toml"), &text).unwrap()
}

fn now() -> u32 {
    (super::now_ms() / 1000) as u32
}

fn block(height: u32, time: u32) -> String {
    let prev = BlockHash::from_str(SIGNET_GENESIS).unwrap();
    hex::encode(serialize(
        &BlockSpec::new(height, prev, time, payee()).build(),
    ))
}

fn rule(r: &Result<super::SignetSigned, GuardError>) -> Option<&str> {
    match r {
        Err(GuardError::Rejected(Rejection::Policy { rule, .. })) => Some(rule),
        _ => None,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    config: Config,
    backend: Arc<Hot>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_slice(&[0x5a; 32]).unwrap();
    let backend = Arc::new(Hot(key));
    let challenge = multisig_challenge(&keyguard_bitcoin::signet_testkit::public());
    Setup {
        store: Store::open(&dir.path().join("db")).unwrap(),
        _dir: dir,
        config: config(&challenge),
        backend,
    }
}

impl Setup {
    fn guard(&self) -> Guard {
        let g = Guard::new(&self.config, self.backend.clone(), self.store.audit_log());
        g.restore_state(&self.store).unwrap();
        g
    }
}

#[tokio::test]
async fn the_watermark_commits_with_the_audit_row_and_survives_a_restart() {
    let s = setup();
    let g = s.guard();
    let c = caller(&["*"]);
    let t = now() - 100;
    let first = g
        .sign_signet_block(&c, &json!({"block": block(1, t)}))
        .await
        .unwrap();
    assert_eq!(first.height, 1);
    let rows = s.store.signet_tips().unwrap();
    assert_eq!((rows.len(), rows[0].tip.height), (1, 1));
    let audit = s
        .store
        .query_audit(&AuditFilter {
            method: Some("btc_signSignetBlock".into()),
            decision: Some("signed".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].tx_hash.as_deref(), Some(first.commitment.as_str()));
    // A restart loads the tip: another block at height 1 is refused, height 2 is signed.
    let again = s.guard();
    let second = again
        .sign_signet_block(&c, &json!({"block": block(1, t + 1)}))
        .await;
    assert_eq!(rule(&second), Some("bitcoin.signet.height"));
    let next = again
        .sign_signet_block(&c, &json!({"block": block(2, t + 10)}))
        .await;
    assert!(next.is_ok(), "{next:?}");
    assert_eq!(s.store.signet_tips().unwrap()[0].tip.height, 2);
}

#[tokio::test]
async fn racing_requests_for_one_height_sign_it_once() {
    let s = setup();
    let g = Arc::new(s.guard());
    let t = now() - 100;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            let r = g
                .sign_signet_block(&caller(&["*"]), &json!({"block": block(1, t + i)}))
                .await;
            assert!(
                r.is_ok() || rule(&r) == Some("bitcoin.signet.height"),
                "{r:?}"
            );
            r.is_ok()
        }));
    }
    let mut signed = 0;
    for t in tasks {
        signed += usize::from(t.await.unwrap());
    }
    assert_eq!(signed, 1, "exactly one block at height 1");
    // Negative control: the next height is still signable.
    let next = g
        .sign_signet_block(&caller(&["*"]), &json!({"block": block(2, t + 100)}))
        .await;
    assert!(next.is_ok(), "{next:?}");
}

#[tokio::test]
async fn a_second_instance_on_the_same_database_cannot_sign_the_same_height() {
    let s = setup();
    let a = s.guard();
    let b = s.guard(); // loaded before `a` signs: its memory is stale
    let c = caller(&["*"]);
    let t = now() - 100;
    a.sign_signet_block(&c, &json!({"block": block(1, t)}))
        .await
        .unwrap();
    let fenced = b
        .sign_signet_block(&c, &json!({"block": block(1, t + 1)}))
        .await;
    assert_eq!(rule(&fenced), Some("bitcoin.signet.height"), "{fenced:?}");
    // Nothing of the fenced request was written: still one signed row, height 1.
    assert_eq!(s.store.signet_tips().unwrap()[0].tip.commitment.len(), 64);
    let signed = s
        .store
        .query_audit(&AuditFilter {
            decision: Some("signed".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(signed.len(), 1);
    // The fenced instance reads the tip again before its next decision, without a restart:
    // height 1 stays refused, height 2 is signed.
    let again = b
        .sign_signet_block(&c, &json!({"block": block(1, t + 2)}))
        .await;
    assert_eq!(rule(&again), Some("bitcoin.signet.height"), "{again:?}");
    assert!(b
        .sign_signet_block(&c, &json!({"block": block(2, t + 10)}))
        .await
        .is_ok());
    // And `a`, whose memory is now behind `b`, is fenced in turn rather than signing 2 again.
    let behind = a
        .sign_signet_block(&c, &json!({"block": block(2, t + 11)}))
        .await;
    assert_eq!(rule(&behind), Some("bitcoin.signet.height"), "{behind:?}");
}

#[tokio::test]
async fn the_miner_psbt_on_btc_sign_psbt_comes_back_finalized() {
    let s = setup();
    let g = s.guard();
    let c = caller(&["*"]);
    let prev = BlockHash::from_str(SIGNET_GENESIS).unwrap();
    let b = BlockSpec::new(1, prev, now() - 100, payee()).build();
    let challenge = multisig_challenge(&keyguard_bitcoin::signet_testkit::public());
    let psbt = miner_psbt(&b, &challenge).to_string();
    let out = g
        .sign_bitcoin_psbt(&c, &json!({"psbt": psbt}))
        .await
        .unwrap();
    assert!(out.complete);
    let answered = keyguard_bitcoin::signet_finalize::parse_block_psbt(&out.psbt).unwrap();
    assert!(answered.inputs[0].final_script_sig.is_some());
    assert!(keyguard_bitcoin::signet_finalize::is_signet_psbt(&answered));
    // The same height through the other method: one watermark for both.
    let again = g
        .sign_signet_block(&c, &json!({"block": block(1, now() - 99)}))
        .await;
    assert_eq!(rule(&again), Some("bitcoin.signet.height"));
    // A foreign challenge on the same route is named.
    let other = keyguard_bitcoin::bitcoin::secp256k1::SecretKey::from_slice(&[9; 32])
        .unwrap()
        .public_key(&keyguard_bitcoin::bitcoin::secp256k1::Secp256k1::new());
    let b2 = BlockSpec::new(2, prev, now() - 50, payee()).build();
    let foreign = miner_psbt(&b2, &multisig_challenge(&other)).to_string();
    let refused = g.sign_bitcoin_psbt(&c, &json!({"psbt": foreign})).await;
    assert!(
        matches!(
            refused,
            Err(GuardError::Rejected(Rejection::Policy {
                rule: "bitcoin.signet.challenge",
                ..
            }))
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_key_outside_the_challenge_and_unknown_parameters_are_refused() {
    let mut s = setup();
    let other = keyguard_bitcoin::bitcoin::secp256k1::SecretKey::from_slice(&[9; 32])
        .unwrap()
        .public_key(&keyguard_bitcoin::bitcoin::secp256k1::Secp256k1::new());
    s.config = config(&multisig_challenge(&other));
    let g = s.guard();
    let c = caller(&["*"]);
    let r = g
        .sign_signet_block(&c, &json!({"block": block(1, now())}))
        .await;
    assert_eq!(rule(&r), Some("bitcoin.signet.challenge"));
    let r = g
        .sign_signet_block(&c, &json!({"block": block(1, now()), "nonce": 1}))
        .await;
    assert!(matches!(
        r,
        Err(GuardError::Rejected(Rejection::InvalidParams { .. }))
    ));
    assert!(s.store.signet_tips().unwrap().is_empty());
}
