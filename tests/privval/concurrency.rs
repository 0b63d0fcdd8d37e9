//! 32 sentries of one validator send conflicting requests for the same step at the same
//! moment: exactly one block id may ever be signed per step.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Barrier, Mutex};

use crate::harness::{config_text, Keyguard, NodeListener, ValidatorSpec};
use crate::node::{now, Ask, Node, Ver};

/// Blocks signed and signatures released at one step.
type StepOutcome = (BTreeSet<u8>, BTreeSet<Vec<u8>>);

const SENTRIES: usize = 32;
const STEPS: i64 = 20;

#[test]
fn thirty_two_connections_racing_one_step_sign_one_block() {
    let dir = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    let mut specs = Vec::new();
    for i in 0..SENTRIES {
        let (l, addr) = if i % 2 == 0 {
            NodeListener::unix(&dir.path().join(format!("s{i}.sock")))
        } else {
            NodeListener::tcp()
        };
        listeners.push(l);
        specs.push(ValidatorSpec {
            name: format!("sentry{i}"),
            chain_id: "race-chain".into(),
            addr,
            protocol: if i % 2 == 0 { "v0.38" } else { "v1" },
            new_validator: true,
            extra: String::new(),
        });
    }
    let _kg = Keyguard::start(dir.path(), &config_text(dir.path(), &specs));

    let barrier = Barrier::new(SENTRIES);
    // step -> (blocks signed, signatures released)
    let released: Mutex<BTreeMap<i64, StepOutcome>> = Mutex::default();
    let refused = Mutex::new(0usize);
    std::thread::scope(|s| {
        for (i, l) in listeners.iter().enumerate() {
            let (barrier, released, refused) = (&barrier, &released, &refused);
            s.spawn(move || {
                let ver = if i % 2 == 0 { Ver::V038 } else { Ver::V1 };
                let mut node = Node::new(l.accept(), ver, "race-chain");
                node.pubkey().unwrap().unwrap();
                for step in 0..STEPS {
                    // Four candidate blocks per step, eight sentries behind each.
                    let block = (step as u8).wrapping_mul(8) + (i % 4) as u8;
                    let vote_type = if step % 2 == 0 { 1 } else { 2 };
                    let ask = Ask::vote(vote_type, step / 2 + 1, 0, Some(block), now());
                    barrier.wait();
                    match node.sign(&ask).expect("connection") {
                        Ok(r) => {
                            let mut m = released.lock().unwrap();
                            let e = m.entry(step).or_default();
                            e.0.insert(block);
                            e.1.insert(r.signature);
                        }
                        Err((code, desc)) => {
                            assert_eq!(code, 1, "{desc}");
                            assert!(desc.contains("cometbft.double_sign"), "{desc}");
                            *refused.lock().unwrap() += 1;
                        }
                    }
                }
            });
        }
    });
    let released = released.into_inner().unwrap();
    assert_eq!(released.len(), STEPS as usize, "every step signed once");
    for (step, (blocks, sigs)) in &released {
        assert_eq!(blocks.len(), 1, "step {step}: blocks {blocks:?} all signed");
        assert_eq!(
            sigs.len(),
            1,
            "step {step}: one signature, reused for repeats"
        );
    }
    // Three blocks of four lose at every step: 24 of 32 requests are refused.
    assert_eq!(refused.into_inner().unwrap(), 24 * STEPS as usize);
}
