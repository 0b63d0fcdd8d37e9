//! Token awareness: ERC-20 `transfer`, `transferFrom`, `approve`, `increaseAllowance` (and
//! ERC-721 `setApprovalForAll`) read as an asset movement, whatever rule allowed the call.
//!
//! The classic drain is not a transfer but an approval: `approve(attacker, type(uint256).max)`
//! moves nothing today and everything tomorrow. Approvals are therefore counted as movements of
//! their full amount, and unlimited ones are refused unless a rule says otherwise.

use std::sync::{Arc, OnceLock};

use alloy_dyn_abi::DynSolValue;
use alloy_primitives::{Address, U256};

use crate::abi::Abi;

/// What a token call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveKind {
    /// Tokens leave (`transfer`, `transferFrom`).
    Transfer,
    /// A spender is allowed to take tokens (`approve`, `increaseAllowance`, permits).
    Approval,
}

/// A decoded token movement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMove {
    /// The token contract.
    pub token: Address,
    /// Transfer or approval.
    pub kind: MoveKind,
    /// Recipient of a transfer, spender of an approval.
    pub counterparty: Address,
    /// Amount in base units (`U256::MAX` for `setApprovalForAll(op, true)`).
    pub amount: U256,
    /// The calldata argument holding the amount (for error fields).
    pub field: &'static str,
}

impl TokenMove {
    /// `type(uint256).max` (ERC-20) or `type(uint160).max` (Permit2's own maximum).
    pub fn is_unlimited(&self) -> bool {
        self.kind == MoveKind::Approval
            && (self.amount == U256::MAX || self.amount == (U256::from(1) << 160) - U256::from(1))
    }

    /// JSON for audit rows and the dry run.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "token": self.token,
            "kind": match self.kind { MoveKind::Transfer => "transfer", MoveKind::Approval => "approval" },
            "counterparty": self.counterparty,
            "amount": self.amount.to_string(),
            "unlimited": self.is_unlimited(),
        })
    }
}

fn erc20() -> Option<&'static Arc<Abi>> {
    static ABI: OnceLock<Option<Arc<Abi>>> = OnceLock::new();
    ABI.get_or_init(|| Abi::builtin("erc20")).as_ref()
}

const SET_APPROVAL_FOR_ALL: [u8; 4] = [0xa2, 0x2c, 0xb4, 0x65];

fn address(v: Option<&DynSolValue>) -> Option<Address> {
    match v? {
        DynSolValue::Address(a) => Some(*a),
        _ => None,
    }
}

fn uint(v: Option<&DynSolValue>) -> Option<U256> {
    match v? {
        DynSolValue::Uint(u, _) => Some(*u),
        _ => None,
    }
}

/// Reads calldata sent to `to` as a token movement, if it is one (exact decoding only).
pub fn token_move(to: Address, input: &[u8]) -> Option<TokenMove> {
    if input.get(..4) == Some(&SET_APPROVAL_FOR_ALL[..]) {
        static NFT: OnceLock<Option<Arc<Abi>>> = OnceLock::new();
        let nft = NFT.get_or_init(|| Abi::builtin("erc721")).as_ref()?;
        let call = nft.decode(input).ok()?;
        let approved = matches!(call.arg("approved"), Some(DynSolValue::Bool(true)));
        return Some(TokenMove {
            token: to,
            kind: MoveKind::Approval,
            counterparty: address(call.arg("operator"))?,
            amount: if approved { U256::MAX } else { U256::ZERO },
            field: "input.approved",
        });
    }
    let call = erc20()?.decode(input).ok()?;
    let (kind, who, amount, field) = match call.function.as_str() {
        "transfer" => (MoveKind::Transfer, "to", "amount", "input.amount"),
        "transferFrom" => (MoveKind::Transfer, "to", "amount", "input.amount"),
        "approve" => (MoveKind::Approval, "spender", "amount", "input.amount"),
        "increaseAllowance" => (
            MoveKind::Approval,
            "spender",
            "addedValue",
            "input.addedValue",
        ),
        _ => return None,
    };
    Some(TokenMove {
        token: to,
        kind,
        counterparty: address(call.arg(who))?,
        amount: uint(call.arg(amount))?,
        field,
    })
}
