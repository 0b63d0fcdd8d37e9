//! `compute_domain` and `compute_signing_root` (consensus specs, phase0 "Helper functions").

use crate::ssz::{container, small_bytes, Chunk};

/// A 4-byte domain type.
pub type DomainType = [u8; 4];

/// `DOMAIN_BEACON_PROPOSER`.
pub const BEACON_PROPOSER: DomainType = [0, 0, 0, 0];
/// `DOMAIN_BEACON_ATTESTER`.
pub const BEACON_ATTESTER: DomainType = [1, 0, 0, 0];
/// `DOMAIN_RANDAO`.
pub const RANDAO: DomainType = [2, 0, 0, 0];
/// `DOMAIN_DEPOSIT`.
pub const DEPOSIT: DomainType = [3, 0, 0, 0];
/// `DOMAIN_VOLUNTARY_EXIT`.
pub const VOLUNTARY_EXIT: DomainType = [4, 0, 0, 0];
/// `DOMAIN_SELECTION_PROOF`.
pub const SELECTION_PROOF: DomainType = [5, 0, 0, 0];
/// `DOMAIN_AGGREGATE_AND_PROOF`.
pub const AGGREGATE_AND_PROOF: DomainType = [6, 0, 0, 0];
/// `DOMAIN_SYNC_COMMITTEE`.
pub const SYNC_COMMITTEE: DomainType = [7, 0, 0, 0];
/// `DOMAIN_SYNC_COMMITTEE_SELECTION_PROOF`.
pub const SYNC_COMMITTEE_SELECTION_PROOF: DomainType = [8, 0, 0, 0];
/// `DOMAIN_CONTRIBUTION_AND_PROOF`.
pub const CONTRIBUTION_AND_PROOF: DomainType = [9, 0, 0, 0];
/// `DOMAIN_APPLICATION_BUILDER` (builder-specs: validator registrations).
pub const APPLICATION_BUILDER: DomainType = [0, 0, 0, 1];

/// `hash_tree_root(ForkData(current_version, genesis_validators_root))`.
pub fn fork_data_root(version: [u8; 4], gvr: &[u8; 32]) -> Chunk {
    container(&[small_bytes(&version), *gvr])
}

/// `compute_domain(domain_type, fork_version, genesis_validators_root)`.
pub fn compute_domain(domain_type: DomainType, version: [u8; 4], gvr: &[u8; 32]) -> [u8; 32] {
    let fdr = fork_data_root(version, gvr);
    let mut d = [0u8; 32];
    d[..4].copy_from_slice(&domain_type);
    d[4..].copy_from_slice(&fdr[..28]);
    d
}

/// `compute_signing_root(object_root, domain)`: `hash_tree_root(SigningData)`.
pub fn signing_root(object_root: &Chunk, domain: &[u8; 32]) -> Chunk {
    container(&[*object_root, *domain])
}
