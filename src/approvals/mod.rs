//! M-of-N human approval of signing requests.
//!
//! Lifecycle of one approval, keyed by (key, intent digest) so that only the *identical* intent
//! can use it:
//!
//! pending --(quorum of approvers)--> approved --(the retry that signs)--> consumed
//!    \--(one rejection)--> rejected          (any state but consumed) --(time)--> expired
//!
//! Every transition is one durable SQLite transaction, so a restart loses nothing and an
//! approval is consumed by exactly one signature even when retries race.

use std::time::Duration;

use rand::RngCore;
use serde_json::Value;

use crate::store::{state_sql as sql, ApprovalRecord, StateDb, StoreError, UserRecord};

/// What a policy demands before an intent may be signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRequirement {
    /// The rule that asked (e.g. `evm.require_approval`).
    pub rule: String,
    /// Distinct approvals needed.
    pub approvers: u32,
    /// Group the approvers must belong to.
    pub group: String,
    /// How long the request stays open.
    pub within: Duration,
}

/// What the guard should do with the request.
#[derive(Debug)]
pub enum ApprovalOutcome {
    /// The quorum was met; this request consumed the approval and may sign.
    Proceed(String),
    /// Waiting for approvers.
    Held(Box<ApprovalRecord>),
}

/// Why a request cannot proceed and will not be held either.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// A human rejected this exact intent; it stays refused until the request window ends.
    #[error("approval {0} was rejected")]
    Rejected(String),
    /// This exact intent was already signed once with its approval.
    #[error("approval {0} was already used for a signature")]
    Consumed(String),
    /// The approval state could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a vote was not counted.
#[derive(Debug, thiserror::Error)]
pub enum VoteError {
    #[error("no approval {0}")]
    NotFound(String),
    #[error("approval {id} is {state}, not pending")]
    NotPending { id: String, state: String },
    #[error("approval {0} has expired")]
    Expired(String),
    #[error("the requester cannot approve its own request")]
    SelfApproval,
    #[error("user is not in approval group {0:?}")]
    NotInGroup(String),
    #[error("user already voted on approval {0}")]
    AlreadyVoted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The approval book over the control-state database.
#[derive(Clone, Debug)]
pub struct Approvals {
    db: StateDb,
}

fn new_id() -> String {
    let mut raw = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("apr-{}", hex::encode(raw))
}

/// The facts of one held request, as the guard knows them.
#[derive(Debug, Clone)]
pub struct HeldIntent<'a> {
    pub key: &'a str,
    pub digest: &'a [u8; 32],
    pub requester: &'a str,
    pub chain: Option<&'a str>,
    pub summary: &'a Value,
}

impl Approvals {
    /// Approvals stored in `db`.
    pub fn new(db: StateDb) -> Self {
        Approvals { db }
    }

    /// Decides a request that `req` says needs approval. Blocking (one small transaction).
    pub fn decide(
        &self,
        intent: &HeldIntent<'_>,
        req: &ApprovalRequirement,
        now_ms: i64,
    ) -> Result<ApprovalOutcome, ApprovalError> {
        self.db.transaction(|tx| {
            let latest = sql::latest_approval(tx, intent.key, intent.digest)?;
            if let Some(a) = latest {
                let live = a.expires_ms > now_ms;
                match a.state.as_str() {
                    "consumed" => return Ok(Err(ApprovalError::Consumed(a.id))),
                    "rejected" if live => return Ok(Err(ApprovalError::Rejected(a.id))),
                    "approved" if live => {
                        return if sql::transition(tx, &a.id, "approved", "consumed")? {
                            Ok(Ok(ApprovalOutcome::Proceed(a.id)))
                        } else {
                            Ok(Err(ApprovalError::Consumed(a.id)))
                        };
                    }
                    "pending" if live => return Ok(Ok(ApprovalOutcome::Held(Box::new(a)))),
                    _ => {} // expired: a fresh request below
                }
            }
            let within = i64::try_from(req.within.as_millis()).unwrap_or(i64::MAX);
            let record = ApprovalRecord {
                id: new_id(),
                key_id: intent.key.to_owned(),
                intent_digest: intent.digest.to_vec(),
                requester: intent.requester.to_owned(),
                chain: intent.chain.map(str::to_owned),
                summary: intent.summary.clone(),
                rule: req.rule.clone(),
                group: req.group.clone(),
                required: req.approvers,
                approved: 0,
                approvers: Vec::new(),
                created_ms: now_ms,
                expires_ms: now_ms.saturating_add(within),
                state: "pending".into(),
            };
            sql::insert_approval(tx, &record)?;
            Ok(Ok(ApprovalOutcome::Held(Box::new(record))))
        })?
    }

    /// Gives a consumed approval back when the signature it was consumed for was not released
    /// (backend failure, or its audit row did not commit), so the same intent can be retried
    /// without asking the approvers again: "exactly once" counts released signatures.
    pub fn restore(&self, id: &str) -> Result<(), StoreError> {
        self.db
            .transaction(|tx| sql::transition(tx, id, "consumed", "approved").map(|_| ()))
    }

    /// At start, before any request: approvals consumed by a signature that a crash kept from
    /// being released go back to `approved`, so the approved intent can still be signed (once).
    /// Returns their ids.
    pub fn recover_unreleased(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        self.db
            .transaction(|tx| sql::restore_unreleased(tx, now_ms))
    }

    /// Pending, unexpired requests.
    pub fn pending(&self, now_ms: i64) -> Result<Vec<ApprovalRecord>, StoreError> {
        self.db
            .transaction(|tx| sql::live_approvals(tx, "pending", now_ms))
    }

    /// Records `user`'s vote. An approval by a user outside the group, by the requester, or a
    /// second vote by the same user is refused; one rejection closes the request.
    pub fn vote(
        &self,
        id: &str,
        user: &UserRecord,
        approve: bool,
        now_ms: i64,
    ) -> Result<ApprovalRecord, VoteError> {
        self.db.transaction(|tx| {
            let Some(a) = sql::approval(tx, id)? else {
                return Ok(Err(VoteError::NotFound(id.to_owned())));
            };
            if a.state != "pending" {
                return Ok(Err(VoteError::NotPending {
                    id: a.id,
                    state: a.state,
                }));
            }
            if a.expires_ms <= now_ms {
                return Ok(Err(VoteError::Expired(a.id)));
            }
            // The requesting application's identity must never approve itself, even if an
            // employee account shares its name.
            if user.name == a.requester {
                return Ok(Err(VoteError::SelfApproval));
            }
            if !user.groups.contains(&a.group) {
                return Ok(Err(VoteError::NotInGroup(a.group)));
            }
            let vote = if approve { "approve" } else { "reject" };
            if !sql::insert_vote(tx, &a.id, &user.name, vote)? {
                return Ok(Err(VoteError::AlreadyVoted(a.id)));
            }
            let after = sql::approval(tx, &a.id)?.unwrap_or(a);
            if !approve {
                sql::transition(tx, &after.id, "pending", "rejected")?;
            } else if after.approved >= after.required {
                sql::transition(tx, &after.id, "pending", "approved")?;
            }
            Ok(Ok(sql::approval(tx, &after.id)?.unwrap_or(after)))
        })?
    }
}

#[cfg(test)]
mod tests;
