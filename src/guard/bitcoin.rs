//! The Bitcoin adapter of the pipeline (`btc_signPsbt`; `btc_getDescriptors` signs nothing):
//! authorize -> decode (pass 1) -> policy (stateless rules, node check) -> approval ask; then the
//! rolling window and conflict guard, reserved atomically -> sign every input with the seed's
//! child keys -> pass 2. Limits, kill switch, audit and release are [`super::pipeline`]'s.
//!
//! The rolling-window ledger lives in memory for speed and is rebuilt from the audit log
//! (signed `btc_signPsbt` rows carry `spend_sat`) the first time a key is used after a start,
//! so a restart does not reset the window.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use keyguard_bitcoin::bitcoin::Amount;
use keyguard_bitcoin::wallet::Wallet;
use keyguard_bitcoin::{BitcoinPolicy, SignedPsbt, SignedSpend, SpendIntent};
use keyguard_chain::{KeyId, Rejection};
use serde_json::Value;

use super::pipeline::{Adapter, Ask, Request, Who};
use super::{Guard, GuardError};
use crate::access::Caller;
use crate::outbound::bitcoin_node::BitcoinNode;
use crate::store::{AuditEntry, AuditFilter, StateDb, StateWrite, StoreError};

#[path = "bitcoin_state.rs"]
mod state;

const METHOD: &str = "btc_signPsbt";

/// The parameters `btc_signPsbt` reads. Anything else is refused, so a misspelt `finalize` or
/// `broadcast` is an error rather than a silently different request.
const SIGN_PARAMS: [&str; 4] = ["psbt", "key", "finalize", "broadcast"];

/// What a request reserved before signing, undone if it is not released.
pub(super) struct Reservation {
    key: KeyId,
    at: i64,
    sat: u64,
    /// Outpoints newly claimed, with what they replaced (a fee bump).
    outpoints: Vec<(String, Option<SignedSpend>)>,
}

/// What the decide stage found, kept for signing.
struct PsbtDecided {
    key: KeyId,
    policy: BitcoinPolicy,
    wallet: Arc<Wallet>,
    intent: SpendIntent,
    finalize: bool,
}

/// The Bitcoin adapter of the pipeline.
struct PsbtAdapter {
    key: Option<Result<KeyId, GuardError>>,
    params: Value,
    decided: Option<PsbtDecided>,
    reservation: Option<Reservation>,
    /// The signed transaction, kept with its audit row so the operator can broadcast it.
    kept: Vec<StateWrite>,
    /// Set when the PSBT is the signet miner's block PSBT: that adapter does the work.
    signet: Option<super::signet::SignetAdapter>,
}

#[async_trait::async_trait]
impl<'g> Adapter<'g> for PsbtAdapter {
    type Out = SignedPsbt;

    async fn decide(
        &mut self,
        guard: &'g Guard,
        who: Who<'_>,
        entry: &mut AuditEntry,
    ) -> Result<Option<Ask>, GuardError> {
        let Who::Client(caller) = who else {
            return Err(GuardError::Backend(
                "Bitcoin requests come from clients".into(),
            ));
        };
        if let Some(psbt) = super::signet::route(&self.params) {
            self.key.take();
            let key = guard.signet_key(caller, self.params.get("key").and_then(Value::as_str));
            let input = super::signet::Input::Psbt(Box::new(psbt));
            let signet = self.signet.insert(super::signet::SignetAdapter::new(
                key,
                self.params.clone(),
                input,
            ));
            return signet.decide(guard, who, entry).await;
        }
        let key = match self.key.take() {
            Some(Ok(key)) => key,
            Some(Err(GuardError::Rejected(r))) => return Err(r.into()),
            Some(Err(other)) => return Err(Rejection::invalid("key", other.to_string()).into()),
            None => return Err(GuardError::Backend("request decided twice".into())),
        };
        entry.key_id = Some(key.to_string());
        let decided = guard
            .bitcoin_decide(caller, &key, &self.params, entry)
            .await?;
        let ask = Guard::bitcoin_ask(&decided, entry);
        self.decided = Some(decided);
        Ok(ask)
    }

    async fn sign(
        &mut self,
        guard: &'g Guard,
        entry: &mut AuditEntry,
    ) -> Result<SignedPsbt, GuardError> {
        if let Some(signet) = &mut self.signet {
            return signet.sign(guard, entry).await.map(|s| s.signed_psbt());
        }
        let d = self
            .decided
            .as_ref()
            .ok_or_else(|| GuardError::Backend("signing before a decision".into()))?;
        let reservation = guard.reserve_spend(&d.key, &d.policy, &d.intent)?;
        // What the rolling window counted (0 for the identical transaction again), so a
        // restart rebuilds the window from the audit log the same way.
        if let Value::Object(m) = &mut entry.summary {
            m.insert("window_sat".into(), reservation.sat.into());
        }
        match guard
            .sign_psbt_inputs(&d.key, &d.wallet, &d.intent, d.finalize)
            .await
        {
            Ok(signed) => {
                self.reservation = Some(reservation);
                entry.tx_hash = Some(signed.txid.to_string());
                self.kept = state::kept_tx(entry, &signed);
                Ok(signed)
            }
            Err(e) => {
                guard.release_spend(reservation);
                Err(e)
            }
        }
    }

    fn writes(&mut self) -> Vec<StateWrite> {
        if let Some(signet) = &mut self.signet {
            return signet.writes();
        }
        std::mem::take(&mut self.kept)
    }

    fn settle(
        &mut self,
        guard: &'g Guard,
        committed: Result<(), &StoreError>,
    ) -> Option<GuardError> {
        if let Some(signet) = &mut self.signet {
            return signet.settle(guard, committed);
        }
        // A withheld signature gives its spend back to the window and its outpoints back.
        if let (Err(_), Some(r)) = (committed, self.reservation.take()) {
            guard.release_spend(r);
        }
        None
    }
}

/// Per-guard Bitcoin state: wallets (public views of seeds), the spend window ledger.
#[derive(Default)]
pub(super) struct BitcoinState {
    wallets: RwLock<HashMap<KeyId, Arc<Wallet>>>,
    windows: Mutex<HashMap<KeyId, VecDeque<(i64, u64)>>>,
    /// Outpoints signed per key, and in which transaction (conflict guard).
    signed: Mutex<HashMap<KeyId, HashMap<String, SignedSpend>>>,
    history: Option<StateDb>,
    /// `None`: no node configured; `Some(Err)`: configured but unusable (fail closed).
    node: Option<Result<Arc<BitcoinNode>, String>>,
}

impl BitcoinState {
    pub(super) fn new(config: &crate::config::Config) -> Self {
        let node = config.bitcoin_node.as_ref().map(|c| {
            BitcoinNode::new(c).map(Arc::new).map_err(|e| {
                tracing::error!(error = %e, "bitcoin node unusable; Bitcoin signing will fail");
                e.to_string()
            })
        });
        BitcoinState {
            node,
            ..Default::default()
        }
    }

    pub(super) fn clear_wallets(&self) {
        self.wallets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

use crate::store::now_ms;

impl Guard {
    /// Lets the rolling spend window be rebuilt from the audit log after a restart.
    pub fn with_spend_history(mut self, state: StateDb) -> Self {
        self.bitcoin.history = Some(state);
        self
    }

    /// Bitcoin policy and wallet of `key`, or why there is none.
    pub(super) fn bitcoin_setup(
        &self,
        key: &KeyId,
    ) -> Result<(BitcoinPolicy, Arc<Wallet>), GuardError> {
        let policy = self
            .policy_for(key)
            .and_then(|p| p.bitcoin.clone())
            .ok_or_else(|| {
                Rejection::policy(
                    "policy.none",
                    "key",
                    format!("no policy with Bitcoin rules governs key {key}"),
                )
            })?;
        if let Some(w) = self
            .bitcoin
            .wallets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            if w.network == policy.network {
                return Ok((policy, w.clone()));
            }
        }
        let wallet = Arc::new(super::build_wallet(self.backend.as_ref(), key, &policy)?);
        self.bitcoin
            .wallets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone(), wallet.clone());
        Ok((policy, wallet))
    }

    /// `btc_signPsbt`: the whole pipeline for one PSBT.
    pub async fn sign_bitcoin_psbt(
        &self,
        caller: &Caller,
        params: &Value,
    ) -> Result<SignedPsbt, GuardError> {
        // Resolving the key reads `key` or picks the caller's only Bitcoin key: no decoding.
        let key = self.bitcoin_key(caller, params.get("key").and_then(Value::as_str));
        let request = Request {
            who: Who::Client(caller),
            method: METHOD,
            family: super::family::BITCOIN_PSBT,
            chain: "bitcoin".into(),
            key_hint: key.as_ref().ok().cloned(),
        };
        let adapter = PsbtAdapter {
            key: Some(key),
            params: params.clone(),
            decided: None,
            reservation: None,
            kept: Vec::new(),
            signet: None,
        };
        self.run(request, adapter).await
    }

    /// Parameters, key and grant, wallet, chain scope, decode, stateless policy, node check.
    async fn bitcoin_decide(
        &self,
        caller: &Caller,
        key: &KeyId,
        params: &Value,
        entry: &mut AuditEntry,
    ) -> Result<PsbtDecided, GuardError> {
        if !caller.may_use(key) {
            return Err(GuardError::Unauthorized(format!(
                "key {key} is not granted to client {}",
                caller.name
            )));
        }
        let unknown = params
            .as_object()
            .and_then(|o| o.keys().find(|k| !SIGN_PARAMS.contains(&k.as_str())));
        if let Some(name) = unknown {
            return Err(Rejection::invalid(name.as_str(), "unknown parameter").into());
        }
        let psbt = params
            .get("psbt")
            .and_then(Value::as_str)
            .ok_or_else(|| Rejection::invalid("psbt", "missing base64 PSBT"))?;
        let finalize = match params.get("finalize") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Rejection::invalid("finalize", "must be a boolean").into()),
        };
        let broadcast = match params.get("broadcast") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Rejection::invalid("broadcast", "must be a boolean").into()),
        };
        if broadcast && (!finalize || self.bitcoin.node.is_none()) {
            return Err(Rejection::invalid(
                "broadcast",
                "needs finalize = true and a configured [bitcoin_node]",
            )
            .into());
        }
        let (policy, wallet) = self.bitcoin_setup(key)?;
        entry.chain = Some(format!("bitcoin:{}", policy.network));
        Self::check_chain(caller, &format!("bitcoin:{}", policy.network))?;
        let intent: SpendIntent = keyguard_bitcoin::decode(psbt, &wallet)?;
        entry.summary = intent.summary();
        if let (Some(p), Value::Object(summary)) = (self.policy_for(key), &mut entry.summary) {
            summary.insert("policy".into(), Value::String(p.name.clone()));
        }
        let tip = self.bitcoin_tip(&policy).await?;
        policy.check_at(&intent, super::now_ms(), tip)?;
        self.check_with_node(&intent).await?;
        Ok(PsbtDecided {
            key: key.clone(),
            policy,
            wallet,
            intent,
            finalize,
        })
    }

    /// The approval a spend above `require_approval.above` asks for: held (-32002) until the
    /// quorum approved this exact transaction of this key, then consumed by one signature.
    /// Approvers see the decoded intent: chain, destinations and amounts, change, fee.
    fn bitcoin_ask(d: &PsbtDecided, entry: &AuditEntry) -> Option<Ask> {
        let requirement = d
            .policy
            .approval_needed(&d.intent)
            .map(super::people::bitcoin_requirement)?;
        let chain = format!("bitcoin:{}", d.policy.network);
        let digest = super::intent_digest(
            &d.key,
            &chain,
            &keyguard_bitcoin::approval::approval_bytes(&d.intent),
        );
        let mut shown = entry.summary.clone();
        if let (Value::Object(shown), Value::Object(view)) = (
            &mut shown,
            keyguard_bitcoin::approval::approver_view(&d.intent),
        ) {
            shown.extend(view);
        }
        Some(Ask {
            key: d.key.clone(),
            chain,
            digest,
            summary: shown,
            field: "spend",
            requirement,
        })
    }

    fn node(&self) -> Result<Option<Arc<BitcoinNode>>, GuardError> {
        match &self.bitcoin.node {
            None => Ok(None),
            Some(Ok(node)) => Ok(Some(node.clone())),
            Some(Err(e)) => Err(GuardError::Backend(format!("bitcoin node unusable: {e}"))),
        }
    }

    /// With a node configured: every input must be unspent with the amount and script the PSBT
    /// claims (an already spent input means a conflicting payment we would double-sign).
    async fn check_with_node(&self, intent: &SpendIntent) -> Result<(), GuardError> {
        let Some(node) = self.node()? else {
            return Ok(());
        };
        let mut utxos = Vec::with_capacity(intent.inputs.len());
        for input in &intent.psbt.unsigned_tx.input {
            let utxo = node
                .utxo(&input.previous_output)
                .await
                .map_err(|e| GuardError::Backend(e.to_string()))?;
            utxos.push(utxo);
        }
        keyguard_bitcoin::node::check_utxos(intent, &utxos)?;
        Ok(())
    }

    /// Relays a signed, audited transaction through the node; returns the node's txid.
    pub async fn bitcoin_broadcast(&self, hex: &str) -> Result<String, GuardError> {
        let node = self
            .node()?
            .ok_or_else(|| Rejection::invalid("broadcast", "no [bitcoin_node] configured"))?;
        node.broadcast(hex)
            .await
            .map_err(|e| GuardError::Backend(e.to_string()))
    }

    /// Checks the conflict guard and the rolling window and reserves this spend in both, each
    /// under one lock, so concurrent requests can neither double-spend an outpoint nor both fit
    /// under the limit.
    fn reserve_spend(
        &self,
        key: &KeyId,
        policy: &BitcoinPolicy,
        intent: &SpendIntent,
    ) -> Result<Reservation, GuardError> {
        let outpoints = self.claim_outpoints(key, policy, intent)?;
        let txid = intent.txid().to_string();
        let resign = outpoints
            .iter()
            .all(|(_, before)| before.as_ref().is_some_and(|b| b.txid == txid));
        match self.reserve_window(key, policy, intent, resign) {
            Ok((at, sat)) => Ok(Reservation {
                key: key.clone(),
                at,
                sat,
                outpoints,
            }),
            Err(e) => {
                self.unclaim(key, outpoints);
                Err(e)
            }
        }
    }

    fn claim_outpoints(
        &self,
        key: &KeyId,
        policy: &BitcoinPolicy,
        intent: &SpendIntent,
    ) -> Result<Vec<(String, Option<SignedSpend>)>, GuardError> {
        let since = now_ms() - (policy.conflict_window_secs as i64).saturating_mul(1000);
        let mut all = self
            .bitcoin
            .signed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !all.contains_key(key) {
            let mut known = HashMap::new();
            for summary in self.history_rows(key, since)? {
                let (Some(spend), Some(list)) = (
                    SignedSpend::from_summary(&summary),
                    summary.get("outpoints").and_then(Value::as_array),
                ) else {
                    continue;
                };
                for op in list.iter().filter_map(Value::as_str) {
                    known.insert(op.to_string(), spend.clone());
                }
            }
            all.insert(key.clone(), known);
        }
        let known = all.entry(key.clone()).or_default();
        let outpoints = intent.outpoints();
        for (i, op) in outpoints.iter().enumerate() {
            if let Some(earlier) = known.get(op) {
                if let Err(e) = policy.check_conflict(intent, i, earlier) {
                    // Two admins may have released this claim (`bitcoin.release_claim`).
                    if !self.claim_released(key, op, &earlier.txid)? {
                        return Err(e.into());
                    }
                }
            }
        }
        let this = SignedSpend::of(intent);
        Ok(outpoints
            .into_iter()
            .map(|op| {
                let before = known.insert(op.clone(), this.clone());
                (op, before)
            })
            .collect())
    }

    fn unclaim(&self, key: &KeyId, outpoints: Vec<(String, Option<SignedSpend>)>) {
        let mut all = self
            .bitcoin
            .signed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = all.get_mut(key) {
            for (op, before) in outpoints {
                match before {
                    Some(b) => known.insert(op, b),
                    None => known.remove(&op),
                };
            }
        }
    }

    fn reserve_window(
        &self,
        key: &KeyId,
        policy: &BitcoinPolicy,
        intent: &SpendIntent,
        resign: bool,
    ) -> Result<(i64, u64), GuardError> {
        let now = now_ms();
        let since = now - (policy.window_secs as i64).saturating_mul(1000);
        let mut windows = self
            .bitcoin
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !windows.contains_key(key) {
            windows.insert(key.clone(), self.spend_history(key, since)?);
        }
        let ledger = windows.entry(key.clone()).or_default();
        while ledger.front().is_some_and(|(at, _)| *at < since) {
            ledger.pop_front();
        }
        // The identical transaction signed again spends nothing more (only one can be mined).
        if resign {
            ledger.push_back((now, 0));
            return Ok((now, 0));
        }
        let spent: u64 = ledger.iter().map(|(_, s)| s).sum();
        policy.check_window(intent, Amount::from_sat(spent))?;
        let sat = intent.spend().to_sat();
        ledger.push_back((now, sat));
        Ok((now, sat))
    }

    fn release_spend(&self, r: Reservation) {
        self.unclaim(&r.key, r.outpoints);
        let mut windows = self
            .bitcoin
            .windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(ledger) = windows.get_mut(&r.key) {
            if let Some(pos) = ledger.iter().position(|e| *e == (r.at, r.sat)) {
                ledger.remove(pos);
            }
        }
    }

    fn spend_history(&self, key: &KeyId, since: i64) -> Result<VecDeque<(i64, u64)>, GuardError> {
        Ok(self
            .history(key, since)?
            .into_iter()
            .filter_map(|(at, s)| {
                let counted = s.get("window_sat").or_else(|| s.get("spend_sat"));
                Some((at, counted?.as_u64()?))
            })
            .collect())
    }

    fn history_rows(&self, key: &KeyId, since: i64) -> Result<Vec<Value>, GuardError> {
        Ok(self
            .history(key, since)?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// Signed `btc_signPsbt` audit rows of `key` since `since`: (time, summary).
    fn history(&self, key: &KeyId, since: i64) -> Result<Vec<(i64, Value)>, GuardError> {
        let Some(state) = &self.bitcoin.history else {
            return Ok(Vec::new());
        };
        let filter = AuditFilter {
            since_ms: Some(since),
            key: Some(key.to_string()),
            decision: Some("signed".into()),
            method: Some(METHOD.into()),
            ..AuditFilter::default()
        };
        let rows = state
            .query_audit(&filter)
            .map_err(|e| GuardError::Backend(format!("reading spend history: {e}")))?;
        Ok(rows.into_iter().map(|r| (r.ts_ms, r.summary)).collect())
    }
}
