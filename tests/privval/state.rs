//! Moving a validator in: no signing without state, importing a FilePV / tmkms state file,
//! never lowering it, and exporting it back.

use std::path::Path;

use crate::harness::{cli, config_text, Keyguard, NodeListener, ValidatorSpec};
use crate::node::{now, Ask, Node, Ver};

fn filepv_state(height: i64, step: u8, block: u8) -> String {
    use prost::Message;
    use tendermint_proto::v0_38::types as tm;
    let sign_bytes = tm::CanonicalVote {
        r#type: 2,
        height,
        round: 0,
        block_id: Some(tm::CanonicalBlockId {
            hash: vec![block; 32],
            part_set_header: Some(tm::CanonicalPartSetHeader {
                total: 1,
                hash: vec![block ^ 0x5A; 32],
            }),
        }),
        timestamp: Some(tendermint_proto::google::protobuf::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        chain_id: "moved-chain".into(),
    }
    .encode_length_delimited_to_vec();
    format!(
        r#"{{"height":"{height}","round":0,"step":{step},"signature":"{}","signbytes":"{}"}}"#,
        "A".repeat(86) + "==",
        hex::encode_upper(sign_bytes)
    )
}

fn state_cli(args: &[&str], config: &Path) -> (bool, String, String) {
    let mut full = vec!["state", args[0], "--config", config.to_str().unwrap()];
    full.extend_from_slice(&args[1..]);
    cli(&full)
}

#[test]
fn no_state_is_refused_and_imports_only_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, addr) = NodeListener::unix(&dir.path().join("node.sock"));
    let spec = ValidatorSpec {
        name: "moved".into(),
        chain_id: "moved-chain".into(),
        addr,
        protocol: "v0.38",
        new_validator: false,
        extra: String::new(),
    };
    let config = config_text(dir.path(), &[spec]);
    let mut kg = Keyguard::start(dir.path(), &config);
    let cfg = kg.config.clone();
    {
        let mut node = Node::new(listener.accept(), Ver::V038, "moved-chain");
        node.pubkey().unwrap().unwrap();
        let (code, desc) = node
            .sign(&Ask::vote(1, 5, 0, Some(1), now()))
            .unwrap()
            .unwrap_err();
        assert_eq!(code, 1);
        assert!(desc.contains("cometbft.no_state"), "{desc}");
    }
    kg.kill();

    let file = dir.path().join("priv_validator_state.json");
    std::fs::write(&file, filepv_state(100, 3, 7)).unwrap();
    let (ok, out, err) = state_cli(
        &["import", "--chain", "moved-chain", file.to_str().unwrap()],
        &cfg,
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("height 100"), "{out}");
    // An older backup must not reopen signed heights.
    std::fs::write(&file, filepv_state(90, 3, 7)).unwrap();
    let (ok, _, err) = state_cli(
        &["import", "--chain", "moved-chain", file.to_str().unwrap()],
        &cfg,
    );
    assert!(!ok, "a lower state was imported");
    assert!(err.contains("backwards"), "{err}");

    let _kg = Keyguard::start_with(&cfg);
    let mut node = Node::new(listener.accept(), Ver::V038, "moved-chain");
    node.pubkey().unwrap().unwrap();
    let (_, desc) = node
        .sign(&Ask::vote(2, 100, 0, Some(8), now()))
        .unwrap()
        .unwrap_err();
    assert!(desc.contains("cometbft.double_sign"), "{desc}");
    let (_, desc) = node
        .sign(&Ask::vote(1, 100, 0, Some(7), now()))
        .unwrap()
        .unwrap_err();
    assert!(desc.contains("cometbft.step_regression"), "{desc}");
    node.sign(&Ask::vote(1, 101, 0, Some(9), now()))
        .unwrap()
        .unwrap();

    let (ok, out, err) = state_cli(&["show", "--json"], &cfg);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["height"], 101);
    assert_eq!(v[0]["step"], "prevote");
    let (ok, out, err) = state_cli(&["export", "--chain", "moved-chain"], &cfg);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["height"], "101");
    assert_eq!(v["step"], 2);

    // tmkms numbers steps from 0: its precommit (2) is CometBFT's 3.
    let tmkms = dir.path().join("tmkms.json");
    std::fs::write(
        &tmkms,
        r#"{"height":"50","round":"1","step":2,"block_id":null}"#,
    )
    .unwrap();
    let (ok, out, err) = state_cli(
        &[
            "import",
            "--chain",
            "other-chain",
            "--key",
            "dev-ed25519",
            tmkms.to_str().unwrap(),
        ],
        &cfg,
    );
    assert!(ok, "{err}");
    assert!(out.contains("step Precommit"), "{out}");
}
