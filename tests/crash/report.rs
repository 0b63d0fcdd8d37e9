//! What a run found. Every broken promise is recorded as a [`Violation`] instead of a panic, so
//! one run can be judged either way: the healthy run must record none, and a run against a
//! daemon with an injected fault (`KEYGUARD_FAULT`, see `src/fault.rs`) must record the kind
//! that fault breaks — the negative control that shows the checker can fail.

use std::sync::Mutex;

/// The promise a violation broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `keyguard audit verify` failed or the log shrank.
    AuditChain,
    /// A client received a signature that has no durable signed audit row.
    Unaudited,
    /// One nonce released for two transactions (in the audit log or to clients).
    NonceConflict,
    /// Two blocks released for one height/round/step.
    DoubleSign,
    /// The durable watermark is behind a released signature.
    WatermarkBehind,
    /// The durable watermark moved backwards between two kills.
    WatermarkBackwards,
    /// A velocity limit undercounted or was exceeded.
    Velocity,
    /// A held or approved request lost its approval state.
    Approval,
    /// keyguard answered something no promise allows (an unexpected error code).
    Unexpected,
}

/// One broken promise.
#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: Kind,
    pub what: String,
}

/// Violations recorded by the load threads and the checker.
#[derive(Default)]
pub struct Violations(Mutex<Vec<Violation>>);

impl Violations {
    pub fn record(&self, kind: Kind, what: String) {
        eprintln!("crash: VIOLATION {kind:?}: {what}");
        self.0.lock().unwrap().push(Violation { kind, what });
    }

    /// Records a violation unless `ok`; returns `ok`.
    pub fn check(&self, ok: bool, kind: Kind, what: impl FnOnce() -> String) -> bool {
        if !ok {
            self.record(kind, what());
        }
        ok
    }

    pub fn all(&self) -> Vec<Violation> {
        self.0.lock().unwrap().clone()
    }
}
