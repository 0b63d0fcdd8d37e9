//! BLS signature verification (pass 2): the signature a backend returned must verify under the
//! key's public key for the signing root keyguard computed, before it leaves.

/// The proof-of-possession ciphersuite of Ethereum consensus.
pub const DST: &[u8] = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_";

/// Whether `sig` is a valid signature of `root` by `pubkey` (both group-checked).
pub fn verify(pubkey: &[u8; 48], root: &[u8; 32], sig: &[u8; 96]) -> bool {
    use blst::min_pk::{PublicKey, Signature};
    let (Ok(pk), Ok(sig)) = (PublicKey::key_validate(pubkey), Signature::from_bytes(sig)) else {
        return false;
    };
    sig.verify(true, root, DST, &[], &pk, false) == blst::BLST_ERROR::BLST_SUCCESS
}
