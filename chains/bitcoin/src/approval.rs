//! `bitcoin.require_approval`: large spends wait for people.
//!
//! ```toml
//! require_approval = { above = "1 btc", approvers = 2, group = "treasury", within = "1h" }
//! ```
//!
//! Why here and not in the daemon: what counts as "large" is a fact of the decoded spend
//! (every non-change output plus the fee, the same amount the spend limits count), so the
//! chain crate decides *whether* approval is needed; the daemon's approval book decides
//! *whether it was given*, with the same machinery as Ethereum's rule.

use keyguard_chain::approval::ApprovalRule;

use crate::rules::Sats;
use crate::{OutputClass, SpendIntent};

/// Stable rule name, reported in approval records and refusals.
pub const RULE: &str = "bitcoin.require_approval";

/// Spends strictly above `above` need `approvers` distinct members of `group` within `within`:
/// the shared approval shape ([`keyguard_chain::approval`]) with amounts in sats/btc.
pub type BitcoinApprovalRule = ApprovalRule<Sats>;

/// Whether `intent` needs approval under `rule`: its spend (non-change outputs plus fee) is
/// strictly above `above`.
pub fn applies(rule: &BitcoinApprovalRule, intent: &SpendIntent) -> bool {
    intent.spend() > rule.above.0
}

/// What an approver is shown: chain, destinations with amounts, change, fee, total spend.
/// Built from the decoded intent only (never from labels in the PSBT), so approvers judge the
/// transaction keyguard will actually sign.
pub fn approver_view(intent: &SpendIntent) -> serde_json::Value {
    let destinations: Vec<_> = intent
        .outputs
        .iter()
        .enumerate()
        .filter_map(|(o, out)| match &out.class {
            OutputClass::Spend { .. } => Some(serde_json::json!({
                "output": o,
                "to": out.payee(),
                "sat": out.amount.to_sat(),
                "btc": out.amount.to_btc(),
            })),
            _ => None,
        })
        .collect();
    let change: u64 = intent
        .outputs
        .iter()
        .filter(|o| matches!(o.class, OutputClass::Change { .. }))
        .map(|o| o.amount.to_sat())
        .sum();
    serde_json::json!({
        "chain": format!("bitcoin:{}", intent.network),
        "destinations": destinations,
        "change_sat": change,
        "fee_sat": intent.fee().to_sat(),
        "spend_sat": intent.spend().to_sat(),
        "spend_btc": intent.spend().to_btc(),
    })
}

/// The bytes an approval binds to: the unsigned transaction and every sighash keyguard will
/// sign (which commit to the proven input amounts), so an approval of one PSBT can never
/// release a different transaction, nor the same one with other claimed amounts.
pub fn approval_bytes(intent: &SpendIntent) -> Vec<u8> {
    let mut bytes = bitcoin::consensus::serialize(&intent.psbt.unsigned_tx);
    for job in &intent.jobs {
        bytes.extend_from_slice(&(job.input as u64).to_be_bytes());
        match &job.payload {
            keyguard_chain::SigningPayload::Secp256k1Prehash(d) => bytes.extend_from_slice(d),
            keyguard_chain::SigningPayload::TaprootKeySpend { sighash, .. } => {
                bytes.extend_from_slice(sighash)
            }
            keyguard_chain::SigningPayload::Ed25519Message(m) => bytes.extend_from_slice(m),
        }
    }
    bytes
}
