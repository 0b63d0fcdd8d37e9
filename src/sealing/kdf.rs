//! The keystore passphrase and its argon2id KDF: one derived key per salt, used for key files
//! (`crate::backend::software`) and for sealed values ([`super::SealingKey`]).

use std::fmt;

use argon2::{Algorithm, Argon2, Block, Params, Version};
use zeroize::Zeroizing;

/// Length of a derived key (XChaCha20-Poly1305 key).
pub(crate) const KEY_LEN: usize = 32;
/// A key file cannot make `open` allocate more than this for argon2 (4 GiB): an edited file
/// must not be able to take the daemon down by memory exhaustion.
const MAX_KDF_MEMORY_KIB: u32 = 4 * 1024 * 1024;

/// Argon2id cost for newly written key files. Existing files carry their own parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            memory_kib: 65536,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// The keystore passphrase; zeroized on drop and never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase (taken by value so no other copy stays with the caller).
    pub fn new(passphrase: String) -> Self {
        Self(Zeroizing::new(passphrase))
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(***)")
    }
}

/// The argon2id parameters of `kdf`, refusing memory costs over the cap above.
pub(crate) fn argon2_params(kdf: &KdfParams) -> Result<Params, String> {
    if kdf.memory_kib > MAX_KDF_MEMORY_KIB {
        return Err(format!(
            "argon2 memory {} KiB exceeds the limit of {MAX_KDF_MEMORY_KIB} KiB",
            kdf.memory_kib
        ));
    }
    Params::new(
        kdf.memory_kib,
        kdf.iterations,
        kdf.parallelism,
        Some(KEY_LEN),
    )
    .map_err(|e| format!("argon2 parameters rejected: {e}"))
}

/// Derives the file key. argon2's working memory is itself secret-derived (it lets one finish
/// the hash without the passphrase), so it lives in a zeroizing buffer too.
pub(crate) fn derive_file_key(
    passphrase: &Passphrase,
    kdf: &KdfParams,
    salt: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
    let params = argon2_params(kdf)?;
    let mut memory = Zeroizing::new(vec![Block::default(); params.block_count()]);
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    argon2
        .hash_password_into_with_memory(
            passphrase.as_bytes(),
            salt,
            key.as_mut_slice(),
            memory.as_mut_slice(),
        )
        .map_err(|e| format!("argon2 failed: {e}"))?;
    Ok(key)
}
