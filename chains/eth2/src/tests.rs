use super::*;
use crate::domain::{compute_domain, DEPOSIT};

fn mainnet() -> Network {
    Network::builtin("mainnet").unwrap()
}

const PK: [u8; 48] = [0xaa; 48];

fn ctx(n: &Network) -> Context<'_> {
    Context {
        network: n,
        pubkey: &PK,
        now_unix: 1_800_000_000,
    }
}

fn fork_info(prev: &str, cur: &str, epoch: u64) -> serde_json::Value {
    serde_json::json!({
        "fork": {"previous_version": prev, "current_version": cur, "epoch": epoch.to_string()},
        "genesis_validators_root": "0x4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95"
    })
}

fn att(slot: u64, source: u64, target: u64) -> serde_json::Value {
    serde_json::json!({
        "type": "ATTESTATION",
        "fork_info": fork_info("0x05000000", "0x06000000", 411392),
        "attestation": {
            "slot": slot.to_string(), "index": "0",
            "beacon_block_root": format!("0x{}", "11".repeat(32)),
            "source": {"epoch": source.to_string(), "root": format!("0x{}", "22".repeat(32))},
            "target": {"epoch": target.to_string(), "root": format!("0x{}", "33".repeat(32))}
        }
    })
}

fn dec(v: &serde_json::Value) -> Result<Duty, DecodeError> {
    let n = mainnet();
    decode(v.to_string().as_bytes(), &ctx(&n))
}

/// Known value: the mainnet deposit domain every deposit tool prints
/// (`compute_domain(DOMAIN_DEPOSIT, 0x00000000, zero)`).
#[test]
fn mainnet_deposit_domain_is_the_known_constant() {
    let d = compute_domain(DEPOSIT, [0; 4], &[0; 32]);
    assert_eq!(
        hex::encode(d),
        "03000000f5a5fd42d16a20302798ef6ed309979b43003d2320d9f0e8ea9831a9"
    );
}

#[test]
fn attestation_decodes_with_slashing_fields() {
    let d = dec(&att(411392 * 32 + 5, 411391, 411392)).unwrap();
    assert_eq!(d.kind, DutyKind::Attestation);
    assert_eq!(
        d.slashable,
        Some(Slashable::Attestation {
            source: 411391,
            target: 411392
        })
    );
}

#[test]
fn client_signing_root_is_only_a_cross_check() {
    let mut v = att(411392 * 32, 411391, 411392);
    let good = dec(&v).unwrap().signing_root;
    v["signingRoot"] = format!("0x{}", hex::encode(good)).into();
    assert_eq!(dec(&v).unwrap().signing_root, good, "positive control");
    v["signingRoot"] = format!("0x{}", "00".repeat(32)).into();
    assert_eq!(
        dec(&v).unwrap_err().rule,
        keyguard_chain::rules::eth2::SIGNING_ROOT
    );
}

#[test]
fn hostile_shapes_are_refused_naming_the_field() {
    let base = att(411392 * 32, 411391, 411392);
    type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|v| v["extra"] = 1.into()), "extra"),
        (
            Box::new(|v| v["attestation"]["extra"] = 1.into()),
            "attestation.extra",
        ),
        (
            Box::new(|v| v["attestation"]["slot"] = 5.into()),
            "attestation.slot",
        ),
        (
            Box::new(|v| v["attestation"]["slot"] = "013".into()),
            "attestation.slot",
        ),
        (
            Box::new(|v| v["attestation"]["slot"] = "18446744073709551616".into()),
            "attestation.slot",
        ),
        (
            Box::new(|v| v["attestation"]["slot"] = "-1".into()),
            "attestation.slot",
        ),
        (
            Box::new(|v| v["attestation"]["beacon_block_root"] = "0x11".into()),
            "attestation.beacon_block_root",
        ),
        (
            Box::new(|v| v["attestation"]["source"]["root"] = serde_json::Value::Null),
            "attestation.source.root",
        ),
        (
            Box::new(|v| v["randao_reveal"] = serde_json::json!({"epoch": "1"})),
            "randao_reveal",
        ),
        (
            Box::new(|v| v["fork_info"]["fork"]["current_version"] = "0x0600000".into()),
            "fork_info.fork.current_version",
        ),
        (Box::new(|v| v["type"] = "SIGN_ANYTHING".into()), "type"),
        (
            Box::new(|v| v["attestation"]["target"]["epoch"] = "411393".into()),
            "attestation.target.epoch",
        ),
    ];
    for (mutate, field) in cases {
        let mut v = base.clone();
        mutate(&mut v);
        let e = dec(&v).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
    assert!(dec(&base).is_ok(), "positive control");
}

#[test]
fn duplicate_keys_are_refused() {
    let n = mainnet();
    let body = br#"{"type":"RANDAO_REVEAL","type":"RANDAO_REVEAL"}"#;
    let e = decode(body, &ctx(&n)).unwrap_err();
    assert!(e.reason.contains("duplicate"), "{e}");
}

#[test]
fn fork_info_of_another_network_or_fork_is_refused() {
    let mut v = att(411392 * 32, 411391, 411392);
    v["fork_info"]["genesis_validators_root"] = format!("0x{}", "00".repeat(32)).into();
    assert_eq!(
        dec(&v).unwrap_err().rule,
        keyguard_chain::rules::eth2::NETWORK
    );
    // Electra's version for a Fulu epoch: keyguard's schedule says Fulu.
    let mut v = att(411392 * 32, 411391, 411392);
    v["fork_info"] = fork_info("0x04000000", "0x05000000", 364032);
    assert_eq!(dec(&v).unwrap_err().rule, keyguard_chain::rules::eth2::FORK);
    // Clients differ in fork.epoch: the version they would use must still be ours.
    let mut v = att(411392 * 32, 411391, 411392);
    v["fork_info"] = fork_info("0x06000000", "0x06000000", 411392);
    assert!(dec(&v).is_ok());
}

#[test]
fn exits_after_deneb_use_capellas_version() {
    let n = mainnet();
    let body = serde_json::json!({
        "type": "VOLUNTARY_EXIT",
        "fork_info": fork_info("0x05000000", "0x06000000", 411392),
        "voluntary_exit": {"epoch": "411400", "validator_index": "7"}
    });
    let d = decode(body.to_string().as_bytes(), &ctx(&n)).unwrap();
    let obj = ssz::container(&[ssz::uint64(411400), ssz::uint64(7)]);
    let dom = compute_domain(
        domain::VOLUNTARY_EXIT,
        [3, 0, 0, 0],
        &n.genesis_validators_root,
    );
    assert_eq!(d.signing_root, domain::signing_root(&obj, &dom));
    let wrong = compute_domain(
        domain::VOLUNTARY_EXIT,
        [6, 0, 0, 0],
        &n.genesis_validators_root,
    );
    assert_ne!(
        d.signing_root,
        domain::signing_root(&obj, &wrong),
        "negative control"
    );
}

#[test]
fn registration_must_name_the_signing_key() {
    let mut body = serde_json::json!({
        "type": "VALIDATOR_REGISTRATION",
        "validator_registration": {
            "fee_recipient": format!("0x{}", "ab".repeat(20)),
            "gas_limit": "30000000", "timestamp": "1700000000",
            "pubkey": format!("0x{}", "aa".repeat(48))
        }
    });
    assert!(dec(&body).is_ok());
    body["validator_registration"]["pubkey"] = format!("0x{}", "bb".repeat(48)).into();
    assert_eq!(
        dec(&body).unwrap_err().rule,
        keyguard_chain::rules::eth2::PUBKEY_MISMATCH
    );
}

#[test]
fn bitlists_need_a_delimiter_and_respect_their_limit() {
    assert!(ssz::Bitlist::from_ssz(&[0x00], 2048).is_err());
    assert!(ssz::Bitlist::from_ssz(&[], 2048).is_err());
    let b = ssz::Bitlist::from_ssz(&[0b0000_0101], 2048).unwrap();
    assert_eq!(b.len, 2);
    assert_eq!(b.bytes, vec![0b01]);
    let mut long = vec![0xffu8; 256];
    long.push(1);
    assert!(ssz::Bitlist::from_ssz(&long, 2048).is_ok());
    long.pop();
    long.push(3);
    assert!(ssz::Bitlist::from_ssz(&long, 2048).is_err());
}

#[test]
fn builtin_networks_validate() {
    for n in ["mainnet", "holesky", "hoodi", "sepolia", "gnosis"] {
        Network::builtin(n).unwrap().validate().unwrap();
    }
}

#[test]
fn interchange_round_trips_and_refuses_unquoted() {
    let f = r#"{"metadata":{"interchange_format_version":"5","genesis_validators_root":"0x0000000000000000000000000000000000000000000000000000000000000000"},
      "data":[{"pubkey":"0xa99a76ed7796f7be22d5b7e85deeb7c5677e88e511e0b337618f8c4eb61349b4bf2d153f649f7b53359fe8b94a38e44c",
      "signed_blocks":[{"slot":"81952","signing_root":"0x4ff6f743a43f3b4f95350831aeaf0a122a1a392922c45d804280284a69eb850b"}],
      "signed_attestations":[{"source_epoch":"2290","target_epoch":"3007"}]}]}"#;
    let i = interchange::Interchange::parse(f.as_bytes()).unwrap();
    assert_eq!(
        interchange::Interchange::parse(i.to_json().as_bytes()).unwrap(),
        i
    );
    let unquoted = f.replace("\"81952\"", "81952");
    let e = interchange::Interchange::parse(unquoted.as_bytes()).unwrap_err();
    assert_eq!(e.field, "data[0].signed_blocks[0].slot");
}

/// Lighthouse's request shape (`validator_client/signing_method/src/web3signer.rs`): type
/// `AGGREGATE_AND_PROOF` with an Electra aggregate (`committee_bits`), `signingRoot` beside
/// `fork_info`; it must decode to the same root as the `_V2` form Teku sends.
#[test]
fn lighthouse_v1_and_teku_v2_electra_aggregates_agree() {
    let slot = 411392 * 32 + 3;
    let data = serde_json::json!({
        "aggregator_index": "9",
        "aggregate": {
            "aggregation_bits": "0x0501",
            "data": att(slot, 411391, 411392)["attestation"].clone(),
            "signature": format!("0x{}", "44".repeat(96)),
            "committee_bits": "0x0100000000000000"
        },
        "selection_proof": format!("0x{}", "55".repeat(96))
    });
    let v1 = serde_json::json!({
        "type": "AGGREGATE_AND_PROOF",
        "fork_info": fork_info("0x05000000", "0x06000000", 411392),
        "aggregate_and_proof": data.clone()
    });
    let v2 = serde_json::json!({
        "type": "AGGREGATE_AND_PROOF_V2",
        "fork_info": fork_info("0x05000000", "0x06000000", 411392),
        "aggregate_and_proof": {"version": "FULU", "data": data}
    });
    let a = dec(&v1).unwrap();
    let mut lighthouse = v1.clone();
    lighthouse["signingRoot"] = format!("0x{}", hex::encode(a.signing_root)).into();
    assert_eq!(dec(&lighthouse).unwrap().signing_root, a.signing_root);
    assert_eq!(dec(&v2).unwrap().signing_root, a.signing_root);
    // An Electra aggregate without committee_bits is refused naming the field.
    let mut missing = v1;
    missing["aggregate_and_proof"]["aggregate"]
        .as_object_mut()
        .unwrap()
        .remove("committee_bits");
    assert_eq!(
        dec(&missing).unwrap_err().field,
        "aggregate_and_proof.aggregate.committee_bits"
    );
}

/// Prysm's shapes (`validator/keymanager/remote-web3signer/types`): `fork_info` is serialized
/// even when unset (`null`) on exits, and `signingRoot` is always sent.
#[test]
fn prysm_exit_with_null_fork_info_decodes() {
    let mut body = serde_json::json!({
        "type": "VOLUNTARY_EXIT",
        "fork_info": null,
        "voluntary_exit": {"epoch": "411400", "validator_index": "7"}
    });
    let d = dec(&body).unwrap();
    body["signingRoot"] = format!("0x{}", hex::encode(d.signing_root)).into();
    assert_eq!(dec(&body).unwrap().signing_root, d.signing_root);
    // A fork_info that is present must still be this network's.
    body["fork_info"] = fork_info("0x05000000", "0x06000000", 411392);
    body["fork_info"]["genesis_validators_root"] = format!("0x{}", "00".repeat(32)).into();
    assert_eq!(
        dec(&body).unwrap_err().rule,
        keyguard_chain::rules::eth2::NETWORK
    );
}

/// No input panics: valid bodies of several types, mutated byte by byte (a small xorshift,
/// deterministic), truncated and nested deep; decoding answers Ok or a named error.
#[test]
fn mutated_and_truncated_bodies_never_panic() {
    let n = mainnet();
    let c = ctx(&n);
    let seeds: Vec<String> = vec![
        att(411392 * 32, 411391, 411392).to_string(),
        serde_json::json!({"type": "RANDAO_REVEAL", "fork_info": fork_info("0x05000000", "0x06000000", 411392),
            "randao_reveal": {"epoch": "411392"}})
        .to_string(),
        serde_json::json!({"type": "AGGREGATE_AND_PROOF", "fork_info": fork_info("0x05000000", "0x06000000", 411392),
            "aggregate_and_proof": {"aggregator_index": "1", "selection_proof": format!("0x{}", "55".repeat(96)),
            "aggregate": {"aggregation_bits": "0x0501", "data": att(411392 * 32, 411391, 411392)["attestation"].clone(),
            "signature": format!("0x{}", "44".repeat(96)), "committee_bits": "0x0100000000000000"}}})
        .to_string(),
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for seed in &seeds {
        let bytes = seed.as_bytes();
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut], &c);
        }
        for _ in 0..3000 {
            let mut b = bytes.to_vec();
            for _ in 0..(1 + next() % 4) {
                let i = (next() as usize) % b.len();
                b[i] = (next() & 0xff) as u8;
            }
            let _ = decode(&b, &c);
            let _ = interchange::Interchange::parse(&b);
        }
    }
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    assert!(decode(deep.as_bytes(), &c).is_err());
    assert!(interchange::Interchange::parse(deep.as_bytes()).is_err());
}

/// Teku's shapes (`ExternalSigner.java`): registrations carry the fee recipient checksummed
/// (mixed case), no `fork_info`, and a `signingRoot`; it decodes to the same bytes as lower case.
#[test]
fn teku_registration_with_checksummed_fee_recipient() {
    let body = |fee: &str| {
        serde_json::json!({
            "type": "VALIDATOR_REGISTRATION",
            "validator_registration": {
                "fee_recipient": fee, "gas_limit": "30000000", "timestamp": "1700000000",
                "pubkey": format!("0x{}", "aa".repeat(48))
            }
        })
    };
    let lower = dec(&body("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")).unwrap();
    let mut teku = body("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed");
    teku["signingRoot"] = format!("0x{}", hex::encode(lower.signing_root)).into();
    let d = dec(&teku).unwrap();
    assert_eq!(d.signing_root, lower.signing_root);
    assert_eq!(d.fee_recipient, lower.fee_recipient);
}
