//! Unit tests: wire compatibility against tendermint-proto's own per-version types, the
//! watermark decisions, block-field rules, state files and pass 2.

use keyguard_chain::{PublicKey, Rejection, Signature};
use prost::Message;
use tendermint_proto::google::protobuf::Timestamp as TmTimestamp;

use crate::checks::{check_request, BlockLimits};
use crate::types::*;
use crate::watermark::{decide, SignedState, Verdict};
use crate::wire::{decode_bytes, encode, Request, Response, WireVersion};

const CHAIN: &str = "test-chain-1";

fn block(n: u8) -> BlockId {
    BlockId {
        hash: vec![n; 32],
        parts_total: 1,
        parts_hash: vec![n.wrapping_add(100); 32],
    }
}

fn vote(t: VoteType, h: i64, r: i32, b: BlockId, secs: i64) -> SignRequest {
    SignRequest::Vote(Vote {
        vote_type: t,
        height: h,
        round: r,
        block_id: b,
        timestamp: Timestamp {
            seconds: secs,
            nanos: 5,
        },
        validator_address: vec![7; 20],
        validator_index: 3,
        extension: Vec::new(),
    })
}

fn signed(req: &SignRequest) -> SignedState {
    SignedState::after(req, req.sign_bytes(CHAIN), vec![1; 64], Vec::new())
}

fn rule(v: Verdict) -> &'static str {
    match v {
        Verdict::Refuse(Rejection::Policy { rule, .. }) => rule,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

macro_rules! tm_sign_vote_request {
    ($m:ident) => {{
        use tendermint_proto::$m::{privval, types};
        privval::Message {
            sum: Some(privval::message::Sum::SignVoteRequest(
                privval::SignVoteRequest {
                    vote: Some(types::Vote {
                        r#type: 2,
                        height: 10,
                        round: 1,
                        block_id: Some(types::BlockId {
                            hash: vec![1; 32],
                            part_set_header: Some(types::PartSetHeader {
                                total: 1,
                                hash: vec![101; 32],
                            }),
                        }),
                        timestamp: Some(TmTimestamp {
                            seconds: 100,
                            nanos: 5,
                        }),
                        validator_address: vec![7; 20],
                        validator_index: 3,
                        ..Default::default()
                    }),
                    chain_id: CHAIN.into(),
                },
            )),
        }
        .encode_to_vec()
    }};
}

#[test]
fn legacy_versions_decode_with_their_own_schemas() {
    let expected = vote(VoteType::Precommit, 10, 1, block(1), 100);
    for (version, bytes) in [
        (WireVersion::V0_34, tm_sign_vote_request!(v0_34)),
        (WireVersion::V0_37, tm_sign_vote_request!(v0_37)),
        (WireVersion::V0_38, tm_sign_vote_request!(v0_38)),
        (WireVersion::Auto, tm_sign_vote_request!(v0_34)),
    ] {
        match decode_bytes(version, &bytes).unwrap() {
            Request::SignVote {
                chain_id,
                vote: v,
                sign_extension,
            } => {
                assert_eq!(chain_id, CHAIN);
                assert_eq!(SignRequest::Vote(v), expected, "{version}");
                assert_eq!(sign_extension, version.has_extensions(), "{version}");
            }
            other => panic!("{version}: {other:?}"),
        }
    }
}

#[test]
fn sign_bytes_match_tendermint_proto_canonical_vote() {
    use tendermint_proto::v0_34::types as tm;
    let req = vote(VoteType::Prevote, 5, 2, block(9), 1_700_000_000);
    let theirs = tm::CanonicalVote {
        r#type: 1,
        height: 5,
        round: 2,
        block_id: Some(tm::CanonicalBlockId {
            hash: vec![9; 32],
            part_set_header: Some(tm::CanonicalPartSetHeader {
                total: 1,
                hash: vec![109; 32],
            }),
        }),
        timestamp: Some(TmTimestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        }),
        chain_id: CHAIN.into(),
    }
    .encode_length_delimited_to_vec();
    assert_eq!(req.sign_bytes(CHAIN), theirs);
    // A nil vote has no block id field at all.
    let nil = vote(VoteType::Prevote, 5, 2, BlockId::default(), 1);
    let decoded = tm::CanonicalVote::decode_length_delimited(&nil.sign_bytes(CHAIN)[..]).unwrap();
    assert!(decoded.block_id.is_none());
    assert!(nil.extension_sign_bytes(CHAIN).is_none());
    assert!(vote(VoteType::Precommit, 5, 2, block(1), 1)
        .extension_sign_bytes(CHAIN)
        .is_some());
}

#[test]
fn pubkey_answers_per_version() {
    let pk = PublicKey::Ed25519([4; 32]);
    let resp = Response::PubKey(Ok(pk));
    let legacy = encode(WireVersion::V0_38, &resp).encode_to_vec();
    let v1 = encode(WireVersion::V1, &resp).encode_to_vec();
    let dual = encode(WireVersion::Auto, &resp).encode_to_vec();
    for bytes in [&legacy, &dual] {
        let m = tendermint_proto::v0_38::privval::Message::decode(&bytes[..]).unwrap();
        let Some(tendermint_proto::v0_38::privval::message::Sum::PubKeyResponse(r)) = m.sum else {
            panic!("not a pubkey response")
        };
        assert!(r.pub_key.is_some() && r.error.is_none());
    }
    for bytes in [&v1, &dual] {
        use iq_cometbft_proto::v1::privval::v1 as privval;
        let m = privval::Message::decode(&bytes[..]).unwrap();
        let Some(privval::message::Sum::PubKeyResponse(r)) = m.sum else {
            panic!("not a pubkey response")
        };
        assert_eq!(r.pub_key_bytes, vec![4; 32]);
        assert_eq!(r.pub_key_type, "ed25519");
    }
}

#[test]
fn watermark_orders_height_round_step() {
    let last = signed(&vote(VoteType::Prevote, 10, 1, block(1), 100));
    assert_eq!(
        rule(decide(
            &last,
            &vote(VoteType::Precommit, 9, 5, block(1), 100),
            CHAIN
        )),
        "cometbft.height_regression"
    );
    assert_eq!(
        rule(decide(
            &last,
            &vote(VoteType::Precommit, 10, 0, block(1), 100),
            CHAIN
        )),
        "cometbft.round_regression"
    );
    let proposal = SignRequest::Proposal(Proposal {
        height: 10,
        round: 1,
        pol_round: -1,
        block_id: block(1),
        timestamp: Timestamp::default(),
    });
    assert_eq!(
        rule(decide(&last, &proposal, CHAIN)),
        "cometbft.step_regression"
    );
    assert_eq!(
        decide(
            &last,
            &vote(VoteType::Precommit, 10, 1, block(1), 100),
            CHAIN
        ),
        Verdict::Sign
    );
    assert_eq!(
        decide(&last, &vote(VoteType::Prevote, 10, 2, block(2), 100), CHAIN),
        Verdict::Sign
    );
    assert_eq!(
        decide(&SignedState::default(), &proposal, CHAIN),
        Verdict::Sign
    );
}

#[test]
fn same_step_conflicts_are_refused_and_timestamp_only_reuses() {
    let first = vote(VoteType::Precommit, 10, 1, block(1), 100);
    let last = signed(&first);
    assert_eq!(
        rule(decide(
            &last,
            &vote(VoteType::Precommit, 10, 1, block(2), 100),
            CHAIN
        )),
        "cometbft.double_sign"
    );
    assert_eq!(
        rule(decide(
            &last,
            &vote(VoteType::Precommit, 10, 1, BlockId::default(), 100),
            CHAIN
        )),
        "cometbft.double_sign"
    );
    let expected = Verdict::Reuse {
        signature: vec![1; 64],
        timestamp: Timestamp {
            seconds: 100,
            nanos: 5,
        },
    };
    assert_eq!(decide(&last, &first, CHAIN), expected);
    assert_eq!(
        decide(
            &last,
            &vote(VoteType::Precommit, 10, 1, block(1), 999),
            CHAIN
        ),
        expected
    );
}

#[test]
fn block_field_rules() {
    let last = signed(&vote(VoteType::Precommit, 100, 0, block(1), 1000));
    let limits = BlockLimits {
        max_height_jump: Some(10),
        max_timestamp_drift_ms: Some(5_000),
        max_height: Some(1_000),
        ..BlockLimits::default()
    };
    let now = 1_000_000i128;
    let ok = vote(VoteType::Prevote, 105, 0, block(2), 1000);
    let r = |chain: &str, req: &SignRequest| match check_request(
        CHAIN, chain, &limits, req, &last, now,
    ) {
        Ok(()) => "ok",
        Err(Rejection::Policy { rule, .. }) => rule,
        Err(Rejection::InvalidParams { .. }) => "invalid",
    };
    assert_eq!(r(CHAIN, &ok), "ok");
    assert_eq!(r("other", &ok), "cometbft.chain_id");
    assert_eq!(
        r(CHAIN, &vote(VoteType::Prevote, 111, 0, block(2), 1000)),
        "cometbft.max_height_jump"
    );
    assert_eq!(
        r(CHAIN, &vote(VoteType::Prevote, 105, 0, block(2), 1010)),
        "cometbft.timestamp_drift"
    );
    let far = SignedState {
        height: 995,
        ..last.clone()
    };
    assert!(matches!(
        check_request(
            CHAIN,
            CHAIN,
            &limits,
            &vote(VoteType::Prevote, 1001, 0, block(2), 1000),
            &far,
            now
        ),
        Err(Rejection::Policy {
            rule: "cometbft.max_height",
            ..
        })
    ));
    let bad_pol = SignRequest::Proposal(Proposal {
        height: 105,
        round: 2,
        pol_round: 2,
        block_id: block(3),
        timestamp: Timestamp {
            seconds: 1000,
            nanos: 0,
        },
    });
    assert_eq!(r(CHAIN, &bad_pol), "cometbft.pol_round");
    let partial = BlockId {
        parts_total: 0,
        ..block(1)
    };
    assert_eq!(
        r(CHAIN, &vote(VoteType::Prevote, 105, 0, partial, 1000)),
        "invalid"
    );
}

#[test]
fn state_files_of_both_signers() {
    use crate::state_file::{export_cometbft, parse, StateFormat};
    let req = vote(VoteType::Precommit, 42, 0, block(1), 100);
    let mut st = signed(&req);
    st.block_id.clear();
    let exported = export_cometbft(&st).to_string();
    let (f, back) = parse(&exported, None).unwrap();
    assert_eq!(f, StateFormat::CometBft);
    assert_eq!(
        (back.height, back.round, back.step),
        (42, 0, Step::Precommit)
    );
    // A FilePV import still refuses another block at the same step (block id from sign bytes).
    assert_eq!(
        rule(decide(
            &back,
            &vote(VoteType::Precommit, 42, 0, block(2), 100),
            CHAIN
        )),
        "cometbft.double_sign"
    );
    let tmkms = r#"{"height":"42","round":"0","step":2,"block_id":null}"#;
    let (f, back) = parse(tmkms, None).unwrap();
    assert_eq!((f, back.step), (StateFormat::Tmkms, Step::Precommit));
    assert!(parse(r#"{"height":"5","round":0,"step":1}"#, None).is_err());
}

#[test]
fn pass2_verifies_independently() {
    use ed25519_dalek::Signer;
    let sk = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let pk = PublicKey::Ed25519(sk.verifying_key().to_bytes());
    let msg = vote(VoteType::Prevote, 1, 0, block(1), 1).sign_bytes(CHAIN);
    let sig = Signature::Ed25519(sk.sign(&msg).to_bytes());
    assert_eq!(crate::verify::verify(&pk, &msg, &sig).unwrap().len(), 64);
    assert!(crate::verify::verify(&pk, &msg[1..], &sig).is_err());
}

#[test]
fn decoder_caps_and_refuses_garbage() {
    assert!(decode_bytes(WireVersion::V1, &vec![0u8; crate::MAX_MESSAGE_BYTES + 1]).is_err());
    assert!(decode_bytes(WireVersion::V0_38, &[0xff, 0xff, 0xff]).is_err());
    assert!(decode_bytes(WireVersion::V0_38, &[]).is_err());
}

#[test]
fn timestamps_outside_the_protobuf_range_are_refused() {
    use tendermint_proto::v0_38::{privval, types};
    let request = |seconds: i64, nanos: i32| {
        privval::Message {
            sum: Some(privval::message::Sum::SignVoteRequest(
                privval::SignVoteRequest {
                    vote: Some(types::Vote {
                        r#type: 1,
                        height: 5,
                        timestamp: Some(TmTimestamp { seconds, nanos }),
                        ..Default::default()
                    }),
                    chain_id: CHAIN.into(),
                },
            )),
        }
        .encode_to_vec()
    };
    assert!(decode_bytes(WireVersion::V0_38, &request(100, 999_999_999)).is_ok());
    for (seconds, nanos) in [(100, 1_000_000_000), (100, -1), (253_402_300_800, 0)] {
        let err = decode_bytes(WireVersion::V0_38, &request(seconds, nanos)).unwrap_err();
        assert!(err.to_string().contains("vote.timestamp"), "{err}");
    }
}

/// Replays the fuzz corpus plus deterministic mutations of it (truncations, byte flips,
/// insertions) through the fuzz target's body: the decoder must refuse, never panic.
#[test]
fn fuzz_corpus_replays_without_panics() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/privval_decode"
    );
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("fuzz corpus")
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let corpus: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(corpus.len() >= 5);
    // Every corpus entry once; prefixes and random mutations (thousands of runs each) only of
    // the valid request and a fixed handful of entries, or a grown corpus makes this take
    // minutes in a debug build.
    for seed in &corpus {
        crate::fuzzing::exercise(seed);
    }
    let mut seeds: Vec<Vec<u8>> = corpus.into_iter().take(8).collect();
    seeds.push(tm_sign_vote_request!(v0_38));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for seed in &seeds {
        crate::fuzzing::exercise(seed);
        for cut in 0..seed.len() {
            crate::fuzzing::exercise(&seed[..cut]);
        }
        for _ in 0..2000 {
            let mut m = seed.clone();
            for _ in 0..(rnd() % 4 + 1) {
                let i = (rnd() as usize) % m.len().max(1);
                match rnd() % 3 {
                    0 if !m.is_empty() => m[i] ^= 1 << (rnd() % 8),
                    1 if !m.is_empty() => m[i] = rnd() as u8,
                    _ => m.insert(i.min(m.len()), rnd() as u8),
                }
            }
            crate::fuzzing::exercise(&m);
        }
    }
}

/// The first signature of a key with no state (rule `cometbft.first_height`): bounded by
/// `start_height` plus one burst, or by `max_height`; with neither it is refused.
#[test]
fn first_height_is_bounded() {
    let none = SignedState::default();
    let now = 1_000_000i128;
    let r = |limits: &BlockLimits, h: i64| match check_request(
        CHAIN,
        CHAIN,
        limits,
        &vote(VoteType::Prevote, h, 0, block(1), 1000),
        &none,
        now,
    ) {
        Ok(()) => "ok",
        Err(Rejection::Policy { rule, .. }) => rule,
        Err(Rejection::InvalidParams { .. }) => "invalid",
    };
    let start = BlockLimits {
        start_height: Some(5_000),
        max_height_jump: Some(100),
        ..BlockLimits::default()
    };
    assert_eq!(r(&start, i64::MAX), "cometbft.first_height");
    assert_eq!(r(&start, 5_101), "cometbft.first_height");
    assert_eq!(r(&start, 5_100), "ok");
    assert_eq!(r(&start, 1), "ok");
    let unbounded = BlockLimits::default();
    assert_eq!(r(&unbounded, i64::MAX), "cometbft.first_height");
    assert_eq!(r(&unbounded, 2), "cometbft.first_height");
    let stop = BlockLimits {
        max_height: Some(10_000),
        ..BlockLimits::default()
    };
    assert_eq!(r(&stop, i64::MAX), "cometbft.max_height");
    assert_eq!(r(&stop, 10_000), "ok");
    // Once something is signed the first-height rule no longer applies (the clock meter does).
    let after = signed(&vote(VoteType::Precommit, 9_000, 0, block(1), 1000));
    assert!(check_request(
        CHAIN,
        CHAIN,
        &unbounded,
        &vote(VoteType::Prevote, 9_001, 0, block(1), 1000),
        &after,
        now
    )
    .is_ok());
}
