//! Bitcoin chain state beyond one request: the chain tip locktimes are judged by, signed
//! transactions kept for the operator, and conflict-guard claims two admins released.

use keyguard_bitcoin::locktime::{estimated_tip, Tip};
use keyguard_bitcoin::{BitcoinPolicy, SignedPsbt};
use keyguard_chain::KeyId;

use super::super::{Guard, GuardError};
use crate::store::{AuditEntry, StateWrite};

/// Largest signed PSBT kept (base64 characters); a standard transaction is far below it, and
/// the bound keeps a stream of huge signed PSBTs from growing the database without limit.
const MAX_KEPT_PSBT: usize = 600_000;

/// The row that keeps a released transaction, committed with its audit row.
pub(super) fn kept_tx(entry: &AuditEntry, signed: &SignedPsbt) -> Vec<StateWrite> {
    let Some(key_id) = entry.key_id.clone() else {
        return Vec::new();
    };
    if signed.psbt.len() > MAX_KEPT_PSBT {
        tracing::warn!(txid = %signed.txid, "signed PSBT too large to keep");
        return Vec::new();
    }
    vec![StateWrite::BitcoinTx {
        txid: signed.txid.to_string(),
        key_id,
        ts_ms: crate::store::now_ms(),
        psbt: signed.psbt.clone(),
        tx_hex: signed.tx_hex.clone(),
    }]
}

impl Guard {
    /// The tip locktimes are judged by: the node's when one is configured (its failure fails
    /// the request closed), else the clock estimate (mainnet) or unknown.
    pub(super) async fn bitcoin_tip(
        &self,
        policy: &BitcoinPolicy,
    ) -> Result<Option<Tip>, GuardError> {
        match self.node()? {
            Some(node) => {
                let height = node
                    .tip()
                    .await
                    .map_err(|e| GuardError::Backend(e.to_string()))?;
                Ok(Some(Tip {
                    height,
                    exact: true,
                }))
            }
            None => {
                let now = u64::try_from(crate::store::now_ms()).unwrap_or(0);
                Ok(estimated_tip(policy.network, now))
            }
        }
    }

    /// Whether two admins released the claim of `txid` on `outpoint`.
    pub(super) fn claim_released(
        &self,
        key: &KeyId,
        outpoint: &str,
        txid: &str,
    ) -> Result<bool, GuardError> {
        let Some(db) = &self.bitcoin.history else {
            return Ok(false);
        };
        db.bitcoin_claim_released(key.as_str(), outpoint, txid)
            .map_err(|e| GuardError::Backend(format!("reading claim releases: {e}")))
    }
}
