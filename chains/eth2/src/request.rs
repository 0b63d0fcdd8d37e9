//! Web3Signer eth2 sign requests (`openapi-specs/eth2`, every `type`) to a [`Duty`]: what is
//! signed, its signing root as keyguard computes it, and the fields policy and slashing
//! protection need.
//!
//! The attacker's table this module answers (tests in `tests.rs`):
//! - unknown, duplicate or extra body fields (another type's body beside this one's): refused
//!   naming the field;
//! - numbers as JSON numbers, with leading zeros, signs or over 2^64-1; hex of the wrong length:
//!   refused naming the field;
//! - a `signingRoot` that differs from keyguard's: refused (`eth2.signing_root`), never signed;
//! - `fork_info` of another network or of a fork the schedule does not have at that epoch:
//!   refused (`eth2.network`, `eth2.fork`); keyguard signs with its own schedule regardless;
//! - bitlists without delimiter or beyond their limit; bodies over [`crate::MAX_BODY_BYTES`].

use keyguard_chain::rules::eth2 as rule;

use crate::domain::{self, compute_domain, signing_root, DomainType};
use crate::json::{parse_no_duplicates, Obj};
use crate::network::{ForkName, Network};
use crate::ssz::{bitvector, container, long_bytes, uint64, Bitlist, Chunk};
use crate::DecodeError;

/// `MAX_VALIDATORS_PER_COMMITTEE` (phase0 aggregation bits limit).
const MAX_VALIDATORS_PER_COMMITTEE: usize = 2048;
/// `MAX_COMMITTEES_PER_SLOT` (Electra `committee_bits` length).
const MAX_COMMITTEES_PER_SLOT: usize = 64;
/// `SYNC_COMMITTEE_SIZE / SYNC_COMMITTEE_SUBNET_COUNT`.
const SYNC_SUBCOMMITTEE_SIZE: usize = 128;
/// `SYNC_COMMITTEE_SUBNET_COUNT`.
const SYNC_COMMITTEE_SUBNET_COUNT: u64 = 4;

/// Which duty a request asks for (the Web3Signer `type`, V1/V2 folded together).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DutyKind {
    /// `BLOCK_V2` (block header).
    Block,
    /// `ATTESTATION`.
    Attestation,
    /// `AGGREGATION_SLOT`.
    AggregationSlot,
    /// `AGGREGATE_AND_PROOF` and `_V2`.
    AggregateAndProof,
    /// `RANDAO_REVEAL`.
    RandaoReveal,
    /// `VOLUNTARY_EXIT`.
    VoluntaryExit,
    /// `SYNC_COMMITTEE_MESSAGE`.
    SyncCommitteeMessage,
    /// `SYNC_COMMITTEE_SELECTION_PROOF`.
    SyncCommitteeSelectionProof,
    /// `SYNC_COMMITTEE_CONTRIBUTION_AND_PROOF`.
    SyncCommitteeContributionAndProof,
    /// `VALIDATOR_REGISTRATION`.
    ValidatorRegistration,
    /// `DEPOSIT`.
    Deposit,
}

impl DutyKind {
    /// Every kind.
    pub const ALL: [DutyKind; 11] = [
        DutyKind::Block,
        DutyKind::Attestation,
        DutyKind::AggregationSlot,
        DutyKind::AggregateAndProof,
        DutyKind::RandaoReveal,
        DutyKind::VoluntaryExit,
        DutyKind::SyncCommitteeMessage,
        DutyKind::SyncCommitteeSelectionProof,
        DutyKind::SyncCommitteeContributionAndProof,
        DutyKind::ValidatorRegistration,
        DutyKind::Deposit,
    ];

    /// Lower-case name (audit `method`, metrics, rate-limit config keys).
    pub fn as_str(self) -> &'static str {
        match self {
            DutyKind::Block => "block",
            DutyKind::Attestation => "attestation",
            DutyKind::AggregationSlot => "aggregation_slot",
            DutyKind::AggregateAndProof => "aggregate_and_proof",
            DutyKind::RandaoReveal => "randao_reveal",
            DutyKind::VoluntaryExit => "voluntary_exit",
            DutyKind::SyncCommitteeMessage => "sync_committee_message",
            DutyKind::SyncCommitteeSelectionProof => "sync_committee_selection_proof",
            DutyKind::SyncCommitteeContributionAndProof => "sync_committee_contribution_and_proof",
            DutyKind::ValidatorRegistration => "validator_registration",
            DutyKind::Deposit => "deposit",
        }
    }

    /// Parses [`DutyKind::as_str`].
    pub fn parse(s: &str) -> Option<DutyKind> {
        DutyKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What slashing protection must record for this duty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slashable {
    /// A block proposal at `slot`.
    Block {
        /// Block slot.
        slot: u64,
    },
    /// An attestation from `source` to `target` epoch.
    Attestation {
        /// Source epoch.
        source: u64,
        /// Target epoch.
        target: u64,
    },
}

/// A decoded request with keyguard's own signing root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duty {
    /// Which duty.
    pub kind: DutyKind,
    /// `compute_signing_root(hash_tree_root(message), domain)`: what the key signs.
    pub signing_root: [u8; 32],
    /// Present for blocks and attestations.
    pub slashable: Option<Slashable>,
    /// The slot the duty is for, when it has one (clock window).
    pub slot: Option<u64>,
    /// The epoch the duty is for (clock window).
    pub epoch: Option<u64>,
    /// Block proposer index.
    pub proposer_index: Option<u64>,
    /// Validator index of an exit.
    pub exit_validator_index: Option<u64>,
    /// Registration fee recipient.
    pub fee_recipient: Option<[u8; 20]>,
    /// Registration gas limit.
    pub gas_limit: Option<u64>,
    /// Deposit withdrawal credentials and amount (gwei).
    pub deposit: Option<([u8; 32], u64)>,
    /// One-line description for the audit row.
    pub summary: String,
}

/// What decoding needs besides the body.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// keyguard's network.
    pub network: &'a Network,
    /// The key asked to sign (registrations and deposits must name it).
    pub pubkey: &'a [u8; 48],
    /// Wall clock, unix seconds (EIP-7044 applies once the network is in Deneb).
    pub now_unix: u64,
}

fn duty(kind: DutyKind, signing_root: [u8; 32], summary: String) -> Duty {
    Duty {
        kind,
        signing_root,
        slashable: None,
        slot: None,
        epoch: None,
        proposer_index: None,
        exit_validator_index: None,
        fee_recipient: None,
        gas_limit: None,
        deposit: None,
        summary,
    }
}

/// The body fields naming each type's message; a request carrying a second one is refused.
const BODY_FIELDS: &[&str] = &[
    "block",
    "beacon_block",
    "attestation",
    "aggregation_slot",
    "aggregate_and_proof",
    "randao_reveal",
    "voluntary_exit",
    "sync_committee_message",
    "sync_aggregator_selection_data",
    "contribution_and_proof",
    "validator_registration",
    "deposit",
];

/// Decodes and checks a sign request body, computing its signing root.
pub fn decode(body: &[u8], ctx: &Context<'_>) -> Result<Duty, DecodeError> {
    if body.len() > crate::MAX_BODY_BYTES {
        return Err(DecodeError::invalid("body", "larger than 64 KiB"));
    }
    let v = parse_no_duplicates(body)?;
    let mut top = Obj::new(&v, "")?;
    let ty = top.str("type")?;
    let client_root = match (top.opt_value("signingRoot"), top.opt_value("signing_root")) {
        (Some(_), Some(_)) => {
            return Err(DecodeError::invalid(
                "signing_root",
                "both signingRoot and signing_root",
            ))
        }
        (Some(_), None) => Some(top.bytes::<32>("signingRoot")?),
        (None, Some(_)) => Some(top.bytes::<32>("signing_root")?),
        (None, None) => None,
    };
    let fork_info = top.opt_obj("fork_info")?;
    let fi = match fork_info {
        Some(o) => Some(ForkInfo::read(o)?),
        None => None,
    };
    let net = ctx.network;
    let need_fi = |fi: &Option<ForkInfo>| -> Result<ForkInfo, DecodeError> {
        let f = fi
            .clone()
            .ok_or_else(|| DecodeError::invalid("fork_info", "missing"))?;
        f.check_network(net)?;
        Ok(f)
    };
    let field_of = |t: &str| -> &'static str {
        match t {
            "BLOCK" => "block",
            "BLOCK_V2" => "beacon_block",
            "ATTESTATION" => "attestation",
            "AGGREGATION_SLOT" => "aggregation_slot",
            "AGGREGATE_AND_PROOF" | "AGGREGATE_AND_PROOF_V2" => "aggregate_and_proof",
            "RANDAO_REVEAL" => "randao_reveal",
            "VOLUNTARY_EXIT" => "voluntary_exit",
            "SYNC_COMMITTEE_MESSAGE" => "sync_committee_message",
            "SYNC_COMMITTEE_SELECTION_PROOF" => "sync_aggregator_selection_data",
            "SYNC_COMMITTEE_CONTRIBUTION_AND_PROOF" => "contribution_and_proof",
            "VALIDATOR_REGISTRATION" => "validator_registration",
            "DEPOSIT" => "deposit",
            _ => "",
        }
    };
    let field = field_of(ty);
    if field.is_empty() {
        return Err(DecodeError::invalid(
            "type",
            &format!("unknown type {:?}", truncate(ty)),
        ));
    }
    // Exactly one message field: the one the type names (any other is left unread and
    // refused by `finish`).
    debug_assert!(BODY_FIELDS.contains(&field));
    let msg = top.obj(field)?;
    let d = match ty {
        "BLOCK" => {
            return Err(DecodeError::rule(
                rule::BLOCK_FORMAT,
                "type",
                "BLOCK (full phase0 block) is not supported; use BLOCK_V2 with block_header",
            ))
        }
        "BLOCK_V2" => block_v2(msg, &need_fi(&fi)?, net)?,
        "ATTESTATION" => attestation(msg, &need_fi(&fi)?, net)?,
        "AGGREGATION_SLOT" => {
            let fi = need_fi(&fi)?;
            let mut m = msg;
            let slot = m.u64("slot")?;
            m.finish()?;
            let epoch = net.epoch_of(slot);
            let root = at_epoch(
                &fi,
                net,
                domain::SELECTION_PROOF,
                epoch,
                &uint64(slot),
                "aggregation_slot",
            )?;
            let mut d = duty(
                DutyKind::AggregationSlot,
                root,
                format!("aggregation_slot slot={slot}"),
            );
            d.slot = Some(slot);
            d.epoch = Some(epoch);
            d
        }
        "AGGREGATE_AND_PROOF" => aggregate_and_proof(msg, None, &need_fi(&fi)?, net)?,
        "AGGREGATE_AND_PROOF_V2" => {
            let mut m = msg;
            let version = m.str("version")?;
            let fork = ForkName::parse(version).ok_or_else(|| {
                DecodeError::invalid("aggregate_and_proof.version", "unknown fork name")
            })?;
            let data = m.obj("data")?;
            m.finish()?;
            aggregate_and_proof(data, Some(fork), &need_fi(&fi)?, net)?
        }
        "RANDAO_REVEAL" => {
            let fi = need_fi(&fi)?;
            let mut m = msg;
            let epoch = m.u64("epoch")?;
            m.finish()?;
            let root = at_epoch(
                &fi,
                net,
                domain::RANDAO,
                epoch,
                &uint64(epoch),
                "randao_reveal",
            )?;
            let mut d = duty(
                DutyKind::RandaoReveal,
                root,
                format!("randao_reveal epoch={epoch}"),
            );
            d.epoch = Some(epoch);
            d
        }
        "VOLUNTARY_EXIT" => voluntary_exit(msg, &need_fi(&fi)?, ctx)?,
        "SYNC_COMMITTEE_MESSAGE" => {
            let fi = need_fi(&fi)?;
            let mut m = msg;
            let block_root = m.bytes::<32>("beacon_block_root")?;
            let slot = m.u64("slot")?;
            m.finish()?;
            let epoch = net.epoch_of(slot);
            need_fork(net, epoch, ForkName::Altair, "sync_committee_message.slot")?;
            let root = at_epoch(
                &fi,
                net,
                domain::SYNC_COMMITTEE,
                epoch,
                &block_root,
                "sync_committee_message",
            )?;
            let mut d = duty(
                DutyKind::SyncCommitteeMessage,
                root,
                format!("sync_committee_message slot={slot}"),
            );
            d.slot = Some(slot);
            d.epoch = Some(epoch);
            d
        }
        "SYNC_COMMITTEE_SELECTION_PROOF" => {
            let fi = need_fi(&fi)?;
            let mut m = msg;
            let slot = m.u64("slot")?;
            let sub = m.u64("subcommittee_index")?;
            m.finish()?;
            if sub >= SYNC_COMMITTEE_SUBNET_COUNT {
                return Err(DecodeError::invalid(
                    "sync_aggregator_selection_data.subcommittee_index",
                    "must be below 4",
                ));
            }
            let epoch = net.epoch_of(slot);
            need_fork(
                net,
                epoch,
                ForkName::Altair,
                "sync_aggregator_selection_data.slot",
            )?;
            let obj = container(&[uint64(slot), uint64(sub)]);
            let root = at_epoch(
                &fi,
                net,
                domain::SYNC_COMMITTEE_SELECTION_PROOF,
                epoch,
                &obj,
                "sync_aggregator_selection_data",
            )?;
            let mut d = duty(
                DutyKind::SyncCommitteeSelectionProof,
                root,
                format!("sync_committee_selection_proof slot={slot} subcommittee={sub}"),
            );
            d.slot = Some(slot);
            d.epoch = Some(epoch);
            d
        }
        "SYNC_COMMITTEE_CONTRIBUTION_AND_PROOF" => {
            contribution_and_proof(msg, &need_fi(&fi)?, net)?
        }
        "VALIDATOR_REGISTRATION" => {
            if let Some(f) = &fi {
                f.check_network(net)?;
            }
            let _ = top.opt_u64("epoch")?;
            registration(msg, ctx)?
        }
        "DEPOSIT" => deposit(msg, ctx)?,
        _ => unreachable!("type checked above"),
    };
    top.finish()?;
    if let Some(cr) = client_root {
        if cr != d.signing_root {
            return Err(DecodeError::rule(
                rule::SIGNING_ROOT,
                "signingRoot",
                &format!(
                    "differs from the root keyguard computed (0x{})",
                    hex::encode(d.signing_root)
                ),
            ));
        }
    }
    Ok(d)
}

fn truncate(s: &str) -> String {
    s.chars().take(48).collect()
}

/// The client's `fork_info`.
#[derive(Clone, Debug)]
struct ForkInfo {
    previous: [u8; 4],
    current: [u8; 4],
    epoch: u64,
    gvr: [u8; 32],
}

impl ForkInfo {
    fn read(mut o: Obj<'_>) -> Result<ForkInfo, DecodeError> {
        let mut f = o.obj("fork")?;
        let previous = f.bytes::<4>("previous_version")?;
        let current = f.bytes::<4>("current_version")?;
        let epoch = f.u64("epoch")?;
        f.finish()?;
        let gvr = o.bytes::<32>("genesis_validators_root")?;
        o.finish()?;
        Ok(ForkInfo {
            previous,
            current,
            epoch,
            gvr,
        })
    }

    /// Genesis validators root and both versions must be this network's.
    fn check_network(&self, net: &Network) -> Result<(), DecodeError> {
        if self.gvr != net.genesis_validators_root {
            return Err(DecodeError::rule(
                rule::NETWORK,
                "fork_info.genesis_validators_root",
                &format!("not the genesis validators root of {}", net.name),
            ));
        }
        for (v, f) in [
            (self.previous, "previous_version"),
            (self.current, "current_version"),
        ] {
            if net.fork_by_version(v).is_none() {
                return Err(DecodeError::rule(
                    rule::NETWORK,
                    &format!("fork_info.fork.{f}"),
                    &format!("0x{} is not a fork version of {}", hex::encode(v), net.name),
                ));
            }
        }
        Ok(())
    }

    /// The version the client would sign with at `epoch` (`get_domain` with its `state.fork`).
    fn version_at(&self, epoch: u64) -> [u8; 4] {
        if epoch < self.epoch {
            self.previous
        } else {
            self.current
        }
    }
}

/// The signing root under keyguard's fork at `epoch`, after checking the client agrees.
fn at_epoch(
    fi: &ForkInfo,
    net: &Network,
    dt: DomainType,
    epoch: u64,
    object_root: &Chunk,
    what: &str,
) -> Result<[u8; 32], DecodeError> {
    let ours = net.fork_at(epoch);
    let theirs = fi.version_at(epoch);
    if theirs != ours.version {
        return Err(DecodeError::rule(
            rule::FORK,
            "fork_info.fork",
            &format!(
                "{what} at epoch {epoch} is under {} (0x{}) on {}, fork_info says 0x{}",
                ours.name.upper(),
                hex::encode(ours.version),
                net.name,
                hex::encode(theirs)
            ),
        ));
    }
    let d = compute_domain(dt, ours.version, &net.genesis_validators_root);
    Ok(signing_root(object_root, &d))
}

fn need_fork(net: &Network, epoch: u64, min: ForkName, field: &str) -> Result<(), DecodeError> {
    if net.fork_at(epoch).name < min {
        return Err(DecodeError::rule(
            rule::FORK,
            field,
            &format!("{} has no such duty before {}", net.name, min.upper()),
        ));
    }
    Ok(())
}

fn checkpoint(mut o: Obj<'_>) -> Result<(u64, [u8; 32]), DecodeError> {
    let epoch = o.u64("epoch")?;
    let root = o.bytes::<32>("root")?;
    o.finish()?;
    Ok((epoch, root))
}

/// `AttestationData`: its root, slot, source and target epochs.
fn attestation_data(mut o: Obj<'_>, net: &Network) -> Result<(Chunk, u64, u64, u64), DecodeError> {
    let slot = o.u64("slot")?;
    let index = o.u64("index")?;
    let bbr = o.bytes::<32>("beacon_block_root")?;
    let src_path = o.path("source");
    let (se, sr) = checkpoint(o.obj("source")?)?;
    let (te, tr) = checkpoint(o.obj("target")?)?;
    let tpath = o.path("target.epoch");
    o.finish()?;
    if te != net.epoch_of(slot) {
        return Err(DecodeError::invalid(
            &tpath,
            "must be the epoch of the slot",
        ));
    }
    let _ = src_path;
    let root = container(&[
        uint64(slot),
        uint64(index),
        bbr,
        container(&[uint64(se), sr]),
        container(&[uint64(te), tr]),
    ]);
    Ok((root, slot, se, te))
}

fn attestation(msg: Obj<'_>, fi: &ForkInfo, net: &Network) -> Result<Duty, DecodeError> {
    let (root, slot, source, target) = attestation_data(msg, net)?;
    let sr = at_epoch(
        fi,
        net,
        domain::BEACON_ATTESTER,
        target,
        &root,
        "attestation",
    )?;
    let mut d = duty(
        DutyKind::Attestation,
        sr,
        format!("attestation slot={slot} source={source} target={target}"),
    );
    d.slashable = Some(Slashable::Attestation { source, target });
    d.slot = Some(slot);
    d.epoch = Some(target);
    Ok(d)
}

fn block_v2(mut bb: Obj<'_>, fi: &ForkInfo, net: &Network) -> Result<Duty, DecodeError> {
    let version = bb.str("version")?;
    let fork = ForkName::parse(version)
        .ok_or_else(|| DecodeError::invalid("beacon_block.version", "unknown fork name"))?;
    if fork < ForkName::Bellatrix {
        return Err(DecodeError::rule(
            rule::BLOCK_FORMAT,
            "beacon_block.version",
            "full phase0/altair blocks are not supported; send block_header",
        ));
    }
    let mut h = bb.obj("block_header")?;
    bb.finish()?;
    let slot = h.u64("slot")?;
    let proposer = h.u64("proposer_index")?;
    let parent = h.bytes::<32>("parent_root")?;
    let state = h.bytes::<32>("state_root")?;
    let body = h.bytes::<32>("body_root")?;
    h.finish()?;
    let epoch = net.epoch_of(slot);
    let ours = net.fork_at(epoch).name;
    if ours != fork {
        return Err(DecodeError::rule(
            rule::FORK,
            "beacon_block.version",
            &format!(
                "slot {slot} is under {} on {}, not {}",
                ours.upper(),
                net.name,
                fork.upper()
            ),
        ));
    }
    let root = container(&[uint64(slot), uint64(proposer), parent, state, body]);
    let sr = at_epoch(fi, net, domain::BEACON_PROPOSER, epoch, &root, "block")?;
    let mut d = duty(
        DutyKind::Block,
        sr,
        format!("block slot={slot} proposer={proposer}"),
    );
    d.slashable = Some(Slashable::Block { slot });
    d.slot = Some(slot);
    d.epoch = Some(epoch);
    d.proposer_index = Some(proposer);
    Ok(d)
}

fn aggregate_and_proof(
    mut m: Obj<'_>,
    version: Option<ForkName>,
    fi: &ForkInfo,
    net: &Network,
) -> Result<Duty, DecodeError> {
    let aggregator = m.u64("aggregator_index")?;
    let mut a = m.obj("aggregate")?;
    let selection = m.bytes::<96>("selection_proof")?;
    m.finish()?;
    let bits_path = a.path("aggregation_bits");
    let bits_raw = a.var_bytes(
        "aggregation_bits",
        MAX_VALIDATORS_PER_COMMITTEE * MAX_COMMITTEES_PER_SLOT / 8 + 1,
    )?;
    let (data_root, slot, _, target) = attestation_data(a.obj("data")?, net)?;
    let sig = a.bytes::<96>("signature")?;
    let epoch = net.epoch_of(slot);
    let ours = net.fork_at(epoch).name;
    let electra = ours >= ForkName::Electra;
    // `AGGREGATE_AND_PROOF` (no version; Lighthouse sends Electra aggregates this way) takes
    // the shape of keyguard's fork at the slot; `_V2` must name that fork.
    if let Some(v) = version {
        if v != ours {
            return Err(DecodeError::rule(
                rule::FORK,
                "aggregate_and_proof.version",
                &format!("slot {slot} is under {} on {}", ours.upper(), net.name),
            ));
        }
    }
    let limit = if electra {
        MAX_VALIDATORS_PER_COMMITTEE * MAX_COMMITTEES_PER_SLOT
    } else {
        MAX_VALIDATORS_PER_COMMITTEE
    };
    let bits = Bitlist::from_ssz(&bits_raw, limit)
        .map_err(|e| DecodeError::invalid(&bits_path, &e.to_string()))?;
    let mut fields = vec![bits.root(limit), data_root, long_bytes(&sig)];
    if electra {
        let cb = a.bytes::<8>("committee_bits")?;
        fields.push(bitvector(&cb, MAX_COMMITTEES_PER_SLOT));
    }
    a.finish()?;
    let att_root = container(&fields);
    let root = container(&[uint64(aggregator), att_root, long_bytes(&selection)]);
    let sr = at_epoch(
        fi,
        net,
        domain::AGGREGATE_AND_PROOF,
        epoch,
        &root,
        "aggregate_and_proof",
    )?;
    let mut d = duty(
        DutyKind::AggregateAndProof,
        sr,
        format!("aggregate_and_proof slot={slot} target={target} aggregator={aggregator}"),
    );
    d.slot = Some(slot);
    d.epoch = Some(epoch);
    Ok(d)
}

fn contribution_and_proof(
    mut m: Obj<'_>,
    fi: &ForkInfo,
    net: &Network,
) -> Result<Duty, DecodeError> {
    let aggregator = m.u64("aggregator_index")?;
    let selection = m.bytes::<96>("selection_proof")?;
    let mut c = m.obj("contribution")?;
    m.finish()?;
    let slot = c.u64("slot")?;
    let bbr = c.bytes::<32>("beacon_block_root")?;
    let sub_path = c.path("subcommittee_index");
    let sub = c.u64("subcommittee_index")?;
    let bits = c.bytes::<{ SYNC_SUBCOMMITTEE_SIZE / 8 }>("aggregation_bits")?;
    let sig = c.bytes::<96>("signature")?;
    c.finish()?;
    if sub >= SYNC_COMMITTEE_SUBNET_COUNT {
        return Err(DecodeError::invalid(&sub_path, "must be below 4"));
    }
    let epoch = net.epoch_of(slot);
    need_fork(
        net,
        epoch,
        ForkName::Altair,
        "contribution_and_proof.contribution.slot",
    )?;
    let contribution = container(&[
        uint64(slot),
        bbr,
        uint64(sub),
        bitvector(&bits, SYNC_SUBCOMMITTEE_SIZE),
        long_bytes(&sig),
    ]);
    let root = container(&[uint64(aggregator), contribution, long_bytes(&selection)]);
    let sr = at_epoch(
        fi,
        net,
        domain::CONTRIBUTION_AND_PROOF,
        epoch,
        &root,
        "contribution_and_proof",
    )?;
    let mut d = duty(
        DutyKind::SyncCommitteeContributionAndProof,
        sr,
        format!("sync_committee_contribution_and_proof slot={slot} subcommittee={sub}"),
    );
    d.slot = Some(slot);
    d.epoch = Some(epoch);
    Ok(d)
}

/// EIP-7044: once the network is in Deneb, exits are signed under Capella's version whatever
/// their epoch (so an exit signed today stays valid forever).
fn voluntary_exit(mut m: Obj<'_>, fi: &ForkInfo, ctx: &Context<'_>) -> Result<Duty, DecodeError> {
    let net = ctx.network;
    let epoch = m.u64("epoch")?;
    let index = m.u64("validator_index")?;
    m.finish()?;
    let root = container(&[uint64(epoch), uint64(index)]);
    let now_epoch = net.epoch_of(net.slot_at(ctx.now_unix));
    let in_deneb = net.fork_at(now_epoch).name >= ForkName::Deneb
        || net.fork_at(epoch).name >= ForkName::Deneb;
    let sr = match (in_deneb, net.fork(ForkName::Capella)) {
        (true, Some(capella)) => {
            let d = compute_domain(
                domain::VOLUNTARY_EXIT,
                capella.version,
                &net.genesis_validators_root,
            );
            signing_root(&root, &d)
        }
        _ => at_epoch(
            fi,
            net,
            domain::VOLUNTARY_EXIT,
            epoch,
            &root,
            "voluntary_exit",
        )?,
    };
    let mut d = duty(
        DutyKind::VoluntaryExit,
        sr,
        format!("voluntary_exit epoch={epoch} validator_index={index}"),
    );
    d.epoch = Some(epoch);
    d.exit_validator_index = Some(index);
    Ok(d)
}

/// builder-specs `ValidatorRegistrationV1`, signed under the genesis fork with a zero
/// genesis validators root; its `pubkey` must be the key asked to sign.
fn registration(mut m: Obj<'_>, ctx: &Context<'_>) -> Result<Duty, DecodeError> {
    let fee = m.bytes::<20>("fee_recipient")?;
    let gas = m.u64("gas_limit")?;
    let ts = m.u64("timestamp")?;
    let pk = m.bytes::<48>("pubkey")?;
    m.finish()?;
    if &pk != ctx.pubkey {
        return Err(DecodeError::rule(
            rule::PUBKEY_MISMATCH,
            "validator_registration.pubkey",
            "registers another validator's key",
        ));
    }
    let root = container(&[
        crate::ssz::small_bytes(&fee),
        uint64(gas),
        uint64(ts),
        long_bytes(&pk),
    ]);
    let d = compute_domain(
        domain::APPLICATION_BUILDER,
        ctx.network.genesis_fork_version(),
        &[0u8; 32],
    );
    let mut out = duty(
        DutyKind::ValidatorRegistration,
        signing_root(&root, &d),
        format!(
            "validator_registration fee_recipient=0x{} gas_limit={gas}",
            hex::encode(fee)
        ),
    );
    out.fee_recipient = Some(fee);
    out.gas_limit = Some(gas);
    Ok(out)
}

/// `DepositMessage` under `DOMAIN_DEPOSIT` with the network's genesis fork version.
fn deposit(mut m: Obj<'_>, ctx: &Context<'_>) -> Result<Duty, DecodeError> {
    let pk = m.bytes::<48>("pubkey")?;
    let wc = m.bytes::<32>("withdrawal_credentials")?;
    let amount = m.u64("amount")?;
    let gfv = m.bytes::<4>("genesis_fork_version")?;
    m.finish()?;
    if &pk != ctx.pubkey {
        return Err(DecodeError::rule(
            rule::PUBKEY_MISMATCH,
            "deposit.pubkey",
            "deposits for another validator's key",
        ));
    }
    if gfv != ctx.network.genesis_fork_version() {
        return Err(DecodeError::rule(
            rule::NETWORK,
            "deposit.genesis_fork_version",
            &format!("not the genesis fork version of {}", ctx.network.name),
        ));
    }
    let root = container(&[long_bytes(&pk), wc, uint64(amount)]);
    let d = compute_domain(domain::DEPOSIT, gfv, &[0u8; 32]);
    let mut out = duty(
        DutyKind::Deposit,
        signing_root(&root, &d),
        format!(
            "deposit amount={amount} withdrawal_credentials=0x{}",
            hex::encode(wc)
        ),
    );
    out.deposit = Some((wc, amount));
    Ok(out)
}
