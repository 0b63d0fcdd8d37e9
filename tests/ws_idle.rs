//! Memory under many idle WebSocket clients: 1,000 idle connections to the signing listener
//! (as a fleet of wallets or sequencers that connect once and sign rarely) plus signing load
//! through one more connection: every signature arrives and every idle connection is still
//! served. The daemon's peak resident memory is reported; the 64 MiB bound is asserted only when
//! `KEYGUARD_WS_IDLE_LIMIT_MIB` is set (`benches/ws_idle.sh`, on a release build): what a debug
//! build holds is not the product's figure.
//!
//! When it may, the test lifts RLIMIT_MEMLOCK first, so the daemon does what it does under the
//! systemd unit (`LimitMEMLOCK=infinity`): `mlockall(CURRENT | FUTURE | ONFAULT)`, which locks
//! pages as they are touched. Where it may not (no CAP_SYS_RESOURCE), it prints what plain
//! `mlockall` would have made resident (every accessible mapping), the figure that made
//! keyguard lock on fault.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use jsonrpsee::core::client::ClientT;
use jsonrpsee::rpc_params;
use jsonrpsee::ws_client::WsClientBuilder;
use serde_json::{json, Value};

use common::Daemon;

const IDLE: usize = 1_000;
const SIGNATURES: u64 = 2_000;
const LIMIT_KIB: u64 = 64 * 1024;

/// KiB of accessible mappings (every `Size:` in /proc/<pid>/smaps but `---p` guard and
/// reserved regions): what a plain `mlockall(CURRENT | FUTURE)` would make resident.
fn lockable_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut total = 0;
    let mut accessible = false;
    for line in smaps.lines() {
        if let Some(size) = line.strip_prefix("Size:") {
            if accessible {
                total += size
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
        } else if let Some((_, perms)) = mapping_header(line) {
            accessible = !perms.starts_with("---");
        }
    }
    total
}

/// `("start-end", "perms")` of an smaps mapping line such as
/// `7f00-7f10 rw-p 00000000 08:01 42 /lib/x.so`.
fn mapping_header(line: &str) -> Option<(&str, &str)> {
    let mut words = line.split_whitespace();
    let range = words.next()?;
    let (a, b) = range.split_once('-')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_hexdigit());
    (hex(a) && hex(b)).then_some((range, words.next()?))
}

/// Enough descriptors for 1,000 sockets on both ends (the daemon inherits the limit), and
/// unlimited memlock when allowed (see the module docs). Returns whether memlock was lifted.
fn raise_limits() -> bool {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let nofile = getrlimit(Resource::Nofile);
    let want = 4_096;
    if nofile.current.is_some_and(|c| c < want) {
        let max = nofile.maximum.map_or(want, |m| m.min(want));
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(max),
                maximum: nofile.maximum,
            },
        )
        .expect("raise RLIMIT_NOFILE");
    }
    let unlimited = Rlimit {
        current: None,
        maximum: None,
    };
    setrlimit(Resource::Memlock, unlimited).is_ok()
}

/// Opens a WebSocket to `addr` by hand (one upgrade request, no client library) and leaves
/// it idle.
fn idle_websocket(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    s
}

/// One JSON-RPC call over an idle socket (a masked text frame), proving it is still served.
fn call_on(s: &mut TcpStream, request: &Value) -> Value {
    common::ws_call(s, request.to_string().as_bytes())
}

fn address(daemon: &Daemon) -> String {
    daemon
        .line_after("keyguard: key dev-secp256k1 secp256k1 ")
        .trim()
        .to_string()
}

/// Signs `SIGNATURES` transactions over one WebSocket, 16 in flight at a time.
async fn load(addr: &str, from: &str) -> (u64, Duration) {
    let client = std::sync::Arc::new(
        WsClientBuilder::default()
            .max_concurrent_requests(64)
            .build(format!("ws://{addr}"))
            .await
            .unwrap(),
    );
    let started = Instant::now();
    let mut signed = 0;
    for batch in 0..SIGNATURES / 16 {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..16 {
            let tx = json!({
                "from": from,
                "to": "0x000000000000000000000000000000000000dEaD",
                "value": "0x1",
                "gas": "0x5208",
                "maxFeePerGas": "0x3b9aca00",
                "maxPriorityFeePerGas": "0x1",
                "nonce": format!("{:#x}", batch * 16 + i),
                "chainId": "0x7a69",
            });
            let client = client.clone();
            calls.spawn(async move {
                client
                    .request::<String, _>("eth_signTransaction", rpc_params![tx])
                    .await
            });
        }
        while let Some(r) = calls.join_next().await {
            assert!(r.unwrap().unwrap().starts_with("0x02"));
            signed += 1;
        }
    }
    (signed, started.elapsed())
}

#[test]
fn thousand_idle_websockets_plus_load_are_all_served() {
    let locked = raise_limits();
    let dir = tempfile::tempdir().unwrap();
    // A fleet of wallets connects from many addresses; here all 1,000 come from 127.0.0.1, so
    // the per-peer cap (256 by default) is raised for this listener.
    let text = common::config(dir.path(), "").replacen(
        "keys = [\"*\"]\n[metrics]",
        "keys = [\"*\"]\nconnections = { max = 2048, per_peer = 2048 }\n[metrics]",
        1,
    );
    assert!(text.contains("per_peer = 2048"));
    let daemon = Daemon::start(dir.path(), &text, &[("KEYGUARD_LOG", "warn")]);
    let (addr, from, pid) = (daemon.rpc_addr(), address(&daemon), daemon.child.id());
    let at_start = common::status_kib(pid, "VmRSS:");

    let mut idle: Vec<TcpStream> = (0..IDLE).map(|_| idle_websocket(&addr)).collect();
    let with_idle = common::status_kib(pid, "VmRSS:");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (signed, took) = runtime.block_on(load(&addr, &from));
    assert_eq!(signed, SIGNATURES);

    // The idle connections are still served.
    for (i, s) in idle.iter_mut().enumerate().step_by(100) {
        let r = call_on(
            s,
            &json!({"jsonrpc": "2.0", "id": i, "method": "eth_chainId"}),
        );
        assert_eq!(r["result"], "0x7a69", "{r}");
    }
    let at_end = common::status_kib(pid, "VmRSS:");
    let peak = common::status_kib(pid, "VmHWM:");
    let locked_kib = common::status_kib(pid, "VmLck:");
    let threads = common::status_kib(pid, "Threads:");
    let lockable = lockable_kib(pid);
    eprintln!(
        "ws_idle: {IDLE} idle WebSockets + {signed} signatures in {:.1}s over one more; \
         VmRSS start {at_start} KiB, with idle {with_idle} KiB, end {at_end} KiB, \
         peak (VmHWM) {peak} KiB; {threads} threads, VmLck {locked_kib} KiB (memlock lifted: {locked}); \
         accessible mappings (resident under plain mlockall) {lockable} KiB",
        took.as_secs_f64()
    );
    if let Ok(mib) = std::env::var("KEYGUARD_WS_IDLE_LIMIT_MIB") {
        let limit = mib
            .parse::<u64>()
            .expect("KEYGUARD_WS_IDLE_LIMIT_MIB in MiB")
            * 1024;
        assert!(peak < limit, "peak RSS {peak} KiB is over {limit} KiB");
    } else {
        eprintln!("ws_idle: memory bound {LIMIT_KIB} KiB not asserted (benches/ws_idle.sh does)");
    }
    drop(idle);
}
