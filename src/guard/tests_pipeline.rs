//! The pipeline's invariants, written once and run for every chain (EVM transaction, Bitcoin
//! PSBT, CometBFT vote): nothing leaves without its audit row; once `disable` returns nothing
//! leaves; a parked approval is not signed after the switch went off. The ordering invariants
//! (limits before decoding, alias budgets, Clef envelopes) are in `tests_ordering.rs`, on the
//! fixture here. Each test has a
//! negative control (the same request signing when the fault is absent). Signatures are
//! checked by the chains' own pass 2 and, for EVM, by recovering with k256 in `tests.rs`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k256::ecdsa::SigningKey;
use keyguard_bitcoin::bitcoin::secp256k1;
use keyguard_bitcoin::testkit::{build_single_psbt, foreign_script, to_base64};
use keyguard_bitcoin::ScriptKind;
use keyguard_chain::{KeyId, PublicKey, Signature, SigningPayload};
use keyguard_cometbft::{BlockId, BlockLimits, SignRequest, Timestamp, Vote, VoteType};
use serde_json::json;

use super::tests::{public, sign_prehash};
use super::{CometbftTarget, Guard, GuardError};
use crate::access::kill::{KillSwitch, ALL_KEYS};
use crate::access::Caller;
use crate::approvals::Approvals;
use crate::backend::{BackendError, KeyBackend, KeyInfo};
use crate::config::{Config, ResponseShape};
use crate::store::{Decision, StateDb, Store};

/// An honest backend with one secp256k1 key `k` (EVM and Bitcoin) and one ed25519 key `v`
/// (CometBFT); counts the signatures it makes.
pub(super) struct Honest {
    k: SigningKey,
    v: ed25519_dalek::SigningKey,
    signs: AtomicUsize,
    /// Signing waits for a permit: a test can hold a request inside the backend.
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl KeyBackend for Honest {
    fn name(&self) -> &'static str {
        "honest"
    }
    fn keys(&self) -> Vec<KeyInfo> {
        ["k", "v"]
            .into_iter()
            .map(|id| KeyInfo {
                id: KeyId::new(id).unwrap(),
                public_key: self.public_key(&KeyId::new(id).unwrap()).unwrap(),
            })
            .collect()
    }
    fn public_key(&self, key: &KeyId) -> Result<PublicKey, BackendError> {
        Ok(match key.as_str() {
            "v" => PublicKey::Ed25519(self.v.verifying_key().to_bytes()),
            _ => public(&self.k),
        })
    }
    async fn sign(&self, _: &KeyId, payload: &SigningPayload) -> Result<Signature, BackendError> {
        self.signs.fetch_add(1, Ordering::SeqCst);
        let _permit = self.gate.acquire().await;
        Ok(match payload {
            SigningPayload::Secp256k1Prehash(d) => sign_prehash(&self.k, d),
            SigningPayload::Ed25519Message(m) => {
                use ed25519_dalek::Signer;
                Signature::Ed25519(self.v.sign(m).to_bytes())
            }
            other => panic!("unexpected payload {other:?}"),
        })
    }
}

fn config(extra: &str, approval: bool) -> String {
    let evm_approval = if approval {
        "require_approval = { above = \"1 wei\", approvers = 1, group = \"treasury\", within = \"1h\" }"
    } else {
        ""
    };
    let btc_approval = if approval {
        "require_approval = { above = \"1 sat\", approvers = 1, group = \"treasury\", within = \"1h\" }"
    } else {
        ""
    };
    format!(
        r#"
[data]
dir = "unused"
[keystore]
backend = "software"
{extra}
[[policies]]
name = "p"
keys = ["k"]
[policies.evm]
chain_ids = [31337]
to = "any"
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
{evm_approval}
[policies.bitcoin]
network = "regtest"
destinations = "any"
max_spend_per_tx = "1 btc"
max_spend_per_window = "1000 btc"
max_fee = "100000 sat"
max_feerate_sat_vb = 1000
{btc_approval}
"#
    )
}

pub(super) struct Fix {
    _dir: tempfile::TempDir,
    pub(super) store: Store,
    db: StateDb,
    pub(super) guard: Arc<Guard>,
    kill: Arc<KillSwitch>,
    approvals: Approvals,
    backend: Arc<Honest>,
    target: CometbftTarget,
}

pub(super) fn fixture(extra: &str, approval: bool) -> Fix {
    fixture_gated(extra, approval, tokio::sync::Semaphore::MAX_PERMITS)
}

fn fixture_gated(extra: &str, approval: bool, permits: usize) -> Fix {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(Path::new("t.toml"), &config(extra, approval)).unwrap();
    let backend = Arc::new(Honest {
        k: SigningKey::from_slice(&[1; 32]).unwrap(),
        v: ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
        signs: AtomicUsize::new(0),
        gate: tokio::sync::Semaphore::new(permits),
    });
    let store = Store::open(&dir.path().join("db")).unwrap();
    let db = store.state_db().unwrap();
    db.add_user(
        "ann",
        &["approver".into()],
        &["treasury".into()],
        &[7u8; 20],
    )
    .unwrap();
    let approvals = Approvals::new(db.clone());
    let kill = Arc::new(KillSwitch::default());
    let guard = Guard::new(&config, backend.clone(), store.audit_log())
        .with_people(kill.clone(), approvals.clone())
        .with_cometbft(store.watermarks());
    let target = CometbftTarget {
        name: "validator".into(),
        chain_id: "c".into(),
        key: KeyId::new("v").unwrap(),
        public_key: backend.public_key(&KeyId::new("v").unwrap()).unwrap(),
        limits: BlockLimits {
            start_height: Some(1),
            ..BlockLimits::default()
        },
        new_validator: true,
    };
    Fix {
        _dir: dir,
        store,
        db,
        guard: Arc::new(guard),
        kill,
        approvals,
        backend,
        target,
    }
}

pub(super) fn client(wait: Duration) -> Caller {
    Caller {
        name: "app".into(),
        grants: vec!["*".to_string()].into(),
        response: ResponseShape::Raw,
        approval_wait: wait,
        scope: None,
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Chain {
    Evm,
    Bitcoin,
    Cometbft,
}

const CHAINS: [Chain; 3] = [Chain::Evm, Chain::Bitcoin, Chain::Cometbft];

impl Fix {
    pub(super) fn evm_from(&self) -> String {
        keyguard_evm::address_of(&public(&self.backend.k))
            .unwrap()
            .to_string()
    }

    /// One valid request of `chain`, distinct for every `n` (nonce, outpoint, height).
    pub(super) async fn fire(
        &self,
        chain: Chain,
        n: u64,
        caller: &Caller,
    ) -> Result<(), GuardError> {
        match chain {
            Chain::Evm => {
                let from = self.evm_from();
                let params = json!([{"from": from, "to": from, "gas": "0x5208",
                    "nonce": format!("{n:#x}"), "value": "0x2", "chainId": "0x7a69",
                    "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1"}]);
                self.guard
                    .sign_evm_transaction(caller, 31337, &params)
                    .await
                    .map(|_| ())
            }
            Chain::Bitcoin => {
                let point = match public(&self.backend.k) {
                    PublicKey::Secp256k1(p) => p,
                    _ => unreachable!(),
                };
                let key = secp256k1::PublicKey::from_slice(&point).unwrap();
                // A different previous output each time: no conflict between requests.
                let psbt = build_single_psbt(
                    &key,
                    &[(ScriptKind::P2wpkh, 100_000 + n)],
                    &[(foreign_script(1), 50_000)],
                    Some(49_000 + n),
                );
                let params = json!({ "psbt": to_base64(&psbt), "key": "k" });
                self.guard
                    .sign_bitcoin_psbt(caller, &params)
                    .await
                    .map(|_| ())
            }
            Chain::Cometbft => {
                let vote = SignRequest::Vote(Vote {
                    vote_type: VoteType::Prevote,
                    height: 1 + n as i64,
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
                self.guard
                    .sign_cometbft(&self.target, "c", vote, false)
                    .await
                    .map(|_| ())
            }
        }
    }

    pub(super) async fn rows(&self) -> Vec<crate::store::AuditRow> {
        self.store.audit_log().flush().await.ok();
        self.store.recent_audit(100_000).unwrap()
    }

    pub(super) async fn signed_rows(&self) -> usize {
        self.rows()
            .await
            .iter()
            .filter(|r| r.decision == Decision::Signed)
            .count()
    }
}

#[tokio::test]
async fn nothing_leaves_without_its_audit_row_on_any_chain() {
    for chain in CHAINS {
        let f = fixture("", false);
        let caller = client(Duration::ZERO);
        // Negative control: with a working audit writer the same request signs and is audited.
        f.fire(chain, 0, &caller).await.unwrap();
        assert_eq!(f.signed_rows().await, 1, "{chain:?}");

        // A writer that refuses every append.
        f.store.audit_log().shutdown().await.unwrap();
        let signs_before = f.backend.signs.load(Ordering::SeqCst);
        match f.fire(chain, 1, &caller).await {
            Err(GuardError::Backend(reason)) => {
                assert!(reason.contains("withheld"), "{chain:?}: {reason}")
            }
            other => panic!("{chain:?}: released without an audit row: {other:?}"),
        }
        // The backend did sign: the signature existed and was withheld.
        assert!(
            f.backend.signs.load(Ordering::SeqCst) > signs_before,
            "{chain:?}"
        );
        assert_eq!(f.store.recent_audit(10).unwrap().len(), 1, "{chain:?}");
        if let Chain::Cometbft = chain {
            let height = f.store.watermarks().load("c", "v").unwrap().unwrap();
            assert_eq!(height.state.height, 1, "watermark moved without its row");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_disable_returns_nothing_leaves_on_any_chain() {
    for chain in CHAINS {
        let f = Arc::new(fixture("", false));
        let stop = Arc::new(AtomicBool::new(false));
        let off = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let oks = Arc::new(AtomicUsize::new(0));
        let after = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (f, stop, off, next, oks, after) = (
                f.clone(),
                stop.clone(),
                off.clone(),
                next.clone(),
                oks.clone(),
                after.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let caller = client(Duration::ZERO);
                while !stop.load(Ordering::SeqCst) {
                    let started_after_disable = off.load(Ordering::SeqCst);
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let result = f.fire(chain, n, &caller).await;
                    if result.is_ok() {
                        oks.fetch_add(1, Ordering::SeqCst);
                    }
                    if started_after_disable {
                        after.fetch_add(1, Ordering::SeqCst);
                        assert!(
                            matches!(result, Err(GuardError::KeyDisabled(_))),
                            "{chain:?}: a request after disable returned got {result:?}"
                        );
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        // Negative control: the load signs before the switch.
        while oks.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        f.kill.disable(ALL_KEYS, "test").await.unwrap();
        off.store(true, Ordering::SeqCst);
        let signed_at_disable = f.signed_rows().await;
        while after.load(Ordering::SeqCst) < 50 {
            tokio::task::yield_now().await;
        }
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        assert!(signed_at_disable >= 3, "{chain:?}");
        assert_eq!(f.signed_rows().await, signed_at_disable, "{chain:?}");
        // And the same load signs again once the switch is back on.
        f.kill.enable(ALL_KEYS, "test").unwrap();
        let n = next.fetch_add(1_000, Ordering::SeqCst) + 500;
        f.fire(chain, n, &client(Duration::ZERO)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_returns_only_after_a_request_in_flight_has_settled_on_every_chain() {
    for chain in CHAINS {
        let f = Arc::new(fixture_gated("", false, 0));
        let request = {
            let f = f.clone();
            tokio::spawn(async move { f.fire(chain, 0, &client(Duration::ZERO)).await })
        };
        // The request is inside the backend, holding its pass.
        while f.backend.signs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let disable = {
            let kill = f.kill.clone();
            tokio::spawn(async move { kill.disable(ALL_KEYS, "test").await })
        };
        while !f.kill.is_disabled(None) {
            tokio::task::yield_now().await;
        }
        // Give a (wrong) disable that does not wait every chance to return first.
        for _ in 0..10_000 {
            if disable.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        // While the request is held inside the backend, disable has not returned.
        assert!(
            !disable.is_finished(),
            "{chain:?}: disable returned with a request in flight"
        );
        // Let the backend answer: the request, admitted before the switch went off, may sign,
        // and its row is committed before disable returns.
        f.backend.gate.add_permits(1_000);
        disable.await.unwrap().unwrap();
        // Committed rows only (no flush): a row merely queued when disable returned does not
        // count, so a pass dropped before the audit commit fails here.
        let signed_when_disable_returned = f
            .store
            .recent_audit(10)
            .unwrap()
            .iter()
            .filter(|r| r.decision == Decision::Signed)
            .count();
        request.await.unwrap().unwrap();
        assert_eq!(signed_when_disable_returned, 1, "{chain:?}");
        assert_eq!(f.signed_rows().await, 1, "{chain:?}");
    }
}

async fn pending_id(f: &Fix) -> String {
    loop {
        if let Some(a) = f.approvals.pending(crate::store::now_ms()).unwrap().first() {
            return a.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// EVM and Bitcoin (CometBFT never waits for people: consensus cannot).
async fn parked(chain: Chain, switch_off: bool) -> (Result<(), GuardError>, usize, usize) {
    let f = Arc::new(fixture("", true));
    let task = {
        let f = f.clone();
        tokio::spawn(async move { f.fire(chain, 0, &client(Duration::from_secs(60))).await })
    };
    let id = pending_id(&f).await;
    if switch_off {
        // Returns although a request is parked: the wait holds no pass (a hang here, caught
        // by the timeout, would be the old behaviour: disable waiting for a human).
        tokio::time::timeout(Duration::from_secs(30), f.kill.disable(ALL_KEYS, "SIGUSR1"))
            .await
            .expect("disable waited for a parked approval")
            .unwrap();
    }
    let ann = f.db.user("ann").unwrap().unwrap();
    // The approval may arrive after the switch went off; the request must still not sign.
    let _ = f.approvals.vote(&id, &ann, true, crate::store::now_ms());
    let result = task.await.unwrap();
    (
        result,
        f.signed_rows().await,
        f.backend.signs.load(Ordering::SeqCst),
    )
}

#[tokio::test]
async fn a_parked_approval_is_not_signed_after_the_switch_goes_off() {
    for chain in [Chain::Evm, Chain::Bitcoin] {
        let (result, signed, signs) = parked(chain, true).await;
        assert!(
            matches!(result, Err(GuardError::KeyDisabled(_))),
            "{chain:?}: {result:?}"
        );
        assert_eq!((signed, signs), (0, 0), "{chain:?}");
        // Negative control: the same parked request signs once approved, switch on.
        let (result, signed, signs) = parked(chain, false).await;
        result.unwrap();
        assert_eq!(signed, 1, "{chain:?}");
        assert!(signs >= 1, "{chain:?}");
    }
}

#[tokio::test]
async fn a_disabled_validator_key_is_refused_and_audited() {
    let f = fixture("", false);
    f.kill.disable("v", "test").await.unwrap();
    let result = f.fire(Chain::Cometbft, 0, &client(Duration::ZERO)).await;
    assert!(
        matches!(result, Err(GuardError::KeyDisabled(_))),
        "{result:?}"
    );
    let rows = f.rows().await;
    assert_eq!(rows[0].rule.as_deref(), Some("admin.kill_switch"));
    assert_eq!(f.backend.signs.load(Ordering::SeqCst), 0);
    // Negative control: back on, the same vote signs.
    f.kill.enable("v", "test").unwrap();
    f.fire(Chain::Cometbft, 0, &client(Duration::ZERO))
        .await
        .unwrap();
}
