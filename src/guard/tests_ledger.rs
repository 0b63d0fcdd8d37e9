//! Velocity reservations through the real pipeline and store: released when signing fails,
//! committed with the audit row when it succeeds, and restored after a restart.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use k256::ecdsa::SigningKey;
use keyguard_chain::{KeyId, Rejection, Signature, SigningPayload};
use serde_json::json;

use super::tests::{caller, public, sign_prehash};
use super::{Guard, GuardError};
use crate::backend::{BackendError, KeyBackend, KeyInfo};
use crate::config::Config;
use crate::store::Store;

/// Signs correctly, or fails, as the test says.
struct FlakyBackend {
    key: SigningKey,
    fail: AtomicBool,
}

#[async_trait]
impl KeyBackend for FlakyBackend {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn keys(&self) -> Vec<KeyInfo> {
        vec![KeyInfo {
            id: KeyId::new("k").unwrap(),
            public_key: public(&self.key),
        }]
    }
    fn public_key(&self, _: &KeyId) -> Result<keyguard_chain::PublicKey, BackendError> {
        Ok(public(&self.key))
    }
    async fn sign(&self, _: &KeyId, payload: &SigningPayload) -> Result<Signature, BackendError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable {
                backend: "flaky",
                reason: "HSM unplugged".into(),
            });
        }
        let SigningPayload::Secp256k1Prehash(digest) = payload else {
            return Err(BackendError::Unavailable {
                backend: "flaky",
                reason: "wrong payload".into(),
            });
        };
        Ok(sign_prehash(&self.key, digest))
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
velocity = [{ name = "eth-daily", asset = "ETH", max = "2", window = "24h" }]
"#;

#[tokio::test]
async fn reservations_are_released_on_failure_kept_on_success_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(Path::new("t.toml"), CONFIG).unwrap();
    let key = SigningKey::from_slice(&[1; 32]).unwrap();
    let from = keyguard_evm::address_of(&public(&key)).unwrap();
    let backend = Arc::new(FlakyBackend {
        key,
        fail: AtomicBool::new(true),
    });
    let store = Store::open(&dir.path().join("db")).unwrap();
    let guard = Guard::new(&config, backend.clone(), store.audit_log());
    guard.restore_state(&store).unwrap();
    async fn send(
        g: &Guard,
        from: alloy_primitives::Address,
        nonce: u64,
    ) -> Result<(), GuardError> {
        let params = json!([{"from": from, "to": from, "gas": "0x5208", "value": "0xde0b6b3a7640000",
            "nonce": format!("{nonce:#x}"), "chainId": "0x7a69", "maxFeePerGas": "0x1",
            "maxPriorityFeePerGas": "0x1"}]);
        g.sign_evm_transaction(&caller(&["*"]), 31337, &params)
            .await
            .map(|_| ())
    }
    let velocity = |r: Result<_, GuardError>| {
        matches!(
            r,
            Err(GuardError::Rejected(Rejection::Policy {
                rule: "evm.velocity",
                ..
            }))
        )
    };

    // Three failed signatures reserve nothing for good.
    for n in 0..3 {
        assert!(matches!(
            send(&guard, from, n).await,
            Err(GuardError::Backend(_))
        ));
    }
    assert!(store.velocity_since(0).unwrap().is_empty());
    backend.fail.store(false, Ordering::SeqCst);
    send(&guard, from, 3).await.unwrap();
    send(&guard, from, 4).await.unwrap();
    assert!(
        velocity(send(&guard, from, 5).await),
        "2 ETH per day are spent"
    );
    assert_eq!(store.velocity_since(0).unwrap().len(), 2);

    // A new guard over the same store (a restart) still sees the spent window.
    let restarted = Guard::new(&config, backend.clone(), store.audit_log());
    restarted.restore_state(&store).unwrap();
    assert!(velocity(send(&restarted, from, 6).await));
}
