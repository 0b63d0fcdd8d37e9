//! Stateful rule machinery shared by chains: velocity counters and nonce ownership.
//!
//! The race this module exists for: two requests that each fit under a daily limit but not
//! together arrive at once; both read the counter, both pass, both sign. Here a request
//! *reserves* its amounts under one short lock, before any key is used; concurrent requests
//! see each other's reservations. The reservation becomes a durable row in the same SQLite
//! transaction as the signature's audit row (so it is on disk before the signature leaves),
//! and is released if anything fails before that. After a crash, only committed rows count —
//! and only committed signatures were ever released.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use alloy_primitives::{B256, U256};
use keyguard_chain::{KeyId, Rejection};
use keyguard_evm::Debit;

use crate::store::{NonceRow, StateWrite, Store, StoreError, VelocityRow};

/// The longest velocity window keyguard rebuilds at start (config refuses longer ones).
pub use keyguard_evm::rulecfg::MAX_WINDOW_MS;

#[derive(Default)]
struct Counter {
    events: VecDeque<(u64, U256)>,
    pending: Vec<(u64, U256)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NonceOwner {
    sighash: B256,
    max_fee: u128,
    tip: u128,
}

#[derive(Default)]
struct NonceSlot {
    committed: Option<NonceOwner>,
    pending: Option<(u64, NonceOwner)>,
}

#[derive(Default)]
struct State {
    counters: HashMap<(KeyId, String), Counter>,
    nonces: HashMap<(KeyId, u64, u64), NonceSlot>,
    next_id: u64,
}

/// A transaction's claim on a nonce.
#[derive(Clone, Debug)]
pub struct NonceClaim {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Account nonce.
    pub nonce: u64,
    /// Signing hash (identity of the transaction).
    pub sighash: B256,
    /// `maxFeePerGas` or `gasPrice`.
    pub max_fee: u128,
    /// `maxPriorityFeePerGas` (the gas price for legacy transactions).
    pub tip: u128,
    /// Whether a different transaction may replace an earlier one with higher fees.
    pub allow_replacement: bool,
    /// Minimum fee increase of a replacement, percent.
    pub min_bump_percent: u32,
}

/// In-memory view of the durable counters, with in-flight reservations.
#[derive(Default)]
pub struct Ledger {
    state: Mutex<State>,
}

/// Amounts and a nonce held for one request until its audit row commits (then
/// [`Reservation::commit`]) or it fails (dropping releases everything).
pub struct Reservation<'a> {
    ledger: &'a Ledger,
    id: u64,
    key: KeyId,
    now_ms: u64,
    debits: Vec<Debit>,
    nonce: Option<NonceClaim>,
    /// The transaction the nonce belonged to when it was judged replaceable.
    replaces: Option<B256>,
    done: bool,
}

fn bumped(old: u128, new: u128, percent: u32) -> bool {
    let need = U256::from(old) * U256::from(100 + percent as u64);
    U256::from(new) * U256::from(100) >= need
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the counters and nonces from the store (at start).
    pub fn restore(&self, store: &Store, now_ms: u64) -> Result<(), StoreError> {
        let since = now_ms.saturating_sub(MAX_WINDOW_MS) as i64;
        let rows: Vec<VelocityRow> = store.velocity_since(since)?;
        let nonces: Vec<NonceRow> = store.evm_nonces()?;
        let mut st = self.lock();
        for r in rows {
            let (Ok(key), Ok(amount)) = (KeyId::new(r.key_id), r.amount.parse::<U256>()) else {
                continue;
            };
            st.counters
                .entry((key, r.counter))
                .or_default()
                .events
                .push_back((r.ts_ms.max(0) as u64, amount));
        }
        for n in nonces {
            let Ok(key) = KeyId::new(n.key_id) else {
                continue;
            };
            st.nonces
                .entry((key, n.chain_id, n.nonce))
                .or_default()
                .committed = Some(NonceOwner {
                sighash: B256::from(n.sighash),
                max_fee: n.max_fee.parse().unwrap_or(u128::MAX),
                tip: n.tip.parse().unwrap_or(u128::MAX),
            });
        }
        Ok(())
    }

    /// Takes what the shared store says about one nonce as committed history (another instance
    /// may have signed it): the next decision for it judges against that transaction.
    pub fn learn_nonce(&self, row: &NonceRow) {
        let Ok(key) = KeyId::new(row.key_id.clone()) else {
            return;
        };
        let mut st = self.lock();
        st.nonces
            .entry((key, row.chain_id, row.nonce))
            .or_default()
            .committed = Some(NonceOwner {
            sighash: B256::from(row.sighash),
            max_fee: row.max_fee.parse().unwrap_or(u128::MAX),
            tip: row.tip.parse().unwrap_or(u128::MAX),
        });
    }

    /// Reserves `debits` and `nonce` for `key` at `now_ms`, or refuses naming the limit.
    pub fn reserve(
        &self,
        key: &KeyId,
        debits: &[Debit],
        nonce: Option<NonceClaim>,
        now_ms: u64,
    ) -> Result<Reservation<'_>, Rejection> {
        let mut st = self.lock();
        st.next_id += 1;
        let id = st.next_id;
        if let Some(c) = &nonce {
            let slot = st.nonces.get(&(key.clone(), c.chain_id, c.nonce));
            if let Some(slot) = slot {
                if let Some((_, p)) = &slot.pending {
                    if p.sighash != c.sighash {
                        return Err(Rejection::policy(
                            "evm.nonce_reuse",
                            "nonce",
                            format!("nonce {} has another transaction being signed", c.nonce),
                        ));
                    }
                }
                if let Some(old) = &slot.committed {
                    let replacement_ok = c.allow_replacement
                        && bumped(old.max_fee, c.max_fee, c.min_bump_percent)
                        && bumped(old.tip, c.tip, c.min_bump_percent);
                    if old.sighash != c.sighash && !replacement_ok {
                        return Err(Rejection::policy(
                            "evm.nonce_reuse",
                            "nonce",
                            if c.allow_replacement {
                                format!(
                                    "nonce {} was signed for another transaction; a replacement \
                                     must raise both fees by {}%",
                                    c.nonce, c.min_bump_percent
                                )
                            } else {
                                format!("nonce {} was signed for another transaction", c.nonce)
                            },
                        ));
                    }
                }
            }
        }
        for d in debits {
            let counter = st
                .counters
                .entry((key.clone(), d.counter.clone()))
                .or_default();
            let start = now_ms.saturating_sub(d.window_ms);
            while counter.events.front().is_some_and(|(ts, _)| *ts < start) {
                counter.events.pop_front();
            }
            let used = counter
                .events
                .iter()
                .chain(counter.pending.iter())
                .fold(U256::ZERO, |a, (_, v)| a.saturating_add(*v));
            if used.saturating_add(d.amount) > d.max {
                return Err(Rejection::policy(
                    d.rule,
                    d.counter.clone(),
                    format!(
                        "limit {}: {} already counted in the window, {} more would exceed {}",
                        d.limit, used, d.amount, d.max
                    ),
                ));
            }
        }
        // Every check passed: take the reservation in full (no partial holds).
        for d in debits {
            if let Some(c) = st.counters.get_mut(&(key.clone(), d.counter.clone())) {
                c.pending.push((id, d.amount));
            }
        }
        let mut replaces = None;
        if let Some(c) = &nonce {
            let slot = st
                .nonces
                .entry((key.clone(), c.chain_id, c.nonce))
                .or_default();
            replaces = slot
                .committed
                .as_ref()
                .map(|o| o.sighash)
                .filter(|h| *h != c.sighash);
            slot.pending = Some((
                id,
                NonceOwner {
                    sighash: c.sighash,
                    max_fee: c.max_fee,
                    tip: c.tip,
                },
            ));
        }
        Ok(Reservation {
            ledger: self,
            id,
            key: key.clone(),
            now_ms,
            debits: debits.to_vec(),
            nonce,
            replaces,
            done: false,
        })
    }
}

impl Reservation<'_> {
    /// The rows to commit with the audit entry.
    pub fn writes(&self) -> Vec<StateWrite> {
        let mut out: Vec<StateWrite> = self
            .debits
            .iter()
            .map(|d| StateWrite::Velocity {
                key_id: self.key.to_string(),
                counter: d.counter.clone(),
                ts_ms: self.now_ms as i64,
                amount: d.amount.to_string(),
                window_ms: i64::try_from(d.window_ms).unwrap_or(i64::MAX),
                max: d.max.to_string(),
                rule: d.rule.to_owned(),
            })
            .collect();
        if let Some(c) = &self.nonce {
            out.push(StateWrite::EvmNonce {
                key_id: self.key.to_string(),
                chain_id: c.chain_id,
                nonce: c.nonce,
                sighash: c.sighash.0,
                max_fee: c.max_fee.to_string(),
                tip: c.tip.to_string(),
                replaces: self.replaces.map(|h| h.0),
            });
        }
        out
    }

    /// The rows are durable: the reservation becomes counted history.
    pub fn commit(mut self) {
        self.finish(true);
    }

    fn finish(&mut self, keep: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let mut st = self.ledger.lock();
        for d in &self.debits {
            if let Some(c) = st.counters.get_mut(&(self.key.clone(), d.counter.clone())) {
                if let Some(pos) = c.pending.iter().position(|(id, _)| *id == self.id) {
                    let (_, amount) = c.pending.swap_remove(pos);
                    if keep {
                        c.events.push_back((self.now_ms, amount));
                    }
                }
            }
        }
        if let Some(n) = &self.nonce {
            if let Some(slot) = st.nonces.get_mut(&(self.key.clone(), n.chain_id, n.nonce)) {
                if let Some((id, owner)) = slot.pending {
                    if id == self.id {
                        slot.pending = None;
                        if keep {
                            slot.committed = Some(owner);
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

#[cfg(test)]
mod tests;
