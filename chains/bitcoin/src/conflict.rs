//! What the conflict guard (`bitcoin.conflicting_spend`) remembers of a signed transaction:
//! its txid, payments and fee, enough to tell a fee bump of the same payments from a double
//! spend, and rebuilt from the audit summary after a restart.

use crate::SpendIntent;

/// A transaction keyguard signed, as remembered for conflict checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedSpend {
    /// Its txid.
    pub txid: String,
    /// Its payments (see [`SpendIntent::payments`]).
    pub payments: Vec<(String, u64)>,
    /// Its fee.
    pub fee_sat: u64,
}

impl SignedSpend {
    /// From a decoded intent.
    pub fn of(intent: &SpendIntent) -> Self {
        SignedSpend {
            txid: intent.txid().to_string(),
            payments: intent.payments(),
            fee_sat: intent.fee().to_sat(),
        }
    }

    /// From the summary keyguard wrote to the audit log for it.
    pub fn from_summary(summary: &serde_json::Value) -> Option<Self> {
        let mut payments: Vec<(String, u64)> = summary
            .get("outputs")?
            .as_array()?
            .iter()
            .filter_map(|o| Some((o.get("to")?.as_str()?.to_string(), o.get("sat")?.as_u64()?)))
            .collect();
        payments.sort();
        Some(SignedSpend {
            txid: summary.get("txid")?.as_str()?.to_string(),
            payments,
            fee_sat: summary.get("fee_sat")?.as_u64()?,
        })
    }
}
