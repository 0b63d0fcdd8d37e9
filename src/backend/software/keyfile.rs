//! The key file codec: `<dir>/<id>.key.json`, the secret encrypted with XChaCha20-Poly1305
//! under an argon2id-derived key, written atomically; and the permission checks on the key
//! directory and its files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use keyguard_chain::{KeyId, PublicKey, Scheme};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::secret::{SecretKey, SECRET_LEN};
use super::{corrupt, io_err, KdfParams, KeystoreError, Passphrase};
use crate::backend::KeyInfo;
pub(super) use crate::sealing::{argon2_params, derive_file_key};

/// File name suffix of a key file; anything else in the directory is ignored.
const KEY_FILE_SUFFIX: &str = ".key.json";
/// The only key file version this code reads and writes.
const KEY_FILE_VERSION: u32 = 1;
/// Domain separation for the AEAD associated data, so the bytes mean nothing elsewhere.
const AAD_DOMAIN: &[u8] = b"keyguard/keyfile";
const SALT_LEN: usize = 16;

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
pub(super) struct ParsedKeyFile {
    pub(super) info: KeyInfo,
    kdf: KdfParams,
    salt: Vec<u8>,
    nonce: [u8; 24],
    ciphertext: Vec<u8>,
}

const ARGON2ID: &str = "argon2id";
const XCHACHA20POLY1305: &str = "xchacha20poly1305";

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

pub(super) fn parse_key_file(path: &Path, contents: &[u8]) -> Result<ParsedKeyFile, KeystoreError> {
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
pub(super) enum DecryptFailure {
    /// The AEAD tag did not verify: wrong passphrase, or the file was altered.
    Aead,
    /// Anything else; always a corrupt file.
    Other(KeystoreError),
}

pub(super) fn decrypt_key_file(
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

pub(super) fn encrypt_key_file(
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

pub(super) fn check_dir(dir: &Path) -> Result<(), KeystoreError> {
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
pub(super) fn key_file_paths(dir: &Path) -> Result<Vec<PathBuf>, KeystoreError> {
    file_paths(dir, KEY_FILE_SUFFIX)
}

/// Paths of every file in `dir` whose name ends with `suffix`, sorted.
pub(super) fn file_paths(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, KeystoreError> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.ends_with(suffix)) {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

/// Reads a key file after checking it is a private regular file (not a symlink, which could
/// point anywhere), re-checking on the open handle so a swap in between is caught.
pub(super) fn read_key_file(path: &Path) -> Result<Vec<u8>, KeystoreError> {
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

#[cfg(test)]
pub(super) fn key_file_path(dir: &Path, id: &KeyId) -> PathBuf {
    dir.join(format!("{id}{KEY_FILE_SUFFIX}"))
}

/// Writes `contents` as `<dir>/<id>.key.json` without ever replacing an existing file and
/// without a window in which a partial file has the final name.
pub(super) fn write_new_key_file(
    dir: &Path,
    id: &KeyId,
    contents: &[u8],
) -> Result<PathBuf, KeystoreError> {
    write_new_file(dir, id, KEY_FILE_SUFFIX, contents)
}

/// [`write_new_key_file`] for any suffix (seed files are `<id>.seed.json`).
pub(super) fn write_new_file(
    dir: &Path,
    id: &KeyId,
    suffix: &str,
    contents: &[u8],
) -> Result<PathBuf, KeystoreError> {
    let final_path = dir.join(format!("{id}{suffix}"));
    let mut tag = [0u8; 8];
    OsRng.fill_bytes(&mut tag);
    let tmp_path = dir.join(format!(".{id}{suffix}.tmp-{}", hex::encode(tag)));
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
