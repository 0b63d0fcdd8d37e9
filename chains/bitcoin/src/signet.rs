//! Signet blocks (BIP325): a block, decoded strictly, to the commitment its signature covers.
//!
//! A signet block is valid only with a solution, by the network's challenge script, that spends
//! a virtual `to_spend` transaction committing to the block's version, previous hash, time and
//! a *modified* merkle root (the coinbase's witness-commitment output extended by the 4-byte
//! signet header, no solution yet). keyguard rebuilds that commitment from the block it decoded
//! here, exactly as Bitcoin Core's `SignetTxs::Create` will after the solution is added, and
//! never from anything a PSBT claims: a caller who sends block A with the `to_spend` of block B
//! gets a refusal, not a signature for B that the policy never looked at.
//!
//! What a signature binds: version, previous block, time, and every txid (so every output,
//! including the coinbase's, and through the witness commitment every witness). Not bound: the
//! header's `bits` and `nonce` (the miner grinds the nonce afterwards).

use bitcoin::blockdata::script::{Instruction, PushBytesBuf};
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::script::Builder;
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute, transaction, Amount, Block, BlockHash, OutPoint, PubkeyHash, Script, ScriptBuf,
    Sequence, Transaction, TxIn, TxMerkleNode, TxOut, Txid, WPubkeyHash, Witness,
};
use keyguard_chain::{Rejection, SigningPayload};

use crate::signet_rules::rule;

/// `0xecc7daa2`: the push prefix that marks the signet solution in the commitment output.
pub const SIGNET_HEADER: [u8; 4] = [0xec, 0xc7, 0xda, 0xa2];
/// Consensus limit on a serialized block (`MAX_BLOCK_SERIALIZED_SIZE`).
pub const MAX_BLOCK_BYTES: usize = 4_000_000;
/// Hash of the genesis block every signet shares (only the message start differs).
pub const SIGNET_GENESIS: &str = "00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6";
/// Bytes of `OP_RETURN OP_PUSHBYTES_36 aa21a9ed`, the witness commitment's prefix.
const WITNESS_MAGIC: [u8; 6] = [0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];

/// A challenge keyguard can solve with one ECDSA key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    /// Bare `1 <pk>... n CHECKMULTISIG` (Core's default signet and Mutinynet shape):
    /// solution `scriptSig = OP_0 <sig>`.
    Multisig {
        /// Compressed keys, in script order.
        keys: Vec<bitcoin::secp256k1::PublicKey>,
    },
    /// `0 <20 bytes>`: solution witness `[sig, pk]`.
    P2wpkh(WPubkeyHash),
}

/// The configured challenge script and how keyguard solves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The script, as in `-signetchallenge`.
    pub script: ScriptBuf,
    /// Its shape.
    pub kind: ChallengeKind,
}

impl Challenge {
    /// Parses a challenge keyguard can solve alone: 1-of-n bare multisig or P2WPKH.
    pub fn parse(script: ScriptBuf) -> Result<Challenge, String> {
        if script.is_p2wpkh() {
            let hash = WPubkeyHash::from_slice(&script.as_bytes()[2..22])
                .map_err(|e| format!("p2wpkh program: {e}"))?;
            return Ok(Challenge {
                script,
                kind: ChallengeKind::P2wpkh(hash),
            });
        }
        let ops: Vec<Instruction<'_>> = script
            .instructions_minimal()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("unparsable script: {e}"))?;
        let small = |i: &Instruction<'_>| i.opcode().and_then(pushnum);
        let shape = match ops.as_slice() {
            [m, keys @ .., n, Instruction::Op(check)]
                if *check == bitcoin::opcodes::all::OP_CHECKMULTISIG =>
            {
                Some((small(m), keys, small(n)))
            }
            _ => None,
        };
        let Some((Some(1), keys, Some(n))) = shape else {
            return Err(
                "keyguard solves 1-of-n bare multisig (`51 21<pk>.. 5n ae`) or p2wpkh challenges \
                 with one key; an m-of-n challenge needs other signers"
                    .into(),
            );
        };
        if keys.len() != usize::from(n) || keys.is_empty() {
            return Err("multisig key count does not match n".into());
        }
        let keys = keys
            .iter()
            .map(|k| match k {
                Instruction::PushBytes(b) if b.len() == 33 => {
                    bitcoin::secp256k1::PublicKey::from_slice(b.as_bytes())
                        .map_err(|e| format!("multisig key: {e}"))
                }
                _ => Err("multisig keys must be 33-byte compressed keys".into()),
            })
            .collect::<Result<_, String>>()?;
        Ok(Challenge {
            script,
            kind: ChallengeKind::Multisig { keys },
        })
    }

    /// Whether `key` can solve this challenge alone.
    pub fn solvable_by(&self, key: &bitcoin::secp256k1::PublicKey) -> bool {
        match &self.kind {
            ChallengeKind::Multisig { keys } => keys.contains(key),
            ChallengeKind::P2wpkh(hash) => {
                WPubkeyHash::from_byte_array(PubkeyHash::hash(&key.serialize()).to_byte_array())
                    == *hash
            }
        }
    }
}

/// A decoded signet block and the BIP325 transactions keyguard rebuilt from it.
#[derive(Clone, Debug)]
pub struct SignetBlock {
    /// The block as sent (no solution yet).
    pub block: Block,
    /// Height from the coinbase (BIP34).
    pub height: u32,
    /// Index of the witness-commitment output (always the last output).
    pub commitment_output: usize,
    /// Block weight (BIP141).
    pub weight: u64,
    /// The virtual transaction the solution spends (its output is the challenge).
    pub to_spend: Transaction,
    /// The virtual transaction the solution signs.
    pub spend: Transaction,
}

fn block_rule(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::policy(rule::BLOCK, field, reason)
}

/// Appends a data push the way Core's `CScript << vector` (and the miner) encode it.
pub fn push_data(script: &mut Vec<u8>, data: &[u8]) {
    let n = data.len();
    if n < 0x4c {
        script.push(n as u8);
    } else if n <= 0xff {
        script.extend([0x4c, n as u8]);
    } else if n <= 0xffff {
        script.push(0x4d);
        script.extend((n as u16).to_le_bytes());
    } else {
        script.push(0x4e);
        script.extend((n as u32).to_le_bytes());
    }
    script.extend_from_slice(data);
}

/// The script Core's `FetchAndClearCommitmentSection` rebuilds: every push re-encoded, every
/// other opcode kept. `None` when the script does not parse to the end.
fn reencoded(script: &Script) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(script.len());
    for i in script.instructions() {
        match i.ok()? {
            Instruction::PushBytes(b) if b.is_empty() => out.push(0x00),
            Instruction::PushBytes(b) => push_data(&mut out, b.as_bytes()),
            Instruction::Op(op) => out.push(op.to_u8()),
        }
    }
    Some(out)
}

/// `OP_1`..`OP_16` as its number.
fn pushnum(op: bitcoin::Opcode) -> Option<u8> {
    let b = op.to_u8();
    (0x51..=0x60).contains(&b).then(|| b - 0x50)
}

/// The BIP34 height at the start of the coinbase scriptSig, checked as Core does: the script
/// must start with exactly `CScript() << height`.
fn bip34_height(script_sig: &Script) -> Option<u32> {
    let first = script_sig.instructions_minimal().next()?.ok()?;
    let height = match first {
        Instruction::Op(op) => i64::from(pushnum(op)?),
        Instruction::PushBytes(b) if b.len() <= 4 => {
            bitcoin::script::read_scriptint(b.as_bytes()).ok()?
        }
        Instruction::PushBytes(_) => return None,
    };
    let expect = Builder::new().push_int(height).into_script();
    let ok = height >= 1 && script_sig.as_bytes().starts_with(expect.as_bytes());
    ok.then(|| u32::try_from(height).ok()).flatten()
}

/// Strict decode of a serialized block: consensus encoding with nothing left over, one
/// coinbase first, header merkle root and witness commitment matching, the witness commitment
/// the last coinbase output (where the miner appends the solution) and in Core's own encoding,
/// no solution yet, a BIP34 height.
pub fn decode_block(bytes: &[u8], challenge: &Challenge) -> Result<SignetBlock, Rejection> {
    if bytes.len() > MAX_BLOCK_BYTES {
        return Err(Rejection::invalid(
            "block",
            format!(
                "{} bytes, above the consensus limit {MAX_BLOCK_BYTES}",
                bytes.len()
            ),
        ));
    }
    let block: Block =
        deserialize(bytes).map_err(|e| Rejection::invalid("block", format!("not a block: {e}")))?;
    let Some(coinbase) = block.txdata.first().filter(|t| t.is_coinbase()) else {
        return Err(block_rule(
            "block.txdata[0]",
            "the first transaction is not a coinbase",
        ));
    };
    if let Some(i) = block
        .txdata
        .iter()
        .skip(1)
        .position(Transaction::is_coinbase)
    {
        return Err(block_rule(
            &format!("block.txdata[{}]", i + 1),
            "a second coinbase",
        ));
    }
    let height = bip34_height(&coinbase.input[0].script_sig).ok_or_else(|| {
        block_rule(
            "coinbase.script_sig",
            "does not start with a BIP34 height (Core's `CScript() << height`)",
        )
    })?;
    let sig_len = coinbase.input[0].script_sig.len();
    if !(2..=100).contains(&sig_len) {
        return Err(block_rule(
            "coinbase.script_sig",
            format!("{sig_len} bytes; Core needs 2 to 100"),
        ));
    }
    if let Some(t) = block
        .txdata
        .iter()
        .position(|t| t.input.is_empty() || t.output.is_empty())
    {
        return Err(block_rule(
            &format!("block.txdata[{t}]"),
            "a transaction without inputs or outputs",
        ));
    }
    let txids: Vec<Txid> = block.txdata.iter().map(Transaction::compute_txid).collect();
    let mut seen = std::collections::HashSet::with_capacity(txids.len());
    if let Some(t) = txids.iter().position(|id| !seen.insert(*id)) {
        // Two equal txids can give the merkle root of a different list (CVE-2012-2459).
        return Err(block_rule(
            &format!("block.txdata[{t}]"),
            "the same transaction twice",
        ));
    }
    let root = merkle_root(txids.iter().copied());
    if Some(block.header.merkle_root) != root {
        return Err(block_rule(
            "header.merkle_root",
            "does not match the transactions",
        ));
    }
    let is_commitment =
        |o: &TxOut| o.script_pubkey.len() >= 38 && o.script_pubkey.as_bytes()[..6] == WITNESS_MAGIC;
    let last = coinbase.output.len().checked_sub(1);
    let found = coinbase.output.iter().rposition(is_commitment);
    let commitment_output =
        match (found, last) {
            (Some(i), Some(l)) if i == l => i,
            (Some(i), _) => return Err(block_rule(
                &format!("coinbase.outputs[{i}]"),
                "the witness commitment must be the last coinbase output (the miner appends the \
                 solution there)",
            )),
            _ => {
                return Err(block_rule(
                    "coinbase.outputs",
                    "no witness commitment (BIP325 needs one for the solution)",
                ))
            }
        };
    if !witness_commitment_matches(&block, commitment_output) {
        return Err(block_rule(
            &format!("coinbase.outputs[{commitment_output}]"),
            "witness commitment does not match the transactions' witnesses",
        ));
    }
    let script = &coinbase.output[commitment_output].script_pubkey;
    if reencoded(script).as_deref() != Some(script.as_bytes()) {
        return Err(block_rule(
            &format!("coinbase.outputs[{commitment_output}]"),
            "commitment output is not in Core's push encoding (its commitment would differ)",
        ));
    }
    let solved = script.instructions().flatten().any(|i| {
        matches!(i, Instruction::PushBytes(b)
            if b.len() > SIGNET_HEADER.len() && b.as_bytes().starts_with(&SIGNET_HEADER))
    });
    if solved {
        return Err(block_rule(
            &format!("coinbase.outputs[{commitment_output}]"),
            "already carries a signet solution",
        ));
    }
    let weight = block.weight().to_wu();
    let (to_spend, spend) = commitment_txs(&block, commitment_output, &txids, &challenge.script);
    Ok(SignetBlock {
        block,
        height,
        commitment_output,
        weight,
        to_spend,
        spend,
    })
}

/// Core's rule once a witness commitment is present (whether or not any transaction has a
/// witness): the coinbase witness is one 32-byte nonce and the commitment is
/// `SHA256d(witness root || nonce)`.
fn witness_commitment_matches(block: &Block, index: usize) -> bool {
    let witness = &block.txdata[0].input[0].witness;
    let (Some(nonce), 1) = (witness.nth(0), witness.len()) else {
        return false;
    };
    let Some(root) = block.witness_root() else {
        return false;
    };
    nonce.len() == 32
        && block.txdata[0].output[index].script_pubkey.as_bytes()[6..38]
            == Block::compute_witness_commitment(&root, nonce).to_byte_array()
}

fn merkle_root(txids: impl Iterator<Item = Txid>) -> Option<TxMerkleNode> {
    bitcoin::merkle_tree::calculate_root(txids.map(|t| t.to_raw_hash())).map(TxMerkleNode::from)
}

/// `to_spend` and `spend` of BIP325 for a block without solution: the coinbase's commitment
/// output gets the bare header push, as Core's solution stripping leaves it.
fn commitment_txs(
    block: &Block,
    commitment_output: usize,
    txids: &[Txid],
    challenge: &Script,
) -> (Transaction, Transaction) {
    let mut coinbase = block.txdata[0].clone();
    let mut script = coinbase.output[commitment_output].script_pubkey.to_bytes();
    push_data(&mut script, &SIGNET_HEADER);
    coinbase.output[commitment_output].script_pubkey = ScriptBuf::from_bytes(script);
    bip325_txs(
        &block.header,
        coinbase.compute_txid(),
        txids[1..].iter().copied(),
        challenge,
    )
}

/// BIP325's two virtual transactions for a header, the txid of the coinbase as Core modifies
/// it (solution stripped, header push kept) and the other txids.
pub(crate) fn bip325_txs(
    header: &bitcoin::block::Header,
    modified_coinbase: Txid,
    rest: impl Iterator<Item = Txid>,
    challenge: &Script,
) -> (Transaction, Transaction) {
    let root = merkle_root(std::iter::once(modified_coinbase).chain(rest))
        .unwrap_or_else(TxMerkleNode::all_zeros);
    let mut data = Vec::with_capacity(72);
    data.extend(header.version.to_consensus().to_le_bytes());
    data.extend(header.prev_blockhash.to_byte_array());
    data.extend(root.to_byte_array());
    data.extend(header.time.to_le_bytes());
    let mut script_sig = vec![0x00];
    push_data(&mut script_sig, &data);
    let to_spend = Transaction {
        version: transaction::Version(0),
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::from_bytes(script_sig),
            sequence: Sequence::ZERO,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::ZERO,
            script_pubkey: challenge.to_owned(),
        }],
    };
    let spend = Transaction {
        version: transaction::Version(0),
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(to_spend.compute_txid(), 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ZERO,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(vec![0x6a]),
        }],
    };
    (to_spend, spend)
}

impl SignetBlock {
    /// The commitment id: `to_spend`'s txid (covers version, previous hash, time, txids and
    /// the challenge). Equal ids mean the same block up to nonce and bits.
    pub fn commitment(&self) -> Txid {
        self.to_spend.compute_txid()
    }

    /// The sighash keyguard signs (SIGHASH_ALL), computed from the rebuilt `spend`.
    pub fn payload(&self, challenge: &Challenge) -> SigningPayload {
        let mut cache = SighashCache::new(&self.spend);
        let digest = match &challenge.kind {
            ChallengeKind::Multisig { .. } => cache
                .legacy_signature_hash(0, &challenge.script, EcdsaSighashType::All.to_u32())
                .map(|h| h.to_byte_array())
                .unwrap_or_default(),
            ChallengeKind::P2wpkh(_) => cache
                .p2wpkh_signature_hash(0, &challenge.script, Amount::ZERO, EcdsaSighashType::All)
                .map(|h| h.to_byte_array())
                .unwrap_or_default(),
        };
        SigningPayload::Secp256k1Prehash(digest)
    }

    /// Coinbase value paid out.
    pub fn reward(&self) -> Amount {
        crate::decode::sum(self.block.txdata[0].output.iter().map(|o| o.value))
            .unwrap_or(Amount::MAX_MONEY)
    }

    /// A short, secret-free description for the audit log.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "height": self.height,
            "prev_block": self.block.header.prev_blockhash.to_string(),
            "time": self.block.header.time,
            "version": format!("{:#010x}", self.block.header.version.to_consensus()),
            "transactions": self.block.txdata.len(),
            "weight": self.weight,
            "reward_sat": self.reward().to_sat(),
            "commitment": self.commitment().to_string(),
        })
    }
}

/// A signature turned into the solution: `scriptSig` and witness of `spend`'s input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Solution {
    /// `scriptSig` (`OP_0 <sig>` for multisig, empty for p2wpkh).
    pub script_sig: ScriptBuf,
    /// Witness (`[sig, pk]` for p2wpkh, empty for multisig).
    pub witness: Witness,
}

impl Solution {
    /// Builds the solution from a DER signature with its sighash byte.
    pub fn new(
        challenge: &Challenge,
        sig: &bitcoin::ecdsa::Signature,
        key: &bitcoin::secp256k1::PublicKey,
    ) -> Solution {
        match challenge.kind {
            ChallengeKind::Multisig { .. } => {
                let push = PushBytesBuf::try_from(sig.to_vec()).unwrap_or_default();
                Solution {
                    script_sig: Builder::new().push_int(0).push_slice(push).into_script(),
                    witness: Witness::new(),
                }
            }
            ChallengeKind::P2wpkh(_) => Solution {
                script_sig: ScriptBuf::new(),
                witness: Witness::p2wpkh(sig, key),
            },
        }
    }

    /// BIP325 solution bytes: `scriptSig` as a string, then the witness stack.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serialize(&self.script_sig);
        out.extend(serialize(&self.witness));
        out
    }

    /// The push the miner appends to the commitment output: header then solution.
    pub fn commitment_push(&self) -> Vec<u8> {
        let mut data = SIGNET_HEADER.to_vec();
        data.extend(self.to_bytes());
        let mut out = Vec::with_capacity(data.len() + 5);
        push_data(&mut out, &data);
        out
    }
}

/// The block with its solution added and the merkle root recomputed, as the miner's
/// `finish_block` builds it (the nonce still to grind).
pub fn solved_block(signet: &SignetBlock, solution: &Solution) -> Block {
    let mut block = signet.block.clone();
    let out = &mut block.txdata[0].output[signet.commitment_output];
    let mut script = out.script_pubkey.to_bytes();
    script.extend(solution.commitment_push());
    out.script_pubkey = ScriptBuf::from_bytes(script);
    block.header.merkle_root = block
        .compute_merkle_root()
        .unwrap_or_else(TxMerkleNode::all_zeros);
    block
}

/// The hash of a header, for proving a parent.
pub fn header_hash(header: &bitcoin::block::Header) -> BlockHash {
    header.block_hash()
}

#[cfg(test)]
#[path = "signet_tests.rs"]
mod tests;
