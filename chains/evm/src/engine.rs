//! Evaluation of a transaction against a whole policy: fixed limits, caps, token limits, then
//! the allow/deny rules (deny by default), then the velocity debits the daemon must reserve.
//!
//! The same code serves signing (stop at the first refusal) and the dry run (record every
//! rule's outcome), so `keyguard policy check` cannot disagree with the signer.

use std::rc::Rc;
use std::sync::Arc;

use alloy_consensus::Transaction;
use alloy_primitives::{Address, U256};
use keyguard_chain::rules::evm as rules;
use keyguard_chain::Rejection;

use crate::abi::{Abi, CallError, DecodedCall};
use crate::accounting::{self, Grant};
use crate::movement::call_moves;
use crate::rulecompile::{ArgCheck, Compiled, Literal, Rule};
use crate::token::TokenMove;
use crate::TxIntent;

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

type Decoded = Rc<Result<DecodedCall, CallError>>;

/// Why a rule does not apply; reasons are rendered only when reported (the hot path of a
/// 50-rule policy must not format 49 strings per request).
enum Skip {
    Chain,
    Creation,
    CreationOnly,
    Destination,
}

enum Miss<'a> {
    /// Outside the rule's window: the shared window's reason (local time and window).
    Time(String),
    Value(U256),
    NotPayable(Decoded),
    PlainOnly,
    Decode(Decoded),
    Function(Decoded),
    Arg(Decoded, &'a str, &'a ArgCheck),
}

enum Verdict<'a> {
    Skip(Skip),
    Match(Option<Decoded>),
    Fail { depth: u8, miss: Miss<'a> },
}

impl Skip {
    fn render(&self, intent: &TxIntent) -> String {
        match self {
            Skip::Chain => format!("chain {} not covered", intent.chain_id()),
            Skip::Creation => "rule does not cover creation".into(),
            Skip::CreationOnly => "rule covers creation only".into(),
            Skip::Destination => format!(
                "destination {} not covered",
                intent.to().unwrap_or_default()
            ),
        }
    }
}

impl Miss<'_> {
    /// `(field, reason)`.
    fn render(&self, rule: &Rule, intent: &TxIntent) -> (String, String) {
        let sig = |d: &Decoded| match d.as_ref() {
            Ok(c) => c.signature.clone(),
            Err(e) => e.to_string(),
        };
        match self {
            Miss::Time(why) => ("time".into(), format!("rule {}: {why}", rule.name)),
            Miss::Value(max) if max.is_zero() && rule.abi.is_some() => (
                "value".into(),
                format!(
                    "rule {} allows no native value ({} wei sent; set max_value on a rule for \
                     payable functions)",
                    rule.name,
                    intent.value()
                ),
            ),
            Miss::Value(max) => (
                "value".into(),
                format!(
                    "{} wei is above the rule's limit of {max} wei",
                    intent.value()
                ),
            ),
            Miss::NotPayable(d) => (
                "value".into(),
                format!(
                    "rule {} allows native value only to payable functions, and {} is not payable",
                    rule.name,
                    sig(d)
                ),
            ),
            Miss::PlainOnly => (
                "input".into(),
                format!(
                    "rule {} allows plain transfers only (no calldata)",
                    rule.name
                ),
            ),
            Miss::Decode(d) => ("input".into(), sig(d)),
            Miss::Function(d) => (
                "input".into(),
                format!("function {} is not allowed by rule {}", sig(d), rule.name),
            ),
            Miss::Arg(d, name, check) => {
                let reason = match d.as_ref() {
                    Ok(call) => match call.arg(name) {
                        Some(v) => check_arg(v, check).err().unwrap_or_default(),
                        None => String::new(),
                    },
                    Err(e) => e.to_string(),
                };
                (format!("input.{name}"), reason)
            }
        }
    }
}

/// Decodes calldata once per ABI, however many rules share it.
struct CallCache<'a> {
    input: &'a [u8],
    done: Vec<(*const Abi, Decoded)>,
}

impl CallCache<'_> {
    fn get(&mut self, abi: &Arc<Abi>) -> Decoded {
        let key = Arc::as_ptr(abi);
        if let Some((_, r)) = self.done.iter().find(|(k, _)| *k == key) {
            return r.clone();
        }
        let r = Rc::new(abi.decode(self.input));
        self.done.push((key, r.clone()));
        r
    }
}

fn lit_matches(v: &alloy_dyn_abi::DynSolValue, l: &Literal) -> bool {
    use alloy_dyn_abi::DynSolValue as V;
    match v {
        V::Address(a) => l.address == Some(*a),
        V::Uint(u, _) => l.uint == Some(*u),
        V::Bool(b) => l.boolean == Some(*b),
        V::Bytes(b) => l.bytes.as_deref() == Some(b.as_slice()),
        V::FixedBytes(w, n) => l.bytes.as_deref() == Some(&w[..*n]),
        V::String(s) => *s == l.text,
        _ => false,
    }
}

fn arg_ok(v: &alloy_dyn_abi::DynSolValue, c: &ArgCheck) -> bool {
    use alloy_dyn_abi::DynSolValue as V;
    let len = match v {
        V::Bytes(b) => Some(b.len()),
        V::String(s) => Some(s.len()),
        _ => None,
    };
    let uint = match v {
        V::Uint(u, _) => Some(*u),
        _ => None,
    };
    match c {
        ArgCheck::Eq(l) => lit_matches(v, l),
        ArgCheck::OneOf(ls) => ls.iter().any(|l| lit_matches(v, l)),
        ArgCheck::Max(m) => uint.is_some_and(|u| u <= *m),
        ArgCheck::Min(m) => uint.is_some_and(|u| u >= *m),
        ArgCheck::MaxLen(m) => len.is_some_and(|n| n <= *m),
        ArgCheck::Len(m) => len == Some(*m),
    }
}

fn check_arg(v: &alloy_dyn_abi::DynSolValue, c: &ArgCheck) -> Result<(), String> {
    if arg_ok(v, c) {
        return Ok(());
    }
    let shown = crate::abi::value_json(v).to_string();
    Err(match c {
        ArgCheck::Eq(l) => format!("{shown} is not {}", l.text),
        ArgCheck::OneOf(_) => format!("{shown} is not one of the allowed values"),
        ArgCheck::Max(m) => format!("{shown} is not a uint at most {m}"),
        ArgCheck::Min(m) => format!("{shown} is not a uint at least {m}"),
        ArgCheck::MaxLen(m) => format!("{shown} is not bytes/string of at most {m} bytes"),
        ArgCheck::Len(m) => format!("{shown} is not bytes/string of exactly {m} bytes"),
    })
}

fn rule_verdict<'a>(
    rule: &'a Rule,
    intent: &TxIntent,
    calls: &mut CallCache<'_>,
    now_ms: u64,
) -> Verdict<'a> {
    let chain = intent.chain_id();
    if !rule.chain_ids.is_empty() && !rule.chain_ids.contains(&chain) {
        return Verdict::Skip(Skip::Chain);
    }
    if rule.deny {
        return deny_verdict(rule, intent, calls, now_ms);
    }
    match intent.to() {
        None if !rule.create => return Verdict::Skip(Skip::Creation),
        Some(_) if rule.create => return Verdict::Skip(Skip::CreationOnly),
        Some(to) if rule.to.as_ref().is_some_and(|l| !covers(l, to, chain)) => {
            return Verdict::Skip(Skip::Destination)
        }
        _ => {}
    }
    let fail = |depth, miss| Verdict::Fail { depth, miss };
    if let Some(why) = rule.window.as_ref().and_then(|w| w.outside(now_ms)) {
        return fail(1, Miss::Time(why));
    }
    if let Some(max) = rule.max_value.filter(|m| intent.value() > *m) {
        return fail(1, Miss::Value(max));
    }
    let Some(abi) = &rule.abi else {
        if !rule.calldata_any && !intent.tx.input().is_empty() {
            return fail(2, Miss::PlainOnly);
        }
        return Verdict::Match(None);
    };
    let decoded = calls.get(abi);
    let call = match decoded.as_ref() {
        Ok(c) => c,
        Err(_) => return fail(2, Miss::Decode(decoded)),
    };
    if !rule.functions.is_empty()
        && !rule
            .functions
            .iter()
            .any(|f| *f == call.function || *f == call.signature)
    {
        return fail(2, Miss::Function(decoded.clone()));
    }
    if !intent.value().is_zero()
        && !abi
            .function_of(intent.tx.input())
            .is_some_and(|(_, _, payable)| payable)
    {
        return fail(2, Miss::NotPayable(decoded.clone()));
    }
    for (name, c) in &rule.args {
        // A constraint binds the functions that have the argument (`args.to` on a rule for
        // `transfer` and `approve` constrains `transfer`); load checks every name exists.
        if let Some(v) = call.arg(name) {
            if !arg_ok(v, c) {
                return fail(3, Miss::Arg(decoded.clone(), name, c));
            }
        }
    }
    Verdict::Match(Some(decoded.clone()))
}

/// Whether `to` is one of a rule's destinations on `chain`.
fn covers(list: &[(Option<u64>, Address)], to: Address, chain: u64) -> bool {
    list.iter()
        .any(|(c, a)| *a == to && c.is_none_or(|c| c == chain))
}

/// A deny rule matches on the conditions it names and nothing else: an omitted destination,
/// function, calldata shape or window is "any", so no default can make it miss. Functions are
/// matched by selector (the contract runs the call whether or not keyguard decodes the rest
/// exactly); argument conditions match when they hold, or when the arguments cannot be
/// decoded exactly (unprovable is treated as matching: the deny fails closed).
fn deny_verdict<'a>(
    rule: &'a Rule,
    intent: &TxIntent,
    calls: &mut CallCache<'_>,
    now_ms: u64,
) -> Verdict<'a> {
    let chain = intent.chain_id();
    let miss = |miss| Verdict::Fail { depth: 0, miss };
    match intent.to() {
        None if !(rule.create || rule.any_destination) => return Verdict::Skip(Skip::Creation),
        Some(_) if rule.create => return Verdict::Skip(Skip::CreationOnly),
        Some(to) if rule.to.as_ref().is_some_and(|l| !covers(l, to, chain)) => {
            return Verdict::Skip(Skip::Destination)
        }
        _ => {}
    }
    if let Some(why) = rule.window.as_ref().and_then(|w| w.outside(now_ms)) {
        return miss(Miss::Time(why));
    }
    let input = intent.tx.input();
    let Some(abi) = &rule.abi else {
        if !rule.calldata_any && !input.is_empty() {
            return miss(Miss::PlainOnly);
        }
        return Verdict::Match(None);
    };
    let decoded = calls.get(abi);
    let Some((name, signature, _)) = abi.function_of(input) else {
        return miss(Miss::Decode(decoded));
    };
    if !rule.functions.is_empty() && !rule.functions.iter().any(|f| f == name || *f == signature) {
        return miss(Miss::Function(decoded));
    }
    if let Ok(call) = decoded.as_ref() {
        for (arg, c) in &rule.args {
            if call.arg(arg).is_some_and(|v| !arg_ok(v, c)) {
                return miss(Miss::Arg(decoded.clone(), arg, c));
            }
        }
    }
    Verdict::Match(Some(decoded))
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
