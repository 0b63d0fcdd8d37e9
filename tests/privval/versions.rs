//! Every wire version through a real transport: full heights (proposal, prevote, precommit),
//! a round change, conflicting requests, the timestamp-only case and vote extensions.

use crate::harness::{Keyguard, NodeListener, ValidatorSpec};
use crate::node::{now, Ask, Node, Ver};

const PREVOTE: i32 = 1;
const PRECOMMIT: i32 = 2;

/// `key_len`: 32 for an Ed25519 consensus key, 33 for a compressed secp256k1 one.
fn drive(node: &mut Node, key_len: usize) {
    let pk = node.pubkey().expect("connection").expect("public key");
    assert_eq!(pk.len(), key_len);
    assert!(node.ping());
    let ext = node.ver.has_extensions();

    for h in 1..=3i64 {
        let b = h as u8;
        node.sign(&Ask::proposal(h, 0, b, now())).unwrap().unwrap();
        node.sign(&Ask::vote(PREVOTE, h, 0, Some(b), now()))
            .unwrap()
            .unwrap();
        let mut pc = Ask::vote(PRECOMMIT, h, 0, Some(b), now());
        if ext {
            pc.extension = format!("ext-{h}").into_bytes();
        }
        let first = node.sign(&pc).unwrap().unwrap();

        // The same precommit again with a later timestamp: the first signature and timestamp.
        let mut again = pc.clone();
        again.ts = (pc.ts.0 + 1, 7);
        let second = node.sign(&again).unwrap().unwrap();
        assert_eq!(second.signature, first.signature);
        assert_eq!(second.ts, first.ts, "the original timestamp comes back");

        // Another block at the same step is a double sign.
        let (code, desc) = node
            .sign(&Ask::vote(PRECOMMIT, h, 0, Some(b + 100), now()))
            .unwrap()
            .unwrap_err();
        assert_eq!(code, 1, "{desc}");
        assert!(desc.contains("cometbft.double_sign"), "{desc}");
        // Going back a step is refused.
        let (_, desc) = node
            .sign(&Ask::vote(PREVOTE, h, 0, Some(b), now()))
            .unwrap()
            .unwrap_err();
        assert!(desc.contains("cometbft.step_regression"), "{desc}");
    }

    // Height 4: round 0 fails (nil votes), round 1 commits with a POL round.
    node.sign(&Ask::proposal(4, 0, 40, now())).unwrap().unwrap();
    node.sign(&Ask::vote(PREVOTE, 4, 0, None, now()))
        .unwrap()
        .unwrap();
    node.sign(&Ask::vote(PRECOMMIT, 4, 0, None, now()))
        .unwrap()
        .unwrap();
    let mut p = Ask::proposal(4, 1, 41, now());
    p.pol_round = 0;
    node.sign(&p).unwrap().unwrap();
    node.sign(&Ask::vote(PREVOTE, 4, 1, Some(41), now()))
        .unwrap()
        .unwrap();
    let mut pc = Ask::vote(PRECOMMIT, 4, 1, Some(41), now());
    if node.ver == Ver::V1 {
        // v1 may tell the signer not to sign the extension.
        pc.skip_extension = true;
    }
    node.sign(&pc).unwrap().unwrap();
    let (_, desc) = node
        .sign(&Ask::vote(PREVOTE, 4, 0, Some(40), now()))
        .unwrap()
        .unwrap_err();
    assert!(desc.contains("cometbft.round_regression"), "{desc}");
    let (_, desc) = node
        .sign(&Ask::vote(PREVOTE, 3, 5, Some(3), now()))
        .unwrap()
        .unwrap_err();
    assert!(desc.contains("cometbft.height_regression"), "{desc}");
    // A proposal with an impossible POL round.
    let mut bad = Ask::proposal(5, 1, 50, now());
    bad.pol_round = 1;
    let (_, desc) = node.sign(&bad).unwrap().unwrap_err();
    assert!(desc.contains("cometbft.pol_round"), "{desc}");
    if node.ver == Ver::V1 {
        let (code, desc) = crate::node::v1::sign_bytes(&mut node.conn);
        assert_eq!(code, 3);
        assert!(desc.contains("cometbft.sign_bytes"), "{desc}");
    }
    // A request for another chain is refused.
    node.chain = "other-chain".into();
    let (_, desc) = node
        .sign(&Ask::vote(PREVOTE, 10, 0, Some(9), now()))
        .unwrap()
        .unwrap_err();
    assert!(desc.contains("cometbft.chain_id"), "{desc}");
}

/// Where the consensus key lives.
enum KeyHome {
    Software,
    /// A secp256k1 consensus key in the software keystore.
    SoftwareSecp256k1,
    Token(crate::softhsm::SoftToken),
}

fn every_wire_version(home: KeyHome) {
    let dir = tempfile::tempdir().unwrap();
    // (version, protocol setting, transport)
    let cases = [
        (Ver::V034, "v0.34", true),
        (Ver::V037, "v0.37", false),
        (Ver::V038, "v0.38", true),
        (Ver::V1, "v1", false),
        (Ver::V1, "auto", true),
        (Ver::V038, "auto", false),
    ];
    let mut listeners = Vec::new();
    let mut specs = Vec::new();
    for (i, (_, proto, unix)) in cases.iter().enumerate() {
        let (l, addr) = if *unix {
            NodeListener::unix(&dir.path().join(format!("node{i}.sock")))
        } else {
            NodeListener::tcp()
        };
        listeners.push(l);
        specs.push(ValidatorSpec {
            name: format!("node{i}"),
            chain_id: format!("chain-{i}"),
            addr,
            protocol: proto,
            new_validator: true,
            extra: "max_height_jump = 1000\nmax_timestamp_drift_ms = 60000\n".into(),
        });
    }
    let config = crate::harness::config_text(dir.path(), &specs);
    let _kg = match &home {
        KeyHome::Software => Keyguard::start(dir.path(), &config),
        KeyHome::SoftwareSecp256k1 => {
            let config = config
                .replace("[\"ed25519\"]", "[\"secp256k1\"]")
                .replace("key = \"dev-ed25519\"", "key = \"dev-secp256k1\"");
            Keyguard::start(dir.path(), &config)
        }
        KeyHome::Token(token) => {
            token.generate("consensus", "ed25519");
            let software = config
                .split_once("\n[[validators]]")
                .map_or(config.as_str(), |(head, _)| head)
                .split_once("[keystore]")
                .map(|(_, keystore)| format!("[keystore]{keystore}"))
                .unwrap();
            let pkcs11 = format!(
                "[keystore]\nbackend = \"pkcs11\"\n\n[keystore.pkcs11]\nlibrary = \"{}\"\n\
                 token_label = \"{}\"\npin_env = \"{}\"\n",
                token.library.display(),
                token.label,
                crate::softhsm::PIN_ENV
            );
            let config = config
                .replace(&software, &pkcs11)
                .replace("key = \"dev-ed25519\"", "key = \"consensus\"");
            let path = dir.path().join("keyguard.toml");
            std::fs::write(&path, config).unwrap();
            Keyguard::start_with_env(&path, &token.envs())
        }
    };
    let key_len = match home {
        KeyHome::SoftwareSecp256k1 => 33,
        _ => 32,
    };
    std::thread::scope(|s| {
        for (i, (ver, _, _)) in cases.iter().enumerate() {
            let l = &listeners[i];
            s.spawn(move || {
                let mut node = Node::new(l.accept(), *ver, &format!("chain-{i}"));
                drive(&mut node, key_len);
            });
        }
    });
}

#[test]
fn every_wire_version_signs_full_heights_and_refuses_conflicts() {
    every_wire_version(KeyHome::Software);
}

/// The same matrix with a secp256k1 consensus key: 33-byte compressed key on the wire, ECDSA
/// over SHA-256 of the sign bytes with low S, checked by k256.
#[test]
fn every_wire_version_with_a_secp256k1_consensus_key() {
    every_wire_version(KeyHome::SoftwareSecp256k1);
}

/// The same matrix with the consensus key made on a SoftHSM2 token (`CKM_EDDSA`): every
/// signature the mock node receives is checked with ed25519-dalek as above.
#[test]
fn every_wire_version_with_the_key_on_a_pkcs11_token() {
    let Some(token) = crate::softhsm::SoftToken::new("kg-privval") else {
        return;
    };
    every_wire_version(KeyHome::Token(token));
}
