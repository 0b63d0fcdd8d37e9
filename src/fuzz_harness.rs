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
    ("bitcoin_psbt", bitcoin_psbt),
    ("privval_decode", privval_decode),
    ("evm_typed_data", evm_typed_data),
    ("evm_abi_calldata", evm_abi_calldata),
    ("evm_typed_shapes", evm_typed_shapes),
    ("signet_block", signet_block),
];

/// `1 <G> 1 CHECKMULTISIG`: a challenge with a fixed key (the generator point).
const SIGNET_CHALLENGE: &str =
    "51210279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f8179851ae";

/// Signet blocks (first byte even) and miner block PSBTs (odd), as `btc_signSignetBlock` and
/// `btc_signPsbt` decode them: a refusal names its field; whatever decodes has a computable
/// commitment and summary, goes through the block and chain rules without panicking, and a
/// bogus signature never passes pass 2.
pub fn signet_block(data: &[u8]) {
    use keyguard_bitcoin::bitcoin::base64::prelude::{Engine as _, BASE64_STANDARD};
    use keyguard_bitcoin::signet::{decode_block, Challenge};
    use keyguard_bitcoin::signet_finalize;
    use keyguard_bitcoin::signet_rules::{ChainProofs, SignetPolicy};
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let script = keyguard_bitcoin::bitcoin::ScriptBuf::from_hex(SIGNET_CHALLENGE).expect("static");
    let challenge = Challenge::parse(script).expect("static");
    let decoded = if mode % 2 == 0 {
        decode_block(rest, &challenge)
    } else {
        signet_finalize::parse_block_psbt(&BASE64_STANDARD.encode(rest))
            .and_then(|p| signet_finalize::decode_psbt(&p, &challenge))
    };
    match decoded {
        Ok(block) => {
            let _ = block.summary();
            let _ = block.payload(&challenge);
            let policy: SignetPolicy = toml::from_str(&format!(
                "challenge = \"{SIGNET_CHALLENGE}\"\nstart_height = 1\npayout = [\"script:00\"]"
            ))
            .expect("static");
            let _ = policy.check_block(&block, 0, None);
            let _ = policy.check_chain(&block, None, &ChainProofs::default());
            let sig = keyguard_chain::Signature::Secp256k1 {
                r: [1; 32],
                s: [1; 32],
                recovery_id: 0,
            };
            let keyguard_bitcoin::signet::ChallengeKind::Multisig { keys } = &challenge.kind else {
                unreachable!("static multisig challenge")
            };
            assert!(signet_finalize::finalize(&block, &challenge, &keys[0], &sig).is_err());
        }
        Err(keyguard_chain::Rejection::InvalidParams { field, .. }) => {
            assert!(!field.is_empty(), "a refusal must name its field");
        }
        Err(keyguard_chain::Rejection::Policy { field, .. }) => {
            assert!(!field.is_empty(), "a refusal must name its field");
        }
    }
}

/// Hostile typed-data *shapes* ([`crate::fuzz_shapes`]: type chains, diamonds, cycles, huge
/// arrays, long strings) from a few bytes, decoded on a thread with a tokio worker's 2 MiB
/// stack: the decoder refuses with a named field or hashes within the work bound, and its hash
/// equals alloy's reference `eip712_signing_hash` (safe to call once the caps passed).
pub fn evm_typed_shapes(data: &[u8]) {
    let shape = crate::fuzz_shapes::Shape::from_bytes(data);
    let typed = shape.typed_data();
    let outcome = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || typed_shape_outcome(&typed))
        .expect("spawn")
        .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn typed_shape_outcome(typed: &serde_json::Value) {
    use keyguard_evm::typed_bounds;
    let from = "0x0000000000000000000000000000000000000001";
    match keyguard_evm::decode_typed_data_params(&serde_json::json!([from, typed])) {
        Ok(intent) => {
            let (hash, work) = typed_bounds::signing_hash(&intent.data).expect("hashed once");
            assert_eq!(hash, intent.hash);
            assert!(work.type_hashes <= typed_bounds::MAX_TYPES, "{work:?}");
            assert!(work.words <= 2 * typed_bounds::MAX_VALUES, "{work:?}");
            let reference = intent.data.eip712_signing_hash().expect("reference hash");
            assert_eq!(hash, reference, "bounded hash differs from alloy's");
        }
        Err(keyguard_chain::Rejection::InvalidParams { field, reason }) => {
            assert!(!field.is_empty() && !reason.is_empty(), "unnamed refusal");
        }
        Err(other) => panic!("decoding returned a policy refusal: {other:?}"),
    }
}

/// `eth_signTypedData_v4` params: decoding refuses with a named field or yields an intent whose
/// hash is a pure function of the input (decoding twice gives the same hash), whose summary and
/// policy check are computable, and which no unrelated signature finalizes.
pub fn evm_typed_data(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let params = match value {
        serde_json::Value::Array(_) => value,
        other => serde_json::json!(["0x0000000000000000000000000000000000000001", other]),
    };
    match keyguard_evm::decode_typed_data_params(&params) {
        Ok(intent) => {
            let again = keyguard_evm::decode_typed_data_params(&params).expect("decoded once");
            assert_eq!(
                intent.hash, again.hash,
                "typed-data hash is not deterministic"
            );
            let _ = intent.summary();
            static POLICY: std::sync::OnceLock<keyguard_evm::EvmPolicy> =
                std::sync::OnceLock::new();
            let policy = POLICY.get_or_init(|| {
                toml::from_str(&format!("{PERMISSIVE}{TYPED_RULE}")).expect("static")
            });
            if let Err(keyguard_chain::Rejection::Policy { field, rule, .. }) =
                policy.check_typed_data(&intent)
            {
                assert!(!field.is_empty() && !rule.is_empty(), "unnamed refusal");
            }
        }
        Err(keyguard_chain::Rejection::InvalidParams { field, .. }) => {
            assert!(!field.is_empty(), "a refusal must name its field");
        }
        Err(other) => panic!("decoding returned a policy refusal: {other:?}"),
    }
}

const TYPED_RULE: &str = r#"
[[typed_data]]
name = "any"
allow_unlimited_approval = false
"#;

/// Calldata against the shipped ERC-20/721 ABIs and the example dispute-game factory ABI. The
/// first byte picks a function (so the fuzzer need not find selectors), the rest is its argument
/// encoding: whatever decodes must be exactly the canonical encoding of what it decoded to, and
/// must render as JSON.
pub fn evm_abi_calldata(data: &[u8]) {
    use std::sync::OnceLock;
    static ABIS: OnceLock<Vec<(keyguard_evm::abi::Abi, Vec<[u8; 4]>)>> = OnceLock::new();
    let abis = ABIS.get_or_init(|| {
        [
            ("erc20", keyguard_evm::abi::ERC20_JSON),
            ("erc721", keyguard_evm::abi::ERC721_JSON),
            (
                "dispute-game-factory",
                include_str!("../configs/abi/dispute-game-factory.json"),
            ),
        ]
        .into_iter()
        .map(|(name, json)| {
            let abi = keyguard_evm::abi::Abi::from_json(name, json).expect("shipped ABI");
            let selectors = abi
                .function_signatures()
                .iter()
                .map(|sig| {
                    let h = alloy_primitives::keccak256(sig.as_bytes());
                    [h[0], h[1], h[2], h[3]]
                })
                .collect();
            (abi, selectors)
        })
        .collect()
    });
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let total: usize = abis.iter().map(|(_, s)| s.len()).sum();
    let mut n = pick as usize % (total + 1);
    for (abi, selectors) in abis {
        // n == total: the raw bytes themselves, selector included.
        let input = if n == total {
            rest.to_vec()
        } else if n < selectors.len() {
            [&selectors[n][..], rest].concat()
        } else {
            n -= selectors.len();
            continue;
        };
        if let Ok(call) = abi.decode(&input) {
            let _ = call.to_json();
            assert_eq!(
                &input[..4],
                &alloy_primitives::keccak256(call.signature.as_bytes())[..4]
            );
        }
        if n != total {
            return;
        }
    }
}

/// Any bytes through the CometBFT privval decoder of every wire version, then the block-field
/// rules, the watermark decision and the sign-bytes encoder: nothing may panic.
pub fn privval_decode(data: &[u8]) {
    keyguard_cometbft::fuzzing::exercise(data);
}

/// A PSBT (v0 or v2, raw bytes): strict parsing refuses or yields a PSBT that re-encodes and
/// re-parses to the same transaction; decoding against a fixed wallet (BIP84/86 account 0 of the
/// all-"abandon" seed) refuses with a named field or rule, or yields an intent whose summary and
/// policy check are computable; a fixed bogus signature never passes pass 2.
pub fn bitcoin_psbt(data: &[u8]) {
    use keyguard_bitcoin::bitcoin::bip32::{Fingerprint, Xpub};
    use keyguard_bitcoin::{wallet, Wallet};
    use std::str::FromStr;
    let Ok((psbt, format)) = keyguard_bitcoin::decode::parse_psbt_bytes(data) else {
        return;
    };
    let b64 = keyguard_bitcoin::encode_psbt(&psbt, &format).expect("a parsed PSBT re-encodes");
    let (again, _) = keyguard_bitcoin::parse_psbt(&b64).expect("a re-encoded PSBT parses");
    assert_eq!(
        again.unsigned_tx, psbt.unsigned_tx,
        "round trip changed the transaction"
    );
    let accounts = [
        (wallet::ScriptKind::P2wpkh, BIP84_XPUB),
        (wallet::ScriptKind::P2tr, BIP86_XPUB),
    ]
    .into_iter()
    .map(|(kind, xpub)| wallet::Account {
        kind,
        path: wallet::account_path(kind, keyguard_bitcoin::bitcoin::Network::Bitcoin, 0)
            .expect("static"),
        xpub: Xpub::from_str(xpub).expect("static"),
    })
    .collect();
    let wallet = Wallet {
        fingerprint: Fingerprint::from_str("73c5da0a").expect("static"),
        network: keyguard_bitcoin::bitcoin::Network::Bitcoin,
        accounts,
        max_index: 1000,
        change_gap: 100,
        single: None,
    };
    match keyguard_bitcoin::decode::decode_parsed(psbt, format, &wallet) {
        Ok(intent) => {
            let _ = intent.summary();
            let policy: keyguard_bitcoin::BitcoinPolicy =
                toml::from_str(BITCOIN_PERMISSIVE).expect("static");
            let _ = policy.check(&intent, 0);
            if !intent.jobs.is_empty() {
                let bogus: Vec<_> = intent
                    .jobs
                    .iter()
                    .map(|_| keyguard_chain::Signature::Bip340([1; 64]))
                    .collect();
                assert!(keyguard_bitcoin::finalize(&intent, &bogus, true).is_err());
            }
        }
        Err(keyguard_chain::Rejection::InvalidParams { field, .. }) => assert!(!field.is_empty()),
        Err(keyguard_chain::Rejection::Policy { field, .. }) => assert!(!field.is_empty()),
    }
}

const BIP84_XPUB: &str = "xpub6CatWdiZiodmUeTDp8LT5or8nmbKNcuyvz7WyksVFkKB4RHwCD3XyuvPEbvqAQY3rAPshWcMLoP2fMFMKHPJ4ZeZXYVUhLv1VMrjPC7PW6V";
const BIP86_XPUB: &str = "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ";
const BITCOIN_PERMISSIVE: &str = r#"
network = "bitcoin"
destinations = "any"
allow_foreign_inputs = true
max_spend_per_tx = "21000000 btc"
max_fee = "21000000 btc"
max_feerate_sat_vb = 100000000
max_fee_percent = 100
max_op_return = 10
"#;
