//! BIP32 seeds in the software keystore: `<dir>/<id>.seed.json`, the 64-byte BIP39 seed
//! encrypted exactly like a key file (argon2id + XChaCha20-Poly1305). Child keys are derived
//! here, per signature, and erased after use; only public material (account xpubs, the master
//! fingerprint, the Ethereum key of m/44'/60'/0'/0/0) ever leaves this module.
//!
//! The AEAD associated data binds the file version, id, fingerprint and Ethereum public key, so
//! a seed file renamed or edited to claim other public facts does not decrypt.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use keyguard_bitcoin::bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, Xpriv, Xpub};
use keyguard_bitcoin::bitcoin::hashes::{hmac, sha512, Hash, HashEngine};
use keyguard_bitcoin::bitcoin::key::TapTweak;
use keyguard_bitcoin::bitcoin::secp256k1::Scalar;
use keyguard_bitcoin::bitcoin::secp256k1::{All, Keypair, Message, Secp256k1, SecretKey};
use keyguard_bitcoin::bitcoin::{NetworkKind, TapNodeHash};
use keyguard_chain::{KeyId, PublicKey, Signature, SigningPayload};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::keyfile::{argon2_params, derive_file_key, DecryptFailure};
use super::{corrupt, KdfParams, KeystoreError, Passphrase};

/// File name suffix of a seed file.
pub(super) const SEED_FILE_SUFFIX: &str = ".seed.json";
/// The Ethereum account of a seed is exposed as an ordinary secp256k1 key `<id>-eth`.
pub const ETH_KEY_SUFFIX: &str = "-eth";
const SEED_FILE_VERSION: u32 = 1;
const AAD_DOMAIN: &[u8] = b"keyguard/seedfile";
const SEED_LEN: usize = 64;

fn secp() -> &'static Secp256k1<All> {
    static CTX: OnceLock<Secp256k1<All>> = OnceLock::new();
    CTX.get_or_init(Secp256k1::new)
}

fn hardened(i: u32) -> ChildNumber {
    ChildNumber::Hardened { index: i }
}

/// BIP44 Ethereum account 0, first address: what wallets (MetaMask, Ledger Live) show first.
fn eth_path() -> DerivationPath {
    DerivationPath::from(vec![
        hardened(44),
        hardened(60),
        hardened(0),
        ChildNumber::Normal { index: 0 },
        ChildNumber::Normal { index: 0 },
    ])
}

/// Public facts of a seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedInfo {
    /// keyguard's name for the seed.
    pub id: KeyId,
    /// BIP32 master key fingerprint.
    pub fingerprint: Fingerprint,
    /// Id of the derived Ethereum key (`<id>-eth`).
    pub eth_key: KeyId,
    /// Its public key.
    pub eth_public_key: PublicKey,
}

/// A decrypted seed; the bytes are zeroized on drop.
pub(super) struct LoadedSeed {
    pub(super) info: SeedInfo,
    seed: Zeroizing<[u8; SEED_LEN]>,
    /// Chain-level keys (`purpose'/coin'/account'/chain`) already derived: the last,
    /// non-hardened step is then one HMAC and one scalar addition instead of a derivation from
    /// the seed with two point multiplications. Holds no more than the seed already gives.
    chains: Mutex<HashMap<Vec<ChildNumber>, Arc<ChainKey>>>,
}

/// A chain-level extended private key; erased on drop.
struct ChainKey {
    secret: SecretKey,
    chain_code: Zeroizing<[u8; 32]>,
    public: keyguard_bitcoin::bitcoin::secp256k1::PublicKey,
}

impl Drop for ChainKey {
    fn drop(&mut self) {
        self.secret.non_secure_erase();
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    version: u32,
    id: KeyId,
    kind: String,
    fingerprint: String,
    eth_public_key: String,
    kdf: Kdf,
    cipher: Cipher,
    created_at_unix: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kdf {
    alg: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cipher {
    alg: String,
    nonce: String,
    ciphertext: String,
}

/// Why a derivation request was refused (never carries key material).
pub(super) type DeriveError = String;

impl LoadedSeed {
    fn from_seed(id: KeyId, seed: Zeroizing<[u8; SEED_LEN]>) -> Result<Self, KeystoreError> {
        let bad = |e: String| KeystoreError::InvalidSecret(e);
        let eth_key =
            KeyId::new(format!("{id}{ETH_KEY_SUFFIX}")).map_err(|e| bad(e.to_string()))?;
        let mut loaded = LoadedSeed {
            info: SeedInfo {
                id,
                fingerprint: Fingerprint::default(),
                eth_key,
                eth_public_key: PublicKey::Secp256k1([0; 65]),
            },
            seed,
            chains: Mutex::new(HashMap::new()),
        };
        let master = loaded.master().map_err(bad)?;
        loaded.info.fingerprint = master.fingerprint(secp());
        let eth = loaded.eth_secret().map_err(bad)?;
        let pk = SecretKey::from_slice(eth.as_slice())
            .map_err(|e| bad(e.to_string()))?
            .public_key(secp())
            .serialize_uncompressed();
        loaded.info.eth_public_key = PublicKey::Secp256k1(pk);
        Ok(loaded)
    }

    fn master(&self) -> Result<Xpriv, DeriveError> {
        Xpriv::new_master(NetworkKind::Main, self.seed.as_slice()).map_err(|e| e.to_string())
    }

    fn derive(&self, path: &DerivationPath) -> Result<SecretKey, DeriveError> {
        let mut master = self.master()?;
        let child = master.derive_priv(secp(), path).map_err(|e| e.to_string());
        master.private_key.non_secure_erase();
        Ok(child?.private_key)
    }

    /// The key at `chain_path / index` (BIP32 CKDpriv for a non-hardened index) from the cached
    /// chain-level key.
    fn address_key(&self, path: &[ChildNumber]) -> Result<SecretKey, DeriveError> {
        let (ChildNumber::Normal { index }, prefix) = path
            .split_last()
            .map(|(last, prefix)| (*last, prefix))
            .ok_or("empty path")?
        else {
            return Err("the last step must be non-hardened".into());
        };
        let chain = self.chain_key(prefix)?;
        let mut engine = hmac::HmacEngine::<sha512::Hash>::new(chain.chain_code.as_slice());
        engine.input(&chain.public.serialize());
        engine.input(&index.to_be_bytes());
        let i = hmac::Hmac::<sha512::Hash>::from_engine(engine).to_byte_array();
        let mut il = Zeroizing::new([0u8; 32]);
        il.copy_from_slice(&i[..32]);
        // IL >= n or a zero child has probability ~2^-127; BIP32 says skip the index: refuse.
        let tweak = Scalar::from_be_bytes(*il).map_err(|_| "invalid child at this index")?;
        chain
            .secret
            .add_tweak(&tweak)
            .map_err(|_| "invalid child at this index".into())
    }

    fn chain_key(&self, prefix: &[ChildNumber]) -> Result<Arc<ChainKey>, DeriveError> {
        let mut chains = self.chains.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = chains.get(prefix) {
            return Ok(k.clone());
        }
        let mut master = self.master()?;
        let derived = master.derive_priv(secp(), &prefix.to_vec());
        master.private_key.non_secure_erase();
        let mut xpriv = derived.map_err(|e| e.to_string())?;
        let key = Arc::new(ChainKey {
            secret: xpriv.private_key,
            chain_code: Zeroizing::new(xpriv.chain_code.to_bytes()),
            public: xpriv.private_key.public_key(secp()),
        });
        xpriv.private_key.non_secure_erase();
        chains.insert(prefix.to_vec(), key.clone());
        Ok(key)
    }

    /// The Ethereum key's secret, for the keystore's ordinary secp256k1 key map.
    pub(super) fn eth_secret(&self) -> Result<Zeroizing<[u8; 32]>, DeriveError> {
        let mut key = self.derive(&eth_path())?;
        let bytes = Zeroizing::new(key.secret_bytes());
        key.non_secure_erase();
        Ok(bytes)
    }

    /// Extended public key at a fully hardened path of depth >= 3. A non-hardened xpub near
    /// the root would let anyone holding one leaked child private key compute the parent's.
    pub(super) fn xpub(
        &self,
        path: &DerivationPath,
        network: NetworkKind,
    ) -> Result<Xpub, DeriveError> {
        if path.len() < 3 || path.into_iter().any(|c| c.is_normal()) {
            return Err(format!(
                "xpubs are exported only at hardened account paths, not {path}"
            ));
        }
        let mut master = self.master()?;
        let derived = master.derive_priv(secp(), path).map_err(|e| e.to_string());
        master.private_key.non_secure_erase();
        let mut derived = derived?;
        let mut xpub = Xpub::from_priv(secp(), &derived);
        derived.private_key.non_secure_erase();
        xpub.network = network;
        Ok(xpub)
    }

    /// Signs with the child at `path`: BIP84/BIP86 `purpose'/coin'/account'/chain/index` only,
    /// so a compromised guard cannot use the seed for keys of other purposes.
    pub(super) fn sign(
        &self,
        path: &DerivationPath,
        payload: &SigningPayload,
    ) -> Result<Signature, DeriveError> {
        let c: Vec<ChildNumber> = path.into_iter().copied().collect();
        let allowed = c.len() == 5
            && matches!(c[0], ChildNumber::Hardened { index: 84 | 86 })
            && c[1].is_hardened()
            && c[2].is_hardened()
            && c[3].is_normal()
            && c[4].is_normal();
        if !allowed {
            return Err(format!(
                "derivation path {path} is not a BIP84/BIP86 address path"
            ));
        }
        let mut key = self.address_key(&c)?;
        let out = match payload {
            SigningPayload::Secp256k1Prehash(digest) => {
                let sig = secp().sign_ecdsa_recoverable(&Message::from_digest(*digest), &key);
                let (recid, compact) = sig.serialize_compact();
                let (mut r, mut s) = ([0u8; 32], [0u8; 32]);
                r.copy_from_slice(&compact[..32]);
                s.copy_from_slice(&compact[32..]);
                Ok(Signature::Secp256k1 {
                    r,
                    s,
                    recovery_id: recid.to_i32() as u8,
                })
            }
            SigningPayload::TaprootKeySpend {
                sighash,
                merkle_root,
            } => {
                let keypair = Keypair::from_secret_key(secp(), &key);
                let root = merkle_root.map(TapNodeHash::from_byte_array);
                let mut tweaked = keypair.tap_tweak(secp(), root).to_keypair();
                let sig = secp().sign_schnorr(&Message::from_digest(*sighash), &tweaked);
                tweaked.non_secure_erase();
                Ok(Signature::Bip340(*sig.as_ref()))
            }
            SigningPayload::Ed25519Message(_) => Err("a seed signs secp256k1 payloads only".into()),
        };
        key.non_secure_erase();
        out
    }
}

/// A seed from a BIP39 mnemonic (English word list) and optional BIP39 passphrase.
pub(super) fn seed_from_mnemonic(
    words: &str,
    bip39_passphrase: &str,
) -> Result<Zeroizing<[u8; SEED_LEN]>, KeystoreError> {
    let mnemonic = bip39::Mnemonic::parse_normalized(words.trim())
        .map_err(|e| KeystoreError::InvalidSecret(format!("mnemonic: {e}")))?;
    Ok(Zeroizing::new(
        mnemonic.to_seed_normalized(bip39_passphrase),
    ))
}

/// A new 24-word mnemonic and its seed.
pub(super) fn generate_mnemonic(
) -> Result<(Zeroizing<String>, Zeroizing<[u8; SEED_LEN]>), KeystoreError> {
    let mut entropy = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(entropy.as_mut_slice());
    let mnemonic = bip39::Mnemonic::from_entropy(entropy.as_slice())
        .map_err(|e| KeystoreError::InvalidSecret(e.to_string()))?;
    let words = Zeroizing::new(mnemonic.to_string());
    Ok((words, Zeroizing::new(mnemonic.to_seed_normalized(""))))
}

fn associated_data(id: &KeyId, fingerprint: &Fingerprint, eth: &PublicKey) -> Vec<u8> {
    let mut aad = AAD_DOMAIN.to_vec();
    aad.extend_from_slice(&SEED_FILE_VERSION.to_be_bytes());
    aad.push(id.as_str().len() as u8);
    aad.extend_from_slice(id.as_str().as_bytes());
    aad.extend_from_slice(fingerprint.as_bytes());
    aad.extend_from_slice(eth.as_bytes());
    aad
}

/// Builds the loaded seed and its encrypted file contents.
pub(super) fn encrypt_seed(
    id: KeyId,
    seed: Zeroizing<[u8; SEED_LEN]>,
    passphrase: &Passphrase,
    kdf: &KdfParams,
) -> Result<(LoadedSeed, Vec<u8>), KeystoreError> {
    let loaded = LoadedSeed::from_seed(id, seed)?;
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    let file_key = derive_file_key(passphrase, kdf, &salt).map_err(KeystoreError::InvalidKdf)?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(file_key.as_slice()));
    let info = &loaded.info;
    let aad = associated_data(&info.id, &info.fingerprint, &info.eth_public_key);
    let mut buffer = Zeroizing::new(Vec::with_capacity(SEED_LEN + 16));
    buffer.extend_from_slice(loaded.seed.as_slice());
    cipher
        .encrypt_in_place(XNonce::from_slice(&nonce), &aad, &mut *buffer)
        .map_err(|_| KeystoreError::InvalidSecret("encryption failed".into()))?;
    let file = SeedFile {
        version: SEED_FILE_VERSION,
        id: info.id.clone(),
        kind: "bip32-seed".into(),
        fingerprint: info.fingerprint.to_string(),
        eth_public_key: hex::encode(info.eth_public_key.as_bytes()),
        kdf: Kdf {
            alg: "argon2id".into(),
            memory_kib: kdf.memory_kib,
            iterations: kdf.iterations,
            parallelism: kdf.parallelism,
            salt: hex::encode(salt),
        },
        cipher: Cipher {
            alg: "xchacha20poly1305".into(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(buffer.as_slice()),
        },
        created_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let mut json = serde_json::to_vec_pretty(&file)
        .map_err(|e| KeystoreError::InvalidSecret(e.to_string()))?;
    json.push(b'\n');
    Ok((loaded, json))
}

fn parse(path: &Path, contents: &[u8]) -> Result<(SeedFile, SeedInfo), KeystoreError> {
    let file: SeedFile =
        serde_json::from_slice(contents).map_err(|e| corrupt(path, e.to_string()))?;
    let expected = format!("{}{SEED_FILE_SUFFIX}", file.id);
    if file.version != SEED_FILE_VERSION || file.kind != "bip32-seed" {
        return Err(corrupt(path, "unsupported seed file version or kind"));
    }
    if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
        return Err(corrupt(path, "file holds another seed than its name says"));
    }
    let fingerprint: Fingerprint = file
        .fingerprint
        .parse()
        .map_err(|_| corrupt(path, "bad fingerprint"))?;
    let eth: [u8; 65] = hex::decode(&file.eth_public_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt(path, "bad eth_public_key"))?;
    let eth_key = KeyId::new(format!("{}{ETH_KEY_SUFFIX}", file.id))
        .map_err(|e| corrupt(path, e.to_string()))?;
    let info = SeedInfo {
        id: file.id.clone(),
        fingerprint,
        eth_key,
        eth_public_key: PublicKey::Secp256k1(eth),
    };
    Ok((file, info))
}

/// Public facts of a seed file, without decrypting it.
pub(super) fn read_info(path: &Path, contents: &[u8]) -> Result<SeedInfo, KeystoreError> {
    parse(path, contents).map(|(_, info)| info)
}

/// Decrypts a seed file and checks it re-derives the facts it claims.
pub(super) fn decrypt_seed(
    path: &Path,
    contents: &[u8],
    passphrase: &Passphrase,
) -> Result<LoadedSeed, DecryptFailure> {
    let other = DecryptFailure::Other;
    let (file, info) = parse(path, contents).map_err(other)?;
    if file.kdf.alg != "argon2id" || file.cipher.alg != "xchacha20poly1305" {
        return Err(other(corrupt(path, "unsupported kdf or cipher")));
    }
    let kdf = KdfParams {
        memory_kib: file.kdf.memory_kib,
        iterations: file.kdf.iterations,
        parallelism: file.kdf.parallelism,
    };
    argon2_params(&kdf).map_err(|r| other(corrupt(path, r)))?;
    let salt = hex::decode(&file.kdf.salt).map_err(|e| other(corrupt(path, e.to_string())))?;
    let nonce: [u8; 24] = hex::decode(&file.cipher.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| other(corrupt(path, "bad nonce")))?;
    let mut plaintext = Zeroizing::new(
        hex::decode(&file.cipher.ciphertext).map_err(|e| other(corrupt(path, e.to_string())))?,
    );
    let file_key = derive_file_key(passphrase, &kdf, &salt).map_err(|r| other(corrupt(path, r)))?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(file_key.as_slice()));
    let aad = associated_data(&info.id, &info.fingerprint, &info.eth_public_key);
    cipher
        .decrypt_in_place(XNonce::from_slice(&nonce), &aad, &mut *plaintext)
        .map_err(|_| DecryptFailure::Aead)?;
    if plaintext.len() != SEED_LEN {
        return Err(other(corrupt(path, "decrypted seed is not 64 bytes")));
    }
    let mut seed = Zeroizing::new([0u8; SEED_LEN]);
    seed.copy_from_slice(&plaintext);
    let loaded = LoadedSeed::from_seed(info.id.clone(), seed).map_err(other)?;
    if loaded.info != info {
        return Err(other(corrupt(
            path,
            "decrypted seed does not derive the stored public facts",
        )));
    }
    Ok(loaded)
}
