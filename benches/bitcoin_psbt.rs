//! PSBT signing throughput, policy on, next to the raw signing cost of the same inputs, in one
//! run on one thread:
//!
//! - `raw`: libsecp256k1 signatures over the same sighashes with pre-derived keys (ECDSA for
//!   P2WPKH, BIP340 with the tweaked key for P2TR) — the crypto ceiling.
//! - `backend`: the software keystore's `sign_derived` for every input (BIP32 derivation from
//!   the seed per signature, as keyguard signs).
//! - `keyguard`: decode (strict parse, amount proofs, re-derivation, change) + every policy rule
//!   + backend signing + pass 2 (re-encode, re-decode, verify every signature) + base64 out.
//!
//! `cargo bench --bench bitcoin_psbt [-- SECONDS]` (default 2 s per figure). The durable audit
//! commit of the daemon is not included (see benches/evm_sign.sh for its cost).

use std::time::{Duration, Instant};

use keyguard::backend::software::{KdfParams, Passphrase, SoftwareKeystore};
use keyguard::backend::KeyBackend;
use keyguard_bitcoin::bitcoin::key::TapTweak;
use keyguard_bitcoin::bitcoin::secp256k1::{Keypair, Message, Secp256k1};
use keyguard_bitcoin::bitcoin::Network;
use keyguard_bitcoin::testkit::{build_psbt, foreign_script, to_base64, OurInput, TestWallet};
use keyguard_bitcoin::{BitcoinPolicy, ScriptKind};
use keyguard_chain::{KeyId, SigningPayload};

const WORDS: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                     abandon abandon about";

fn rate(seconds: f64, mut f: impl FnMut()) -> f64 {
    let deadline = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < deadline {
        f();
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let seconds: f64 = std::env::args()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(2.0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let kdf = KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    let store = SoftwareKeystore::open(
        &tmp.path().join("keys"),
        &Passphrase::new("bench".into()),
        kdf,
    )
    .unwrap();
    let id = KeyId::new("hot").unwrap();
    store.import_mnemonic(id.clone(), WORDS, "").unwrap();
    let policy: BitcoinPolicy = toml::from_str(
        "network = \"regtest\"\ndestinations = \"any\"\nmax_spend_per_tx = \"1 btc\"\n\
         max_fee = \"0.01 btc\"\nmax_feerate_sat_vb = 1000\nmax_fee_percent = 50",
    )
    .unwrap();
    let wallet = keyguard::guard::build_wallet(&store, &id, &policy).unwrap();
    let seed = bip39::Mnemonic::parse(WORDS).unwrap().to_seed("");
    let tw = TestWallet::new(&seed, Network::Regtest);
    let secp = Secp256k1::new();

    println!("keyguard bitcoin_psbt bench: {seconds} s per figure, 1 thread");
    println!(
        "{:<8} {:>5} {:>12} {:>12} {:>12} {:>14} {:>10}",
        "type", "in", "raw sig/s", "backend sig/s", "psbt/s", "keyguard sig/s", "overhead"
    );
    for kind in [ScriptKind::P2wpkh, ScriptKind::P2tr] {
        for n in [1u32, 10] {
            let inputs: Vec<OurInput> = (0..n)
                .map(|index| OurInput {
                    kind,
                    index,
                    sat: 100_000,
                })
                .collect();
            let total = 100_000 * u64::from(n);
            let psbt = build_psbt(
                &tw,
                &inputs,
                &[(foreign_script(9), total / 2)],
                Some((kind, 0, total / 2 - 2_000)),
            );
            let b64 = to_base64(&psbt);
            let intent = keyguard_bitcoin::decode(&b64, &wallet).unwrap();
            policy.check(&intent, 0).unwrap();

            // Raw: the same digests, keys derived beforehand.
            let keys: Vec<_> = intent
                .jobs
                .iter()
                .map(|j| tw.master.derive_priv(&secp, &j.path).unwrap().private_key)
                .collect();
            let raw = rate(seconds, || {
                for (job, key) in intent.jobs.iter().zip(&keys) {
                    match &job.payload {
                        SigningPayload::Secp256k1Prehash(d) => {
                            std::hint::black_box(secp.sign_ecdsa(&Message::from_digest(*d), key));
                        }
                        SigningPayload::TaprootKeySpend { sighash, .. } => {
                            let kp = Keypair::from_secret_key(&secp, key)
                                .tap_tweak(&secp, None)
                                .to_keypair();
                            std::hint::black_box(
                                secp.sign_schnorr(&Message::from_digest(*sighash), &kp),
                            );
                        }
                        SigningPayload::Ed25519Message(_) => unreachable!(),
                    }
                }
            }) * f64::from(n);
            let backend = rate(seconds, || {
                for job in &intent.jobs {
                    std::hint::black_box(
                        runtime
                            .block_on(store.sign_derived(&id, &job.path, &job.payload))
                            .unwrap(),
                    );
                }
            }) * f64::from(n);
            let psbts = rate(seconds, || {
                let intent = keyguard_bitcoin::decode(&b64, &wallet).unwrap();
                policy.check(&intent, 0).unwrap();
                let sigs: Vec<_> = intent
                    .jobs
                    .iter()
                    .map(|j| {
                        runtime
                            .block_on(store.sign_derived(&id, &j.path, &j.payload))
                            .unwrap()
                    })
                    .collect();
                std::hint::black_box(keyguard_bitcoin::finalize(&intent, &sigs, true).unwrap());
            });
            let per_sig = psbts * f64::from(n);
            println!(
                "{:<8} {:>5} {:>12.0} {:>12.0} {:>12.0} {:>14.0} {:>9.1}x",
                format!("{kind:?}").to_lowercase(),
                n,
                raw,
                backend,
                psbts,
                per_sig,
                raw / per_sig
            );
        }
    }
}
