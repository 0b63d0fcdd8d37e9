//! A held request's intent in plain words for the approver: amounts in token units (ETH,
//! gwei, BTC) next to the exact stored integers, which the page shows too.

use serde_json::Value;

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

/// One line for an EVM transaction summary (`eip155:*`), if it is one.
pub(super) fn plain(chain: &str, summary: &Value) -> Option<String> {
    if !chain.starts_with("eip155:") {
        return None;
    }
    let value = units(&text(summary, "value")?, 18)?;
    let to = text(summary, "to").unwrap_or_else(|| "(contract creation)".into());
    let mut line = format!("Send {value} ETH to {to}");
    if let Some(sel) = text(summary, "selector") {
        line.push_str(&format!(", calling function {sel}"));
    }
    if let Some(fee) = text(summary, "max_fee_per_gas").and_then(|f| units(&f, 9)) {
        line.push_str(&format!("; max fee {fee} gwei per gas"));
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_in_token_units() {
        assert_eq!(units("11000000000000000000", 18).as_deref(), Some("11"));
        assert_eq!(units("1", 18).as_deref(), Some("0.000000000000000001"));
        assert_eq!(units("0", 18).as_deref(), Some("0"));
        assert_eq!(units("1500000000", 9).as_deref(), Some("1.5"));
        assert_eq!(units("-1", 18), None);
        assert_eq!(units("1e5", 18), None);
        let s = serde_json::json!({"value": "11000000000000000000", "to": "0xdead", "max_fee_per_gas": "1000000000"});
        assert_eq!(
            plain("eip155:1", &s).as_deref(),
            Some("Send 11 ETH to 0xdead; max fee 1 gwei per gas")
        );
        assert_eq!(plain("cosmos:x", &s), None);
    }
}
