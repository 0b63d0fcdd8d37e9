//! Method families and key hints: what the pipeline knows about a request before decoding it.
//!
//! Per-method rate limits are kept per *family*, so an alias cannot double a budget:
//! `eth_signTransaction`, `account_signTransaction` and `eth_sendTransaction` all sign one
//! transaction; `eth_signTypedData_v4`, `eth_signTypedData`, `account_signTypedData` and Clef's
//! `account_signData` with `data/typed` sign typed data; `personal_sign`, `eth_sign` and
//! `account_signData` with `text/plain` sign a message. The key hint reads the one field the
//! decoder reads for the signer (`from`, the address parameter, Bitcoin's `key`), without
//! parsing anything else, so a flood is limited per key before any hashing.

use alloy_primitives::Address;
use serde_json::Value;

/// Ethereum transactions (`eth_signTransaction`, `account_signTransaction`,
/// `eth_sendTransaction`).
pub const EVM_TRANSACTION: &str = "evm.transaction";
/// EIP-712 typed data, every spelling.
pub const EVM_TYPED_DATA: &str = "evm.typed_data";
/// EIP-191 messages, every spelling.
pub const EVM_MESSAGE: &str = "evm.message";
/// `btc_signPsbt` and `btc_signSignetBlock`.
pub const BITCOIN_PSBT: &str = "bitcoin.psbt";
/// privval `SignVote` / `SignProposal`.
pub const COMETBFT_CONSENSUS: &str = "cometbft.consensus";

/// Clef's content type of `account_signData` (`params[0]`), if it is a string.
fn clef_content_type(params: &Value) -> Option<&str> {
    params.get(0).and_then(Value::as_str)
}

/// The rate-limit family of a signing method; unknown methods are their own family.
pub fn family(method: &'static str, params: &Value) -> &'static str {
    match method {
        "eth_signTransaction" | "account_signTransaction" | "eth_sendTransaction" => {
            EVM_TRANSACTION
        }
        "eth_signTypedData_v4" | "eth_signTypedData" | "account_signTypedData" => EVM_TYPED_DATA,
        "personal_sign" | "eth_sign" => EVM_MESSAGE,
        // Clef's one method for both: the content type picks the family (anything else is
        // refused by the decoder, and counted with typed data, the more expensive one).
        "account_signData" => match clef_content_type(params) {
            Some("text/plain") => EVM_MESSAGE,
            _ => EVM_TYPED_DATA,
        },
        // A signet block is signed through either method: one budget.
        "btc_signPsbt" | "btc_signSignetBlock" => BITCOIN_PSBT,
        "privval.SignVote" | "privval.SignProposal" => COMETBFT_CONSENSUS,
        other => other,
    }
}

fn address(v: Option<&Value>) -> Option<Address> {
    v?.as_str()?.parse().ok()
}

/// The signer address an EVM request names, read from the field its decoder reads.
pub fn evm_from(method: &str, params: &Value) -> Option<Address> {
    match method {
        "eth_signTransaction" | "account_signTransaction" | "eth_sendTransaction" => {
            let tx = params.get(0).unwrap_or(params);
            address(tx.get("from"))
        }
        "eth_signTypedData_v4" | "eth_signTypedData" | "account_signTypedData" | "eth_sign" => {
            address(params.get(0))
        }
        "personal_sign" | "account_signData" => address(params.get(1)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aliases_share_a_family_and_distinct_operations_do_not() {
        let none = Value::Null;
        assert_eq!(
            family("eth_signTransaction", &none),
            family("account_signTransaction", &none)
        );
        assert_eq!(family("eth_sendTransaction", &none), EVM_TRANSACTION);
        for m in [
            "eth_signTypedData_v4",
            "eth_signTypedData",
            "account_signTypedData",
        ] {
            assert_eq!(family(m, &none), EVM_TYPED_DATA, "{m}");
        }
        assert_eq!(
            family("account_signData", &json!(["data/typed"])),
            EVM_TYPED_DATA
        );
        assert_eq!(family("personal_sign", &none), family("eth_sign", &none));
        assert_eq!(
            family("account_signData", &json!(["text/plain"])),
            EVM_MESSAGE
        );
        // Negative control: different operations keep different budgets.
        assert_ne!(
            family("personal_sign", &none),
            family("eth_signTransaction", &none)
        );
        assert_ne!(family("eth_signTypedData_v4", &none), EVM_MESSAGE);
    }

    #[test]
    fn key_hint_reads_the_decoders_field_only() {
        let a = "0x00000000000000000000000000000000000000aa";
        let want: Address = a.parse().unwrap();
        assert_eq!(
            evm_from("eth_signTransaction", &json!([{ "from": a }])),
            Some(want)
        );
        assert_eq!(evm_from("personal_sign", &json!(["0x00", a])), Some(want));
        assert_eq!(evm_from("eth_sign", &json!([a, "0x00"])), Some(want));
        assert_eq!(
            evm_from("account_signData", &json!(["text/plain", a, "0x"])),
            Some(want)
        );
        assert_eq!(
            evm_from("eth_signTypedData_v4", &json!([a, {}])),
            Some(want)
        );
        assert_eq!(
            evm_from("eth_signTransaction", &json!([{ "from": 7 }])),
            None
        );
    }
}
