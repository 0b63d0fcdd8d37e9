//! What the cloud backends' stub-server tests share: the key id they sign with and the
//! independent check (k256's recovery, not keyguard's) of a released signature.

use keyguard_chain::{KeyId, Signature};

/// The key id every stub test configures.
pub(super) fn hot() -> KeyId {
    KeyId::new("hot").unwrap()
}

/// k256's recovery of the released signature must give the stubs' key (`[0x42; 32]`), and the
/// signature must be low-S.
pub(super) fn assert_recovers(sig: &Signature, digest: &[u8; 32]) {
    use k256::ecdsa::{RecoveryId, Signature as K, VerifyingKey};
    let Signature::Secp256k1 { r, s, recovery_id } = sig else {
        panic!("not secp256k1: {sig:?}")
    };
    let k = K::from_scalars(*r, *s).unwrap();
    assert!(k.normalize_s().is_none(), "high S released");
    let rec = VerifyingKey::recover_from_prehash(
        digest,
        &k,
        RecoveryId::from_byte(*recovery_id).unwrap(),
    )
    .unwrap();
    let want = k256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
    assert_eq!(&rec, want.verifying_key());
}
