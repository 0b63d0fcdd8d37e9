//! The single audit writer thread and its handle, with group commit.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::audit::{AuditEntry, AuditReceipt};
use super::bounds::{Admission, AuditLimits, Bounds};
use super::commit::{
    chain_rows, fast_commit, fence_one, insert_rows, lock_head, switched_off, DECLINED,
};
use super::db::{vals, Conn, Dialect};
use super::ledger::StateWrite;
use super::read;
use super::{now_ms, StoreError};

/// Most entries written in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<AuditReceipt, StoreError>>;
pub(super) type Pending = (Box<AuditEntry>, Vec<StateWrite>, Reply);

pub(crate) enum Msg {
    Append(Box<AuditEntry>, Vec<StateWrite>, Reply),
    /// Answered once every message queued before it has been processed.
    Flush(oneshot::Sender<()>),
    /// Drain what is queued before it, then stop; later messages are refused.
    Shutdown(Option<oneshot::Sender<()>>),
}

/// Cheap, cloneable handle to the audit writer. The writer thread exits once every handle (and
/// the [`Store`](super::Store)) is dropped, or on [`AuditLog::shutdown`] / `Store::close`.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    commits: Arc<AtomicU64>,
    bounds: Arc<Bounds>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("commits", &self.commit_count())
            .finish()
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("audit writer stopped".into())
}

impl AuditLog {
    /// Queues `entry` at once (call order is commit order) and resolves after its transaction
    /// is committed with `synchronous=FULL`. On error nothing of the entry was written.
    pub fn append(
        &self,
        entry: AuditEntry,
    ) -> impl Future<Output = Result<AuditReceipt, StoreError>> + Send + 'static {
        self.append_with_state(entry, Vec::new())
    }

    /// Like [`AuditLog::append`], and commits `state` rows in the same transaction: the
    /// conflict-guard state of a signature is durable exactly when its audit row is.
    pub fn append_with_state(
        &self,
        entry: AuditEntry,
        state: Vec<StateWrite>,
    ) -> impl Future<Output = Result<AuditReceipt, StoreError>> + Send + 'static {
        let source = entry.client.clone();
        self.append_bounded(&source, entry, state)
    }

    /// Like [`AuditLog::append`], with the refusal budget of `source` instead of the entry's
    /// `client` (for callers whose `client` field is chosen by the caller, e.g. an admin user
    /// name sent before authentication: the budget is the peer's).
    pub fn append_from(
        &self,
        source: &str,
        entry: AuditEntry,
    ) -> impl Future<Output = Result<AuditReceipt, StoreError>> + Send + 'static {
        self.append_bounded(source, entry, Vec::new())
    }

    /// Sets the audit bounds and the directory whose free space is watched (see [`bounds`]).
    ///
    /// [`bounds`]: super::bounds
    pub fn configure_bounds(&self, limits: AuditLimits, data_dir: Option<std::path::PathBuf>) {
        self.bounds.configure(limits, data_dir);
    }

    /// `(free, floor)` bytes when the data directory is below the disk floor
    /// (`audit.disk_floor`): new work must be refused while audit rows can still be written.
    pub fn below_disk_floor(&self) -> Option<(u64, u64)> {
        self.bounds.disk_floor_now()
    }

    fn append_bounded(
        &self,
        source: &str,
        mut entry: AuditEntry,
        state: Vec<StateWrite>,
    ) -> impl Future<Output = Result<AuditReceipt, StoreError>> + Send + 'static {
        // Rows that carry state (a signature's conflict-guard rows) are never metered.
        let admission = self.bounds.admit(source, &mut entry, state.is_empty());
        let before = match admission {
            Admission::Write(before) => Ok(before),
            // Not written; seq 0 (never a real row) says so. Counted into a summary row.
            Admission::Suppressed => Err(Ok(AuditReceipt {
                seq: 0,
                ts_ms: now_ms(),
                hash: super::GENESIS_HASH,
            })),
            Admission::DiskFloor { free, floor } => Err(Err(StoreError::DiskFloor { free, floor })),
        };
        let sent = before.map(|before| {
            for summary in before {
                // Its reply is not awaited; the writer commits it just before `entry`.
                let (reply, _) = oneshot::channel();
                let _ = self
                    .tx
                    .send(Msg::Append(Box::new(summary), Vec::new(), reply));
            }
            let (reply, rx) = oneshot::channel();
            let sent = self
                .tx
                .send(Msg::Append(Box::new(entry), state, reply))
                .is_ok();
            (sent, rx)
        });
        async move {
            match sent {
                Err(done) => done,
                Ok((false, _)) => Err(stopped()),
                Ok((true, rx)) => rx.await.unwrap_or_else(|_| Err(stopped())),
            }
        }
    }

    /// Resolves once everything appended before this call has been processed (committed or
    /// answered with an error).
    pub fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Flush(reply)).is_ok();
        async move {
            if !sent {
                return Err(stopped());
            }
            rx.await.map_err(|_| stopped())
        }
    }

    /// Stops the writer after it has written everything queued before this call; later appends
    /// fail with [`StoreError::Unavailable`]. Resolves when the final batch is done.
    pub fn shutdown(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Shutdown(Some(reply))).is_ok();
        async move {
            if !sent {
                return Err(stopped());
            }
            rx.await.map_err(|_| stopped())
        }
    }

    /// Number of successful commits (each may carry many entries).
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    pub(crate) fn send_shutdown(&self) -> bool {
        self.tx.send(Msg::Shutdown(None)).is_ok()
    }
}

struct Writer {
    conn: Conn,
    /// The replication tripwire (shared PostgreSQL store only).
    tripwire: Option<Arc<super::tripwire::Tripwire>>,
    /// The connection generation the tripwire last checked.
    checked: u64,
    last_seq: i64,
    head: [u8; 32],
    /// After a failed commit the in-memory head is re-read before the next batch.
    stale: bool,
    commits: Arc<AtomicU64>,
    /// Keeps the SQLite WAL rewinding under load ([`super::checkpoint`]).
    wal: super::checkpoint::WalRestart,
}

/// Starts the writer thread that owns `conn` (already migrated).
pub(crate) fn spawn(
    mut conn: Conn,
    tripwire: Option<Arc<super::tripwire::Tripwire>>,
) -> Result<(AuditLog, std::thread::JoinHandle<()>), StoreError> {
    let (last_seq, head) = conn.with(read::head)?;
    let commits = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let mut writer = Writer {
        conn,
        tripwire,
        checked: 0,
        last_seq,
        head,
        stale: false,
        commits: commits.clone(),
        wal: Default::default(),
    };
    let handle = std::thread::Builder::new()
        .name("keyguard-audit".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| StoreError::Unavailable(format!("cannot start audit writer: {e}")))?;
    Ok((
        AuditLog {
            tx,
            commits,
            bounds: Arc::new(Bounds::default()),
        },
        handle,
    ))
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        // A request taken off the queue while checking it was idle.
        let mut held: Option<Msg> = None;
        while let Some(first) = held.take().or_else(|| rx.recv().ok()) {
            let mut batch: Vec<Pending> = Vec::new();
            let mut flushes = Vec::new();
            let mut shutdown = None;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(e, w, r) => batch.push((e, w, r)),
                    Msg::Flush(r) => flushes.push(r),
                    Msg::Shutdown(r) => {
                        shutdown = Some(r);
                        break;
                    }
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.write_batch(batch);
            }
            for f in flushes {
                let _ = f.send(());
            }
            if shutdown.is_none() {
                if let Conn::Sqlite(conn) = &self.conn {
                    // After the replies: a signature never waits for this checkpoint, only
                    // a request that arrives while it runs.
                    held = rx.try_recv().ok();
                    if self.wal.due(held.is_none()) {
                        self.wal.run(conn);
                    }
                }
            }
            if let Some(ack) = shutdown {
                while let Ok(msg) = rx.try_recv() {
                    refuse(msg);
                }
                tracing::debug!("audit writer stopped");
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
                return;
            }
        }
    }

    fn write_batch(&mut self, #[allow(unused_mut)] mut batch: Vec<Pending>) {
        // FAULT HOOK release-before-audit (test builds only, see src/store/fault.rs).
        #[cfg(feature = "fault-injection")]
        super::fault::release_before_audit(&mut batch);
        match self.commit(&batch) {
            Ok(mut outcomes) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.record_released(&batch, &mut outcomes);
                if let Some(last) = outcomes.iter().rev().find_map(|o| o.as_ref().ok()) {
                    self.last_seq = last.seq;
                    self.head = last.hash;
                }
                for ((_, _, reply), outcome) in batch.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                self.stale = true;
                let msg = format!("audit commit failed: {e}");
                tracing::error!(entries = batch.len(), error = %e, "audit commit failed");
                for (_, _, reply) in batch {
                    let _ = reply.send(Err(match &e {
                        StoreError::CommitUnknown(m) => StoreError::CommitUnknown(m.clone()),
                        _ => StoreError::Unavailable(msg.clone()),
                    }));
                }
            }
        }
    }

    /// Writes the batch in one transaction; dropping it on error rolls back. An entry whose
    /// state rows conflict ([`StoreError::StateConflict`]) is left out alone (its own
    /// savepoint is rolled back): its outcome is that error and the others still commit.
    ///
    /// Two phases. First every entry's safety rows, each fenced in the statement that writes
    /// it; concurrent instances contend only on the rows they share. Then, on PostgreSQL, the
    /// shared audit head row is locked and the audit rows appended after it, so seqs are
    /// consecutive and each row links to the one before it whoever wrote it. A deadlock or
    /// serialization failure between instances retries the whole batch (nothing of it was
    /// committed).
    fn commit(
        &mut self,
        batch: &[Pending],
    ) -> Result<Vec<Result<AuditReceipt, StoreError>>, StoreError> {
        let shared = self.conn.dialect() == Dialect::Postgres;
        if self.stale && !shared {
            (self.last_seq, self.head) = self.conn.with(read::head)?;
            self.stale = false;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_commit(batch, shared) {
                Err(StoreError::Postgres { code, message })
                    if attempt < 4 && (code == "40P01" || code == "40001") =>
                {
                    tracing::warn!(code, message, attempt, "audit commit retried");
                    metrics::counter!("keyguard_store_commit_retries_total").increment(1);
                }
                other => return other,
            }
        }
    }

    /// Appends what the committed batch releases to the tripwire record (fdatasynced) before
    /// any reply; if that fails the signatures are withheld (their rows stay: done, not sent).
    fn record_released(
        &self,
        batch: &[Pending],
        outcomes: &mut [Result<AuditReceipt, StoreError>],
    ) {
        let Some(wire) = &self.tripwire else {
            return;
        };
        let released = batch
            .iter()
            .zip(outcomes.iter())
            .filter(|(_, o)| o.is_ok())
            .flat_map(|((_, writes, _), _)| writes.iter());
        if let Err(e) = wire.record(released) {
            tracing::error!(error = %e, "tripwire record failed; signatures withheld");
            for o in outcomes.iter_mut().filter(|o| o.is_ok()) {
                *o = Err(StoreError::Unavailable(format!(
                    "tripwire record failed: {e}"
                )));
            }
        }
    }

    fn try_commit(
        &mut self,
        batch: &[Pending],
        shared: bool,
    ) -> Result<Vec<Result<AuditReceipt, StoreError>>, StoreError> {
        if let Some(wire) = &self.tripwire {
            // A new session may be another server (failover): compare before any signature.
            self.conn.with(|_| Ok(()))?;
            if self.conn.generation() != self.checked {
                let wire = wire.clone();
                self.conn.with(|t| wire.check(t))?;
                self.checked = self.conn.generation();
            }
        }
        let wire = self.tripwire.clone();
        let ts_ms = now_ms();
        let (last_seq, head) = (self.last_seq, self.head);
        if shared {
            let fast = self.conn.transaction(|tx| {
                match fast_commit(tx, batch, wire.as_deref(), ts_ms, last_seq, &head)? {
                    Some(done) => Ok(done),
                    None => Err(StoreError::Unavailable(DECLINED.into())),
                }
            });
            match fast {
                Ok((outcomes, end)) => {
                    (self.last_seq, self.head) = end;
                    return Ok(outcomes);
                }
                Err(StoreError::Unavailable(m)) if m == DECLINED => {
                    metrics::counter!("keyguard_store_slow_commits_total").increment(1);
                }
                Err(other) => return Err(other),
            }
        }
        let (outcomes, end) = self.conn.transaction(|tx| {
            let off = switched_off(tx, batch)?;
            let mut fenced = Vec::with_capacity(batch.len());
            for (e, writes, _) in batch {
                fenced.push(fence_one(tx, e, writes, wire.as_deref(), &off)?);
            }
            let rows: Vec<&AuditEntry> = batch
                .iter()
                .zip(&fenced)
                .filter(|(_, f)| f.is_ok())
                .map(|((e, _, _), _)| &**e)
                .collect();
            // The rows as they would follow the head this writer last saw; on PostgreSQL the
            // head is advanced by compare-and-set and, if another instance moved it, locked,
            // read and the rows linked again.
            let mut chained = chain_rows(&rows, ts_ms, last_seq, &head)?;
            if shared && !rows.is_empty() {
                let (seq, hash) = chained.last().map_or((last_seq, head), |r| (r.0, r.1));
                let moved = tx
                    .query_opt(
                        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1 AND seq = $3 \
                         AND hash = $4 RETURNING seq",
                        vals![seq, &hash, last_seq, &head],
                    )?
                    .is_none();
                if moved {
                    let (seq0, head0) = lock_head(tx)?;
                    chained = chain_rows(&rows, ts_ms, seq0, &head0)?;
                    let (seq, hash) = chained.last().map_or((seq0, head0), |r| (r.0, r.1));
                    tx.execute(
                        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
                        vals![seq, &hash],
                    )?;
                }
            }
            insert_rows(tx, &chained)?;
            let end = match chained.last() {
                Some(r) => (r.0, r.1),
                None => (last_seq, head),
            };
            let mut receipts = chained.into_iter();
            let outcomes = fenced
                .into_iter()
                .map(|f| match f {
                    Ok(()) => receipts
                        .next()
                        .map(|r| AuditReceipt {
                            seq: r.0,
                            ts_ms,
                            hash: r.1,
                        })
                        .ok_or_else(|| StoreError::Unavailable("receipt missing".into())),
                    Err(conflict) => Err(conflict),
                })
                .collect::<Vec<_>>();
            Ok::<_, StoreError>((outcomes, end))
        })?;
        (self.last_seq, self.head) = end;
        Ok(outcomes)
    }
}

fn refuse(msg: Msg) {
    let closed = || StoreError::Unavailable("store is closed".into());
    match msg {
        Msg::Append(_, _, r) => {
            let _ = r.send(Err(closed()));
        }
        Msg::Flush(r) => {
            let _ = r.send(());
        }
        Msg::Shutdown(Some(r)) => {
            let _ = r.send(());
        }
        Msg::Shutdown(None) => {}
    }
}
