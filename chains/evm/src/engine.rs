//! Evaluation of a transaction against a whole policy: fixed limits, caps, token limits, then
//! the allow/deny rules (deny by default), then the velocity debits the daemon must reserve.
//!
//! The same code serves signing (stop at the first refusal) and the dry run (record every
//! rule's outcome), so `keyguard policy check` cannot disagree with the signer. How one rule
//! matches (and why it missed) is in [`matching`].

use alloy_consensus::Transaction;
use alloy_primitives::U256;
use keyguard_chain::rules::evm as rules;
use keyguard_chain::Rejection;

use crate::abi::DecodedCall;
use crate::accounting::{self, Grant};
use crate::movement::call_moves;
use crate::rulecompile::{Compiled, Rule};
use crate::token::TokenMove;
use crate::TxIntent;

mod matching;
use matching::{rule_verdict, CallCache, Decoded, Miss, Verdict};

/// Functions whose naming in a rule's `functions` allows approvals of tokens without limits.
const APPROVAL_FUNCTIONS: &[&str] = &["approve", "increaseAllowance", "setApprovalForAll"];

/// An amount the daemon must reserve against a rolling-window limit before signing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Debit {
    /// The rule named when the window is full (`evm.velocity`, `evm.allowance_window`).
    pub rule: &'static str,
    /// The velocity limit's name (its counter identity).
    pub limit: &'static str,
    /// Counter key: the limit name, plus `@destination` for per-destination limits.
    pub counter: String,
    /// Amount counted by this request (1 for transaction counts).
    pub amount: U256,
    /// The limit.
    pub max: U256,
    /// Window length in milliseconds.
    pub window_ms: u64,
}

/// Why a transaction was allowed, and what it commits the key to.
#[derive(Clone, Debug)]
pub struct TxDecision {
    /// The rule that allowed it (`policy.limits` when the policy has no rule list).
    pub allowed_by: &'static str,
    /// Velocity reservations required.
    pub debits: Vec<Debit>,
    /// The first token movement, if the call is one.
    pub token: Option<TokenMove>,
    /// Every movement the call makes (Permit2 batches make several).
    pub moves: Vec<TokenMove>,
    /// Calldata decoded by the allowing rule's ABI.
    pub call: Option<DecodedCall>,
}

impl TxDecision {
    /// JSON for the audit row.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "allowed_by": self.allowed_by,
            "token": self.token.as_ref().map(TokenMove::to_json),
            "moves": self.moves.iter().map(TokenMove::to_json).collect::<Vec<_>>(),
            "call": self.call.as_ref().map(DecodedCall::to_json),
        })
    }
}

/// One line of a dry run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RuleOutcome {
    /// Rule name.
    pub rule: String,
    /// `pass`, `fail`, `allow`, `deny`, `skip`.
    pub outcome: &'static str,
    /// Why.
    pub detail: String,
}

/// Stop-at-first or record-everything evaluation.
pub(crate) struct Eval {
    pub(crate) trace: Option<Vec<RuleOutcome>>,
    pub(crate) first: Option<Rejection>,
}

impl Eval {
    pub(crate) fn new(tracing: bool) -> Eval {
        Eval {
            trace: tracing.then(Vec::new),
            first: None,
        }
    }

    /// Records a check; returns `Err` only when not tracing.
    pub(crate) fn check(
        &mut self,
        rule: &'static str,
        r: Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let Some(trace) = &mut self.trace else {
            return r;
        };
        // A failure is traced under the rule its refusal names, so the dry run and the audit
        // row of the same request name the same rule.
        let (rule, outcome, detail) = match &r {
            Ok(()) => (rule, "pass", String::new()),
            Err(e @ Rejection::Policy { rule, .. }) => (*rule, "fail", e.to_string()),
            Err(e) => (rule, "fail", e.to_string()),
        };
        trace.push(RuleOutcome {
            rule: rule.to_string(),
            outcome,
            detail,
        });
        if let Err(e) = r {
            self.first.get_or_insert(e);
        }
        Ok(())
    }

    pub(crate) fn note(&mut self, rule: &str, outcome: &'static str, detail: String) {
        if let Some(t) = &mut self.trace {
            t.push(RuleOutcome {
                rule: rule.to_string(),
                outcome,
                detail,
            });
        }
    }
}

/// The rule-list part of the decision (after the fixed limits passed).
pub(crate) fn decide_rules(
    c: &Compiled,
    intent: &TxIntent,
    now_ms: u64,
    eval: &mut Eval,
) -> Result<TxDecision, Rejection> {
    let chain = intent.chain_id();
    // Movements are read from the calldata whatever rule allows it (see `movement`).
    let moves = match intent.to() {
        Some(to) => match call_moves(to, intent.tx.input()) {
            Ok(m) => m,
            Err(e) => {
                eval.check(crate::movement::UNDECODABLE, Err(e))?;
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    if !moves.is_empty() {
        eval.check(
            rules::TOKEN_MAX_TRANSFER,
            accounting::check_limits(c, chain, &moves),
        )?;
    }

    let mut calls = CallCache {
        input: intent.tx.input(),
        done: Vec::new(),
    };
    let mut allowed: Option<(&Rule, Option<Decoded>)> = None;
    let mut best_fail: Option<(u8, &Rule, Miss<'_>)> = None;
    for rule in &c.rules {
        if allowed.is_some() && eval.trace.is_none() && !rule.deny {
            continue;
        }
        match rule_verdict(rule, intent, &mut calls, now_ms) {
            Verdict::Match(_) if rule.deny => {
                eval.note(rule.name, "deny", "matches".into());
                let field = match (&rule.to, &rule.abi) {
                    (None, Some(_)) => "input",
                    _ => "to",
                };
                let r = Err(Rejection::policy(
                    rule.name,
                    field,
                    format!("denied by rule {}", rule.name),
                ));
                eval.check(rule.name, r)?;
            }
            Verdict::Match(call) => {
                eval.note(rule.name, "allow", "matches".into());
                if allowed.is_none() {
                    allowed = Some((rule, call));
                }
            }
            Verdict::Skip(why) => {
                if eval.trace.is_some() {
                    eval.note(rule.name, "skip", why.render(intent));
                }
            }
            Verdict::Fail { miss, .. } if rule.deny => {
                if eval.trace.is_some() {
                    let (field, reason) = miss.render(rule, intent);
                    eval.note(rule.name, "skip", format!("no match: {field}: {reason}"));
                }
            }
            Verdict::Fail { depth, miss } => {
                if eval.trace.is_some() {
                    let (field, reason) = miss.render(rule, intent);
                    eval.note(rule.name, "fail", format!("{field}: {reason}"));
                }
                if best_fail.as_ref().is_none_or(|(d, ..)| depth > *d) {
                    best_fail = Some((depth, rule, miss));
                }
            }
        }
    }
    let (allowed_by, call, grant) = match (allowed, c.rules.is_empty()) {
        (_, true) => (
            keyguard_chain::rules::common::POLICY_LIMITS,
            None,
            Grant::default(),
        ),
        (Some((rule, call)), false) => {
            let call = call.and_then(|d| d.as_ref().as_ref().ok().cloned());
            let names_approval = !rule.functions.is_empty()
                && call
                    .as_ref()
                    .is_some_and(|c| APPROVAL_FUNCTIONS.contains(&c.function.as_str()));
            let grant = Grant {
                may_unlimited: rule.allow_unlimited_approval,
                explicit_approval: rule.allow_unlimited_approval || names_approval,
            };
            (rule.name, call, grant)
        }
        (None, false) => {
            let r = match best_fail {
                Some((_, rule, miss)) => {
                    let (field, reason) = miss.render(rule, intent);
                    Rejection::policy(rule.name, field, reason)
                }
                None => Rejection::policy(
                    rules::NO_RULE,
                    "to",
                    format!(
                        "no allow rule covers {} on chain {chain} (deny by default)",
                        intent
                            .to()
                            .map_or("contract creation".to_string(), |a| a.to_string())
                    ),
                ),
            };
            eval.check(rules::NO_RULE, Err(r))?;
            (rules::NO_RULE, None, Grant::default())
        }
    };
    let r = accounting::check_grants(c, chain, &moves, grant);
    let name = match &r {
        Err(Rejection::Policy { rule, .. }) => rule,
        _ => &rules::UNLIMITED_APPROVAL,
    };
    eval.check(name, r)?;
    let debits = accounting::debits(c, chain, Some((intent.to(), intent.value())), &moves);
    let debits = match debits {
        Ok(d) => d,
        Err(e) => {
            eval.check(rules::VELOCITY, Err(e))?;
            Vec::new()
        }
    };
    if let Some(first) = eval.first.take() {
        return Err(first);
    }
    Ok(TxDecision {
        allowed_by,
        debits,
        token: moves.first().cloned(),
        moves,
        call,
    })
}
