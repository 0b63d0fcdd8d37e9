//! Block policy for signet block signing (`[policies.signet]`), each refusal naming its rule
//! and the block field it looked at.
//!
//! Stateless rules look at the block alone ([`SignetPolicy::check_block`]); chain rules compare
//! it with what this key signed before ([`SignetPolicy::check_chain`], run by the daemon under
//! the lock that also reserves the new height, so two requests for one height cannot both pass).

use std::str::FromStr;

use bitcoin::address::NetworkUnchecked;
use bitcoin::block::Header;
use bitcoin::hashes::Hash;
use bitcoin::{Address, Amount, BlockHash, Network, PubkeyHash, ScriptBuf, TxMerkleNode};
use keyguard_chain::Rejection;
use serde::Deserialize;

use crate::rules::Sats;
use crate::signet::{Challenge, SignetBlock, SIGNET_GENESIS};

/// Stable rule names (registered in `keyguard_chain::rules`).
pub mod rule {
    #![allow(missing_docs)]
    pub const BLOCK: &str = "bitcoin.signet.block";
    pub const COMMITMENT: &str = "bitcoin.signet.commitment";
    pub const CHALLENGE: &str = "bitcoin.signet.challenge";
    pub const PREV_BLOCK: &str = "bitcoin.signet.prev_block";
    pub const HEIGHT: &str = "bitcoin.signet.height";
    pub const HEIGHT_GAP: &str = "bitcoin.signet.height_gap";
    pub const TIMESTAMP_FUTURE: &str = "bitcoin.signet.timestamp_future";
    pub const TIMESTAMP_PAST: &str = "bitcoin.signet.timestamp_past";
    pub const REWARD: &str = "bitcoin.signet.reward";
    pub const PAYOUT: &str = "bitcoin.signet.payout";
    pub const VERSION: &str = "bitcoin.signet.version";
    pub const MAX_TRANSACTIONS: &str = "bitcoin.signet.max_transactions";
    pub const MAX_WEIGHT: &str = "bitcoin.signet.max_weight";
    pub const TX_ALLOWLIST: &str = "bitcoin.signet.tx_allowlist";
}

/// How many blocks Core's median-time-past looks back.
const MTP_SPAN: u32 = 11;
/// Blocks between subsidy halvings (signet keeps mainnet's schedule).
const HALVING_INTERVAL: u32 = 210_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignetPolicy {
    challenge: String,
    start_height: u32,
    #[serde(default)]
    start_prev_hash: Option<String>,
    #[serde(default = "one")]
    max_height_gap: u32,
    #[serde(default)]
    reorg_depth: u32,
    #[serde(default = "yes")]
    require_parent_proof: bool,
    #[serde(default = "default_future")]
    max_future_secs: u64,
    payout: Vec<String>,
    #[serde(default = "default_max_fees")]
    max_fees: Sats,
    #[serde(default)]
    version_bits: Vec<u8>,
    #[serde(default = "default_max_transactions")]
    max_transactions: u32,
    #[serde(default = "default_max_weight")]
    max_weight: u64,
    #[serde(default)]
    tx_inputs_from: Option<Vec<Address<NetworkUnchecked>>>,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
/// An hour: Core's miner may date its first block after a start up to `--max-interval`
/// (default 30 min) ahead; consensus allows two hours.
fn default_future() -> u64 {
    3600
}
fn default_max_fees() -> Sats {
    Sats(Amount::from_sat(10_000_000))
}
fn default_max_transactions() -> u32 {
    25_000
}
fn default_max_weight() -> u64 {
    4_000_000
}

/// The signet rules of one policy.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawSignetPolicy")]
pub struct SignetPolicy {
    /// The network's challenge script; the key must solve it alone.
    pub challenge: Challenge,
    /// Height of the first block keyguard may sign when it has signed none.
    pub start_height: u32,
    /// Previous block of that first block, if the operator pins it (height 1: the genesis).
    pub start_prev_hash: Option<BlockHash>,
    /// Largest step above the last signed height (1: every block is the next one).
    pub max_height_gap: u32,
    /// How far below the highest signed height a reorg may go (0: never).
    pub reorg_depth: u32,
    /// Whether a block on top of keyguard's tip must come with that tip's header.
    pub require_parent_proof: bool,
    /// Largest block time ahead of keyguard's clock.
    pub max_future_secs: u64,
    /// Scripts the coinbase may pay.
    pub payout: Vec<ScriptBuf>,
    /// Fees counted into the allowed reward at most (the caller's claim is capped by it).
    pub max_fees: Amount,
    /// BIP9 version bits that may be set.
    pub version_bits: Vec<u8>,
    /// Largest transaction count, coinbase included.
    pub max_transactions: u32,
    /// Largest block weight.
    pub max_weight: u64,
    /// `Some`: every non-coinbase input must spend from these P2WPKH scripts.
    pub tx_inputs_from: Option<Vec<ScriptBuf>>,
}

/// A payout entry: a signet address or `script:<hex>`.
fn payout_script(s: &str) -> Result<ScriptBuf, String> {
    if let Some(hex) = s.strip_prefix("script:") {
        return ScriptBuf::from_hex(hex).map_err(|e| format!("{s:?}: {e}"));
    }
    Address::from_str(s)
        .map_err(|e| format!("{s:?}: {e}"))?
        .require_network(Network::Signet)
        .map(|a| a.script_pubkey())
        .map_err(|e| format!("{s:?}: not a signet address: {e}"))
}

impl TryFrom<RawSignetPolicy> for SignetPolicy {
    type Error = String;
    fn try_from(raw: RawSignetPolicy) -> Result<Self, String> {
        let script = ScriptBuf::from_hex(&raw.challenge).map_err(|e| format!("challenge: {e}"))?;
        let challenge = Challenge::parse(script).map_err(|e| format!("challenge: {e}"))?;
        let payout = raw
            .payout
            .iter()
            .enumerate()
            .map(|(i, s)| payout_script(s).map_err(|e| format!("payout[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if payout.is_empty() {
            return Err("payout: list at least one script the coinbase may pay".into());
        }
        if let Some(b) = raw.version_bits.iter().find(|b| **b > 28) {
            return Err(format!("version_bits: {b} is not a BIP9 bit (0-28)"));
        }
        if raw.max_weight > 4_000_000 || raw.max_transactions == 0 {
            return Err(
                "max_weight is at most 4000000 (consensus) and max_transactions at least 1".into(),
            );
        }
        if raw.start_height == 0 || raw.max_height_gap == 0 {
            return Err("start_height and max_height_gap must be at least 1".into());
        }
        let start_prev_hash = raw
            .start_prev_hash
            .map(|h| BlockHash::from_str(&h).map_err(|e| format!("start_prev_hash: {e}")))
            .transpose()?;
        let tx_inputs_from = raw
            .tx_inputs_from
            .map(|list| {
                list.into_iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let a = a
                            .require_network(Network::Signet)
                            .map_err(|e| format!("tx_inputs_from[{i}]: {e}"))?;
                        let script = a.script_pubkey();
                        if script.is_p2wpkh() {
                            Ok(script)
                        } else {
                            Err(format!("tx_inputs_from[{i}]: only p2wpkh addresses"))
                        }
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .transpose()?;
        Ok(SignetPolicy {
            challenge,
            start_height: raw.start_height,
            start_prev_hash,
            max_height_gap: raw.max_height_gap,
            reorg_depth: raw.reorg_depth,
            require_parent_proof: raw.require_parent_proof,
            max_future_secs: raw.max_future_secs,
            payout,
            max_fees: raw.max_fees.0,
            version_bits: raw.version_bits,
            max_transactions: raw.max_transactions,
            max_weight: raw.max_weight,
            tx_inputs_from,
        })
    }
}

/// What this key signed last on this signet (durable; see the daemon's ledger).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignetTip {
    /// Height of the last signed block.
    pub height: u32,
    /// Highest height ever signed (a reorg lowers `height`, never this).
    pub max_height: u32,
    /// Its commitment (`to_spend` txid).
    pub commitment: String,
    /// Its previous block.
    pub prev_hash: BlockHash,
    /// Its merkle root with the solution (what its header carries).
    pub merkle_root: TxMerkleNode,
    /// Its version.
    pub version: i32,
    /// Its time.
    pub time: u32,
    /// (height, time) of recently signed blocks, newest last (at most 11).
    pub recent: Vec<(u32, u32)>,
}

/// What the caller may add to a request: proofs that only ever tighten the rules.
#[derive(Clone, Debug, Default)]
pub struct ChainProofs {
    /// The header of the block this one builds on.
    pub parent: Option<Header>,
    /// The chain's median-time-past as the caller's node reports it.
    pub mtp: Option<u32>,
}

/// Subsidy at `height` (50 BTC halving every 210,000 blocks).
pub fn subsidy(height: u32) -> Amount {
    let halvings = height / HALVING_INTERVAL;
    if halvings >= 64 {
        return Amount::ZERO;
    }
    Amount::from_sat(Amount::from_int_btc(50).to_sat() >> halvings)
}

fn refuse(rule: &'static str, field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::policy(rule, field, reason)
}

impl SignetPolicy {
    /// Rules on the block alone: version, size, time ahead of `now_secs`, payout, reward
    /// (subsidy plus fees: the caller's `fees` claim, capped by `max_fees`), transactions.
    pub fn check_block(
        &self,
        b: &SignetBlock,
        now_secs: u64,
        fees: Option<Amount>,
    ) -> Result<(), Rejection> {
        let version = b.block.header.version.to_consensus() as u32;
        let bits = version & 0x1fff_ffff;
        let stray = (0..29u8).find(|i| bits & (1 << i) != 0 && !self.version_bits.contains(i));
        if version >> 29 != 0b001 || stray.is_some() {
            return Err(refuse(
                rule::VERSION,
                "header.version",
                format!(
                    "{version:#010x}: not BIP9 or sets a bit outside {:?}",
                    self.version_bits
                ),
            ));
        }
        if b.weight > self.max_weight {
            return Err(refuse(
                rule::MAX_WEIGHT,
                "block",
                format!("weight {} above {}", b.weight, self.max_weight),
            ));
        }
        let count = b.block.txdata.len();
        if count > self.max_transactions as usize {
            return Err(refuse(
                rule::MAX_TRANSACTIONS,
                "block.txdata",
                format!("{count} transactions, above {}", self.max_transactions),
            ));
        }
        let time = u64::from(b.block.header.time);
        if time > now_secs.saturating_add(self.max_future_secs) {
            return Err(refuse(
                rule::TIMESTAMP_FUTURE,
                "header.time",
                format!(
                    "{}s ahead of keyguard's clock (at most {}s)",
                    time - now_secs,
                    self.max_future_secs
                ),
            ));
        }
        let coinbase = &b.block.txdata[0];
        for (i, o) in coinbase.output.iter().enumerate() {
            if i != b.commitment_output && !self.payout.contains(&o.script_pubkey) {
                return Err(refuse(
                    rule::PAYOUT,
                    &format!("coinbase.outputs[{i}]"),
                    format!("pays {}, not on the payout list", o.script_pubkey),
                ));
            }
        }
        let fees = fees.unwrap_or(self.max_fees).min(self.max_fees);
        let allowed = subsidy(b.height) + fees;
        if b.reward() > allowed {
            return Err(refuse(
                rule::REWARD,
                "coinbase.outputs",
                format!(
                    "pays {} sat, above subsidy {} + fees {} sat",
                    b.reward().to_sat(),
                    subsidy(b.height).to_sat(),
                    fees.to_sat()
                ),
            ));
        }
        self.check_transactions(b)
    }

    fn check_transactions(&self, b: &SignetBlock) -> Result<(), Rejection> {
        let Some(allowed) = &self.tx_inputs_from else {
            return Ok(());
        };
        for (t, tx) in b.block.txdata.iter().enumerate().skip(1) {
            for (i, input) in tx.input.iter().enumerate() {
                // A P2WPKH spend reveals its key: [signature, 33-byte key].
                let from = match (input.witness.len(), input.witness.nth(1)) {
                    (2, Some(pk)) if pk.len() == 33 && input.script_sig.is_empty() => Some(
                        ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array(
                            PubkeyHash::hash(pk).to_byte_array(),
                        )),
                    ),
                    _ => None,
                };
                if !from.is_some_and(|s| allowed.contains(&s)) {
                    return Err(refuse(
                        rule::TX_ALLOWLIST,
                        &format!("block.txdata[{t}].inputs[{i}]"),
                        "does not spend from a tx_inputs_from script",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Rules against what this key signed before: height above the watermark (or within the
    /// reorg depth), no jump past `max_height_gap`, the previous block known (genesis, the
    /// pinned start, or keyguard's own tip proven by its header), time above the median of
    /// the recent blocks keyguard signed and the caller's median-time-past.
    pub fn check_chain(
        &self,
        b: &SignetBlock,
        tip: Option<&SignetTip>,
        proofs: &ChainProofs,
    ) -> Result<(), Rejection> {
        let h = b.height;
        let prev = b.block.header.prev_blockhash;
        match tip {
            None => self.check_first(h, prev)?,
            Some(t) => {
                if u64::from(h) + u64::from(self.reorg_depth) <= u64::from(t.max_height) {
                    return Err(refuse(
                        rule::HEIGHT,
                        "coinbase.height",
                        format!(
                            "height {h} is not above {} (the highest signed; reorg depth {})",
                            t.max_height, self.reorg_depth
                        ),
                    ));
                }
                if u64::from(h) > u64::from(t.height) + u64::from(self.max_height_gap) {
                    return Err(refuse(
                        rule::HEIGHT_GAP,
                        "coinbase.height",
                        format!(
                            "height {h} is more than {} above the last signed {}",
                            self.max_height_gap, t.height
                        ),
                    ));
                }
                if h == t.height + 1 {
                    self.check_parent(b, t, proofs.parent.as_ref())?;
                }
            }
        }
        let tracked = tip.and_then(|t| median_before(&t.recent, h));
        let floor = tracked.max(proofs.mtp);
        if let Some(floor) = floor.filter(|f| b.block.header.time <= *f) {
            return Err(refuse(
                rule::TIMESTAMP_PAST,
                "header.time",
                format!(
                    "{} is not above the median time past {floor}",
                    b.block.header.time
                ),
            ));
        }
        Ok(())
    }

    fn check_first(&self, h: u32, prev: BlockHash) -> Result<(), Rejection> {
        if h < self.start_height {
            return Err(refuse(
                rule::HEIGHT,
                "coinbase.height",
                format!("height {h} is below start_height {}", self.start_height),
            ));
        }
        if u64::from(h) >= u64::from(self.start_height) + u64::from(self.max_height_gap) {
            return Err(refuse(
                rule::HEIGHT_GAP,
                "coinbase.height",
                format!(
                    "first block at height {h}, more than {} above start_height {}",
                    self.max_height_gap - 1,
                    self.start_height
                ),
            ));
        }
        let genesis = BlockHash::from_str(SIGNET_GENESIS).ok();
        let known = match (self.start_prev_hash, h) {
            (Some(p), _) if h == self.start_height => Some(p),
            (None, 1) => genesis,
            _ => None,
        };
        match known {
            Some(k) if k != prev => Err(refuse(
                rule::PREV_BLOCK,
                "header.prev_blockhash",
                format!("{prev} is not the known previous block {k}"),
            )),
            _ => Ok(()),
        }
    }

    fn check_parent(
        &self,
        b: &SignetBlock,
        t: &SignetTip,
        parent: Option<&Header>,
    ) -> Result<(), Rejection> {
        let Some(p) = parent else {
            if self.require_parent_proof {
                return Err(refuse(
                    rule::PREV_BLOCK,
                    "parent_header",
                    format!(
                        "block {} builds on height {}, which keyguard signed: send that \
                         block's header as parent_header",
                        b.height, t.height
                    ),
                ));
            }
            return Ok(());
        };
        let ours = p.prev_blockhash == t.prev_hash
            && p.merkle_root == t.merkle_root
            && p.version.to_consensus() == t.version
            && p.time == t.time;
        if !ours {
            return Err(refuse(
                rule::PREV_BLOCK,
                "parent_header",
                format!("is not the block keyguard signed at height {}", t.height),
            ));
        }
        if p.block_hash() != b.block.header.prev_blockhash {
            return Err(refuse(
                rule::PREV_BLOCK,
                "header.prev_blockhash",
                format!(
                    "does not build on keyguard's block at height {} ({}): a fork",
                    t.height,
                    p.block_hash()
                ),
            ));
        }
        Ok(())
    }
}

/// Median of the times of the tracked blocks among the 11 below `height`.
fn median_before(recent: &[(u32, u32)], height: u32) -> Option<u32> {
    let low = height.saturating_sub(MTP_SPAN);
    let mut times: Vec<u32> = recent
        .iter()
        .filter(|(h, _)| *h >= low && *h < height)
        .map(|(_, t)| *t)
        .collect();
    if times.is_empty() {
        return None;
    }
    times.sort_unstable();
    Some(times[times.len() / 2])
}

impl SignetTip {
    /// The tip after signing `b` (with the merkle root of the solved block) on top of `self`.
    pub fn after(
        before: Option<&SignetTip>,
        b: &SignetBlock,
        solved_root: TxMerkleNode,
    ) -> SignetTip {
        let mut recent: Vec<(u32, u32)> = before
            .map(|t| t.recent.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(h, _)| *h < b.height)
            .collect();
        recent.push((b.height, b.block.header.time));
        let keep = recent.len().saturating_sub(MTP_SPAN as usize);
        recent.drain(..keep);
        SignetTip {
            height: b.height,
            max_height: before.map_or(b.height, |t| t.max_height.max(b.height)),
            commitment: b.commitment().to_string(),
            prev_hash: b.block.header.prev_blockhash,
            merkle_root: solved_root,
            version: b.block.header.version.to_consensus(),
            time: b.block.header.time,
            recent,
        }
    }
}

#[cfg(test)]
#[path = "signet_rules_tests.rs"]
mod tests;
