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
    /// Too many requests are already waiting (rule `approval.pending_cap`); `scope` is
    /// `client` (this requester's own cap) or `total`.
    #[error("{scope} cap of {cap} pending approval requests reached")]
    Capped { scope: &'static str, cap: u32 },
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

/// Defaults of `[admin]`'s pending caps (defined with the config that uses them).
pub use crate::config::{DEFAULT_PENDING_PER_CLIENT, DEFAULT_PENDING_TOTAL};
/// Longest page `approvals.list` returns.
pub const MAX_PAGE: usize = 500;

#[derive(Clone, Copy, Debug)]
struct PendingCaps {
    per_client: u32,
    total: u32,
}

/// The approval book over the control-state database.
#[derive(Clone, Debug)]
pub struct Approvals {
    db: StateDb,
    caps: PendingCaps,
}

/// Judges an open (pending or approved) approval under the rule in force now; consumes it if
/// the votes that still count meet that rule.
fn recheck(
    tx: &crate::store::db::Tx<'_>,
    mut a: ApprovalRecord,
    req: &ApprovalRequirement,
) -> Result<ApprovalOutcome, StoreError> {
    if a.rule != req.rule || a.group != req.group || a.required != req.approvers {
        sql::retarget_approval(tx, &a.id, &req.rule, &req.group, req.approvers)?;
        a.rule.clone_from(&req.rule);
        a.group.clone_from(&req.group);
        a.required = req.approvers;
    }
    let valid = sql::valid_approvers(tx, &a.id, &a.group, &a.requester)?;
    a.approved = u32::try_from(valid.len()).unwrap_or(u32::MAX);
    a.approvers = valid;
    if a.approved >= a.required && sql::transition(tx, &a.id, &a.state, "consumed")? {
        return Ok(ApprovalOutcome::Proceed(a.id));
    }
    if a.state == "approved" {
        // Approved under an older rule or by people who no longer count: open again.
        sql::transition(tx, &a.id, "approved", "pending")?;
        a.state = "pending".into();
    }
    Ok(ApprovalOutcome::Held(Box::new(a)))
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

/// A [`HeldIntent`] with its fields owned, for [`Approvals::decide_blocking`].
#[derive(Clone, Debug)]
pub struct OwnedIntent {
    pub key: String,
    pub digest: [u8; 32],
    pub requester: String,
    pub chain: String,
    pub summary: Value,
}

impl Approvals {
    /// [`Self::decide`] (a database transaction) on the blocking pool, for async callers; `Err`
    /// only if that task could not run to its end.
    pub async fn decide_blocking(
        &self,
        intent: OwnedIntent,
        req: ApprovalRequirement,
    ) -> Result<Result<ApprovalOutcome, ApprovalError>, tokio::task::JoinError> {
        let book = self.clone();
        tokio::task::spawn_blocking(move || {
            let held = HeldIntent {
                key: &intent.key,
                digest: &intent.digest,
                requester: &intent.requester,
                chain: Some(&intent.chain),
                summary: &intent.summary,
            };
            book.decide(&held, &req, crate::store::now_ms())
        })
        .await
    }

    /// Approvals stored in `db`.
    pub fn new(db: StateDb) -> Self {
        Approvals {
            db,
            caps: PendingCaps {
                per_client: DEFAULT_PENDING_PER_CLIENT,
                total: DEFAULT_PENDING_TOTAL,
            },
        }
    }

    /// Caps on live pending requests (rule `approval.pending_cap`): per requesting client and
    /// overall. Without them a client could open hundreds of requests a second and bury the
    /// real one in the approvers' list.
    pub fn with_caps(mut self, per_client: u32, total: u32) -> Self {
        self.caps = PendingCaps { per_client, total };
        self
    }

    /// Decides a request that `req` says needs approval. Blocking (one small transaction).
    ///
    /// An open approval is always judged by the rule in force *now*, not the one it was opened
    /// under: it is retargeted to `req` (rule, group, approvals needed) and only the votes of
    /// users who are approvers in that group today count. Tightening a rule (2-of treasury to
    /// 3-of board) therefore stops a request already in flight, and a removed approver's vote
    /// is gone with them.
    pub fn decide(
        &self,
        intent: &HeldIntent<'_>,
        req: &ApprovalRequirement,
        now_ms: i64,
    ) -> Result<ApprovalOutcome, ApprovalError> {
        let caps = self.caps;
        self.db.transaction::<_, StoreError>(|tx| {
            let latest = sql::latest_approval(tx, intent.key, intent.digest)?;
            if let Some(a) = latest {
                let live = a.expires_ms > now_ms;
                match a.state.as_str() {
                    "consumed" => return Ok(Err(ApprovalError::Consumed(a.id))),
                    "rejected" if live => return Ok(Err(ApprovalError::Rejected(a.id))),
                    "approved" | "pending" if live => {
                        return recheck(tx, a, req).map(Ok);
                    }
                    _ => {} // expired: a fresh request below
                }
            }
            for (scope, requester, cap) in [
                ("client", Some(intent.requester), caps.per_client),
                ("total", None, caps.total),
            ] {
                if sql::count_pending(tx, now_ms, requester)? >= u64::from(cap) {
                    return Ok(Err(ApprovalError::Capped { scope, cap }));
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
        self.db.transaction::<_, StoreError>(|tx| {
            sql::transition(tx, id, "consumed", "approved").map(|_| ())
        })
    }

    /// At start, before any request: approvals consumed by a signature that a crash kept from
    /// being released go back to `approved`, so the approved intent can still be signed (once).
    /// Returns their ids.
    pub fn recover_unreleased(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        self.db
            .transaction::<_, StoreError>(|tx| sql::restore_unreleased(tx, now_ms))
    }

    /// Pending, unexpired requests (every one; for gauges and tests).
    pub fn pending(&self, now_ms: i64) -> Result<Vec<ApprovalRecord>, StoreError> {
        self.db
            .transaction::<_, StoreError>(|tx| sql::live_approvals(tx, "pending", now_ms))
    }

    /// How many pending, unexpired requests there are (a count, not the rows).
    pub fn pending_count(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.db
            .transaction::<_, StoreError>(|tx| sql::count_pending(tx, now_ms, None))
    }

    /// One page of pending, unexpired requests, oldest first: at most `limit` (capped at
    /// [`MAX_PAGE`]) after the approval `after`.
    pub fn pending_page(
        &self,
        now_ms: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        self.db.transaction::<_, StoreError>(|tx| {
            sql::live_approvals_page(tx, "pending", now_ms, after, limit)
        })
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
        self.db.transaction::<_, StoreError>(|tx| {
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
            let counted = sql::valid_approvers(tx, &after.id, &after.group, &after.requester)?;
            if !approve {
                sql::transition(tx, &after.id, "pending", "rejected")?;
            } else if counted.len() >= usize::try_from(after.required).unwrap_or(usize::MAX) {
                sql::transition(tx, &after.id, "pending", "approved")?;
            }
            Ok(Ok(sql::approval(tx, &after.id)?.unwrap_or(after)))
        })?
    }
}

#[cfg(test)]
mod tests;
