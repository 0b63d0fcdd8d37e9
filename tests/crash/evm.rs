//! The Ethereum side of the load, and what its clients were told across every restart.
//!
//! Clients 0-2 sign fresh nonces, re-send a signed transaction unchanged (must sign the same
//! hash again) or with another value (must be refused: the policy's nonce rule promises one
//! transaction per nonce). Client 3 sends to the velocity-limited destination until refused.
//! Client 4 parks 11 ETH transfers for approval, retries them (same approval id, across
//! restarts), votes as two approvers through the admin socket and retries approved ones.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};

use crate::common::Daemon;
use crate::control::{self, User};
use crate::report::{Kind, Violations};

/// The velocity limit's name; its per-destination counters are `<name>@<address>`.
pub const VELOCITY_NAME: &str = "per-destination";
/// Transactions the limited destination may receive per 24 h.
pub const VELOCITY_MAX: usize = 25;
/// The destination the velocity client drains.
pub const LIMITED: &str = "0x000000000000000000000000000000000000dead";
const ETHER: u128 = 1_000_000_000_000_000_000;
/// Clients 0-2 plain, 3 velocity, 4 approvals; each owns the nonces `id * 1e6 ..`.
const CLIENTS: usize = 5;

/// Where one run's clients connect.
pub struct Client {
    pub rpc: String,
    pub from: String,
    pub socket: PathBuf,
    pub approvers: [User; 2],
}

/// Where an approval-held request is, as far as the client knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldState {
    Pending,
    /// Both approvers' votes were acknowledged.
    Approved,
    /// The retry returned a signature.
    Signed,
    /// A retry was refused as already consumed: a signature was made that the client never
    /// saw (its response was cut by a kill), so a signed audit row must name the approval.
    ConsumedUnseen,
}

/// A request held for approval.
#[derive(Clone, Debug)]
pub struct Held {
    pub nonce: u64,
    pub id: String,
    pub votes: [bool; 2],
    pub state: HeldState,
}

#[derive(Default)]
struct Counts {
    fresh: AtomicU64,
    resent: AtomicU64,
    conflicts_refused: AtomicU64,
    velocity_signed: AtomicU64,
    velocity_refused: AtomicU64,
    held: AtomicU64,
    held_retries: AtomicU64,
    approved_signed: AtomicU64,
}

/// What the EVM clients were told, across every restart.
#[derive(Default)]
pub struct EvmBook {
    /// The one transaction hash released for each nonce.
    by_nonce: Mutex<HashMap<u64, String>>,
    /// Every transaction hash received, in order (the audit check walks it).
    pub received: Mutex<Vec<String>>,
    /// Hashes released to the velocity-limited destination.
    pub to_limited: Mutex<HashSet<String>>,
    /// Requests held for approval.
    pub held: Mutex<Vec<Held>>,
    /// Signed nonces of each plain client (for re-sends and conflicts).
    signed_nonces: [Mutex<Vec<u64>>; 3],
    next_nonce: [AtomicU64; CLIENTS],
    counts: Counts,
    /// Requests sent and not yet answered (read at the moment of a kill).
    pub in_flight: AtomicUsize,
    /// Broken promises seen by the clients.
    pub violations: Violations,
}

impl EvmBook {
    pub fn received_count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn next(&self, client: usize) -> u64 {
        client as u64 * 1_000_000 + self.next_nonce[client].fetch_add(1, Ordering::SeqCst)
    }

    /// Records a released transaction, and a violation if its nonce was released for another.
    fn record_signed(&self, nonce: u64, raw: &str) -> String {
        let bytes = hex::decode(raw.trim_start_matches("0x")).expect("raw transaction hex");
        let hash = format!("{}", alloy_primitives::keccak256(&bytes));
        let mut by_nonce = self.by_nonce.lock().unwrap();
        if let Some(earlier) = by_nonce.get(&nonce) {
            self.violations
                .check(earlier == &hash, Kind::NonceConflict, || {
                    format!("nonce {nonce} released for {earlier} and {hash}")
                });
        }
        by_nonce.insert(nonce, hash.clone());
        self.received.lock().unwrap().push(hash.clone());
        hash
    }

    /// One line of what the load did.
    pub fn counts(&self) -> String {
        let c = &self.counts;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "evm: {} fresh, {} identical re-sends, {} conflicting nonces refused, velocity {} \
             signed / {} refused, {} held ({} retries), {} signed after approval",
            g(&c.fresh),
            g(&c.resent),
            g(&c.conflicts_refused),
            g(&c.velocity_signed),
            g(&c.velocity_refused),
            g(&c.held),
            g(&c.held_retries),
            g(&c.approved_signed),
        )
    }

    /// A long enough run must have exercised every kind of request, or it proved little.
    pub fn assert_every_path_ran(&self) {
        let c = &self.counts;
        for (name, n) in [
            ("conflicting nonce refusals", &c.conflicts_refused),
            ("velocity refusals", &c.velocity_refused),
            ("held requests", &c.held),
            ("retries of held requests", &c.held_retries),
            ("signatures after approval", &c.approved_signed),
        ] {
            assert!(
                n.load(Ordering::Relaxed) > 0,
                "no {name}: {}",
                self.counts()
            );
        }
    }
}

/// Creates an admin and two approvers in group `treasury` (once; users are durable).
pub fn enrol_approvers(daemon: &Daemon, socket: &Path) -> [User; 2] {
    let alice = control::bootstrap_admin(daemon, "alice");
    let adam = control::bootstrap_admin(daemon, "adam");
    let ann = control::add_user2(socket, &alice, &adam, "ann", &["approver"], &["treasury"]);
    let bob = control::add_user2(socket, &alice, &adam, "bob", &["approver"], &["treasury"]);
    [ann, bob]
}

/// A JSON-RPC call over a fresh HTTP connection; `None` when the daemon died under it.
pub fn try_rpc(addr: &str, method: &str, params: Value) -> Option<Value> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    serde_json::from_str(out.split_once("\r\n\r\n")?.1).ok()
}

/// An admin API call; `None` when the daemon died under it.
fn try_admin(socket: &Path, user: &User, method: &str, id: &str) -> Option<Value> {
    let params = json!({"id": id, "auth": {"user": user.name, "totp": user.code()}});
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let mut s = UnixStream::connect(socket).ok()?;
    s.write_all(format!("{req}\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

/// A destination of its own for every nonce, so only the velocity client meets the limit.
fn destination(nonce: u64) -> String {
    format!("0x{:040x}", 0x1000_0000_u64 + nonce)
}

fn sign(c: &Client, book: &EvmBook, nonce: u64, to: &str, value: u128) -> Option<Value> {
    let tx = json!({
        "from": c.from,
        "to": to,
        "value": format!("{value:#x}"),
        "gas": "0x5208",
        "maxFeePerGas": "0x3b9aca00",
        "maxPriorityFeePerGas": "0x1",
        "nonce": format!("{nonce:#x}"),
        "chainId": "0x7a69",
    });
    book.in_flight.fetch_add(1, Ordering::SeqCst);
    let r = try_rpc(&c.rpc, "eth_signTransaction", json!([tx]));
    book.in_flight.fetch_sub(1, Ordering::SeqCst);
    r
}

fn rule(r: &Value) -> Option<&str> {
    r["error"]["data"]["rule"].as_str()
}

/// Starts every client; each returns when keyguard is killed.
pub fn spawn<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    client: &'scope Client,
    book: &'scope EvmBook,
) {
    for id in 0..3 {
        s.spawn(move || plain(client, book, id));
    }
    s.spawn(move || velocity(client, book));
    s.spawn(move || approvals(client, book));
}

fn plain(c: &Client, book: &EvmBook, id: usize) {
    let mut rng = rand::thread_rng();
    loop {
        let earlier = {
            let signed = book.signed_nonces[id].lock().unwrap();
            (!signed.is_empty()).then(|| signed[rng.gen_range(0..signed.len())])
        };
        match (rng.gen_range(0..10), earlier) {
            (0, Some(nonce)) => {
                let value = 2 + rng.gen_range(0..1000);
                let Some(r) = sign(c, book, nonce, &destination(nonce), value) else {
                    return;
                };
                let refused = rule(&r) == Some("evm.nonce_reuse");
                if !book.violations.check(refused, Kind::NonceConflict, || {
                    format!("a second transaction for nonce {nonce} was not refused: {r}")
                }) {
                    return;
                }
                book.counts
                    .conflicts_refused
                    .fetch_add(1, Ordering::Relaxed);
            }
            (1, Some(nonce)) => {
                let Some(r) = sign(c, book, nonce, &destination(nonce), 1) else {
                    return;
                };
                let Some(raw) = r["result"].as_str() else {
                    book.violations
                        .record(Kind::Unexpected, format!("re-send refused: {r}"));
                    return;
                };
                book.record_signed(nonce, raw);
                book.counts.resent.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                let nonce = book.next(id);
                let Some(r) = sign(c, book, nonce, &destination(nonce), 1) else {
                    return;
                };
                let Some(raw) = r["result"].as_str() else {
                    book.violations
                        .record(Kind::Unexpected, format!("fresh nonce refused: {r}"));
                    return;
                };
                book.record_signed(nonce, raw);
                book.signed_nonces[id].lock().unwrap().push(nonce);
                book.counts.fresh.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn velocity(c: &Client, book: &EvmBook) {
    loop {
        let nonce = book.next(3);
        let Some(r) = sign(c, book, nonce, LIMITED, 1) else {
            return;
        };
        if let Some(raw) = r["result"].as_str() {
            let hash = book.record_signed(nonce, raw);
            let mut limited = book.to_limited.lock().unwrap();
            limited.insert(hash);
            let n = limited.len();
            book.violations
                .check(n <= VELOCITY_MAX, Kind::Velocity, || {
                    format!("{n} signatures to a destination limited to {VELOCITY_MAX}")
                });
            book.counts.velocity_signed.fetch_add(1, Ordering::Relaxed);
        } else {
            if !book
                .violations
                .check(rule(&r) == Some("evm.velocity"), Kind::Unexpected, || {
                    format!("velocity client: {r}")
                })
            {
                return;
            }
            book.counts.velocity_refused.fetch_add(1, Ordering::Relaxed);
            // Refusals are cheap; do not let them crowd out the other clients.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn approvals(c: &Client, book: &EvmBook) {
    let mut rng = rand::thread_rng();
    loop {
        let alive = match rng.gen_range(0..10) {
            0..=2 => hold_new(c, book),
            3..=4 => retry_one(c, book, HeldState::Pending),
            // Both votes, then the retry that signs: the whole approval path in one go, so
            // every run of 10+ kills signs after approval (the run asserts it did).
            5..=7 => vote(c, book) && vote(c, book) && retry_one(c, book, HeldState::Approved),
            _ => retry_one(c, book, HeldState::Approved),
        };
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn hold_new(c: &Client, book: &EvmBook) -> bool {
    let nonce = book.next(4);
    let Some(r) = sign(c, book, nonce, &destination(nonce), 11 * ETHER) else {
        return false;
    };
    if !book.violations.check(
        control::error_code(&r) == Some(-32002),
        Kind::Unexpected,
        || format!("11 ETH transfer not held: {r}"),
    ) {
        return false;
    }
    let id = r["error"]["data"]["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    book.held.lock().unwrap().push(Held {
        nonce,
        id,
        votes: [false; 2],
        state: HeldState::Pending,
    });
    book.counts.held.fetch_add(1, Ordering::Relaxed);
    true
}

/// Retries a held request in `state`: the same approval id while pending (also after a
/// restart), one signature once approved.
fn retry_one(c: &Client, book: &EvmBook, state: HeldState) -> bool {
    let pick = {
        let held = book.held.lock().unwrap();
        let some: Vec<_> = held.iter().filter(|h| h.state == state).cloned().collect();
        (!some.is_empty()).then(|| some[rand::thread_rng().gen_range(0..some.len())].clone())
    };
    let Some(h) = pick else {
        return true;
    };
    let Some(r) = sign(c, book, h.nonce, &destination(h.nonce), 11 * ETHER) else {
        return false;
    };
    let new_state = if let Some(raw) = r["result"].as_str() {
        // Votes whose acknowledgement a kill cut off may have approved a "pending" one.
        book.record_signed(h.nonce, raw);
        book.counts.approved_signed.fetch_add(1, Ordering::Relaxed);
        HeldState::Signed
    } else if control::error_code(&r) == Some(-32002) {
        let same = r["error"]["data"]["approval_id"] == h.id.as_str();
        let pending = h.state == HeldState::Pending;
        if !book.violations.check(same && pending, Kind::Approval, || {
            format!("{:?} request {} held again: {r}", h.state, h.id)
        }) {
            return false;
        }
        book.counts.held_retries.fetch_add(1, Ordering::Relaxed);
        HeldState::Pending
    } else if rule(&r) == Some("approval.consumed") {
        HeldState::ConsumedUnseen
    } else {
        book.violations
            .record(Kind::Unexpected, format!("retry of held {}: {r}", h.id));
        return false;
    };
    let mut held = book.held.lock().unwrap();
    if let Some(x) = held.iter_mut().find(|x| x.id == h.id) {
        x.state = new_state;
    }
    true
}

/// Both approvers vote for the oldest pending request (one vote per call).
fn vote(c: &Client, book: &EvmBook) -> bool {
    let pick = {
        let held = book.held.lock().unwrap();
        held.iter().find(|h| h.state == HeldState::Pending).cloned()
    };
    let Some(h) = pick else {
        return true;
    };
    let Some(who) = h.votes.iter().position(|v| !v) else {
        return true;
    };
    book.in_flight.fetch_add(1, Ordering::SeqCst);
    let r = try_admin(&c.socket, &c.approvers[who], "approvals.approve", &h.id);
    book.in_flight.fetch_sub(1, Ordering::SeqCst);
    let Some(r) = r else {
        return false;
    };
    // -32010: this vote already counted (its acknowledgement was cut by a kill) or the
    // request is no longer pending (a retry found it approved).
    let ok = r["result"].is_object() || control::error_code(&r) == Some(-32010);
    if !book
        .violations
        .check(ok, Kind::Unexpected, || format!("vote on {}: {r}", h.id))
    {
        return false;
    }
    let mut held = book.held.lock().unwrap();
    if let Some(x) = held.iter_mut().find(|x| x.id == h.id) {
        x.votes[who] = true;
        if x.votes == [true, true] && x.state == HeldState::Pending {
            x.state = HeldState::Approved;
        }
    }
    true
}
