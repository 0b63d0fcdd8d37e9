//! Ordering invariants of the pipeline: rate limits answer before any decoding (a counting
//! test adapter, and junk that only the decoder would refuse), aliases share one budget, a
//! malformed Clef envelope is refused inside the pipeline and audited. Each with a negative
//! control. Fixture: `tests_pipeline.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyguard_chain::Rejection;
use serde_json::{json, Value};

use super::pipeline::{Adapter, Ask, Request, Who};
use super::tests_pipeline::{client, fixture, Chain};
use super::{family, Guard, GuardError};
use crate::store::AuditEntry;

/// A stand-in chain adapter that counts how often its decoder runs.
struct Counting {
    decodes: Arc<AtomicUsize>,
}

#[async_trait]
impl<'g> Adapter<'g> for Counting {
    type Out = ();
    async fn decide(
        &mut self,
        _: &'g Guard,
        _: Who<'_>,
        _: &mut AuditEntry,
    ) -> Result<Option<Ask>, GuardError> {
        self.decodes.fetch_add(1, Ordering::SeqCst);
        Err(Rejection::invalid("params", "decoded and refused").into())
    }
    async fn sign(&mut self, _: &'g Guard, _: &mut AuditEntry) -> Result<(), GuardError> {
        Ok(())
    }
}

async fn decodes_for_two_calls(limits: &str) -> (usize, Result<(), GuardError>) {
    let f = fixture(limits, false);
    let caller = client(Duration::ZERO);
    let decodes = Arc::new(AtomicUsize::new(0));
    let mut last = Ok(());
    for _ in 0..2 {
        let request = Request {
            who: Who::Client(&caller),
            method: "eth_signTypedData_v4",
            family: family::EVM_TYPED_DATA,
            chain: "eip155:31337".into(),
            key_hint: None,
        };
        let adapter = Counting {
            decodes: decodes.clone(),
        };
        last = f.guard.run(request, adapter).await;
    }
    (decodes.load(Ordering::SeqCst), last)
}

const ONE_PER_METHOD: &str = "[rate_limits]\nper_method = { per_second = 0.001, burst = 1 }\n";

#[tokio::test]
async fn a_rate_limited_request_never_reaches_its_decoder() {
    let (decodes, last) = decodes_for_two_calls(ONE_PER_METHOD).await;
    assert_eq!(decodes, 1);
    assert!(
        matches!(
            last,
            Err(GuardError::RateLimited {
                rule: "rate_limit.method",
                ..
            })
        ),
        "{last:?}"
    );
    // Negative control: without the limit the second call is decoded too.
    let (decodes, last) = decodes_for_two_calls("").await;
    assert_eq!(decodes, 2);
    assert!(matches!(last, Err(GuardError::Rejected(_))), "{last:?}");
}

#[tokio::test]
async fn every_chain_answers_a_rate_limit_before_decoding_and_audits_it() {
    // CometBFT is not rate limited (a validator that misses blocks is slashed), so: EVM and
    // Bitcoin. The second request is undecodable: a -32003 under `rate_limit.*` (not a
    // `request.invalid`) proves the decoder never saw it.
    for chain in [Chain::Evm, Chain::Bitcoin] {
        let f = fixture(ONE_PER_METHOD, false);
        let caller = client(Duration::ZERO);
        f.fire(chain, 0, &caller).await.unwrap();
        let junk = json!([{"psbt": "!!", "from": 7}]);
        let result = match chain {
            Chain::Evm => f
                .guard
                .sign_evm_transaction(&caller, 31337, &junk)
                .await
                .map(|_| ()),
            _ => f
                .guard
                .sign_bitcoin_psbt(&caller, &json!({"psbt": "!!", "key": "k"}))
                .await
                .map(|_| ()),
        };
        assert!(
            matches!(result, Err(GuardError::RateLimited { .. })),
            "{chain:?}: {result:?}"
        );
        let rows = f.rows().await;
        assert_eq!(
            rows[0].rule.as_deref(),
            Some("rate_limit.method"),
            "{chain:?}"
        );
        // Negative control: without limits the same junk reaches the decoder and is refused there.
        let f = fixture("", false);
        f.fire(chain, 0, &caller).await.unwrap();
        let result = match chain {
            Chain::Evm => f
                .guard
                .sign_evm_transaction(&caller, 31337, &junk)
                .await
                .map(|_| ()),
            _ => f
                .guard
                .sign_bitcoin_psbt(&caller, &json!({"psbt": "!!", "key": "k"}))
                .await
                .map(|_| ()),
        };
        assert!(
            matches!(result, Err(GuardError::Rejected(_))),
            "{chain:?}: {result:?}"
        );
    }
}

#[tokio::test]
async fn transaction_aliases_share_one_budget() {
    let f = fixture(ONE_PER_METHOD, false);
    let caller = client(Duration::ZERO);
    f.fire(Chain::Evm, 0, &caller).await.unwrap();
    let clef = json!([{"from": f.evm_from(), "to": f.evm_from(), "gas": "0x5208",
        "nonce": "0x1", "value": "0x2", "chainId": "0x7a69",
        "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1"}]);
    let alias = f
        .guard
        .sign_evm_tx(
            &caller,
            31337,
            "account_signTransaction",
            &clef,
            super::plain_decoder(super::decode_clef_transaction),
        )
        .await;
    assert!(
        matches!(
            alias,
            Err(GuardError::RateLimited {
                rule: "rate_limit.method",
                ..
            })
        ),
        "{alias:?}"
    );
    // Negative control: another operation (a message) has its own budget.
    let message = f
        .guard
        .sign_evm_digest(
            &caller,
            31337,
            "personal_sign",
            &json!(["0x68690a", f.evm_from()]),
            |p| super::DigestRequest::Message(keyguard_evm::decode_personal_sign(p)),
        )
        .await;
    assert!(
        !matches!(message, Err(GuardError::RateLimited { .. })),
        "{message:?}"
    );
}

#[tokio::test]
async fn a_malformed_clef_call_leaves_an_audit_row() {
    let f = fixture("", false);
    let caller = client(Duration::ZERO);
    let bad = f
        .guard
        .sign_evm_tx(
            &caller,
            31337,
            "account_signTransaction",
            &json!(["not", "an", "envelope"]),
            super::plain_decoder(super::decode_clef_transaction),
        )
        .await;
    assert!(matches!(bad, Err(GuardError::Rejected(_))), "{bad:?}");
    let rows = f.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].method, "account_signTransaction");
    assert_eq!(rows[0].rule.as_deref(), Some("request.invalid"));
    // Negative control: a well-formed Clef envelope signs (and is audited as signed).
    let good = json!([{"from": f.evm_from(), "to": f.evm_from(), "gas": "0x5208",
        "nonce": "0x0", "value": "0x2", "chainId": "0x7a69",
        "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1"}, Value::Null]);
    f.guard
        .sign_evm_tx(
            &caller,
            31337,
            "account_signTransaction",
            &good,
            super::plain_decoder(super::decode_clef_transaction),
        )
        .await
        .unwrap();
    assert_eq!(f.signed_rows().await, 1);
}
