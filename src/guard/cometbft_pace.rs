//! The clock meter of each (chain, key) (`cometbft.height_rate`, see
//! [`keyguard_cometbft::pace`]) and the re-read that lets a repaired watermark take effect.
//!
//! A meter starts full whenever the watermark is (re)loaded from the store, is charged only
//! when a signature's watermark commits, and lives in memory: its worst case after a restart
//! is one `max_height_jump` burst, the bound keyguard always had.

use std::collections::HashMap;
use std::sync::Mutex;

use keyguard_chain::KeyId;
use keyguard_cometbft::{Pace, SignRequest, SignedState};

use super::cometbft::CometbftTarget;
use super::GuardError;
use crate::store::WatermarkStore;

/// Meters by (chain, key).
#[derive(Default)]
pub(crate) struct Paces(Mutex<HashMap<(String, KeyId), Pace>>);

fn slot_key(target: &CometbftTarget) -> (String, KeyId) {
    (target.chain_id.clone(), target.key.clone())
}

impl Paces {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, KeyId), Pace>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A full meter for a freshly loaded watermark.
    pub(crate) fn reset(&self, target: &CometbftTarget, now_ms: i64) {
        let pace = Pace::full(&target.limits.pace(), i128::from(now_ms));
        self.map().insert(slot_key(target), pace);
    }

    /// Whether `request` fits the meter after `state`; the meter to keep once it commits.
    /// The first signature of a key with no state is charged from `start_height` (when set;
    /// `cometbft.first_height` already bounded it).
    pub(crate) fn admit(
        &self,
        target: &CometbftTarget,
        state: &SignedState,
        request: &SignRequest,
        now_ms: i64,
    ) -> Result<Pace, GuardError> {
        let limits = target.limits.pace();
        let now = i128::from(now_ms);
        let pace = *self
            .map()
            .entry(slot_key(target))
            .or_insert_with(|| Pace::full(&limits, now));
        let from = match (state.height, target.limits.start_height) {
            (0, Some(start)) => start,
            (0, None) => return Ok(pace),
            (h, _) => h,
        };
        Ok(pace.admit(&limits, from, request.hrs().0, now)?)
    }

    /// Keeps the meter charged by a committed signature.
    pub(crate) fn keep(&self, target: &CometbftTarget, pace: Pace) {
        self.map().insert(slot_key(target), pace);
    }
}

/// Whether the stored watermark differs from the cached one (changed by `watermarks.repair`,
/// an import, or another process): the caller drops its cache. Blocking.
pub(crate) fn stale(
    store: &WatermarkStore,
    target: &CometbftTarget,
    cached: Option<&SignedState>,
) -> bool {
    match store.load(&target.chain_id, target.key.as_str()) {
        Ok(row) => row.as_ref().map(|r| &r.state) != cached,
        Err(_) => true,
    }
}
