//! What every adversarial table shares: the expected outcome of a row, the evidence that nothing
//! was signed (the audit log's signed rows do not move), the audit row a refusal must leave, and
//! a failure list that names every row that broke instead of stopping at the first.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common;

/// What the audit log must show after a row.
#[derive(Clone, Copy, Debug)]
pub enum Audited {
    /// At least one new row, none of them `signed`, one with this method (and rule, if given).
    Row {
        method: &'static str,
        rule: Option<&'static str>,
    },
    /// No row: the bytes never became a request with a method (unparsable or oversized at the
    /// transport), so there is nothing to attribute; writing rows for them would let anyone
    /// grow the log and burn fsyncs without a credential. The reason is kept with the row.
    Transport(&'static str),
}

/// The audit rows with `seq > after` (the CLI reads the database read-only while the daemon
/// runs, as an auditor would).
pub fn audit_rows_after(config: &Path, after: i64) -> Vec<Value> {
    let out = Command::new(common::binary())
        .args(["audit", "query", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit query: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["seq"].as_i64().unwrap_or(0) > after)
        .collect()
}

/// Where the audit log stands before a row: its last sequence number and how many signatures
/// it has released.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub seq: i64,
    pub signed: usize,
}

pub fn mark(config: &Path) -> Mark {
    let rows = audit_rows_after(config, 0);
    Mark {
        seq: rows.last().and_then(|r| r["seq"].as_i64()).unwrap_or(0),
        signed: rows.iter().filter(|r| r["decision"] == "signed").count(),
    }
}

/// Checks the audit log after a row against `expect`; returns what is wrong, if anything.
pub fn check_audit(config: &Path, before: Mark, expect: Audited) -> Result<(), String> {
    let all = audit_rows_after(config, 0);
    let signed = all.iter().filter(|r| r["decision"] == "signed").count();
    if signed != before.signed {
        return Err(format!(
            "signed rows went from {} to {signed}",
            before.signed
        ));
    }
    let new: Vec<&Value> = all
        .iter()
        .filter(|r| r["seq"].as_i64().unwrap_or(0) > before.seq)
        .collect();
    match expect {
        Audited::Transport(why) => {
            if !new.is_empty() {
                return Err(format!(
                    "audit rows for a transport refusal ({why}): {new:?}"
                ));
            }
        }
        Audited::Row { method, rule } => {
            let hit = new.iter().any(|r| {
                r["method"] == method && rule.is_none_or(|rule| r["rule"].as_str() == Some(rule))
            });
            if !hit {
                return Err(format!(
                    "no audit row with method {method} and rule {rule:?}; new rows: {new:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Collects row failures so one run reports every broken row by name.
#[derive(Default)]
pub struct Failures(Vec<String>);

impl Failures {
    pub fn check(&mut self, row: &str, result: Result<(), String>) {
        if let Err(e) = result {
            eprintln!("FAILED row {row:?}: {e}");
            self.0.push(format!("{row}: {e}"));
        }
    }

    /// Panics with every failed row.
    pub fn finish(self, table: &str, rows: usize) {
        assert!(
            self.0.is_empty(),
            "{} of {rows} {table} rows failed:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
        eprintln!(
            "{table}: {rows} hostile rows refused, nothing signed, audited or transport-refused"
        );
    }
}

/// Checks a JSON-RPC error response: no `result`, the code, and each `data` field named.
pub fn check_rpc_error(resp: &Value, code: i64, data: &[(&str, &str)]) -> Result<(), String> {
    if resp.get("result").is_some() {
        return Err(format!("answered with a result: {resp}"));
    }
    let got = resp["error"]["code"].as_i64();
    if got != Some(code) {
        return Err(format!("expected code {code}, got {resp}"));
    }
    for (field, value) in data {
        if resp["error"]["data"][field].as_str() != Some(value) {
            return Err(format!("expected data.{field} = {value:?}, got {resp}"));
        }
    }
    Ok(())
}

/// True if any string in `v` looks like a signature or signed transaction (a long hex blob):
/// an error body must carry none.
pub fn carries_signature(v: &Value) -> bool {
    match v {
        Value::String(s) => s.starts_with("0x") && s.len() >= 130,
        Value::Array(a) => a.iter().any(carries_signature),
        Value::Object(o) => o.values().any(carries_signature),
        _ => false,
    }
}
