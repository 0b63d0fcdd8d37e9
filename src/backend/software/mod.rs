//! The encrypted software keystore: one JSON file per key in a private directory.
//!
//! Layout of this module:
//! - [`SoftwareKeystore`] (here): opens a key directory, holds the decrypted signing keys, signs.
//! - [`KeystoreError`] (here): everything opening, creating or importing keys can report.
//! - `secret` (private): the decrypted private key of either scheme, and signing with it.
//! - `keyfile` (private): the key file codec, `<dir>/<id>.key.json`, argon2id +
//!   XChaCha20-Poly1305, atomic writes and permission checks.
//! - `v3_import` (private): validation and decryption of Ethereum keystore v3 files.
//! - [`crate::sealing`] (outside backend, so `access` needs no backend): the passphrase, its
//!   argon2id KDF, and the same AEAD for small secrets kept elsewhere (users' TOTP secrets).
//!
//! A key file looks like
//! `{"version":1,"id","scheme","public_key":hex,"kdf":{"alg":"argon2id","memory_kib",
//! "iterations","parallelism","salt":hex},"cipher":{"alg":"xchacha20poly1305","nonce":hex,
//! "ciphertext":hex},"created_at_unix":u64}`. The AEAD associated data binds version, id, scheme
//! and public key, so a file renamed to another id, or edited to claim another public key, does
//! not decrypt. The KDF parameters are bound implicitly: changing them changes the key.

pub mod bls;
mod eip2335;
mod keyfile;
mod secret;
mod seed;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_seed;
mod v3_import;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use keyguard_chain::{KeyId, PublicKey, Scheme, Signature, SigningPayload};
use zeroize::Zeroizing;

use super::{BackendError, KeyBackend, KeyInfo};
/// The passphrase and KDF live in [`crate::sealing`] (shared with the TOTP vault).
pub use crate::sealing::{KdfParams, Passphrase};
use keyfile::{
    argon2_params, check_dir, decrypt_key_file, encrypt_key_file, key_file_paths, parse_key_file,
    read_key_file, write_new_key_file, DecryptFailure,
};
use keyguard_bitcoin::bitcoin::bip32::{DerivationPath, Fingerprint, Xpub};
use keyguard_bitcoin::bitcoin::NetworkKind;
use secret::SecretKey;
use seed::{LoadedSeed, SEED_FILE_SUFFIX};
pub use seed::{SeedInfo, ETH_KEY_SUFFIX};

/// Failures of the software keystore. No variant carries key material or the passphrase.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The key did not decrypt. When other keys in the directory did decrypt with the same
    /// passphrase, `open` reports [`KeystoreError::Corrupt`] for this key instead.
    #[error("wrong passphrase for key {key} (or its key file was altered)")]
    WrongPassphrase {
        /// The key that failed.
        key: KeyId,
    },
    /// A key file is malformed, altered, or does not match its name.
    #[error("key file {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A key with this id already exists.
    #[error("key {0} already exists")]
    Exists(KeyId),
    /// A secret offered for import is not a valid key.
    #[error("invalid secret key: {0}")]
    InvalidSecret(String),
    /// An Ethereum keystore v3 file could not be imported.
    #[error("keystore v3 import failed: {0}")]
    KeystoreV3(String),
    /// A key directory or file is accessible to group or other users.
    #[error("{}: {reason}", path.display())]
    Permissions {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The configured KDF parameters are not usable.
    #[error("invalid KDF parameters: {0}")]
    InvalidKdf(String),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn corrupt(path: &Path, reason: impl Into<String>) -> KeystoreError {
    KeystoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A key ready to sign, with its public half as read at load time.
struct LoadedKey {
    info: KeyInfo,
    secret: SecretKey,
}

/// The encrypted software keystore, open and ready to sign.
pub struct SoftwareKeystore {
    dir: PathBuf,
    /// Kept to encrypt keys created after `open`; each new file gets its own salt.
    passphrase: Passphrase,
    kdf: KdfParams,
    keys: RwLock<BTreeMap<KeyId, Arc<LoadedKey>>>,
    /// BIP32 seeds; each also contributes its Ethereum key to `keys`.
    seeds: RwLock<BTreeMap<KeyId, Arc<LoadedSeed>>>,
}

impl fmt::Debug for SoftwareKeystore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("SoftwareKeystore")
            .field("dir", &self.dir)
            .field("kdf", &self.kdf)
            .field("keys", &keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SoftwareKeystore {
    /// Creates `dir` (mode 0700) if missing and decrypts every `*.key.json` in it. Refuses to
    /// load if any file fails: a passphrase that opens no key gives `WrongPassphrase` naming the
    /// first key; a file that fails while others open with the same passphrase is `Corrupt`.
    pub fn open(
        dir: &Path,
        passphrase: &Passphrase,
        kdf: KdfParams,
    ) -> Result<Self, KeystoreError> {
        argon2_params(&kdf).map_err(KeystoreError::InvalidKdf)?;
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
            // The umask may have narrowed the mode; make it exactly 0700.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        }
        check_dir(dir)?;

        let mut keys = BTreeMap::new();
        let mut aead_failures = Vec::new();
        for path in key_file_paths(dir)? {
            let parsed = parse_key_file(&path, &read_key_file(&path)?)?;
            match decrypt_key_file(&path, &parsed, passphrase) {
                Ok(secret) => {
                    let key = LoadedKey {
                        info: parsed.info,
                        secret,
                    };
                    keys.insert(key.info.id.clone(), Arc::new(key));
                }
                Err(DecryptFailure::Other(e)) => return Err(e),
                Err(DecryptFailure::Aead) => aead_failures.push((path, parsed.info.id)),
            }
        }
        let mut seeds = BTreeMap::new();
        for path in keyfile::file_paths(dir, SEED_FILE_SUFFIX)? {
            let contents = read_key_file(&path)?;
            match seed::decrypt_seed(&path, &contents, passphrase) {
                Ok(loaded) => {
                    Self::insert_seed_keys(&mut keys, &loaded, &path)?;
                    seeds.insert(loaded.info.id.clone(), Arc::new(loaded));
                }
                Err(DecryptFailure::Other(e)) => return Err(e),
                Err(DecryptFailure::Aead) => {
                    let id = seed::read_info(&path, &contents)?.id;
                    aead_failures.push((path, id));
                }
            }
        }
        if let Some((path, id)) = aead_failures.into_iter().next() {
            return Err(if keys.is_empty() && seeds.is_empty() {
                KeystoreError::WrongPassphrase { key: id }
            } else {
                corrupt(
                    &path,
                    "does not decrypt with the passphrase that opens the other keys \
                     (altered, or encrypted under another passphrase)",
                )
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            passphrase: passphrase.clone(),
            kdf,
            keys: RwLock::new(keys),
            seeds: RwLock::new(seeds),
        })
    }

    /// Registers a seed's Ethereum key (m/44'/60'/0'/0/0) as an ordinary secp256k1 key, so the
    /// Ethereum pipeline signs with it unchanged.
    fn insert_seed_keys(
        keys: &mut BTreeMap<KeyId, Arc<LoadedKey>>,
        loaded: &LoadedSeed,
        path: &Path,
    ) -> Result<(), KeystoreError> {
        let info = &loaded.info;
        if keys.contains_key(&info.id) || keys.contains_key(&info.eth_key) {
            return Err(corrupt(
                path,
                "seed id or its -eth key clashes with a key file",
            ));
        }
        let secret = loaded.eth_secret().map_err(|r| corrupt(path, r))?;
        let key = SecretKey::from_bytes(Scheme::Secp256k1, secret.as_slice())
            .ok_or_else(|| corrupt(path, "derived Ethereum key is invalid"))?;
        let info = KeyInfo {
            id: info.eth_key.clone(),
            public_key: key.public_key(),
        };
        keys.insert(info.id.clone(), Arc::new(LoadedKey { info, secret: key }));
        Ok(())
    }

    /// Public facts of every seed file in `dir`, without decrypting anything.
    pub fn list_seeds(dir: &Path) -> Result<Vec<SeedInfo>, KeystoreError> {
        if !dir.exists() {
            return Ok(Vec::new());
        }
        check_dir(dir)?;
        keyfile::file_paths(dir, SEED_FILE_SUFFIX)?
            .iter()
            .map(|p| seed::read_info(p, &read_key_file(p)?))
            .collect()
    }

    /// Imports a BIP39 mnemonic (and optional BIP39 passphrase) as a new seed.
    pub fn import_mnemonic(
        &self,
        id: KeyId,
        words: &str,
        bip39_passphrase: &str,
    ) -> Result<SeedInfo, KeystoreError> {
        self.add_seed(id, seed::seed_from_mnemonic(words, bip39_passphrase)?)
    }

    /// Generates a new seed from a fresh 24-word mnemonic. The words are returned only so the
    /// CLI can write an offline backup when explicitly asked to; keyguard never shows them again.
    pub fn generate_seed(&self, id: KeyId) -> Result<(SeedInfo, Zeroizing<String>), KeystoreError> {
        let (words, seed) = seed::generate_mnemonic()?;
        Ok((self.add_seed(id, seed)?, words))
    }

    fn add_seed(&self, id: KeyId, seed: Zeroizing<[u8; 64]>) -> Result<SeedInfo, KeystoreError> {
        if self.read_keys().contains_key(&id) || self.read_seeds().contains_key(&id) {
            return Err(KeystoreError::Exists(id));
        }
        check_dir(&self.dir)?;
        let (loaded, contents) = seed::encrypt_seed(id.clone(), seed, &self.passphrase, &self.kdf)?;
        let path = keyfile::write_new_file(&self.dir, &id, SEED_FILE_SUFFIX, &contents)?;
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = Self::insert_seed_keys(&mut keys, &loaded, &path) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        let info = loaded.info.clone();
        self.seeds
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::new(loaded));
        Ok(info)
    }

    /// Public facts of every loaded seed.
    pub fn seed_infos(&self) -> Vec<SeedInfo> {
        self.read_seeds().values().map(|s| s.info.clone()).collect()
    }

    fn read_seeds(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<KeyId, Arc<LoadedSeed>>> {
        self.seeds.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn seed(&self, id: &KeyId) -> Result<Arc<LoadedSeed>, BackendError> {
        self.read_seeds()
            .get(id)
            .cloned()
            .ok_or_else(|| BackendError::UnknownKey(id.clone()))
    }

    /// Public info of every key file in `dir`, sorted by id, without decrypting anything.
    /// A missing directory lists as empty.
    pub fn list(dir: &Path) -> Result<Vec<KeyInfo>, KeystoreError> {
        if !dir.exists() {
            return Ok(Vec::new());
        }
        check_dir(dir)?;
        let mut infos = Vec::new();
        for path in key_file_paths(dir)? {
            infos.push(parse_key_file(&path, &read_key_file(&path)?)?.info);
        }
        infos.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(infos)
    }

    /// The directory this keystore reads and writes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new random key, written encrypted (mode 0600, atomically, never over an existing
    /// file) and then loaded.
    pub fn generate(&self, id: KeyId, scheme: Scheme) -> Result<KeyInfo, KeystoreError> {
        self.add(id, SecretKey::generate(scheme))
    }

    /// Imports a raw secp256k1 secret; zero and scalars not below the group order are refused.
    pub fn import_secp256k1(
        &self,
        id: KeyId,
        secret: Zeroizing<[u8; 32]>,
    ) -> Result<KeyInfo, KeystoreError> {
        let key = SecretKey::from_bytes(Scheme::Secp256k1, secret.as_slice()).ok_or_else(|| {
            KeystoreError::InvalidSecret(
                "not a secp256k1 secret scalar (zero or not below the group order)".into(),
            )
        })?;
        self.add(id, key)
    }

    /// Imports an Ethereum keystore v3 file (scrypt or pbkdf2, aes-128-ctr, as geth and
    /// eth-account write them). If the file has an `address` field it must match the key.
    pub fn import_keystore_v3(
        &self,
        id: KeyId,
        path: &Path,
        password: &str,
    ) -> Result<KeyInfo, KeystoreError> {
        let key = v3_import::decrypt_keystore_v3(path, password)?;
        self.add(id, key)
    }

    fn add(&self, id: KeyId, secret: SecretKey) -> Result<KeyInfo, KeystoreError> {
        if self.read_keys().contains_key(&id) || self.read_seeds().contains_key(&id) {
            return Err(KeystoreError::Exists(id));
        }
        check_dir(&self.dir)?;
        // argon2 runs outside the lock so signing is not stalled behind it.
        let (info, contents) = encrypt_key_file(&id, &secret, &self.passphrase, &self.kdf)?;
        let path = write_new_key_file(&self.dir, &id, &contents)?;
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if keys.contains_key(&id) {
            // Only reachable if the loaded key's file was removed behind our back; keep the
            // loaded key and do not leave a second one on disk under its name.
            let _ = fs::remove_file(&path);
            return Err(KeystoreError::Exists(id));
        }
        keys.insert(
            id,
            Arc::new(LoadedKey {
                info: info.clone(),
                secret,
            }),
        );
        Ok(info)
    }

    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<KeyId, Arc<LoadedKey>>> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(&self, id: &KeyId) -> Result<Arc<LoadedKey>, BackendError> {
        self.read_keys()
            .get(id)
            .cloned()
            .ok_or_else(|| BackendError::UnknownKey(id.clone()))
    }
}

#[async_trait]
impl KeyBackend for SoftwareKeystore {
    fn name(&self) -> &'static str {
        "software"
    }

    fn keys(&self) -> Vec<KeyInfo> {
        self.read_keys().values().map(|k| k.info.clone()).collect()
    }

    fn public_key(&self, key: &KeyId) -> Result<PublicKey, BackendError> {
        Ok(self.key(key)?.info.public_key.clone())
    }

    async fn sign(&self, key: &KeyId, payload: &SigningPayload) -> Result<Signature, BackendError> {
        let loaded = self.key(key)?;
        loaded.secret.sign(key, payload)
    }

    fn seeds(&self) -> Vec<(KeyId, Fingerprint)> {
        self.read_seeds()
            .values()
            .map(|s| (s.info.id.clone(), s.info.fingerprint))
            .collect()
    }

    fn account_xpub(
        &self,
        key: &KeyId,
        path: &DerivationPath,
        network: NetworkKind,
    ) -> Result<Xpub, BackendError> {
        self.seed(key)?
            .xpub(path, network)
            .map_err(|reason| BackendError::Derivation {
                key: key.clone(),
                reason,
            })
    }

    async fn sign_derived(
        &self,
        key: &KeyId,
        path: &DerivationPath,
        payload: &SigningPayload,
    ) -> Result<Signature, BackendError> {
        self.seed(key)?
            .sign(path, payload)
            .map_err(|reason| BackendError::SigningFailed {
                key: key.clone(),
                reason,
            })
    }
}
