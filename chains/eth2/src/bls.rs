//! BLS signature verification (pass 2): the signature a backend returned must verify under the
//! key's public key for the signing root keyguard computed, before it leaves.
//!
//! [`verify_batch`] checks many signatures at once (random linear combination: n + 1 Miller
//! loops and one final exponentiation instead of 2n and n) and falls back to [`verify`] one by
//! one when the batch fails, so a bad signature is named and the good ones still go out. Each
//! signature is decoded from the bytes that will be released and hashed to G2 here, on its own:
//! nothing computed while signing is reused, so a fault in the signer's hash or scalar
//! multiplication cannot make its own check pass.

use std::collections::BTreeMap;

use blst::min_pk::{PublicKey, Signature};
use blst::{blst_p1_affine, blst_p2_affine, p1_affines, p2_affines, MultiPoint, BLST_ERROR};

/// The proof-of-possession ciphersuite of Ethereum consensus.
pub const DST: &[u8] = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_";

/// Bits of each random batch scalar: a wrong signature passes a batch with probability 2^-64.
const RAND_BITS: usize = 64;

/// Whether `sig` is a valid signature of `root` by `pubkey` (both group-checked).
pub fn verify(pubkey: &[u8; 48], root: &[u8; 32], sig: &[u8; 96]) -> bool {
    PublicKey::key_validate(pubkey).is_ok_and(|pk| verify_with(&pk, root, sig))
}

/// Like [`verify`] with the public key already decoded and validated
/// ([`PublicKey::key_validate`]).
pub fn verify_with(pk: &PublicKey, root: &[u8; 32], sig: &[u8; 96]) -> bool {
    decode_signature(sig).is_some_and(|sig| verify_decoded(pk, root, &sig))
}

/// The signature in `bytes` (compressed), on the curve, in G2 and not the point at infinity.
pub fn decode_signature(bytes: &[u8; 96]) -> Option<Signature> {
    Signature::sig_validate(bytes, true).ok()
}

fn verify_decoded(pk: &PublicKey, root: &[u8; 32], sig: &Signature) -> bool {
    sig.verify(false, root, DST, &[], pk, false) == BLST_ERROR::BLST_SUCCESS
}

/// One signature to check in a batch.
pub struct BatchItem<'a> {
    /// The signer's public key, from [`PublicKey::key_validate`].
    pub pk: &'a PublicKey,
    /// The signing root keyguard computed.
    pub root: &'a [u8; 32],
    /// The signature, from [`decode_signature`] of the bytes that would be released.
    pub sig: &'a Signature,
}

/// Which of `items` verify. One batch check when all do (the common case); otherwise each is
/// checked alone, so one bad signature does not withhold the others. `random` supplies the
/// batch scalars and must be unpredictable (OS randomness); a zero draw counts as one.
pub fn verify_batch(items: &[BatchItem<'_>], random: &mut dyn FnMut() -> u64) -> Vec<bool> {
    if items.len() >= 2 && batch_holds(items, random) {
        return vec![true; items.len()];
    }
    items
        .iter()
        .map(|i| verify_decoded(i.pk, i.root, i.sig))
        .collect()
}

/// The random-linear-combination check: with one random 64-bit `r_i` per signature,
/// `e(g1, Σ r_i·σ_i) == Π_roots e(Σ_{i: root} r_i·pk_i, H(root))`. Signatures of one root (a
/// slot's attestations share theirs since Electra) cost two short scalar multiplications each
/// and share one hash and one Miller loop.
fn batch_holds(items: &[BatchItem<'_>], random: &mut dyn FnMut() -> u64) -> bool {
    let rands: Vec<[u8; 8]> = items
        .iter()
        .map(|_| random().max(1).to_le_bytes())
        .collect();
    let sig_points: Vec<blst_p2_affine> = items.iter().map(|i| (*i.sig).into()).collect();
    let combined = sig_points.as_slice().mult(&rands.concat(), RAND_BITS);
    let combined = Signature::from(p2_affines::from(&[combined]).as_slice()[0]);
    let mut by_root: BTreeMap<&[u8; 32], (Vec<blst_p1_affine>, Vec<u8>)> = BTreeMap::new();
    for (i, r) in items.iter().zip(&rands) {
        let (points, scalars) = by_root.entry(i.root).or_default();
        points.push((*i.pk).into());
        scalars.extend_from_slice(r);
    }
    let (msgs, pks): (Vec<&[u8]>, Vec<PublicKey>) = by_root
        .iter()
        .map(|(root, (points, scalars))| {
            let p = points.as_slice().mult(scalars, RAND_BITS);
            (
                &root[..],
                PublicKey::from(p1_affines::from(&[p]).as_slice()[0]),
            )
        })
        .unzip();
    let pks: Vec<&PublicKey> = pks.iter().collect();
    // Keys and signatures were validated when decoded; their combinations stay in the groups.
    combined.aggregate_verify(false, &msgs, DST, &pks, false) == BLST_ERROR::BLST_SUCCESS
}
