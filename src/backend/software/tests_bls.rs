//! EIP-2333 and EIP-2335 official vectors; BLS keys sealed on disk and reopened.

use super::*;

fn dec(s: &str) -> Vec<u8> {
    // Decimal string to 32-byte big-endian (the EIP writes secret keys in decimal).
    let mut out = [0u8; 32];
    for ch in s.bytes() {
        let mut carry = u32::from(ch - b'0');
        for b in out.iter_mut().rev() {
            let v = u32::from(*b) * 10 + carry;
            *b = (v & 0xff) as u8;
            carry = v >> 8;
        }
    }
    out.to_vec()
}

/// EIP-2333 "Test Cases" 0-3: master and child secret keys.
#[test]
fn eip2333_vectors() {
    let cases = [
        ("c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2cf141630c7a3c4ab7c81b2f001698e7463b04",
         "6083874454709270928345386274498605044986640685124978867557563392430687146096", 0u32,
         "20397789859736650942317412262472558107875392172444076792671091975210932703118"),
        ("3141592653589793238462643383279502884197169399375105820974944592",
         "29757020647961307431480504535336562678282505419141012933316116377660817309383", 3141592653,
         "25457201688850691947727629385191704516744796114925897962676248250929345014287"),
        ("0099FF991111002299DD7744EE3355BBDD8844115566CC55663355668888CC00",
         "27580842291869792442942448775674722299803720648445448686099262467207037398656", 4294967295,
         "29358610794459428860402234341874281240803786294062035874021252734817515685787"),
        ("d4e56740f876aef8c010b86a40d5f56745a118d0906a34e69aec8c0db1cb8fa3",
         "19022158461524446591288038168518313374041767046816487870552872741050760015818", 42,
         "31372231650479070279774297061823572166496564838472787488249775572789064611981"),
    ];
    for (seed, master, index, child) in cases {
        let seed = hex::decode(seed).unwrap();
        assert_eq!(
            derive_eip2333(&seed, &[]).unwrap().to_bytes().to_vec(),
            dec(master)
        );
        assert_eq!(
            derive_eip2333(&seed, &[index]).unwrap().to_bytes().to_vec(),
            dec(child)
        );
    }
}

/// EIP-2333 test case 0 from its mnemonic (BIP39 "abandon ... about", passphrase TREZOR).
#[test]
fn eip2333_from_mnemonic() {
    let m = bip39::Mnemonic::parse_normalized(
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
    )
    .unwrap();
    let seed = m.to_seed_normalized("TREZOR");
    assert_eq!(
        derive_eip2333(&seed, &[0]).unwrap().to_bytes().to_vec(),
        dec("20397789859736650942317412262472558107875392172444076792671091975210932703118")
    );
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors/eth2")
            .join(name),
    )
    .unwrap()
}

const PASSWORD: &str = "𝔱𝔢𝔰𝔱𝔭𝔞𝔰𝔰𝔴𝔬𝔯𝔡🔑";
const SECRET: &str = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f";

/// EIP-2335 test vectors (scrypt and pbkdf2), with the wrong password as negative control.
#[test]
fn eip2335_vectors() {
    assert_eq!(
        super::super::eip2335::normalize_password(PASSWORD).as_bytes(),
        hex::decode("7465737470617373776f7264f09f9491").unwrap()
    );
    for f in ["eip2335_scrypt.json", "eip2335_pbkdf2.json"] {
        let (secret, pk) = super::super::eip2335::decrypt(&vector(f), PASSWORD).unwrap();
        assert_eq!(hex::encode(secret.as_slice()), SECRET, "{f}");
        let ks = BlsKeystore::in_memory();
        let got = ks.import_eip2335(&vector(f), PASSWORD).unwrap();
        assert_eq!(Some(got), pk, "{f}: pubkey matches the file");
        let e = super::super::eip2335::decrypt(&vector(f), "testpassword").unwrap_err();
        assert!(e.contains("checksum"), "{f}: {e}");
    }
}

#[test]
fn sealed_file_reopens_and_refuses_another_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let kdf = KdfParams {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };
    let pass = Passphrase::new("correct horse".into());
    let ks = BlsKeystore::open(dir.path(), &pass, &kdf).unwrap();
    let pk = ks.generate().unwrap();
    let sig = ks.sign(&pk, &[7; 32]).unwrap();
    assert!(keyguard_eth2::bls::verify(&pk, &[7; 32], &sig));
    assert!(
        !keyguard_eth2::bls::verify(&pk, &[8; 32], &sig),
        "negative control"
    );
    let again = BlsKeystore::open(dir.path(), &pass, &kdf).unwrap();
    assert_eq!(again.public_keys(), vec![pk]);
    let raw = std::fs::read_to_string(dir.path().join(BLS_FILE)).unwrap();
    assert!(
        !raw.contains(&hex::encode(ks.read()[&pk].0.to_bytes())),
        "secret not in clear"
    );
    assert!(BlsKeystore::open(dir.path(), &Passphrase::new("wrong".into()), &kdf).is_err());
}
