//! Batched pass 2 through the eth2 guard: 48 validators attest at once and one key's signer is
//! faulted (it signs a root with one bit flipped: a valid signature of another message, the
//! case only a pairing check sees). That signature is withheld (`guard.pass2_mismatch`), every
//! other one is released and verifies alone. Negative control: with the check switched off
//! the faulted signature is released. Also here, as it needs the same guard: keystore imports
//! run one at a time.

use std::sync::Arc;

use super::pass2::Pass2;
use super::{Eth2Caller, Eth2Guard};
use crate::backend::software::bls::BlsKeystore;
use crate::config::Eth2Policy;
use crate::store::Store;
use keyguard_eth2::Network;

const VALIDATORS: usize = 48;
const FAULTED: usize = 17;

fn attestation(target: u64) -> Vec<u8> {
    let gvr = "0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95";
    serde_json::json!({
        "type": "ATTESTATION",
        "fork_info": {"fork": {"previous_version": "0x05000000", "current_version": "0x06000000", "epoch": "411392"},
                      "genesis_validators_root": gvr},
        "attestation": {"slot": (target * 32).to_string(), "index": "0",
            "beacon_block_root": format!("0x{}", "11".repeat(32)),
            "source": {"epoch": (target - 1).to_string(), "root": format!("0x{}", "22".repeat(32))},
            "target": {"epoch": target.to_string(), "root": format!("0x{}", "33".repeat(32))}}
    })
    .to_string()
    .into_bytes()
}

/// Signs one attestation per validator at once; the faulted validator's outcome, and whether
/// every other one was released with a signature that verifies.
fn run(pass2: Pass2) -> (Result<[u8; 96], &'static str>, bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("kg.db")).unwrap();
    let keys = Arc::new(BlsKeystore::in_memory());
    let pks: Vec<[u8; 48]> = (0..VALIDATORS).map(|_| keys.generate().unwrap()).collect();
    let net = Network::builtin("mainnet").unwrap();
    let now = keyguard_chain::clock::now_ms() / 1000;
    let target = net.epoch_of(net.slot_at(now));
    let mut guard = Eth2Guard::new(
        net,
        Eth2Policy::default(),
        keys,
        store.eth2_slashing(),
        store.audit_log(),
    );
    guard.pass2 = pass2;
    guard.tamper = Some(pks[FAULTED]);
    let guard = Arc::new(guard);
    let body = Arc::new(attestation(target));
    let results = rt.block_on(async {
        let tasks: Vec<_> = pks
            .iter()
            .map(|pk| {
                let (g, b, pk) = (guard.clone(), body.clone(), *pk);
                tokio::spawn(async move {
                    let who = Eth2Caller {
                        client: "test",
                        request_id: "t".into(),
                    };
                    g.sign(&who, &pk, &b, now).await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let root = keyguard_eth2::decode(
        &body,
        &keyguard_eth2::Context {
            network: guard.network(),
            pubkey: &pks[0],
            now_unix: now,
        },
    )
    .unwrap()
    .signing_root;
    let others_ok = results.iter().enumerate().all(|(i, r)| {
        i == FAULTED
            || r.as_ref()
                .is_ok_and(|sig| keyguard_eth2::bls::verify(&pks[i], &root, sig))
    });
    let faulted = results[FAULTED].clone().map_err(|e| e.rule);
    let (batches, checked) = guard.pass2_batches();
    assert_eq!(checked, VALIDATORS as u64);
    assert!(batches < checked, "no batch held two signatures");
    drop(guard);
    store.close().unwrap();
    (faulted, others_ok)
}

#[test]
fn a_faulted_signature_inside_a_batch_is_withheld() {
    let (faulted, others_ok) = run(Pass2::spawn());
    assert_eq!(faulted, Err(crate::guard::PASS2_MISMATCH));
    assert!(others_ok, "the good signatures of the batch are released");
}

#[test]
fn a_faulted_signature_negative_control_without_the_check_is_released() {
    let (faulted, others_ok) = run(Pass2::unchecked());
    assert!(faulted.is_ok(), "the test cannot see a missing pass 2");
    assert!(others_ok);
}

/// Keystore imports run one at a time (each KDF may take 1 GiB): an import waits while another
/// holds the lock, and proceeds once it is released.
#[test]
fn keystore_imports_wait_for_each_other() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("kg.db")).unwrap();
    let guard = Arc::new(Eth2Guard::new(
        Network::builtin("mainnet").unwrap(),
        Eth2Policy::default(),
        Arc::new(BlsKeystore::in_memory()),
        store.eth2_slashing(),
        store.audit_log(),
    ));
    rt.block_on(async {
        let held = super::keys::IMPORTING.lock().await;
        let g = guard.clone();
        let import = tokio::spawn(async move {
            g.import_keys(vec!["{}".into()], vec!["pw".into()], None)
                .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!import.is_finished(), "an import ran beside another");
        drop(held);
        let statuses = import.await.unwrap().unwrap();
        assert_eq!(statuses.len(), 1);
    });
}
