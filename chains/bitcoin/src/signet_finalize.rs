//! Pass 2 for signet blocks, and the miner's PSBT (`contrib/signet/miner`): the whole block
//! under the proprietary global key `0xfc 06 "signet" 'b'`, `spend` as the unsigned
//! transaction, `to_spend` as input 0's `non_witness_utxo`, `SIGHASH_ALL`.
//!
//! Pass 2 does not trust the path that built the solution: it adds the solution to the block,
//! strips it again the way Core's `FetchAndClearCommitmentSection` does, rebuilds `to_spend`
//! from the solved block, and verifies the signature against that sighash and the key.

use bitcoin::base64::prelude::{Engine as _, BASE64_STANDARD};
use bitcoin::blockdata::script::Instruction;
use bitcoin::consensus::deserialize;
use bitcoin::psbt::raw::ProprietaryKey;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, Secp256k1};
use bitcoin::{Block, ScriptBuf, Transaction, Witness};
use keyguard_chain::{Rejection, Signature, SigningPayload};

use crate::signet::{
    bip325_txs, decode_block, push_data, solved_block, Challenge, SignetBlock, Solution,
    MAX_BLOCK_BYTES, SIGNET_HEADER,
};
use crate::signet_rules::rule;

/// The proprietary key of the block: prefix `signet`, subtype `b`, no key data.
fn block_key() -> ProprietaryKey {
    ProprietaryKey {
        prefix: b"signet".to_vec(),
        subtype: b'b',
        key: Vec::new(),
    }
}

/// Whether `psbt` carries a signet block (the miner's PSBT), judged on the global key alone.
pub fn is_signet_psbt(psbt: &Psbt) -> bool {
    psbt.proprietary.contains_key(&block_key())
}

/// Strict parse of a base64 PSBT of any size a block PSBT can have (a spend PSBT's 1 MiB cap
/// is too small for a full block).
pub fn parse_block_psbt(b64: &str) -> Result<Psbt, Rejection> {
    let max = (MAX_BLOCK_BYTES + 64 * 1024) * 4 / 3 + 4;
    if b64.len() > max {
        return Err(Rejection::invalid(
            "psbt",
            "larger than a block PSBT can be",
        ));
    }
    let bytes = BASE64_STANDARD
        .decode(b64.trim())
        .map_err(|e| Rejection::invalid("psbt", format!("not base64: {e}")))?;
    crate::v2::parse_raw(&bytes).map_err(|e| Rejection::invalid("psbt", e.0))?;
    Psbt::deserialize(&bytes).map_err(|e| Rejection::invalid("psbt", e.to_string()))
}

/// The block a miner PSBT carries, decoded, after checking that every claim of the PSBT is
/// what keyguard rebuilt from that block: the challenge first (a foreign network is named as
/// such), then `to_spend` and `spend` byte for byte.
pub fn decode_psbt(psbt: &Psbt, challenge: &Challenge) -> Result<SignetBlock, Rejection> {
    let bytes = psbt
        .proprietary
        .get(&block_key())
        .ok_or_else(|| Rejection::invalid("psbt", "no signet block (0xfc06 signet b)"))?;
    if psbt.inputs.len() != 1 || psbt.outputs.len() != 1 {
        return Err(commitment(
            "psbt",
            "a signet PSBT has one input and one output",
        ));
    }
    let claimed = psbt.inputs[0]
        .non_witness_utxo
        .as_ref()
        .ok_or_else(|| commitment("psbt.inputs[0]", "no to_spend (non_witness_utxo)"))?;
    let foreign = claimed.output.first().map(|o| &o.script_pubkey) != Some(&challenge.script);
    if foreign {
        return Err(Rejection::policy(
            rule::CHALLENGE,
            "psbt.inputs[0]",
            "to_spend pays another challenge than this key's signet",
        ));
    }
    let signet = decode_block(bytes, challenge)?;
    if *claimed != signet.to_spend {
        return Err(commitment(
            "psbt.inputs[0]",
            "to_spend does not commit to the block the PSBT carries",
        ));
    }
    if psbt.unsigned_tx != signet.spend {
        return Err(commitment(
            "psbt.unsigned_tx",
            "spend is not BIP325's spend of that to_spend",
        ));
    }
    let sighash = psbt.inputs[0].sighash_type.map(|s| s.to_u32());
    if !matches!(sighash, None | Some(1)) {
        return Err(Rejection::policy(
            rule::COMMITMENT,
            "psbt.inputs[0].sighash_type",
            "only SIGHASH_ALL",
        ));
    }
    Ok(signet)
}

fn commitment(field: &str, reason: &str) -> Rejection {
    Rejection::policy(rule::COMMITMENT, field, reason)
}

/// A signed signet block, verified by pass 2.
#[derive(Clone, Debug)]
pub struct SignedSignetBlock {
    /// The solution.
    pub solution: Solution,
    /// The block with the solution and its merkle root (nonce still to grind).
    pub block: Block,
}

impl SignedSignetBlock {
    /// The miner's PSBT answered as `walletprocesspsbt` would: input 0 finalized.
    pub fn answer_psbt(&self, mut psbt: Psbt) -> Psbt {
        let input = &mut psbt.inputs[0];
        input.partial_sigs.clear();
        input.sighash_type = None;
        input.final_script_sig = Some(self.solution.script_sig.clone()).filter(|s| !s.is_empty());
        input.final_script_witness = Some(self.solution.witness.clone()).filter(|w| !w.is_empty());
        psbt
    }
}

/// Pass 2: the backend's signature, checked and turned into the solved block.
pub fn finalize(
    signet: &SignetBlock,
    challenge: &Challenge,
    key: &PublicKey,
    signature: &Signature,
) -> Result<SignedSignetBlock, String> {
    let Signature::Secp256k1 { r, s, .. } = signature else {
        return Err("not an ECDSA signature".into());
    };
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(r);
    compact[32..].copy_from_slice(s);
    let mut sig = ecdsa::Signature::from_compact(&compact).map_err(|e| e.to_string())?;
    sig.normalize_s();
    let ecdsa = bitcoin::ecdsa::Signature::sighash_all(sig);
    let solution = Solution::new(challenge, &ecdsa, key);
    let block = solved_block(signet, &solution);
    // Re-decode what leaves: the solution Core will find, the commitment it will rebuild.
    let (found, stripped) = extract(&block, signet.commitment_output)?;
    if found != solution {
        return Err("the solved block carries another solution".into());
    }
    let mut coinbase = block.txdata[0].clone();
    coinbase.output[signet.commitment_output].script_pubkey = stripped;
    let rest = block.txdata[1..].iter().map(Transaction::compute_txid);
    let (again, _) = bip325_txs(
        &block.header,
        coinbase.compute_txid(),
        rest,
        &challenge.script,
    );
    if again.compute_txid() != signet.commitment() {
        return Err("the solved block commits to another to_spend".into());
    }
    let SigningPayload::Secp256k1Prehash(digest) = signet.payload(challenge) else {
        return Err("unexpected payload".into());
    };
    Secp256k1::verification_only()
        .verify_ecdsa(&Message::from_digest(digest), &sig, key)
        .map_err(|e| format!("signature does not verify: {e}"))?;
    Ok(SignedSignetBlock { solution, block })
}

/// Core's solution extraction on output `index` of a solved block: the solution and the
/// script left after stripping it.
fn extract(block: &Block, index: usize) -> Result<(Solution, ScriptBuf), String> {
    let script = &block.txdata[0].output[index].script_pubkey;
    let mut rest = Vec::new();
    let mut found = None;
    for i in script.instructions() {
        match i.map_err(|e| e.to_string())? {
            Instruction::PushBytes(b)
                if found.is_none()
                    && b.len() > SIGNET_HEADER.len()
                    && b.as_bytes().starts_with(&SIGNET_HEADER) =>
            {
                found = Some(b.as_bytes()[SIGNET_HEADER.len()..].to_vec());
                push_data(&mut rest, &SIGNET_HEADER);
            }
            Instruction::PushBytes(b) if b.is_empty() => rest.push(0),
            Instruction::PushBytes(b) => push_data(&mut rest, b.as_bytes()),
            Instruction::Op(op) => rest.push(op.to_u8()),
        }
    }
    let data = found.ok_or("no solution in the commitment output")?;
    let (script_sig, used): (ScriptBuf, usize) =
        bitcoin::consensus::deserialize_partial(&data).map_err(|e| e.to_string())?;
    let witness: Witness = deserialize(&data[used..]).map_err(|e| e.to_string())?;
    Ok((
        Solution {
            script_sig,
            witness,
        },
        ScriptBuf::from_bytes(rest),
    ))
}
