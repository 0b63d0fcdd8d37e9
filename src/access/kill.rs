//! The kill switch: per key or for all keys, effective for the very next request on every
//! listener, persisted so a restart cannot quietly re-enable signing.
//!
//! Every signing request holds a read share of `gate` from its check until its response is
//! decided; `disable` flips the flag and then takes the write side, so it returns only when
//! every request that passed the check before the flip has finished. From that moment no
//! signature can be released.
//!
//! A request that finds its key already off is refused before it touches the gate, so requests
//! arriving while a `disable` waits for in-flight ones are answered `-32004` at once instead of
//! queueing behind the writer. A request parked in an approval wait holds no pass (see
//! `docs/design.md`), so a disable never waits for a human.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{OwnedRwLockReadGuard, RwLock as AsyncRwLock};

use crate::store::{StateDb, StoreError};

/// The `key_controls` row that stands for every key.
pub const ALL_KEYS: &str = "*";

/// Proof that a request passed the kill switch; keep it until the response is decided.
pub type Pass = OwnedRwLockReadGuard<()>;

/// The switch shared by every listener and the admin API.
pub struct KillSwitch {
    all: AtomicBool,
    keys: RwLock<HashSet<String>>,
    gate: Arc<AsyncRwLock<()>>,
    /// A file whose presence disables every key (root's emergency stop, no TOTP needed).
    kill_file: Option<PathBuf>,
    state: Option<StateDb>,
}

impl std::fmt::Debug for KillSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (all, keys) = self.status();
        f.debug_struct("KillSwitch")
            .field("all", &all)
            .field("keys", &keys)
            .finish()
    }
}

impl Default for KillSwitch {
    fn default() -> Self {
        KillSwitch {
            all: AtomicBool::new(false),
            keys: RwLock::new(HashSet::new()),
            gate: Arc::new(AsyncRwLock::new(())),
            kill_file: None,
            state: None,
        }
    }
}

impl KillSwitch {
    /// Loads the persisted positions.
    pub fn load(state: StateDb, kill_file: PathBuf) -> Result<KillSwitch, StoreError> {
        let disabled = state.disabled_keys()?;
        let all = disabled.iter().any(|k| k == ALL_KEYS);
        Ok(KillSwitch {
            all: AtomicBool::new(all),
            keys: RwLock::new(disabled.into_iter().filter(|k| k != ALL_KEYS).collect()),
            gate: Arc::new(AsyncRwLock::new(())),
            kill_file: Some(kill_file),
            state: Some(state),
        })
    }

    /// Whether the emergency file is present.
    pub fn kill_file_present(&self) -> bool {
        self.kill_file.as_ref().is_some_and(|f| f.exists())
    }

    /// The emergency file's path, if any.
    pub fn kill_file(&self) -> Option<&PathBuf> {
        self.kill_file.as_ref()
    }

    /// Whether `key` (or, with `None`, every key) is off right now.
    pub fn is_disabled(&self, key: Option<&str>) -> bool {
        if self.all.load(Ordering::SeqCst) || self.kill_file_present() {
            return true;
        }
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        key.is_some_and(|k| keys.contains(k))
    }

    /// Admits a request for `key` unless it is off. The returned pass delays a concurrent
    /// `disable` until the request has finished.
    pub async fn admit(&self, key: Option<&str>) -> Result<Pass, ()> {
        // Checked before the gate too: tokio's lock is write-preferring, so waiting for a read
        // share while a disable drains would queue this request instead of refusing it.
        if self.is_disabled(key) {
            return Err(());
        }
        let pass = self.gate.clone().read_owned().await;
        if self.is_disabled(key) {
            return Err(());
        }
        Ok(pass)
    }

    /// Turns `key` (or every key for [`ALL_KEYS`]) off, persists it, and waits for requests
    /// already admitted to finish. The in-memory switch flips first: a storage failure must
    /// not keep signing on.
    pub async fn disable(&self, key: &str, by: &str) -> Result<(), StoreError> {
        self.switch_off(key);
        let persisted = match &self.state {
            Some(db) => {
                let (db, key, by) = (db.clone(), key.to_owned(), by.to_owned());
                tokio::task::spawn_blocking(move || db.set_key_disabled(&key, true, &by))
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Unavailable(e.to_string())))
            }
            None => Ok(()),
        };
        drop(self.gate.write().await);
        persisted
    }

    /// Turns `key` (or every key) back on. Persisted first: a failed write leaves it off.
    pub fn enable(&self, key: &str, by: &str) -> Result<(), StoreError> {
        if let Some(db) = &self.state {
            db.set_key_disabled(key, false, by)?;
        }
        self.flip(key, false);
        Ok(())
    }

    /// Turns `key` (or every key) off in memory at once, without waiting or persisting: what a
    /// signal handler calls before it hands the (waiting) [`KillSwitch::disable`] to a task.
    pub fn switch_off(&self, key: &str) {
        self.flip(key, true);
    }

    fn flip(&self, key: &str, disabled: bool) {
        if key == ALL_KEYS {
            self.all.store(disabled, Ordering::SeqCst);
            return;
        }
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if disabled {
            keys.insert(key.to_owned());
        } else {
            keys.remove(key);
        }
    }

    /// `(all keys off, individually disabled keys)`.
    pub fn status(&self) -> (bool, Vec<String>) {
        let mut keys: Vec<_> = self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        keys.sort();
        (
            self.all.load(Ordering::SeqCst) || self.kill_file_present(),
            keys,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// Polls `f` once: whether it answers without waiting.
    fn poll_once<F: Future>(f: F) -> Poll<F::Output> {
        pin!(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn requests_arriving_while_a_disable_drains_are_refused_not_queued() {
        let kill = Arc::new(KillSwitch::default());
        let in_flight = kill.admit(Some("a")).await.unwrap();
        let disabling = {
            let kill = kill.clone();
            tokio::spawn(async move { kill.disable(ALL_KEYS, "test").await })
        };
        while !kill.is_disabled(None) {
            tokio::task::yield_now().await;
        }
        // The disable waits for the request in flight; a new one is answered at once.
        assert!(matches!(
            poll_once(kill.admit(Some("b"))),
            Poll::Ready(Err(()))
        ));
        assert!(matches!(poll_once(kill.admit(None)), Poll::Ready(Err(()))));
        assert!(!disabling.is_finished());
        drop(in_flight);
        disabling.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn negative_control_an_enabled_key_waits_behind_a_draining_disable() {
        // Without the check before the gate, any request would queue like this one: the poll
        // above can tell "refused at once" from "queued".
        let kill = Arc::new(KillSwitch::default());
        let in_flight = kill.admit(Some("a")).await.unwrap();
        let disabling = {
            let kill = kill.clone();
            tokio::spawn(async move { kill.disable("a", "test").await })
        };
        while !kill.is_disabled(Some("a")) {
            tokio::task::yield_now().await;
        }
        // Let the disable reach the gate's write side.
        for _ in 0..1_000 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(poll_once(kill.admit(Some("b"))), Poll::Pending));
        assert!(matches!(
            poll_once(kill.admit(Some("a"))),
            Poll::Ready(Err(()))
        ));
        drop(in_flight);
        disabling.await.unwrap().unwrap();
        assert!(kill.admit(Some("b")).await.is_ok());
    }
}
