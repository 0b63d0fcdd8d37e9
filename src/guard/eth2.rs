//! Ethereum consensus duties: decode and policy before the key is touched, then slashing
//! protection recorded, BLS signature, pass 2, audit row, answer, in that order.
//!
//! Attacker's table (tests in `tests/eth2_signer.rs` and `chains/eth2/src/tests.rs`):
//! - a request for another network or fork, or a `signingRoot` that is not keyguard's: refused
//!   before the key is used (`eth2.network`, `eth2.fork`, `eth2.signing_root`);
//! - a far-future slot or epoch (locks the key out): `eth2.clock_window`;
//! - a second, conflicting block or attestation, also at the same moment from another
//!   connection or instance: `eth2.double_*`/`eth2.surround_vote`, by the store's one
//!   conditional statement; the record commits before the key signs;
//! - a faulted signer returning a wrong signature among many good ones: pass 2 checks the
//!   duties signed at the same time in one batch and, when it fails, each alone; only the bad
//!   one is withheld (`eth2_pass2.rs`);
//! - exits and deposits (irreversible, or move who owns the stake): refused by rule;
//! - a flood for one key and duty: `eth2.rate_limit`; the kill switch stops every duty;
//! - a flood of refusals filling the disk: below the floor nothing new starts
//!   (`audit.disk_floor`), before any slashing record or signature;
//! - a block paying someone else or carrying other graffiti: `eth2_blocks.rs` (Nimbus proofs).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use keyguard_chain::rules::{common, eth2 as rule};
use keyguard_eth2::{decode, Context, DecodeError, Duty, DutyKind, Network, Slashable};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::access::kill::KillSwitch;
use crate::approvals::{
    ApprovalError, ApprovalOutcome, ApprovalRequirement, Approvals, OwnedIntent,
};
use crate::backend::software::bls::BlsKeystore;
use crate::config::Eth2Policy;
use crate::store::eth2_slashing::{SlashingError, SlashingStore};
use crate::store::{AuditEntry, AuditLog, Decision};

#[path = "eth2_blocks.rs"]
mod blocks;
#[path = "eth2_keys.rs"]
mod keys;
#[path = "eth2_pass2.rs"]
mod pass2;
#[path = "eth2_policy.rs"]
mod policy;
pub use keys::KeyStatus;
use pass2::Pass2;

/// HTTP status classes of a refusal, as Web3Signer answers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 400: malformed.
    BadRequest,
    /// 403: policy.
    Forbidden,
    /// 404: unknown key.
    NotFound,
    /// 412: slashing protection.
    Slashing,
    /// 429: rate limit.
    TooMany,
    /// 500/503: keyguard could not complete (store, audit, pass 2); nothing released.
    Unavailable,
}

/// A refused or failed duty, naming its rule and field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eth2Refusal {
    /// Status class.
    pub status: Status,
    /// Rule name.
    pub rule: &'static str,
    /// Field concerned.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl Eth2Refusal {
    fn new(status: Status, rule: &'static str, field: &str, reason: impl Into<String>) -> Self {
        Eth2Refusal {
            status,
            rule,
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<DecodeError> for Eth2Refusal {
    fn from(e: DecodeError) -> Self {
        let status = match e.rule {
            common::REQUEST_INVALID
            | rule::BLOCK_FORMAT
            | rule::SIGNING_ROOT
            | rule::BLOCK_PROOF => Status::BadRequest,
            _ => Status::Forbidden,
        };
        Eth2Refusal {
            status,
            rule: e.rule,
            field: e.field,
            reason: e.reason,
        }
    }
}

/// Who asks, for the audit row.
pub struct Eth2Caller<'a> {
    /// Client name.
    pub client: &'a str,
    /// Request id for the audit row.
    pub request_id: String,
}

/// The eth2 signer.
pub struct Eth2Guard {
    network: Network,
    policy: Eth2Policy,
    proposer_index: HashMap<[u8; 48], u64>,
    fee_recipients: Vec<[u8; 20]>,
    blocks: blocks::BlockRules,
    keys: Arc<BlsKeystore>,
    slashing: SlashingStore,
    kill: Option<Arc<KillSwitch>>,
    approvals: Option<Approvals>,
    audit: AuditLog,
    limits: HashMap<DutyKind, DefaultKeyedRateLimiter<[u8; 48]>>,
    pass2: Pass2,
    /// Test-only fault: this key's signatures are made over a flipped root (a faulted signer).
    #[cfg(test)]
    tamper: Option<[u8; 48]>,
}

impl std::fmt::Debug for Eth2Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eth2Guard")
            .field("network", &self.network.name)
            .finish_non_exhaustive()
    }
}

/// The string form of a public key (`0x` + 96 hex), as Web3Signer's paths and lists use it.
pub fn pubkey_hex(pk: &[u8; 48]) -> String {
    format!("0x{}", hex::encode(pk))
}

impl Eth2Guard {
    /// Builds the signer. `policy` was validated with the config.
    pub fn new(
        network: Network,
        policy: Eth2Policy,
        keys: Arc<BlsKeystore>,
        slashing: SlashingStore,
        audit: AuditLog,
    ) -> Eth2Guard {
        let proposer_index = policy
            .proposer_index
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    keyguard_eth2::parse_hex_fixed::<48>(&k.to_ascii_lowercase())?,
                    *v,
                ))
            })
            .collect();
        let fee_recipients = policy
            .fee_recipients
            .iter()
            .filter_map(|f| keyguard_eth2::parse_hex_fixed::<20>(&f.to_ascii_lowercase()))
            .collect();
        let limits = policy
            .rate_limits
            .iter()
            .filter_map(|(d, n)| {
                let kind = DutyKind::parse(d)?;
                let q = Quota::per_minute(NonZeroU32::new(*n)?);
                Some((kind, RateLimiter::keyed(q)))
            })
            .collect();
        Eth2Guard {
            network,
            blocks: blocks::BlockRules::from_policy(&policy),
            policy,
            proposer_index,
            fee_recipients,
            keys,
            slashing,
            kill: None,
            approvals: None,
            audit,
            limits,
            pass2: Pass2::spawn(),
            #[cfg(test)]
            tamper: None,
        }
    }

    /// Adds the kill switch (every duty stops while it is on).
    pub fn with_kill_switch(mut self, kill: Arc<KillSwitch>) -> Self {
        self.kill = Some(kill);
        self
    }

    /// Adds the approval book (exits and deposits with `*_approval` configured wait for it).
    pub fn with_approvals(mut self, approvals: Approvals) -> Self {
        self.approvals = Some(approvals);
        self
    }

    /// The network signed for.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Pass-2 batches checked and the signatures in them, since start.
    pub fn pass2_batches(&self) -> (u64, u64) {
        self.pass2.counts()
    }

    /// Every BLS public key held.
    pub fn public_keys(&self) -> Vec<[u8; 48]> {
        self.keys.public_keys()
    }

    async fn audit(
        &self,
        who: &Eth2Caller<'_>,
        pk: &[u8; 48],
        method: &str,
        summary: serde_json::Value,
        outcome: Result<&[u8; 96], &Eth2Refusal>,
    ) -> Result<(), Eth2Refusal> {
        let (decision, rule, reason, sig) = match outcome {
            Ok(sig) => (Decision::Signed, None, None, Some(hex::encode(sig))),
            Err(r) => (
                // Held for approval, not refused: a retry after the votes signs.
                if r.rule == "approval.required" {
                    Decision::Held
                } else {
                    Decision::Refused
                },
                Some(r.rule.to_string()),
                Some(format!("{}: {}", r.field, r.reason)),
                None,
            ),
        };
        let entry = AuditEntry {
            request_id: who.request_id.clone(),
            client: who.client.to_string(),
            key_id: Some(pubkey_hex(pk)),
            chain: Some(format!("eth2:{}", self.network.name)),
            method: method.to_string(),
            summary,
            decision,
            rule,
            reason,
            tx_hash: sig,
        };
        self.audit.append(entry).await.map(|_| ()).map_err(|e| {
            Eth2Refusal::new(
                Status::Unavailable,
                rule::STORE_UNAVAILABLE,
                "audit",
                format!("audit row not written, nothing released: {e}"),
            )
        })
    }

    /// Signs one Web3Signer request body for `pk`; the signature is released only after its
    /// slashing record and audit row are durable.
    pub async fn sign(
        &self,
        who: &Eth2Caller<'_>,
        pk: &[u8; 48],
        body: &[u8],
        now_unix: u64,
    ) -> Result<[u8; 96], Eth2Refusal> {
        let outcome = self.sign_inner(who.client, pk, body, now_unix).await;
        let (method, summary) = match &outcome {
            Ok((d, _)) => (
                format!("eth2_{}", d.kind.as_str()),
                json!({"duty": d.summary, "signing_root": format!("0x{}", hex::encode(d.signing_root))}),
            ),
            Err((Some(d), _)) => (
                format!("eth2_{}", d.kind.as_str()),
                json!({"duty": d.summary}),
            ),
            Err((None, _)) => ("eth2_sign".to_string(), json!({})),
        };
        match outcome {
            Ok((_, sig)) => {
                self.audit(who, pk, &method, summary, Ok(&sig)).await?;
                metrics::counter!("keyguard_eth2_signatures_total", "duty" => method).increment(1);
                Ok(sig)
            }
            Err((_, refusal)) => {
                // The refusal answers even if its audit row cannot be written.
                let _ = self.audit(who, pk, &method, summary, Err(&refusal)).await;
                metrics::counter!(crate::metrics::REJECTIONS, "rule" => refusal.rule).increment(1);
                Err(refusal)
            }
        }
    }

    async fn sign_inner(
        &self,
        client: &str,
        pk: &[u8; 48],
        body: &[u8],
        now_unix: u64,
    ) -> Result<(Duty, [u8; 96]), (Option<Duty>, Eth2Refusal)> {
        let key_hex = pubkey_hex(pk);
        let _pass = match &self.kill {
            Some(k) => Some(k.admit(Some(&key_hex)).await.map_err(|()| {
                (
                    None,
                    Eth2Refusal::new(
                        Status::Forbidden,
                        common::KILL_SWITCH,
                        "pubkey",
                        "the kill switch is on: no duty is signed",
                    ),
                )
            })?),
            None => None,
        };
        // Below the disk floor no new duty starts (as on every other listener): its audit
        // row could not be written, and a signed-but-withheld duty would still use up its slot.
        if let Some((free, floor)) = self.audit.below_disk_floor() {
            return Err((
                None,
                Eth2Refusal::new(
                    Status::Unavailable,
                    "audit.disk_floor",
                    "pubkey",
                    format!("{free} bytes free on the data directory, below the floor of {floor}"),
                ),
            ));
        }
        if !self.keys.contains(pk) {
            return Err((
                None,
                Eth2Refusal::new(
                    Status::NotFound,
                    rule::UNKNOWN_KEY,
                    "pubkey",
                    format!("no BLS key {key_hex}"),
                ),
            ));
        }
        let ctx = Context {
            network: &self.network,
            pubkey: pk,
            now_unix,
        };
        let mut duty = decode(body, &ctx).map_err(|e| (None, e.into()))?;
        match self.blocks.check(&duty) {
            Ok(proven) => duty.summary.push_str(&proven),
            Err(r) => return Err((Some(duty), r)),
        }
        if let Err(r) = self.policy(pk, &duty, now_unix) {
            return Err((Some(duty), r));
        }
        let approval = match self.approve(client, pk, &duty).await {
            Ok(a) => a,
            Err(r) => return Err((Some(duty), r)),
        };
        let out = self.record_and_sign(pk, duty).await;
        if let (Err(_), Some((book, id))) = (&out, approval) {
            // Not released: the approved intent may be retried without asking again.
            let _ = tokio::task::spawn_blocking(move || book.restore(&id)).await;
        }
        out
    }

    /// Exits and deposits wait for M-of-N approval of this exact signing root; the id of the
    /// approval a proceeding request consumed.
    async fn approve(
        &self,
        client: &str,
        pk: &[u8; 48],
        d: &Duty,
    ) -> Result<Option<(Approvals, String)>, Eth2Refusal> {
        let cfg = match d.kind {
            DutyKind::VoluntaryExit => self.policy.exit_approval.as_ref(),
            DutyKind::Deposit => self.policy.deposit_approval.as_ref(),
            _ => None,
        };
        let Some(cfg) = cfg else {
            return Ok(None);
        };
        let forbid =
            |r: &'static str, why: String| Eth2Refusal::new(Status::Forbidden, r, "type", why);
        let book = self.approvals.clone().ok_or_else(|| {
            forbid(
                "approval.unavailable",
                "no approval book: exits and deposits are refused".into(),
            )
        })?;
        let mut h = Sha256::new();
        h.update(b"keyguard/eth2-intent/v1\0");
        h.update(pk);
        h.update(d.signing_root);
        let digest: [u8; 32] = h.finalize().into();
        let req = ApprovalRequirement {
            rule: match d.kind {
                DutyKind::VoluntaryExit => rule::VOLUNTARY_EXIT.into(),
                _ => rule::DEPOSIT.into(),
            },
            approvers: cfg.approvers,
            group: cfg.group.clone(),
            within: std::time::Duration::from_secs(cfg.within_secs),
        };
        let intent = OwnedIntent {
            key: pubkey_hex(pk),
            digest,
            requester: client.to_string(),
            chain: format!("eth2:{}", self.network.name),
            summary: json!({"duty": d.summary, "signing_root": format!("0x{}", hex::encode(d.signing_root))}),
        };
        let outcome = book.decide_blocking(intent, req).await.map_err(|e| {
            Eth2Refusal::new(
                Status::Unavailable,
                rule::STORE_UNAVAILABLE,
                "approval",
                e.to_string(),
            )
        })?;
        match outcome {
            Ok(ApprovalOutcome::Proceed(id)) => Ok(Some((book, id))),
            Ok(ApprovalOutcome::Held(a)) => Err(forbid(
                "approval.required",
                format!("held for approval {} ({} of {} in group {:?}); send the same request again once approved", a.id, a.approved, a.required, a.group),
            )),
            Err(ApprovalError::Rejected(id)) => Err(forbid("approval.rejected", format!("approval {id} was rejected"))),
            Err(ApprovalError::Consumed(id)) => Err(forbid("approval.consumed", format!("approval {id} was already used"))),
            Err(ApprovalError::Capped { scope, cap }) => Err(Eth2Refusal::new(Status::TooMany, "approval.pending_cap", "type", format!("{scope} cap of {cap} pending requests"))),
            Err(ApprovalError::Store(e)) => Err(Eth2Refusal::new(Status::Unavailable, rule::STORE_UNAVAILABLE, "approval", e.to_string())),
        }
    }

    /// Slashing record, BLS signature and pass 2, off the async threads.
    async fn record_and_sign(
        &self,
        pk: &[u8; 48],
        duty: Duty,
    ) -> Result<(Duty, [u8; 96]), (Option<Duty>, Eth2Refusal)> {
        let (slashing, keys, pk2, d2) =
            (self.slashing.clone(), self.keys.clone(), *pk, duty.clone());
        let pass2 = self.pass2.clone();
        #[cfg(test)]
        let tamper = self.tamper == Some(*pk);
        let signed = tokio::task::spawn_blocking(move || -> Result<[u8; 96], Eth2Refusal> {
            let root = Some(&d2.signing_root);
            let recorded = match d2.slashable {
                Some(Slashable::Block { slot }) => Some(slashing.sign_block(&pk2, slot, root)),
                Some(Slashable::Attestation { source, target }) => {
                    Some(slashing.sign_attestation(&pk2, source, target, root))
                }
                None => None,
            };
            match recorded {
                Some(Err(SlashingError::Refused { rule, reason })) => {
                    return Err(Eth2Refusal::new(
                        Status::Slashing,
                        rule,
                        "slashing_protection",
                        reason,
                    ))
                }
                Some(Err(SlashingError::Store(e))) => {
                    return Err(Eth2Refusal::new(
                        Status::Unavailable,
                        rule::STORE_UNAVAILABLE,
                        "slashing_protection",
                        format!("slashing record not written, not signed: {e}"),
                    ))
                }
                _ => {}
            }
            let sign_root = d2.signing_root;
            #[cfg(test)]
            let sign_root = if tamper {
                let mut r = sign_root;
                r[0] ^= 1;
                r
            } else {
                sign_root
            };
            let sig = keys.sign(&pk2, &sign_root).ok_or_else(|| {
                Eth2Refusal::new(
                    Status::NotFound,
                    rule::UNKNOWN_KEY,
                    "pubkey",
                    "key removed while signing",
                )
            })?;
            // Pass 2: the signature must verify for keyguard's own signing root (batched with
            // the duties signed at the same time, `eth2_pass2.rs`).
            if !pass2.verify(&pk2, &d2.signing_root, &sig) {
                return Err(Eth2Refusal::new(
                    Status::Unavailable,
                    crate::guard::PASS2_MISMATCH,
                    "signature",
                    "the BLS signature does not verify; withheld",
                ));
            }
            Ok(sig)
        })
        .await
        .map_err(|e| {
            (
                Some(duty.clone()),
                Eth2Refusal::new(
                    Status::Unavailable,
                    rule::STORE_UNAVAILABLE,
                    "signature",
                    e.to_string(),
                ),
            )
        })?;
        match signed {
            Ok(sig) => Ok((duty, sig)),
            Err(r) => Err((Some(duty), r)),
        }
    }
}

#[cfg(test)]
#[path = "tests_eth2_pass2.rs"]
mod tests_pass2;
