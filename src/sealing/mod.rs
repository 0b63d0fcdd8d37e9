//! The keystore passphrase and its KDF ([`KdfParams`], [`Passphrase`]), and small secrets
//! outside key files (users' TOTP secrets) sealed with the keystore's own
//! construction: an argon2id key from the keystore passphrase ([`derive_file_key`]) and
//! XChaCha20-Poly1305 with a random nonce per value. The caller binds each value to its owner
//! through the associated data, so a sealed secret copied to another row does not open.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

mod kdf;

pub(crate) use kdf::{argon2_params, derive_file_key, KEY_LEN};
pub use kdf::{KdfParams, Passphrase};

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Why a value could not be sealed or opened. Carries nothing secret.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The KDF parameters were refused.
    #[error("key derivation: {0}")]
    Kdf(String),
    /// The value is too short, was altered, belongs to another owner, or was sealed under
    /// another passphrase.
    #[error("sealed value does not open (altered, moved, or another passphrase)")]
    Open,
    /// The AEAD refused to encrypt (never expected).
    #[error("sealing failed")]
    Seal,
}

/// A key derived from the keystore passphrase; zeroized on drop and never printed.
pub struct SealingKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(***)")
    }
}

impl SealingKey {
    /// Derives the key for `salt` (stored next to the sealed values) with argon2id.
    pub fn derive(
        passphrase: &Passphrase,
        kdf: &KdfParams,
        salt: &[u8],
    ) -> Result<SealingKey, SealError> {
        derive_file_key(passphrase, kdf, salt)
            .map(SealingKey)
            .map_err(SealError::Kdf)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(self.0.as_slice()))
    }

    /// `nonce || ciphertext || tag` of `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        // Room for the tag up front, so encryption never reallocates and strands a plaintext copy.
        let mut buffer = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
        buffer.extend_from_slice(plaintext);
        self.cipher()
            .encrypt_in_place(XNonce::from_slice(&nonce), aad, &mut *buffer)
            .map_err(|_| SealError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + buffer.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buffer);
        Ok(out)
    }

    /// The plaintext of a value [`SealingKey::seal`] produced with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        self.cipher()
            .decrypt_in_place(XNonce::from_slice(nonce), aad, &mut *buffer)
            .map_err(|_| SealError::Open)?;
        Ok(buffer)
    }
}

/// A fresh random salt for [`SealingKey::derive`].
pub fn new_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    salt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_owner() {
        let kdf = KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let salt = new_salt();
        let key = SealingKey::derive(&Passphrase::new("p".into()), &kdf, &salt).unwrap();
        let sealed = key.seal(b"alice", b"secret bytes").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            key.open(b"alice", &sealed).unwrap().as_slice(),
            b"secret bytes"
        );
        assert!(key.open(b"bob", &sealed).is_err());
        let other = SealingKey::derive(&Passphrase::new("q".into()), &kdf, &salt).unwrap();
        assert!(other.open(b"alice", &sealed).is_err());
        let mut altered = sealed.clone();
        altered[30] ^= 1;
        assert!(key.open(b"alice", &altered).is_err());
        assert!(format!("{key:?}").contains("***"));
    }
}
