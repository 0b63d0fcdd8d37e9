//! The message of each duty type: strict field reading and `hash_tree_root`, then the signing
//! root under keyguard's fork (`request::at_epoch`).

use keyguard_chain::rules::eth2 as rule;

use crate::domain::{self, compute_domain, signing_root};
use crate::json::Obj;
use crate::network::{ForkName, Network};
use crate::request::{at_epoch, duty, need_fork, Context, Duty, DutyKind, ForkInfo, Slashable};
use crate::ssz::{bitvector, container, long_bytes, uint64, Bitlist, Chunk};
use crate::DecodeError;

/// `MAX_VALIDATORS_PER_COMMITTEE` (phase0 aggregation bits limit).
const MAX_VALIDATORS_PER_COMMITTEE: usize = 2048;
/// `MAX_COMMITTEES_PER_SLOT` (Electra `committee_bits` length).
const MAX_COMMITTEES_PER_SLOT: usize = 64;
/// `SYNC_COMMITTEE_SIZE / SYNC_COMMITTEE_SUBNET_COUNT`.
const SYNC_SUBCOMMITTEE_SIZE: usize = 128;
/// `SYNC_COMMITTEE_SUBNET_COUNT`.
pub(crate) const SYNC_COMMITTEE_SUBNET_COUNT: u64 = 4;

pub(crate) fn checkpoint(mut o: Obj<'_>) -> Result<(u64, [u8; 32]), DecodeError> {
    let epoch = o.u64("epoch")?;
    let root = o.bytes::<32>("root")?;
    o.finish()?;
    Ok((epoch, root))
}

/// `AttestationData`: its root, slot, source and target epochs.
pub(crate) fn attestation_data(
    mut o: Obj<'_>,
    net: &Network,
) -> Result<(Chunk, u64, u64, u64), DecodeError> {
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

pub(crate) fn attestation(msg: Obj<'_>, fi: &ForkInfo, net: &Network) -> Result<Duty, DecodeError> {
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

pub(crate) fn block_v2(
    mut bb: Obj<'_>,
    proofs: Option<&serde_json::Value>,
    fi: &ForkInfo,
    net: &Network,
) -> Result<Duty, DecodeError> {
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
    let block_proofs = crate::proofs::read(proofs, ours, body)?;
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
    d.block_proofs = block_proofs;
    Ok(d)
}

pub(crate) fn aggregate_and_proof(
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

pub(crate) fn contribution_and_proof(
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
pub(crate) fn voluntary_exit(
    mut m: Obj<'_>,
    fi: Option<&ForkInfo>,
    ctx: &Context<'_>,
) -> Result<Duty, DecodeError> {
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
            fi.ok_or_else(|| DecodeError::invalid("fork_info", "missing (needed before Deneb)"))?,
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
pub(crate) fn registration(mut m: Obj<'_>, ctx: &Context<'_>) -> Result<Duty, DecodeError> {
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
    out.timestamp = Some(ts);
    Ok(out)
}

/// `DepositMessage` under `DOMAIN_DEPOSIT` with the network's genesis fork version.
pub(crate) fn deposit(mut m: Obj<'_>, ctx: &Context<'_>) -> Result<Duty, DecodeError> {
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
