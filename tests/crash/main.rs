//! Crash consistency across protocols: the real keyguard binary under mixed load is killed with
//! SIGKILL at random moments, restarted, and checked after every kill.
//!
//! Load in every run (all at once, on one daemon and one database):
//! - `evm`: three Ethereum clients signing fresh nonces (sometimes re-sending a signed nonce with
//!   another value, which the nonce rule must refuse), one client that runs into a velocity limit,
//!   and one that parks 11 ETH transfers for 2-of-N approval, approves some through the admin
//!   socket and retries them.
//! - `validators`: three validator connections (v0.38 and v0.34 over Unix sockets, v1 over TCP
//!   SecretConnection) racing votes and proposals at the same and earlier steps.
//!
//! After every kill (`check`): `keyguard audit verify` passes; every signature a client received
//! has a signed audit row; no nonce was ever signed for two transactions and no height/round/step
//! for two blocks; the stored watermark is not behind anything released nor behind its earlier
//! value; every signed transaction has its velocity row and the limited destination never got
//! more signatures than its limit; held approvals are still pending (a retry after the restart
//! gets the same approval id); and no approval is consumed without a signed audit row.
//!
//! Negative controls (`fault_*` tests): the same run against the daemon with an injected fault
//! (`KEYGUARD_FAULT`, cargo feature `fault-injection`, see `src/fault.rs` and
//! `docs/testing.md`) must report the violation that fault causes. Every broken promise is a
//! recorded [`report::Violation`], so either outcome can be asserted.
//!
//! `KEYGUARD_CRASH_KILLS` sets the number of kills (default 20, the CI setting); the long mode
//! is `benches/crash_long.sh` (1,000 kills).
#![allow(unreachable_pub)]

#[path = "../common/mod.rs"]
mod common;
#[path = "../control/mod.rs"]
mod control;
#[path = "../mockval/mod.rs"]
mod mockval;

mod check;
mod evm;
mod report;
mod validators;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::Rng;

use common::Daemon;
use mockval::conn::NodeListener;
use mockval::node::Ver;
use report::{Kind, Violation};

/// The chain id of the mock validators.
pub const CHAIN: &str = "crash-chain";

/// One EVM listener and key under a policy with nonce ownership, a per-destination velocity
/// limit and a 2-of-N approval rule; three validator connections for the ed25519 key.
fn config(dir: &Path, validators: &[(String, &str)]) -> String {
    let mut s = format!(
        r#"
{keystore}[admin]
totp_single_use = false
{listener}[[policies]]
name = "crash"
keys = ["dev-secp256k1"]
[policies.evm]
chain_ids = [31337]
to = "any"
max_value = "100 ether"
max_fee_per_gas = "500 gwei"
max_priority_fee_per_gas = "500 gwei"
max_fee_per_blob_gas = "500 gwei"
nonce = {{ allow_replacement = false }}
require_approval = {{ above = "10 ether", approvers = 2, group = "treasury", within = "1h" }}
[[policies.evm.velocity]]
name = "{velocity}"
asset = "tx"
max = "{max}"
window = "24h"
per_destination = true
"#,
        keystore = common::software_keystore(dir, &["secp256k1", "ed25519"]),
        listener = common::OPEN_EVM_LISTENER,
        velocity = evm::VELOCITY_NAME,
        max = evm::VELOCITY_MAX,
    );
    for (i, (addr, protocol)) in validators.iter().enumerate() {
        s.push_str(&format!(
            "\n[[validators]]\nname = \"v{i}\"\nchain_id = \"{CHAIN}\"\nkey = \"dev-ed25519\"\n\
             addr = \"{addr}\"\nprotocol = \"{protocol}\"\nnew_validator = true\n\
             start_height = 1\nretry_max_ms = 100\n"
        ));
    }
    s
}

fn kills() -> usize {
    std::env::var("KEYGUARD_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// What one run did and found.
struct Outcome {
    violations: Vec<Violation>,
    /// Kills that landed while at least one client request was unanswered.
    in_flight_kills: usize,
    evm: evm::EvmBook,
    votes: validators::VoteBook,
}

impl Outcome {
    fn has(&self, kind: Kind) -> bool {
        self.violations.iter().any(|v| v.kind == kind)
    }
}

/// `kills` SIGKILLs under mixed load, with `KEYGUARD_FAULT=fault` when given.
fn run(kills: usize, fault: Option<&str>) -> Outcome {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (a, a_addr) = NodeListener::unix(&dir.path().join("a.sock"));
    let (b, b_addr) = NodeListener::tcp();
    let (c, c_addr) = NodeListener::unix(&dir.path().join("c.sock"));
    let text = config(
        dir.path(),
        &[(a_addr, "v0.38"), (b_addr, "v1"), (c_addr, "v0.34")],
    );
    let nodes = [(&a, Ver::V038), (&b, Ver::V1), (&c, Ver::V034)];
    let socket = dir.path().join("var/admin.sock");
    // Quiet daemon: warnings only, so the harness output stays readable.
    let mut env = vec![("KEYGUARD_LOG", "warn")];
    if let Some(f) = fault {
        env.push(("KEYGUARD_FAULT", f));
    }

    let evm_book = evm::EvmBook::default();
    let vote_book = validators::VoteBook::default();
    let mut checker = check::Checker::new(dir.path());
    let mut approvers = None;
    let mut in_flight_kills = 0;
    for round in 0..kills {
        let mut daemon = Daemon::start(dir.path(), &text, &env);
        if round > 0 {
            checker.after_restart(round - 1, &evm_book);
        }
        let approvers = approvers.get_or_insert_with(|| evm::enrol_approvers(&daemon, &socket));
        let client = evm::Client {
            rpc: daemon.rpc_addr(),
            from: control::address(&daemon),
            socket: socket.clone(),
            approvers: approvers.clone(),
        };
        std::thread::scope(|s| {
            validators::spawn(s, &nodes, &vote_book);
            evm::spawn(s, &client, &evm_book);
            // Debug builds sign a few hundred requests in this time; the moment of the kill is
            // what varies, so every stage of the pipeline gets hit over a run.
            let pause = rand::thread_rng().gen_range(20..250);
            std::thread::sleep(Duration::from_millis(pause));
            let busy = evm_book.in_flight.load(Ordering::SeqCst)
                + vote_book.in_flight.load(Ordering::SeqCst);
            let _ = daemon.child.kill(); // SIGKILL
            let _ = daemon.child.wait();
            if busy > 0 {
                in_flight_kills += 1;
            }
        });
        checker.after_kill(round, &evm_book, &vote_book);
    }
    // One more start, so the last kill's restart is checked too.
    if kills > 0 {
        let daemon = Daemon::start(dir.path(), &text, &env);
        checker.after_restart(kills - 1, &evm_book);
        drop(daemon);
    }
    let per_conn: Vec<usize> = vote_book
        .per_connection
        .iter()
        .map(|n| n.load(Ordering::SeqCst))
        .collect();
    eprintln!(
        "crash{}: {kills} kills in {:.1}s, {in_flight_kills} with requests in flight; released \
         {} EVM and {} CometBFT signatures (per validator connection {per_conn:?}, {} rounds \
         with a connection missing); {}; {}",
        fault.map(|f| format!(" [fault {f}]")).unwrap_or_default(),
        started.elapsed().as_secs_f64(),
        evm_book.received_count(),
        vote_book.received_count(),
        vote_book.missing_connections.load(Ordering::SeqCst),
        checker.stats(),
        evm_book.counts(),
    );
    let mut violations = checker.violations.all();
    violations.extend(evm_book.violations.all());
    violations.extend(vote_book.violations.all());
    Outcome {
        violations,
        in_flight_kills,
        evm: evm_book,
        votes: vote_book,
    }
}

#[test]
fn sigkill_under_mixed_load_keeps_every_promise() {
    let kills = kills();
    let out = run(kills, None);
    let broken: Vec<String> = out
        .violations
        .iter()
        .map(|v| format!("{:?}: {}", v.kind, v.what))
        .collect();
    assert!(broken.is_empty(), "broken promises:\n{}", broken.join("\n"));
    assert!(
        out.evm.received_count() > kills && out.votes.received_count() > kills,
        "too little load to mean anything"
    );
    // Every validator connection (v0.38, v1 SecretConnection, v0.34) must have been signed
    // for: a connection that never came up would otherwise pass as "nothing went wrong".
    for (i, n) in out.votes.per_connection.iter().enumerate() {
        assert!(
            n.load(Ordering::SeqCst) > 0,
            "validator connection {i} never received a signature"
        );
    }
    if kills >= 5 {
        // A kill between a request and its answer is the case the promises are about.
        assert!(
            out.in_flight_kills > 0,
            "no kill landed with a request in flight"
        );
    }
    if kills >= 10 {
        out.evm.assert_every_path_ran();
    }
}

/// Kills for a fault run: enough for the fault to show, few enough to stay quick.
const FAULT_KILLS: usize = 4;

/// Negative control: signatures answered before their audit commit must show up as released
/// without a durable audit row.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection (tests/run sets it)"
)]
fn fault_release_before_audit_is_caught() {
    let out = run(FAULT_KILLS, Some("release-before-audit"));
    assert!(out.has(Kind::Unaudited), "not caught: {:?}", out.violations);
}

/// Negative control: dropped watermark writes must show up as a stored watermark behind what
/// was released.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection (tests/run sets it)"
)]
fn fault_skip_watermark_is_caught() {
    let out = run(FAULT_KILLS, Some("skip-watermark"));
    assert!(
        out.has(Kind::WatermarkBehind),
        "not caught: {:?}",
        out.violations
    );
}

/// Negative control: a watermark stored one height low must show up too (this is the case
/// the step numbering off-by-one hid at the step level).
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs --features fault-injection (tests/run sets it)"
)]
fn fault_watermark_back_is_caught() {
    let out = run(FAULT_KILLS, Some("watermark-back"));
    assert!(
        out.has(Kind::WatermarkBehind),
        "not caught: {:?}",
        out.violations
    );
}

/// CI must build the fault hooks in, or every negative control above is ignored.
#[test]
fn fault_injection_is_compiled_in_under_ci() {
    let ci = std::env::var("CI").unwrap_or_default();
    assert!(
        ci.is_empty() || cfg!(feature = "fault-injection"),
        "CI={ci} but the test build lacks --features fault-injection: the negative controls \
         would not run"
    );
}
