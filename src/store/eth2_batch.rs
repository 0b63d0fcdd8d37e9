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
        // Ascending key order (stable: requests of one key keep their arrival order).
        batch.sort_by(|a, b| a.0.pubkey().cmp(b.0.pubkey()));
        let outcome = conn.lock().transaction(|t| {
            let mut results = Vec::with_capacity(batch.len());
            for (job, _) in &batch {
                let r = match job {
                    Job::Block { pubkey, slot, root } => block_in(t, pubkey, *slot, root.as_ref()),
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
}
