//! The one function that owns the order of every signing request, on every chain
//! (`docs/design.md`, "Pipeline"):
//!
//! client resolved for this call -> rate limits (method family, before any decoding) ->
//! kill-switch pass -> bounded decode + policy (adapter) -> approvals (pass released while
//! waiting, kill switch checked again after) -> reservations, sign, pass 2 (adapter) ->
//! audit commit (with the adapter's state writes) -> release -> pass dropped.
//!
//! Chains plug in through [`Adapter`]; they never write audit rows, count metrics or touch the
//! kill switch themselves, so the invariants below hold for all of them at once:
//! - nothing leaves without its committed audit row;
//! - once `disable` returns, nothing leaves (the pass is held from the check to the release);
//! - a request parked in an approval wait holds no pass and is refused if the switch went off;
//! - a rate-limited request never reaches its decoder.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use keyguard_chain::KeyId;
use serde_json::Value;

use super::people::ApprovalInput;
use super::{release, Guard, GuardError};
use crate::access::kill::Pass;
use crate::access::Caller;
use crate::approvals::ApprovalRequirement;
use crate::store::{AuditEntry, Decision, StateWrite, StoreError};

/// Who sent the request.
#[derive(Clone, Copy)]
pub(super) enum Who<'a> {
    /// A client of a JSON-RPC listener (authenticated at the transport).
    Client(&'a Caller),
    /// A validator connection (privval): the configured target, no client-side limits or
    /// approvals (consensus cannot wait for people), but the same kill switch and audit.
    Validator(&'a str),
}

impl Who<'_> {
    fn name(&self) -> &str {
        match self {
            Who::Client(c) => &c.name,
            Who::Validator(name) => name,
        }
    }
}

/// One request as it enters the pipeline: nothing decoded yet.
pub(super) struct Request<'a> {
    pub(super) who: Who<'a>,
    /// The method as called (audit row, metrics, method scope).
    pub(super) method: &'static str,
    /// The rate-limit bucket: aliases of one operation share it (`super::family`).
    pub(super) family: &'static str,
    /// The chain label before decoding (the adapter refines it).
    pub(super) chain: String,
    /// The key the request names, found without decoding (same field the decoder reads).
    pub(super) key_hint: Option<KeyId>,
}

/// What the approval stage needs when policy asks for people.
pub(super) struct Ask {
    pub(super) key: KeyId,
    pub(super) chain: String,
    pub(super) digest: [u8; 32],
    /// What approvers see.
    pub(super) summary: Value,
    /// The request field the approval rule looked at.
    pub(super) field: &'static str,
    pub(super) requirement: ApprovalRequirement,
}

/// One chain's part of the pipeline. Stateful: an adapter keeps what it decoded and reserved
/// between the stages, and undoes its reservations in [`Adapter::settle`].
#[async_trait::async_trait]
pub(super) trait Adapter<'g>: Send {
    /// What is released to the caller.
    type Out: Send;

    /// Bounded decode, key and grant, chain scope, policy. Runs under the kill-switch pass.
    /// Fills `entry` (summary, key, chain); returns the approval the policy asks for.
    async fn decide(
        &mut self,
        guard: &'g Guard,
        who: Who<'_>,
        entry: &mut AuditEntry,
    ) -> Result<Option<Ask>, GuardError>;

    /// Reservations (conflict guard, velocity, watermarks), sign, pass 2. Runs under a pass
    /// taken after any approval wait. Sets `entry.tx_hash` and signed-only summary fields.
    async fn sign(
        &mut self,
        guard: &'g Guard,
        entry: &mut AuditEntry,
    ) -> Result<Self::Out, GuardError>;

    /// State rows that must commit in the same transaction as the signed audit row.
    fn writes(&mut self) -> Vec<StateWrite> {
        Vec::new()
    }

    /// After the audit commit: keep the reservations (`Ok`) or undo them (not released). May
    /// replace the caller's error for a failed commit (e.g. a watermark changed elsewhere).
    fn settle(
        &mut self,
        _guard: &'g Guard,
        _committed: Result<(), &StoreError>,
    ) -> Option<GuardError> {
        None
    }
}

impl Guard {
    /// Runs one request through every stage, in order, and releases its result only after its
    /// audit row committed. Boxed so that every caller gets one concrete `Send` future.
    pub(super) fn run<'g, A: Adapter<'g> + 'g>(
        &'g self,
        request: Request<'g>,
        mut adapter: A,
    ) -> Pin<Box<dyn Future<Output = Result<A::Out, GuardError>> + Send + 'g>> {
        Box::pin(async move {
            let started = Instant::now();
            let mut entry = AuditEntry {
                request_id: self.new_request_id(),
                client: request.who.name().to_owned(),
                key_id: request.key_hint.as_ref().map(ToString::to_string),
                chain: Some(request.chain.clone()),
                method: request.method.into(),
                summary: Value::Null,
                decision: Decision::Refused,
                rule: None,
                reason: None,
                tx_hash: None,
            };
            // The approval this request consumed: given back if nothing is released.
            let mut consumed = None;
            let (outcome, pass) = self
                .stages(&request, &mut adapter, &mut entry, &mut consumed)
                .await;
            let released = self
                .commit(&request, started, entry, outcome, &mut adapter)
                .await;
            if let (Err(_), Some(id)) = (&released, &consumed) {
                self.restore_approval(id);
            }
            // Only now may a waiting `disable` return.
            drop(pass);
            released
        })
    }

    async fn stages<'g, A: Adapter<'g>>(
        &'g self,
        request: &Request<'_>,
        adapter: &mut A,
        entry: &mut AuditEntry,
        consumed: &mut Option<String>,
    ) -> (Result<A::Out, GuardError>, Option<Pass>) {
        let key_hint = request.key_hint.as_ref();
        if let Err(e) = self.admission(request) {
            return (Err(e), None);
        }
        let mut pass = match self.admit(key_hint).await {
            Ok(p) => p,
            Err(e) => return (Err(e), None),
        };
        let ask = match adapter.decide(self, request.who, entry).await {
            Ok(ask) => ask,
            Err(e) => return (Err(e), Some(pass)),
        };
        let key = entry.key_id.as_deref().and_then(|k| KeyId::new(k).ok());
        if key.as_ref() != key_hint {
            // The decoded key differs from the hint (or there was none): its budget applies now.
            if let (Who::Client(_), Some(k)) = (request.who, &key) {
                if let Err(e) = self.key_limit(k) {
                    return (Err(e), Some(pass));
                }
            }
        }
        if self
            .controls
            .kill
            .is_disabled(key.as_ref().map(KeyId::as_str))
        {
            return (Err(disabled(key.as_ref())), Some(pass));
        }
        if let Some(ask) = ask {
            // No pass while people decide: a disable must not wait for them.
            drop(pass);
            let approved = self.ask_people(request.who, ask, entry).await;
            match approved {
                Ok(id) => *consumed = id,
                Err(e) => return (Err(e), None),
            }
            pass = match self.admit(key.as_ref()).await {
                Ok(p) => p,
                Err(e) => return (Err(e), None),
            };
        }
        (adapter.sign(self, entry).await, Some(pass))
    }

    /// Method scope and rate limits: before any decoding, so a flood costs a hash lookup.
    fn admission(&self, request: &Request<'_>) -> Result<(), GuardError> {
        // Below the disk floor no new work starts, while audit rows can still be written.
        if let Some((free, floor)) = self.audit.below_disk_floor() {
            tracing::debug!(free, floor, "audit.disk_floor: request refused");
            return Err(GuardError::RateLimited {
                rule: "audit.disk_floor",
                retry_after_ms: 60_000,
            });
        }
        let Who::Client(caller) = request.who else {
            return Ok(());
        };
        if !caller.may_call(request.method) {
            return Err(GuardError::OutOfScope {
                rule: "access.method_not_granted",
                reason: format!(
                    "method {} is not granted to client {}",
                    request.method, caller.name
                ),
            });
        }
        let limits = self.limits();
        limits
            .check(
                &caller.name,
                request.family,
                request.key_hint.as_ref().map(KeyId::as_str),
            )
            .map_err(limited)?;
        if let Some(limiter) = caller.scope.as_ref().and_then(|s| s.limiter()) {
            limiter.check().map_err(limited)?;
        }
        Ok(())
    }

    fn key_limit(&self, key: &KeyId) -> Result<(), GuardError> {
        self.limits().check_key(key.as_str()).map_err(limited)
    }

    async fn admit(&self, key: Option<&KeyId>) -> Result<Pass, GuardError> {
        self.controls
            .kill
            .admit(key.map(KeyId::as_str))
            .await
            .map_err(|()| disabled(key))
    }

    /// The approval stage for a request whose policy asks for people; records the approval id.
    async fn ask_people(
        &self,
        who: Who<'_>,
        ask: Ask,
        entry: &mut AuditEntry,
    ) -> Result<Option<String>, GuardError> {
        let Who::Client(caller) = who else {
            return Err(keyguard_chain::Rejection::policy(
                "approval.unavailable",
                ask.field,
                "consensus messages cannot wait for approvals",
            )
            .into());
        };
        let input = ApprovalInput {
            key: &ask.key,
            chain: &ask.chain,
            digest: ask.digest,
            summary: &ask.summary,
            field: ask.field,
        };
        let approval = self
            .approval_stage(caller, input, Some(ask.requirement))
            .await;
        let id = match &approval {
            Ok(Some(id)) => Some(id.clone()),
            Err(GuardError::ApprovalRequired { approval_id, .. }) => Some(approval_id.clone()),
            _ => None,
        };
        if let (Value::Object(summary), Some(id)) = (&mut entry.summary, id) {
            summary.insert("approval_id".into(), Value::String(id));
        }
        approval
    }

    /// Audit commit (with the adapter's state writes in the same transaction), metrics, then
    /// release or withhold. A refusal is returned as it is; a signature whose row did not
    /// commit is withheld.
    async fn commit<'g, A: Adapter<'g>>(
        &'g self,
        request: &Request<'_>,
        started: Instant,
        mut entry: AuditEntry,
        outcome: Result<A::Out, GuardError>,
        adapter: &mut A,
    ) -> Result<A::Out, GuardError> {
        let request_id = entry.request_id.clone();
        let state = match &outcome {
            Ok(_) => {
                entry.decision = Decision::Signed;
                adapter.writes()
            }
            Err(e) => {
                release::note_refusal(&mut entry, e);
                Vec::new()
            }
        };
        let chain = entry.chain.clone().unwrap_or_default();
        let rule = entry.rule.clone();
        // Kept to record the refusal if the state rows lose to another signer's.
        let fenced = (!state.is_empty()).then(|| entry.clone());
        let committed = self.audit.append_with_state(entry, state).await;
        if let (Some(mut refused), Err(StoreError::StateConflict(c))) = (fenced, &committed) {
            refused.decision = Decision::Refused;
            refused.rule = c.split_once(": ").map(|(rule, _)| rule.to_owned());
            refused.reason = Some(c.clone());
            refused.tx_hash = None;
            if let Err(e) = self.audit.append(refused).await {
                tracing::error!(request_id, error = %e, "audit of a fenced refusal failed");
            }
        }
        release::count(
            &chain,
            request.method,
            outcome.as_ref().err(),
            &committed,
            rule.as_deref(),
            started,
        );
        let settled = match (&outcome, &committed) {
            (Ok(_), Ok(_)) => adapter.settle(self, Ok(())),
            (Ok(_), Err(e)) => adapter.settle(self, Err(e)),
            (Err(_), _) => {
                // Nothing signed, or a signature withheld before the commit: undo.
                let undo = StoreError::Unavailable("not released".into());
                adapter.settle(self, Err(&undo));
                None
            }
        };
        match (outcome, committed) {
            (Ok(value), Ok(_)) => {
                tracing::info!(request_id, client = %request.who.name(), method = request.method, "signed");
                Ok(value)
            }
            (outcome, committed) => {
                let unreleased = release::unreleased(
                    &request_id,
                    request.who.name(),
                    outcome.err(),
                    committed.err(),
                );
                Err(settled.unwrap_or(unreleased))
            }
        }
    }
}

fn disabled(key: Option<&KeyId>) -> GuardError {
    GuardError::KeyDisabled(match key {
        Some(k) => format!("key {k} is disabled"),
        None => "all keys are disabled".into(),
    })
}

fn limited(l: crate::access::limits::Limited) -> GuardError {
    GuardError::RateLimited {
        rule: l.scope.rule(),
        retry_after_ms: u64::try_from(l.retry_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1),
    }
}
