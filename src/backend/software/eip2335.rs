//! EIP-2335 BLS keystores (version 4; scrypt or pbkdf2-hmac-sha256, sha256 checksum,
//! aes-128-ctr), decrypted for import into keyguard's own sealed BLS key file.
//!
//! Hostile files: KDF costs are capped (scrypt memory ≤ 1 GiB, pbkdf2 ≤ 2^22 rounds, as
//! for v3 imports) so a file cannot exhaust memory or CPU; unknown functions, wrong lengths and
//! a checksum mismatch are refused before the secret is used; the decrypted secret must be a
//! valid BLS scalar whose public key equals the file's `pubkey` when present.

use aes::cipher::{KeyIvInit, StreamCipher};
use serde_json::Value;
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

/// scrypt memory cap (128 * r * n bytes).
const MAX_SCRYPT_MEMORY: u64 = 1 << 30;
/// pbkdf2 round cap.
const MAX_PBKDF2_ROUNDS: u64 = 1 << 22;

/// EIP-2335 password processing: NFKD, then C0, C1 and DEL control codes removed.
pub(super) fn normalize_password(p: &str) -> Zeroizing<String> {
    Zeroizing::new(
        p.nfkd()
            .filter(|c| {
                let u = *c as u32;
                !(u <= 0x1f || (0x7f..=0x9f).contains(&u))
            })
            .collect(),
    )
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value, String> {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(p)
            .ok_or_else(|| format!("missing {}", path.join(".")))?;
    }
    Ok(cur)
}

fn hex_field(v: &Value, path: &[&str]) -> Result<Vec<u8>, String> {
    let s = field(v, path)?
        .as_str()
        .ok_or_else(|| format!("{} must be a hex string", path.join(".")))?;
    hex::decode(s.trim_start_matches("0x")).map_err(|_| format!("{} is not hex", path.join(".")))
}

fn num_field(v: &Value, path: &[&str]) -> Result<u64, String> {
    field(v, path)?
        .as_u64()
        .ok_or_else(|| format!("{} must be a non-negative integer", path.join(".")))
}

/// A decrypted secret and the public key the file claims, if any.
pub(super) type Decrypted = (Zeroizing<[u8; 32]>, Option<[u8; 48]>);

/// Decrypts a version-4 keystore: the 32-byte secret and the file's `pubkey`, if any.
pub(super) fn decrypt(json: &[u8], password: &str) -> Result<Decrypted, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("version").and_then(Value::as_u64) != Some(4) {
        return Err("version must be 4 (EIP-2335)".into());
    }
    let password = normalize_password(password);
    let salt = hex_field(&v, &["crypto", "kdf", "params", "salt"])?;
    let dklen = num_field(&v, &["crypto", "kdf", "params", "dklen"])?;
    if dklen != 32 {
        return Err("crypto.kdf.params.dklen must be 32".into());
    }
    let mut dk = Zeroizing::new([0u8; 32]);
    match field(&v, &["crypto", "kdf", "function"])?.as_str() {
        Some("scrypt") => {
            let n = num_field(&v, &["crypto", "kdf", "params", "n"])?;
            let r = num_field(&v, &["crypto", "kdf", "params", "r"])?;
            let p = num_field(&v, &["crypto", "kdf", "params", "p"])?;
            if !n.is_power_of_two() || n < 2 || r == 0 || p == 0 || p > 16 {
                return Err("crypto.kdf.params: invalid scrypt n/r/p".into());
            }
            if 128u64.saturating_mul(r).saturating_mul(n) > MAX_SCRYPT_MEMORY {
                return Err("crypto.kdf.params: scrypt would need more than 1 GiB".into());
            }
            let params = scrypt::Params::new(n.trailing_zeros() as u8, r as u32, p as u32)
                .map_err(|e| format!("crypto.kdf.params: {e}"))?;
            scrypt::scrypt(password.as_bytes(), &salt, &params, dk.as_mut_slice())
                .map_err(|e| format!("scrypt: {e}"))?;
        }
        Some("pbkdf2") => {
            let c = num_field(&v, &["crypto", "kdf", "params", "c"])?;
            if field(&v, &["crypto", "kdf", "params", "prf"])?.as_str() != Some("hmac-sha256") {
                return Err("crypto.kdf.params.prf must be hmac-sha256".into());
            }
            if c == 0 || c > MAX_PBKDF2_ROUNDS {
                return Err("crypto.kdf.params.c out of range".into());
            }
            pbkdf2::pbkdf2::<hmac::Hmac<Sha256>>(
                password.as_bytes(),
                &salt,
                c as u32,
                dk.as_mut_slice(),
            );
        }
        _ => return Err("crypto.kdf.function must be scrypt or pbkdf2".into()),
    }
    if field(&v, &["crypto", "checksum", "function"])?.as_str() != Some("sha256") {
        return Err("crypto.checksum.function must be sha256".into());
    }
    if field(&v, &["crypto", "cipher", "function"])?.as_str() != Some("aes-128-ctr") {
        return Err("crypto.cipher.function must be aes-128-ctr".into());
    }
    let cipher_msg = hex_field(&v, &["crypto", "cipher", "message"])?;
    if cipher_msg.len() != 32 {
        return Err("crypto.cipher.message must be 32 bytes".into());
    }
    let checksum = hex_field(&v, &["crypto", "checksum", "message"])?;
    let mut h = Sha256::new();
    h.update(&dk[16..32]);
    h.update(&cipher_msg);
    if h.finalize().as_slice() != checksum.as_slice() {
        return Err("wrong password (checksum mismatch)".into());
    }
    let iv = hex_field(&v, &["crypto", "cipher", "params", "iv"])?;
    if iv.len() != 16 {
        return Err("crypto.cipher.params.iv must be 16 bytes".into());
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    secret.copy_from_slice(&cipher_msg);
    let mut c = ctr::Ctr128BE::<aes::Aes128>::new(dk[..16].into(), iv.as_slice().into());
    c.apply_keystream(secret.as_mut_slice());
    let pubkey = match v.get("pubkey").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => {
            let mut pk = [0u8; 48];
            hex::decode_to_slice(s.trim_start_matches("0x"), &mut pk)
                .map_err(|_| "pubkey must be 48 bytes of hex".to_string())?;
            Some(pk)
        }
        _ => None,
    };
    Ok((secret, pubkey))
}
