//! Anchors of the audit chain's head, kept outside the database.
//!
//! The hash chain shows that no row was changed or removed in the middle, but not that the
//! newest rows are still there: whoever can write the file can drop the append-only triggers,
//! delete the tail, and leave a valid (shorter) chain; or put back an older copy of the
//! database. An anchor is `(seq, head hash, time)` signed by a dedicated ed25519 audit key and
//! written where the data directory's owner cannot rewrite it (the journal and an append-only
//! file). Checking the database against its anchors finds:
//!
//! - truncation or rollback: an anchor names a row the database no longer has;
//! - a forked chain: the database has the anchored row number, with another hash (rows deleted
//!   or an old copy restored, then new rows written on top).
//!
//! (Note: `checkpoint.rs` is SQLite's WAL checkpointer, unrelated to these anchors.)

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Domain tag of the signed bytes (bump `v1` if the encoding changes).
const DOMAIN: &[u8] = b"keyguard/audit-anchor/v1\0";

/// One anchor line (JSON Lines in the anchor file, a field set in the journal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// Sequence number of the anchored row (0: the empty log).
    pub seq: i64,
    /// Its hash, lowercase hex.
    pub head: String,
    /// When the anchor was made, unix milliseconds.
    pub ts_ms: i64,
    /// Signature by the audit key over [`Anchor::signed_bytes`], lowercase hex.
    pub sig: String,
}

/// Why a database does not match its anchors.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("anchor line {line}: {reason}")]
    Unreadable { line: usize, reason: String },
    #[error("anchor line {line}: signature does not verify with the audit key")]
    BadSignature { line: usize },
    #[error(
        "audit log truncated or rolled back: anchor line {line} (at {ts_ms} ms) names row \
         {seq}, but the database ends at row {last}"
    )]
    Missing {
        line: usize,
        seq: i64,
        ts_ms: i64,
        last: i64,
    },
    #[error(
        "audit log forked: row {seq} has hash {found}, anchor line {line} (at {ts_ms} ms) \
         says {anchored}"
    )]
    Forked {
        line: usize,
        seq: i64,
        ts_ms: i64,
        found: String,
        anchored: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Anchor {
    /// What the audit key signs: domain, seq, head hash, time.
    fn signed_bytes(seq: i64, head: &[u8; 32], ts_ms: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(DOMAIN.len() + 48);
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(head);
        out.extend_from_slice(&ts_ms.to_be_bytes());
        out
    }

    /// Signs the head `(seq, head)` at `ts_ms`.
    pub fn sign(key: &SigningKey, seq: i64, head: &[u8; 32], ts_ms: i64) -> Anchor {
        let sig = key.sign(&Self::signed_bytes(seq, head, ts_ms));
        Anchor {
            seq,
            head: hex::encode(head),
            ts_ms,
            sig: hex::encode(sig.to_bytes()),
        }
    }

    fn head_bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.head, &mut out).ok()?;
        Some(out)
    }

    /// Whether the audit key signed exactly this anchor.
    pub fn verifies(&self, key: &VerifyingKey) -> bool {
        let (Some(head), Ok(sig)) = (self.head_bytes(), hex::decode(&self.sig)) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&sig) else {
            return false;
        };
        key.verify(&Self::signed_bytes(self.seq, &head, self.ts_ms), &sig)
            .is_ok()
    }

    /// One JSON line.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The audit key: 32 raw bytes, or 64 hex characters (with optional trailing newline).
pub fn read_key(bytes: &[u8]) -> Option<SigningKey> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim);
    let mut seed = [0u8; 32];
    match text {
        Some(t) if t.len() == 64 && hex::decode_to_slice(t, &mut seed).is_ok() => {}
        _ if bytes.len() == 32 => seed.copy_from_slice(bytes),
        _ => return None,
    }
    Some(SigningKey::from_bytes(&seed))
}

/// What a successful check covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorReport {
    pub anchors: usize,
    /// The newest anchored row.
    pub newest_seq: i64,
}

/// Checks the audit log in `conn` against the anchor lines in `text`, every one of which must
/// be signed by `key`. Call after the chain itself verified.
pub(crate) fn check(
    conn: &super::db::Tx<'_>,
    text: &str,
    key: &VerifyingKey,
) -> Result<AnchorReport, AnchorError> {
    let (last, _) = super::read::head(conn)?;
    let mut report = AnchorReport {
        anchors: 0,
        newest_seq: 0,
    };
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let anchor: Anchor = serde_json::from_str(raw).map_err(|e| AnchorError::Unreadable {
            line,
            reason: e.to_string(),
        })?;
        if !anchor.verifies(key) {
            return Err(AnchorError::BadSignature { line });
        }
        if anchor.seq > last {
            return Err(AnchorError::Missing {
                line,
                seq: anchor.seq,
                ts_ms: anchor.ts_ms,
                last,
            });
        }
        let found = hash_at(conn, anchor.seq)?;
        if found != anchor.head {
            return Err(AnchorError::Forked {
                line,
                seq: anchor.seq,
                ts_ms: anchor.ts_ms,
                found,
                anchored: anchor.head,
            });
        }
        report.anchors += 1;
        report.newest_seq = report.newest_seq.max(anchor.seq);
    }
    Ok(report)
}

/// Hex hash of row `seq` (the genesis hash for 0).
fn hash_at(conn: &super::db::Tx<'_>, seq: i64) -> Result<String, StoreError> {
    if seq == 0 {
        return Ok(hex::encode(super::GENESIS_HASH));
    }
    let hash: Option<Vec<u8>> = conn
        .query_opt(
            "SELECT hash FROM audit_log WHERE seq = $1",
            super::db::vals![seq],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    Ok(hash.map(hex::encode).unwrap_or_default())
}
