//! Import of Ethereum keystore v3 files (scrypt or pbkdf2, aes-128-ctr): the file is checked
//! before eth-keystore reads it, decrypted, and its `address` field matched against the key.

use std::fs;
use std::path::Path;

use alloy_primitives::Address;
use keyguard_chain::Scheme;
use zeroize::Zeroizing;

use super::secret::SecretKey;
use super::{io_err, KeystoreError};

/// Web3 keystores whose scrypt needs more than 1 GiB (128 * r * n bytes) are refused: an
/// imported file must not be able to take the daemon down by memory exhaustion. geth's
/// standard parameters (n = 2^18, r = 8) need 256 MiB.
const MAX_SCRYPT_MEMORY: u64 = 1 << 30;

/// Decrypts an Ethereum keystore v3 file into a secp256k1 key. If the file has an `address`
/// field it must match the key.
pub(super) fn decrypt_keystore_v3(path: &Path, password: &str) -> Result<SecretKey, KeystoreError> {
    let claimed_address = check_keystore_v3(path)?;
    let secret = Zeroizing::new(eth_keystore::decrypt_key(path, password).map_err(
        |e| match e {
            eth_keystore::KeystoreError::MacMismatch => {
                KeystoreError::KeystoreV3("wrong password (MAC mismatch)".into())
            }
            other => KeystoreError::KeystoreV3(other.to_string()),
        },
    )?);
    let key = SecretKey::from_bytes(Scheme::Secp256k1, &secret).ok_or_else(|| {
        KeystoreError::InvalidSecret("decrypted keystore v3 secret is not a secp256k1 key".into())
    })?;
    if let Some(claimed) = claimed_address {
        let derived =
            keyguard_evm::address_of(&key.public_key()).expect("secp256k1 key has an address");
        if claimed != derived {
            return Err(KeystoreError::KeystoreV3(format!(
                "file claims address {claimed}, the key's address is {derived}"
            )));
        }
    }
    Ok(key)
}

/// Checks a keystore v3 file before eth-keystore reads it: that crate indexes buffers by the
/// lengths the file declares and would panic on a short `iv` or `dklen`, ignores `cipher`, and
/// lets `n` ask for any amount of memory. Returns the `address` field, if any.
fn check_keystore_v3(path: &Path) -> Result<Option<Address>, KeystoreError> {
    let bad = |reason: &str| KeystoreError::KeystoreV3(format!("{}: {reason}", path.display()));
    let text = fs::read(path).map_err(io_err(path))?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    if json.get("version").and_then(|v| v.as_u64()) != Some(3) {
        return Err(bad("not a version 3 keystore"));
    }
    let crypto = json
        .get("crypto")
        .ok_or_else(|| bad("no `crypto` object (a `Crypto` key must be renamed to `crypto`)"))?;
    let field = |name: &str| {
        crypto
            .get(name)
            .ok_or_else(|| bad(&format!("missing crypto.{name}")))
    };
    let hex_len = |value: &serde_json::Value| {
        value
            .as_str()
            .and_then(|s| hex::decode(s).ok())
            .map(|b| b.len())
    };
    if field("cipher")?.as_str() != Some("aes-128-ctr") {
        return Err(bad("only the aes-128-ctr cipher is supported"));
    }
    let iv = field("cipherparams")?.get("iv");
    if iv.and_then(hex_len) != Some(16) {
        return Err(bad("cipherparams.iv must be 16 bytes of hex"));
    }
    if hex_len(field("ciphertext")?) != Some(32) {
        return Err(bad("ciphertext must be 32 bytes of hex"));
    }
    if hex_len(field("mac")?) != Some(32) {
        return Err(bad("mac must be 32 bytes of hex"));
    }
    let params = field("kdfparams")?;
    if params.get("dklen").and_then(|v| v.as_u64()) != Some(32) {
        return Err(bad("kdfparams.dklen must be 32"));
    }
    if params.get("salt").and_then(hex_len).is_none() {
        return Err(bad("kdfparams.salt must be hex"));
    }
    let number = |name: &str| params.get(name).and_then(|v| v.as_u64());
    match field("kdf")?.as_str() {
        Some("scrypt") => {
            let n = number("n").ok_or_else(|| bad("kdfparams.n missing"))?;
            if n < 2 || !n.is_power_of_two() {
                return Err(bad("scrypt n must be a power of two"));
            }
            let r = number("r").ok_or_else(|| bad("kdfparams.r missing"))?;
            let p = number("p").ok_or_else(|| bad("kdfparams.p missing"))?;
            if r == 0 || p == 0 || p > 16 {
                return Err(bad("scrypt r or p out of range"));
            }
            if 128u64.saturating_mul(r).saturating_mul(n) > MAX_SCRYPT_MEMORY {
                return Err(bad("scrypt parameters need more than 1 GiB of memory"));
            }
        }
        Some("pbkdf2") => {
            if params.get("prf").and_then(|v| v.as_str()) != Some("hmac-sha256") {
                return Err(bad("pbkdf2 prf must be hmac-sha256"));
            }
            if !number("c").is_some_and(|c| (1..=u64::from(u32::MAX)).contains(&c)) {
                return Err(bad("pbkdf2 c missing or out of range"));
            }
        }
        _ => return Err(bad("kdf must be scrypt or pbkdf2")),
    }
    match json.get("address") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => {
            let text = value
                .as_str()
                .ok_or_else(|| bad("address must be a string"))?;
            let text = text.strip_prefix("0x").unwrap_or(text);
            let bytes: [u8; 20] = hex::decode(text)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("address must be 20 bytes of hex"))?;
            Ok(Some(Address::from(bytes)))
        }
    }
}
