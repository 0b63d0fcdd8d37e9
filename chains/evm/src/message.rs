//! `eth_sign` / `personal_sign`: EIP-191 messages, refused unless a rule allows a pattern.
//!
//! A 32-byte "message" is usually a transaction or permit hash in disguise: signing it blind is
//! exactly the chosen-plaintext attack keyguard exists to stop. So 32-byte messages need a rule
//! that says `allow_hash = true`, and text must match a configured regular expression.

use alloy_primitives::{eip191_hash_message, Address, B256};
use keyguard_chain::{Rejection, SigningPayload};
use serde::Deserialize;
use serde_json::Value;

use crate::rulecompile::{intern, Compiled};
use crate::wire;

/// One message allow rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRule {
    /// Stable name reported with decisions.
    pub name: String,
    /// Methods covered: `eth_sign`, `personal_sign`; empty means both.
    #[serde(default)]
    pub methods: Vec<String>,
    /// A regular expression the whole UTF-8 text must match (anchored at both ends: a
    /// pattern for a login message does not also allow that message with lines appended).
    pub pattern: Option<String>,
    /// `false` lets the pattern match anywhere in the text (a substring search). Almost never
    /// right: whatever surrounds the match is signed too.
    #[serde(default = "yes")]
    pub anchored: bool,
    /// Whether a bare 32-byte message (a hash) may be signed.
    #[serde(default)]
    pub allow_hash: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug)]
pub(crate) struct CompiledMessageRule {
    name: &'static str,
    methods: Vec<String>,
    pattern: Option<regex::Regex>,
    allow_hash: bool,
}

impl MessageRule {
    pub(crate) fn compile(&self, at: &str) -> Result<CompiledMessageRule, String> {
        for m in &self.methods {
            if m != "eth_sign" && m != "personal_sign" {
                return Err(format!("{at}.methods: unknown method {m:?}"));
            }
        }
        if self.pattern.is_none() && !self.allow_hash {
            return Err(format!(
                "{at}: a message rule needs a pattern (or allow_hash = true)"
            ));
        }
        // `\A(?:...)\z`: whole text, whatever anchors or flags the pattern has; a group keeps
        // alternations (`a|b`) inside the anchors.
        let pattern = self
            .pattern
            .as_deref()
            .map(|p| match self.anchored {
                true => regex::Regex::new(&format!("\\A(?:{p})\\z")),
                false => regex::Regex::new(p),
            })
            .transpose()
            .map_err(|e| format!("{at}.pattern: {e}"))?;
        Ok(CompiledMessageRule {
            name: intern(&self.name),
            methods: self.methods.clone(),
            pattern,
            allow_hash: self.allow_hash,
        })
    }
}

/// A decoded message-signing request.
#[derive(Clone, Debug)]
pub struct MessageIntent {
    /// The signing account.
    pub from: Address,
    /// `eth_sign` or `personal_sign`.
    pub method: &'static str,
    /// The message bytes (before the EIP-191 prefix).
    pub message: Vec<u8>,
}

impl MessageIntent {
    /// The EIP-191 hash keyguard signs (prefix added here, never by the client).
    pub fn hash(&self) -> B256 {
        eip191_hash_message(&self.message)
    }

    /// What the backend signs.
    pub fn payload(&self) -> SigningPayload {
        SigningPayload::Secp256k1Prehash(self.hash().0)
    }

    /// Secret-free summary for the audit log.
    pub fn summary(&self) -> Value {
        serde_json::json!({
            "from": self.from,
            "method": self.method,
            "len": self.message.len(),
            "text": std::str::from_utf8(&self.message).ok().map(|t| t.chars().take(200).collect::<String>()),
        })
    }
}

fn message_bytes(field: &str, v: &Value) -> Result<Vec<u8>, Rejection> {
    match v.as_str() {
        Some(s) if s.starts_with("0x") => Ok(wire::bytes(field, v)?.to_vec()),
        Some(s) => Ok(s.as_bytes().to_vec()),
        None => Err(Rejection::invalid(field, "expected a string")),
    }
}

/// `eth_sign [address, data]`.
pub fn decode_eth_sign(params: &Value) -> Result<MessageIntent, Rejection> {
    let list = wire::array("params", params)?;
    let [addr, data] = list.as_slice() else {
        return Err(Rejection::invalid("params", "expected [address, data]"));
    };
    Ok(MessageIntent {
        from: wire::address("address", addr)?,
        method: "eth_sign",
        message: wire::bytes("data", data)?.to_vec(),
    })
}

/// `personal_sign [data, address]` (a third password parameter, as geth allows, is refused:
/// keyguard has no per-request passwords).
pub fn decode_personal_sign(params: &Value) -> Result<MessageIntent, Rejection> {
    let list = wire::array("params", params)?;
    let [data, addr] = list.as_slice() else {
        return Err(Rejection::invalid("params", "expected [data, address]"));
    };
    Ok(MessageIntent {
        from: wire::address("address", addr)?,
        method: "personal_sign",
        message: message_bytes("data", data)?,
    })
}

/// Checks a message against the rules; returns the allowing rule.
pub(crate) fn check_message(c: &Compiled, m: &MessageIntent) -> Result<&'static str, Rejection> {
    let text = std::str::from_utf8(&m.message).ok();
    let is_hash = m.message.len() == 32;
    for r in &c.messages {
        if !r.methods.is_empty() && !r.methods.iter().any(|x| x == m.method) {
            continue;
        }
        if is_hash {
            if r.allow_hash {
                return Ok(r.name);
            }
            continue;
        }
        if let (Some(p), Some(t)) = (&r.pattern, text) {
            if p.is_match(t) {
                return Ok(r.name);
            }
        }
    }
    Err(Rejection::policy(
        keyguard_chain::rules::evm::MESSAGE,
        "data",
        if is_hash {
            "a bare 32-byte message (a hash) is refused unless a rule sets allow_hash".to_string()
        } else {
            format!("no message rule allows this {} message", m.method)
        },
    ))
}
