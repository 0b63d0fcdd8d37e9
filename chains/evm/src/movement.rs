//! Calldata that moves assets, recognised by selector whatever the destination and whatever
//! rule allowed it: ERC-20, ERC-721, ERC-1155 and Permit2 transfers, approvals and revocations.
//!
//! The attack this stops: tokens ignore trailing bytes and dirty padding, so
//! `transfer(attacker, 10^12) ++ 00` moves the tokens while an exact decoder sees "not a
//! transfer" and skips every token limit. Here a known movement selector either decodes to the
//! very bytes given (decode, re-encode, compare) or the request is refused as
//! `evm.movement_undecodable`; there is no third outcome.
//!
//! Selectors shared by ERC-20 and ERC-721 (`transferFrom`, `approve`) are read with their ERC-20
//! meaning (the third word is an amount); an NFT's token id then counts as an amount, which is
//! stricter, never looser.

use std::sync::OnceLock;

use alloy_dyn_abi::{DynSolValue, JsonAbiExt};
use alloy_json_abi::Function;
use alloy_primitives::{Address, U256};
use keyguard_chain::Rejection;

use crate::token::{MoveKind, TokenMove};

/// The rule refusing calldata that starts with a movement selector but is not its exact encoding.
pub const UNDECODABLE: &str = "evm.movement_undecodable";

type Reader = fn(Address, &[DynSolValue]) -> Option<Vec<TokenMove>>;

/// Every recognised movement function (human-readable signature, reader).
const KNOWN: &[(&str, Reader)] = &[
    // ERC-20 (and ERC-721's identical transferFrom/approve).
    ("transfer(address to,uint256 amount)", |t, a| {
        one(
            t,
            MoveKind::Transfer,
            addr(a, 0)?,
            uint(a, 1)?,
            "input.amount",
        )
    }),
    (
        "transferFrom(address from,address to,uint256 amount)",
        |t, a| {
            one(
                t,
                MoveKind::Transfer,
                addr(a, 1)?,
                uint(a, 2)?,
                "input.amount",
            )
        },
    ),
    ("approve(address spender,uint256 amount)", |t, a| {
        grant(t, addr(a, 0)?, uint(a, 1)?, "input.amount")
    }),
    (
        "increaseAllowance(address spender,uint256 addedValue)",
        |t, a| grant(t, addr(a, 0)?, uint(a, 1)?, "input.addedValue"),
    ),
    (
        "decreaseAllowance(address spender,uint256 subtractedValue)",
        |t, a| {
            one(
                t,
                MoveKind::Revoke,
                addr(a, 0)?,
                uint(a, 1)?,
                "input.subtractedValue",
            )
        },
    ),
    // ERC-721 and ERC-1155 share setApprovalForAll.
    (
        "setApprovalForAll(address operator,bool approved)",
        |t, a| {
            let all = matches!(a.get(1)?, DynSolValue::Bool(true));
            grant(
                t,
                addr(a, 0)?,
                if all { U256::MAX } else { U256::ZERO },
                "input.approved",
            )
        },
    ),
    (
        "safeTransferFrom(address from,address to,uint256 tokenId)",
        |t, a| {
            one(
                t,
                MoveKind::Transfer,
                addr(a, 1)?,
                U256::from(1),
                "input.tokenId",
            )
        },
    ),
    (
        "safeTransferFrom(address from,address to,uint256 tokenId,bytes data)",
        |t, a| {
            one(
                t,
                MoveKind::Transfer,
                addr(a, 1)?,
                U256::from(1),
                "input.tokenId",
            )
        },
    ),
    // ERC-1155.
    (
        "safeTransferFrom(address from,address to,uint256 id,uint256 value,bytes data)",
        |t, a| {
            one(
                t,
                MoveKind::Transfer,
                addr(a, 1)?,
                uint(a, 3)?,
                "input.value",
            )
        },
    ),
    (
        "safeBatchTransferFrom(address from,address to,uint256[] ids,uint256[] values,bytes data)",
        |t, a| {
            let DynSolValue::Array(values) = a.get(3)? else {
                return None;
            };
            let mut sum = U256::ZERO;
            for v in values {
                sum = sum.saturating_add(v.as_uint()?.0);
            }
            one(t, MoveKind::Transfer, addr(a, 1)?, sum, "input.values")
        },
    ),
    // Permit2 AllowanceTransfer (the token is an argument, not the destination).
    (
        "approve(address token,address spender,uint160 amount,uint48 expiration)",
        |_, a| grant(addr(a, 0)?, addr(a, 1)?, uint(a, 2)?, "input.amount"),
    ),
    (
        "transferFrom(address from,address to,uint160 amount,address token)",
        |_, a| {
            one(
                addr(a, 3)?,
                MoveKind::Transfer,
                addr(a, 1)?,
                uint(a, 2)?,
                "input.amount",
            )
        },
    ),
    (
        "transferFrom((address,address,uint160,address)[] transferDetails)",
        |_, a| {
            let DynSolValue::Array(items) = a.first()? else {
                return None;
            };
            items
                .iter()
                .map(|item| {
                    let f = item.as_fixed_seq().or_else(|| item.as_tuple())?;
                    Some(TokenMove {
                        token: addr(f, 3)?,
                        kind: MoveKind::Transfer,
                        counterparty: addr(f, 1)?,
                        amount: uint(f, 2)?,
                        field: "input.transferDetails.amount",
                    })
                })
                .collect()
        },
    ),
];

fn addr(a: &[DynSolValue], i: usize) -> Option<Address> {
    a.get(i)?.as_address()
}

fn uint(a: &[DynSolValue], i: usize) -> Option<U256> {
    Some(a.get(i)?.as_uint()?.0)
}

fn one(
    token: Address,
    kind: MoveKind,
    counterparty: Address,
    amount: U256,
    field: &'static str,
) -> Option<Vec<TokenMove>> {
    Some(vec![TokenMove {
        token,
        kind,
        counterparty,
        amount,
        field,
    }])
}

/// An approval of zero grants nothing: it is a revocation.
fn grant(
    token: Address,
    spender: Address,
    amount: U256,
    field: &'static str,
) -> Option<Vec<TokenMove>> {
    let kind = if amount.is_zero() {
        MoveKind::Revoke
    } else {
        MoveKind::Approval
    };
    one(token, kind, spender, amount, field)
}

/// `(selector, function, reader)`; selectors computed once (hashing per request would cost
/// more than the check).
fn table() -> &'static [([u8; 4], Function, Reader)] {
    static TABLE: OnceLock<Vec<([u8; 4], Function, Reader)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        KNOWN
            .iter()
            // Every entry parses (a test counts them); one that did not would be skipped.
            .filter_map(|(sig, read)| {
                Function::parse(sig)
                    .ok()
                    .map(|f| (f.selector().0, f, *read))
            })
            .collect()
    })
}

/// The canonical signatures of every recognised movement function with their selectors (for
/// the docs and tests).
pub fn known_selectors() -> Vec<(String, [u8; 4])> {
    table()
        .iter()
        .map(|(s, f, _)| (f.signature(), *s))
        .collect()
}

/// Whether `input` starts with a recognised movement selector.
pub fn is_movement(input: &[u8]) -> bool {
    input
        .get(..4)
        .is_some_and(|s| table().iter().any(|(sel, ..)| sel[..] == *s))
}

/// The asset movements of calldata sent to `to`: empty when the selector is not a movement;
/// an error naming [`UNDECODABLE`] when it is one but the bytes are not its exact encoding.
pub fn call_moves(to: Address, input: &[u8]) -> Result<Vec<TokenMove>, Rejection> {
    let Some(selector) = input.get(..4) else {
        return Ok(Vec::new());
    };
    let mut candidates = table()
        .iter()
        .filter(|(sel, ..)| sel[..] == *selector)
        .peekable();
    if candidates.peek().is_none() {
        return Ok(Vec::new());
    }
    let mut why = Vec::new();
    for (_, f, read) in candidates {
        // Re-encoded without the selector (already matched; hashing it again costs more than
        // the rest of the check).
        let exact = f.abi_decode_input(&input[4..]).ok().filter(|values| {
            f.abi_encode_input_raw(values)
                .is_ok_and(|again| again.as_slice() == &input[4..])
        });
        match exact.and_then(|values| read(to, &values)) {
            Some(moves) => return Ok(moves),
            None => why.push(f.signature()),
        }
    }
    Err(Rejection::policy(
        UNDECODABLE,
        "input",
        format!(
            "calldata starts with the selector of {} but is not its exact encoding ({} bytes: \
             short, trailing bytes, dirty padding or non-canonical offsets); a token may read \
             it as a movement keyguard cannot count",
            why.join(" / "),
            input.len()
        ),
    ))
}
