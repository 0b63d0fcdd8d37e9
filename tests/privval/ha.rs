//! Two keyguard daemons with the same consensus key share one PostgreSQL store; four sentries
//! connect to each and race conflicting blocks for the same step: across both instances
//! exactly one block is ever signed per step (issue 15). The daemon-level negative control is
//! the store's `split-fence` fault (tests/pg_store.rs): with the check and the write split, the
//! same race signs twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Barrier, Mutex};

use crate::harness::{config_text, Keyguard, NodeListener, ValidatorSpec};
use crate::node::{now, Ask, Node, Ver};
use crate::pg::PgCluster;

/// Blocks signed and signatures released at one step.
type Released = (BTreeSet<u8>, BTreeSet<Vec<u8>>);

const PER_INSTANCE: usize = 4;
const STEPS: i64 = 16;

/// `[store]` naming the cluster (password in a 0600 file under `dir`).
pub fn pg_store_toml(c: &PgCluster, dir: &std::path::Path) -> String {
    let pw = dir.join("pg.pass");
    std::fs::write(&pw, c.password()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    format!(
        "\n[store]\nbackend = \"postgres\"\n\n[store.postgres]\nhosts = [\"{}\"]\nport = {}\n\
         user = \"{}\"\ndbname = \"{}\"\npassword_file = \"{}\"\ntls = \"disable\"\n\
         deadline_ms = 5000\n",
        c.host(),
        c.port(),
        c.user(),
        c.dbname(),
        pw.display()
    )
}

#[test]
fn two_instances_sharing_postgres_sign_one_block_per_step() {
    let c = PgCluster::start();
    let root = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    let mut daemons = Vec::new();
    for inst in 0..2 {
        let dir = root.path().join(format!("kg{inst}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut specs = Vec::new();
        for i in 0..PER_INSTANCE {
            let (l, addr) = if i % 2 == 0 {
                NodeListener::unix(&dir.join(format!("s{i}.sock")))
            } else {
                NodeListener::tcp()
            };
            listeners.push(l);
            specs.push(ValidatorSpec {
                name: format!("sentry{inst}-{i}"),
                chain_id: "ha-chain".into(),
                addr,
                protocol: "v0.38",
                new_validator: true,
                extra: String::new(),
            });
        }
        if inst == 1 {
            // The same key: a copy of the first instance's keystore.
            let from = root.path().join("kg0/data/keys");
            let to = dir.join("data/keys");
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(&from).unwrap().flatten() {
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                for d in [dir.join("data"), to.clone()] {
                    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
                }
            }
        }
        let text = config_text(&dir, &specs) + &pg_store_toml(&c, &dir);
        daemons.push(Keyguard::start(&dir, &text));
    }
    let n = listeners.len();
    let barrier = Barrier::new(n);
    let released: Mutex<BTreeMap<i64, Released>> = Mutex::default();
    std::thread::scope(|s| {
        for (i, l) in listeners.iter().enumerate() {
            let (barrier, released) = (&barrier, &released);
            s.spawn(move || {
                let mut node = Node::new(l.accept(), Ver::V038, "ha-chain");
                node.pubkey().unwrap().unwrap();
                for step in 0..STEPS {
                    // Two candidate blocks per step, spread over both instances.
                    let block = (step as u8).wrapping_mul(4) + (i % 2) as u8;
                    let vote_type = if step % 2 == 0 { 1 } else { 2 };
                    let ask = Ask::vote(vote_type, step / 2 + 1, 0, Some(block), now());
                    barrier.wait();
                    if let Ok(r) = node.sign(&ask).expect("connection") {
                        let mut m = released.lock().unwrap();
                        let e = m.entry(step).or_default();
                        e.0.insert(block);
                        e.1.insert(r.signature);
                    }
                }
            });
        }
    });
    let released = released.into_inner().unwrap();
    assert!(!released.is_empty(), "nothing was signed at all");
    for (step, (blocks, _)) in &released {
        assert_eq!(blocks.len(), 1, "step {step}: blocks {blocks:?} all signed");
    }
    // One audit chain, written by both, verified from the second instance.
    let (ok, out, err) = crate::harness::cli(&[
        "audit",
        "verify",
        "--config",
        daemons[1].config.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
}
