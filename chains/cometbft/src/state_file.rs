//! `priv_validator_state.json` as CometBFT's FilePV and tmkms write it, so an operator can move
//! a validator to keyguard (and back) without a window in which it could double sign.
//!
//! The two formats number steps differently (FilePV: propose 1, prevote 2, precommit 3; tmkms:
//! 0, 1, 2), so the format is recognised by its fields, never assumed: a tmkms precommit read
//! as a FilePV prevote would let keyguard sign a conflicting precommit.

use base64::Engine;
use serde_json::{json, Value};

use crate::types::{Step, Timestamp};
use crate::watermark::SignedState;

/// Which signer wrote the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFormat {
    /// CometBFT FilePV (`signature`/`signbytes`).
    CometBft,
    /// tmkms (`block_id`).
    Tmkms,
}

/// An unreadable or ambiguous state file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A field is missing or has the wrong type.
    #[error("field {field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Neither format's fields are present.
    #[error("cannot tell whether this is a CometBFT or a tmkms state file (no signbytes, signature or block_id field); both number steps differently")]
    UnknownFormat,
}

fn field(field: &'static str, reason: impl Into<String>) -> StateFileError {
    StateFileError::Field {
        field,
        reason: reason.into(),
    }
}

fn int_field(v: &Value, name: &'static str) -> Result<i64, StateFileError> {
    match v.get(name) {
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| field(name, format!("{s:?} is not an integer"))),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| field(name, "not an integer")),
        _ => Err(field(name, "missing")),
    }
}

/// Parses a state file; `format` forces a format when detection is not wanted.
pub fn parse(
    text: &str,
    format: Option<StateFormat>,
) -> Result<(StateFormat, SignedState), StateFileError> {
    let v: Value = serde_json::from_str(text)?;
    let format = match format {
        Some(f) => f,
        None if v.get("signbytes").is_some() || v.get("signature").is_some() => {
            StateFormat::CometBft
        }
        None if v.get("block_id").is_some() => StateFormat::Tmkms,
        // A fresh FilePV state is {"height":"0","round":0,"step":0}: nothing signed, either way.
        None if int_field(&v, "height")? == 0 => StateFormat::CometBft,
        None => return Err(StateFileError::UnknownFormat),
    };
    let height = int_field(&v, "height")?;
    let round =
        i32::try_from(int_field(&v, "round")?).map_err(|_| field("round", "out of range"))?;
    let raw_step = int_field(&v, "step")?;
    if height < 0 || round < 0 {
        return Err(field("height", "negative height or round"));
    }
    let step = match format {
        StateFormat::CometBft => Step::from_number(raw_step),
        StateFormat::Tmkms if height == 0 => Some(Step::None),
        StateFormat::Tmkms => Step::from_number(raw_step + 1),
    }
    .ok_or_else(|| field("step", format!("{raw_step} is not a step")))?;
    let mut state = SignedState {
        height,
        round,
        step,
        ..SignedState::default()
    };
    match format {
        StateFormat::CometBft => {
            if let Some(s) = v.get("signbytes").and_then(Value::as_str) {
                state.sign_bytes = hex::decode(s).map_err(|e| field("signbytes", e.to_string()))?;
            }
            if let Some(s) = v.get("signature").and_then(Value::as_str) {
                state.signature = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| field("signature", e.to_string()))?;
            }
        }
        StateFormat::Tmkms => {
            if let Some(b) = v.get("block_id").filter(|b| !b.is_null()) {
                state.block_id = tmkms_block_id(b)?;
            }
        }
    }
    Ok((format, state))
}

fn tmkms_block_id(b: &Value) -> Result<Vec<u8>, StateFileError> {
    let hex_of = |v: Option<&Value>| -> Result<Vec<u8>, StateFileError> {
        match v.and_then(Value::as_str) {
            Some(s) => hex::decode(s).map_err(|e| field("block_id", e.to_string())),
            None => Ok(Vec::new()),
        }
    };
    let parts = b.get("parts").or_else(|| b.get("part_set_header"));
    let bid = crate::types::BlockId {
        hash: hex_of(b.get("hash"))?,
        parts_total: parts
            .and_then(|p| p.get("total"))
            .and_then(|t| {
                t.as_u64()
                    .or_else(|| t.as_str().and_then(|s| s.parse().ok()))
            })
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(0),
        parts_hash: hex_of(parts.and_then(|p| p.get("hash")))?,
    };
    Ok(bid.key())
}

/// The state as CometBFT's FilePV would write it (to hand a validator back to a file signer).
pub fn export_cometbft(state: &SignedState) -> Value {
    let mut v = json!({
        "height": state.height.to_string(),
        "round": state.round,
        "step": state.step.number(),
    });
    if let Some(o) = v.as_object_mut() {
        if !state.signature.is_empty() {
            o.insert(
                "signature".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(&state.signature)
                    .into(),
            );
        }
        if !state.sign_bytes.is_empty() {
            o.insert(
                "signbytes".into(),
                hex::encode_upper(&state.sign_bytes).into(),
            );
        }
    }
    v
}

/// The timestamp of the last signature, when the sign bytes are known.
pub fn last_timestamp(state: &SignedState) -> Option<Timestamp> {
    crate::types::timestamp_of_sign_bytes(state.step, &state.sign_bytes)
}
