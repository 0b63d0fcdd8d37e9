//! Hostile CometBFT privval requests from a mock validator node (v1 wire, Unix socket): wrong
//! chain, regressions and conflicting votes, boundary heights, rounds, types and timestamps,
//! malformed block ids and extensions, `SignBytes`, an undecodable frame, and a disabled key.
//! Each row names the RemoteSignerError code and the rule or field its description starts
//! with; every row is checked to have released no signature, left the watermark where it was,
//! and left an audit row.

use std::io::Write;
use std::path::Path;

use iq_cometbft_proto::v1::privval::v1 as pv;
use iq_cometbft_proto::v1::types::v1 as types;
use prost::Message;

use crate::harness::{cli, config_text, Keyguard, NodeListener, ValidatorSpec};
use crate::helpers::{check_audit, mark, Audited, Failures};
use crate::mockval::conn::MockConn;
use crate::node::{now, Ask, Node, Ver};

const CHAIN: &str = "adv-chain";

/// The `code` of a row whose request must end the connection instead of being answered.
const DROPPED: i32 = -1;

/// The watermark as `keyguard state show --json` prints it.
fn watermark(config: &Path) -> serde_json::Value {
    let (ok, out, err) = cli(&[
        "state",
        "show",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(ok, "state show: {err}");
    serde_json::from_str(&out).unwrap()
}

/// A vote request built field by field, for rows the mock node's `Ask` cannot express.
fn raw_vote(
    conn: &mut MockConn,
    edit: impl Fn(&mut types::Vote),
) -> Option<(i32, String, Vec<u8>)> {
    let t = now();
    let mut vote = types::Vote {
        r#type: 2,
        height: 20,
        round: 0,
        block_id: Some(types::BlockId {
            hash: vec![7; 32],
            part_set_header: Some(types::PartSetHeader {
                total: 1,
                hash: vec![8; 32],
            }),
        }),
        timestamp: Some(iq_cometbft_proto::google::protobuf::Timestamp {
            seconds: t.0,
            nanos: t.1,
        }),
        validator_address: vec![0xAA; 20],
        validator_index: 0,
        ..Default::default()
    };
    edit(&mut vote);
    let req = pv::Message {
        sum: Some(pv::message::Sum::SignVoteRequest(pv::SignVoteRequest {
            vote: Some(vote),
            chain_id: CHAIN.into(),
            skip_extension_signing: false,
        })),
    };
    let resp: pv::Message = conn.call(&req)?;
    match resp.sum {
        Some(pv::message::Sum::SignedVoteResponse(r)) => {
            let sig = r.vote.map(|v| v.signature).unwrap_or_default();
            let (code, desc) = r
                .error
                .map_or((0, String::new()), |e| (e.code, e.description));
            Some((code, desc, sig))
        }
        other => panic!("unexpected response {other:?}"),
    }
}

/// What a row sends.
enum Send {
    Ask(Ask),
    /// Ask on another chain id.
    OtherChain(Ask),
    Raw(fn(&mut types::Vote)),
    SignBytes,
}

struct Row {
    name: &'static str,
    send: Send,
    code: i32,
    /// The description must contain this (a rule name, or the field of an invalid request).
    names: &'static str,
    method: &'static str,
    rule: Option<&'static str>,
}

fn vote(ty: i32, h: i64, r: i32, block: Option<u8>) -> Ask {
    Ask::vote(ty, h, r, block, now())
}

fn table() -> Vec<Row> {
    let sv = "privval.SignVote";
    let row = |name, send, code, names, rule| Row {
        name,
        send,
        code,
        names,
        method: sv,
        rule,
    };
    let inval = Some("request.invalid");
    let mut future = vote(1, 11, 0, Some(3));
    future.ts.0 += 86_400;
    let mut bad_nanos = vote(1, 11, 0, Some(3));
    bad_nanos.ts.1 = 2_000_000_000;
    let mut year_10000 = vote(1, 11, 0, Some(3));
    year_10000.ts.0 = 253_402_300_800;
    let mut negative_nanos = Ask::proposal(11, 0, 3, now());
    negative_nanos.ts.1 = -1;
    let mut nil_proposal = Ask::proposal(11, 0, 3, now());
    nil_proposal.block = None;
    let mut pol_minus_2 = Ask::proposal(11, 1, 3, now());
    pol_minus_2.pol_round = -2;
    let mut ext_prevote = vote(1, 11, 0, Some(3));
    ext_prevote.extension = b"x".to_vec();
    let mut ext_nil = vote(2, 11, 0, None);
    ext_nil.extension = b"x".to_vec();
    let mut pol = Ask::proposal(11, 0, 3, now());
    pol.pol_round = 0;
    vec![
        row(
            "wrong chain id",
            Send::OtherChain(vote(1, 11, 0, Some(3))),
            1,
            "cometbft.chain_id",
            Some("cometbft.chain_id"),
        ),
        row(
            "height regression",
            Send::Ask(vote(1, 9, 0, Some(3))),
            1,
            "cometbft.height_regression",
            Some("cometbft.height_regression"),
        ),
        row(
            "round regression",
            Send::Ask(vote(2, 10, 0, Some(1))),
            1,
            "cometbft.round_regression",
            Some("cometbft.round_regression"),
        ),
        row(
            "step regression",
            Send::Ask(vote(1, 10, 1, Some(1))),
            1,
            "cometbft.step_regression",
            Some("cometbft.step_regression"),
        ),
        row(
            "double sign (other block, same step)",
            Send::Ask(vote(2, 10, 1, Some(2))),
            1,
            "cometbft.double_sign",
            Some("cometbft.double_sign"),
        ),
        row(
            "double sign (nil after block)",
            Send::Ask(vote(2, 10, 1, None)),
            1,
            "cometbft.double_sign",
            Some("cometbft.double_sign"),
        ),
        row(
            "height 0",
            Send::Ask(vote(1, 0, 0, Some(3))),
            2,
            "height",
            inval,
        ),
        row(
            "negative height",
            Send::Ask(vote(1, -1, 0, Some(3))),
            2,
            "height",
            inval,
        ),
        row(
            "height i64::MAX",
            Send::Ask(vote(1, i64::MAX, 0, Some(3))),
            1,
            "cometbft.max_height_jump",
            Some("cometbft.max_height_jump"),
        ),
        row(
            "negative round",
            Send::Ask(vote(1, 11, -1, Some(3))),
            2,
            "round",
            inval,
        ),
        row(
            "vote type 99",
            Send::Ask(vote(99, 11, 0, Some(3))),
            2,
            "vote.type",
            inval,
        ),
        row(
            "proposal type in a vote",
            Send::Ask(vote(32, 11, 0, Some(3))),
            2,
            "vote.type",
            inval,
        ),
        row(
            "timestamp a day ahead",
            Send::Ask(future),
            1,
            "cometbft.timestamp_drift",
            Some("cometbft.timestamp_drift"),
        ),
        row(
            "timestamp nanos out of range",
            Send::Ask(bad_nanos),
            2,
            "timestamp",
            inval,
        ),
        row(
            "timestamp in the year 10000",
            Send::Ask(year_10000),
            2,
            "vote.timestamp",
            inval,
        ),
        Row {
            name: "proposal with negative nanos",
            send: Send::Ask(negative_nanos),
            code: 2,
            names: "proposal.timestamp",
            method: "privval.SignProposal",
            rule: inval,
        },
        Row {
            name: "proposal for a nil block",
            send: Send::Ask(nil_proposal),
            code: 2,
            names: "block_id",
            method: "privval.SignProposal",
            rule: inval,
        },
        Row {
            name: "proposal pol_round -2",
            send: Send::Ask(pol_minus_2),
            code: 1,
            names: "cometbft.pol_round",
            method: "privval.SignProposal",
            rule: Some("cometbft.pol_round"),
        },
        row(
            "block hash without a part set header",
            Send::Raw(|v| v.block_id.as_mut().unwrap().part_set_header = None),
            2,
            "block_id",
            inval,
        ),
        row(
            "extension on a prevote",
            Send::Ask(ext_prevote),
            2,
            "extension",
            inval,
        ),
        row(
            "extension on a nil precommit",
            Send::Ask(ext_nil),
            2,
            "extension",
            inval,
        ),
        Row {
            name: "proposal pol_round not below round",
            send: Send::Ask(pol),
            code: 1,
            names: "cometbft.pol_round",
            method: "privval.SignProposal",
            rule: Some("cometbft.pol_round"),
        },
        row(
            "block hash 31 bytes",
            Send::Raw(|v| v.block_id.as_mut().unwrap().hash = vec![7; 31]),
            2,
            "block_id",
            inval,
        ),
        row(
            "part set hash without total",
            Send::Raw(|v| {
                v.block_id
                    .as_mut()
                    .unwrap()
                    .part_set_header
                    .as_mut()
                    .unwrap()
                    .total = 0
            }),
            2,
            "block_id",
            inval,
        ),
        row(
            "block hash 33 bytes",
            Send::Raw(|v| v.block_id.as_mut().unwrap().hash = vec![7; 33]),
            2,
            "block_id",
            inval,
        ),
        row(
            "part set hash 5 bytes",
            Send::Raw(|v| {
                v.block_id
                    .as_mut()
                    .unwrap()
                    .part_set_header
                    .as_mut()
                    .unwrap()
                    .hash = vec![8; 5]
            }),
            2,
            "block_id",
            inval,
        ),
        row(
            "vote missing timestamp",
            Send::Raw(|v| v.timestamp = None),
            2,
            "vote.timestamp",
            inval,
        ),
        // Over the 1 MiB frame limit: refused before decoding, so the connection is closed
        // (the node redials) and there is no request to attribute.
        row(
            "frame over 1 MiB",
            Send::Raw(|v| {
                v.r#type = 2;
                v.extension = vec![0; 2 << 20];
            }),
            DROPPED,
            "",
            None,
        ),
        Row {
            name: "SignBytes",
            send: Send::SignBytes,
            code: 3,
            names: "cometbft.sign_bytes",
            method: "privval.SignBytes",
            rule: Some("cometbft.sign_bytes"),
        },
    ]
}

/// Runs one row; returns (code, description, released signature bytes).
fn send(node: &mut Node, r: &Row) -> Option<(i32, String, Vec<u8>)> {
    let refused = |res: Result<crate::node::Released, (i32, String)>| match res {
        Ok(released) => (0, String::new(), released.signature),
        Err((code, desc)) => (code, desc, Vec::new()),
    };
    Some(match &r.send {
        Send::Ask(a) => refused(node.sign(a)?),
        Send::OtherChain(a) => {
            node.chain = "someone-elses-chain".into();
            let out = node.sign(a);
            node.chain = CHAIN.into();
            refused(out?)
        }
        Send::Raw(edit) => raw_vote(&mut node.conn, edit)?,
        Send::SignBytes => {
            let (code, desc) = crate::node::v1::sign_bytes(&mut node.conn);
            (code, desc, Vec::new())
        }
    })
}

fn check_row(cfg: &Path, node: &mut Node, r: &Row) -> Result<(), String> {
    let (before, wm) = (mark(cfg), watermark(cfg));
    let Some((code, desc, sig)) = send(node, r) else {
        if r.code != DROPPED {
            return Err("connection dropped".into());
        }
        if watermark(cfg) != wm {
            return Err("the watermark moved".into());
        }
        return check_audit(
            cfg,
            before,
            Audited::Transport("frame refused before decoding"),
        );
    };
    if !sig.is_empty() {
        return Err(format!("a signature was released ({} bytes)", sig.len()));
    }
    if code != r.code || !desc.contains(r.names) {
        return Err(format!(
            "expected code {} naming {:?}, got {code} {desc:?}",
            r.code, r.names
        ));
    }
    if watermark(cfg) != wm {
        return Err(format!("the watermark moved: {wm} -> {}", watermark(cfg)));
    }
    check_audit(
        cfg,
        before,
        Audited::Row {
            method: r.method,
            rule: r.rule,
        },
    )
}

#[test]
fn privval_hostile_requests_are_refused_unsigned_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, addr) = NodeListener::unix(&dir.path().join("node.sock"));
    let spec = ValidatorSpec {
        name: "adv".into(),
        chain_id: CHAIN.into(),
        addr,
        protocol: "v1",
        new_validator: true,
        extra: "max_height_jump = 1000\nmax_timestamp_drift_ms = 60000\n".into(),
    };
    let text = config_text(dir.path(), &[spec]) + "[admin]\ntotp_single_use = false\n";
    let kg = Keyguard::start(dir.path(), &text);
    let cfg = kg.config.clone();
    let mut node = Node::new(listener.accept(), Ver::V1, CHAIN);
    node.pubkey().unwrap().unwrap();
    // Legitimate history: height 10, round 1, prevote and precommit for block 1.
    for a in [vote(1, 10, 1, Some(1)), vote(2, 10, 1, Some(1))] {
        node.sign(&a).unwrap().unwrap();
    }

    let rows = table();
    let mut failures = Failures::default();
    for r in &rows {
        let result = check_row(&cfg, &mut node, r);
        // A dropped connection (expected or not) is redialled by keyguard.
        if !node.ping() {
            node = Node::new(listener.accept(), Ver::V1, CHAIN);
            node.pubkey().unwrap().unwrap();
        }
        failures.check(r.name, result);
    }

    // An undecodable frame ends the connection: nothing is signed, nothing can be attributed,
    // and keyguard dials again.
    let (before, wm) = (mark(&cfg), watermark(&cfg));
    if let MockConn::Unix(s) = &mut node.conn {
        s.write_all(&[0xff; 16]).unwrap();
    }
    let mut again = Node::new(listener.accept(), Ver::V1, CHAIN);
    again.pubkey().unwrap().unwrap();
    failures.check(
        "undecodable frame",
        check_audit(&cfg, before, Audited::Transport("not a privval message")).and_then(|()| {
            if watermark(&cfg) == wm {
                Ok(())
            } else {
                Err("watermark moved".into())
            }
        }),
    );

    // The kill switch.
    let daemon_user = dir.path().join("keyguard.toml");
    let (ok, out, err) = cli(&[
        "users",
        "add",
        "alice",
        "--role",
        "admin",
        "--config",
        daemon_user.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    let uri = out.lines().find(|l| l.starts_with("otpauth://")).unwrap();
    let alice = crate::control::User::from_uri("alice", uri);
    let sock = dir.path().join("data/admin.sock");
    let off = crate::control::admin(
        &sock,
        &alice,
        "keys.disable",
        serde_json::json!({"key": "dev-ed25519"}),
    );
    assert!(off["result"].is_object(), "{off}");
    let disabled = Row {
        name: "disabled key",
        send: Send::Ask(vote(1, 11, 0, Some(3))),
        code: 3,
        names: "disabled",
        method: "privval.SignVote",
        rule: Some("admin.kill_switch"),
    };
    failures.check(disabled.name, check_row(&cfg, &mut again, &disabled));
    failures.finish("privval", rows.len() + 2);
    let _ = Message::encoded_len(&pv::PingRequest {});
}

/// "Wrong key" for the transport: a node whose SecretConnection identity is not the pinned
/// node id is refused before any request is read, so an impersonator gets neither the public
/// key nor a signature.
#[test]
fn privval_impersonated_node_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (impostor, impostor_addr) = NodeListener::tcp();
    let (_real, real_addr) = NodeListener::tcp();
    // The real node's pinned id at the impostor's address.
    let pinned_id = real_addr.split('@').next().unwrap();
    let host = impostor_addr.split('@').nth(1).unwrap();
    let spec = ValidatorSpec {
        name: "pinned".into(),
        chain_id: CHAIN.into(),
        addr: format!("{pinned_id}@{host}"),
        protocol: "v1",
        new_validator: true,
        extra: String::new(),
    };
    let kg = Keyguard::start(dir.path(), &config_text(dir.path(), &[spec]));
    let before = mark(&kg.config);
    let mut dialled = 0;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let conn = impostor.try_accept(std::time::Duration::from_secs(5));
        // Back before the timeout: keyguard dialled (and the handshake ended either way).
        if started.elapsed() < std::time::Duration::from_secs(4) {
            dialled += 1;
        }
        if let Some(conn) = conn {
            let mut node = Node::new(conn, Ver::V1, CHAIN);
            assert!(
                node.pubkey().is_none(),
                "the impostor got an answer to PubKey"
            );
        }
    }
    assert!(dialled > 0, "keyguard never dialled the impostor's address");
    let state = watermark(&kg.config);
    assert_eq!(
        state,
        serde_json::json!([]),
        "a watermark appeared: {state}"
    );
    check_audit(
        &kg.config,
        before,
        Audited::Transport("refused at the handshake"),
    )
    .unwrap();
}
