//! The single audit writer thread and its handle, with group commit.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::audit::{AuditEntry, AuditReceipt, RowFields};
use super::bounds::{Admission, AuditLimits, Bounds};
use super::ledger::{self, StateWrite};
use super::read;
use super::{now_ms, StoreError};

/// Most entries written in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<AuditReceipt, StoreError>>;
type Pending = (Box<AuditEntry>, Vec<StateWrite>, Reply);

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
        self.bounds.disk_floor()
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
    conn: Connection,
    last_seq: i64,
    head: [u8; 32],
    /// After a failed commit the in-memory head is re-read before the next batch.
    stale: bool,
    commits: Arc<AtomicU64>,
}

/// Starts the writer thread that owns `conn` (already migrated).
pub(crate) fn spawn(
    conn: Connection,
) -> Result<(AuditLog, std::thread::JoinHandle<()>), StoreError> {
    let (last_seq, head) = read::head(&conn)?;
    let commits = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let mut writer = Writer {
        conn,
        last_seq,
        head,
        stale: false,
        commits: commits.clone(),
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
        while let Ok(first) = rx.recv() {
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
            Ok(outcomes) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
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
                    let _ = reply.send(Err(StoreError::Unavailable(msg.clone())));
                }
            }
        }
    }

    /// Writes the batch in one IMMEDIATE transaction; dropping it on error rolls back. An entry
    /// whose state rows conflict ([`StoreError::StateConflict`]) is left out alone: its outcome
    /// is that error and the others still commit.
    fn commit(
        &mut self,
        batch: &[Pending],
    ) -> Result<Vec<Result<AuditReceipt, StoreError>>, StoreError> {
        if self.stale {
            (self.last_seq, self.head) = read::head(&self.conn)?;
            self.stale = false;
        }
        let ts_ms = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO audit_log (seq, ts_ms, request_id, client, key_id, chain, method, \
                 summary, decision, rule, reason, tx_hash, prev_hash, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            let (mut seq, mut prev) = (self.last_seq, self.head);
            for (e, writes, _) in batch {
                // Only a watermark can conflict, and it is checked before it writes: written
                // first, a conflicting entry leaves nothing behind.
                let ordered = writes
                    .iter()
                    .filter(|w| matches!(w, StateWrite::Watermark { .. }))
                    .chain(
                        writes
                            .iter()
                            .filter(|w| !matches!(w, StateWrite::Watermark { .. })),
                    );
                let mut conflict = None;
                for w in ordered {
                    match ledger::write(&tx, &e.request_id, w) {
                        Ok(()) => {}
                        Err(StoreError::StateConflict(c)) => {
                            conflict = Some(c);
                            break;
                        }
                        Err(other) => return Err(other),
                    }
                }
                if let Some(c) = conflict {
                    outcomes.push(Err(StoreError::StateConflict(c)));
                    continue;
                }
                seq += 1;
                let summary = serde_json::to_string(&e.summary)
                    .map_err(|err| StoreError::Unavailable(format!("summary: {err}")))?;
                let fields = RowFields {
                    seq,
                    ts_ms,
                    request_id: &e.request_id,
                    client: &e.client,
                    key_id: e.key_id.as_deref(),
                    chain: e.chain.as_deref(),
                    method: &e.method,
                    summary: &summary,
                    decision: e.decision.as_str(),
                    rule: e.rule.as_deref(),
                    reason: e.reason.as_deref(),
                    tx_hash: e.tx_hash.as_deref(),
                };
                let hash = fields.hash(&prev);
                stmt.execute(params![
                    seq,
                    ts_ms,
                    fields.request_id,
                    fields.client,
                    fields.key_id,
                    fields.chain,
                    fields.method,
                    fields.summary,
                    fields.decision,
                    fields.rule,
                    fields.reason,
                    fields.tx_hash,
                    &prev[..],
                    &hash[..],
                ])?;
                outcomes.push(Ok(AuditReceipt { seq, ts_ms, hash }));
                prev = hash;
            }
        }
        tx.commit()?;
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
