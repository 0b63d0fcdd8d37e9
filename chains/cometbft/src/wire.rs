//! Privval messages per wire version, to and from typed requests and responses.
//!
//! The privval schemas of v0.34, v0.37 and v0.38 are field-for-field identical except that
//! v0.38 adds the vote-extension fields, so one set of types (v0.38) reads and writes all three
//! (tests check this against `tendermint-proto`'s own v0.34/v0.37 types). v1 renames the
//! package and changes `PubKeyResponse` (field 1 reserved, `pub_key_bytes`/`pub_key_type`
//! added) and adds `skip_extension_signing` and `SignBytes`; it gets its own types.
//! `auto` reads v1 (a superset for requests) and answers `PubKey` with both key encodings, which
//! every version accepts (each ignores the fields it does not know).

use std::fmt;
use std::str::FromStr;

use iq_cometbft_proto::v0_38 as legacy;
use keyguard_chain::{PublicKey, Rejection};
use prost::Message;
use serde::Deserialize;

use crate::types::{
    BlockId, Proposal, Timestamp, Vote, VoteType, MSG_TYPE_PRECOMMIT, MSG_TYPE_PREVOTE,
    MSG_TYPE_PROPOSAL,
};

/// The v1 schema under the same module shape as the legacy one (`privval`, `types`).
mod v1 {
    pub(crate) use iq_cometbft_proto::v1::privval::v1 as privval;
    pub(crate) use iq_cometbft_proto::v1::types::v1 as types;
}

/// Largest privval message keyguard reads (the node itself sends at most 10 KiB).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The privval protocol generation a validator node speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum WireVersion {
    /// Tendermint / CometBFT v0.34.
    #[serde(rename = "v0.34")]
    V0_34,
    /// CometBFT v0.37.
    #[serde(rename = "v0.37")]
    V0_37,
    /// CometBFT v0.38 (vote extensions).
    #[serde(rename = "v0.38")]
    V0_38,
    /// CometBFT v1.
    #[serde(rename = "v1")]
    V1,
    /// Any of the above, told apart by the messages where they differ.
    #[serde(rename = "auto")]
    Auto,
}

impl FromStr for WireVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "v0.34" => WireVersion::V0_34,
            "v0.37" => WireVersion::V0_37,
            "v0.38" => WireVersion::V0_38,
            "v1" => WireVersion::V1,
            "auto" => WireVersion::Auto,
            other => return Err(format!("unknown privval protocol {other:?}")),
        })
    }
}

impl fmt::Display for WireVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireVersion::V0_34 => "v0.34",
            WireVersion::V0_37 => "v0.37",
            WireVersion::V0_38 => "v0.38",
            WireVersion::V1 => "v1",
            WireVersion::Auto => "auto",
        })
    }
}

impl WireVersion {
    /// Whether requests are read with the v1 schema (otherwise the v0.38 one).
    pub fn reads_v1(self) -> bool {
        matches!(self, WireVersion::V1 | WireVersion::Auto)
    }

    /// Whether this version knows vote extensions at all.
    pub fn has_extensions(self) -> bool {
        !matches!(self, WireVersion::V0_34 | WireVersion::V0_37)
    }
}

/// One decoded message in the schema of its version.
#[derive(Clone, Debug, PartialEq)]
pub enum WireMessage {
    /// v0.34 / v0.37 / v0.38.
    Legacy(legacy::privval::Message),
    /// v1.
    V1(v1::privval::Message),
    /// `auto`'s answer to `PubKey`: both key encodings at once.
    Dual(DualMessage),
}

impl WireMessage {
    /// The protobuf encoding, without the length prefix.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        match self {
            WireMessage::Legacy(m) => m.encode_to_vec(),
            WireMessage::V1(m) => m.encode_to_vec(),
            WireMessage::Dual(m) => m.encode_to_vec(),
        }
    }
}

/// `PubKeyResponse` with the fields of every version: field 1 (`pub_key`, up to v0.38) and
/// fields 3/4 (`pub_key_bytes`/`pub_key_type`, v1).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DualPubKeyResponse {
    /// Legacy key encoding.
    #[prost(message, optional, tag = "1")]
    pub pub_key: Option<legacy::crypto::PublicKey>,
    /// Error, if any.
    #[prost(message, optional, tag = "2")]
    pub error: Option<legacy::privval::RemoteSignerError>,
    /// v1 raw key bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub pub_key_bytes: Vec<u8>,
    /// v1 key type name.
    #[prost(string, tag = "4")]
    pub pub_key_type: String,
}

/// A `privval.Message` whose only possible content is the dual `PubKeyResponse` (field 2 of the
/// `sum` oneof encodes exactly like an optional message field 2).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DualMessage {
    /// `Message.sum.pub_key_response`.
    #[prost(message, optional, tag = "2")]
    pub pub_key_response: Option<DualPubKeyResponse>,
}

/// Which request a message was, kept even when its content is refused (the answer must be the
/// matching response type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// `PubKeyRequest`.
    PubKey,
    /// `SignVoteRequest`.
    SignVote,
    /// `SignProposalRequest`.
    SignProposal,
    /// `SignBytesRequest` (v1).
    SignBytes,
    /// `PingRequest`.
    Ping,
}

/// A request from the validator node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Which key signs for this chain.
    PubKey {
        /// Chain the node runs.
        chain_id: String,
    },
    /// Sign a prevote or precommit.
    SignVote {
        /// Chain the node runs.
        chain_id: String,
        /// The vote.
        vote: Vote,
        /// Sign the extension too (non-nil precommits of v0.38+, unless v1 said skip).
        sign_extension: bool,
    },
    /// Sign a proposal.
    SignProposal {
        /// Chain the node runs.
        chain_id: String,
        /// The proposal.
        proposal: Proposal,
    },
    /// Sign arbitrary bytes (v1). keyguard refuses: it never signs bytes it did not build.
    SignBytes {
        /// Length of what was asked, for the audit log.
        len: usize,
    },
    /// Keep-alive.
    Ping,
}

/// A message keyguard cannot act on.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes exceeds the 1 MiB limit")]
    TooLarge(usize),
    /// Not protobuf of the expected schema.
    #[error("malformed privval message: {0}")]
    Malformed(String),
    /// Empty, or a response type a node never sends to a signer.
    #[error("unexpected privval message: {0}")]
    Unexpected(&'static str),
    /// A known request with invalid content; answered with an error of the same type.
    #[error("{rejection}")]
    Invalid {
        /// Which request it was.
        kind: RequestKind,
        /// What is wrong.
        rejection: Rejection,
    },
}

/// The error half of every privval response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteError {
    /// keyguard's error class (see the daemon's privval transport).
    pub code: i32,
    /// Rule and reason, for the node's log.
    pub description: String,
}

/// A signed vote to send back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedVote {
    /// The vote as signed (its timestamp may be the original one of an earlier signature).
    pub vote: Vote,
    /// Signature over the canonical vote.
    pub signature: Vec<u8>,
    /// Signature over the canonical vote extension (non-nil precommits, v0.38+).
    pub extension_signature: Vec<u8>,
}

/// A signed proposal to send back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedProposal {
    /// The proposal as signed.
    pub proposal: Proposal,
    /// Signature over the canonical proposal.
    pub signature: Vec<u8>,
}

/// keyguard's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Answer to `PubKey`.
    PubKey(Result<PublicKey, RemoteError>),
    /// Answer to `SignVote`.
    SignedVote(Result<SignedVote, RemoteError>),
    /// Answer to `SignProposal`.
    SignedProposal(Result<SignedProposal, RemoteError>),
    /// Answer to `SignBytes` (always a refusal).
    SignBytes(RemoteError),
    /// Answer to `Ping`.
    Ping,
}

impl Response {
    /// The error response matching a request kind.
    pub fn error(kind: RequestKind, e: RemoteError) -> Response {
        match kind {
            RequestKind::PubKey => Response::PubKey(Err(e)),
            RequestKind::SignVote => Response::SignedVote(Err(e)),
            RequestKind::SignProposal => Response::SignedProposal(Err(e)),
            RequestKind::SignBytes => Response::SignBytes(e),
            RequestKind::Ping => Response::Ping,
        }
    }
}

/// Decodes one message body (without its length prefix) as `version` reads it.
pub fn decode_bytes(version: WireVersion, body: &[u8]) -> Result<Request, DecodeError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(body.len()));
    }
    let msg = if version.reads_v1() {
        WireMessage::V1(
            v1::privval::Message::decode(body)
                .map_err(|e| DecodeError::Malformed(e.to_string()))?,
        )
    } else {
        WireMessage::Legacy(
            legacy::privval::Message::decode(body)
                .map_err(|e| DecodeError::Malformed(e.to_string()))?,
        )
    };
    decode(version, msg)
}

fn invalid(kind: RequestKind, field: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        kind,
        rejection: Rejection::invalid(field, reason),
    }
}

/// Earliest and latest seconds a protobuf `Timestamp` may hold (0001-01-01 to 9999-12-31).
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A vote's or proposal's timestamp, refused unless it is a valid protobuf `Timestamp`: Go's
/// CometBFT rejects such a vote, so a signature over it is only a probe of the signer (and its
/// bogus time would be stored with the watermark).
fn timestamp(
    kind: RequestKind,
    field: &str,
    t: Option<&iq_cometbft_proto::google::protobuf::Timestamp>,
) -> Result<Timestamp, DecodeError> {
    let t = t.ok_or_else(|| invalid(kind, field, "missing"))?;
    if !(0..1_000_000_000).contains(&t.nanos) || !TIMESTAMP_SECONDS.contains(&t.seconds) {
        return Err(invalid(
            kind,
            field,
            format!("{}s {}ns is not a valid timestamp", t.seconds, t.nanos),
        ));
    }
    Ok(Timestamp::from_proto(t))
}

/// Converts the protobuf block id / vote / proposal of either schema (same field names).
macro_rules! from_proto {
    (block_id $b:expr) => {
        $b.map(|b| {
            let (parts_total, parts_hash) = b
                .part_set_header
                .map(|p| (p.total, p.hash))
                .unwrap_or_default();
            BlockId {
                hash: b.hash,
                parts_total,
                parts_hash,
            }
        })
        .unwrap_or_default()
    };
    (vote $v:expr, $kind:expr) => {{
        let v = $v;
        let vote_type = match v.r#type {
            MSG_TYPE_PREVOTE => VoteType::Prevote,
            MSG_TYPE_PRECOMMIT => VoteType::Precommit,
            other => return Err(invalid($kind, "vote.type", format!("{other} is not a vote type"))),
        };
        let timestamp = timestamp($kind, "vote.timestamp", v.timestamp.as_ref())?;
        Vote {
            vote_type,
            height: v.height,
            round: v.round,
            block_id: from_proto!(block_id v.block_id),
            timestamp,
            validator_address: v.validator_address,
            validator_index: v.validator_index,
            extension: v.extension,
        }
    }};
    (proposal $p:expr, $kind:expr) => {{
        let p = $p;
        if p.r#type != MSG_TYPE_PROPOSAL {
            return Err(invalid($kind, "proposal.type", format!("{} is not the proposal type", p.r#type)));
        }
        let timestamp = timestamp($kind, "proposal.timestamp", p.timestamp.as_ref())?;
        Proposal {
            height: p.height,
            round: p.round,
            pol_round: p.pol_round,
            block_id: from_proto!(block_id p.block_id),
            timestamp,
        }
    }};
}

/// Converts to the protobuf types of one schema (`$m` is the module: `legacy` or `v1`).
macro_rules! to_proto {
    ($m:ident block_id $b:expr) => {
        Some($m::types::BlockId {
            hash: $b.hash.clone(),
            part_set_header: Some($m::types::PartSetHeader {
                total: $b.parts_total,
                hash: $b.parts_hash.clone(),
            }),
        })
    };
    ($m:ident vote $s:expr) => {
        $m::types::Vote {
            r#type: match $s.vote.vote_type {
                VoteType::Prevote => MSG_TYPE_PREVOTE,
                VoteType::Precommit => MSG_TYPE_PRECOMMIT,
            },
            height: $s.vote.height,
            round: $s.vote.round,
            block_id: to_proto!($m block_id $s.vote.block_id),
            timestamp: Some($s.vote.timestamp.to_proto()),
            validator_address: $s.vote.validator_address.clone(),
            validator_index: $s.vote.validator_index,
            signature: $s.signature.clone(),
            extension: $s.vote.extension.clone(),
            extension_signature: $s.extension_signature.clone(),
        }
    };
    ($m:ident proposal $s:expr) => {
        $m::types::Proposal {
            r#type: MSG_TYPE_PROPOSAL,
            height: $s.proposal.height,
            round: $s.proposal.round,
            pol_round: $s.proposal.pol_round,
            block_id: to_proto!($m block_id $s.proposal.block_id),
            timestamp: Some($s.proposal.timestamp.to_proto()),
            signature: $s.signature.clone(),
        }
    };
    ($m:ident error $e:expr) => {
        $m::privval::RemoteSignerError {
            code: $e.code,
            description: $e.description.clone(),
        }
    };
}

/// Turns a message read with `version`'s schema into a typed request.
pub fn decode(version: WireVersion, msg: WireMessage) -> Result<Request, DecodeError> {
    use legacy::privval::message::Sum as L;
    use v1::privval::message::Sum as N;
    match msg {
        WireMessage::Legacy(m) => match m.sum {
            Some(L::PubKeyRequest(r)) => Ok(Request::PubKey {
                chain_id: r.chain_id,
            }),
            Some(L::SignVoteRequest(r)) => {
                let kind = RequestKind::SignVote;
                let v = r.vote.ok_or_else(|| invalid(kind, "vote", "missing"))?;
                let vote = from_proto!(vote v, kind);
                if !version.has_extensions() && !vote.extension.is_empty() {
                    return Err(invalid(
                        kind,
                        "vote.extension",
                        format!("{version} has no vote extensions"),
                    ));
                }
                Ok(Request::SignVote {
                    chain_id: r.chain_id,
                    vote,
                    sign_extension: version.has_extensions(),
                })
            }
            Some(L::SignProposalRequest(r)) => {
                let kind = RequestKind::SignProposal;
                let p = r
                    .proposal
                    .ok_or_else(|| invalid(kind, "proposal", "missing"))?;
                Ok(Request::SignProposal {
                    chain_id: r.chain_id,
                    proposal: from_proto!(proposal p, kind),
                })
            }
            Some(L::PingRequest(_)) => Ok(Request::Ping),
            Some(_) => Err(DecodeError::Unexpected("a response sent to the signer")),
            None => Err(DecodeError::Unexpected("empty message")),
        },
        WireMessage::V1(m) => match m.sum {
            Some(N::PubKeyRequest(r)) => Ok(Request::PubKey {
                chain_id: r.chain_id,
            }),
            Some(N::SignVoteRequest(r)) => {
                let kind = RequestKind::SignVote;
                let v = r.vote.ok_or_else(|| invalid(kind, "vote", "missing"))?;
                Ok(Request::SignVote {
                    chain_id: r.chain_id,
                    vote: from_proto!(vote v, kind),
                    sign_extension: !r.skip_extension_signing,
                })
            }
            Some(N::SignProposalRequest(r)) => {
                let kind = RequestKind::SignProposal;
                let p = r
                    .proposal
                    .ok_or_else(|| invalid(kind, "proposal", "missing"))?;
                Ok(Request::SignProposal {
                    chain_id: r.chain_id,
                    proposal: from_proto!(proposal p, kind),
                })
            }
            Some(N::SignBytesRequest(r)) => Ok(Request::SignBytes { len: r.value.len() }),
            Some(N::PingRequest(_)) => Ok(Request::Ping),
            Some(_) => Err(DecodeError::Unexpected("a response sent to the signer")),
            None => Err(DecodeError::Unexpected("empty message")),
        },
        WireMessage::Dual(_) => Err(DecodeError::Unexpected("a response sent to the signer")),
    }
}

fn legacy_public_key(pk: &PublicKey) -> legacy::crypto::PublicKey {
    use legacy::crypto::public_key::Sum;
    legacy::crypto::PublicKey {
        sum: Some(match pk {
            PublicKey::Ed25519(b) => Sum::Ed25519(b.to_vec()),
            PublicKey::Secp256k1(_) => Sum::Secp256k1(crate::verify::compressed_key(pk)),
        }),
    }
}

fn v1_public_key(pk: &PublicKey) -> (Vec<u8>, String) {
    match pk {
        PublicKey::Ed25519(b) => (b.to_vec(), "ed25519".into()),
        PublicKey::Secp256k1(_) => (crate::verify::compressed_key(pk), "secp256k1".into()),
    }
}

/// Encodes a response in `version`'s schema.
pub fn encode(version: WireVersion, response: &Response) -> WireMessage {
    use legacy::privval as lp;
    use v1::privval as np;
    match (version, response) {
        (WireVersion::Auto, Response::PubKey(r)) => {
            let (pub_key_bytes, pub_key_type) = r.as_ref().map(v1_public_key).unwrap_or_default();
            WireMessage::Dual(DualMessage {
                pub_key_response: Some(DualPubKeyResponse {
                    pub_key: r.as_ref().ok().map(legacy_public_key),
                    error: r.as_ref().err().map(|e| to_proto!(legacy error e)),
                    pub_key_bytes,
                    pub_key_type,
                }),
            })
        }
        (v, r) if v.reads_v1() => {
            use np::message::Sum;
            let sum = match r {
                Response::PubKey(r) => {
                    let (pub_key_bytes, pub_key_type) =
                        r.as_ref().map(v1_public_key).unwrap_or_default();
                    Sum::PubKeyResponse(np::PubKeyResponse {
                        error: r.as_ref().err().map(|e| to_proto!(v1 error e)),
                        pub_key_bytes,
                        pub_key_type,
                    })
                }
                Response::SignedVote(r) => Sum::SignedVoteResponse(np::SignedVoteResponse {
                    vote: r.as_ref().ok().map(|s| to_proto!(v1 vote s)),
                    error: r.as_ref().err().map(|e| to_proto!(v1 error e)),
                }),
                Response::SignedProposal(r) => {
                    Sum::SignedProposalResponse(np::SignedProposalResponse {
                        proposal: r.as_ref().ok().map(|s| to_proto!(v1 proposal s)),
                        error: r.as_ref().err().map(|e| to_proto!(v1 error e)),
                    })
                }
                Response::SignBytes(e) => Sum::SignBytesResponse(np::SignBytesResponse {
                    signature: Vec::new(),
                    error: Some(to_proto!(v1 error e)),
                }),
                Response::Ping => Sum::PingResponse(np::PingResponse {}),
            };
            WireMessage::V1(np::Message { sum: Some(sum) })
        }
        (_, r) => {
            use lp::message::Sum;
            let sum = match r {
                Response::PubKey(r) => Sum::PubKeyResponse(lp::PubKeyResponse {
                    pub_key: r.as_ref().ok().map(legacy_public_key),
                    error: r.as_ref().err().map(|e| to_proto!(legacy error e)),
                }),
                Response::SignedVote(r) => Sum::SignedVoteResponse(lp::SignedVoteResponse {
                    vote: r.as_ref().ok().map(|s| to_proto!(legacy vote s)),
                    error: r.as_ref().err().map(|e| to_proto!(legacy error e)),
                }),
                Response::SignedProposal(r) => {
                    Sum::SignedProposalResponse(lp::SignedProposalResponse {
                        proposal: r.as_ref().ok().map(|s| to_proto!(legacy proposal s)),
                        error: r.as_ref().err().map(|e| to_proto!(legacy error e)),
                    })
                }
                // Legacy versions have no SignBytes; a request for it cannot be decoded.
                Response::SignBytes(_) | Response::Ping => Sum::PingResponse(lp::PingResponse {}),
            };
            WireMessage::Legacy(lp::Message { sum: Some(sum) })
        }
    }
}
