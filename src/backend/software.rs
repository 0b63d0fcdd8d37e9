//! The encrypted software keystore: one JSON file per key in a private directory.
//!
//! Layout of this module:
//! - [`SoftwareKeystore`]: opens a key directory, holds the decrypted signing keys, signs.
//! - [`KeystoreError`]: everything opening, creating or importing keys can report.
//! - key file codec (private): `<dir>/<id>.key.json`, argon2id + XChaCha20-Poly1305.
//!
//! A key file looks like
//! `{"version":1,"id","scheme","public_key":hex,"kdf":{"alg":"argon2id","memory_kib",
//! "iterations","parallelism","salt":hex},"cipher":{"alg":"xchacha20poly1305","nonce":hex,
//! "ciphertext":hex},"created_at_unix":u64}`. The AEAD associated data binds version, id, scheme
//! and public key, so a file renamed to another id, or edited to claim another public key, does
//! not decrypt. The KDF parameters are bound implicitly: changing them changes the key.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_primitives::Address;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use async_trait::async_trait;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use keyguard_chain::{KeyId, PublicKey, Scheme, Signature, SigningPayload};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::{BackendError, KeyBackend, KeyInfo};

/// File name suffix of a key file; anything else in the directory is ignored.
const KEY_FILE_SUFFIX: &str = ".key.json";
/// The only key file version this code reads and writes.
const KEY_FILE_VERSION: u32 = 1;
/// Domain separation for the AEAD associated data, so the bytes mean nothing elsewhere.
const AAD_DOMAIN: &[u8] = b"keyguard/keyfile";
const SALT_LEN: usize = 16;
const SECRET_LEN: usize = 32;
/// A key file cannot make `open` allocate more than this for argon2 (4 GiB): an edited file
/// must not be able to take the daemon down by memory exhaustion.
const MAX_KDF_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// Web3 keystores whose scrypt needs more than 1 GiB (128 * r * n bytes) are refused for the
/// same reason; geth's standard parameters (n = 2^18, r = 8) need 256 MiB.
const MAX_SCRYPT_MEMORY: u64 = 1 << 30;

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

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> KeystoreError {
    KeystoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The Ethereum address of a secp256k1 key (keccak256 of `X || Y`, last 20 bytes).
/// `None` for keys of other schemes.
pub fn evm_address(pk: &PublicKey) -> Option<Address> {
    match pk {
        PublicKey::Secp256k1(sec1) => Some(Address::from_raw_public_key(&sec1[1..])),
        PublicKey::Ed25519(_) => None,
    }
}

/// A decrypted private key. Both types zeroize themselves on drop.
enum SecretKey {
    Secp256k1(k256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl SecretKey {
    fn generate(scheme: Scheme) -> Self {
        match scheme {
            Scheme::Secp256k1 => SecretKey::Secp256k1(k256::ecdsa::SigningKey::random(&mut OsRng)),
            Scheme::Ed25519 => SecretKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng)),
        }
    }

    /// Rebuilds a key from its 32 secret bytes; `None` if they are not a valid key.
    fn from_bytes(scheme: Scheme, bytes: &[u8]) -> Option<Self> {
        match scheme {
            // Rejects zero and scalars not below the group order.
            Scheme::Secp256k1 => k256::ecdsa::SigningKey::from_slice(bytes)
                .ok()
                .map(SecretKey::Secp256k1),
            Scheme::Ed25519 => {
                let seed: &[u8; SECRET_LEN] = bytes.try_into().ok()?;
                Some(SecretKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                    seed,
                )))
            }
        }
    }

    fn to_bytes(&self) -> Zeroizing<[u8; SECRET_LEN]> {
        let mut out = Zeroizing::new([0u8; SECRET_LEN]);
        match self {
            SecretKey::Secp256k1(key) => {
                let mut bytes = key.to_bytes();
                out.copy_from_slice(&bytes);
                bytes.as_mut_slice().zeroize();
            }
            SecretKey::Ed25519(key) => {
                let mut bytes = key.to_bytes();
                out.copy_from_slice(&bytes);
                bytes.zeroize();
            }
        }
        out
    }

    fn public_key(&self) -> PublicKey {
        match self {
            SecretKey::Secp256k1(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                let mut sec1 = [0u8; 65];
                sec1.copy_from_slice(point.as_bytes());
                PublicKey::Secp256k1(sec1)
            }
            SecretKey::Ed25519(key) => PublicKey::Ed25519(key.verifying_key().to_bytes()),
        }
    }

    fn sign(&self, id: &KeyId, payload: &SigningPayload) -> Result<Signature, BackendError> {
        let failed = |reason: String| BackendError::SigningFailed {
            key: id.clone(),
            reason,
        };
        match (self, payload) {
            (SecretKey::Secp256k1(key), SigningPayload::Secp256k1Prehash(prehash)) => {
                let (mut sig, mut recid) = key
                    .sign_prehash_recoverable(prehash)
                    .map_err(|e| failed(e.to_string()))?;
                // k256 already returns low S; normalizing again keeps the guarantee local, and
                // negating s reflects the nonce point, so the y parity flips with it.
                if let Some(low) = sig.normalize_s() {
                    sig = low;
                    recid = k256::ecdsa::RecoveryId::new(!recid.is_y_odd(), recid.is_x_reduced());
                }
                if recid.is_x_reduced() {
                    // Probability ~2^-127; the (r, s, y-parity) form cannot express it.
                    return Err(failed("nonce point x exceeded the group order".into()));
                }
                let (r, s) = sig.split_bytes();
                Ok(Signature::Secp256k1 {
                    r: r.into(),
                    s: s.into(),
                    recovery_id: u8::from(recid.is_y_odd()),
                })
            }
            (SecretKey::Ed25519(key), SigningPayload::Ed25519Message(message)) => {
                use ed25519_dalek::Signer as _;
                Ok(Signature::Ed25519(key.sign(message).to_bytes()))
            }
            (key, payload) => Err(BackendError::SchemeMismatch {
                key: id.clone(),
                actual: key.scheme(),
                wanted: payload.scheme(),
            }),
        }
    }

    fn scheme(&self) -> Scheme {
        match self {
            SecretKey::Secp256k1(_) => Scheme::Secp256k1,
            SecretKey::Ed25519(_) => Scheme::Ed25519,
        }
    }
}

/// A key ready to sign, with its public half as read at load time.
struct LoadedKey {
    info: KeyInfo,
    secret: SecretKey,
}

// ---------------------------------------------------------------------------------------------
// Key file codec

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    id: KeyId,
    scheme: Scheme,
    public_key: String,
    kdf: KdfSection,
    cipher: CipherSection,
    created_at_unix: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfSection {
    alg: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CipherSection {
    alg: String,
    nonce: String,
    ciphertext: String,
}

/// A key file parsed and checked for everything that needs no passphrase.
struct ParsedKeyFile {
    info: KeyInfo,
    kdf: KdfParams,
    salt: Vec<u8>,
    nonce: [u8; 24],
    ciphertext: Vec<u8>,
}

const ARGON2ID: &str = "argon2id";
const XCHACHA20POLY1305: &str = "xchacha20poly1305";

fn argon2_params(kdf: &KdfParams) -> Result<Params, String> {
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
        Some(SECRET_LEN),
    )
    .map_err(|e| format!("argon2 parameters rejected: {e}"))
}

/// Derives the file key. argon2's working memory is itself secret-derived (it lets one finish
/// the hash without the passphrase), so it lives in a zeroizing buffer too.
fn derive_file_key(
    passphrase: &Passphrase,
    kdf: &KdfParams,
    salt: &[u8],
) -> Result<Zeroizing<[u8; SECRET_LEN]>, String> {
    let params = argon2_params(kdf)?;
    let mut memory = Zeroizing::new(vec![Block::default(); params.block_count()]);
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; SECRET_LEN]);
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

/// version || len(id) || id || scheme || public key, with a domain prefix.
fn associated_data(id: &KeyId, public_key: &PublicKey) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + 4 + 1 + 64 + 1 + 65);
    aad.extend_from_slice(AAD_DOMAIN);
    aad.extend_from_slice(&KEY_FILE_VERSION.to_be_bytes());
    // Ids are at most 64 bytes (KeyId enforces it), so one length byte is unambiguous.
    aad.push(id.as_str().len() as u8);
    aad.extend_from_slice(id.as_str().as_bytes());
    aad.push(match public_key.scheme() {
        Scheme::Secp256k1 => 1,
        Scheme::Ed25519 => 2,
    });
    aad.extend_from_slice(public_key.as_bytes());
    aad
}

fn parse_public_key(scheme: Scheme, hex_str: &str) -> Result<PublicKey, String> {
    let bytes = hex::decode(hex_str).map_err(|e| format!("public_key is not hex: {e}"))?;
    match scheme {
        Scheme::Secp256k1 => {
            let sec1: [u8; 65] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| "secp256k1 public_key must be 65 bytes (uncompressed)".to_string())?;
            if sec1[0] != 0x04 || k256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).is_err() {
                return Err("public_key is not an uncompressed secp256k1 point".into());
            }
            Ok(PublicKey::Secp256k1(sec1))
        }
        Scheme::Ed25519 => {
            let raw: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| "ed25519 public_key must be 32 bytes".to_string())?;
            ed25519_dalek::VerifyingKey::from_bytes(&raw)
                .map_err(|_| "public_key is not an ed25519 point".to_string())?;
            Ok(PublicKey::Ed25519(raw))
        }
    }
}

fn parse_key_file(path: &Path, contents: &[u8]) -> Result<ParsedKeyFile, KeystoreError> {
    let file: KeyFile =
        serde_json::from_slice(contents).map_err(|e| corrupt(path, e.to_string()))?;
    if file.version != KEY_FILE_VERSION {
        return Err(corrupt(
            path,
            format!("unsupported version {}", file.version),
        ));
    }
    // The id inside the file must be the one its name claims: otherwise copying a file under
    // another name would make a key answer to an id it was never created for.
    let expected_name = format!("{}{KEY_FILE_SUFFIX}", file.id);
    if path.file_name().and_then(|n| n.to_str()) != Some(expected_name.as_str()) {
        return Err(corrupt(
            path,
            format!(
                "file holds key {:?}, its name says otherwise",
                file.id.as_str()
            ),
        ));
    }
    if file.kdf.alg != ARGON2ID {
        return Err(corrupt(path, format!("unsupported kdf {:?}", file.kdf.alg)));
    }
    if file.cipher.alg != XCHACHA20POLY1305 {
        return Err(corrupt(
            path,
            format!("unsupported cipher {:?}", file.cipher.alg),
        ));
    }
    let public_key =
        parse_public_key(file.scheme, &file.public_key).map_err(|r| corrupt(path, r))?;
    let kdf = KdfParams {
        memory_kib: file.kdf.memory_kib,
        iterations: file.kdf.iterations,
        parallelism: file.kdf.parallelism,
    };
    argon2_params(&kdf).map_err(|r| corrupt(path, r))?;
    let salt = hex::decode(&file.kdf.salt).map_err(|e| corrupt(path, format!("salt: {e}")))?;
    if salt.len() < 8 {
        return Err(corrupt(path, "salt shorter than 8 bytes"));
    }
    let nonce: [u8; 24] = hex::decode(&file.cipher.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| corrupt(path, "nonce must be 24 bytes of hex"))?;
    let ciphertext = hex::decode(&file.cipher.ciphertext)
        .map_err(|e| corrupt(path, format!("ciphertext: {e}")))?;
    if ciphertext.len() != SECRET_LEN + 16 {
        return Err(corrupt(path, "ciphertext has the wrong length"));
    }
    Ok(ParsedKeyFile {
        info: KeyInfo {
            id: file.id,
            public_key,
        },
        kdf,
        salt,
        nonce,
        ciphertext,
    })
}

/// Why a parsed file did not yield a key.
enum DecryptFailure {
    /// The AEAD tag did not verify: wrong passphrase, or the file was altered.
    Aead,
    /// Anything else; always a corrupt file.
    Other(KeystoreError),
}

fn decrypt_key_file(
    path: &Path,
    parsed: &ParsedKeyFile,
    passphrase: &Passphrase,
) -> Result<SecretKey, DecryptFailure> {
    let file_key = derive_file_key(passphrase, &parsed.kdf, &parsed.salt)
        .map_err(|r| DecryptFailure::Other(corrupt(path, r)))?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(file_key.as_slice()));
    let aad = associated_data(&parsed.info.id, &parsed.info.public_key);
    let mut plaintext = Zeroizing::new(parsed.ciphertext.clone());
    cipher
        .decrypt_in_place(XNonce::from_slice(&parsed.nonce), &aad, &mut *plaintext)
        .map_err(|_| DecryptFailure::Aead)?;
    let scheme = parsed.info.scheme();
    let secret = SecretKey::from_bytes(scheme, &plaintext).ok_or_else(|| {
        DecryptFailure::Other(corrupt(
            path,
            format!("decrypted secret is not a valid {scheme} key"),
        ))
    })?;
    if secret.public_key() != parsed.info.public_key {
        return Err(DecryptFailure::Other(corrupt(
            path,
            "decrypted secret does not derive the stored public key",
        )));
    }
    Ok(secret)
}

fn encrypt_key_file(
    id: &KeyId,
    secret: &SecretKey,
    passphrase: &Passphrase,
    kdf: &KdfParams,
) -> Result<(KeyInfo, Vec<u8>), KeystoreError> {
    let public_key = secret.public_key();
    let mut salt = [0u8; SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    let file_key = derive_file_key(passphrase, kdf, &salt).map_err(KeystoreError::InvalidKdf)?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(file_key.as_slice()));
    let aad = associated_data(id, &public_key);
    // Reserve room for the tag so encryption never reallocates and strands a plaintext copy.
    let mut buffer = Zeroizing::new(Vec::with_capacity(SECRET_LEN + 16));
    buffer.extend_from_slice(secret.to_bytes().as_slice());
    cipher
        .encrypt_in_place(XNonce::from_slice(&nonce), &aad, &mut *buffer)
        .map_err(|_| KeystoreError::InvalidSecret("encryption failed".into()))?;
    let created_at_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let file = KeyFile {
        version: KEY_FILE_VERSION,
        id: id.clone(),
        scheme: public_key.scheme(),
        public_key: hex::encode(public_key.as_bytes()),
        kdf: KdfSection {
            alg: ARGON2ID.into(),
            memory_kib: kdf.memory_kib,
            iterations: kdf.iterations,
            parallelism: kdf.parallelism,
            salt: hex::encode(salt),
        },
        cipher: CipherSection {
            alg: XCHACHA20POLY1305.into(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(buffer.as_slice()),
        },
        created_at_unix,
    };
    let mut json = serde_json::to_vec_pretty(&file).expect("key file serializes");
    json.push(b'\n');
    Ok((
        KeyInfo {
            id: id.clone(),
            public_key,
        },
        json,
    ))
}

// ---------------------------------------------------------------------------------------------
// Files and permissions

/// Anyone who can read a key file can run an offline passphrase search against it, and anyone
/// who can write the directory can swap keys or block startup, so group and other get nothing.
fn check_private(path: &Path, meta: &fs::Metadata, fix: &str) -> Result<(), KeystoreError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeystoreError::Permissions {
            path: path.to_path_buf(),
            reason: format!(
                "mode {mode:04o} gives group/other access; run `chmod {fix} {}`",
                path.display()
            ),
        });
    }
    Ok(())
}

fn check_dir(dir: &Path) -> Result<(), KeystoreError> {
    let meta = fs::metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(KeystoreError::Io {
            path: dir.to_path_buf(),
            source: io::Error::other("not a directory"),
        });
    }
    check_private(dir, &meta, "700")
}

/// Paths of every `*.key.json` in `dir`, sorted.
fn key_file_paths(dir: &Path) -> Result<Vec<PathBuf>, KeystoreError> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.ends_with(KEY_FILE_SUFFIX)) {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

/// Reads a key file after checking it is a private regular file (not a symlink, which could
/// point anywhere), re-checking on the open handle so a swap in between is caught.
fn read_key_file(path: &Path) -> Result<Vec<u8>, KeystoreError> {
    let link_meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    if !link_meta.file_type().is_file() {
        return Err(corrupt(path, "not a regular file"));
    }
    check_private(path, &link_meta, "600")?;
    let mut file = File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    if meta.ino() != link_meta.ino() || meta.dev() != link_meta.dev() {
        return Err(corrupt(path, "file changed while it was being opened"));
    }
    check_private(path, &meta, "600")?;
    let mut contents = Vec::new();
    file.read_to_end(&mut contents).map_err(io_err(path))?;
    Ok(contents)
}

fn key_file_path(dir: &Path, id: &KeyId) -> PathBuf {
    dir.join(format!("{id}{KEY_FILE_SUFFIX}"))
}

/// Writes `contents` as `<dir>/<id>.key.json` without ever replacing an existing file and
/// without a window in which a partial file has the final name.
fn write_new_key_file(dir: &Path, id: &KeyId, contents: &[u8]) -> Result<PathBuf, KeystoreError> {
    let final_path = key_file_path(dir, id);
    let mut tag = [0u8; 8];
    OsRng.fill_bytes(&mut tag);
    let tmp_path = dir.join(format!(".{id}{KEY_FILE_SUFFIX}.tmp-{}", hex::encode(tag)));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp_path)
            .map_err(io_err(&tmp_path))?;
        file.write_all(contents).map_err(io_err(&tmp_path))?;
        file.sync_all().map_err(io_err(&tmp_path))?;
        drop(file);
        // A hard link fails if the target exists, where rename would silently replace a key.
        fs::hard_link(&tmp_path, &final_path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                KeystoreError::Exists(id.clone())
            } else {
                io_err(&final_path)(e)
            }
        })
    })();
    let removed = fs::remove_file(&tmp_path);
    result?;
    removed.map_err(io_err(&tmp_path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(final_path)
}

// ---------------------------------------------------------------------------------------------
// The keystore

/// The encrypted software keystore, open and ready to sign.
pub struct SoftwareKeystore {
    dir: PathBuf,
    /// Kept to encrypt keys created after `open`; each new file gets its own salt.
    passphrase: Passphrase,
    kdf: KdfParams,
    keys: RwLock<BTreeMap<KeyId, Arc<LoadedKey>>>,
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
        if let Some((path, id)) = aead_failures.into_iter().next() {
            return Err(if keys.is_empty() {
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
        })
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
        let claimed_address = check_keystore_v3(path)?;
        let secret = Zeroizing::new(eth_keystore::decrypt_key(path, password).map_err(
            |e| match e {
                eth_keystore::KeystoreError::MacMismatch => {
                    KeystoreError::KeystoreV3("wrong password (MAC mismatch)".into())
                }
                other => KeystoreError::KeystoreV3(other.to_string()),
            },
        )?);
        let key = SecretKey::from_bytes(Scheme::Secp256k1, &secret).ok_or_else(|| {
            KeystoreError::InvalidSecret(
                "decrypted keystore v3 secret is not a secp256k1 key".into(),
            )
        })?;
        if let Some(claimed) = claimed_address {
            let derived = evm_address(&key.public_key()).expect("secp256k1 key has an address");
            if claimed != derived {
                return Err(KeystoreError::KeystoreV3(format!(
                    "file claims address {claimed}, the key's address is {derived}"
                )));
            }
        }
        self.add(id, key)
    }

    fn add(&self, id: KeyId, secret: SecretKey) -> Result<KeyInfo, KeystoreError> {
        if self.read_keys().contains_key(&id) {
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

/// Checks a keystore v3 file before eth-keystore reads it: that crate indexes buffers by the
/// lengths the file declares and would panic on a short `iv` or `dklen`, ignores `cipher`, and
/// lets `n` ask for any amount of memory. Returns the `address` field, if any.
fn check_keystore_v3(path: &Path) -> Result<Option<Address>, KeystoreError> {
    let bad = |reason: &str| KeystoreError::KeystoreV3(format!("{}: {reason}", path.display()));
    let text = fs::read(path).map_err(io_err(path))?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    if json.get("version").and_then(|v| v.as_u64()) != Some(3) {
        return Err(bad("not a version 3 keystore"));
    }
    let crypto = json
        .get("crypto")
        .ok_or_else(|| bad("no `crypto` object (a `Crypto` key must be renamed to `crypto`)"))?;
    let field = |name: &str| {
        crypto
            .get(name)
            .ok_or_else(|| bad(&format!("missing crypto.{name}")))
    };
    let hex_len = |value: &serde_json::Value| {
        value
            .as_str()
            .and_then(|s| hex::decode(s).ok())
            .map(|b| b.len())
    };
    if field("cipher")?.as_str() != Some("aes-128-ctr") {
        return Err(bad("only the aes-128-ctr cipher is supported"));
    }
    let iv = field("cipherparams")?.get("iv");
    if iv.and_then(hex_len) != Some(16) {
        return Err(bad("cipherparams.iv must be 16 bytes of hex"));
    }
    if hex_len(field("ciphertext")?) != Some(32) {
        return Err(bad("ciphertext must be 32 bytes of hex"));
    }
    if hex_len(field("mac")?) != Some(32) {
        return Err(bad("mac must be 32 bytes of hex"));
    }
    let params = field("kdfparams")?;
    if params.get("dklen").and_then(|v| v.as_u64()) != Some(32) {
        return Err(bad("kdfparams.dklen must be 32"));
    }
    if params.get("salt").and_then(hex_len).is_none() {
        return Err(bad("kdfparams.salt must be hex"));
    }
    let number = |name: &str| params.get(name).and_then(|v| v.as_u64());
    match field("kdf")?.as_str() {
        Some("scrypt") => {
            let n = number("n").ok_or_else(|| bad("kdfparams.n missing"))?;
            if n < 2 || !n.is_power_of_two() {
                return Err(bad("scrypt n must be a power of two"));
            }
            let r = number("r").ok_or_else(|| bad("kdfparams.r missing"))?;
            let p = number("p").ok_or_else(|| bad("kdfparams.p missing"))?;
            if r == 0 || p == 0 || p > 16 {
                return Err(bad("scrypt r or p out of range"));
            }
            if 128u64.saturating_mul(r).saturating_mul(n) > MAX_SCRYPT_MEMORY {
                return Err(bad("scrypt parameters need more than 1 GiB of memory"));
            }
        }
        Some("pbkdf2") => {
            if params.get("prf").and_then(|v| v.as_str()) != Some("hmac-sha256") {
                return Err(bad("pbkdf2 prf must be hmac-sha256"));
            }
            if !number("c").is_some_and(|c| (1..=u64::from(u32::MAX)).contains(&c)) {
                return Err(bad("pbkdf2 c missing or out of range"));
            }
        }
        _ => return Err(bad("kdf must be scrypt or pbkdf2")),
    }
    match json.get("address") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => {
            let text = value
                .as_str()
                .ok_or_else(|| bad("address must be a string"))?;
            let text = text.strip_prefix("0x").unwrap_or(text);
            let bytes: [u8; 20] = hex::decode(text)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("address must be 20 bytes of hex"))?;
            Ok(Some(Address::from(bytes)))
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{B256, U256};

    const PASS: &str = "correct horse battery staple";

    fn fast_kdf() -> KdfParams {
        KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn pass(p: &str) -> Passphrase {
        Passphrase::new(p.to_string())
    }

    fn id(s: &str) -> KeyId {
        KeyId::new(s).unwrap()
    }

    /// A fresh keystore directory (mode 0700) inside a temp dir.
    fn store_dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        (tmp, dir)
    }

    fn open(dir: &Path, p: &str) -> Result<SoftwareKeystore, KeystoreError> {
        SoftwareKeystore::open(dir, &pass(p), fast_kdf())
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Checks a secp256k1 signature with alloy's recovery, not with anything in this module.
    fn assert_secp_signature_valid(info: &KeyInfo, prehash: [u8; 32], sig: &Signature) {
        let Signature::Secp256k1 { r, s, recovery_id } = sig else {
            panic!("expected a secp256k1 signature");
        };
        assert!(*recovery_id <= 1);
        let s = U256::from_be_bytes(*s);
        let half_n = U256::from_str_radix(
            "7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0",
            16,
        )
        .unwrap();
        assert!(s <= half_n, "high s");
        let alloy_sig =
            alloy_primitives::Signature::new(U256::from_be_bytes(*r), s, *recovery_id == 1);
        let recovered = alloy_sig
            .recover_address_from_prehash(&B256::from(prehash))
            .unwrap();
        assert_eq!(Some(recovered), evm_address(&info.public_key));
    }

    fn assert_ed25519_signature_valid(info: &KeyInfo, message: &[u8], sig: &Signature) {
        let Signature::Ed25519(bytes) = sig else {
            panic!("expected an ed25519 signature");
        };
        let PublicKey::Ed25519(pk) = info.public_key else {
            panic!("expected an ed25519 key");
        };
        ed25519_dalek::VerifyingKey::from_bytes(&pk)
            .unwrap()
            .verify_strict(message, &ed25519_dalek::Signature::from_bytes(bytes))
            .unwrap();
    }

    #[test]
    fn generate_reopen_and_sign_both_schemes() {
        let (_tmp, dir) = store_dir();
        let store = open(&dir, PASS).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let secp = store.generate(id("evm"), Scheme::Secp256k1).unwrap();
        let ed = store.generate(id("cometbft"), Scheme::Ed25519).unwrap();
        let file = key_file_path(&dir, &id("evm"));
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            store.generate(id("evm"), Scheme::Ed25519),
            Err(KeystoreError::Exists(_))
        ));
        // No temp files left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        drop(store);

        let listed = SoftwareKeystore::list(&dir).unwrap();
        assert_eq!(listed, vec![ed.clone(), secp.clone()]);

        let store = open(&dir, PASS).unwrap();
        assert_eq!(store.name(), "software");
        assert_eq!(store.keys(), vec![ed.clone(), secp.clone()]);
        assert_eq!(store.public_key(&id("evm")).unwrap(), secp.public_key);

        for i in 0u8..16 {
            let prehash = [i.wrapping_mul(37).wrapping_add(1); 32];
            let sig = block_on(store.sign(&id("evm"), &SigningPayload::Secp256k1Prehash(prehash)))
                .unwrap();
            assert_secp_signature_valid(&secp, prehash, &sig);
        }
        let message = b"canonical vote bytes".to_vec();
        let sig = block_on(store.sign(
            &id("cometbft"),
            &SigningPayload::Ed25519Message(message.clone()),
        ))
        .unwrap();
        assert_ed25519_signature_valid(&ed, &message, &sig);

        assert!(matches!(
            block_on(store.sign(&id("evm"), &SigningPayload::Ed25519Message(message))),
            Err(BackendError::SchemeMismatch { .. })
        ));
        assert!(matches!(
            block_on(store.sign(&id("cometbft"), &SigningPayload::Secp256k1Prehash([1; 32]))),
            Err(BackendError::SchemeMismatch { .. })
        ));
        assert!(matches!(
            block_on(store.sign(&id("nope"), &SigningPayload::Secp256k1Prehash([1; 32]))),
            Err(BackendError::UnknownKey(_))
        ));
    }

    #[test]
    fn wrong_passphrase_is_refused() {
        let (_tmp, dir) = store_dir();
        let store = open(&dir, PASS).unwrap();
        store.generate(id("a"), Scheme::Secp256k1).unwrap();
        store.generate(id("b"), Scheme::Ed25519).unwrap();
        drop(store);
        match open(&dir, "not the passphrase") {
            Err(KeystoreError::WrongPassphrase { key }) => assert_eq!(key, id("a")),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn write_private(path: &Path, contents: &[u8]) {
        fs::write(path, contents).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn edit_key_file(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut json: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
        edit(&mut json);
        write_private(path, &serde_json::to_vec(&json).unwrap());
    }

    #[test]
    fn tampered_ciphertext_is_refused() {
        let (_tmp, dir) = store_dir();
        let store = open(&dir, PASS).unwrap();
        store.generate(id("a"), Scheme::Secp256k1).unwrap();
        store.generate(id("b"), Scheme::Secp256k1).unwrap();
        drop(store);
        edit_key_file(&key_file_path(&dir, &id("b")), |json| {
            let ct = json["cipher"]["ciphertext"].as_str().unwrap().to_string();
            let mut bytes = hex::decode(ct).unwrap();
            bytes[0] ^= 1;
            json["cipher"]["ciphertext"] = hex::encode(bytes).into();
        });
        assert!(matches!(
            open(&dir, PASS),
            Err(KeystoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn swapped_or_relabelled_files_are_refused() {
        let (_tmp, dir) = store_dir();
        let store = open(&dir, PASS).unwrap();
        let a = store.generate(id("a"), Scheme::Secp256k1).unwrap();
        let b = store.generate(id("b"), Scheme::Secp256k1).unwrap();
        drop(store);
        let path_a = key_file_path(&dir, &id("a"));
        let path_b = key_file_path(&dir, &id("b"));
        let original_a = fs::read(&path_a).unwrap();
        let original_b = fs::read(&path_b).unwrap();

        // b's file renamed to `a` with its id edited to match: the AEAD binding catches it.
        fs::rename(&path_b, &path_a).unwrap();
        edit_key_file(&path_a, |json| json["id"] = "a".into());
        assert!(matches!(
            open(&dir, PASS),
            Err(KeystoreError::WrongPassphrase { .. })
        ));
        write_private(&path_b, &original_b);
        assert!(matches!(
            open(&dir, PASS),
            Err(KeystoreError::Corrupt { .. })
        ));
        write_private(&path_a, &original_a);
        open(&dir, PASS).unwrap();

        // A file that claims another key's public key.
        edit_key_file(&path_a, |json| {
            json["public_key"] = hex::encode(b.public_key.as_bytes()).into();
        });
        assert_ne!(a.public_key, b.public_key);
        assert!(matches!(
            open(&dir, PASS),
            Err(KeystoreError::Corrupt { .. })
        ));

        // A file whose id field disagrees with its name.
        edit_key_file(&path_b, |json| json["id"] = "zzz".into());
        let err = SoftwareKeystore::list(&dir).unwrap_err();
        assert!(matches!(err, KeystoreError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn group_or_other_access_is_refused() {
        let (_tmp, dir) = store_dir();
        let store = open(&dir, PASS).unwrap();
        store.generate(id("a"), Scheme::Ed25519).unwrap();
        drop(store);
        let file = key_file_path(&dir, &id("a"));

        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            open(&dir, PASS),
            Err(KeystoreError::Permissions { .. })
        ));
        assert!(matches!(
            SoftwareKeystore::list(&dir),
            Err(KeystoreError::Permissions { .. })
        ));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        open(&dir, PASS).unwrap();

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        let err = open(&dir, PASS).unwrap_err();
        assert!(matches!(err, KeystoreError::Permissions { .. }), "{err:?}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();

        // A symlinked key file is refused even if its target is private.
        let elsewhere = dir.parent().unwrap().join("elsewhere.json");
        fs::copy(&file, &elsewhere).unwrap();
        fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        assert!(matches!(
            open(&dir, PASS),
            Err(KeystoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn import_raw_secp256k1_secret() {
        let (_tmp, dir) = store_dir();
        let store = open(&dir, PASS).unwrap();
        // Private key 1: the generator point, address 0x7E5F...5Bdf.
        let mut one = [0u8; 32];
        one[31] = 1;
        let info = store
            .import_secp256k1(id("one"), Zeroizing::new(one))
            .unwrap();
        assert_eq!(
            evm_address(&info.public_key).unwrap(),
            "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
                .parse::<Address>()
                .unwrap()
        );
        for bad in [
            [0u8; 32],
            [0xff; 32],
            hex::decode("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141")
                .unwrap()
                .try_into()
                .unwrap(),
        ] {
            assert!(matches!(
                store.import_secp256k1(id("bad"), Zeroizing::new(bad)),
                Err(KeystoreError::InvalidSecret(_))
            ));
        }
        drop(store);
        let store = open(&dir, PASS).unwrap();
        assert_eq!(store.keys(), vec![info]);
    }

    /// The pbkdf2 vector of the Web3 Secret Storage definition (password `testpassword`).
    const WEB3_PBKDF2_VECTOR: &str = r#"{
        "crypto" : {
            "cipher" : "aes-128-ctr",
            "cipherparams" : { "iv" : "6087dab2f9fdbbfaddc31a909735c1e6" },
            "ciphertext" : "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
            "kdf" : "pbkdf2",
            "kdfparams" : {
                "c" : 262144,
                "dklen" : 32,
                "prf" : "hmac-sha256",
                "salt" : "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"
            },
            "mac" : "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2"
        },
        "id" : "3198bc9c-6672-5ab3-d995-4942343ae5b6",
        "version" : 3
    }"#;
    const WEB3_VECTOR_SECRET: &str =
        "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d";
    const WEB3_VECTOR_ADDRESS: &str = "008aeeda4d805471df9b2a5b0f38a0c3bcba786b";

    #[test]
    fn import_keystore_v3_pbkdf2_vector() {
        let (tmp, dir) = store_dir();
        let store = open(&dir, PASS).unwrap();
        let v3 = tmp.path().join("web3.json");
        fs::write(&v3, WEB3_PBKDF2_VECTOR).unwrap();
        assert!(matches!(
            store.import_keystore_v3(id("w"), &v3, "wrongpassword"),
            Err(KeystoreError::KeystoreV3(_))
        ));
        let info = store
            .import_keystore_v3(id("w"), &v3, "testpassword")
            .unwrap();
        let expected: Address = WEB3_VECTOR_ADDRESS.parse().unwrap();
        assert_eq!(evm_address(&info.public_key), Some(expected));

        // The same key through the raw import path derives the same public key.
        let raw: [u8; 32] = hex::decode(WEB3_VECTOR_SECRET).unwrap().try_into().unwrap();
        let raw_info = store
            .import_secp256k1(id("raw"), Zeroizing::new(raw))
            .unwrap();
        assert_eq!(raw_info.public_key, info.public_key);
    }

    #[test]
    fn import_keystore_v3_scrypt_checks_address() {
        let (tmp, dir) = store_dir();
        let store = open(&dir, PASS).unwrap();
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let expected = SecretKey::from_bytes(Scheme::Secp256k1, &secret)
            .unwrap()
            .public_key();
        eth_keystore::encrypt_key(tmp.path(), &mut OsRng, secret, "pw", Some("v3.json")).unwrap();
        let v3 = tmp.path().join("v3.json");

        // geth writes the address without 0x; a wrong one must be refused.
        let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&v3).unwrap()).unwrap();
        json["address"] = "00000398232e2064f896018496b4b44b3d62751f".into();
        fs::write(&v3, serde_json::to_vec(&json).unwrap()).unwrap();
        let err = store.import_keystore_v3(id("k"), &v3, "pw").unwrap_err();
        assert!(matches!(err, KeystoreError::KeystoreV3(_)), "{err:?}");

        let address = evm_address(&expected).unwrap();
        json["address"] = hex::encode(address).into();
        fs::write(&v3, serde_json::to_vec(&json).unwrap()).unwrap();
        let info = store.import_keystore_v3(id("k"), &v3, "pw").unwrap();
        assert_eq!(info.public_key, expected);

        // A file that would make eth-keystore index out of bounds is refused, not a panic.
        json["crypto"]["cipherparams"]["iv"] = "00".into();
        fs::write(&v3, serde_json::to_vec(&json).unwrap()).unwrap();
        assert!(matches!(
            store.import_keystore_v3(id("k2"), &v3, "pw"),
            Err(KeystoreError::KeystoreV3(_))
        ));

        drop(store);
        let store = open(&dir, PASS).unwrap();
        assert_eq!(store.keys(), vec![info]);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let (_tmp, dir) = store_dir();
        let p = pass("hunter2-passphrase");
        assert_eq!(format!("{p:?}"), "Passphrase(***)");
        let store = SoftwareKeystore::open(&dir, &p, fast_kdf()).unwrap();
        let mut one = [0u8; 32];
        one[31] = 7;
        store
            .import_secp256k1(id("k"), Zeroizing::new(one))
            .unwrap();
        let shown = format!("{store:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("\"k\""), "{shown}");
        assert!(!shown.contains("0000000000000007"), "{shown}");
    }

    #[test]
    fn list_of_missing_dir_is_empty() {
        let (_tmp, dir) = store_dir();
        assert!(SoftwareKeystore::list(&dir).unwrap().is_empty());
    }
}
