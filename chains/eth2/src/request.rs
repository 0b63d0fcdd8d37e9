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
//! - bitlists without delimiter or beyond their limit; bodies over [`crate::MAX_BODY_BYTES`];
//! - Nimbus `proofs` on `BLOCK_V2`: see [`crate::proofs`]; on any other type an unknown field.

use keyguard_chain::rules::eth2 as rule;

use crate::domain::{self, compute_domain, signing_root, DomainType};
use crate::json::{parse_no_duplicates, Obj};
use crate::network::{ForkName, Network};
use crate::ssz::{container, uint64, Chunk};
use crate::DecodeError;

use crate::messages::{
    aggregate_and_proof, attestation, block_v2, contribution_and_proof, deposit, registration,
    voluntary_exit, SYNC_COMMITTEE_SUBNET_COUNT,
};

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
    /// Registration timestamp (unix seconds; relays keep the newest, so a far-future one
    /// would pin the registration).
    pub timestamp: Option<u64>,
    /// Deposit withdrawal credentials and amount (gwei).
    pub deposit: Option<([u8; 32], u64)>,
    /// Nimbus's Merkle proofs of a block's fee recipient and graffiti (structure checked;
    /// policy ties them to allowed values).
    pub block_proofs: Option<crate::proofs::BlockProofs>,
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

pub(crate) fn duty(kind: DutyKind, signing_root: [u8; 32], summary: String) -> Duty {
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
        timestamp: None,
        deposit: None,
        block_proofs: None,
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
        "BLOCK_V2" => {
            let proofs = top.opt_value("proofs");
            block_v2(msg, proofs, &need_fi(&fi)?, net)?
        }
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
        // After Deneb an exit's domain needs no fork_info (EIP-7044); Prysm may send null.
        "VOLUNTARY_EXIT" => {
            if let Some(f) = &fi {
                f.check_network(net)?;
            }
            voluntary_exit(msg, fi.as_ref(), ctx)?
        }
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
pub(crate) struct ForkInfo {
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
pub(crate) fn at_epoch(
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

pub(crate) fn need_fork(
    net: &Network,
    epoch: u64,
    min: ForkName,
    field: &str,
) -> Result<(), DecodeError> {
    if net.fork_at(epoch).name < min {
        return Err(DecodeError::rule(
            rule::FORK,
            field,
            &format!("{} has no such duty before {}", net.name, min.upper()),
        ));
    }
    Ok(())
}
