//! Test-only fault injection (cargo feature `fault-injection`, debug builds only): breaks one
//! safety promise on purpose so the tests that guard it can be shown to fail.
//!
//! `KEYGUARD_FAULT` selects the fault, read once; an unknown value aborts (a typo must not
//! run the tests against a healthy daemon and call that a negative control):
//! - `release-before-audit`: the audit writer answers signed rows, then waits before their
//!   commit (hook `FAULT HOOK release-before-audit` in `store/writer.rs`), so a kill in between
//!   leaves a released signature without a durable audit row.
//! - `skip-watermark`: CometBFT watermark writes are dropped (hook `FAULT HOOK watermark` in
//!   `store/watermarks.rs`); the daemon's in-memory state still advances, a restart forgets it.
//! - `watermark-back`: watermark writes store one height below what was signed.
//! - `split-fence`: CometBFT watermarks and EVM nonces are checked in one statement and written
//!   in another, [`SPLIT_GAP`] apart (the check-then-write race of GHSA-6wxf-7784-62fp);
//!   instances sharing PostgreSQL then both sign the same height or nonce.
//! - `eth2-no-surround`: eth2 slashing protection skips its surround-vote check
//!   (`store/eth2_slashing.rs`), so surrounding attestations are signed.
//! - `eth2-no-block-proofs`: the eth2 block rules skip the Merkle check of Nimbus's proofs
//!   (`guard/eth2_blocks.rs`): any branch counts as proving the first allowed value.
//!
//! The feature is never in a release build (`compile_error!` below) and off by default;
//! `tests/run` turns it on for the one debug build that `cargo test` and the interop suite
//! share. See `docs/testing.md`.

#[cfg(not(debug_assertions))]
compile_error!("the fault-injection feature is for debug test builds only");

use std::sync::OnceLock;
use std::time::Duration;

use keyguard_cometbft::SignedState;

use super::{AuditEntry, AuditReceipt, Decision, StoreError};

type Reply = tokio::sync::oneshot::Sender<Result<AuditReceipt, StoreError>>;

/// The faults [`active`] can return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Signed rows are answered before their audit commit.
    ReleaseBeforeAudit,
    /// Watermark writes are skipped.
    SkipWatermark,
    /// Watermark writes store a lower height than the one signed.
    WatermarkBack,
    /// Safety rows are checked and written in two statements.
    SplitFence,
    /// Eth2 slashing protection skips the surround-vote check.
    Eth2NoSurround,
    /// The PostgreSQL store runs without the replication tripwire (no `released.log`).
    NoTripwire,
    /// Eth2 block rules accept Nimbus proofs without checking the branches.
    Eth2NoBlockProofs,
}

/// The pause between the split check and its write, wide enough for a concurrent instance.
pub const SPLIT_GAP: Duration = Duration::from_millis(30);

/// How long the writer holds a batch of already-answered signed rows before committing it:
/// long enough that a kill at a random moment usually lands inside the window.
pub const RELEASE_WINDOW: Duration = Duration::from_millis(150);

/// The fault selected by `KEYGUARD_FAULT`, if any.
pub fn active() -> Option<Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    *FAULT.get_or_init(|| {
        let v = std::env::var("KEYGUARD_FAULT").ok()?;
        let f = match v.as_str() {
            "" => return None,
            "release-before-audit" => Fault::ReleaseBeforeAudit,
            "skip-watermark" => Fault::SkipWatermark,
            "watermark-back" => Fault::WatermarkBack,
            "split-fence" => Fault::SplitFence,
            "eth2-no-surround" => Fault::Eth2NoSurround,
            "no-tripwire" => Fault::NoTripwire,
            "eth2-no-block-proofs" => Fault::Eth2NoBlockProofs,
            other => {
                eprintln!("keyguard: unknown KEYGUARD_FAULT {other:?}");
                std::process::abort();
            }
        };
        eprintln!("keyguard: FAULT INJECTION ACTIVE: {v}");
        Some(f)
    })
}

/// Whether `fault` is the active one.
pub fn is(fault: Fault) -> bool {
    active() == Some(fault)
}

/// The watermark fault for a write of `next`: `None` when no watermark fault is active, else
/// what to store instead of `next` without the usual checks (`Some(None)`: nothing).
pub fn watermark(next: &SignedState) -> Option<Option<SignedState>> {
    match active()? {
        Fault::SkipWatermark => Some(None),
        Fault::WatermarkBack => Some(Some(SignedState {
            height: (next.height - 1).max(0),
            ..next.clone()
        })),
        Fault::ReleaseBeforeAudit
        | Fault::SplitFence
        | Fault::Eth2NoSurround
        | Fault::NoTripwire
        | Fault::Eth2NoBlockProofs => None,
    }
}

/// Answers the signed entries of `batch` at once, then sleeps [`RELEASE_WINDOW`]: the caller
/// commits afterwards, so the signatures leave before their rows are durable. Each answered
/// entry gets a fresh reply channel whose outcome nobody reads.
pub(crate) fn release_before_audit<W>(batch: &mut [(Box<AuditEntry>, W, Reply)]) {
    if !is(Fault::ReleaseBeforeAudit) {
        return;
    }
    let mut answered = false;
    for (entry, _, reply) in batch.iter_mut() {
        if entry.decision != Decision::Signed {
            continue;
        }
        let (fresh, _) = tokio::sync::oneshot::channel();
        let early = std::mem::replace(reply, fresh);
        let _ = early.send(Ok(AuditReceipt {
            seq: 0,
            ts_ms: 0,
            hash: [0; 32],
        }));
        answered = true;
    }
    if answered {
        std::thread::sleep(RELEASE_WINDOW);
    }
}
