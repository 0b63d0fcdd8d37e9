//! Nimbus block proofs against BeaconBlockBody trees built by remerkleable
//! (`tests/vectors/eth2/block_proofs.json`, from `tests/interop/eth2_body.py`): the crate's
//! gindex table and branch check are compared with an independent SSZ implementation, and every
//! forgery in the module's attacker's table is refused.

use serde_json::{json, Value};

use crate::proofs::{verify_branch, ProvenProperty, MAX_DEPTH};
use crate::{decode, Context, DecodeError, Duty, ForkName, Network};

const VECTORS: &str = include_str!("../../../tests/vectors/eth2/block_proofs.json");
const PK: [u8; 48] = [0xaa; 48];

fn cases() -> Vec<Value> {
    let v: Value = serde_json::from_str(VECTORS).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn case(version: &str) -> Value {
    cases()
        .into_iter()
        .find(|c| c["version"] == version)
        .unwrap()
}

/// Mainnet's (previous, current, epoch) for a fork, as clients send `fork_info`.
fn fork_info(version: &str) -> Value {
    let (prev, cur, epoch) = match version {
        "BELLATRIX" => ("0x01000000", "0x02000000", 144896),
        "CAPELLA" => ("0x02000000", "0x03000000", 194048),
        "DENEB" => ("0x03000000", "0x04000000", 269568),
        "ELECTRA" => ("0x04000000", "0x05000000", 364032),
        _ => ("0x05000000", "0x06000000", 411392),
    };
    json!({"fork": {"previous_version": prev, "current_version": cur, "epoch": epoch.to_string()},
           "genesis_validators_root": "0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95"})
}

/// The request Nimbus sends in verifying-web3signer mode (`beacon_block` + `proofs`).
fn nimbus_block(c: &Value, proofs: Value) -> Value {
    json!({
        "type": "BLOCK_V2",
        "fork_info": fork_info(c["version"].as_str().unwrap()),
        "beacon_block": {"version": c["version"], "block_header": {
            "slot": c["slot"], "proposer_index": "12345",
            "parent_root": format!("0x{}", "01".repeat(32)),
            "state_root": format!("0x{}", "02".repeat(32)),
            "body_root": c["body_root"]}},
        "proofs": proofs,
    })
}

fn dec(v: &Value) -> Result<Duty, DecodeError> {
    let n = Network::builtin("mainnet").unwrap();
    let ctx = Context {
        network: &n,
        pubkey: &PK,
        now_unix: 1_800_000_000,
    };
    decode(v.to_string().as_bytes(), &ctx)
}

fn hex20(v: &Value) -> [u8; 20] {
    crate::parse_hex_fixed::<20>(v.as_str().unwrap()).unwrap()
}

fn hex32(v: &Value) -> [u8; 32] {
    crate::parse_hex_fixed::<32>(v.as_str().unwrap()).unwrap()
}

fn refused(v: &Value, rule: &str, field: &str) -> DecodeError {
    let e = dec(v).expect_err("must be refused");
    assert_eq!((e.rule, e.field.as_str()), (rule, field), "{e}");
    e
}

#[test]
fn gindex_table_matches_remerkleable_layout() {
    for c in cases() {
        let fork = ForkName::parse(c["version"].as_str().unwrap()).unwrap();
        assert_eq!(
            ProvenProperty::FeeRecipient.gindex(fork),
            c["fee_recipient_gindex"].as_u64(),
            "{fork:?}"
        );
        assert_eq!(
            ProvenProperty::Graffiti.gindex(fork),
            c["graffiti_gindex"].as_u64()
        );
        assert!(ProvenProperty::FeeRecipient.gindex(fork).unwrap() < 1 << (MAX_DEPTH + 1));
    }
    assert_eq!(ProvenProperty::Graffiti.gindex(ForkName::Altair), None);
}

#[test]
fn every_fork_proves_its_fee_recipient_and_graffiti() {
    for c in cases() {
        let d = dec(&nimbus_block(&c, c["proofs"].clone())).unwrap();
        let p = d.block_proofs.expect("proofs kept");
        let (fee, graffiti) = (hex20(&c["fee_recipient"]), hex32(&c["graffiti"]));
        let other = [0x11u8; 20];
        assert_eq!(p.proven_fee_recipient(&[other, fee]), Some(fee));
        assert_eq!(p.proven_fee_recipient(&[other]), None, "another payee");
        assert_eq!(p.proven_graffiti(&[[0; 32], graffiti]), Some(graffiti));
        assert_eq!(p.proven_graffiti(&[[0; 32]]), None);
        // A value from one property never proves the other.
        let mut fee_leaf = [0u8; 32];
        fee_leaf[..20].copy_from_slice(&fee);
        assert!(!p.proves(ProvenProperty::Graffiti, &fee_leaf));
        assert!(!p.proves(ProvenProperty::FeeRecipient, &graffiti));
    }
}

#[test]
fn a_flipped_sibling_byte_proves_nothing() {
    for version in ["DENEB", "ELECTRA"] {
        let c = case(version);
        let fee = hex20(&c["fee_recipient"]);
        for (entry, hash) in [(0, 0), (0, 8), (1, 3)] {
            let mut proofs = c["proofs"].clone();
            let h = proofs[entry]["proof"][hash].as_str().unwrap().to_string();
            let flipped = if &h[2..3] == "0" { "1" } else { "0" };
            proofs[entry]["proof"][hash] = json!(format!("0x{flipped}{}", &h[3..]));
            let p = dec(&nimbus_block(&c, proofs))
                .unwrap()
                .block_proofs
                .unwrap();
            if entry == 0 {
                assert_eq!(p.proven_fee_recipient(&[fee]), None, "{version} {hash}");
            } else {
                assert_eq!(p.proven_graffiti(&[hex32(&c["graffiti"])]), None);
                assert_eq!(p.proven_fee_recipient(&[fee]), Some(fee), "other untouched");
            }
        }
    }
}

#[test]
fn graffiti_branch_under_the_fee_recipient_index_is_refused() {
    let c = case("DENEB");
    let graffiti_branch = c["proofs"][1]["proof"].clone();
    let swapped = json!([{"index": "801", "proof": graffiti_branch}]);
    let e = refused(
        &nimbus_block(&c, swapped),
        "eth2.block_proof",
        "proofs[0].proof",
    );
    assert!(e.reason.contains("needs exactly 9"), "{e}");
    // Padded to the right length it still proves nothing.
    let mut padded = graffiti_branch.as_array().unwrap().clone();
    padded.resize(9, json!(format!("0x{}", "00".repeat(32))));
    let p = dec(&nimbus_block(
        &c,
        json!([{"index": "801", "proof": padded}]),
    ))
    .unwrap()
    .block_proofs
    .unwrap();
    assert_eq!(p.proven_fee_recipient(&[hex20(&c["fee_recipient"])]), None);
    assert!(!p.proves(ProvenProperty::FeeRecipient, &hex32(&c["graffiti"])));
}

#[test]
fn another_forks_or_fields_index_is_refused_by_name() {
    let deneb = case("DENEB");
    // Capella's fee-recipient index (and its 8-hash branch) in a Deneb block.
    let capella = case("CAPELLA");
    let e = refused(
        &nimbus_block(&deneb, json!([capella["proofs"][0].clone()])),
        "eth2.block_proof",
        "proofs[0].index",
    );
    assert!(
        e.reason.contains("gindex 401") && e.reason.contains("DENEB"),
        "{e}"
    );
    for g in ["0", "1", "25", "802", "18446744073709551615"] {
        let p = json!([{"index": g, "proof": []}]);
        let e = refused(
            &nimbus_block(&deneb, p),
            "eth2.block_proof",
            "proofs[0].index",
        );
        assert!(e.reason.contains(&format!("gindex {g} ")), "{e}");
    }
    // Deneb's 801 in a Capella block.
    refused(
        &nimbus_block(&capella, json!([deneb["proofs"][0].clone()])),
        "eth2.block_proof",
        "proofs[0].index",
    );
}

#[test]
fn an_extra_or_missing_sibling_is_refused() {
    let c = case("ELECTRA");
    let mut extra = c["proofs"].clone();
    extra[0]["proof"]
        .as_array_mut()
        .unwrap()
        .push(json!(format!("0x{}", "00".repeat(32))));
    refused(
        &nimbus_block(&c, extra),
        "eth2.block_proof",
        "proofs[0].proof",
    );
    let mut short = c["proofs"].clone();
    short[1]["proof"].as_array_mut().unwrap().pop();
    refused(
        &nimbus_block(&c, short),
        "eth2.block_proof",
        "proofs[1].proof",
    );
}

#[test]
fn huge_or_repeated_proofs_are_refused_before_hashing() {
    let c = case("ELECTRA");
    let one = c["proofs"][0].clone();
    let many = Value::Array(vec![one.clone(); 20]);
    let e = refused(&nimbus_block(&c, many), "eth2.block_proof", "proofs");
    assert!(e.reason.contains("at most 2"), "{e}");
    // The same property twice: an honest branch cannot vouch for a second one.
    refused(
        &nimbus_block(&c, json!([one.clone(), one])),
        "eth2.block_proof",
        "proofs[1].index",
    );
    let long = json!([{"index": "801", "proof": vec![format!("0x{}", "00".repeat(32)); 500]}]);
    refused(
        &nimbus_block(&c, long),
        "eth2.block_proof",
        "proofs[0].proof",
    );
    // Past the body cap nothing is parsed at all.
    let huge = json!([{"index": "801", "proof": vec![format!("0x{}", "00".repeat(32)); 3000]}]);
    refused(&nimbus_block(&c, huge), "request.invalid", "body");
}

#[test]
fn malformed_entries_are_refused_naming_the_field() {
    let c = case("DENEB");
    let good = c["proofs"][0].clone();
    let mut with_value = good.clone();
    with_value["value"] = json!("0x00");
    refused(
        &nimbus_block(&c, json!([with_value])),
        "request.invalid",
        "proofs[0].value",
    );
    let mut number = good.clone();
    number["index"] = json!(801);
    refused(
        &nimbus_block(&c, json!([number])),
        "request.invalid",
        "proofs[0].index",
    );
    let mut short_hex = good.clone();
    short_hex["proof"][2] = json!("0x1234");
    refused(
        &nimbus_block(&c, json!([short_hex])),
        "request.invalid",
        "proofs[0].proof[2]",
    );
    refused(
        &nimbus_block(&c, json!({"index": "801"})),
        "request.invalid",
        "proofs",
    );
    refused(
        &nimbus_block(&c, json!(["x"])),
        "request.invalid",
        "proofs[0]",
    );
    let mut not_list = good;
    not_list["proof"] = json!("0x00");
    refused(
        &nimbus_block(&c, json!([not_list])),
        "request.invalid",
        "proofs[0].proof",
    );
}

#[test]
fn empty_or_null_proofs_are_none_and_other_types_refuse_the_field() {
    let c = case("FULU");
    for p in [json!([]), Value::Null] {
        assert_eq!(dec(&nimbus_block(&c, p)).unwrap().block_proofs, None);
    }
    let slot: u64 = c["slot"].as_str().unwrap().parse().unwrap();
    let randao = json!({"type": "RANDAO_REVEAL", "fork_info": fork_info("FULU"),
        "randao_reveal": {"epoch": (slot / 32).to_string()}, "proofs": c["proofs"]});
    refused(&randao, "request.invalid", "proofs");
}

#[test]
fn branch_check_bounds() {
    let leaf = [7u8; 32];
    // A one-level tree: root = hash(leaf, sibling) at gindex 2.
    let sib = [9u8; 32];
    let root = crate::ssz::hash2(&leaf, &sib);
    assert!(verify_branch(&leaf, &[sib], 2, &root));
    assert!(!verify_branch(&leaf, &[sib], 3, &root), "wrong side");
    assert!(
        !verify_branch(&leaf, &[], 1, &leaf),
        "the root itself is no proof"
    );
    assert!(!verify_branch(&leaf, &[sib], 0, &root));
    assert!(!verify_branch(&leaf, &[sib, sib], 2, &root));
}

/// Byte mutations and truncations of a Nimbus proofs request never panic, and whatever still
/// decodes with a changed branch proves nothing it did not prove before.
#[test]
fn mutated_proof_requests_never_panic_nor_prove_more() {
    let c = case("ELECTRA");
    let fee = hex20(&c["fee_recipient"]);
    let seed = nimbus_block(&c, c["proofs"].clone()).to_string();
    let bytes = seed.as_bytes();
    for cut in (0..bytes.len()).step_by(7) {
        let _ = dec_bytes(&bytes[..cut]);
    }
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let other = [0x11u8; 20];
    for _ in 0..3000 {
        let mut b = bytes.to_vec();
        let i = (next() as usize) % b.len();
        b[i] = b"0123456789abcdef"[(next() % 16) as usize];
        if let Ok(d) = dec_bytes(&b) {
            if let Some(p) = d.block_proofs {
                assert_eq!(p.proven_fee_recipient(&[other]), None);
                if b != bytes && p.proven_fee_recipient(&[fee]).is_some() {
                    // Only a mutation outside the fee-recipient branch and body root keeps it.
                    assert_eq!(p.body_root, hex32(&c["body_root"]));
                }
            }
        }
    }
}

fn dec_bytes(b: &[u8]) -> Result<Duty, DecodeError> {
    let n = Network::builtin("mainnet").unwrap();
    let ctx = Context {
        network: &n,
        pubkey: &PK,
        now_unix: 1_800_000_000,
    };
    decode(b, &ctx)
}
