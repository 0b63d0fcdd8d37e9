//! keyguard-cometbft: the CometBFT remote-signer (privval) protocol as pure code.
//!
//! Layout, in the order a request takes:
//! - [`wire`]: privval messages of each wire version (v0.34, v0.37, v0.38, v1) to a typed
//!   [`Request`] and typed [`Response`]s back to messages. Protobuf types come from
//!   `iq-cometbft-proto`; no hand-written codec.
//! - [`types`]: the decoded vote / proposal and their canonical, length-prefixed sign bytes
//!   (CanonicalVote, CanonicalProposal, CanonicalVoteExtension with the chain id).
//! - [`checks`]: block-field rules (chain id, height jump, timestamp drift, POL round, max height).
//! - [`watermark`]: the double-sign decision against the last signed height/round/step.
//! - [`pace`]: height progress metered by the local clock (a node cannot push the watermark
//!   ahead faster than a chain can produce blocks).
//! - [`verify`]: signing payloads and pass 2 (an independent check of the backend's signature).
//! - [`state_file`]: `priv_validator_state.json` (CometBFT FilePV and tmkms) import and export.
//!
//! Nothing here does I/O, holds a lock or sees a key; the daemon runs these steps under one
//! lock per (chain, key) and commits the new watermark before any signature leaves.

pub mod checks;
pub mod pace;
pub mod state_file;
pub mod types;
pub mod verify;
pub mod watermark;
pub mod wire;

pub use checks::{check_request, BlockLimits};
pub use pace::{Pace, PaceLimits};
pub use types::{BlockId, Proposal, SignRequest, Step, Timestamp, Vote, VoteType};
pub use watermark::{decide, SignedState, Verdict};
pub use wire::{DecodeError, Request, Response, WireMessage, WireVersion, MAX_MESSAGE_BYTES};

/// The protobuf crates this crate builds on, re-exported so the daemon uses the same versions.
pub mod proto {
    pub use iq_cometbft_proto::google::protobuf::Timestamp;
    pub use iq_cometbft_proto::v0_38;
    /// CometBFT v1 privval and types.
    pub mod v1 {
        pub use iq_cometbft_proto::v1::privval::v1 as privval;
        pub use iq_cometbft_proto::v1::types::v1 as types;
    }
    pub use prost;
}

#[cfg(test)]
mod tests;

/// The fuzz target's body, public so the corpus can be replayed by `cargo test` too.
#[doc(hidden)]
pub mod fuzzing {
    use crate::wire::{decode_bytes, Request, WireVersion};
    use crate::{check_request, decide, BlockLimits, Pace, SignRequest, SignedState};

    /// Decodes `data` as every wire version and runs whatever decodes through the rules.
    pub fn exercise(data: &[u8]) {
        for v in [
            WireVersion::V0_34,
            WireVersion::V0_37,
            WireVersion::V0_38,
            WireVersion::V1,
            WireVersion::Auto,
        ] {
            let request = match decode_bytes(v, data) {
                Ok(Request::SignVote { vote, .. }) => SignRequest::Vote(vote),
                Ok(Request::SignProposal { proposal, .. }) => SignRequest::Proposal(proposal),
                _ => continue,
            };
            let limits = BlockLimits {
                max_height_jump: Some(10),
                max_timestamp_drift_ms: Some(1000),
                max_height: Some(i64::MAX),
                start_height: Some(1),
                min_block_time_ms: Some(100),
            };
            let last = SignedState::after(&request, request.sign_bytes("c"), vec![0; 64], vec![]);
            let _ = check_request("c", "c", &limits, &request, &last, 0);
            let _ = check_request("c", "c", &limits, &request, &SignedState::default(), 0);
            let _ = Pace::full(&limits.pace(), 0).admit(&limits.pace(), 1, request.hrs().0, 5);
            let _ = decide(&last, &request, "c");
            let _ = decide(&SignedState::default(), &request, "c");
            let _ = request.extension_sign_bytes("c");
            let _ = request.summary("c");
        }
    }
}
