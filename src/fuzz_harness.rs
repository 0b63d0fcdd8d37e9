//! Decoder harnesses shared by the cargo-fuzz targets in `fuzz/` and the corpus-replay test
//! (`tests/fuzz_corpus.rs`), so CI replays exactly what the fuzzer ran. Each takes arbitrary
//! bytes, must never panic, and asserts the invariants a decoder promises.
#![doc(hidden)]

use alloy_eips::eip2718::{Decodable2718, Encodable2718};
use std::path::Path;

/// `eth_signTransaction` params: decoding either refuses with a named field or yields an intent
/// whose payload, summary and policy check are computable; a signature attached to it passes
/// pass 2 only if it really is the intent's.
pub fn evm_transaction_args(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let params = match value {
        serde_json::Value::Array(_) => value,
        other => serde_json::Value::Array(vec![other]),
    };
    match keyguard_evm::decode_sign_transaction_params(&params) {
        Ok(intent) => {
            let _ = intent.payload();
            let _ = intent.summary();
            let policy: keyguard_evm::EvmPolicy = toml::from_str(PERMISSIVE).expect("static");
            let _ = policy.check(&intent);
            // A fixed, unrelated signature must never pass pass 2.
            let sig = keyguard_chain::Signature::Secp256k1 {
                r: [1; 32],
                s: [1; 32],
                recovery_id: 0,
            };
            assert!(keyguard_evm::finalize(&intent, &sig).is_err());
        }
        Err(keyguard_chain::Rejection::InvalidParams { field, .. }) => {
            assert!(!field.is_empty(), "a refusal must name its field");
        }
        Err(other) => panic!("decoding returned a policy refusal: {other:?}"),
    }
}

const PERMISSIVE: &str = r#"
chain_ids = [1, 31337]
to = "any"
max_value = "1 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
contract_creation = true
"#;

/// Signed-transaction bytes, as pass 2 re-decodes them: whatever decodes must re-encode to the
/// same bytes (otherwise two encodings would map to one transaction).
pub fn evm_signed_transaction(data: &[u8]) {
    let mut buf = data;
    if let Ok(envelope) = alloy_consensus::TxEnvelope::decode_2718(&mut buf) {
        let consumed = &data[..data.len() - buf.len()];
        assert_eq!(envelope.encoded_2718(), consumed, "re-encoding differs");
    }
}

/// Configuration text: parsing either fails with a located message or yields a config whose
/// full problem list is computable.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match crate::config::Config::parse(Path::new("fuzz.toml"), text) {
        Ok(config) => assert!(config.problems().is_empty()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// A harness: arbitrary bytes in, a panic on a broken invariant.
pub type Harness = fn(&[u8]);

/// Every harness by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Harness)] = &[
    ("evm_transaction_args", evm_transaction_args),
    ("evm_signed_transaction", evm_signed_transaction),
    ("config_toml", config_toml),
    ("privval_decode", privval_decode),
];

/// Any bytes through the CometBFT privval decoder of every wire version, then the block-field
/// rules, the watermark decision and the sign-bytes encoder: nothing may panic.
pub fn privval_decode(data: &[u8]) {
    keyguard_cometbft::fuzzing::exercise(data);
}
