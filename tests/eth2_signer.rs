//! The eth2 signer's duty policy, each rule with its positive control: proposer index, fee
//! recipient and gas limit of registrations, switched-off duties, per-key rate limits, the kill
//! switch; and a refusal leaves no slashing record behind (the same message signs once the rule
//! allows it). Signatures are checked with blst's verifier here; the independent check (py_ecc,
//! remerkleable) is `tests/interop/test_eth2.py`.

use std::collections::BTreeMap;
use std::sync::Arc;

use keyguard::access::kill::{KillSwitch, ALL_KEYS};
use keyguard::backend::software::bls::BlsKeystore;
use keyguard::config::Eth2Policy;
use keyguard::guard::eth2::{pubkey_hex, Eth2Caller, Eth2Guard, Eth2Refusal};
use keyguard::store::Store;
use keyguard_eth2::Network;

const GVR: &str = "0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95";

fn now() -> u64 {
    keyguard_chain::clock::now_ms() / 1000
}

fn fork_info() -> serde_json::Value {
    serde_json::json!({"fork": {"previous_version": "0x05000000", "current_version": "0x06000000", "epoch": "411392"},
                       "genesis_validators_root": GVR})
}

fn block(slot: u64, proposer: u64) -> Vec<u8> {
    serde_json::json!({"type": "BLOCK_V2", "fork_info": fork_info(), "beacon_block": {"version": "FULU", "block_header": {
        "slot": slot.to_string(), "proposer_index": proposer.to_string(),
        "parent_root": format!("0x{}", "01".repeat(32)), "state_root": format!("0x{}", "02".repeat(32)),
        "body_root": format!("0x{}", "03".repeat(32))}}})
    .to_string()
    .into_bytes()
}

fn registration(pk: &[u8; 48], fee: &str, gas: u64) -> Vec<u8> {
    serde_json::json!({"type": "VALIDATOR_REGISTRATION", "validator_registration": {
        "fee_recipient": fee, "gas_limit": gas.to_string(), "timestamp": "1700000000", "pubkey": pubkey_hex(pk)}})
    .to_string()
    .into_bytes()
}

fn randao(epoch: u64) -> Vec<u8> {
    serde_json::json!({"type": "RANDAO_REVEAL", "fork_info": fork_info(), "randao_reveal": {"epoch": epoch.to_string()}})
        .to_string()
        .into_bytes()
}

/// Builds the kill switch of a rig from its store.
type MakeKill<'a> = &'a dyn Fn(&Store) -> Arc<KillSwitch>;

struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    guard: Eth2Guard,
    pk: [u8; 48],
    slot: u64,
}

fn rig(policy: impl FnOnce(&[u8; 48], &mut Eth2Policy), kill: Option<MakeKill<'_>>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("kg.db")).unwrap();
    let keys = Arc::new(BlsKeystore::in_memory());
    let pk = keys.generate().unwrap();
    let mut p = Eth2Policy::default();
    policy(&pk, &mut p);
    let net = Network::builtin("mainnet").unwrap();
    let slot = net.slot_at(now());
    let mut guard = Eth2Guard::new(net, p, keys, store.eth2_slashing(), store.audit_log());
    if let Some(k) = kill {
        guard = guard.with_kill_switch(k(&store));
    }
    Rig {
        _dir: dir,
        store,
        guard,
        pk,
        slot,
    }
}

impl Rig {
    fn sign(&self, body: &[u8]) -> Result<[u8; 96], Eth2Refusal> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let who = Eth2Caller {
            client: "test",
            request_id: "r".into(),
        };
        rt.block_on(self.guard.sign(&who, &self.pk, body, now()))
    }
}

#[test]
fn proposer_index_is_enforced_and_a_refusal_records_nothing() {
    let r = rig(
        |pk, p| {
            p.proposer_index = BTreeMap::from([(pubkey_hex(pk), 42)]);
        },
        None,
    );
    let e = r.sign(&block(r.slot, 41)).unwrap_err();
    assert_eq!(e.rule, "eth2.proposer_index");
    // Positive control; the refused block left no record, so this slot still signs.
    r.sign(&block(r.slot, 42)).unwrap();
    // And the slot is now taken: a different block is a double proposal.
    let other = String::from_utf8(block(r.slot, 42))
        .unwrap()
        .replace(&"03".repeat(32), &"04".repeat(32));
    assert_eq!(
        r.sign(other.as_bytes()).unwrap_err().rule,
        "eth2.double_proposal"
    );
    r.store.close().unwrap();
}

#[test]
fn registrations_need_an_allowed_fee_recipient_and_gas_limit() {
    let good = format!("0x{}", "ab".repeat(20));
    let g2 = good.clone();
    let r = rig(
        move |_, p| {
            p.fee_recipients = vec![g2];
            p.min_gas_limit = Some(30_000_000);
            p.max_gas_limit = Some(60_000_000);
        },
        None,
    );
    assert!(
        r.sign(&registration(&r.pk, &good, 36_000_000)).is_ok(),
        "positive control"
    );
    let bad_fee = format!("0x{}", "cd".repeat(20));
    assert_eq!(
        r.sign(&registration(&r.pk, &bad_fee, 36_000_000))
            .unwrap_err()
            .rule,
        "eth2.fee_recipient"
    );
    assert_eq!(
        r.sign(&registration(&r.pk, &good, 100_000_000))
            .unwrap_err()
            .rule,
        "eth2.gas_limit"
    );
    assert_eq!(
        r.sign(&registration(&r.pk, &good, 1)).unwrap_err().rule,
        "eth2.gas_limit"
    );
    // A far-future timestamp would outrank every later registration at the relays.
    let future = String::from_utf8(registration(&r.pk, &good, 36_000_000))
        .unwrap()
        .replace("1700000000", &(now() + 86_400 * 365).to_string());
    assert_eq!(
        r.sign(future.as_bytes()).unwrap_err().rule,
        "eth2.clock_window"
    );
}

#[test]
fn disabled_duties_and_rate_limits() {
    let r = rig(
        |_, p| {
            p.disabled_duties = vec!["sync_committee_message".into()];
            p.rate_limits = BTreeMap::from([("randao_reveal".into(), 2)]);
        },
        None,
    );
    let epoch = r.slot / 32;
    assert!(r.sign(&randao(epoch)).is_ok());
    assert!(r.sign(&randao(epoch)).is_ok());
    assert_eq!(r.sign(&randao(epoch)).unwrap_err().rule, "eth2.rate_limit");
    let sync = serde_json::json!({"type": "SYNC_COMMITTEE_MESSAGE", "fork_info": fork_info(),
        "sync_committee_message": {"beacon_block_root": format!("0x{}", "66".repeat(32)), "slot": r.slot.to_string()}});
    assert_eq!(
        r.sign(sync.to_string().as_bytes()).unwrap_err().rule,
        "eth2.duty_disabled"
    );
}

#[test]
fn the_kill_switch_stops_every_duty() {
    let holder: std::sync::Mutex<Option<Arc<KillSwitch>>> = Default::default();
    let make = |store: &Store| {
        let k = Arc::new(
            KillSwitch::load(
                store.state_db().unwrap(),
                store.path().with_extension("kill"),
            )
            .unwrap(),
        );
        *holder.lock().unwrap() = Some(k.clone());
        k
    };
    let r = rig(|_, _| {}, Some(&make));
    let epoch = r.slot / 32;
    assert!(r.sign(&randao(epoch)).is_ok(), "positive control");
    holder
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .switch_off(ALL_KEYS);
    assert_eq!(
        r.sign(&randao(epoch)).unwrap_err().rule,
        "admin.kill_switch"
    );
    assert_eq!(
        r.sign(&block(r.slot, 1)).unwrap_err().rule,
        "admin.kill_switch"
    );
}

#[test]
fn far_future_duties_are_refused_by_the_clock() {
    let r = rig(|_, _| {}, None);
    assert_eq!(
        r.sign(&block(r.slot + 10_000, 1)).unwrap_err().rule,
        "eth2.clock_window"
    );
    assert!(r.sign(&block(r.slot + 1, 1)).is_ok(), "positive control");
}

/// Exits without `exit_approval` are refused; with it they are held until two approvers of the
/// group agree, then signed exactly once (a retry of the consumed approval is refused).
#[test]
fn exits_wait_for_two_approvers_and_sign_once() {
    let exit = |r: &Rig| {
        serde_json::json!({"type": "VOLUNTARY_EXIT", "fork_info": fork_info(),
            "voluntary_exit": {"epoch": (r.slot / 32).to_string(), "validator_index": "7"}})
        .to_string()
        .into_bytes()
    };
    let plain = rig(|_, _| {}, None);
    assert_eq!(
        plain.sign(&exit(&plain)).unwrap_err().rule,
        "eth2.voluntary_exit"
    );

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("kg.db")).unwrap();
    let db = store.state_db().unwrap();
    for (name, group) in [("ann", "staking"), ("bob", "staking"), ("eve", "ops")] {
        db.add_user(name, &["approver".into()], &[group.into()], &[7u8; 20])
            .unwrap();
    }
    let book = keyguard::approvals::Approvals::new(db.clone());
    let keys = Arc::new(BlsKeystore::in_memory());
    let pk = keys.generate().unwrap();
    let p = Eth2Policy {
        exit_approval: Some(keyguard::config::Eth2Approval {
            approvers: 2,
            group: "staking".into(),
            within_secs: 3600,
        }),
        ..Eth2Policy::default()
    };
    let net = Network::builtin("mainnet").unwrap();
    let slot = net.slot_at(now());
    let guard = Eth2Guard::new(net, p, keys, store.eth2_slashing(), store.audit_log())
        .with_approvals(book.clone());
    let r = Rig {
        _dir: dir,
        store,
        guard,
        pk,
        slot,
    };
    let held = r.sign(&exit(&r)).unwrap_err();
    assert_eq!(held.rule, "approval.required");
    let pending = book.pending(keyguard::store::now_ms()).unwrap();
    assert_eq!(pending.len(), 1);
    let user = |n: &str| db.user(n).unwrap().unwrap();
    book.vote(
        &pending[0].id,
        &user("ann"),
        true,
        keyguard::store::now_ms(),
    )
    .unwrap();
    assert_eq!(
        r.sign(&exit(&r)).unwrap_err().rule,
        "approval.required",
        "one approval is not two"
    );
    assert!(
        book.vote(
            &pending[0].id,
            &user("eve"),
            true,
            keyguard::store::now_ms()
        )
        .is_err(),
        "outside the group"
    );
    book.vote(
        &pending[0].id,
        &user("bob"),
        true,
        keyguard::store::now_ms(),
    )
    .unwrap();
    let sig = r.sign(&exit(&r)).unwrap();
    assert!(keyguard_eth2::bls::verify(
        &r.pk,
        &{
            // EIP-7044: Capella's version on a network past Deneb.
            let d = keyguard_eth2::domain::compute_domain(
                keyguard_eth2::domain::VOLUNTARY_EXIT,
                [3, 0, 0, 0],
                &Network::builtin("mainnet").unwrap().genesis_validators_root,
            );
            let obj = keyguard_eth2::ssz::container(&[
                keyguard_eth2::ssz::uint64(r.slot / 32),
                keyguard_eth2::ssz::uint64(7),
            ]);
            keyguard_eth2::domain::signing_root(&obj, &d)
        },
        &sig
    ));
    assert_eq!(r.sign(&exit(&r)).unwrap_err().rule, "approval.consumed");
}

/// Nimbus block proofs (`tests/vectors/eth2/block_proofs.json`: a Fulu body hashed by
/// remerkleable) through the guard: the proven fee recipient and graffiti must be allowed, a
/// forged or missing proof is refused, and the audit row names what was proven.
mod block_proofs {
    use super::*;
    use keyguard::guard::eth2::Status;
    use keyguard::store::AuditFilter;
    use serde_json::{json, Value};

    const VECTORS: &str = include_str!("vectors/eth2/block_proofs.json");

    fn fulu() -> Value {
        let v: Value = serde_json::from_str(VECTORS).unwrap();
        v["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["version"] == "FULU")
            .unwrap()
            .clone()
    }

    fn nimbus_block(c: &Value, proofs: Option<Value>) -> Vec<u8> {
        let mut b = json!({"type": "BLOCK_V2", "fork_info": fork_info(), "beacon_block": {"version": "FULU", "block_header": {
            "slot": c["slot"], "proposer_index": "7", "parent_root": format!("0x{}", "01".repeat(32)),
            "state_root": format!("0x{}", "02".repeat(32)), "body_root": c["body_root"]}}});
        if let Some(p) = proofs {
            b["proofs"] = p;
        }
        b.to_string().into_bytes()
    }

    fn policy(
        fees: Vec<String>,
        graffiti: &str,
        require: bool,
    ) -> impl FnOnce(&[u8; 48], &mut Eth2Policy) {
        let graffiti = graffiti.to_string();
        move |_, p| {
            p.block_fee_recipients = fees;
            p.block_graffiti = vec![graffiti];
            p.require_block_proofs = require;
        }
    }

    fn refused(r: &Rig, body: &[u8], rule: &str, status: Status) -> Eth2Refusal {
        let e = r.sign(body).unwrap_err();
        assert_eq!((e.rule, e.status), (rule, status), "{e:?}");
        e
    }

    #[test]
    fn required_proofs_of_allowed_values_sign_and_are_audited() {
        let c = fulu();
        let fee = c["fee_recipient"].as_str().unwrap().to_string();
        let other = format!("0x{}", "cd".repeat(20));
        // The vector's graffiti is the text "keyguard fulu", zero-padded.
        let r = rig(
            policy(vec![other.clone(), fee.clone()], "keyguard fulu", true),
            None,
        );
        let proofs = c["proofs"].clone();

        let e = refused(
            &r,
            &nimbus_block(&c, None),
            "eth2.block_proof_required",
            Status::Forbidden,
        );
        assert_eq!(e.field, "proofs");
        // Only the graffiti proven: the constrained fee recipient is still missing.
        let only_graffiti = json!([proofs[1].clone()]);
        refused(
            &r,
            &nimbus_block(&c, Some(only_graffiti)),
            "eth2.block_proof_required",
            Status::Forbidden,
        );
        // A flipped sibling byte: proves no allowed payee.
        let mut forged = proofs.clone();
        let h = forged[0]["proof"][4].as_str().unwrap().to_string();
        let flip = if &h[65..] == "0" { "1" } else { "0" };
        forged[0]["proof"][4] = json!(format!("{}{flip}", &h[..65]));
        let e = refused(
            &r,
            &nimbus_block(&c, Some(forged)),
            "eth2.block_fee_recipient",
            Status::Forbidden,
        );
        assert_eq!(e.field, "beacon_block.body.execution_payload.fee_recipient");
        // Another fork's index is malformed, not policy.
        let mut capella_index = proofs.clone();
        capella_index[0]["index"] = json!("401");
        refused(
            &r,
            &nimbus_block(&c, Some(capella_index)),
            "eth2.block_proof",
            Status::BadRequest,
        );

        // Positive control: the honest proofs sign (refusals recorded nothing for this slot).
        let sig = r.sign(&nimbus_block(&c, Some(proofs))).unwrap();
        let rows = r
            .store
            .query_audit(&AuditFilter {
                decision: Some("signed".into()),
                ..Default::default()
            })
            .unwrap();
        let duty = rows.last().unwrap().summary["duty"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            duty.contains(&format!("fee_recipient={fee} (proven)")),
            "{duty}"
        );
        assert!(
            duty.contains(&format!(
                "graffiti={} (proven)",
                c["graffiti"].as_str().unwrap()
            )),
            "{duty}"
        );
        assert_eq!(
            rows.last().unwrap().tx_hash.as_deref(),
            Some(hex::encode(sig).as_str())
        );
        r.store.close().unwrap();
    }

    #[test]
    fn honest_proofs_of_another_payee_or_graffiti_are_refused() {
        let c = fulu();
        let fee = c["fee_recipient"].as_str().unwrap().to_string();
        let not_ours = rig(
            policy(
                vec![format!("0x{}", "cd".repeat(20))],
                "keyguard fulu",
                false,
            ),
            None,
        );
        refused(
            &not_ours,
            &nimbus_block(&c, Some(c["proofs"].clone())),
            "eth2.block_fee_recipient",
            Status::Forbidden,
        );
        not_ours.store.close().unwrap();
        let graffiti = rig(policy(vec![fee], "keyguard", false), None);
        let e = refused(
            &graffiti,
            &nimbus_block(&c, Some(c["proofs"].clone())),
            "eth2.graffiti",
            Status::Forbidden,
        );
        assert_eq!(e.field, "beacon_block.body.graffiti");
        // Negative control of `require_block_proofs`: off, a block without proofs signs.
        graffiti.sign(&nimbus_block(&c, None)).unwrap();
        graffiti.store.close().unwrap();
    }
}

/// Below the audit disk floor no duty starts: refused by name before its slashing record, so
/// the slot is still free once space returns (control: another block for that slot then signs;
/// had the refused attempt recorded its block, this would be a double proposal).
#[test]
fn below_the_disk_floor_no_duty_starts_and_no_slot_is_used() {
    let r = rig(|_, _| {}, None);
    let log = r.store.audit_log();
    let limits = |min_free_bytes| keyguard::config::AuditLimits {
        min_free_bytes,
        ..Default::default()
    };
    log.configure_bounds(limits(u64::MAX), Some(r._dir.path().to_path_buf()));
    let body = block(r.slot, 7);
    let e = r.sign(&body).unwrap_err();
    assert_eq!(e.rule, "audit.disk_floor", "{e:?}");
    log.configure_bounds(limits(0), Some(r._dir.path().to_path_buf()));
    r.sign(&block(r.slot, 8))
        .expect("the slot was not used up by the refused attempt");
}
