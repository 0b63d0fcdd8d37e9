//! The pipeline's guarantees with a misbehaving backend: a signature that fails pass 2 is never
//! released, and every outcome is in the audit log.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use k256::ecdsa::SigningKey;
use keyguard_chain::{KeyId, PublicKey, Signature, SigningPayload};
use serde_json::json;

use super::{Guard, GuardError};
use crate::access::Caller;
use crate::backend::{BackendError, KeyBackend, KeyInfo};
use crate::config::{Config, ResponseShape};
use crate::store::{Decision, Store};

/// Claims one key but signs with another: what a faulty or compromised HSM looks like.
struct LyingBackend {
    claimed: SigningKey,
    actual: SigningKey,
}

pub(super) fn public(key: &SigningKey) -> PublicKey {
    let point = key.verifying_key().to_encoded_point(false);
    PublicKey::Secp256k1(point.as_bytes().try_into().unwrap())
}

/// A k256 signature over `digest` in the form a backend returns.
pub(super) fn sign_prehash(key: &SigningKey, digest: &[u8; 32]) -> Signature {
    let (sig, recid) = key.sign_prehash_recoverable(digest).unwrap();
    let (r, s) = sig.split_bytes();
    Signature::Secp256k1 {
        r: r.into(),
        s: s.into(),
        recovery_id: recid.to_byte(),
    }
}

#[async_trait]
impl KeyBackend for LyingBackend {
    fn name(&self) -> &'static str {
        "lying"
    }
    fn keys(&self) -> Vec<KeyInfo> {
        vec![KeyInfo {
            id: KeyId::new("k").unwrap(),
            public_key: public(&self.claimed),
        }]
    }
    fn public_key(&self, _: &KeyId) -> Result<PublicKey, BackendError> {
        Ok(public(&self.claimed))
    }
    async fn sign(&self, _: &KeyId, payload: &SigningPayload) -> Result<Signature, BackendError> {
        let SigningPayload::Secp256k1Prehash(digest) = payload else {
            unreachable!()
        };
        Ok(sign_prehash(&self.actual, digest))
    }
}

const CONFIG: &str = r#"
[data]
dir = "unused"
[keystore]
backend = "software"
[[policies]]
name = "p"
keys = ["*"]
[policies.evm]
chain_ids = [31337]
to = "any"
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
"#;

pub(super) fn caller(grants: &[&str]) -> Caller {
    Caller {
        name: "test".into(),
        grants: grants
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into(),
        response: ResponseShape::Raw,
        approval_wait: std::time::Duration::ZERO,
        scope: None,
    }
}

async fn run(honest: bool, grants: &[&str]) -> (Result<(), GuardError>, Vec<Decision>) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(Path::new("t.toml"), CONFIG).unwrap();
    let claimed = SigningKey::from_slice(&[1; 32]).unwrap();
    let actual = if honest {
        claimed.clone()
    } else {
        SigningKey::from_slice(&[2; 32]).unwrap()
    };
    let from = keyguard_evm::address_of(&public(&claimed)).unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let guard = Guard::new(
        &config,
        Arc::new(LyingBackend { claimed, actual }),
        store.audit_log(),
    );
    let params = json!([{"from": from, "to": from, "gas": "0x5208", "nonce": "0x0",
        "chainId": "0x7a69", "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1"}]);
    let result = guard
        .sign_evm_transaction(&caller(grants), 31337, &params)
        .await
        .map(|_| ());
    let decisions = store
        .recent_audit(10)
        .unwrap()
        .into_iter()
        .map(|r| r.decision)
        .collect();
    (result, decisions)
}

#[tokio::test]
async fn a_signature_failing_pass_two_is_withheld_and_audited() {
    let (result, decisions) = run(false, &["*"]).await;
    match result {
        Err(GuardError::Pass2Mismatch(reason)) => {
            assert!(reason.contains("recovers to"), "{reason}")
        }
        other => panic!("expected a pass-2 mismatch, got {other:?}"),
    }
    // Its own outcome: not an outage (`failed`), a withheld signature under its own rule.
    assert_eq!(decisions, vec![Decision::Withheld]);
}

#[tokio::test]
async fn honest_signatures_are_released_after_their_audit_row() {
    let (result, decisions) = run(true, &["*"]).await;
    result.unwrap();
    assert_eq!(decisions, vec![Decision::Signed]);
}

#[tokio::test]
async fn keys_not_granted_are_refused_before_signing() {
    let (result, decisions) = run(true, &["other"]).await;
    assert!(matches!(result, Err(GuardError::Unauthorized(_))));
    assert_eq!(decisions, vec![Decision::Refused]);
}

#[tokio::test]
async fn a_signature_whose_audit_row_cannot_commit_is_withheld() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(Path::new("t.toml"), CONFIG).unwrap();
    let key = SigningKey::from_slice(&[1; 32]).unwrap();
    let from = keyguard_evm::address_of(&public(&key)).unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let audit = store.audit_log();
    let guard = Guard::new(
        &config,
        Arc::new(LyingBackend {
            claimed: key.clone(),
            actual: key,
        }),
        audit.clone(),
    );
    // The writer refuses every later append, as a full or read-only disk would.
    audit.shutdown().await.unwrap();
    let params = json!([{"from": from, "to": from, "gas": "0x5208", "nonce": "0x0",
        "chainId": "0x7a69", "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1"}]);
    match guard
        .sign_evm_transaction(&caller(&["*"]), 31337, &params)
        .await
    {
        Err(GuardError::Backend(reason)) => {
            assert!(reason.contains("signature withheld"), "{reason}")
        }
        other => panic!("a signature without its audit row was released: {other:?}"),
    }
    assert!(store.recent_audit(10).unwrap().is_empty());
}

/// The policy above, with every transfer of more than 1 wei held for one treasury approver.
const APPROVAL_CONFIG: &str = r#"
[data]
dir = "unused"
[keystore]
backend = "software"
[[policies]]
name = "p"
keys = ["*"]
[policies.evm]
chain_ids = [31337]
to = "any"
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
require_approval = { above = "1 wei", approvers = 1, group = "treasury", within = "1h" }
"#;

#[tokio::test]
async fn an_approval_consumed_by_a_withheld_signature_is_given_back() {
    use crate::access::kill::KillSwitch;
    use crate::approvals::Approvals;
    use crate::store::state_sql;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let config = Config::parse(Path::new("t.toml"), APPROVAL_CONFIG).unwrap();
    let key = SigningKey::from_slice(&[1; 32]).unwrap();
    let from = keyguard_evm::address_of(&public(&key)).unwrap();
    let backend = Arc::new(LyingBackend {
        claimed: key.clone(),
        actual: key,
    });
    let store = Store::open(&path).unwrap();
    let db = store.state_db().unwrap();
    db.add_user(
        "ann",
        &["approver".into()],
        &["treasury".into()],
        &[7u8; 20],
    )
    .unwrap();
    let approvals = Approvals::new(db.clone());
    let guard_over = |store: &Store| {
        Guard::new(&config, backend.clone(), store.audit_log())
            .with_people(Arc::new(KillSwitch::default()), approvals.clone())
    };
    let guard = guard_over(&store);
    let params = json!([{"from": from, "to": from, "gas": "0x5208", "nonce": "0x0",
        "value": "0x2", "chainId": "0x7a69", "maxFeePerGas": "0x1",
        "maxPriorityFeePerGas": "0x1"}]);
    let id = match guard
        .sign_evm_transaction(&caller(&["*"]), 31337, &params)
        .await
    {
        Err(GuardError::ApprovalRequired { approval_id, .. }) => approval_id,
        other => panic!("expected the request to be held, got {other:?}"),
    };
    let ann = db.user("ann").unwrap().unwrap();
    approvals
        .vote(&id, &ann, true, crate::store::now_ms())
        .unwrap();
    let state = |id: &str| {
        db.transaction(|tx| state_sql::approval(tx, id))
            .unwrap()
            .unwrap()
            .state
    };
    assert_eq!(state(&id), "approved");

    // The retry consumes the approval and signs, but its audit row cannot commit.
    store.audit_log().shutdown().await.unwrap();
    match guard
        .sign_evm_transaction(&caller(&["*"]), 31337, &params)
        .await
    {
        Err(GuardError::Backend(reason)) => {
            assert!(reason.contains("signature withheld"), "{reason}")
        }
        other => panic!("a signature without its audit row was released: {other:?}"),
    }
    assert_eq!(
        state(&id),
        "approved",
        "the approval was lost with the signature"
    );

    // Once the log works again the same request signs without a new vote, exactly once.
    drop(guard);
    store.close().unwrap();
    let store = Store::open(&path).unwrap();
    let guard = guard_over(&store);
    guard
        .sign_evm_transaction(&caller(&["*"]), 31337, &params)
        .await
        .expect("the restored approval releases the retry");
    assert_eq!(state(&id), "consumed");
    match guard
        .sign_evm_transaction(&caller(&["*"]), 31337, &params)
        .await
    {
        Err(e) => assert_eq!(e.rule(), Some("approval.consumed"), "{e}"),
        Ok(_) => panic!("a replay signed again"),
    }
    let decisions: Vec<_> = store
        .recent_audit(10)
        .unwrap()
        .into_iter()
        .map(|r| r.decision)
        .collect();
    assert!(decisions.contains(&Decision::Signed), "{decisions:?}");
}
