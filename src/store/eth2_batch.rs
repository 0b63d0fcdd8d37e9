//! Group commit for eth2 slashing records: signings queued while one transaction commits are
//! checked and recorded together in the next, so one fsync (SQLite `synchronous=FULL`) or one
//! PostgreSQL commit serves many validators. Each request is still its own conditional
//! statement (`eth2_slashing::block_in` / `attestation_in`) run in queue order inside the
//! transaction, so two conflicting requests in one batch see each other; and nothing is
//! answered before the commit. A database error fails the whole batch (nothing recorded,
//! nothing signed). Within a batch, keys are locked in ascending order, so instances sharing
//! PostgreSQL cannot deadlock on each other's batches.

use std::sync::mpsc;
use std::sync::{Arc, Weak};

use super::db::Shared;
use super::eth2_slashing::{attestation_in, block_in, Checks, Recorded, SlashingError};
use super::StoreError;

/// The largest batch one transaction takes.
const MAX_BATCH: usize = 512;

/// One queued signing.
pub(crate) enum Job {
    Block {
        pubkey: [u8; 48],
        slot: u64,
        root: Option<[u8; 32]>,
        checks: Checks,
    },
    Attestation {
        pubkey: [u8; 48],
        source: u64,
        target: u64,
        root: Option<[u8; 32]>,
        checks: Checks,
    },
}

impl Job {
    fn pubkey(&self) -> &[u8; 48] {
        match self {
            Job::Block { pubkey, .. } | Job::Attestation { pubkey, .. } => pubkey,
        }
    }
}

type Reply = mpsc::SyncSender<Result<Recorded, SlashingError>>;

/// The queue to the batch writer thread.
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<(Job, Reply)>,
}

impl Batcher {
    /// Starts the writer thread on `conn`; it ends when every handle is dropped. The thread
    /// holds the connection only weakly, so the connection closes with the store's handles
    /// (a closed `Store` leaves no SQLite connection open behind it).
    pub(crate) fn spawn(conn: &Arc<Shared>) -> Batcher {
        let (tx, rx) = mpsc::channel::<(Job, Reply)>();
        let conn = Arc::downgrade(conn);
        std::thread::Builder::new()
            .name("eth2-slashing".into())
            .spawn(move || run(&conn, &rx))
            .expect("spawning the eth2 slashing writer");
        Batcher { tx }
    }

    /// Queues `job` and waits for its committed outcome (blocking).
    pub(crate) fn submit(&self, job: Job) -> Result<Recorded, SlashingError> {
        let (reply, wait) = mpsc::sync_channel(1);
        let stopped = || {
            SlashingError::Store(StoreError::Unavailable(
                "eth2 slashing writer stopped".into(),
            ))
        };
        self.tx.send((job, reply)).map_err(|_| stopped())?;
        wait.recv().map_err(|_| stopped())?
    }
}

fn run(conn: &Weak<Shared>, rx: &mpsc::Receiver<(Job, Reply)>) {
    while let Ok(first) = rx.recv() {
        // A job was sent, so a handle (and with it the connection) is alive.
        let Some(conn) = conn.upgrade() else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        commit(&conn, batch);
    }
}

/// Checks and records one batch in one transaction, in ascending key order, and answers each
/// job after the commit (or every job with the error).
fn commit(conn: &Shared, mut batch: Vec<(Job, Reply)>) {
    // Ascending key order (stable: requests of one key keep their arrival order).
    batch.sort_by(|a, b| a.0.pubkey().cmp(b.0.pubkey()));
    let outcome = conn.lock().transaction(|t| {
        let mut results = Vec::with_capacity(batch.len());
        for (job, _) in &batch {
            let r = match job {
                Job::Block {
                    pubkey,
                    slot,
                    root,
                    checks,
                } => block_in(t, pubkey, *slot, root.as_ref(), *checks),
                Job::Attestation {
                    pubkey,
                    source,
                    target,
                    root,
                    checks,
                } => attestation_in(t, pubkey, *source, *target, root.as_ref(), *checks),
            };
            match r {
                Err(SlashingError::Store(e)) => return Err(e),
                other => results.push(other),
            }
        }
        Ok::<_, StoreError>(results)
    });
    match outcome {
        Ok(results) => {
            for ((_, reply), r) in batch.into_iter().zip(results) {
                let _ = reply.send(r);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(SlashingError::Store(StoreError::Unavailable(
                    msg.clone(),
                ))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// One batch holding conflicting duties of two keys among 64 other keys' attestations:
    /// eight attestations of key A that all surround one another, and eight double votes of key
    /// B (one target, eight roots). Returns how many of A's and B's were recorded, and whether
    /// all the others were.
    fn one_batch(checks: Checks) -> (usize, usize, bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kg.db")).unwrap();
        let slashing = store.eth2_slashing();
        let (a, b) = ([0xaa; 48], [0xbb; 48]);
        let mut batch = Vec::new();
        let mut waits = Vec::new();
        for i in 0..64u64 {
            let mut others = [0u8; 48];
            others[..8].copy_from_slice(&i.to_be_bytes());
            let jobs = [
                Job::Attestation {
                    pubkey: a,
                    source: 10 - i % 8,
                    target: 20 + i % 8,
                    root: Some([i as u8; 32]),
                    checks,
                },
                Job::Attestation {
                    pubkey: b,
                    source: 1,
                    target: 2,
                    root: Some([i as u8; 32]),
                    checks,
                },
                Job::Attestation {
                    pubkey: others,
                    source: 1,
                    target: 2,
                    root: Some([1; 32]),
                    checks,
                },
            ];
            for (k, job) in jobs.into_iter().enumerate() {
                if k < 2 && i >= 8 {
                    continue;
                }
                let (reply, wait) = mpsc::sync_channel(1);
                batch.push((job, reply));
                waits.push((k, wait));
            }
        }
        commit(slashing.shared(), batch);
        let mut recorded = [0usize; 3];
        for (k, w) in waits {
            if w.recv().unwrap().is_ok() {
                recorded[k] += 1;
            }
        }
        drop(slashing);
        store.close().unwrap();
        (recorded[0], recorded[1], recorded[2] == 64)
    }

    #[test]
    fn conflicts_inside_one_batch_record_at_most_one() {
        assert_eq!(one_batch(Checks::ALL), (1, 1, true));
    }

    #[test]
    fn conflicts_inside_one_batch_negative_control_without_surround_check() {
        let (a, b, others) = one_batch(Checks {
            surround: false,
            ..Checks::ALL
        });
        assert!(a > 1, "the batch test cannot see a missing surround check");
        assert_eq!((b, others), (1, true));
    }
}
