//! Replays every fuzz target's corpus (`fuzz/corpus/<target>/`) through the same harness the
//! fuzzer runs, so an input that once crashed a decoder fails CI if it ever crashes again; then
//! checks properties of the same inputs against a second implementation, so "no panic" is not
//! all the corpus proves:
//!
//! - privval frames: a second protobuf decoder (tendermint-proto) re-encodes every frame it
//!   reads to a fixed point, byte for byte where the input was canonical; every vote or
//!   proposal keyguard accepts has keyguard's sign bytes equal to tendermint-rs's.
//! - signed transactions: whatever alloy decodes, libsecp256k1 (C) and k256 (Rust) recover the
//!   same signer, and it is the one alloy reports.
//! - ABI calldata: every call keyguard decodes is re-encoded by a hand-written ABI encoder here
//!   and must equal the input (keyguard accepts only canonical calldata).
//! - PSBTs: keyguard's parse -> encode is a fixed point, and byte for byte for v0 PSBTs that
//!   rust-bitcoin serializes canonically.
//! - Bitcoin pass 2: a bogus signature of the right scheme for every input fails on
//!   verification (not on "wrong signature kind").

use std::path::{Path, PathBuf};

use keyguard::fuzz_harness::TARGETS;

fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (every target needs a seed corpus)", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            (path, data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_fuzz_corpus_replays_cleanly() {
    for (name, harness) in TARGETS {
        let entries = corpus(name);
        for (path, data) in &entries {
            let outcome = std::panic::catch_unwind(|| harness(data));
            assert!(
                outcome.is_ok(),
                "{name}: {} makes the harness panic",
                path.display()
            );
        }
        assert!(!entries.is_empty(), "{name}: empty corpus");
    }
}

#[test]
fn privval_frames_round_trip_and_sign_bytes_match_tendermint_rs() {
    use keyguard_cometbft::wire::{decode_bytes, Request, WireVersion};
    use keyguard_cometbft::SignRequest;
    use prost::Message;
    use tendermint_proto::v0_38::privval::{message::Sum, Message as Frame};

    let (mut decoded, mut canonical, mut compared) = (0, 0, 0);
    for (path, data) in corpus("privval_decode") {
        let Ok(frame) = Frame::decode(&data[..]) else {
            continue;
        };
        decoded += 1;
        let again = frame.encode_to_vec();
        let reread = Frame::decode(&again[..]).expect("a re-encoded frame decodes");
        assert_eq!(reread, frame, "{}: not a fixed point", path.display());
        assert_eq!(reread.encode_to_vec(), again, "{}", path.display());
        if again == data {
            canonical += 1;
        }
        let Ok(request) = decode_bytes(WireVersion::V0_38, &data) else {
            continue;
        };
        let (ours, theirs) = match (request, frame.sum) {
            (Request::SignVote { chain_id, vote, .. }, Some(Sum::SignVoteRequest(r))) => {
                let (Ok(id), Some(Ok(v))) = (
                    tendermint::chain::Id::try_from(chain_id.clone()),
                    r.vote.map(tendermint::vote::Vote::try_from),
                ) else {
                    continue;
                };
                (
                    SignRequest::Vote(vote).sign_bytes(&chain_id),
                    v.into_signable_vec(id),
                )
            }
            (
                Request::SignProposal {
                    chain_id, proposal, ..
                },
                Some(Sum::SignProposalRequest(r)),
            ) => {
                let (Ok(id), Some(Ok(p))) = (
                    tendermint::chain::Id::try_from(chain_id.clone()),
                    r.proposal.map(tendermint::proposal::Proposal::try_from),
                ) else {
                    continue;
                };
                (
                    SignRequest::Proposal(proposal).sign_bytes(&chain_id),
                    p.into_signable_vec(id),
                )
            }
            (Request::SignVote { .. } | Request::SignProposal { .. }, sum) => {
                panic!(
                    "{}: keyguard read a sign request, tendermint-proto read {sum:?}",
                    path.display()
                )
            }
            _ => continue,
        };
        assert_eq!(ours, theirs, "{}: sign bytes differ", path.display());
        compared += 1;
    }
    eprintln!("privval corpus: {decoded} frames decoded, {canonical} canonical, {compared} sign bytes compared");
    assert!(
        canonical > 0 && compared > 0,
        "the corpus exercised nothing"
    );
}

#[test]
fn signed_transactions_recover_the_same_signer_in_libsecp256k1() {
    use alloy_consensus::transaction::SignerRecoverable;
    use alloy_eips::eip2718::Decodable2718;
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};

    let secp = secp256k1::Secp256k1::verification_only();
    let mut compared = 0;
    for (path, data) in corpus("evm_signed_transaction") {
        let mut buf = &data[..];
        let Ok(tx) = alloy_consensus::TxEnvelope::decode_2718(&mut buf) else {
            continue;
        };
        let sig = tx.signature();
        let mut compact = [0u8; 64];
        compact[..32].copy_from_slice(&sig.r().to_be_bytes::<32>());
        compact[32..].copy_from_slice(&sig.s().to_be_bytes::<32>());
        let theirs = RecoveryId::try_from(i32::from(sig.v()))
            .and_then(|id| RecoverableSignature::from_compact(&compact, id))
            .and_then(|rs| {
                let msg = secp256k1::Message::from_digest(tx.signature_hash().0);
                secp.recover_ecdsa(&msg, &rs)
            })
            .map(|pk| {
                let hash = alloy_primitives::keccak256(&pk.serialize_uncompressed()[1..]);
                alloy_primitives::Address::from_slice(&hash[12..])
            });
        let rust = k256::ecdsa::Signature::from_slice(&compact)
            .ok()
            .zip(k256::ecdsa::RecoveryId::from_byte(u8::from(sig.v())))
            .and_then(|(s, id)| {
                k256::ecdsa::VerifyingKey::recover_from_prehash(&tx.signature_hash().0, &s, id).ok()
            })
            .map(|vk| {
                let point = vk.to_encoded_point(false);
                let hash = alloy_primitives::keccak256(&point.as_bytes()[1..]);
                alloy_primitives::Address::from_slice(&hash[12..])
            });
        let high_s = sig.normalize_s().is_some();
        match (&theirs, &rust) {
            (Ok(a), Some(b)) => assert_eq!(a, b, "{}: recovered signers differ", path.display()),
            (Err(_), None) => {}
            // The two libraries may treat a high-s signature differently; neither is released
            // (pass 2 refuses high s).
            _ if high_s => {}
            (a, b) => panic!("{}: libsecp256k1 {a:?}, k256 {b:?}", path.display()),
        }
        match (tx.recover_signer(), theirs) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{}: alloy's signer differs", path.display()),
            (Err(_), Err(_)) => {}
            _ if high_s => {}
            (a, b) => panic!("{}: alloy {a:?}, libsecp256k1 {b:?}", path.display()),
        }
        compared += 1;
    }
    assert!(compared > 0, "no signed transaction in the corpus decoded");
}

/// ABI-encodes `values` as a tuple (the argument list), per the Solidity ABI spec: static
/// values in place, dynamic ones as an offset to their tail. Written from the spec, not from
/// alloy-dyn-abi (whose decoder is under test).
fn abi_encode(values: &[alloy_dyn_abi::DynSolValue]) -> Vec<u8> {
    let head_len: usize = values.iter().map(head_size).sum();
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    for v in values {
        if is_dynamic(v) {
            head.extend_from_slice(&word_usize(head_len + tail.len()));
            tail.extend(abi_value(v));
        } else {
            head.extend(abi_value(v));
        }
    }
    head.extend(tail);
    head
}

fn is_dynamic(v: &alloy_dyn_abi::DynSolValue) -> bool {
    use alloy_dyn_abi::DynSolValue as V;
    match v {
        V::Bytes(_) | V::String(_) | V::Array(_) => true,
        V::FixedArray(xs) | V::Tuple(xs) => xs.iter().any(is_dynamic),
        _ => false,
    }
}

fn head_size(v: &alloy_dyn_abi::DynSolValue) -> usize {
    use alloy_dyn_abi::DynSolValue as V;
    match v {
        _ if is_dynamic(v) => 32,
        V::FixedArray(xs) | V::Tuple(xs) => xs.iter().map(head_size).sum(),
        _ => 32,
    }
}

fn word_usize(n: usize) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[24..].copy_from_slice(&(n as u64).to_be_bytes());
    w
}

fn padded(bytes: &[u8]) -> Vec<u8> {
    let mut out = word_usize(bytes.len()).to_vec();
    out.extend_from_slice(bytes);
    out.resize(32 + bytes.len().div_ceil(32) * 32, 0);
    out
}

fn abi_value(v: &alloy_dyn_abi::DynSolValue) -> Vec<u8> {
    use alloy_dyn_abi::DynSolValue as V;
    match v {
        V::Bool(b) => word_usize(usize::from(*b)).to_vec(),
        V::Uint(n, _) => n.to_be_bytes::<32>().to_vec(),
        V::Int(n, _) => n.to_be_bytes::<32>().to_vec(),
        V::Address(a) => [&[0u8; 12][..], a.as_slice()].concat(),
        V::FixedBytes(w, _) => w.to_vec(),
        V::Function(f) => [f.as_slice(), &[0u8; 8][..]].concat(),
        V::Bytes(b) => padded(b),
        V::String(s) => padded(s.as_bytes()),
        V::Array(xs) => [&word_usize(xs.len())[..], &abi_encode(xs)].concat(),
        V::FixedArray(xs) | V::Tuple(xs) => abi_encode(xs),
        #[allow(unreachable_patterns)]
        other => panic!("no such type in the shipped ABIs: {other:?}"),
    }
}

#[test]
fn decoded_calldata_is_what_a_second_abi_encoder_writes() {
    use keyguard_evm::abi::Abi;
    let abis: Vec<(Abi, Vec<[u8; 4]>)> = [
        ("erc20", keyguard_evm::abi::ERC20_JSON),
        ("erc721", keyguard_evm::abi::ERC721_JSON),
        (
            "dispute-game-factory",
            include_str!("../configs/abi/dispute-game-factory.json"),
        ),
    ]
    .into_iter()
    .map(|(name, json)| {
        let abi = Abi::from_json(name, json).unwrap();
        let selectors = abi
            .function_signatures()
            .iter()
            .map(|s| {
                let h = alloy_primitives::keccak256(s.as_bytes());
                [h[0], h[1], h[2], h[3]]
            })
            .collect();
        (abi, selectors)
    })
    .collect();
    let total: usize = abis.iter().map(|(_, s)| s.len()).sum();
    let mut checked = 0;
    for (path, data) in corpus("evm_abi_calldata") {
        // The same function pick as the fuzz harness: first byte, then the argument bytes.
        let Some((&pick, rest)) = data.split_first() else {
            continue;
        };
        let n = pick as usize % (total + 1);
        let inputs: Vec<(&Abi, Vec<u8>)> = if n == total {
            abis.iter().map(|(abi, _)| (abi, rest.to_vec())).collect()
        } else {
            let mut k = n;
            let (abi, sels) = abis
                .iter()
                .find(|(_, s)| {
                    let here = k < s.len();
                    if !here {
                        k -= s.len();
                    }
                    here
                })
                .unwrap();
            vec![(abi, [&sels[k][..], rest].concat())]
        };
        for (abi, input) in inputs {
            let Ok(call) = abi.decode(&input) else {
                continue;
            };
            let values: Vec<_> = call.args.iter().map(|(_, v)| v.clone()).collect();
            let again = [&input[..4], &abi_encode(&values)].concat();
            assert_eq!(
                hex::encode(&again),
                hex::encode(&input),
                "{}: {} decoded from non-canonical calldata",
                path.display(),
                call.signature
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no corpus calldata decoded");
}

/// BIP84/86 account 0 of the all-"abandon" seed (the fuzz harness's wallet).
fn abandon_wallet() -> keyguard_bitcoin::Wallet {
    use keyguard_bitcoin::bitcoin::bip32::{Fingerprint, Xpub};
    use keyguard_bitcoin::bitcoin::Network;
    use keyguard_bitcoin::wallet::{self, ScriptKind};
    use std::str::FromStr;
    let accounts = [
        (ScriptKind::P2wpkh, "xpub6CatWdiZiodmUeTDp8LT5or8nmbKNcuyvz7WyksVFkKB4RHwCD3XyuvPEbvqAQY3rAPshWcMLoP2fMFMKHPJ4ZeZXYVUhLv1VMrjPC7PW6V"),
        (ScriptKind::P2tr, "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ"),
    ]
    .into_iter()
    .map(|(kind, xpub)| wallet::Account {
        kind,
        path: wallet::account_path(kind, Network::Bitcoin, 0).unwrap(),
        xpub: Xpub::from_str(xpub).unwrap(),
    })
    .collect();
    keyguard_bitcoin::Wallet {
        fingerprint: Fingerprint::from_str("73c5da0a").unwrap(),
        network: Network::Bitcoin,
        accounts,
        max_index: 1000,
        change_gap: 100,
        single: None,
    }
}

#[test]
fn psbts_round_trip_and_bogus_signatures_fail_verification() {
    use keyguard_bitcoin::bitcoin::base64::prelude::{Engine as _, BASE64_STANDARD};
    use keyguard_bitcoin::decode::{decode_parsed, parse_psbt_bytes};
    use keyguard_bitcoin::{encode_psbt, ScriptKind};
    use keyguard_chain::Signature;

    let wallet = abandon_wallet();
    let (mut parsed, mut exact, mut verified) = (0, 0, 0);
    for (path, data) in corpus("bitcoin_psbt") {
        let Ok((psbt, format)) = parse_psbt_bytes(&data) else {
            continue;
        };
        parsed += 1;
        let once = BASE64_STANDARD
            .decode(encode_psbt(&psbt, &format).unwrap())
            .unwrap();
        let (psbt2, format2) = parse_psbt_bytes(&once).expect("a re-encoded PSBT parses");
        let twice = BASE64_STANDARD
            .decode(encode_psbt(&psbt2, &format2).unwrap())
            .unwrap();
        assert_eq!(
            once,
            twice,
            "{}: encoding is not a fixed point",
            path.display()
        );
        let canonical_v0 = keyguard_bitcoin::bitcoin::Psbt::deserialize(&data)
            .is_ok_and(|p| p.serialize() == data);
        if canonical_v0 {
            assert_eq!(
                once,
                data,
                "{}: a canonical v0 PSBT changed",
                path.display()
            );
            exact += 1;
        }

        let Ok(intent) = decode_parsed(psbt, format, &wallet) else {
            continue;
        };
        if intent.jobs.is_empty() {
            continue;
        }
        // A well-formed signature of the scheme each input needs, over nothing in particular.
        let bogus: Vec<Signature> = intent
            .jobs
            .iter()
            .map(|j| match j.kind {
                ScriptKind::P2wpkh => Signature::Secp256k1 {
                    r: [1; 32],
                    s: [1; 32],
                    recovery_id: 0,
                },
                ScriptKind::P2tr => Signature::Bip340([1; 64]),
            })
            .collect();
        let err = keyguard_bitcoin::finalize(&intent, &bogus, true)
            .expect_err("a bogus signature passed pass 2");
        assert!(
            err.0.contains("does not verify"),
            "{}: refused for another reason than verification: {}",
            path.display(),
            err.0
        );
        verified += 1;
    }
    eprintln!("psbt corpus: {parsed} parsed, {exact} canonical v0 byte for byte, {verified} bogus signature sets refused by verification");
    assert!(exact > 0 && verified > 0, "the corpus exercised nothing");
}

/// Controls of the second ABI encoder: it writes the spec's bytes for a known ERC-20 transfer,
/// and calldata with dirty padding does not match it (so the property above can fail).
#[test]
fn second_abi_encoder_matches_a_known_vector_and_flags_dirty_padding() {
    use alloy_dyn_abi::DynSolValue as V;
    let to = alloy_primitives::Address::repeat_byte(0x11);
    let known = hex::decode(
        "a9059cbb\
         0000000000000000000000001111111111111111111111111111111111111111\
         00000000000000000000000000000000000000000000000000000000000003e8",
    )
    .unwrap();
    let values = [
        V::Address(to),
        V::Uint(alloy_primitives::U256::from(1000), 256),
    ];
    assert_eq!([&known[..4], &abi_encode(&values)].concat(), known);
    let erc20 = keyguard_evm::abi::Abi::from_json("erc20", keyguard_evm::abi::ERC20_JSON).unwrap();
    let call = erc20.decode(&known).unwrap();
    let decoded: Vec<_> = call.args.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(decoded, values);
    let mut dirty = known.clone();
    dirty[4] = 0xff; // a non-zero byte in the address word's padding
    assert_ne!([&dirty[..4], &abi_encode(&values)].concat(), dirty);
    // A dynamic value: offsets and padding from the spec (bytes "abc" after a uint32).
    let dynamic = abi_encode(&[
        V::Uint(alloy_primitives::U256::from(7), 32),
        V::Bytes(b"abc".to_vec()),
    ]);
    assert_eq!(
        hex::encode(dynamic),
        "0000000000000000000000000000000000000000000000000000000000000007\
         0000000000000000000000000000000000000000000000000000000000000040\
         0000000000000000000000000000000000000000000000000000000000000003\
         6162630000000000000000000000000000000000000000000000000000000000"
    );
}

/// A deterministic sweep of the typed-data shape space (what `evm_typed_shapes` fuzzes): every
/// combination of type-count class, fanout, dimensions and array length, with pseudo-random
/// sizes, decoded on a 2 MiB stack. Each must be refused with a named field or hash as alloy
/// does within the work bound (both asserted by the harness).
#[test]
fn typed_shape_space_sweep() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut runs = 0;
    for class in [0u8, 39, 200, 250] {
        for fanout in 0..4u8 {
            for dims in 0..4u8 {
                for len in [0u8, 3, 255] {
                    let r = next().to_le_bytes();
                    let input = [class, r[0], fanout, dims, len, r[1], r[2] % 64, r[3], r[4]];
                    keyguard::fuzz_harness::evm_typed_shapes(&input);
                    runs += 1;
                }
            }
        }
    }
    assert_eq!(runs, 192);
}

#[test]
fn signet_seeds_reach_the_accepting_path() {
    // The corpus must hold blocks and PSBTs keyguard accepts, or the harness only ever tests
    // refusals. Challenge: `1 <G> 1 CHECKMULTISIG`, as in the harness.
    use keyguard_bitcoin::bitcoin::base64::prelude::{Engine as _, BASE64_STANDARD};
    use keyguard_bitcoin::signet::{decode_block, Challenge};
    use keyguard_bitcoin::signet_finalize::{decode_psbt, parse_block_psbt};
    let script = keyguard_bitcoin::bitcoin::ScriptBuf::from_hex(
        "51210279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f8179851ae",
    )
    .unwrap();
    let challenge = Challenge::parse(script).unwrap();
    let (mut blocks, mut psbts) = (0, 0);
    for (_, data) in corpus("signet_block") {
        let Some((mode, rest)) = data.split_first() else {
            continue;
        };
        if mode % 2 == 0 {
            blocks += usize::from(decode_block(rest, &challenge).is_ok());
        } else {
            let psbt = parse_block_psbt(&BASE64_STANDARD.encode(rest)).unwrap();
            psbts += usize::from(decode_psbt(&psbt, &challenge).is_ok());
        }
    }
    assert!(blocks >= 3 && psbts >= 3, "blocks {blocks}, psbts {psbts}");
}
