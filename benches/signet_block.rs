//! Signet block signing latency for a full block (about 4,000,000 weight units, about 3.5 MB
//! serialized, ~1,700 segwit transactions), p50/p99, next to the raw signing cost, in one run:
//!
//! - `raw`: one libsecp256k1 ECDSA signature over the block's sighash — the crypto floor.
//! - `backend`: the software keystore's `sign` of the same payload.
//! - `decode`: hex -> block, strict checks (merkle root, witness commitment), BIP325 commitment.
//! - `pass 2`: solution built, block solved, solution re-extracted, commitment rebuilt, verified.
//! - `keyguard`: `Guard::sign_signet_block` end to end: decode, block rules, chain rules and
//!   reservation, backend signature, pass 2, audit row + height watermark committed durably
//!   (SQLite, synchronous=FULL) before the answer, answer built (solved block as hex).
//!
//! `cargo bench --bench signet_block [-- BLOCKS]` (default 40 blocks per figure; each block is
//! the next height, so every request advances the watermark for real).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyguard::access::Caller;
use keyguard::backend::software::{KdfParams, Passphrase, SoftwareKeystore};
use keyguard::backend::KeyBackend;
use keyguard::config::{Config, ResponseShape};
use keyguard::guard::Guard;
use keyguard::store::Store;
use keyguard_bitcoin::bitcoin::consensus::serialize;
use keyguard_bitcoin::bitcoin::hashes::Hash;
use keyguard_bitcoin::bitcoin::script::Builder;
use keyguard_bitcoin::bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use keyguard_bitcoin::bitcoin::{Block, BlockHash, ScriptBuf, Transaction, TxMerkleNode};
use keyguard_bitcoin::signet::{decode_block, Challenge};
use keyguard_bitcoin::signet_finalize::finalize;
use keyguard_bitcoin::signet_testkit::{full_block, multisig_challenge, sign};
use keyguard_chain::{KeyId, PublicKey, Scheme};
use serde_json::json;
use zeroize::Zeroizing;

const SECRET: [u8; 32] = [0x5a; 32];

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {:>9.3} ms   p99 {:>9.3} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    )
}

/// The block template at `height`: only the coinbase's BIP34 push and the merkle root change.
fn at_height(
    template: &Block,
    txids: &[keyguard_bitcoin::bitcoin::Txid],
    height: u32,
    time: u32,
) -> Block {
    let mut b = template.clone();
    b.txdata[0].input[0].script_sig = Builder::new().push_int(i64::from(height)).into_script();
    b.header.time = time;
    let ids = std::iter::once(b.txdata[0].compute_txid())
        .chain(txids[1..].iter().copied())
        .map(|t| t.to_raw_hash());
    b.header.merkle_root = keyguard_bitcoin::bitcoin::merkle_tree::calculate_root(ids)
        .map(TxMerkleNode::from)
        .unwrap();
    b
}

fn main() {
    let blocks: usize = std::env::args()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(40);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let kdf = KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    let keystore = SoftwareKeystore::open(
        &tmp.path().join("keys"),
        &Passphrase::new("bench".into()),
        kdf,
    )
    .unwrap();
    let id = KeyId::new("signet").unwrap();
    keystore
        .import_secp256k1(id.clone(), Zeroizing::new(SECRET))
        .unwrap();
    let PublicKey::Secp256k1(point) = keystore.public_key(&id).unwrap() else {
        unreachable!()
    };
    assert_eq!(keystore.keys()[0].scheme(), Scheme::Secp256k1);
    let secp = Secp256k1::new();
    let public = keyguard_bitcoin::bitcoin::secp256k1::PublicKey::from_slice(&point).unwrap();
    let challenge_script = multisig_challenge(&public);
    let challenge = Challenge::parse(challenge_script.clone()).unwrap();
    let payee = ScriptBuf::from_hex("0014aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
    let config = Config::parse(
        Path::new("bench.toml"),
        &format!(
            "[data]\ndir = \"unused\"\n[keystore]\nbackend = \"software\"\n[[policies]]\n\
             name = \"miner\"\nkeys = [\"signet\"]\n[policies.signet]\nchallenge = \"{}\"\n\
             start_height = 1000\nrequire_parent_proof = false\npayout = [\"script:{}\"]\n",
            challenge_script.to_hex_string(),
            payee.to_hex_string()
        ),
    )
    .unwrap();
    let now = (keyguard_chain::clock::now_ms() / 1000) as u32;
    let t0 = now - 100_000;
    let template = full_block(1000, BlockHash::all_zeros(), t0, payee);
    let txids: Vec<_> = template
        .txdata
        .iter()
        .map(Transaction::compute_txid)
        .collect();
    let bytes = serialize(&template);
    println!(
        "keyguard signet_block bench: {} transactions, {} weight units, {} bytes, {blocks} blocks",
        template.txdata.len(),
        template.weight().to_wu(),
        bytes.len()
    );

    // Raw and backend signing of the same payload.
    let decoded = decode_block(&bytes, &challenge).unwrap();
    let payload = decoded.payload(&challenge);
    let keyguard_chain::SigningPayload::Secp256k1Prehash(digest) = payload.clone() else {
        unreachable!()
    };
    let secret = SecretKey::from_slice(&SECRET).unwrap();
    let mut raw = Vec::new();
    let mut backend = Vec::new();
    let mut decode = Vec::new();
    let mut pass2 = Vec::new();
    for _ in 0..blocks {
        let started = Instant::now();
        std::hint::black_box(secp.sign_ecdsa(&Message::from_digest(digest), &secret));
        raw.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(runtime.block_on(keystore.sign(&id, &payload)).unwrap());
        backend.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(decode_block(&bytes, &challenge).unwrap());
        decode.push(started.elapsed());
        let sig = sign(&secret, &payload);
        let started = Instant::now();
        std::hint::black_box(finalize(&decoded, &challenge, &public, &sig).unwrap());
        pass2.push(started.elapsed());
    }

    // The whole pipeline with a durable store, one block per height.
    let store = Store::open(&tmp.path().join("keyguard.db")).unwrap();
    let guard = Guard::new(&config, Arc::new(keystore), store.audit_log());
    guard.restore_state(&store).unwrap();
    let caller = Caller {
        name: "miner".into(),
        grants: vec!["*".to_string()].into(),
        response: ResponseShape::Raw,
        approval_wait: Duration::ZERO,
        scope: None,
    };
    let mut full = Vec::new();
    for i in 0..blocks as u32 {
        let block = at_height(&template, &txids, 1000 + i, t0 + i);
        let params = json!({ "block": hex::encode(serialize(&block)) });
        let started = Instant::now();
        let out = runtime
            .block_on(guard.sign_signet_block(&caller, &params))
            .unwrap();
        full.push(started.elapsed());
        std::hint::black_box(out.to_json());
    }
    assert_eq!(
        store.signet_tips().unwrap()[0].tip.height,
        1000 + blocks as u32 - 1
    );
    println!("raw ECDSA sign       {}", percentiles(raw));
    println!("backend sign         {}", percentiles(backend));
    println!("decode + commitment  {}", percentiles(decode));
    println!("pass 2               {}", percentiles(pass2));
    println!("keyguard end to end  {}", percentiles(full));
}
