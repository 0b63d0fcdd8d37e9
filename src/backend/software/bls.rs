//! BLS12-381 keys for Ethereum consensus duties, in the software keystore only.
//!
//! All BLS keys of a key directory live in one file, `<dir>/eth2-bls.json`: per key its
//! public key and the 32-byte secret sealed (XChaCha20-Poly1305) under one argon2id key from the
//! keystore passphrase, with the public key as associated data (a sealed secret moved to
//! another entry does not open). One KDF run for the file, not one per key, so 10,000
//! validators load in the time of one. Secrets are `blst` secret keys (zeroized on drop) and
//! never leave this module: callers get public keys and signatures.
//!
//! Keys come from EIP-2335 keystores (`eip2335`), from a BIP39 mnemonic through EIP-2333
//! derivation at the EIP-2334 signing path `m/12381/3600/i/0/0`, or are generated.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use blst::min_pk::SecretKey;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{corrupt, io_err, KeystoreError};
use crate::sealing::{new_salt, KdfParams, Passphrase, SealingKey};

/// The file holding every BLS key of a key directory.
pub const BLS_FILE: &str = "eth2-bls.json";
/// The proof-of-possession ciphersuite Ethereum consensus signs with.
pub const DST: &[u8] = keyguard_eth2::bls::DST;
const AAD_DOMAIN: &[u8] = b"keyguard/bls/v1|";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlsFile {
    version: u32,
    salt: String,
    keys: Vec<BlsEntry>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct BlsEntry {
    pubkey: String,
    sealed: String,
    origin: String,
}

struct Sealer {
    path: PathBuf,
    salt: [u8; 16],
    key: SealingKey,
}

/// A loaded key and where it came from (`eip2335`, `m/12381/3600/i/0/0`, `generated`).
type Loaded = Arc<(SecretKey, String)>;
type KeyMap = BTreeMap<[u8; 48], Loaded>;

/// The BLS keys, decrypted and ready to sign.
pub struct BlsKeystore {
    sealer: Option<Sealer>,
    keys: RwLock<KeyMap>,
}

impl std::fmt::Debug for BlsKeystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlsKeystore")
            .field("keys", &self.read().len())
            .finish_non_exhaustive()
    }
}

/// EIP-2333: the secret key at `path` below the master key of `seed`.
pub(crate) fn derive_eip2333(seed: &[u8], path: &[u32]) -> Result<SecretKey, String> {
    let mut sk = SecretKey::derive_master_eip2333(seed).map_err(|e| format!("{e:?}"))?;
    for i in path {
        sk = sk.derive_child_eip2333(*i);
    }
    Ok(sk)
}

/// EIP-2334 signing key path of validator `i`.
pub fn signing_path(i: u32) -> [u32; 5] {
    [12381, 3600, i, 0, 0]
}

fn aad(pk: &[u8; 48]) -> Vec<u8> {
    let mut a = AAD_DOMAIN.to_vec();
    a.extend_from_slice(pk);
    a
}

impl BlsKeystore {
    /// A keystore that keeps keys in memory only (tests, benchmarks).
    pub fn in_memory() -> BlsKeystore {
        BlsKeystore {
            sealer: None,
            keys: RwLock::new(BTreeMap::new()),
        }
    }

    /// Opens (or starts) `<dir>/eth2-bls.json`; every entry must open with the passphrase.
    pub fn open(
        dir: &Path,
        passphrase: &Passphrase,
        kdf: &KdfParams,
    ) -> Result<BlsKeystore, KeystoreError> {
        let path = dir.join(BLS_FILE);
        let mut keys = BTreeMap::new();
        let sealer = if path.exists() {
            let raw = super::keyfile::read_key_file(&path)?;
            let f: BlsFile =
                serde_json::from_slice(&raw).map_err(|e| corrupt(&path, e.to_string()))?;
            if f.version != 1 {
                return Err(corrupt(&path, "unknown version"));
            }
            let mut salt = [0u8; 16];
            hex::decode_to_slice(&f.salt, &mut salt).map_err(|_| corrupt(&path, "salt"))?;
            let key = SealingKey::derive(passphrase, kdf, &salt)
                .map_err(|e| KeystoreError::InvalidKdf(e.to_string()))?;
            for e in &f.keys {
                let mut pk = [0u8; 48];
                hex::decode_to_slice(&e.pubkey, &mut pk).map_err(|_| corrupt(&path, "pubkey"))?;
                let sealed = hex::decode(&e.sealed).map_err(|_| corrupt(&path, "sealed"))?;
                let secret =
                    key.open(&aad(&pk), &sealed)
                        .map_err(|_| KeystoreError::WrongPassphrase {
                            key: keyguard_chain::KeyId::new(format!("bls-{}", &e.pubkey[..16]))
                                .unwrap_or_else(|_| {
                                    keyguard_chain::KeyId::new("bls").expect("valid id")
                                }),
                        })?;
                let sk = SecretKey::from_bytes(&secret)
                    .map_err(|_| corrupt(&path, "secret is not a BLS scalar"))?;
                if sk.sk_to_pk().to_bytes() != pk {
                    return Err(corrupt(&path, "a secret does not match its public key"));
                }
                keys.insert(pk, Arc::new((sk, e.origin.clone())));
            }
            Sealer { path, salt, key }
        } else {
            let salt = new_salt();
            let key = SealingKey::derive(passphrase, kdf, &salt)
                .map_err(|e| KeystoreError::InvalidKdf(e.to_string()))?;
            Sealer { path, salt, key }
        };
        Ok(BlsKeystore {
            sealer: Some(sealer),
            keys: RwLock::new(keys),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyMap> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every public key with its origin, sorted.
    pub fn list(&self) -> Vec<([u8; 48], String)> {
        self.read()
            .iter()
            .map(|(pk, k)| (*pk, k.1.clone()))
            .collect()
    }

    /// Re-reads the key file (keys imported or removed by the CLI while the daemon runs):
    /// every entry must open with the key this keystore was opened with. The number of keys.
    pub fn reload(&self) -> Result<usize, KeystoreError> {
        let Some(s) = &self.sealer else {
            return Ok(self.read().len());
        };
        let mut fresh = KeyMap::new();
        if s.path.exists() {
            let raw = super::keyfile::read_key_file(&s.path)?;
            let f: BlsFile =
                serde_json::from_slice(&raw).map_err(|e| corrupt(&s.path, e.to_string()))?;
            if f.salt != hex::encode(s.salt) {
                return Err(corrupt(
                    &s.path,
                    "the file was re-created under another salt; restart to reopen it",
                ));
            }
            for e in &f.keys {
                let mut pk = [0u8; 48];
                hex::decode_to_slice(&e.pubkey, &mut pk).map_err(|_| corrupt(&s.path, "pubkey"))?;
                let sealed = hex::decode(&e.sealed).map_err(|_| corrupt(&s.path, "sealed"))?;
                let secret = s
                    .key
                    .open(&aad(&pk), &sealed)
                    .map_err(|_| corrupt(&s.path, "an entry does not open"))?;
                let sk = SecretKey::from_bytes(&secret)
                    .map_err(|_| corrupt(&s.path, "secret is not a BLS scalar"))?;
                if sk.sk_to_pk().to_bytes() != pk {
                    return Err(corrupt(&s.path, "a secret does not match its public key"));
                }
                fresh.insert(pk, Arc::new((sk, e.origin.clone())));
            }
        }
        let n = fresh.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(n)
    }

    /// Every public key, sorted.
    pub fn public_keys(&self) -> Vec<[u8; 48]> {
        self.read().keys().copied().collect()
    }

    /// Whether `pk` is held.
    pub fn contains(&self, pk: &[u8; 48]) -> bool {
        self.read().contains_key(pk)
    }

    /// Signs a 32-byte signing root; `None` for a key not held.
    pub fn sign(&self, pk: &[u8; 48], root: &[u8; 32]) -> Option<[u8; 96]> {
        let k = self.read().get(pk).cloned()?;
        Some(k.0.sign(root, DST, &[]).to_bytes())
    }

    /// Adds a key (persisting the whole file first when backed by one).
    fn add(&self, sk: SecretKey, origin: String) -> Result<[u8; 48], KeystoreError> {
        let pk = sk.sk_to_pk().to_bytes();
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if keys.contains_key(&pk) {
            return Err(KeystoreError::Exists(
                keyguard_chain::KeyId::new(format!("bls-{}", hex::encode(&pk[..8])))
                    .unwrap_or_else(|_| keyguard_chain::KeyId::new("bls").expect("valid id")),
            ));
        }
        keys.insert(pk, Arc::new((sk, origin)));
        if let Some(s) = &self.sealer {
            if let Err(e) = persist(s, &keys) {
                keys.remove(&pk);
                return Err(e);
            }
        }
        Ok(pk)
    }

    /// Imports an EIP-2335 keystore; its `pubkey`, when present, must be the secret's.
    pub fn import_eip2335(&self, json: &[u8], password: &str) -> Result<[u8; 48], KeystoreError> {
        let (secret, claimed) =
            super::eip2335::decrypt(json, password).map_err(KeystoreError::KeystoreV3)?;
        let sk = SecretKey::from_bytes(secret.as_slice())
            .map_err(|_| KeystoreError::InvalidSecret("not a BLS12-381 secret scalar".into()))?;
        let pk = sk.sk_to_pk().to_bytes();
        if claimed.is_some_and(|c| c != pk) {
            return Err(KeystoreError::KeystoreV3(
                "pubkey does not match the decrypted secret".into(),
            ));
        }
        self.add(sk, "eip2335".into())
    }

    /// Derives validators `indices` from a BIP39 mnemonic (EIP-2333 at EIP-2334's signing path).
    pub fn import_mnemonic(
        &self,
        words: &str,
        bip39_passphrase: &str,
        indices: std::ops::Range<u32>,
    ) -> Result<Vec<[u8; 48]>, KeystoreError> {
        let m = bip39::Mnemonic::parse_normalized(words)
            .map_err(|e| KeystoreError::InvalidSecret(format!("mnemonic: {e}")))?;
        let seed = Zeroizing::new(m.to_seed_normalized(bip39_passphrase));
        let mut out = Vec::new();
        for i in indices {
            let path = signing_path(i);
            let sk =
                derive_eip2333(seed.as_slice(), &path).map_err(KeystoreError::InvalidSecret)?;
            out.push(self.add(sk, format!("m/12381/3600/{i}/0/0"))?);
        }
        Ok(out)
    }

    /// Generates a new random key.
    pub fn generate(&self) -> Result<[u8; 48], KeystoreError> {
        let mut ikm = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(ikm.as_mut_slice());
        let sk = SecretKey::key_gen(ikm.as_slice(), &[])
            .map_err(|e| KeystoreError::InvalidSecret(format!("{e:?}")))?;
        self.add(sk, "generated".into())
    }

    /// Removes a key (its file entry too); whether it was held.
    pub fn remove(&self, pk: &[u8; 48]) -> Result<bool, KeystoreError> {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let Some(old) = keys.remove(pk) else {
            return Ok(false);
        };
        if let Some(s) = &self.sealer {
            if let Err(e) = persist(s, &keys) {
                keys.insert(*pk, old);
                return Err(e);
            }
        }
        Ok(true)
    }
}

/// Rewrites the file atomically (temporary file, fsync, rename), mode 0600.
fn persist(s: &Sealer, keys: &KeyMap) -> Result<(), KeystoreError> {
    let mut entries = Vec::with_capacity(keys.len());
    for (pk, k) in keys {
        let secret = Zeroizing::new(k.0.to_bytes());
        let sealed = s
            .key
            .seal(&aad(pk), secret.as_slice())
            .map_err(|e| KeystoreError::InvalidSecret(e.to_string()))?;
        entries.push(BlsEntry {
            pubkey: hex::encode(pk),
            sealed: hex::encode(sealed),
            origin: k.1.clone(),
        });
    }
    let f = BlsFile {
        version: 1,
        salt: hex::encode(s.salt),
        keys: entries,
    };
    let body = serde_json::to_vec_pretty(&f).map_err(|e| corrupt(&s.path, e.to_string()))?;
    let tmp = s.path.with_extension("json.tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(&body).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &s.path).map_err(io_err(&s.path))?;
    if let Some(dir) = s.path.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "tests_bls.rs"]
mod tests;
