//! End-to-end tests of the CometBFT remote signer: the real keyguard binary dials mock
//! validator nodes over Unix sockets and TCP SecretConnection.
//!
//! - `versions`: full heights, round changes, conflicts, timestamp-only repeats and vote
//!   extensions on every wire version, with the consensus key in the software keystore and
//!   on a SoftHSM2 token (PKCS#11).
//! - `concurrency`: 32 sentries racing conflicting same-step requests.
//! - `ha`: two instances sharing PostgreSQL, sentries on both racing the same steps.
//! - `state`: refusing a chain with no state, importing and exporting priv_validator_state.json.
//! - `crash`: SIGKILL at random moments under signing load (`KEYGUARD_CRASH_KILLS` sets how
//!   many; the reliability harness runs 200+).
//! - `bench` (ignored): vote-signing latency, p50/p99 over 10,000 sequential votes.

#![allow(unreachable_pub)]

mod bench;
mod concurrency;
mod crash;
mod ha;
mod harness;
// The mock validator is shared with the cross-protocol crash harness (tests/crash).
#[path = "../mockval/mod.rs"]
mod mockval;
#[path = "../support/pg/mod.rs"]
mod pg;
#[path = "../support/softhsm.rs"]
mod softhsm;
mod state;
mod versions;

use mockval::node;
