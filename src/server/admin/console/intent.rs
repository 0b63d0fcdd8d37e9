//! A held request's intent in plain words for the approver: amounts in token units (ETH,
//! gwei, BTC) next to the exact stored integers, which the page shows too.

use serde_json::Value;

use crate::config::Labels;

/// `digits` (a decimal integer) divided by 10^`decimals`, trailing zeros trimmed.
pub(super) fn units(digits: &str, decimals: usize) -> Option<String> {
    if digits.is_empty() || digits.len() > 80 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let padded = format!("{digits:0>width$}", width = decimals + 1);
    let (int, frac) = padded.split_at(padded.len() - decimals);
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = frac.trim_end_matches('0');
    Some(if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    })
}

fn text(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The intent of a held request in plain words, a line each (empty when the chain's summary
/// has no plain form): what moves where, with the operator's label beside every destination.
pub(super) fn plain(chain: &str, summary: &Value, labels: &Labels) -> Vec<String> {
    if chain.starts_with("eip155:") {
        evm(summary, labels)
    } else if chain.starts_with("bitcoin:") {
        bitcoin(summary, labels)
    } else {
        Vec::new()
    }
}

fn evm(summary: &Value, labels: &Labels) -> Vec<String> {
    let Some(value) = text(summary, "value").and_then(|v| units(&v, 18)) else {
        return Vec::new();
    };
    let to = text(summary, "to").map_or_else(|| "(contract creation)".into(), |t| labels.show(&t));
    let mut line = format!("Send {value} ETH to {to}");
    let decision = summary.get("decision");
    match decision
        .and_then(|d| d.get("call"))
        .and_then(|c| text(c, "function"))
    {
        Some(f) => line.push_str(&format!(", calling {f}")),
        None => {
            if let Some(sel) = text(summary, "selector") {
                line.push_str(&format!(", calling function {sel}"));
            }
        }
    }
    if let Some(fee) = text(summary, "max_fee_per_gas").and_then(|f| units(&f, 9)) {
        line.push_str(&format!("; max fee {fee} gwei per gas"));
    }
    let mut lines = vec![line];
    let moves = decision
        .and_then(|d| d.get("moves"))
        .and_then(Value::as_array);
    for m in moves.into_iter().flatten().take(16) {
        let (Some(kind), Some(token), Some(party), Some(amount)) = (
            text(m, "kind"),
            text(m, "token"),
            text(m, "counterparty"),
            text(m, "amount"),
        ) else {
            continue;
        };
        let amount = if m.get("unlimited") == Some(&Value::Bool(true)) {
            "an unlimited amount".to_owned()
        } else {
            format!("{amount} base units")
        };
        let token = labels.show(&token);
        let party = labels.show(&party);
        lines.push(match kind.as_str() {
            "transfer" => format!("Token transfer: {amount} of {token} to {party}"),
            "approval" => format!("Token approval: {party} may spend {amount} of {token}"),
            _ => format!("Token {kind}: {amount} of {token}, counterparty {party}"),
        });
    }
    lines
}

fn bitcoin(summary: &Value, labels: &Labels) -> Vec<String> {
    let Some(outputs) = summary.get("outputs").and_then(Value::as_array) else {
        return Vec::new();
    };
    let btc = |o: &Value| text(o, "sat").and_then(|s| units(&s, 8));
    let mut lines = Vec::new();
    for o in outputs.iter().take(64) {
        if let (Some(to), Some(amount)) = (text(o, "to"), btc(o)) {
            lines.push(format!("Pay {amount} BTC to {}", labels.show(&to)));
        } else if let (Some(i), Some(amount)) = (text(o, "change"), btc(o)) {
            lines.push(format!(
                "Change {amount} BTC back to the wallet (output {i})"
            ));
        } else if let Some(n) = text(o, "op_return") {
            lines.push(format!("OP_RETURN data, {n} bytes"));
        }
    }
    if outputs.len() > 64 {
        lines.push(format!("… and {} more outputs", outputs.len() - 64));
    }
    if let Some(fee) = text(summary, "fee_sat") {
        lines.push(format!("Fee {fee} sat"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn amounts_in_token_units() {
        assert_eq!(units("11000000000000000000", 18).as_deref(), Some("11"));
        assert_eq!(units("1", 18).as_deref(), Some("0.000000000000000001"));
        assert_eq!(units("0", 18).as_deref(), Some("0"));
        assert_eq!(units("1500000000", 9).as_deref(), Some("1.5"));
        assert_eq!(units("-1", 18), None);
        assert_eq!(units("1e5", 18), None);
        let s = serde_json::json!({"value": "11000000000000000000", "to": "0xdead", "max_fee_per_gas": "1000000000"});
        let none = Labels::default();
        assert_eq!(
            plain("eip155:1", &s, &none),
            ["Send 11 ETH to 0xdead (no label); max fee 1 gwei per gas"]
        );
        assert!(plain("cosmos:x", &s, &none).is_empty());
    }

    fn book() -> Labels {
        let mut t = BTreeMap::new();
        t.insert(
            "0x000000000000000000000000000000000000dEaD".to_owned(),
            "Treasury cold".to_owned(),
        );
        t.insert(
            "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".to_owned(),
            "Exchange".to_owned(),
        );
        Labels::new(&t)
    }

    #[test]
    fn token_moves_and_calls_carry_labels() {
        let s = serde_json::json!({
            "value": "0", "to": "0x000000000000000000000000000000000000DEAD",
            "decision": {"call": {"function": "transfer(address,uint256)", "args": {}},
                "moves": [{"token": "0x000000000000000000000000000000000000dead", "kind": "transfer",
                    "counterparty": "0x1111111111111111111111111111111111111111", "amount": "5", "unlimited": false},
                    {"token": "0x2222222222222222222222222222222222222222", "kind": "approval",
                    "counterparty": "0x000000000000000000000000000000000000dead", "amount": "9", "unlimited": true}]}
        });
        assert_eq!(
            plain("eip155:1", &s, &book()),
            [
                "Send 0 ETH to 0x000000000000000000000000000000000000DEAD (Treasury cold), calling transfer(address,uint256)",
                "Token transfer: 5 base units of 0x000000000000000000000000000000000000dead (Treasury cold) to 0x1111111111111111111111111111111111111111 (no label)",
                "Token approval: 0x000000000000000000000000000000000000dead (Treasury cold) may spend an unlimited amount of 0x2222222222222222222222222222222222222222 (no label)",
            ]
        );
    }

    #[test]
    fn psbt_outputs_change_and_fee() {
        let s = serde_json::json!({"outputs": [
            {"to": "BC1QAR0SRRR7XFKVY5L643LYDNW9RE59GTZZWF5MDQ", "sat": 150_000_000u64},
            {"to": "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "sat": 1000},
            {"change": 2, "sat": 5_000_000},
            {"op_return": 20}], "fee_sat": 1234});
        assert_eq!(
            plain("bitcoin:bitcoin", &s, &book()),
            [
                "Pay 1.5 BTC to BC1QAR0SRRR7XFKVY5L643LYDNW9RE59GTZZWF5MDQ (Exchange)",
                "Pay 0.00001 BTC to bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4 (no label)",
                "Change 0.05 BTC back to the wallet (output 2)",
                "OP_RETURN data, 20 bytes",
                "Fee 1234 sat",
            ]
        );
    }
}
