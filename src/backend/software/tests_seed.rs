//! BIP32/BIP39 seeds in the software keystore, against the BIPs' published vectors.

use std::str::FromStr;

use keyguard_bitcoin::bitcoin::bip32::DerivationPath;
use keyguard_bitcoin::bitcoin::key::TapTweak;
use keyguard_bitcoin::bitcoin::secp256k1::{ecdsa, schnorr, Message, Secp256k1};
use keyguard_bitcoin::bitcoin::{Address, Network, NetworkKind, XOnlyPublicKey};
use keyguard_chain::{KeyId, Signature, SigningPayload};

use super::{KdfParams, KeystoreError, Passphrase, SoftwareKeystore};
use crate::backend::{BackendError, KeyBackend};

/// The all-"abandon" mnemonic of BIP84/BIP86's test vectors.
const WORDS: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                     abandon abandon about";

fn open(dir: &std::path::Path) -> Result<SoftwareKeystore, KeystoreError> {
    let kdf = KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    SoftwareKeystore::open(dir, &Passphrase::new("pw".into()), kdf)
}

fn id(s: &str) -> KeyId {
    KeyId::new(s).unwrap()
}

fn path(s: &str) -> DerivationPath {
    DerivationPath::from_str(s).unwrap()
}

#[tokio::test]
async fn mnemonic_import_matches_bip84_bip86_and_bip44_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let ks = open(&dir).unwrap();
    let info = ks.import_mnemonic(id("hot"), WORDS, "").unwrap();
    assert_eq!(info.fingerprint.to_string(), "73c5da0a");
    let x84 = ks
        .account_xpub(&id("hot"), &path("m/84'/0'/0'"), NetworkKind::Main)
        .unwrap();
    assert_eq!(x84.to_string(), "xpub6CatWdiZiodmUeTDp8LT5or8nmbKNcuyvz7WyksVFkKB4RHwCD3XyuvPEbvqAQY3rAPshWcMLoP2fMFMKHPJ4ZeZXYVUhLv1VMrjPC7PW6V");
    let x86 = ks
        .account_xpub(&id("hot"), &path("m/86'/0'/0'"), NetworkKind::Main)
        .unwrap();
    assert_eq!(x86.to_string(), "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ");
    // The Ethereum key of the same seed (m/44'/60'/0'/0/0) is an ordinary key.
    let eth = ks.public_key(&id("hot-eth")).unwrap();
    let address = keyguard_evm::address_of(&eth).unwrap();
    assert_eq!(
        address.to_checksum(None),
        "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
    );

    // Reopening decrypts the seed and re-derives the same facts.
    drop(ks);
    let ks = open(&dir).unwrap();
    assert_eq!(ks.seed_infos(), vec![info.clone()]);
    assert_eq!(SoftwareKeystore::list_seeds(&dir).unwrap(), vec![info]);

    // Signing with children: ECDSA for BIP84, tweaked Schnorr for BIP86, checked here against
    // the addresses of the BIP vectors.
    let secp = Secp256k1::verification_only();
    let digest = [9u8; 32];
    let msg = Message::from_digest(digest);
    let child84 = x84.derive_pub(&secp, &path("m/0/0")).unwrap().public_key;
    let addr = Address::p2wpkh(
        &keyguard_bitcoin::bitcoin::CompressedPublicKey(child84),
        Network::Bitcoin,
    );
    assert_eq!(
        addr.to_string(),
        "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
    );
    let sig = ks
        .sign_derived(
            &id("hot"),
            &path("m/84'/0'/0'/0/0"),
            &SigningPayload::Secp256k1Prehash(digest),
        )
        .await
        .unwrap();
    let Signature::Secp256k1 { r, s, .. } = sig else {
        panic!("{sig:?}")
    };
    let compact = [r, s].concat();
    let sig = ecdsa::Signature::from_compact(&compact).unwrap();
    secp.verify_ecdsa(&msg, &sig, &child84).unwrap();

    let child86 = x86.derive_pub(&secp, &path("m/0/0")).unwrap().public_key;
    let internal = XOnlyPublicKey::from(child86);
    let addr = Address::p2tr(&secp, internal, None, Network::Bitcoin);
    assert_eq!(
        addr.to_string(),
        "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
    );
    let payload = SigningPayload::TaprootKeySpend {
        sighash: digest,
        merkle_root: None,
    };
    let Signature::Bip340(bytes) = ks
        .sign_derived(&id("hot"), &path("m/86'/0'/0'/0/0"), &payload)
        .await
        .unwrap()
    else {
        panic!("not schnorr")
    };
    let (output_key, _) = internal.tap_tweak(&secp, None);
    secp.verify_schnorr(
        &schnorr::Signature::from_slice(&bytes).unwrap(),
        &msg,
        &output_key.to_x_only_public_key(),
    )
    .unwrap();
}

#[tokio::test]
async fn seeds_refuse_paths_outside_their_purpose() {
    let tmp = tempfile::tempdir().unwrap();
    let ks = open(&tmp.path().join("keys")).unwrap();
    ks.import_mnemonic(id("hot"), WORDS, "").unwrap();
    let payload = SigningPayload::Secp256k1Prehash([1; 32]);
    for bad in [
        "m/44'/60'/0'/0/0",
        "m/84'/0'/0'",
        "m/84'/0'/0/0/0",
        "m/84'/0'/0'/0'/0",
        "m",
    ] {
        let err = ks
            .sign_derived(&id("hot"), &path(bad), &payload)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::SigningFailed { .. }),
            "{bad}: {err}"
        );
    }
    for bad in ["m", "m/84'/0'", "m/84'/0'/0'/0"] {
        assert!(
            ks.account_xpub(&id("hot"), &path(bad), NetworkKind::Main)
                .is_err(),
            "{bad}"
        );
    }
    // A single key is not a seed.
    ks.generate(id("single"), keyguard_chain::Scheme::Secp256k1)
        .unwrap();
    assert!(ks
        .sign_derived(&id("single"), &path("m/84'/0'/0'/0/0"), &payload)
        .await
        .is_err());
    assert!(matches!(
        ks.import_mnemonic(id("hot"), WORDS, ""),
        Err(KeystoreError::Exists(_))
    ));
    assert!(ks
        .import_mnemonic(id("bad"), "abandon abandon", "")
        .is_err());
}

#[test]
fn an_edited_seed_file_does_not_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let ks = open(&dir).unwrap();
    let (info, words) = ks.generate_seed(id("fresh")).unwrap();
    assert_eq!(words.split_whitespace().count(), 24);
    drop(ks);
    let file = dir.join("fresh.seed.json");
    let text = std::fs::read_to_string(&file).unwrap();
    let edited = text.replace(&info.fingerprint.to_string(), "00000000");
    std::fs::write(&file, edited).unwrap();
    assert!(open(&dir).is_err());
}
