//! geth's `TransactionArgs`, read strictly into a typed transaction (pass 1 decoding).
//!
//! Every field is named in its error; unknown fields are refused rather than dropped, because a
//! field keyguard ignores is a field the client believes was signed but was not.

use alloy_consensus::{
    TxEip1559, TxEip2930, TxEip4844, TxEip4844Variant, TxEip7702, TxLegacy, TypedTransaction,
};
use alloy_eips::eip2930::{AccessList, AccessListItem};
use alloy_eips::eip7702::{Authorization, SignedAuthorization};
use alloy_primitives::{Bytes, TxKind, B256, U256};
use keyguard_chain::Rejection;
use serde_json::{Map, Value};

use crate::wire;
use crate::TxIntent;

const KNOWN_FIELDS: &[&str] = &[
    "from",
    "to",
    "gas",
    "gasPrice",
    "maxFeePerGas",
    "maxPriorityFeePerGas",
    "value",
    "nonce",
    "data",
    "input",
    "chainId",
    "accessList",
    "maxFeePerBlobGas",
    "blobVersionedHashes",
    "authorizationList",
    "type",
    "blobs",
    "commitments",
    "proofs",
];

/// Version byte of a KZG blob commitment hash (EIP-4844).
const KZG_VERSION: u8 = 0x01;

/// Decodes the params of `eth_signTransaction` (`[TransactionArgs]`) into an intent.
pub fn decode_sign_transaction_params(params: &Value) -> Result<TxIntent, Rejection> {
    let list = params
        .as_array()
        .ok_or_else(|| Rejection::invalid("params", "expected [TransactionArgs]"))?;
    match list.as_slice() {
        [args] => decode_transaction_args(args),
        _ => Err(Rejection::invalid(
            "params",
            format!(
                "expected exactly one TransactionArgs object, got {}",
                list.len()
            ),
        )),
    }
}

/// The fields of a request, with JSON `null` treated as absent (as geth does).
struct Args<'a>(&'a Map<String, Value>);

impl<'a> Args<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn require(&self, name: &str) -> Result<&'a Value, Rejection> {
        self.get(name)
            .ok_or_else(|| Rejection::invalid(name, "missing (keyguard does not fill it in)"))
    }

    fn forbid(&self, names: &[&str], ty: u8) -> Result<(), Rejection> {
        match names.iter().find(|n| self.get(n).is_some()) {
            Some(n) => Err(Rejection::invalid(
                *n,
                format!("not allowed in a type {ty} transaction"),
            )),
            None => Ok(()),
        }
    }
}

/// Decodes one `TransactionArgs` object.
pub fn decode_transaction_args(v: &Value) -> Result<TxIntent, Rejection> {
    if !v.is_object() {
        // Found by fuzzing: the error for a non-object must still name where it was.
        return Err(Rejection::invalid(
            "params[0]",
            "expected a TransactionArgs object",
        ));
    }
    let args = Args(wire::object("", v, KNOWN_FIELDS)?);
    if let Some(f) = ["blobs", "commitments", "proofs"]
        .into_iter()
        .find(|f| args.get(f).is_some())
    {
        return Err(Rejection::invalid(
            f,
            "blob sidecars are not signed here; send blobVersionedHashes only",
        ));
    }

    let from = wire::address("from", args.require("from")?)?;
    let ty = tx_type(&args)?;
    let chain_id = wire::quantity_u64("chainId", args.require("chainId")?)?;
    let nonce = wire::quantity_u64("nonce", args.require("nonce")?)?;
    // EIP-2681: no valid transaction has nonce 2^64-1 (the account nonce could never pass it),
    // so a signature for one is useless to an honest caller and only a boundary to probe.
    if nonce == u64::MAX {
        return Err(Rejection::invalid(
            "nonce",
            "2^64-1 is not a valid transaction nonce (EIP-2681)",
        ));
    }
    let gas_limit = wire::quantity_u64("gas", args.require("gas")?)?;
    let value = match args.get("value") {
        Some(v) => wire::quantity("value", v, 256)?,
        None => U256::ZERO,
    };
    let input = input(&args)?;
    let to = args.get("to").map(|v| wire::address("to", v)).transpose()?;
    let kind = to.map_or(TxKind::Create, TxKind::Call);
    let need_to = |ty: u8| {
        to.ok_or_else(|| Rejection::invalid("to", format!("required in a type {ty} transaction")))
    };

    let tx: TypedTransaction = match ty {
        0 => {
            args.forbid(&DYNAMIC_AND_LATER, 0)?;
            args.forbid(&["accessList"], 0)?;
            TxLegacy {
                chain_id: Some(chain_id),
                nonce,
                gas_price: wire::quantity_u128("gasPrice", args.require("gasPrice")?)?,
                gas_limit,
                to: kind,
                value,
                input,
            }
            .into()
        }
        1 => {
            args.forbid(&DYNAMIC_AND_LATER, 1)?;
            TxEip2930 {
                chain_id,
                nonce,
                gas_price: wire::quantity_u128("gasPrice", args.require("gasPrice")?)?,
                gas_limit,
                to: kind,
                value,
                access_list: access_list(&args)?,
                input,
            }
            .into()
        }
        2 => {
            args.forbid(&["gasPrice", "maxFeePerBlobGas", "blobVersionedHashes"], 2)?;
            args.forbid(&["authorizationList"], 2)?;
            let (max_fee_per_gas, max_priority_fee_per_gas) = dynamic_fees(&args)?;
            TxEip1559 {
                chain_id,
                nonce,
                gas_limit,
                max_fee_per_gas,
                max_priority_fee_per_gas,
                to: kind,
                value,
                access_list: access_list(&args)?,
                input,
            }
            .into()
        }
        3 => {
            args.forbid(&["gasPrice", "authorizationList"], 3)?;
            let (max_fee_per_gas, max_priority_fee_per_gas) = dynamic_fees(&args)?;
            TypedTransaction::Eip4844(TxEip4844Variant::TxEip4844(TxEip4844 {
                chain_id,
                nonce,
                gas_limit,
                max_fee_per_gas,
                max_priority_fee_per_gas,
                to: need_to(3)?,
                value,
                access_list: access_list(&args)?,
                blob_versioned_hashes: blob_hashes(&args)?,
                max_fee_per_blob_gas: wire::quantity_u128(
                    "maxFeePerBlobGas",
                    args.require("maxFeePerBlobGas")?,
                )?,
                input,
            }))
        }
        4 => {
            args.forbid(&["gasPrice", "maxFeePerBlobGas", "blobVersionedHashes"], 4)?;
            let (max_fee_per_gas, max_priority_fee_per_gas) = dynamic_fees(&args)?;
            TxEip7702 {
                chain_id,
                nonce,
                gas_limit,
                max_fee_per_gas,
                max_priority_fee_per_gas,
                to: need_to(4)?,
                value,
                access_list: access_list(&args)?,
                authorization_list: authorizations(&args)?,
                input,
            }
            .into()
        }
        other => {
            return Err(Rejection::invalid(
                "type",
                format!("unsupported transaction type {other}"),
            ))
        }
    };
    Ok(TxIntent { from, tx })
}

const DYNAMIC_AND_LATER: [&str; 5] = [
    "maxFeePerGas",
    "maxPriorityFeePerGas",
    "maxFeePerBlobGas",
    "blobVersionedHashes",
    "authorizationList",
];

/// The type geth would pick (`TransactionArgs.ToTransaction`), unless `type` names one.
fn tx_type(args: &Args<'_>) -> Result<u8, Rejection> {
    if let Some(t) = args.get("type") {
        let t = wire::quantity_u64("type", t)?;
        return u8::try_from(t).ok().filter(|t| *t <= 4).ok_or_else(|| {
            Rejection::invalid("type", format!("unsupported transaction type {t}"))
        });
    }
    Ok(if args.get("authorizationList").is_some() {
        4
    } else if args.get("blobVersionedHashes").is_some() {
        3
    } else if args.get("maxFeePerGas").is_some() || args.get("maxPriorityFeePerGas").is_some() {
        2
    } else if args.get("accessList").is_some() {
        1
    } else {
        0
    })
}

fn input(args: &Args<'_>) -> Result<Bytes, Rejection> {
    let data = args
        .get("data")
        .map(|v| wire::bytes("data", v))
        .transpose()?;
    let input = args
        .get("input")
        .map(|v| wire::bytes("input", v))
        .transpose()?;
    match (data, input) {
        (Some(d), Some(i)) if d != i => Err(Rejection::invalid(
            "input",
            "both data and input are set and differ",
        )),
        (d, i) => Ok(i.or(d).unwrap_or_default()),
    }
}

fn dynamic_fees(args: &Args<'_>) -> Result<(u128, u128), Rejection> {
    let max_fee = wire::quantity_u128("maxFeePerGas", args.require("maxFeePerGas")?)?;
    let tip = wire::quantity_u128(
        "maxPriorityFeePerGas",
        args.require("maxPriorityFeePerGas")?,
    )?;
    if tip > max_fee {
        return Err(Rejection::invalid(
            "maxPriorityFeePerGas",
            "greater than maxFeePerGas",
        ));
    }
    Ok((max_fee, tip))
}

fn access_list(args: &Args<'_>) -> Result<AccessList, Rejection> {
    let Some(v) = args.get("accessList") else {
        return Ok(AccessList::default());
    };
    let items = wire::array("accessList", v)?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let e = Entry::new(
                format!("accessList[{i}]"),
                item,
                &["address", "storageKeys"],
            )?;
            let address = wire::address(&e.name("address"), e.get("address")?)?;
            let keys_field = e.name("storageKeys");
            let storage_keys = wire::array(&keys_field, e.get("storageKeys")?)?
                .iter()
                .enumerate()
                .map(|(j, k)| wire::b256(&format!("{keys_field}[{j}]"), k))
                .collect::<Result<Vec<B256>, _>>()?;
            Ok(AccessListItem {
                address,
                storage_keys,
            })
        })
        .collect::<Result<Vec<_>, Rejection>>()?;
    Ok(AccessList(items))
}

/// A required list that must hold at least one element.
fn non_empty<'a>(args: &Args<'a>, name: &str, why: &str) -> Result<&'a Vec<Value>, Rejection> {
    let list = wire::array(name, args.require(name)?)?;
    if list.is_empty() {
        return Err(Rejection::invalid(name, why));
    }
    Ok(list)
}

/// One object inside a list (`accessList[0]`), whose fields are named by their full path.
struct Entry<'a> {
    path: String,
    fields: &'a Map<String, Value>,
}

impl<'a> Entry<'a> {
    fn new(path: String, v: &'a Value, known: &[&str]) -> Result<Self, Rejection> {
        let fields = wire::object(&path, v, known)?;
        Ok(Entry { path, fields })
    }

    fn name(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn get(&self, key: &str) -> Result<&'a Value, Rejection> {
        self.fields
            .get(key)
            .filter(|v| !v.is_null())
            .ok_or_else(|| Rejection::invalid(self.name(key), "missing"))
    }
}

fn blob_hashes(args: &Args<'_>) -> Result<Vec<B256>, Rejection> {
    let list = non_empty(
        args,
        "blobVersionedHashes",
        "a blob transaction needs at least one blob",
    )?;
    list.iter()
        .enumerate()
        .map(|(i, h)| {
            let field = format!("blobVersionedHashes[{i}]");
            let hash = wire::b256(&field, h)?;
            if hash[0] != KZG_VERSION {
                return Err(Rejection::invalid(
                    field,
                    format!("version byte {:#04x}, expected 0x01 (KZG)", hash[0]),
                ));
            }
            Ok(hash)
        })
        .collect()
}

fn authorizations(args: &Args<'_>) -> Result<Vec<SignedAuthorization>, Rejection> {
    let list = non_empty(
        args,
        "authorizationList",
        "a type 4 transaction needs at least one authorization",
    )?;
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let e = Entry::new(
                format!("authorizationList[{i}]"),
                a,
                &["chainId", "address", "nonce", "yParity", "r", "s"],
            )?;
            let y_parity = wire::quantity_u64(&e.name("yParity"), e.get("yParity")?)?;
            if y_parity > 1 {
                return Err(Rejection::invalid(e.name("yParity"), "must be 0 or 1"));
            }
            let inner = Authorization {
                chain_id: wire::quantity(&e.name("chainId"), e.get("chainId")?, 256)?,
                address: wire::address(&e.name("address"), e.get("address")?)?,
                nonce: wire::quantity_u64(&e.name("nonce"), e.get("nonce")?)?,
            };
            Ok(SignedAuthorization::new_unchecked(
                inner,
                y_parity as u8,
                wire::quantity(&e.name("r"), e.get("r")?, 256)?,
                wire::quantity(&e.name("s"), e.get("s")?, 256)?,
            ))
        })
        .collect()
}
