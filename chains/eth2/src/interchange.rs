//! EIP-3076 slashing-protection interchange, format version 5 ("complete" files: every
//! signed block and attestation; "minimal" files: one of each per key, used as watermarks).
//! Parsing is strict: numbers must be quoted decimal strings (the official
//! `minimal_unquoted` case), roots exactly 32 bytes, and the file's genesis validators root
//! must be the network's (refused before anything is imported).

use serde::Serialize;
use serde_json::Value;

use crate::json::{parse_no_duplicates, Obj};
use crate::DecodeError;

/// The largest interchange file `import` reads (a complete history of 10,000 validators over
/// a year of attestations is ~1 GiB; operators split larger files).
pub const MAX_FILE_BYTES: usize = 1 << 30;

/// One imported or exported validator history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorHistory {
    /// BLS public key.
    pub pubkey: [u8; 48],
    /// `(slot, signing_root)`.
    pub blocks: Vec<(u64, Option<[u8; 32]>)>,
    /// `(source_epoch, target_epoch, signing_root)`.
    pub attestations: Vec<(u64, u64, Option<[u8; 32]>)>,
}

/// A parsed interchange file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interchange {
    /// `metadata.genesis_validators_root`.
    pub genesis_validators_root: [u8; 32],
    /// `data`.
    pub data: Vec<ValidatorHistory>,
}

fn opt_root(o: &mut Obj<'_>) -> Result<Option<[u8; 32]>, DecodeError> {
    match o.opt_value("signing_root") {
        None => Ok(None),
        Some(_) => o.bytes::<32>("signing_root").map(Some),
    }
}

fn array<'a>(v: &'a Value, path: &str) -> Result<&'a Vec<Value>, DecodeError> {
    v.as_array()
        .ok_or_else(|| DecodeError::invalid(path, "expected an array"))
}

impl Interchange {
    /// Parses an interchange file (format version 5 only).
    pub fn parse(bytes: &[u8]) -> Result<Interchange, DecodeError> {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(DecodeError::invalid(
                "body",
                "interchange file larger than 1 GiB",
            ));
        }
        let v = parse_no_duplicates(bytes)?;
        let mut top = Obj::new(&v, "")?;
        let mut meta = top.obj("metadata")?;
        let version = meta.str("interchange_format_version")?;
        if version != "5" {
            return Err(DecodeError::invalid(
                "metadata.interchange_format_version",
                "only version \"5\" is supported",
            ));
        }
        let gvr = meta.bytes::<32>("genesis_validators_root")?;
        meta.finish()?;
        let data = array(top.value("data")?, "data")?;
        let mut out = Vec::with_capacity(data.len());
        for (i, d) in data.iter().enumerate() {
            let p = format!("data[{i}]");
            let mut o = Obj::new(d, &p)?;
            let pubkey = o.bytes::<48>("pubkey")?;
            let mut h = ValidatorHistory {
                pubkey,
                blocks: Vec::new(),
                attestations: Vec::new(),
            };
            if let Some(bs) = o.opt_value("signed_blocks") {
                for (j, b) in array(bs, &format!("{p}.signed_blocks"))?.iter().enumerate() {
                    let mut bo = Obj::new(b, &format!("{p}.signed_blocks[{j}]"))?;
                    let slot = bo.u64("slot")?;
                    let root = opt_root(&mut bo)?;
                    bo.finish()?;
                    h.blocks.push((slot, root));
                }
            }
            if let Some(atts) = o.opt_value("signed_attestations") {
                for (j, a) in array(atts, &format!("{p}.signed_attestations"))?
                    .iter()
                    .enumerate()
                {
                    let mut ao = Obj::new(a, &format!("{p}.signed_attestations[{j}]"))?;
                    let s = ao.u64("source_epoch")?;
                    let t = ao.u64("target_epoch")?;
                    let root = opt_root(&mut ao)?;
                    ao.finish()?;
                    h.attestations.push((s, t, root));
                }
            }
            o.finish()?;
            out.push(h);
        }
        top.finish()?;
        Ok(Interchange {
            genesis_validators_root: gvr,
            data: out,
        })
    }

    /// Serializes as format version 5 (complete: every row given).
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Meta {
            interchange_format_version: &'static str,
            genesis_validators_root: String,
        }
        #[derive(Serialize)]
        struct Block {
            slot: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            signing_root: Option<String>,
        }
        #[derive(Serialize)]
        struct Att {
            source_epoch: String,
            target_epoch: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            signing_root: Option<String>,
        }
        #[derive(Serialize)]
        struct Data {
            pubkey: String,
            signed_blocks: Vec<Block>,
            signed_attestations: Vec<Att>,
        }
        #[derive(Serialize)]
        struct File {
            metadata: Meta,
            data: Vec<Data>,
        }
        let hx = |b: &[u8]| format!("0x{}", hex::encode(b));
        let f = File {
            metadata: Meta {
                interchange_format_version: "5",
                genesis_validators_root: hx(&self.genesis_validators_root),
            },
            data: self
                .data
                .iter()
                .map(|h| Data {
                    pubkey: hx(&h.pubkey),
                    signed_blocks: h
                        .blocks
                        .iter()
                        .map(|(s, r)| Block {
                            slot: s.to_string(),
                            signing_root: r.map(|r| hx(&r)),
                        })
                        .collect(),
                    signed_attestations: h
                        .attestations
                        .iter()
                        .map(|(s, t, r)| Att {
                            source_epoch: s.to_string(),
                            target_epoch: t.to_string(),
                            signing_root: r.map(|r| hx(&r)),
                        })
                        .collect(),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&f).expect("plain structs serialize")
    }
}
