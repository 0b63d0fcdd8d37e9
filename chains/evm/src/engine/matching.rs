//! Matching one allow/deny rule against a transaction: the verdict (skip, match, or the
//! condition that missed) and its rendering, which happens only when reported.

use std::rc::Rc;
use std::sync::Arc;

use alloy_consensus::Transaction;
use alloy_primitives::{Address, U256};

use crate::abi::{Abi, CallError, DecodedCall};
use crate::rulecfg::TimeWindow;
use crate::rulecompile::{ArgCheck, Literal, Rule};
use crate::TxIntent;

pub(super) type Decoded = Rc<Result<DecodedCall, CallError>>;

/// Why a rule does not apply; reasons are rendered only when reported (the hot path of a
/// 50-rule policy must not format 49 strings per request).
pub(super) enum Skip {
    Chain,
    Creation,
    CreationOnly,
    Destination,
}

pub(super) enum Miss<'a> {
    /// Outside the rule's window at this instant (rendered with the shared window's reason).
    Time(&'a TimeWindow, u64),
    Value(U256),
    NotPayable(Decoded),
    PlainOnly,
    Decode(Decoded),
    Function(Decoded),
    Arg(Decoded, &'a str, &'a ArgCheck),
}

pub(super) enum Verdict<'a> {
    Skip(Skip),
    Match(Option<Decoded>),
    Fail { depth: u8, miss: Miss<'a> },
}

impl Skip {
    pub(super) fn render(&self, intent: &TxIntent) -> String {
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
    pub(super) fn render(&self, rule: &Rule, intent: &TxIntent) -> (String, String) {
        let sig = |d: &Decoded| match d.as_ref() {
            Ok(c) => c.signature.clone(),
            Err(e) => e.to_string(),
        };
        match self {
            Miss::Time(w, now_ms) => (
                "time".into(),
                format!(
                    "rule {}: {}",
                    rule.name,
                    w.outside(*now_ms).unwrap_or_default()
                ),
            ),
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
pub(super) struct CallCache<'a> {
    pub(super) input: &'a [u8],
    pub(super) done: Vec<(*const Abi, Decoded)>,
}

impl CallCache<'_> {
    pub(super) fn get(&mut self, abi: &Arc<Abi>) -> Decoded {
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

pub(super) fn rule_verdict<'a>(
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
    if let Some(w) = rule.window.as_ref().filter(|w| !w.contains(now_ms)) {
        return fail(1, Miss::Time(w, now_ms));
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
pub(super) fn covers(list: &[(Option<u64>, Address)], to: Address, chain: u64) -> bool {
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
    if let Some(w) = rule.window.as_ref().filter(|w| !w.contains(now_ms)) {
        return miss(Miss::Time(w, now_ms));
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
