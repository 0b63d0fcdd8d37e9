//! The CometBFT path with a lying ed25519 backend: a signature that fails pass 2 is withheld,
//! the watermark does not move, and the failure is audited; an honest one moves it.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use ed25519_dalek::{Signer, SigningKey};
use keyguard_chain::{KeyId, PublicKey, Signature, SigningPayload};
use keyguard_cometbft::{BlockId, BlockLimits, SignRequest, Timestamp, Vote, VoteType};

use super::{CometbftTarget, Guard, GuardError};
use crate::backend::{BackendError, KeyBackend, KeyInfo};
use crate::config::Config;
use crate::store::{Decision, Store};

struct Ed25519Backend {
    claimed: SigningKey,
    actual: SigningKey,
}

fn public(k: &SigningKey) -> PublicKey {
    PublicKey::Ed25519(k.verifying_key().to_bytes())
}

#[async_trait]
impl KeyBackend for Ed25519Backend {
    fn name(&self) -> &'static str {
        "test"
    }
    fn keys(&self) -> Vec<KeyInfo> {
        vec![KeyInfo {
            id: KeyId::new("v").unwrap(),
            public_key: public(&self.claimed),
        }]
    }
    fn public_key(&self, _: &KeyId) -> Result<PublicKey, BackendError> {
        Ok(public(&self.claimed))
    }
    async fn sign(&self, _: &KeyId, payload: &SigningPayload) -> Result<Signature, BackendError> {
        let SigningPayload::Ed25519Message(m) = payload else {
            unreachable!()
        };
        Ok(Signature::Ed25519(self.actual.sign(m).to_bytes()))
    }
}

async fn sign_once(honest: bool) -> (Result<(), GuardError>, Vec<Decision>, Option<i64>) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(
        Path::new("t.toml"),
        "[data]\ndir = \"unused\"\n[keystore]\nbackend = \"software\"\n",
    )
    .unwrap();
    let claimed = SigningKey::from_bytes(&[1; 32]);
    let actual = if honest {
        claimed.clone()
    } else {
        SigningKey::from_bytes(&[2; 32])
    };
    let target = CometbftTarget {
        name: "t".into(),
        chain_id: "c".into(),
        key: KeyId::new("v").unwrap(),
        public_key: public(&claimed),
        limits: BlockLimits {
            start_height: Some(1),
            ..BlockLimits::default()
        },
        new_validator: true,
    };
    let store = Store::open(&dir.path().join("db")).unwrap();
    let guard = Guard::new(
        &config,
        Arc::new(Ed25519Backend { claimed, actual }),
        store.audit_log(),
    )
    .with_cometbft(store.watermarks());
    let vote = SignRequest::Vote(Vote {
        vote_type: VoteType::Prevote,
        height: 5,
        round: 0,
        block_id: BlockId {
            hash: vec![1; 32],
            parts_total: 1,
            parts_hash: vec![2; 32],
        },
        timestamp: Timestamp {
            seconds: 1,
            nanos: 0,
        },
        validator_address: vec![0; 20],
        validator_index: 0,
        extension: vec![],
    });
    let result = guard
        .sign_cometbft(&target, "c", vote, true)
        .await
        .map(|_| ());
    let decisions = store
        .recent_audit(10)
        .unwrap()
        .into_iter()
        .map(|r| r.decision)
        .collect();
    let height = store
        .watermarks()
        .load("c", "v")
        .unwrap()
        .map(|r| r.state.height);
    (result, decisions, height)
}

#[tokio::test]
async fn pass_two_failure_withholds_and_leaves_the_watermark() {
    let (result, decisions, height) = sign_once(false).await;
    assert!(
        matches!(result, Err(GuardError::Pass2Mismatch(_))),
        "{result:?}"
    );
    assert_eq!(decisions, vec![Decision::Withheld]);
    assert_eq!(height, None);
}

#[tokio::test]
async fn honest_signature_moves_the_watermark_and_is_audited() {
    let (result, decisions, height) = sign_once(true).await;
    result.unwrap();
    assert_eq!(decisions, vec![Decision::Signed]);
    assert_eq!(height, Some(5));
}
