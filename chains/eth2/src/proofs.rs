//! Nimbus's verifying-web3signer `proofs` on `BLOCK_V2`: SSZ Merkle branches that tie
//! `execution_payload.fee_recipient` and `graffiti` to the header's `body_root`, which is all a
//! remote signer otherwise sees of a block.
//!
//! Wire shape (nimbus-eth2 `rest_types.nim` `Web3SignerMerkleProof`, written by
//! `validator_pool.nim` for each `--proven-block-property`): a top-level array beside
//! `beacon_block`, `[{"index": "801", "proof": ["0x…32 bytes", …]}]`, the generalized index as
//! a quoted decimal and the siblings from the leaf up. **No leaf is sent**: the verifier must
//! already know the value (Nimbus's own signing node checks one `--expected-fee-recipient`).
//! keyguard therefore checks each branch against each value its policy allows
//! ([`BlockProofs::proven_fee_recipient`], [`BlockProofs::proven_graffiti`]); the value that
//! verifies is the proven one. A value outside the allowlist can never be proven or named.
//!
//! Generalized indices are keyguard's, from its own fork at the block's slot (the body's field
//! count sets the tree depth): graffiti is body field 2 of 16 leaves (gindex 18) in every
//! Bellatrix..Fulu body; the fee recipient is payload field 1 under body field 9 (gindex 25),
//! with 16 payload leaves until Capella (401) and 32 from Deneb (801).
//! `tests/vectors/eth2/block_proofs.json` (remerkleable trees) checks the table.
//!
//! Attacker's table (tests in `tests.rs`, `tests/eth2_signer.rs`, `tests/interop`):
//! - a flipped sibling byte, or a branch for another fee recipient or graffiti: proves no
//!   allowed value, refused by policy (`eth2.block_fee_recipient`, `eth2.graffiti`);
//! - the graffiti branch sent under the fee recipient's index (or the reverse), an extra or a
//!   missing sibling: wrong length for the index, `eth2.block_proof` naming `proofs[i].proof`;
//!   padded to the right length it proves nothing (above);
//! - another fork's index (401 in a Deneb block), an index of another field, 0 or 2^64-1:
//!   `eth2.block_proof` naming `proofs[i].index` and the index;
//! - the same property twice (one honest, one not), more entries than properties, a huge
//!   sibling list: refused before any hashing (at most [`MAX_PROOFS`] entries of at most
//!   [`MAX_DEPTH`] siblings; the whole body is capped at 64 KiB before parsing);
//! - unknown fields in an entry, numbers as JSON numbers, short or long hex: `request.invalid`
//!   naming the field;
//! - `proofs` on any other type: an unknown field (`request.invalid`, `proofs`).
//!
//! Work per request is bounded: at most `allowlist length × depth` hashes per property.

use keyguard_chain::rules::eth2 as rule;
use serde_json::Value;

use crate::json::{parse_hex_fixed, Obj};
use crate::network::ForkName;
use crate::ssz::{hash2, small_bytes, Chunk};
use crate::DecodeError;

/// Entries accepted: one per provable property.
pub const MAX_PROOFS: usize = 2;

/// The deepest branch any supported fork needs (the fee recipient from Deneb: 9).
pub const MAX_DEPTH: usize = 9;

/// A block property Nimbus can prove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvenProperty {
    /// `.execution_payload.fee_recipient` (also the blinded header's: same position).
    FeeRecipient,
    /// `.graffiti`.
    Graffiti,
}

impl ProvenProperty {
    /// Nimbus's `--proven-block-property` spelling.
    pub fn path(self) -> &'static str {
        match self {
            ProvenProperty::FeeRecipient => ".execution_payload.fee_recipient",
            ProvenProperty::Graffiti => ".graffiti",
        }
    }

    /// Its generalized index in `fork`'s `BeaconBlockBody` (`None`: the fork has no such field).
    pub fn gindex(self, fork: ForkName) -> Option<u64> {
        use ForkName::*;
        match (self, fork) {
            (_, Phase0 | Altair) => None,
            (ProvenProperty::Graffiti, Bellatrix | Capella | Deneb | Electra | Fulu) => Some(18),
            (ProvenProperty::FeeRecipient, Bellatrix | Capella) => Some(401),
            (ProvenProperty::FeeRecipient, Deneb | Electra | Fulu) => Some(801),
        }
    }
}

/// Branches a request carried, not yet tied to a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockProofs {
    /// The header's `body_root` every branch must reach.
    pub body_root: Chunk,
    /// keyguard's fork at the block's slot (it fixed the indices).
    pub fork: ForkName,
    fee_recipient: Option<Vec<Chunk>>,
    graffiti: Option<Vec<Chunk>>,
}

/// The spec's `is_valid_merkle_branch` with the depth and index taken from `gindex`.
pub fn verify_branch(leaf: &Chunk, branch: &[Chunk], gindex: u64, root: &Chunk) -> bool {
    if gindex < 2 || branch.len() != (63 - gindex.leading_zeros()) as usize {
        return false;
    }
    let mut node = *leaf;
    for (i, sib) in branch.iter().enumerate() {
        node = if (gindex >> i) & 1 == 1 {
            hash2(sib, &node)
        } else {
            hash2(&node, sib)
        };
    }
    node == *root
}

impl BlockProofs {
    /// Whether a branch for `p` was sent.
    pub fn has(&self, p: ProvenProperty) -> bool {
        self.branch(p).is_some()
    }

    fn branch(&self, p: ProvenProperty) -> Option<&[Chunk]> {
        match p {
            ProvenProperty::FeeRecipient => self.fee_recipient.as_deref(),
            ProvenProperty::Graffiti => self.graffiti.as_deref(),
        }
    }

    /// Whether the branch for `p` proves `leaf` under the body root.
    pub fn proves(&self, p: ProvenProperty, leaf: &Chunk) -> bool {
        match (self.branch(p), p.gindex(self.fork)) {
            (Some(b), Some(g)) => verify_branch(leaf, b, g, &self.body_root),
            _ => false,
        }
    }

    /// The first of `allowed` the fee-recipient branch proves (its leaf is the address,
    /// right-padded to 32 bytes).
    pub fn proven_fee_recipient(&self, allowed: &[[u8; 20]]) -> Option<[u8; 20]> {
        allowed
            .iter()
            .find(|a| self.proves(ProvenProperty::FeeRecipient, &small_bytes(&a[..])))
            .copied()
    }

    /// The first of `allowed` the graffiti branch proves.
    pub fn proven_graffiti(&self, allowed: &[[u8; 32]]) -> Option<[u8; 32]> {
        allowed
            .iter()
            .find(|g| self.proves(ProvenProperty::Graffiti, g))
            .copied()
    }
}

fn proof_err(field: &str, reason: String) -> DecodeError {
    DecodeError::rule(rule::BLOCK_PROOF, field, &reason)
}

/// Reads `proofs` for a block of `fork` whose header names `body_root`. `None` when absent,
/// `null` or `[]` (Nimbus itself reads an empty list as none).
pub(crate) fn read(
    v: Option<&Value>,
    fork: ForkName,
    body_root: Chunk,
) -> Result<Option<BlockProofs>, DecodeError> {
    let Some(v) = v else { return Ok(None) };
    let Value::Array(items) = v else {
        return Err(DecodeError::invalid("proofs", "expected an array"));
    };
    if items.is_empty() {
        return Ok(None);
    }
    if items.len() > MAX_PROOFS {
        return Err(proof_err(
            "proofs",
            format!(
                "{} entries; at most {MAX_PROOFS} (one per provable property)",
                items.len()
            ),
        ));
    }
    let mut out = BlockProofs {
        body_root,
        fork,
        fee_recipient: None,
        graffiti: None,
    };
    for (i, item) in items.iter().enumerate() {
        let at = format!("proofs[{i}]");
        let mut o = Obj::new(item, &at)?;
        let index = o.u64("index")?;
        let raw = o.value("proof")?;
        o.finish()?;
        let prop = [ProvenProperty::FeeRecipient, ProvenProperty::Graffiti]
            .into_iter()
            .find(|p| p.gindex(fork) == Some(index))
            .ok_or_else(|| {
                proof_err(
                    &format!("{at}.index"),
                    format!(
                        "gindex {index} is neither {} ({}) nor {} ({}) of a {} block body",
                        ProvenProperty::FeeRecipient.path(),
                        gindex_text(ProvenProperty::FeeRecipient.gindex(fork)),
                        ProvenProperty::Graffiti.path(),
                        gindex_text(ProvenProperty::Graffiti.gindex(fork)),
                        fork.upper()
                    ),
                )
            })?;
        let depth = (63 - index.leading_zeros()) as usize;
        debug_assert!(depth <= MAX_DEPTH);
        let Value::Array(hashes) = raw else {
            return Err(DecodeError::invalid(
                &format!("{at}.proof"),
                "expected an array",
            ));
        };
        if hashes.len() != depth {
            return Err(proof_err(
                &format!("{at}.proof"),
                format!(
                    "{} hashes; gindex {index} ({}) needs exactly {depth}",
                    hashes.len(),
                    prop.path()
                ),
            ));
        }
        let mut branch = Vec::with_capacity(depth);
        for (j, h) in hashes.iter().enumerate() {
            let c = match h {
                Value::String(s) => parse_hex_fixed::<32>(s),
                _ => None,
            }
            .ok_or_else(|| {
                DecodeError::invalid(&format!("{at}.proof[{j}]"), "expected 0x + 64 hex digits")
            })?;
            branch.push(c);
        }
        let slot = match prop {
            ProvenProperty::FeeRecipient => &mut out.fee_recipient,
            ProvenProperty::Graffiti => &mut out.graffiti,
        };
        if slot.is_some() {
            return Err(proof_err(
                &format!("{at}.index"),
                format!("a second proof of {} (gindex {index})", prop.path()),
            ));
        }
        *slot = Some(branch);
    }
    Ok(Some(out))
}

fn gindex_text(g: Option<u64>) -> String {
    g.map_or_else(|| "none".into(), |g| g.to_string())
}
