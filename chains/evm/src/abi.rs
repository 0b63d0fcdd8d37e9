//! Contract ABIs and exact calldata decoding.
//!
//! A rule bound to an ABI only sees calldata that decodes to one of the ABI's functions *and*
//! re-encodes to the very same bytes. Lenient decoders accept trailing bytes, dirty padding and
//! odd offsets; a contract may read those bytes differently than keyguard did, so anything that
//! is not the canonical encoding is refused (an attacker hides a second meaning in the slack).

use std::collections::HashMap;
use std::sync::Arc;

use alloy_dyn_abi::{DynSolValue, JsonAbiExt, Specifier};
use alloy_json_abi::{Function, JsonAbi};
use alloy_primitives::Selector;

/// The ERC-20 ABI shipped with keyguard (`abi = "erc20"`).
pub const ERC20_JSON: &str = include_str!("../abi/erc20.json");
/// The ERC-721 ABI shipped with keyguard (`abi = "erc721"`).
pub const ERC721_JSON: &str = include_str!("../abi/erc721.json");

/// One imported ABI, indexed by selector.
#[derive(Debug)]
pub struct Abi {
    /// The name the config gave it (`erc20`, `optimism-portal`).
    pub name: String,
    by_selector: HashMap<Selector, Function>,
    /// Canonical signatures by selector, built once: rules match function names against them
    /// on every request, and building one formats every parameter type.
    signatures: HashMap<Selector, String>,
}

/// Calldata decoded against a function of an ABI.
#[derive(Clone, Debug)]
pub struct DecodedCall {
    /// Function name (`transfer`).
    pub function: String,
    /// Canonical signature (`transfer(address,uint256)`).
    pub signature: String,
    /// Arguments by name (unnamed parameters are `arg0`, `arg1`, ...).
    pub args: Vec<(String, DynSolValue)>,
}

impl DecodedCall {
    /// The named argument, if the function has it.
    pub fn arg(&self, name: &str) -> Option<&DynSolValue> {
        self.args.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// A JSON rendering for audit rows and the dry run.
    pub fn to_json(&self) -> serde_json::Value {
        let args: serde_json::Map<String, serde_json::Value> = self
            .args
            .iter()
            .map(|(n, v)| (n.clone(), value_json(v)))
            .collect();
        serde_json::json!({ "function": self.signature, "args": args })
    }
}

/// A readable JSON form of an ABI value (numbers as decimal strings).
pub fn value_json(v: &DynSolValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        DynSolValue::Address(a) => Value::String(a.to_checksum(None)),
        DynSolValue::Bool(b) => Value::Bool(*b),
        DynSolValue::Uint(u, _) => Value::String(u.to_string()),
        DynSolValue::Int(i, _) => Value::String(i.to_string()),
        DynSolValue::String(s) => Value::String(s.clone()),
        DynSolValue::Bytes(b) => Value::String(format!("0x{}", hex::encode(b))),
        DynSolValue::FixedBytes(w, n) => Value::String(format!("0x{}", hex::encode(&w[..*n]))),
        DynSolValue::Array(items) | DynSolValue::FixedArray(items) | DynSolValue::Tuple(items) => {
            Value::Array(items.iter().map(value_json).collect())
        }
        DynSolValue::Function(f) => Value::String(format!("0x{}", hex::encode(f.as_slice()))),
        DynSolValue::CustomStruct { tuple, .. } => {
            Value::Array(tuple.iter().map(value_json).collect())
        }
    }
}

/// Why calldata did not decode against an ABI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Fewer than four bytes of calldata.
    #[error("calldata is shorter than a 4-byte selector")]
    NoSelector,
    /// The selector is not a function of the ABI.
    #[error("selector 0x{selector} is not a function of ABI {abi}")]
    UnknownSelector {
        /// Hex selector.
        selector: String,
        /// ABI name.
        abi: String,
    },
    /// The arguments do not decode, or are not the canonical encoding.
    #[error("calldata for {signature} does not decode exactly: {reason}")]
    NotExact {
        /// The function tried.
        signature: String,
        /// What was wrong.
        reason: String,
    },
}

impl Abi {
    /// Parses standard Solidity ABI JSON (an array of items, or a solc artifact with `abi`).
    pub fn from_json(name: &str, json: &str) -> Result<Abi, String> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("ABI {name}: invalid JSON: {e}"))?;
        let items = match value {
            serde_json::Value::Object(mut o) if o.contains_key("abi") => {
                o.remove("abi").unwrap_or_default()
            }
            v => v,
        };
        let abi: JsonAbi = serde_json::from_value(items)
            .map_err(|e| format!("ABI {name}: not a Solidity ABI: {e}"))?;
        let by_selector = abi
            .functions()
            .map(|f| (f.selector(), f.clone()))
            .collect::<HashMap<_, _>>();
        if by_selector.is_empty() {
            return Err(format!("ABI {name}: has no functions"));
        }
        let signatures = by_selector
            .iter()
            .map(|(s, f)| (*s, f.signature()))
            .collect();
        Ok(Abi {
            name: name.to_string(),
            by_selector,
            signatures,
        })
    }

    /// The ABIs keyguard ships, by name.
    pub fn builtin(name: &str) -> Option<Arc<Abi>> {
        let json = match name {
            "erc20" => ERC20_JSON,
            "erc721" => ERC721_JSON,
            _ => return None,
        };
        Abi::from_json(name, json).ok().map(Arc::new)
    }

    /// Whether `name` is a function name or full signature of this ABI.
    pub fn has_function(&self, name: &str) -> bool {
        self.by_selector
            .values()
            .any(|f| f.name == name || f.signature() == name)
    }

    /// Whether some function named in `functions` (every function when empty) has an
    /// argument called `arg` (unnamed parameters are `arg0`, `arg1`, ...).
    pub fn has_argument(&self, functions: &[String], arg: &str) -> bool {
        self.by_selector.values().any(|f| {
            (functions.is_empty()
                || functions
                    .iter()
                    .any(|n| *n == f.name || *n == f.signature()))
                && f.inputs
                    .iter()
                    .enumerate()
                    .any(|(i, p)| p.name == arg || (p.name.is_empty() && format!("arg{i}") == arg))
        })
    }

    /// Every function, for listing in errors.
    pub fn function_signatures(&self) -> Vec<String> {
        let mut v: Vec<_> = self.by_selector.values().map(|f| f.signature()).collect();
        v.sort();
        v
    }

    /// The function `input`'s selector names, however the rest is encoded: `(name,
    /// signature, payable)`. Deny rules match on this (a contract runs a call whose arguments
    /// keyguard cannot decode exactly), and value is allowed only to payable functions.
    pub(crate) fn function_of(&self, input: &[u8]) -> Option<(&str, &str, bool)> {
        let selector = Selector::from(<[u8; 4]>::try_from(input.get(..4)?).ok()?);
        let f = self.by_selector.get(&selector)?;
        let signature = self.signatures.get(&selector)?;
        let payable = f.state_mutability == alloy_json_abi::StateMutability::Payable;
        Some((f.name.as_str(), signature.as_str(), payable))
    }

    fn signature_of(&self, selector: &Selector, function: &Function) -> String {
        self.signatures
            .get(selector)
            .cloned()
            .unwrap_or_else(|| function.signature())
    }

    /// Decodes `input` exactly (see the module docs).
    pub fn decode(&self, input: &[u8]) -> Result<DecodedCall, CallError> {
        let selector: [u8; 4] = input
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or(CallError::NoSelector)?;
        let selector = Selector::from(selector);
        let function =
            self.by_selector
                .get(&selector)
                .ok_or_else(|| CallError::UnknownSelector {
                    selector: hex::encode(selector),
                    abi: self.name.clone(),
                })?;
        let not_exact = |reason: String| CallError::NotExact {
            signature: self.signature_of(&selector, function),
            reason,
        };
        let types = function
            .inputs
            .iter()
            .map(|p| p.resolve())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| not_exact(e.to_string()))?;
        crate::abi_bounds::check(&types, &input[4..]).map_err(|e| {
            not_exact(match e {
                crate::abi_bounds::Overrun::TooManyValues { limit } => format!(
                    "decoding would build more than {limit} values, the cap for {} bytes of \
                     arguments (offsets reused: not a canonical encoding)",
                    input.len() - 4
                ),
                crate::abi_bounds::Overrun::OutOfBounds => {
                    "an offset or length points outside the calldata".to_owned()
                }
            })
        })?;
        let values = function
            .abi_decode_input(&input[4..])
            .map_err(|e| not_exact(e.to_string()))?;
        // Without the selector: `abi_encode_input` would hash the signature again.
        let again = function
            .abi_encode_input_raw(&values)
            .map_err(|e| not_exact(e.to_string()))?;
        if again != input[4..] {
            return Err(not_exact(format!(
                "{} bytes given, the canonical encoding of the decoded arguments is {} bytes \
                 or differs (trailing bytes, dirty padding or non-canonical offsets)",
                input.len(),
                again.len() + 4
            )));
        }
        let args = function
            .inputs
            .iter()
            .zip(values)
            .enumerate()
            .map(|(i, (p, v))| {
                let name = if p.name.is_empty() {
                    format!("arg{i}")
                } else {
                    p.name.clone()
                };
                (name, v)
            })
            .collect();
        Ok(DecodedCall {
            function: function.name.clone(),
            signature: self.signature_of(&selector, function),
            args,
        })
    }
}
