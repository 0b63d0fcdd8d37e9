//! Audit records, their canonical encoding, the hash chain and its verification.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first row.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// Domain tag at the start of every row's canonical bytes (bump `v1` if the encoding changes).
const DOMAIN: &[u8] = b"keyguard/audit/v1\0";

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Signed,
    Refused,
    Failed,
    /// Held for human approval (`-32002`); a later retry may sign.
    Held,
    /// An admin action that took effect.
    Accepted,
    /// A signature was made but pass 2 rejected it, so it never left (`guard.pass2_mismatch`).
    Withheld,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Signed => "signed",
            Decision::Refused => "refused",
            Decision::Failed => "failed",
            Decision::Held => "held",
            Decision::Accepted => "accepted",
            Decision::Withheld => "withheld",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Decision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "signed" => Ok(Decision::Signed),
            "refused" => Ok(Decision::Refused),
            "failed" => Ok(Decision::Failed),
            "held" => Ok(Decision::Held),
            "accepted" => Ok(Decision::Accepted),
            "withheld" => Ok(Decision::Withheld),
            other => Err(format!("unknown decision {other:?}")),
        }
    }
}

/// One record to append; `seq`, `ts_ms` and the hashes are assigned by the writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub request_id: String,
    pub client: String,
    pub key_id: Option<String>,
    /// CAIP-2 style chain id, e.g. `"eip155:31337"`.
    pub chain: Option<String>,
    pub method: String,
    /// Decoded intent facts (never key material).
    pub summary: serde_json::Value,
    pub decision: Decision,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub tx_hash: Option<String>,
}

/// Proof that an entry is durably committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditReceipt {
    pub seq: i64,
    pub ts_ms: i64,
    pub hash: [u8; 32],
}

/// Result of a full chain verification: row count and the hash of the last row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditVerification {
    pub rows: u64,
    /// Hash of the last row ([`GENESIS_HASH`] for an empty log). Compare with an anchored copy to
    /// detect truncation of the tail, which the chain alone cannot reveal.
    pub head: [u8; 32],
}

/// A stored row, every column. Hashes serialize as lowercase hex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    pub seq: i64,
    pub ts_ms: i64,
    pub request_id: String,
    pub client: String,
    pub key_id: Option<String>,
    pub chain: Option<String>,
    pub method: String,
    pub summary: serde_json::Value,
    pub decision: Decision,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub tx_hash: Option<String>,
    #[serde(serialize_with = "ser_hex", deserialize_with = "de_hex")]
    pub prev_hash: [u8; 32],
    #[serde(serialize_with = "ser_hex", deserialize_with = "de_hex")]
    pub hash: [u8; 32],
}

fn ser_hex<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

fn de_hex<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let s = String::deserialize(d)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
    Ok(out)
}

/// The hashed content of a row, exactly as stored (summary is the stored JSON text).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowFields<'a> {
    pub(crate) seq: i64,
    pub(crate) ts_ms: i64,
    pub(crate) request_id: &'a str,
    pub(crate) client: &'a str,
    pub(crate) key_id: Option<&'a str>,
    pub(crate) chain: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) summary: &'a str,
    pub(crate) decision: &'a str,
    pub(crate) rule: Option<&'a str>,
    pub(crate) reason: Option<&'a str>,
    pub(crate) tx_hash: Option<&'a str>,
}

impl RowFields<'_> {
    /// Unambiguous encoding: domain tag, then fixed-width big-endian integers, strings as
    /// u64 length + bytes, optional strings as a 0/1 presence byte before that.
    pub(crate) fn canonical_bytes(&self) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, v: &str) {
            out.extend_from_slice(&(v.len() as u64).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        fn o(out: &mut Vec<u8>, v: Option<&str>) {
            match v {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    s(out, v);
                }
            }
        }
        let mut out = Vec::with_capacity(256 + self.summary.len());
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ts_ms.to_be_bytes());
        s(&mut out, self.request_id);
        s(&mut out, self.client);
        o(&mut out, self.key_id);
        o(&mut out, self.chain);
        s(&mut out, self.method);
        s(&mut out, self.summary);
        s(&mut out, self.decision);
        o(&mut out, self.rule);
        o(&mut out, self.reason);
        o(&mut out, self.tx_hash);
        out
    }

    /// `sha256(prev_hash || canonical_bytes)`.
    pub(crate) fn hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(prev);
        h.update(self.canonical_bytes());
        h.finalize().into()
    }
}
