//! WAL checkpoints off the signing path.
//!
//! SQLite's automatic checkpoint runs inside whichever commit pushes the WAL past 1,000 pages:
//! that one commit copies the pages into the database file and fsyncs it, so one signature in a
//! few hundred waited milliseconds instead of a fraction of one (the p99 of vote signing). The
//! hot connections turn it off and this thread checkpoints PASSIVE-ly (never waiting for, nor
//! blocking, the writer or readers) on a timer.
//!
//! That alone never lets the WAL restart under steady load: SQLite rewinds the log only when a
//! write transaction starts with every frame already copied, and with a commit every half
//! millisecond the timer's checkpoint never ends on an idle log. The WAL then grows without
//! bound (100 MB a minute in the vote benchmark), and every commit appends past the end of the
//! file, so each `fdatasync` also writes the inode and allocation metadata. [`WalRestart`] has
//! the writer itself finish the copy between batches, when the timer has done most of it: the
//! next commit rewinds the log and overwrites blocks the file already has.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::StoreError;

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(250);

/// Batches after which the writer finishes a checkpoint itself, when nothing is queued.
const RESTART_AFTER: u32 = 256;
/// Batches after which it does so even with requests queued (bounds the WAL under saturation).
const RESTART_FORCED: u32 = 4096;

/// The writer's side: counts batches since the log last rewound and says when to finish a
/// checkpoint so that the next commit rewinds it.
#[derive(Default)]
pub(crate) struct WalRestart {
    batches: u32,
}

impl WalRestart {
    /// Whether the writer should checkpoint now; `idle` when no request is queued.
    pub(crate) fn due(&mut self, idle: bool) -> bool {
        self.batches = self.batches.saturating_add(1);
        self.batches >= RESTART_FORCED || (idle && self.batches >= RESTART_AFTER)
    }

    /// A PASSIVE checkpoint on the writer's connection. With no other writer it copies every
    /// frame left (readers hold no snapshot between requests), so the next commit rewinds
    /// the log. Another checkpoint running (the timer's) only defers it.
    pub(crate) fn run(&mut self, conn: &Connection) {
        let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match r {
            Ok((0, log, copied)) if log == copied => self.batches = 0,
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "writer checkpoint deferred"),
        }
    }
}

/// The checkpoint thread; stopped and joined on drop.
pub(crate) struct Checkpointer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Turns SQLite's in-commit automatic checkpoint off for `conn`.
pub(crate) fn disable_auto(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "wal_autocheckpoint", 0)
}

impl Checkpointer {
    pub(crate) fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        super::configure(&conn)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("keyguard-checkpoint".into())
            .spawn(move || loop {
                match stopped.recv_timeout(INTERVAL) {
                    Err(RecvTimeoutError::Timeout) => {
                        let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
                        }
                    }
                    _ => return,
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start checkpointer: {e}")))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_len(path: &Path) -> u64 {
        std::fs::metadata(path.with_extension("db-wal"))
            .unwrap()
            .len()
    }

    /// `n` one-row commits on a connection that never checkpoints by itself.
    fn commits(conn: &Connection, n: usize) {
        for i in 0..n {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [i as i64])
                .unwrap();
        }
    }

    fn open(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        disable_auto(&conn).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
            .unwrap();
        conn
    }

    /// The writer's own checkpoint makes the next commit rewind the log: the file does not
    /// grow. Control: the same commits without it append past the end.
    #[test]
    fn writer_checkpoint_rewinds_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let (fixed, control) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let (a, b) = (open(&fixed), open(&control));
        commits(&a, 300);
        commits(&b, 300);
        let (a1, b1) = (wal_len(&fixed), wal_len(&control));
        assert_eq!(a1, b1);
        let mut restart = WalRestart::default();
        restart.run(&a);
        assert_eq!(restart.batches, 0, "the checkpoint copied every frame");
        commits(&a, 300);
        commits(&b, 300);
        // Rewound and overwritten (a commit may touch one page more than its twin did).
        assert!(wal_len(&fixed) < a1 * 11 / 10, "the log was not rewound");
        assert!(
            wal_len(&control) > b1 * 19 / 10,
            "control: the log only grows"
        );
    }

    #[test]
    fn due_when_idle_after_enough_batches_or_always_after_many() {
        let mut r = WalRestart::default();
        assert!(!(0..RESTART_AFTER - 1).any(|_| r.due(true)));
        assert!(r.due(true));
        let mut r = WalRestart::default();
        assert!(!(0..RESTART_FORCED - 1).any(|_| r.due(false)));
        assert!(r.due(false));
    }
}
