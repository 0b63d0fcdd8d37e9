//! `keyguard policy check --config F --request request.json`: the dry run. Prints the decoded
//! intent and every rule's outcome, exactly as the signer would decide (same code), without
//! touching a key or the store.
//!
//! The request file holds a `TransactionArgs` object, or `{"method": ..., "params": [...]}` for
//! `eth_signTransaction`, `eth_signTypedData_v4`, `eth_signTypedData`, `personal_sign`, `eth_sign`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use keyguard_chain::{KeyId, Rejection};
use keyguard_evm::EvmPolicy;
use serde_json::{json, Value};

use crate::config::{patterns_match, Config};

/// Options of `keyguard policy check`.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// Configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Request file (JSON).
    #[arg(long)]
    request: PathBuf,
    /// Key id whose policy applies (default: the key holding the request's `from`, which
    /// needs the keystore passphrase to look up).
    #[arg(long)]
    key: Option<String>,
    /// Evaluate at this time (Unix milliseconds) instead of now.
    #[arg(long)]
    at_ms: Option<u64>,
    /// Also time N evaluations of a transaction request (the cost of the policy alone).
    #[arg(long)]
    repeat: Option<u32>,
}

fn key_for(config: &Config, from: alloy_primitives::Address) -> anyhow::Result<KeyId> {
    let keystore = super::keys::open_keystore(config)?;
    use crate::backend::KeyBackend;
    keystore
        .keys()
        .into_iter()
        .find(|k| keyguard_evm::address_of(&k.public_key) == Some(from))
        .map(|k| k.id)
        .with_context(|| format!("{from} is not a key of this keystore (use --key)"))
}

fn policy_for<'a>(config: &'a Config, key: &KeyId) -> anyhow::Result<(&'a str, &'a EvmPolicy)> {
    let p = config
        .policies
        .iter()
        .find(|p| patterns_match(&p.keys, key))
        .with_context(|| format!("no policy governs key {key}"))?;
    match &p.evm {
        Some(evm) => Ok((&p.name, evm)),
        None => bail!("policy {} has no Ethereum rules", p.name),
    }
}

fn rejection_json(r: &Rejection) -> Value {
    match r {
        Rejection::Policy {
            rule,
            field,
            reason,
        } => json!({"decision": "refused", "rule": rule, "field": field, "reason": reason}),
        Rejection::InvalidParams { field, reason } => {
            json!({"decision": "invalid", "rule": "request.invalid", "field": field, "reason": reason})
        }
    }
}

pub(crate) fn run(args: CheckArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let text = std::fs::read_to_string(&args.request)
        .with_context(|| format!("reading {}", args.request.display()))?;
    let request: Value = serde_json::from_str(&text).context("request is not JSON")?;
    let (method, params) = match request.get("method").and_then(Value::as_str) {
        Some(m) => (
            m.to_string(),
            request.get("params").cloned().unwrap_or(json!([])),
        ),
        None => ("eth_signTransaction".to_string(), json!([request])),
    };
    let now = args.at_ms.unwrap_or_else(crate::guard::now_ms);
    let out = evaluate(&config, &args, &method, &params, now)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    if out["decision"]["decision"] != "signed" {
        std::process::exit(3);
    }
    Ok(())
}

fn evaluate(
    config: &Config,
    args: &CheckArgs,
    method: &str,
    params: &Value,
    now: u64,
) -> anyhow::Result<Value> {
    let resolve = |from| -> anyhow::Result<KeyId> {
        match &args.key {
            Some(k) => Ok(KeyId::new(k.as_str())?),
            None => key_for(config, from),
        }
    };
    let invalid = |r: Rejection| json!({"method": method, "decision": rejection_json(&r)});
    match method {
        "eth_signTransaction" | "eth_sendTransaction" | "account_signTransaction" => {
            let intent = match keyguard_evm::decode_sign_transaction_params(params) {
                Ok(i) => i,
                Err(r) => return Ok(invalid(r)),
            };
            let key = resolve(intent.from)?;
            let (name, evm) = policy_for(config, &key)?;
            let timing = args.repeat.filter(|n| *n > 0).map(|n| {
                let started = std::time::Instant::now();
                for _ in 0..n {
                    let _ = std::hint::black_box(evm.decide(&intent, now));
                }
                let per = started.elapsed().as_nanos() as f64 / f64::from(n);
                json!({"evaluations": n, "ns_per_evaluation": per.round()})
            });
            let (trace, decision) = evm.explain(&intent, now);
            let decision = match decision {
                Ok(d) => {
                    let mut j = d.to_json();
                    j["decision"] = json!("signed");
                    j["velocity"] = d
                        .debits
                        .iter()
                        .map(|d| {
                            json!({"counter": d.counter, "amount": d.amount.to_string(),
                            "max": d.max.to_string(), "window_ms": d.window_ms})
                        })
                        .collect();
                    if let Some(t) = &d.token {
                        if let Some((sym, dec)) = evm.token_info(intent.chain_id(), t.token) {
                            j["token"]["symbol"] = json!(sym);
                            j["token"]["decimals"] = json!(dec);
                        }
                    }
                    j
                }
                Err(r) => rejection_json(&r),
            };
            Ok(json!({
                "method": method, "key": key, "policy": name,
                "intent": intent.summary(), "rules": trace, "decision": decision,
                "note": "velocity counters and nonce history are not consulted by the dry run",
                "timing": timing,
            }))
        }
        "eth_signTypedData_v4" | "eth_signTypedData" | "personal_sign" | "eth_sign" => {
            let typed = method.starts_with("eth_signTypedData");
            let decoded = if typed {
                keyguard_evm::decode_typed_data_params(params)
                    .map(|t| (t.from, t.summary(), Some(t), None))
            } else if method == "eth_sign" {
                keyguard_evm::decode_eth_sign(params).map(|m| (m.from, m.summary(), None, Some(m)))
            } else {
                keyguard_evm::decode_personal_sign(params)
                    .map(|m| (m.from, m.summary(), None, Some(m)))
            };
            let (from, summary, t, m) = match decoded {
                Ok(d) => d,
                Err(r) => return Ok(invalid(r)),
            };
            let key = resolve(from)?;
            let (name, evm) = policy_for(config, &key)?;
            let r = match (t, m) {
                (Some(t), _) => evm.check_typed_data(&t),
                (_, Some(m)) => evm.check_message(&m),
                _ => bail!("nothing decoded"),
            };
            let decision = match r {
                Ok(rule) => json!({"decision": "signed", "allowed_by": rule}),
                Err(r) => rejection_json(&r),
            };
            Ok(
                json!({"method": method, "key": key, "policy": name, "intent": summary,
                      "decision": decision}),
            )
        }
        other => bail!("method {other:?} is not checked by the dry run"),
    }
}
