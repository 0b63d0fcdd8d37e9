//! Strict readers for Ethereum JSON-RPC values, each naming the field it read.
//!
//! Quantities follow geth's `hexutil`: `0x` prefix, no leading zeros, no JSON numbers. Being as
//! strict as geth means a request keyguard accepts is one every node would read the same way.

use alloy_primitives::{Address, Bytes, B256, U256};
use keyguard_chain::Rejection;
use serde_json::Value;

/// Reads a `0x` quantity of at most `bits` bits.
pub(crate) fn quantity(field: &str, v: &Value, bits: usize) -> Result<U256, Rejection> {
    let s = v
        .as_str()
        .ok_or_else(|| Rejection::invalid(field, "expected a 0x-prefixed hex quantity string"))?;
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(|| Rejection::invalid(field, "hex quantity without 0x prefix"))?;
    if digits.is_empty() {
        return Err(Rejection::invalid(field, "empty hex quantity"));
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return Err(Rejection::invalid(
            field,
            "hex quantity with leading zero digits",
        ));
    }
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Rejection::invalid(field, "invalid hex digit in quantity"));
    }
    if digits.len() > 64 {
        return Err(Rejection::invalid(
            field,
            format!("quantity overflows {bits} bits"),
        ));
    }
    let value = U256::from_str_radix(digits, 16)
        .map_err(|_| Rejection::invalid(field, "invalid hex quantity"))?;
    if value.bit_len() > bits {
        return Err(Rejection::invalid(
            field,
            format!("quantity overflows {bits} bits"),
        ));
    }
    Ok(value)
}

/// Reads a quantity that must fit a `u64`.
pub(crate) fn quantity_u64(field: &str, v: &Value) -> Result<u64, Rejection> {
    Ok(quantity(field, v, 64)?.to::<u64>())
}

/// Reads a quantity that must fit a `u128` (alloy's type for gas prices).
pub(crate) fn quantity_u128(field: &str, v: &Value) -> Result<u128, Rejection> {
    Ok(quantity(field, v, 128)?.to::<u128>())
}

/// Reads `0x`-prefixed hex bytes of even length.
pub(crate) fn bytes(field: &str, v: &Value) -> Result<Bytes, Rejection> {
    let s = v
        .as_str()
        .ok_or_else(|| Rejection::invalid(field, "expected a 0x-prefixed hex string"))?;
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(|| Rejection::invalid(field, "hex string without 0x prefix"))?;
    if digits.len() % 2 != 0 {
        return Err(Rejection::invalid(field, "hex string has odd length"));
    }
    hex::decode(digits)
        .map(Bytes::from)
        .map_err(|_| Rejection::invalid(field, "invalid hex digit"))
}

/// Reads exactly `N` hex bytes.
pub(crate) fn fixed<const N: usize>(field: &str, v: &Value) -> Result<[u8; N], Rejection> {
    let b = bytes(field, v)?;
    <[u8; N]>::try_from(b.as_ref())
        .map_err(|_| Rejection::invalid(field, format!("expected {N} bytes, got {}", b.len())))
}

/// Reads a 20-byte address (any letter case; a mixed-case address must carry a valid
/// EIP-55 checksum, since a wrong one is a typo that would send funds elsewhere).
pub(crate) fn address(field: &str, v: &Value) -> Result<Address, Rejection> {
    let raw = fixed::<20>(field, v)?;
    let s = v.as_str().unwrap_or_default();
    let digits = &s[2..];
    let has_lower = digits.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = digits.bytes().any(|b| b.is_ascii_uppercase());
    let addr = Address::from(raw);
    if has_lower && has_upper && addr.to_checksum(None)[2..] != *digits {
        return Err(Rejection::invalid(
            field,
            "address has an invalid EIP-55 checksum",
        ));
    }
    Ok(addr)
}

/// Reads a 32-byte hash.
pub(crate) fn b256(field: &str, v: &Value) -> Result<B256, Rejection> {
    fixed::<32>(field, v).map(B256::from)
}

/// Reads a JSON array.
pub(crate) fn array<'a>(field: &str, v: &'a Value) -> Result<&'a Vec<Value>, Rejection> {
    v.as_array()
        .ok_or_else(|| Rejection::invalid(field, "expected an array"))
}

/// Reads a JSON object and refuses any key not in `known`.
pub(crate) fn object<'a>(
    field: &str,
    v: &'a Value,
    known: &[&str],
) -> Result<&'a serde_json::Map<String, Value>, Rejection> {
    let map = v
        .as_object()
        .ok_or_else(|| Rejection::invalid(field, "expected an object"))?;
    if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
        // An empty key still gets a visible name (found by fuzzing).
        let key = if unknown.is_empty() {
            "\"\"".to_string()
        } else {
            unknown.clone()
        };
        let name = if field.is_empty() {
            key
        } else {
            format!("{field}.{key}")
        };
        return Err(Rejection::invalid(name, "unknown field"));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reason(r: Rejection) -> String {
        match r {
            Rejection::InvalidParams { reason, .. } => reason,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn quantities_are_as_strict_as_geth() {
        assert_eq!(quantity_u64("n", &json!("0x0")).unwrap(), 0);
        assert_eq!(quantity_u64("n", &json!("0x1f")).unwrap(), 31);
        assert!(reason(quantity_u64("n", &json!("0x01")).unwrap_err()).contains("leading zero"));
        assert!(reason(quantity_u64("n", &json!("0x")).unwrap_err()).contains("empty"));
        assert!(reason(quantity_u64("n", &json!("12")).unwrap_err()).contains("prefix"));
        assert!(reason(quantity_u64("n", &json!(12)).unwrap_err()).contains("string"));
        assert!(reason(quantity_u64("n", &json!("0xzz")).unwrap_err()).contains("digit"));
        assert!(
            reason(quantity_u64("n", &json!("0x10000000000000000")).unwrap_err())
                .contains("overflows 64")
        );
        let max = format!("0x{}", "f".repeat(64));
        assert_eq!(quantity("v", &json!(max), 256).unwrap(), U256::MAX);
        let over = format!("0x1{}", "0".repeat(64));
        assert!(reason(quantity("v", &json!(over), 256).unwrap_err()).contains("overflows"));
    }

    #[test]
    fn bytes_and_addresses() {
        assert_eq!(bytes("d", &json!("0x")).unwrap().len(), 0);
        assert!(reason(bytes("d", &json!("0xabc")).unwrap_err()).contains("odd"));
        assert!(reason(bytes("d", &json!("0xgg")).unwrap_err()).contains("invalid"));
        let a = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
        assert!(address("to", &json!(a)).is_ok());
        assert!(address("to", &json!(a.to_lowercase())).is_ok());
        let bad = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD";
        assert!(reason(address("to", &json!(bad)).unwrap_err()).contains("checksum"));
        assert!(reason(address("to", &json!("0x1234")).unwrap_err()).contains("20 bytes"));
    }

    #[test]
    fn objects_refuse_unknown_keys_by_path() {
        let v = json!({"address": "0x00", "storagekeys": []});
        match object("accessList[0]", &v, &["address", "storageKeys"]).unwrap_err() {
            Rejection::InvalidParams { field, .. } => {
                assert_eq!(field, "accessList[0].storagekeys")
            }
            other => panic!("{other:?}"),
        }
    }
}
