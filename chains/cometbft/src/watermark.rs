//! The double-sign decision: given the last signed height/round/step of a (chain, key), may
//! this request be signed, must an earlier signature be returned, or must it be refused?
//!
//! Slashing evidence is two signatures for different block ids at one height/round/step, so:
//! anything behind the watermark is refused; at the watermark, a request that differs only in
//! its timestamp gets the earlier signature and timestamp back (what CometBFT's FilePV does, so
//! several sentries asking for the same vote are answered alike); any other difference is
//! refused, forever.

use keyguard_chain::Rejection;

use crate::types::{
    block_id_key_of_sign_bytes, timestamp_of_sign_bytes, SignRequest, Step, Timestamp,
};

/// The last thing signed for one (chain, key): the watermark.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignedState {
    /// Height of the last signature (0: none yet).
    pub height: i64,
    /// Round of the last signature.
    pub round: i32,
    /// Step of the last signature.
    pub step: Step,
    /// Canonical encoding of the block id signed (empty: nil or unknown).
    pub block_id: Vec<u8>,
    /// The canonical sign bytes signed (empty when imported from a state without them).
    pub sign_bytes: Vec<u8>,
    /// The signature released.
    pub signature: Vec<u8>,
    /// The vote-extension signature released with it (non-nil precommits, v0.38+).
    pub extension_signature: Vec<u8>,
}

impl SignedState {
    /// The state after signing `request` with these sign bytes and signatures.
    pub fn after(
        request: &SignRequest,
        sign_bytes: Vec<u8>,
        signature: Vec<u8>,
        extension_signature: Vec<u8>,
    ) -> SignedState {
        let (height, round, step) = request.hrs();
        SignedState {
            height,
            round,
            step,
            block_id: request.block_id().key(),
            sign_bytes,
            signature,
            extension_signature,
        }
    }

    /// Height, round, step as one ordered key.
    pub fn hrs(&self) -> (i64, i32, Step) {
        (self.height, self.round, self.step)
    }

    /// The block id key, from the stored column or, for FilePV imports, the sign bytes.
    fn block_id_key(&self) -> Option<Vec<u8>> {
        if !self.block_id.is_empty() || self.sign_bytes.is_empty() {
            return Some(self.block_id.clone());
        }
        block_id_key_of_sign_bytes(self.step, &self.sign_bytes)
    }
}

/// What to do with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ahead of the watermark (or the same block at the watermark with nothing to return):
    /// sign, then commit the new watermark before releasing.
    Sign,
    /// Same height/round/step and block, only the timestamp differs: return this signature
    /// with this (original) timestamp.
    Reuse {
        /// The signature released before.
        signature: Vec<u8>,
        /// The timestamp it covers.
        timestamp: Timestamp,
    },
    /// Behind the watermark or conflicting with it.
    Refuse(Rejection),
}

fn step_name(s: Step) -> &'static str {
    match s {
        Step::None => "none",
        Step::Propose => "proposal",
        Step::Prevote => "prevote",
        Step::Precommit => "precommit",
    }
}

/// Decides a request against the last signed state of its (chain, key).
pub fn decide(state: &SignedState, request: &SignRequest, chain_id: &str) -> Verdict {
    let (h, r, s) = request.hrs();
    let (sh, sr, ss) = state.hrs();
    let at = format!("{sh}/{sr}/{}", step_name(ss));
    if h < sh {
        return Verdict::Refuse(Rejection::policy(
            "cometbft.height_regression",
            "height",
            format!("height {h} is below the last signed {at}"),
        ));
    }
    if h == sh && r < sr {
        return Verdict::Refuse(Rejection::policy(
            "cometbft.round_regression",
            "round",
            format!("round {r} is below the last signed {at}"),
        ));
    }
    if (h, r) == (sh, sr) && s < ss {
        return Verdict::Refuse(Rejection::policy(
            "cometbft.step_regression",
            "step",
            format!("{} comes before the last signed {at}", step_name(s)),
        ));
    }
    if (h, r, s) != (sh, sr, ss) {
        return Verdict::Sign;
    }

    // Same height, round and step.
    let asked = request.block_id().key();
    if !state.sign_bytes.is_empty() {
        if let Some(ts) = timestamp_of_sign_bytes(ss, &state.sign_bytes) {
            if request.with_timestamp(ts).sign_bytes(chain_id) == state.sign_bytes {
                return Verdict::Reuse {
                    signature: state.signature.clone(),
                    timestamp: ts,
                };
            }
        }
    }
    match state.block_id_key() {
        Some(signed) if signed != asked => Verdict::Refuse(Rejection::policy(
            "cometbft.double_sign",
            "block_id",
            format!(
                "{at} is already signed for block {}, refusing block {}",
                short(&signed),
                request.block_id().display()
            ),
        )),
        // Same block but the sign bytes differ beyond the timestamp (another POL round, ...);
        // or a state imported without sign bytes, where only the block id is known: re-signing
        // the same block is not slashable, but nothing else may differ.
        Some(_) if state.sign_bytes.is_empty() => Verdict::Sign,
        _ => Verdict::Refuse(Rejection::policy(
            "cometbft.conflicting_data",
            "request",
            format!("{at} is already signed with different data"),
        )),
    }
}

fn short(block_id_key: &[u8]) -> String {
    if block_id_key.is_empty() {
        return "nil".into();
    }
    use iq_cometbft_proto::v1::types::v1::CanonicalBlockId;
    use prost::Message;
    CanonicalBlockId::decode(block_id_key)
        .map(|b| hex::encode_upper(b.hash))
        .unwrap_or_else(|_| hex::encode(block_id_key))
}
