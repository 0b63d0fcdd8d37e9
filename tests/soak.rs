//! `keyguard bench soak` against the real daemon, shortened: a paced run with intended policy
//! refusals passes and reports RSS from /proc; a run the daemon cannot serve as asked (a rate
//! limit below the offered rate) fails and names the errors by kind.
//!
//! The passing run turns the throughput and memory thresholds off (`--min-interval-ratio 0`,
//! a growth bound no run reaches): whether a loaded debug build keeps 36 req/s per interval is
//! a measurement for `benches/soak.sh` on a release build, not a test verdict.

mod common;

use std::process::Command;

use common::Daemon;

fn soak(daemon: &Daemon, extra: &[&str]) -> (bool, String) {
    let out = Command::new(common::binary())
        .args(["bench", "soak", "--url"])
        .arg(format!("http://{}", daemon.rpc_addr()))
        .args(["--pid", &daemon.child.id().to_string()])
        .args(["--minutes", "0.1", "--interval", "2", "--connections", "4"])
        .args(extra)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_steady_paced_run_passes_with_intended_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &common::config(dir.path(), ""),
        &[("KEYGUARD_LOG", "warn")],
    );
    let (ok, text) = soak(
        &daemon,
        &[
            "--rate",
            "40",
            "--refuse-every",
            "10",
            "--min-interval-ratio",
            "0",
            "--max-rss-growth-mib",
            "100000",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("soak: OK"), "{text}");
    assert!(text.contains("errors by kind: {}"), "{text}");
    let refused: u64 = text
        .split(" refused by policy")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refusal count: {text}"));
    assert!(refused > 0, "{text}");
    assert!(text.contains("RSS before"), "{text}");
}

#[test]
fn errors_other_than_intended_refusals_fail_the_soak() {
    let dir = tempfile::tempdir().unwrap();
    let limits = "[rate_limits]\nper_client = { per_second = 5, burst = 5 }\n";
    let daemon = Daemon::start(
        dir.path(),
        &common::config(dir.path(), limits),
        &[("KEYGUARD_LOG", "warn")],
    );
    let (ok, text) = soak(&daemon, &["--rate", "40"]);
    assert!(!ok, "{text}");
    assert!(text.contains("soak failed"), "{text}");
    assert!(
        text.contains("rpc -32003"),
        "rate-limit errors by kind: {text}"
    );
    assert!(
        text.contains("is below"),
        "unsteady intervals reported: {text}"
    );
}
