//! Signet fixtures for tests and benchmarks: blocks built the way `contrib/signet/miner`'s
//! `new_block` builds them, the miner's PSBT, and a test key (never in the daemon build).

use bitcoin::block::{Header, Version};
use bitcoin::consensus::serialize;
use bitcoin::hashes::Hash;
use bitcoin::psbt::raw::ProprietaryKey;
use bitcoin::psbt::Psbt;
use bitcoin::script::Builder;
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, SecretKey};
use bitcoin::{
    absolute, transaction, Amount, Block, BlockHash, CompactTarget, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};
use keyguard_chain::{Signature, SigningPayload};

/// The test signer's secret (a fixed scalar).
pub fn secret() -> SecretKey {
    SecretKey::from_slice(&[0x5a; 32]).expect("valid scalar")
}

/// The test signer's public key.
pub fn public() -> PublicKey {
    secret().public_key(&Secp256k1::new())
}

/// `1 <pk> 1 CHECKMULTISIG`: the challenge shape of Core's signet README and Mutinynet.
pub fn multisig_challenge(pk: &PublicKey) -> ScriptBuf {
    let mut s = vec![0x51, 0x21];
    s.extend(pk.serialize());
    s.extend([0x51, 0xae]);
    ScriptBuf::from_bytes(s)
}

/// Signs a payload the way a backend does (RFC 6979 ECDSA, recovery id unused).
pub fn sign(secret: &SecretKey, payload: &SigningPayload) -> Signature {
    let SigningPayload::Secp256k1Prehash(d) = payload else {
        panic!("signet payloads are ECDSA prehashes");
    };
    let sig = Secp256k1::new().sign_ecdsa(&Message::from_digest(*d), secret);
    let c = sig.serialize_compact();
    let (mut r, mut s) = ([0u8; 32], [0u8; 32]);
    r.copy_from_slice(&c[..32]);
    s.copy_from_slice(&c[32..]);
    Signature::Secp256k1 {
        r,
        s,
        recovery_id: 0,
    }
}

/// What a block is made of.
#[derive(Clone, Debug)]
pub struct BlockSpec {
    /// BIP34 height.
    pub height: u32,
    /// Previous block.
    pub prev: BlockHash,
    /// Header time.
    pub time: u32,
    /// Header version.
    pub version: i32,
    /// Coinbase outputs before the witness commitment.
    pub payouts: Vec<TxOut>,
    /// Transactions after the coinbase.
    pub txs: Vec<Transaction>,
}

impl BlockSpec {
    /// A block at `height` paying the full subsidy to `to`.
    pub fn new(height: u32, prev: BlockHash, time: u32, to: ScriptBuf) -> BlockSpec {
        BlockSpec {
            height,
            prev,
            time,
            version: 0x2000_0000,
            payouts: vec![TxOut {
                value: crate::signet_rules::subsidy(height),
                script_pubkey: to,
            }],
            txs: Vec::new(),
        }
    }

    /// The block, as the miner's `new_block` builds it (coinbase witness nonce 0, witness
    /// commitment last, merkle root set, nonce 0).
    pub fn build(&self) -> Block {
        let script_sig = if self.height <= 16 {
            Builder::new().push_int(i64::from(self.height)).push_int(1)
        } else {
            Builder::new().push_int(i64::from(self.height))
        }
        .into_script();
        let mut witness = Witness::new();
        witness.push([0u8; 32]);
        let coinbase = Transaction {
            version: transaction::Version::ONE,
            lock_time: absolute::LockTime::from_consensus(self.height - 1),
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig,
                sequence: Sequence(0xffff_fffe),
                witness,
            }],
            output: self.payouts.clone(),
        };
        let mut block = Block {
            header: Header {
                version: Version::from_consensus(self.version),
                prev_blockhash: self.prev,
                merkle_root: TxMerkleNode::all_zeros(),
                time: self.time,
                bits: CompactTarget::from_consensus(0x1e03_77ae),
                nonce: 0,
            },
            txdata: std::iter::once(coinbase).chain(self.txs.clone()).collect(),
        };
        let root = block.witness_root().expect("a coinbase");
        let commitment = Block::compute_witness_commitment(&root, &[0u8; 32]);
        let mut script = vec![0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
        script.extend(commitment.to_byte_array());
        block.txdata[0].output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(script),
        });
        block.header.merkle_root = block.compute_merkle_root().expect("a coinbase");
        block
    }
}

/// A segwit transaction with a witness of `witness_bytes` (filler for full blocks).
pub fn filler_tx(n: u32, witness_bytes: usize) -> Transaction {
    let mut witness = Witness::new();
    witness.push(vec![0x30; witness_bytes]);
    witness.push(public().serialize());
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(Txid::from_byte_array([(n % 251) as u8; 32]), n),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness,
        }],
        output: vec![
            TxOut {
                value: Amount::from_sat(1_000 + u64::from(n)),
                script_pubkey: ScriptBuf::new_op_return([]),
            },
            TxOut {
                value: Amount::from_sat(50_000),
                script_pubkey: ScriptBuf::from_bytes(
                    vec![0x00, 0x14].into_iter().chain([7u8; 20]).collect(),
                ),
            },
        ],
    }
}

/// A block of about 4,000,000 weight units and about 3.5 MB, filled with segwit transactions.
pub fn full_block(height: u32, prev: BlockHash, time: u32, to: ScriptBuf) -> Block {
    let mut spec = BlockSpec::new(height, prev, time, to);
    let per_tx = 2_200u64; // weight of one filler tx with a 1,800-byte witness item (a bit less)
    let n = (3_990_000 / per_tx) as u32;
    spec.txs = (0..n).map(|i| filler_tx(i, 1_800)).collect();
    let mut block = spec.build();
    while block.weight().to_wu() > 3_999_000 {
        spec.txs.pop();
        block = spec.build();
    }
    block
}

/// The miner's PSBT for `block` (`generate_psbt`), built here from raw bytes, apart from the
/// code under test: `spend` unsigned, `to_spend` as `non_witness_utxo`, SIGHASH_ALL, and the
/// block under `0xfc 06 "signet" 'b'`.
pub fn miner_psbt(block: &Block, challenge: &ScriptBuf) -> Psbt {
    let (to_spend, spend) = miner_txs(block, challenge);
    let mut psbt = Psbt::from_unsigned_tx(spend).expect("empty scriptSig");
    psbt.inputs[0].non_witness_utxo = Some(to_spend);
    psbt.inputs[0].sighash_type = Some(bitcoin::psbt::PsbtSighashType::from_u32(1));
    psbt.proprietary.insert(
        ProprietaryKey {
            prefix: b"signet".to_vec(),
            subtype: b'b',
            key: Vec::new(),
        },
        serialize(block),
    );
    psbt
}

/// The miner's `signet_txs`: header pushed on the last coinbase output, merkle root of the
/// txids, `to_spend` and `spend` serialized by hand.
pub fn miner_txs(block: &Block, challenge: &ScriptBuf) -> (Transaction, Transaction) {
    let mut cb = block.txdata[0].clone();
    let last = cb.output.len() - 1;
    let mut script = cb.output[last].script_pubkey.to_bytes();
    script.extend([0x04, 0xec, 0xc7, 0xda, 0xa2]);
    cb.output[last].script_pubkey = ScriptBuf::from_bytes(script);
    let ids = std::iter::once(cb.compute_txid())
        .chain(block.txdata[1..].iter().map(Transaction::compute_txid))
        .map(|t| t.to_raw_hash());
    let root: TxMerkleNode = bitcoin::merkle_tree::calculate_root(ids)
        .expect("txs")
        .into();
    let mut sd = Vec::new();
    sd.extend(block.header.version.to_consensus().to_le_bytes());
    sd.extend(block.header.prev_blockhash.to_byte_array());
    sd.extend(root.to_byte_array());
    sd.extend(block.header.time.to_le_bytes());
    let mut raw = Vec::new();
    raw.extend(0u32.to_le_bytes()); // version 0
    raw.push(1);
    raw.extend([0u8; 32]);
    raw.extend(0xffff_ffffu32.to_le_bytes());
    raw.push(2 + 72);
    raw.push(0x00);
    raw.push(72);
    raw.extend(&sd);
    raw.extend(0u32.to_le_bytes()); // sequence 0
    raw.push(1);
    raw.extend(0u64.to_le_bytes());
    raw.push(challenge.len() as u8);
    raw.extend(challenge.as_bytes());
    raw.extend(0u32.to_le_bytes());
    let to_spend: Transaction = bitcoin::consensus::deserialize(&raw).expect("to_spend");
    let mut raw = Vec::new();
    raw.extend(0u32.to_le_bytes());
    raw.push(1);
    raw.extend(to_spend.compute_txid().to_byte_array());
    raw.extend(0u32.to_le_bytes());
    raw.push(0);
    raw.extend(0u32.to_le_bytes());
    raw.push(1);
    raw.extend(0u64.to_le_bytes());
    raw.extend([1, 0x6a]);
    raw.extend(0u32.to_le_bytes());
    let spend: Transaction = bitcoin::consensus::deserialize(&raw).expect("spend");
    (to_spend, spend)
}
