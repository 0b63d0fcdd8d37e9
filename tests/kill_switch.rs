//! The kill switch through the real binary: while SIGUSR1's disable waits for a request in
//! flight, the signal loop keeps serving SIGHUP and SIGTERM, and new signing requests are
//! refused with -32004 at once instead of queueing behind the disable.
//!
//! The request in flight is an `eth_sendTransaction` whose upstream node accepts the connection
//! and never answers: its fill runs inside the pipeline, under the kill-switch pass.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{config, rpc, Daemon};
use rustix::process::Signal;
use serde_json::json;

/// A "node" that accepts connections, reads, and never answers (until the test ends).
fn silent_node() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().map_while(Result::ok) {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut s = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
            held.push(stream);
        }
    });
    (format!("http://{addr}"), accepted)
}

#[test]
fn signals_and_new_requests_are_served_while_a_disable_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (url, accepted) = silent_node();
    let text = format!(
        "{}\n[listeners.upstream]\nurl = \"{url}\"\n",
        config(dir.path(), "")
    );
    let daemon = Daemon::start(dir.path(), &text, &[]);
    let addr = daemon.rpc_addr();
    let from = rpc(&addr, "eth_accounts", json!([]))["result"][0]
        .as_str()
        .unwrap()
        .to_owned();

    // Negative control first: with the switch on, a plain signing request is not refused.
    let tx = json!([{"from": from, "to": from, "gas": "0x5208", "nonce": "0x0",
        "chainId": "0x7a69", "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x1"}]);
    let before = rpc(&addr, "eth_signTransaction", tx.clone());
    assert!(before.get("result").is_some(), "{before}");

    // A request in flight: admitted, holding its pass, waiting on the silent node.
    let stuck = {
        let (addr, from) = (addr.clone(), from.clone());
        std::thread::spawn(move || {
            rpc(
                &addr,
                "eth_sendTransaction",
                json!([{"from": from, "to": from, "value": "0x1"}]),
            )
        })
    };
    while accepted.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }

    daemon.signal(Signal::USR1);
    // The switch is off once the signal loop says so (signals are handled asynchronously).
    daemon.wait_line("keyguard: SIGUSR1");
    // Refused at once while the disable drains (a queued request would block this call until
    // the stuck one ended, and its answer would come after the "all keys disabled" line).
    let during = rpc(&addr, "eth_signTransaction", tx);
    assert_eq!(during["error"]["code"], -32004, "{during}");

    daemon.signal(Signal::HUP);
    let mut seen = Vec::new();
    loop {
        let line = daemon.wait_line("keyguard: ");
        let done = line.starts_with("keyguard: reloaded");
        seen.push(line);
        if done {
            break;
        }
    }
    // SIGHUP was served while the disable still waited for the stuck request: the drain's
    // completion line has not been printed yet.
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("keyguard: all keys disabled")),
        "SIGHUP waited for the disable: {seen:?}"
    );

    // SIGTERM is served too; the daemon finishes the stuck request (the node times out) and
    // stops cleanly.
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    let answer = stuck.join().unwrap();
    assert!(answer.get("error").is_some(), "{answer}");
}
