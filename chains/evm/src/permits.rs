//! EIP-712 structures that move assets, recognised by their exact type (primary type name *and*
//! field list, as the contract's type hash sees them), read from the values that were hashed.
//!
//! A gasless signature moves tokens as surely as a transaction: an EIP-2612 or DAI permit, a
//! Permit2 allowance or signature transfer, an ERC-4494 NFT permit, an EIP-3009 transfer
//! authorization. A lookalike (renamed, a field added or retyped) has another type hash, so a
//! real contract would not accept it as the standard struct, and keyguard cannot tell what it
//! does: it is [`Shape::Unknown`], and a rule that constrains spenders, tokens or amounts
//! refuses it (`evm.typed_data_unrecognised`) instead of passing it unread.

use alloy_dyn_abi::eip712::{TypeDef, TypedData};
use alloy_dyn_abi::DynSolValue;
use alloy_primitives::{Address, U256};

use crate::token::{MoveKind, TokenMove};

/// Rule name: typed data whose movement keyguard cannot extract, under a constraining rule.
pub const UNRECOGNISED: &str = "evm.typed_data_unrecognised";

/// What a typed-data request is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A recognised standard structure (`eip2612`, `dai`, ...) and its movements (none for,
    /// e.g., `CancelAuthorization`).
    Known(&'static str, Vec<TokenMove>),
    /// Anything else.
    Unknown,
}

impl Shape {
    /// The recognised standard's name, if any.
    pub fn name(&self) -> Option<&'static str> {
        match self {
            Shape::Known(n, _) => Some(n),
            Shape::Unknown => None,
        }
    }

    /// The movements (none when unknown).
    pub fn moves(&self) -> &[TokenMove] {
        match self {
            Shape::Known(_, m) => m,
            Shape::Unknown => &[],
        }
    }
}

const EIP2612: &str =
    "Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)";
const DAI: &str =
    "Permit(address holder,address spender,uint256 nonce,uint256 expiry,bool allowed)";
const ERC4494: &str = "Permit(address spender,uint256 tokenId,uint256 nonce,uint256 deadline)";
const PERMIT_DETAILS: &str =
    "PermitDetails(address token,uint160 amount,uint48 expiration,uint48 nonce)";
const PERMIT_SINGLE: &str =
    "PermitSingle(PermitDetails details,address spender,uint256 sigDeadline)";
const PERMIT_BATCH: &str =
    "PermitBatch(PermitDetails[] details,address spender,uint256 sigDeadline)";
const TOKEN_PERMISSIONS: &str = "TokenPermissions(address token,uint256 amount)";
const TRANSFER_FROM: &str =
    "PermitTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline)";
const BATCH_TRANSFER_FROM: &str = "PermitBatchTransferFrom(TokenPermissions[] permitted,\
                                   address spender,uint256 nonce,uint256 deadline)";
const WITNESS_PREFIX: &str = "PermitWitnessTransferFrom(TokenPermissions permitted,\
                              address spender,uint256 nonce,uint256 deadline,";
const BATCH_WITNESS_PREFIX: &str = "PermitBatchWitnessTransferFrom(TokenPermissions[] permitted,\
                                    address spender,uint256 nonce,uint256 deadline,";
const EIP3009_FIELDS: &str = "(address from,address to,uint256 value,uint256 validAfter,\
                              uint256 validBefore,bytes32 nonce)";
const CANCEL_AUTHORIZATION: &str = "CancelAuthorization(address authorizer,bytes32 nonce)";

/// Every recognised shape, for the docs and tests.
pub const RECOGNISED: &[&str] = &[
    EIP2612,
    DAI,
    ERC4494,
    PERMIT_SINGLE,
    PERMIT_BATCH,
    TRANSFER_FROM,
    BATCH_TRANSFER_FROM,
    "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,<Witness> <name>)",
    "PermitBatchWitnessTransferFrom(TokenPermissions[] permitted,address spender,uint256 nonce,uint256 deadline,<Witness> <name>)",
    "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)",
    "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)",
    CANCEL_AUTHORIZATION,
];

fn field<'a>(v: &'a DynSolValue, name: &str) -> Option<&'a DynSolValue> {
    let (_, names, values) = v.as_custom_struct()?;
    names
        .iter()
        .position(|n| n == name)
        .and_then(|i| values.get(i))
}

fn addr(v: &DynSolValue, name: &str) -> Option<Address> {
    field(v, name)?.as_address()
}

fn uint(v: &DynSolValue, name: &str) -> Option<U256> {
    Some(field(v, name)?.as_uint()?.0)
}

fn mv(
    token: Address,
    kind: MoveKind,
    counterparty: Address,
    amount: U256,
    field: &'static str,
) -> TokenMove {
    let kind = match kind {
        MoveKind::Approval if amount.is_zero() => MoveKind::Revoke,
        k => k,
    };
    TokenMove {
        token,
        kind,
        counterparty,
        amount,
        field,
    }
}

/// `TokenPermissions` / `PermitDetails` items (one struct or an array of them).
fn items(v: Option<&DynSolValue>) -> Option<Vec<&DynSolValue>> {
    match v? {
        DynSolValue::Array(a) | DynSolValue::FixedArray(a) => Some(a.iter().collect()),
        one @ DynSolValue::CustomStruct { .. } => Some(vec![one]),
        _ => None,
    }
}

/// Classifies typed data; any value that does not read as expected makes it [`Shape::Unknown`]
/// (which fails closed under constraining rules).
pub fn classify(data: &TypedData) -> Shape {
    read(data).unwrap_or(Shape::Unknown)
}

fn read(data: &TypedData) -> Option<Shape> {
    let defs = data.resolver.linearize(&data.primary_type).ok()?;
    let def =
        |name: &str| -> Option<&TypeDef> { defs.iter().copied().find(|d| d.type_name() == name) };
    let sig = |name: &str| def(name).map(TypeDef::eip712_encode_type);
    let primary = sig(&data.primary_type)?;
    let msg = data.coerce().ok()?;
    let spender = || addr(&msg, "spender");
    let verifying = data.domain.verifying_contract;

    let shape = match primary.as_str() {
        EIP2612 => Shape::Known(
            "eip2612",
            vec![mv(
                verifying?,
                MoveKind::Approval,
                spender()?,
                uint(&msg, "value")?,
                "message.value",
            )],
        ),
        DAI => {
            let allowed = field(&msg, "allowed")?.as_bool()?;
            let amount = if allowed { U256::MAX } else { U256::ZERO };
            Shape::Known(
                "dai",
                vec![mv(
                    verifying?,
                    MoveKind::Approval,
                    spender()?,
                    amount,
                    "message.allowed",
                )],
            )
        }
        ERC4494 => Shape::Known(
            "erc4494",
            vec![mv(
                verifying?,
                MoveKind::Approval,
                spender()?,
                U256::from(1),
                "message.tokenId",
            )],
        ),
        PERMIT_SINGLE | PERMIT_BATCH if sig("PermitDetails")? == PERMIT_DETAILS => {
            let spender = spender()?;
            let moves = items(field(&msg, "details"))?
                .into_iter()
                .map(|d| {
                    Some(mv(
                        addr(d, "token")?,
                        MoveKind::Approval,
                        spender,
                        uint(d, "amount")?,
                        "message.details.amount",
                    ))
                })
                .collect::<Option<Vec<_>>>()?;
            let name = if primary == PERMIT_SINGLE {
                "permit2_single"
            } else {
                "permit2_batch"
            };
            Shape::Known(name, moves)
        }
        p if sig("TokenPermissions").as_deref() == Some(TOKEN_PERMISSIONS) => {
            let name = if p == TRANSFER_FROM {
                "permit2_transfer"
            } else if p == BATCH_TRANSFER_FROM {
                "permit2_batch_transfer"
            } else if witness(data, p, WITNESS_PREFIX) {
                "permit2_witness_transfer"
            } else if witness(data, p, BATCH_WITNESS_PREFIX) {
                "permit2_batch_witness_transfer"
            } else {
                return None;
            };
            // The spender picks the recipient when it uses the signature: an approval of
            // `amount` to the spender, judged as one.
            let spender = spender()?;
            let moves = items(field(&msg, "permitted"))?
                .into_iter()
                .map(|t| {
                    Some(mv(
                        addr(t, "token")?,
                        MoveKind::Approval,
                        spender,
                        uint(t, "amount")?,
                        "message.permitted.amount",
                    ))
                })
                .collect::<Option<Vec<_>>>()?;
            Shape::Known(name, moves)
        }
        p if p.strip_prefix("TransferWithAuthorization") == Some(EIP3009_FIELDS)
            || p.strip_prefix("ReceiveWithAuthorization") == Some(EIP3009_FIELDS) =>
        {
            Shape::Known(
                "eip3009",
                vec![mv(
                    verifying?,
                    MoveKind::Transfer,
                    addr(&msg, "to")?,
                    uint(&msg, "value")?,
                    "message.value",
                )],
            )
        }
        CANCEL_AUTHORIZATION => Shape::Known("eip3009_cancel", Vec::new()),
        _ => return None,
    };
    Some(shape)
}

/// A Permit2 witness struct: the four standard fields, then exactly one more of a struct type
/// (its name and fields are the integrator's: the witness rides along, it moves nothing).
fn witness(data: &TypedData, primary: &str, prefix: &str) -> bool {
    let Some(rest) = primary.strip_prefix(prefix) else {
        return false;
    };
    let Some(last) = rest.strip_suffix(')') else {
        return false;
    };
    let mut parts = last.split(' ');
    let (Some(ty), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !name.is_empty()
        && !ty.contains(['[', ',', '('])
        && ty != "TokenPermissions"
        && data.resolver.contains_type_name(ty)
}

/// Whether unknown typed data looks like it could move assets (a permit-like name or field):
/// refused when the policy limits tokens, even if the rule does not list spenders.
pub fn looks_like_movement(data: &TypedData) -> bool {
    let name = data.primary_type.to_ascii_lowercase();
    if ["permit", "approv", "allowance", "authoriz", "transfer"]
        .iter()
        .any(|w| name.contains(w))
    {
        return true;
    }
    let Ok(defs) = data.resolver.linearize(&data.primary_type) else {
        return true;
    };
    defs.iter().any(|d| {
        d.prop_names().any(|p| {
            matches!(
                p.to_ascii_lowercase().as_str(),
                "spender" | "allowed" | "permitted" | "operator" | "approved" | "allowance"
            )
        })
    })
}
