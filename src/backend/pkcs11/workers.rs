//! Dedicated signing threads, one per configured session.
//!
//! The token is the bottleneck, so a session must never sit idle while requests wait. With a
//! permit + `spawn_blocking` hand-off, the next request's `C_Sign` could start only after the
//! async runtime had polled its waiting task and handed a closure to the blocking pool: on a
//! busy 2-core host that gap cost a third of the token's throughput. Here each thread takes
//! the next job from the queue the moment its `C_Sign` returns, and does nothing else: the
//! raw signature is checked (low S, recovery id) by the caller, off the token's thread.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use cryptoki::error::{Error as CkError, RvError};
use keyguard_chain::{KeyId, SigningPayload};
use tokio::sync::oneshot;

use super::{brief, is_request_error, Shared, State};
use crate::backend::BackendError;

/// Jobs that may wait per session before new requests are refused at once: a hung token
/// must not queue unbounded work behind it.
const QUEUE_PER_SESSION: usize = 64;

/// Nice value each signing thread asks for. A token library that signs on the host CPU
/// (SoftHSM2, some cloud HSM clients) competes with keyguard's own request path for the same
/// cores; measured on 2 cores, the token thread lost 13 % of its time to tokio workers and the
/// audit writer at equal priority and 4-7 % at -10. Lowering the nice value needs
/// `CAP_SYS_NICE`; without it the threads keep the default and say so once.
const SIGNING_NICE: i32 = -10;

/// One `C_Sign` to do.
pub(super) struct Job {
    pub(super) key: KeyId,
    pub(super) payload: SigningPayload,
    /// Past this the caller has given up: the job is dropped unsigned.
    pub(super) deadline: Instant,
    pub(super) reply: oneshot::Sender<Result<Vec<u8>, BackendError>>,
}

/// The queue and its threads; dropping it stops and joins them.
pub(super) struct Workers {
    queue: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

fn unavailable(reason: impl Into<String>) -> BackendError {
    BackendError::Unavailable {
        backend: "pkcs11",
        reason: reason.into(),
    }
}

impl Workers {
    pub(super) fn start(shared: &Arc<Shared>) -> std::io::Result<Workers> {
        let (queue, jobs) = mpsc::sync_channel(shared.sessions * QUEUE_PER_SESSION);
        let jobs = Arc::new(Mutex::new(jobs));
        let threads = (0..shared.sessions)
            .map(|i| {
                let (shared, jobs) = (shared.clone(), jobs.clone());
                std::thread::Builder::new()
                    .name(format!("pkcs11-sign-{i}"))
                    .spawn(move || run(&shared, &jobs, i))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Workers {
            queue: Some(queue),
            threads,
        })
    }

    /// Queues `job`, or refuses it at once when every slot of the queue is taken.
    pub(super) fn submit(&self, job: Job) -> Result<(), BackendError> {
        let queue = self.queue.as_ref().ok_or_else(|| unavailable("closed"))?;
        queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => unavailable(
                "the token's signing queue is full (the token is slower than the request rate)",
            ),
            TrySendError::Disconnected(_) => unavailable("closed"),
        })
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Closing the queue ends each thread after its current job.
        self.queue = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Gives the calling thread (Linux nice values are per thread) priority over the request path.
fn raise_priority(index: usize) {
    match rustix::process::setpriority_process(None, SIGNING_NICE) {
        Ok(()) => tracing::debug!(
            thread = index,
            nice = SIGNING_NICE,
            "pkcs11: signing thread priority raised"
        ),
        Err(e) if index == 0 => tracing::info!(
            error = %e,
            "pkcs11: signing threads keep the default priority (raising it needs CAP_SYS_NICE)"
        ),
        Err(_) => {}
    }
}

fn run(shared: &Shared, jobs: &Mutex<Receiver<Job>>, index: usize) {
    raise_priority(index);
    loop {
        let job = {
            let jobs = jobs.lock().unwrap_or_else(PoisonError::into_inner);
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if job.reply.is_closed() || Instant::now() > job.deadline {
            continue;
        }
        let outcome = sign_one(shared, &job.key, &job.payload);
        let _ = job.reply.send(outcome);
    }
}

/// One `C_Sign` on the current connection, with one re-login on `CKR_USER_NOT_LOGGED_IN`; a
/// token or library failure marks the connection broken for the recovery thread.
fn sign_one(
    shared: &Shared,
    key: &KeyId,
    payload: &SigningPayload,
) -> Result<Vec<u8>, BackendError> {
    let conn = match &*shared.state() {
        State::Ready(conn) => conn.clone(),
        State::Broken { reason, .. } => return Err(unavailable(reason.clone())),
        State::Closed => return Err(unavailable("closed")),
    };
    let mut raw = conn.sign_raw(key, payload);
    if let Err(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) = raw {
        // The token dropped our login (its own reset, another process logging out): log in
        // again on the long-lived session and retry once.
        shared
            .counters
            .relogins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::metrics::pkcs11_event("relogin");
        tracing::warn!("pkcs11: token reports the user is not logged in; logging in again");
        match conn.relogin(&shared.settings.pin, &shared.settings.token_label) {
            Ok(()) => raw = conn.sign_raw(key, payload),
            Err(e) => {
                shared.mark_broken(&conn, e.to_string());
                return Err(unavailable(e.to_string()));
            }
        }
    }
    raw.map_err(|e| {
        let reason = format!("C_Sign with {key}: {}", brief(&e));
        if !is_request_error(&e) {
            shared.mark_broken(&conn, reason.clone());
        }
        unavailable(reason)
    })
}
