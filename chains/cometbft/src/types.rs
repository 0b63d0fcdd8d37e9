//! Decoded votes and proposals, independent of the wire version, and their canonical sign bytes.

use iq_cometbft_proto::google::protobuf::Timestamp as ProtoTimestamp;
use iq_cometbft_proto::v1::types::v1 as canon;
use prost::Message;
use serde::Serialize;

/// `SignedMsgType` values on the wire.
pub const MSG_TYPE_PREVOTE: i32 = 1;
/// `SignedMsgType::Precommit`.
pub const MSG_TYPE_PRECOMMIT: i32 = 2;
/// `SignedMsgType::Proposal`.
pub const MSG_TYPE_PROPOSAL: i32 = 32;

/// A point in time as protobuf carries it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Nanoseconds within the second (0..1e9).
    pub nanos: i32,
}

impl Timestamp {
    /// Milliseconds since the Unix epoch (saturating).
    pub fn unix_millis(&self) -> i128 {
        i128::from(self.seconds) * 1000 + i128::from(self.nanos) / 1_000_000
    }

    pub(crate) fn to_proto(self) -> ProtoTimestamp {
        ProtoTimestamp {
            seconds: self.seconds,
            nanos: self.nanos,
        }
    }

    pub(crate) fn from_proto(t: &ProtoTimestamp) -> Self {
        Timestamp {
            seconds: t.seconds,
            nanos: t.nanos,
        }
    }
}

/// A block id as a vote or proposal names it; all-empty means nil.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockId {
    /// Block hash (32 bytes, or empty for nil).
    pub hash: Vec<u8>,
    /// Number of parts in the part set.
    pub parts_total: u32,
    /// Merkle root of the parts (32 bytes, or empty for nil).
    pub parts_hash: Vec<u8>,
}

impl BlockId {
    /// CometBFT's `BlockID.IsZero`: a nil vote.
    pub fn is_nil(&self) -> bool {
        self.hash.is_empty() && self.parts_total == 0 && self.parts_hash.is_empty()
    }

    /// CometBFT's `BlockID.IsComplete`.
    pub fn is_complete(&self) -> bool {
        self.hash.len() == 32 && self.parts_total > 0 && self.parts_hash.len() == 32
    }

    fn canonical(&self) -> Option<canon::CanonicalBlockId> {
        // CometBFT canonicalizes a zero block id to an absent field (a nil vote).
        (!self.is_nil()).then(|| canon::CanonicalBlockId {
            hash: self.hash.clone(),
            part_set_header: Some(canon::CanonicalPartSetHeader {
                total: self.parts_total,
                hash: self.parts_hash.clone(),
            }),
        })
    }

    /// A stable byte key for comparing block ids (empty for nil).
    pub fn key(&self) -> Vec<u8> {
        self.canonical()
            .map(|c| c.encode_to_vec())
            .unwrap_or_default()
    }

    /// Short display: hex of the hash, or `nil`.
    pub fn display(&self) -> String {
        if self.is_nil() {
            "nil".into()
        } else {
            hex::encode_upper(&self.hash)
        }
    }
}

/// Prevote or precommit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VoteType {
    /// First voting step of a round.
    Prevote,
    /// Second voting step; non-nil precommits carry a vote extension from v0.38 on.
    Precommit,
}

/// A consensus step, ordered as CometBFT orders them within a round. The numbers are those of
/// CometBFT's FilePV state file (0 = nothing signed yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Nothing signed yet at this height and round.
    #[default]
    None = 0,
    /// A proposal.
    Propose = 1,
    /// A prevote.
    Prevote = 2,
    /// A precommit.
    Precommit = 3,
}

impl Step {
    /// From the stored / FilePV number.
    pub fn from_number(n: i64) -> Option<Step> {
        Some(match n {
            0 => Step::None,
            1 => Step::Propose,
            2 => Step::Prevote,
            3 => Step::Precommit,
            _ => return None,
        })
    }

    /// The stored / FilePV number.
    pub fn number(self) -> u8 {
        self as u8
    }
}

/// A vote to sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    /// Prevote or precommit.
    pub vote_type: VoteType,
    /// Block height.
    pub height: i64,
    /// Consensus round.
    pub round: i32,
    /// The block voted for (nil when zero).
    pub block_id: BlockId,
    /// The validator's clock when it voted.
    pub timestamp: Timestamp,
    /// Echoed back unchanged.
    pub validator_address: Vec<u8>,
    /// Echoed back unchanged.
    pub validator_index: i32,
    /// Application data attached to a non-nil precommit (v0.38+), signed separately.
    pub extension: Vec<u8>,
}

/// A block proposal to sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Block height.
    pub height: i64,
    /// Consensus round.
    pub round: i32,
    /// Proof-of-lock round, -1 for none.
    pub pol_round: i32,
    /// The proposed block.
    pub block_id: BlockId,
    /// The proposer's clock.
    pub timestamp: Timestamp,
}

/// Something the double-sign rules govern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignRequest {
    /// A prevote or precommit.
    Vote(Vote),
    /// A proposal.
    Proposal(Proposal),
}

impl SignRequest {
    /// Height, round and step, the order the watermark enforces.
    pub fn hrs(&self) -> (i64, i32, Step) {
        match self {
            SignRequest::Vote(v) => (
                v.height,
                v.round,
                match v.vote_type {
                    VoteType::Prevote => Step::Prevote,
                    VoteType::Precommit => Step::Precommit,
                },
            ),
            SignRequest::Proposal(p) => (p.height, p.round, Step::Propose),
        }
    }

    /// The block id signed for.
    pub fn block_id(&self) -> &BlockId {
        match self {
            SignRequest::Vote(v) => &v.block_id,
            SignRequest::Proposal(p) => &p.block_id,
        }
    }

    /// The request's timestamp.
    pub fn timestamp(&self) -> Timestamp {
        match self {
            SignRequest::Vote(v) => v.timestamp,
            SignRequest::Proposal(p) => p.timestamp,
        }
    }

    /// The same request with another timestamp (to recognise a timestamp-only difference).
    pub fn with_timestamp(&self, ts: Timestamp) -> SignRequest {
        let mut r = self.clone();
        match &mut r {
            SignRequest::Vote(v) => v.timestamp = ts,
            SignRequest::Proposal(p) => p.timestamp = ts,
        }
        r
    }

    /// Canonical, length-prefixed sign bytes (what the validator key signs).
    pub fn sign_bytes(&self, chain_id: &str) -> Vec<u8> {
        match self {
            SignRequest::Vote(v) => canon::CanonicalVote {
                r#type: match v.vote_type {
                    VoteType::Prevote => MSG_TYPE_PREVOTE,
                    VoteType::Precommit => MSG_TYPE_PRECOMMIT,
                },
                height: v.height,
                round: i64::from(v.round),
                block_id: v.block_id.canonical(),
                timestamp: Some(v.timestamp.to_proto()),
                chain_id: chain_id.to_owned(),
            }
            .encode_length_delimited_to_vec(),
            SignRequest::Proposal(p) => canon::CanonicalProposal {
                r#type: MSG_TYPE_PROPOSAL,
                height: p.height,
                round: i64::from(p.round),
                pol_round: i64::from(p.pol_round),
                block_id: p.block_id.canonical(),
                timestamp: Some(p.timestamp.to_proto()),
                chain_id: chain_id.to_owned(),
            }
            .encode_length_delimited_to_vec(),
        }
    }

    /// Sign bytes of the vote extension, for non-nil precommits only (CometBFT signs an
    /// extension, even an empty one, exactly for those).
    pub fn extension_sign_bytes(&self, chain_id: &str) -> Option<Vec<u8>> {
        match self {
            SignRequest::Vote(v) if v.vote_type == VoteType::Precommit && !v.block_id.is_nil() => {
                Some(
                    canon::CanonicalVoteExtension {
                        extension: v.extension.clone(),
                        height: v.height,
                        round: i64::from(v.round),
                        chain_id: chain_id.to_owned(),
                    }
                    .encode_length_delimited_to_vec(),
                )
            }
            _ => None,
        }
    }

    /// Facts for the audit log (no key material; hashes in hex).
    pub fn summary(&self, chain_id: &str) -> serde_json::Value {
        let (h, r, s) = self.hrs();
        let mut m = serde_json::json!({
            "chain_id": chain_id,
            "height": h,
            "round": r,
            "step": s,
            "block_id": self.block_id().display(),
            "timestamp_ms": self.timestamp().unix_millis().to_string(),
        });
        if let (SignRequest::Proposal(p), Some(o)) = (self, m.as_object_mut()) {
            o.insert("pol_round".into(), p.pol_round.into());
        }
        m
    }
}

/// The timestamp inside stored canonical sign bytes of the given step (for returning the
/// original timestamp when only the timestamp differs).
pub fn timestamp_of_sign_bytes(step: Step, sign_bytes: &[u8]) -> Option<Timestamp> {
    let ts = match step {
        Step::Propose => {
            canon::CanonicalProposal::decode_length_delimited(sign_bytes)
                .ok()?
                .timestamp
        }
        Step::Prevote | Step::Precommit => {
            canon::CanonicalVote::decode_length_delimited(sign_bytes)
                .ok()?
                .timestamp
        }
        Step::None => None,
    };
    ts.as_ref().map(Timestamp::from_proto)
}

/// The block id key inside stored canonical sign bytes (for states imported from a FilePV,
/// which stores sign bytes but no block id).
pub fn block_id_key_of_sign_bytes(step: Step, sign_bytes: &[u8]) -> Option<Vec<u8>> {
    let bid = match step {
        Step::Propose => {
            canon::CanonicalProposal::decode_length_delimited(sign_bytes)
                .ok()?
                .block_id
        }
        Step::Prevote | Step::Precommit => {
            canon::CanonicalVote::decode_length_delimited(sign_bytes)
                .ok()?
                .block_id
        }
        Step::None => return None,
    };
    Some(bid.map(|b| b.encode_to_vec()).unwrap_or_default())
}
