//! A mock validator node for one wire version: builds requests with that version's protobuf
//! types, and checks every signature it gets (ed25519-dalek `verify_strict`, or k256 ECDSA over
//! SHA-256 with low S for secp256k1 consensus keys, as CometBFT does) over sign bytes computed
//! by `tendermint`'s own canonical encoding (CanonicalVoteExtension from tendermint-proto), not
//! keyguard's.

use ed25519_dalek::{Signature, VerifyingKey};

/// The consensus key the node learned from `PubKey`.
#[derive(Clone, Copy, Debug)]
pub enum ConsensusKey {
    Ed25519(VerifyingKey),
    Secp256k1(k256::ecdsa::VerifyingKey),
}

impl ConsensusKey {
    /// 32 bytes: Ed25519; 33 bytes: a compressed secp256k1 point.
    fn from_wire(bytes: &[u8]) -> ConsensusKey {
        match bytes.len() {
            32 => {
                ConsensusKey::Ed25519(VerifyingKey::from_bytes(bytes.try_into().unwrap()).unwrap())
            }
            33 => {
                ConsensusKey::Secp256k1(k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).unwrap())
            }
            n => panic!("a {n}-byte consensus key"),
        }
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), String> {
        match self {
            ConsensusKey::Ed25519(k) => {
                let sig = Signature::from_slice(sig).map_err(|e| e.to_string())?;
                k.verify_strict(msg, &sig).map_err(|e| e.to_string())
            }
            ConsensusKey::Secp256k1(k) => {
                use k256::ecdsa::signature::Verifier;
                let sig = k256::ecdsa::Signature::from_slice(sig).map_err(|e| e.to_string())?;
                if sig.normalize_s().is_some() {
                    return Err("high S (CometBFT accepts low S only)".into());
                }
                k.verify(msg, &sig).map_err(|e| e.to_string())
            }
        }
    }
}
use prost::Message;
use tendermint_proto::google::protobuf::Timestamp;

use super::conn::MockConn;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ver {
    V034,
    V037,
    V038,
    V1,
}

impl Ver {
    pub fn has_extensions(self) -> bool {
        matches!(self, Ver::V038 | Ver::V1)
    }
}

/// A vote or proposal to ask for; `block` None is nil.
#[derive(Clone, Debug)]
pub struct Ask {
    pub proposal: bool,
    pub vote_type: i32,
    pub height: i64,
    pub round: i32,
    pub pol_round: i32,
    pub block: Option<u8>,
    pub ts: (i64, i32),
    pub extension: Vec<u8>,
    pub skip_extension: bool,
}

impl Ask {
    pub fn vote(vote_type: i32, height: i64, round: i32, block: Option<u8>, ts: (i64, i32)) -> Ask {
        Ask {
            proposal: false,
            vote_type,
            height,
            round,
            pol_round: -1,
            block,
            ts,
            extension: Vec::new(),
            skip_extension: false,
        }
    }

    pub fn proposal(height: i64, round: i32, block: u8, ts: (i64, i32)) -> Ask {
        Ask {
            proposal: true,
            vote_type: 32,
            pol_round: -1,
            block: Some(block),
            ..Ask::vote(32, height, round, Some(block), ts)
        }
    }
}

/// What keyguard released, already verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    pub signature: Vec<u8>,
    pub extension_signature: Vec<u8>,
    pub ts: (i64, i32),
    pub sign_bytes: Vec<u8>,
}

/// A response's (signature, extension signature, timestamp), not yet verified.
pub type RawSigned = (Vec<u8>, Vec<u8>, (i64, i32));

/// keyguard's refusal: (code, description).
pub type Refused = (i32, String);

pub fn now() -> (i64, i32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (d.as_secs() as i64, d.subsec_nanos() as i32)
}

fn ts(t: (i64, i32)) -> Timestamp {
    Timestamp {
        seconds: t.0,
        nanos: t.1,
    }
}

/// Sign bytes of a vote or proposal in tendermint's encoding (any version: the canonical
/// messages did not change), taken from the v0.38 proto after a schema-identical re-encode.
fn oracle_sign_bytes(chain: &str, ask: &Ask, t: (i64, i32)) -> Vec<u8> {
    use tendermint_proto::v0_38::types as tm;
    let block_id = Some(block_id_038(ask.block));
    let chain_id = tendermint::chain::Id::try_from(chain.to_owned()).unwrap();
    if ask.proposal {
        let p = tm::Proposal {
            r#type: 32,
            height: ask.height,
            round: ask.round,
            pol_round: ask.pol_round,
            block_id,
            timestamp: Some(ts(t)),
            signature: vec![0; 64],
        };
        tendermint::proposal::Proposal::try_from(p)
            .unwrap()
            .into_signable_vec(chain_id)
    } else {
        let v = tm::Vote {
            r#type: ask.vote_type,
            height: ask.height,
            round: ask.round,
            block_id,
            timestamp: Some(ts(t)),
            validator_address: vec![0xAA; 20],
            validator_index: 0,
            signature: vec![0; 64],
            ..Default::default()
        };
        tendermint::vote::Vote::try_from(v)
            .unwrap()
            .into_signable_vec(chain_id)
    }
}

fn oracle_extension_sign_bytes(chain: &str, ask: &Ask) -> Vec<u8> {
    tendermint_proto::v0_38::types::CanonicalVoteExtension {
        extension: ask.extension.clone(),
        height: ask.height,
        round: i64::from(ask.round),
        chain_id: chain.to_owned(),
    }
    .encode_length_delimited_to_vec()
}

fn block_id_038(block: Option<u8>) -> tendermint_proto::v0_38::types::BlockId {
    match block {
        // Go always sends the (non-nullable) part set header, zero for nil.
        None => tendermint_proto::v0_38::types::BlockId {
            hash: Vec::new(),
            part_set_header: Some(Default::default()),
        },
        Some(b) => tendermint_proto::v0_38::types::BlockId {
            hash: vec![b; 32],
            part_set_header: Some(tendermint_proto::v0_38::types::PartSetHeader {
                total: 1,
                hash: vec![b ^ 0x5A; 32],
            }),
        },
    }
}

/// Builds requests and reads responses for one legacy version module of tendermint-proto.
macro_rules! legacy {
    ($m:ident, $ext:expr) => {
        pub mod $m {
            use super::*;
            use tendermint_proto::$m::{privval as pv, types};

            fn block_id(b: Option<u8>) -> Option<types::BlockId> {
                Some(types::BlockId::decode(block_id_038(b).encode_to_vec().as_slice()).unwrap())
            }

            pub fn pubkey(c: &mut MockConn, chain: &str) -> Option<Result<Vec<u8>, Refused>> {
                let req = pv::Message {
                    sum: Some(pv::message::Sum::PubKeyRequest(pv::PubKeyRequest {
                        chain_id: chain.into(),
                    })),
                };
                let resp: pv::Message = c.call(&req)?;
                let Some(pv::message::Sum::PubKeyResponse(r)) = resp.sum else {
                    panic!("not a PubKeyResponse: {resp:?}")
                };
                if let Some(e) = r.error {
                    return Some(Err((e.code, e.description)));
                }
                use tendermint_proto::$m::crypto::public_key::Sum;
                match r.pub_key.and_then(|k| k.sum) {
                    Some(Sum::Ed25519(b)) | Some(Sum::Secp256k1(b)) => Some(Ok(b)),
                    other => panic!("unexpected key {other:?}"),
                }
            }

            pub fn sign(
                c: &mut MockConn,
                chain: &str,
                a: &Ask,
            ) -> Option<Result<RawSigned, Refused>> {
                let req = if a.proposal {
                    pv::Message {
                        sum: Some(pv::message::Sum::SignProposalRequest(
                            pv::SignProposalRequest {
                                proposal: Some(types::Proposal {
                                    r#type: 32,
                                    height: a.height,
                                    round: a.round,
                                    pol_round: a.pol_round,
                                    block_id: block_id(a.block),
                                    timestamp: Some(ts(a.ts)),
                                    signature: vec![],
                                }),
                                chain_id: chain.into(),
                            },
                        )),
                    }
                } else {
                    #[allow(unused_mut)]
                    let mut vote = types::Vote {
                        r#type: a.vote_type,
                        height: a.height,
                        round: a.round,
                        block_id: block_id(a.block),
                        timestamp: Some(ts(a.ts)),
                        validator_address: vec![0xAA; 20],
                        validator_index: 0,
                        ..Default::default()
                    };
                    #[allow(clippy::redundant_closure_call)]
                    ($ext.0)(&mut vote, a);
                    pv::Message {
                        sum: Some(pv::message::Sum::SignVoteRequest(pv::SignVoteRequest {
                            vote: Some(vote),
                            chain_id: chain.into(),
                        })),
                    }
                };
                let resp: pv::Message = c.call(&req)?;
                Some(match resp.sum {
                    Some(pv::message::Sum::SignedVoteResponse(r)) => match (r.vote, r.error) {
                        (_, Some(e)) => Err((e.code, e.description)),
                        (Some(v), None) => {
                            let t = v.timestamp.clone().unwrap();
                            #[allow(clippy::redundant_closure_call)]
                            let ext_sig = ($ext.1)(&v);
                            Ok((v.signature, ext_sig, (t.seconds, t.nanos)))
                        }
                        (None, None) => panic!("empty SignedVoteResponse"),
                    },
                    Some(pv::message::Sum::SignedProposalResponse(r)) => {
                        match (r.proposal, r.error) {
                            (_, Some(e)) => Err((e.code, e.description)),
                            (Some(p), None) => {
                                let t = p.timestamp.clone().unwrap();
                                Ok((p.signature, Vec::new(), (t.seconds, t.nanos)))
                            }
                            (None, None) => panic!("empty SignedProposalResponse"),
                        }
                    }
                    other => panic!("unexpected response {other:?}"),
                })
            }

            pub fn ping(c: &mut MockConn) -> bool {
                let req = pv::Message {
                    sum: Some(pv::message::Sum::PingRequest(pv::PingRequest {})),
                };
                matches!(
                    c.call::<_, pv::Message>(&req).and_then(|m| m.sum),
                    Some(pv::message::Sum::PingResponse(_))
                )
            }
        }
    };
}

type NoExt = (
    fn(&mut tendermint_proto::v0_34::types::Vote, &Ask),
    fn(&tendermint_proto::v0_34::types::Vote) -> Vec<u8>,
);
type NoExt37 = (
    fn(&mut tendermint_proto::v0_37::types::Vote, &Ask),
    fn(&tendermint_proto::v0_37::types::Vote) -> Vec<u8>,
);
type Ext38 = (
    fn(&mut tendermint_proto::v0_38::types::Vote, &Ask),
    fn(&tendermint_proto::v0_38::types::Vote) -> Vec<u8>,
);
const NO_EXT_34: NoExt = (|_, _| {}, |_| Vec::new());
const NO_EXT_37: NoExt37 = (|_, _| {}, |_| Vec::new());
const EXT_38: Ext38 = (
    |v, a| v.extension = a.extension.clone(),
    |v| v.extension_signature.clone(),
);

legacy!(v0_34, NO_EXT_34);
legacy!(v0_37, NO_EXT_37);
legacy!(v0_38, EXT_38);

/// v1 with iq-cometbft-proto's v1 types.
pub mod v1 {
    use super::*;
    use iq_cometbft_proto::google::protobuf::Timestamp as IqTimestamp;
    use iq_cometbft_proto::v1::privval::v1 as pv;
    use iq_cometbft_proto::v1::types::v1 as types;

    fn its(t: (i64, i32)) -> Option<IqTimestamp> {
        Some(IqTimestamp {
            seconds: t.0,
            nanos: t.1,
        })
    }

    fn block_id(b: Option<u8>) -> Option<types::BlockId> {
        Some(types::BlockId::decode(block_id_038(b).encode_to_vec().as_slice()).unwrap())
    }

    pub fn pubkey(c: &mut MockConn, chain: &str) -> Option<Result<Vec<u8>, Refused>> {
        let req = pv::Message {
            sum: Some(pv::message::Sum::PubKeyRequest(pv::PubKeyRequest {
                chain_id: chain.into(),
            })),
        };
        let resp: pv::Message = c.call(&req)?;
        let Some(pv::message::Sum::PubKeyResponse(r)) = resp.sum else {
            panic!("not a PubKeyResponse")
        };
        if let Some(e) = r.error {
            return Some(Err((e.code, e.description)));
        }
        let expected = if r.pub_key_bytes.len() == 33 {
            "secp256k1"
        } else {
            "ed25519"
        };
        assert_eq!(r.pub_key_type, expected);
        Some(Ok(r.pub_key_bytes))
    }

    pub fn sign(c: &mut MockConn, chain: &str, a: &Ask) -> Option<Result<RawSigned, Refused>> {
        let req = if a.proposal {
            pv::Message {
                sum: Some(pv::message::Sum::SignProposalRequest(
                    pv::SignProposalRequest {
                        proposal: Some(types::Proposal {
                            r#type: 32,
                            height: a.height,
                            round: a.round,
                            pol_round: a.pol_round,
                            block_id: block_id(a.block),
                            timestamp: its(a.ts),
                            signature: vec![],
                        }),
                        chain_id: chain.into(),
                    },
                )),
            }
        } else {
            pv::Message {
                sum: Some(pv::message::Sum::SignVoteRequest(pv::SignVoteRequest {
                    vote: Some(types::Vote {
                        r#type: a.vote_type,
                        height: a.height,
                        round: a.round,
                        block_id: block_id(a.block),
                        timestamp: its(a.ts),
                        validator_address: vec![0xAA; 20],
                        validator_index: 0,
                        extension: a.extension.clone(),
                        ..Default::default()
                    }),
                    chain_id: chain.into(),
                    skip_extension_signing: a.skip_extension,
                })),
            }
        };
        let resp: pv::Message = c.call(&req)?;
        Some(match resp.sum {
            Some(pv::message::Sum::SignedVoteResponse(r)) => match (r.vote, r.error) {
                (_, Some(e)) => Err((e.code, e.description)),
                (Some(v), None) => {
                    let t = v.timestamp.unwrap();
                    Ok((v.signature, v.extension_signature, (t.seconds, t.nanos)))
                }
                (None, None) => panic!("empty response"),
            },
            Some(pv::message::Sum::SignedProposalResponse(r)) => match (r.proposal, r.error) {
                (_, Some(e)) => Err((e.code, e.description)),
                (Some(p), None) => {
                    let t = p.timestamp.unwrap();
                    Ok((p.signature, Vec::new(), (t.seconds, t.nanos)))
                }
                (None, None) => panic!("empty response"),
            },
            other => panic!("unexpected response {other:?}"),
        })
    }

    pub fn sign_bytes(c: &mut MockConn) -> Refused {
        let req = pv::Message {
            sum: Some(pv::message::Sum::SignBytesRequest(pv::SignBytesRequest {
                value: vec![1, 2, 3],
            })),
        };
        let resp: pv::Message = c.call(&req).expect("connection");
        match resp.sum {
            Some(pv::message::Sum::SignBytesResponse(r)) => {
                assert!(r.signature.is_empty(), "SignBytes must not be signed");
                let e = r.error.expect("an error");
                (e.code, e.description)
            }
            other => panic!("unexpected response {other:?}"),
        }
    }

    pub fn ping(c: &mut MockConn) -> bool {
        let req = pv::Message {
            sum: Some(pv::message::Sum::PingRequest(pv::PingRequest {})),
        };
        matches!(
            c.call::<_, pv::Message>(&req).and_then(|m| m.sum),
            Some(pv::message::Sum::PingResponse(_))
        )
    }
}

/// One connected mock node of a given version.
pub struct Node {
    pub conn: MockConn,
    pub ver: Ver,
    pub chain: String,
    pub key: Option<ConsensusKey>,
}

impl Node {
    pub fn new(conn: MockConn, ver: Ver, chain: &str) -> Node {
        Node {
            conn,
            ver,
            chain: chain.into(),
            key: None,
        }
    }

    pub fn pubkey(&mut self) -> Option<Result<Vec<u8>, Refused>> {
        let chain = self.chain.clone();
        let r = match self.ver {
            Ver::V034 => v0_34::pubkey(&mut self.conn, &chain),
            Ver::V037 => v0_37::pubkey(&mut self.conn, &chain),
            Ver::V038 => v0_38::pubkey(&mut self.conn, &chain),
            Ver::V1 => v1::pubkey(&mut self.conn, &chain),
        };
        if let Some(Ok(k)) = &r {
            self.key = Some(ConsensusKey::from_wire(k));
        }
        r
    }

    pub fn ping(&mut self) -> bool {
        match self.ver {
            Ver::V034 => v0_34::ping(&mut self.conn),
            Ver::V037 => v0_37::ping(&mut self.conn),
            Ver::V038 => v0_38::ping(&mut self.conn),
            Ver::V1 => v1::ping(&mut self.conn),
        }
    }

    /// Asks for a signature; a released one is verified before it is returned (panics if not
    /// valid). `None`: the connection failed.
    pub fn sign(&mut self, a: &Ask) -> Option<Result<Released, Refused>> {
        let chain = self.chain.clone();
        let r = match self.ver {
            Ver::V034 => v0_34::sign(&mut self.conn, &chain, a),
            Ver::V037 => v0_37::sign(&mut self.conn, &chain, a),
            Ver::V038 => v0_38::sign(&mut self.conn, &chain, a),
            Ver::V1 => v1::sign(&mut self.conn, &chain, a),
        }?;
        Some(r.map(|(signature, extension_signature, t)| {
            let key = self.key.expect("call pubkey first");
            let sign_bytes = oracle_sign_bytes(&chain, a, t);
            key.verify(&sign_bytes, &signature)
                .unwrap_or_else(|e| panic!("released signature does not verify: {e} ({a:?})"));
            let wants_ext = self.ver.has_extensions()
                && !a.proposal
                && a.vote_type == 2
                && a.block.is_some()
                && !a.skip_extension;
            if wants_ext {
                key.verify(
                    &oracle_extension_sign_bytes(&chain, a),
                    &extension_signature,
                )
                .expect("extension signature verifies");
            } else {
                assert!(
                    extension_signature.is_empty(),
                    "unexpected extension signature for {a:?}"
                );
            }
            Released {
                signature,
                extension_signature,
                ts: t,
                sign_bytes,
            }
        }))
    }
}
