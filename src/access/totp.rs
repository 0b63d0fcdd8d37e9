//! RFC 6238 time-based one-time codes for users (SHA-1, 6 digits, 30 s: what every
//! authenticator app speaks). Secrets stay in zeroizing buffers and are never formatted.

use totp_rs::{Algorithm, Secret, TOTP};
use zeroize::Zeroizing;

/// Seconds per time step.
pub const STEP_SECONDS: u64 = 30;

/// Why a code was not accepted. Deliberately says nothing about the secret.
#[derive(Debug, thiserror::Error)]
pub enum TotpError {
    /// The code does not match any step in the accepted window.
    #[error("invalid TOTP code")]
    Invalid,
    /// The secret or name cannot form a TOTP (names may not contain ':').
    #[error("cannot build TOTP: {0}")]
    Setup(String),
}

/// A fresh random 160-bit secret (RFC 4226 recommends 160 bits).
pub fn new_secret() -> Result<Zeroizing<Vec<u8>>, TotpError> {
    Secret::generate_secret()
        .to_bytes()
        .map(Zeroizing::new)
        .map_err(|_| TotpError::Setup("secret generation failed".into()))
}

fn totp(secret: &[u8], account: &str, issuer: &str) -> Result<TOTP, TotpError> {
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        STEP_SECONDS,
        secret.to_vec(),
        Some(issuer.to_owned()),
        account.to_owned(),
    )
    .map_err(|e| match e {
        // The error for a short secret would not reveal it, but keep all variants uniform.
        totp_rs::TotpUrlError::AccountName(_) => {
            TotpError::Setup("user names may not contain ':'".into())
        }
        totp_rs::TotpUrlError::Issuer(_) => TotpError::Setup("issuer may not contain ':'".into()),
        _ => TotpError::Setup("invalid secret".into()),
    })
}

/// The `otpauth://` URI an authenticator app enrols from. Contains the secret: show once.
pub fn enrolment_uri(
    secret: &[u8],
    account: &str,
    issuer: &str,
) -> Result<Zeroizing<String>, TotpError> {
    Ok(Zeroizing::new(totp(secret, account, issuer)?.get_url()))
}

/// Checks `code` at unix time `now` within ±`skew` steps and returns the matched step, so the
/// caller can refuse a code that was already used (RFC 6238 §5.2).
pub fn verify(secret: &[u8], code: &str, now: u64, skew: u64) -> Result<i64, TotpError> {
    use subtle_eq::ct_eq;
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TotpError::Invalid);
    }
    let t = totp(secret, "user", "keyguard")?;
    let step = now / STEP_SECONDS;
    let mut matched = None;
    for s in step.saturating_sub(skew)..=step.saturating_add(skew) {
        let expected = Zeroizing::new(t.generate(s * STEP_SECONDS));
        if ct_eq(expected.as_bytes(), code.as_bytes()) {
            matched = Some(s);
        }
    }
    matched
        .and_then(|s| i64::try_from(s).ok())
        .ok_or(TotpError::Invalid)
}

/// A constant-time comparison, so a wrong code's timing says nothing about the right one.
mod subtle_eq {
    pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The URI as a QR code of Unicode half blocks, for enrolment from a terminal.
pub fn qr_text(uri: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(uri.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 secret "12345678901234567890" (8 digits there; the last 6
    /// digits are the 6-digit code).
    #[test]
    fn rfc6238_vectors() {
        let secret = b"12345678901234567890";
        for (time, code8) in [
            (59u64, "94287082"),
            (1111111109, "07081804"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
        ] {
            let code = &code8[2..];
            let step = verify(secret, code, time, 0).unwrap();
            assert_eq!(step as u64, time / 30);
        }
        assert!(verify(secret, "000000", 59, 1).is_err());
        assert!(verify(secret, "28708", 59, 1).is_err());
        assert!(verify(secret, "2870820", 59, 1).is_err());
    }

    #[test]
    fn uri_names_issuer_and_account() {
        let s = new_secret().unwrap();
        let uri = enrolment_uri(&s, "alice", "keyguard").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/keyguard:alice?"),
            "{}",
            *uri
        );
        assert!(qr_text(&uri).is_some());
        assert!(enrolment_uri(&s, "a:b", "keyguard").is_err());
    }
}
