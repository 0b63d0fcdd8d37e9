//! Unit tests of the software keystore.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use alloy_primitives::{Address, B256, U256};
use keyguard_chain::{KeyId, PublicKey, Scheme, Signature, SigningPayload};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

use super::keyfile::key_file_path;
use super::secret::SecretKey;
use super::{KdfParams, KeystoreError, Passphrase, SoftwareKeystore};
use crate::backend::{BackendError, KeyBackend, KeyInfo};

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
    let alloy_sig = alloy_primitives::Signature::new(U256::from_be_bytes(*r), s, *recovery_id == 1);
    let recovered = alloy_sig
        .recover_address_from_prehash(&B256::from(prehash))
        .unwrap();
    assert_eq!(Some(recovered), keyguard_evm::address_of(&info.public_key));
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
        let sig =
            block_on(store.sign(&id("evm"), &SigningPayload::Secp256k1Prehash(prehash))).unwrap();
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
        keyguard_evm::address_of(&info.public_key).unwrap(),
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
const WEB3_VECTOR_SECRET: &str = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d";
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
    assert_eq!(keyguard_evm::address_of(&info.public_key), Some(expected));

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

    let address = keyguard_evm::address_of(&expected).unwrap();
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
