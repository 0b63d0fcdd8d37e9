//! The little DER a PKCS#11 token speaks about EC keys: `CKA_EC_PARAMS` (which curve) and
//! `CKA_EC_POINT` (the public point, wrapped in an OCTET STRING). Everything read from a token
//! is untrusted input: lengths are checked, nothing indexes past the end.

/// Curves keyguard recognises in `CKA_EC_PARAMS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Curve {
    /// secp256k1 (OID 1.3.132.0.10).
    Secp256k1,
    /// Ed25519: the RFC 8410 OID 1.3.101.112, or the printable string `edwards25519` that
    /// SoftHSM2 and OpenSC write.
    Ed25519,
    /// NIST P-256 (OID 1.2.840.10045.3.1.7): recognised so it can be named in errors; no chain
    /// keyguard serves signs with it yet.
    P256,
}

/// DER `OBJECT IDENTIFIER 1.3.132.0.10`.
pub(crate) const SECP256K1_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
/// DER `OBJECT IDENTIFIER 1.3.101.112` (id-Ed25519).
pub(crate) const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER `PrintableString "edwards25519"`.
pub(crate) const ED25519_NAME: &[u8] = b"\x13\x0cedwards25519";

/// Which curve `CKA_EC_PARAMS` names, or `None` for anything else (explicit parameters,
/// other curves, garbage).
pub(crate) fn curve_of(ec_params: &[u8]) -> Option<Curve> {
    match ec_params {
        p if p == SECP256K1_OID => Some(Curve::Secp256k1),
        p if p == ED25519_OID || p == ED25519_NAME => Some(Curve::Ed25519),
        // UTF8String is seen from some vendors for the same name.
        b"\x0c\x0cedwards25519" => Some(Curve::Ed25519),
        p if p == P256_OID => Some(Curve::P256),
        _ => None,
    }
}

/// The contents of a DER OCTET STRING that spans all of `der` (short or long form length).
fn octet_string(der: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x04 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, body) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        // Two length bytes cover any point; more (or zero) is not DER for these sizes.
        if n == 0 || n > 2 || rest.len() < n {
            return None;
        }
        let (len_bytes, body) = rest.split_at(n);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 || (n == 2 && len < 0x100) {
            return None; // not the shortest encoding
        }
        (len, body)
    };
    (body.len() == len).then_some(body)
}

/// `CKA_EC_POINT` of a secp256k1 key as the 65-byte uncompressed SEC1 point, validated on the
/// curve. Tokens wrap the point in an OCTET STRING (PKCS#11 2.40); a few return it bare.
pub(crate) fn secp256k1_point(ec_point: &[u8]) -> Option<[u8; 65]> {
    let raw = octet_string(ec_point).unwrap_or(ec_point);
    let point = k256::PublicKey::from_sec1_bytes(raw).ok()?;
    use k256::elliptic_curve::sec1::ToEncodedPoint;
    point.to_encoded_point(false).as_bytes().try_into().ok()
}

/// `CKA_EC_POINT` of an Ed25519 key: 32 bytes, wrapped (`04 20 || pk`) or bare.
pub(crate) fn ed25519_point(ec_point: &[u8]) -> Option<[u8; 32]> {
    let raw = match octet_string(ec_point) {
        Some(inner) if inner.len() == 32 => inner,
        _ => ec_point,
    };
    let bytes: [u8; 32] = raw.try_into().ok()?;
    // A point that does not decompress cannot verify anything; refuse it at load time.
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_are_recognised_in_both_ed25519_forms() {
        assert_eq!(curve_of(SECP256K1_OID), Some(Curve::Secp256k1));
        assert_eq!(curve_of(ED25519_OID), Some(Curve::Ed25519));
        assert_eq!(
            curve_of(&hex::decode("130c656477617264733235353139").unwrap()),
            Some(Curve::Ed25519)
        );
        assert_eq!(curve_of(P256_OID), Some(Curve::P256));
        assert_eq!(curve_of(&[]), None);
        assert_eq!(curve_of(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00]), None);
    }

    #[test]
    fn ec_point_is_unwrapped_and_validated() {
        // As SoftHSM2 returned it for a generated key.
        let wrapped = hex::decode(
            "0441042eb4cddb0981e9ccb704f0bf3e58bee749b3a8a5f99cfd68d922a45e63055beecb0225aacd8a80e\
             bc01bc2c0eb074bed47768eb507b4e9c4a6c2803f76db708d",
        )
        .unwrap();
        let point = secp256k1_point(&wrapped).unwrap();
        assert_eq!(&point[..], &wrapped[2..]);
        assert_eq!(secp256k1_point(&wrapped[2..]), Some(point), "bare point");
        // Off the curve: flip a bit of Y.
        let mut bad = wrapped.clone();
        bad[66] ^= 1;
        assert_eq!(secp256k1_point(&bad), None);
        // Length byte that does not match.
        let mut bad = wrapped.clone();
        bad[1] = 0x40;
        assert_eq!(secp256k1_point(&bad), None);
        assert_eq!(secp256k1_point(&[]), None);
        assert_eq!(secp256k1_point(&[0x04]), None);
    }

    #[test]
    fn ed25519_point_is_unwrapped() {
        let wrapped =
            hex::decode("042041f79dfabe0664004ac8c73e4f57050c9b6a82625747b133f0404b4c8ea638d5")
                .unwrap();
        assert_eq!(ed25519_point(&wrapped).unwrap()[..], wrapped[2..]);
        assert_eq!(ed25519_point(&wrapped[2..]).unwrap()[..], wrapped[2..]);
        assert_eq!(ed25519_point(&wrapped[..33]), None);
    }

    #[test]
    fn long_form_lengths_must_be_minimal() {
        assert_eq!(octet_string(&[0x04, 0x81, 0x02, 1, 2]), None);
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        assert_eq!(octet_string(&long).map(<[u8]>::len), Some(0x80));
        assert_eq!(octet_string(&[0x04, 0x83, 0, 0, 1, 0]), None);
    }
}
