//! Block rules over Nimbus's proofs: the fee recipient and graffiti of a proposed block are
//! hidden behind its header's `body_root`; a Nimbus validator client in verifying-web3signer
//! mode sends Merkle branches for them (checked in `keyguard_eth2::proofs`). The branches
//! carry no value, so each is tried against the values the policy allows: a block that proves
//! one passes and the audit row names it; a branch that proves none is another payee, another
//! graffiti or a forgery, and is refused.
//!
//! Attacker's table (tests in `tests/eth2_signer.rs`, `tests/interop/test_eth2.py`):
//! - a block paying another address, its branch honest: `eth2.block_fee_recipient`;
//! - the same with a forged branch (a flipped byte, graffiti's branch padded): the same rule;
//! - leaving the proofs out when `require_block_proofs` is on: `eth2.block_proof_required`;
//!   with it off, a block without proofs passes (the signer cannot see the body);
//! - proving only the graffiti when the fee recipient is constrained: required refusal;
//! - a proof for a property the policy does not constrain: nothing to check it against; the
//!   audit row says `unchecked`.

use keyguard_chain::rules::eth2 as rule;
use keyguard_eth2::{Duty, DutyKind, ProvenProperty};

use super::{Eth2Refusal, Status};
use crate::config::{graffiti_bytes, Eth2Policy};

/// `[eth2.policy]`'s block rules, parsed once.
#[derive(Debug, Default)]
pub(super) struct BlockRules {
    fee_recipients: Vec<[u8; 20]>,
    graffiti: Vec<[u8; 32]>,
    require: bool,
}

impl BlockRules {
    /// From a policy validated with the config (invalid entries were refused there).
    pub(super) fn from_policy(p: &Eth2Policy) -> BlockRules {
        BlockRules {
            fee_recipients: p
                .block_fee_recipients
                .iter()
                .filter_map(|f| keyguard_eth2::parse_hex_fixed::<20>(&f.to_ascii_lowercase()))
                .collect(),
            graffiti: p
                .block_graffiti
                .iter()
                .filter_map(|g| graffiti_bytes(g).ok())
                .collect(),
            require: p.require_block_proofs,
        }
    }

    /// Whether the test-only fault that skips the branch check is on (negative control).
    fn unchecked() -> bool {
        #[cfg(feature = "fault-injection")]
        if crate::store::fault::is(crate::store::fault::Fault::Eth2NoBlockProofs) {
            return true;
        }
        false
    }

    /// Checks a block duty; on success the note for its audit row (what was proven).
    pub(super) fn check(&self, d: &Duty) -> Result<String, Eth2Refusal> {
        if d.kind != DutyKind::Block {
            return Ok(String::new());
        }
        let mut note = String::new();
        for prop in [ProvenProperty::FeeRecipient, ProvenProperty::Graffiti] {
            let (name, field, rule, allowed) = match prop {
                ProvenProperty::FeeRecipient => (
                    "fee_recipient",
                    "beacon_block.body.execution_payload.fee_recipient",
                    rule::BLOCK_FEE_RECIPIENT,
                    self.fee_recipients.len(),
                ),
                ProvenProperty::Graffiti => (
                    "graffiti",
                    "beacon_block.body.graffiti",
                    rule::GRAFFITI,
                    self.graffiti.len(),
                ),
            };
            let Some(proofs) = d.block_proofs.as_ref().filter(|p| p.has(prop)) else {
                if allowed > 0 && self.require {
                    return Err(forbid(
                        rule::BLOCK_PROOF_REQUIRED,
                        "proofs",
                        format!(
                            "no proof of {} (require_block_proofs; run Nimbus with \
                             --proven-block-property={})",
                            prop.path(),
                            prop.path()
                        ),
                    ));
                }
                continue;
            };
            if allowed == 0 {
                note.push_str(&format!(" {name}=unchecked"));
                continue;
            }
            let proven = match (prop, Self::unchecked()) {
                (ProvenProperty::FeeRecipient, false) => proofs
                    .proven_fee_recipient(&self.fee_recipients)
                    .map(hex::encode),
                (ProvenProperty::Graffiti, false) => {
                    proofs.proven_graffiti(&self.graffiti).map(hex::encode)
                }
                (ProvenProperty::FeeRecipient, true) => {
                    self.fee_recipients.first().map(hex::encode)
                }
                (ProvenProperty::Graffiti, true) => self.graffiti.first().map(hex::encode),
            };
            match proven {
                Some(v) => note.push_str(&format!(" {name}=0x{v} (proven)")),
                None => {
                    return Err(forbid(
                        rule,
                        field,
                        format!(
                            "the proof against body_root proves none of the {allowed} allowed \
                             values (another one, or a forged branch)"
                        ),
                    ))
                }
            }
        }
        Ok(note)
    }
}

fn forbid(rule: &'static str, field: &str, reason: String) -> Eth2Refusal {
    Eth2Refusal {
        status: Status::Forbidden,
        rule,
        field: field.into(),
        reason,
    }
}
