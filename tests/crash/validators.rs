//! The CometBFT side of the load: every validator connection asks for the current step (or,
//! one time in five, the previous one again), always for one of two candidate blocks, so
//! connections and restarts conflict with each other all the time. Every signature received is
//! verified by the mock node against tendermint's own sign bytes before it is recorded here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

use crate::mockval::conn::NodeListener;
use crate::mockval::node::{now, Ask, Node, Ver};
use crate::report::{Kind, Violations};
use crate::CHAIN;

/// (height, round, step) with steps proposal 0 < prevote 1 < precommit 2.
pub type Hrs = (i64, i32, i32);

/// What the validator connections were given, across every restart.
#[derive(Default)]
pub struct VoteBook {
    /// The block released at each step (with its signature).
    pub released: Mutex<HashMap<Hrs, (u8, Vec<u8>)>>,
    /// Hex of every signature received, in order (the audit check walks it).
    pub received: Mutex<Vec<String>>,
    /// The step the load is at; steps back by one after each kill.
    next: AtomicI64,
    /// Signatures received by each validator connection (index into the nodes).
    pub per_connection: [AtomicUsize; 3],
    /// Rounds in which a validator connection never came up or never got its public key.
    pub missing_connections: AtomicUsize,
    /// Sign requests sent and not yet answered (read at the moment of a kill).
    pub in_flight: AtomicUsize,
    /// Double signs and unexpected answers.
    pub violations: Violations,
}

impl VoteBook {
    /// Signatures received so far.
    pub fn received_count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// The highest step anything was released for.
    pub fn max_released(&self) -> Option<Hrs> {
        self.released.lock().unwrap().keys().max().copied()
    }

    /// After a kill the load resumes one step behind: a restarted signer must refuse the
    /// other block there too.
    pub fn step_back(&self) {
        self.next.fetch_sub(1, Ordering::SeqCst);
    }

    fn advance_from(&self, n: i64) {
        let _ = self
            .next
            .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst);
    }
}

fn ask_for(n: i64, block: u8) -> (Hrs, Ask) {
    let (h, s) = (n / 3 + 1, (n % 3) as i32);
    let ask = match s {
        0 => Ask::proposal(h, 0, block, now()),
        _ => Ask::vote(s, h, 0, Some(block), now()),
    };
    ((h, 0, s), ask)
}

/// One thread per validator connection; each returns when keyguard is killed.
pub fn spawn<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    nodes: &'scope [(&'scope NodeListener, Ver)],
    book: &'scope VoteBook,
) {
    for (i, &(listener, ver)) in nodes.iter().enumerate() {
        s.spawn(move || {
            // keyguard dials each node right after it is ready; one that does not within 10 s
            // is counted (the run fails on it: a connection that never works proves nothing).
            let Some(conn) = listener.try_accept(Duration::from_secs(10)) else {
                eprintln!("crash: validator connection {i} ({ver:?}) never came up");
                book.missing_connections.fetch_add(1, Ordering::SeqCst);
                return;
            };
            let mut node = Node::new(conn, ver, CHAIN);
            if !matches!(node.pubkey(), Some(Ok(_))) {
                return;
            }
            let mut rng = rand::thread_rng();
            loop {
                let cur = book.next.load(Ordering::SeqCst);
                // `next` steps back after a kill and can briefly sit below zero.
                let n = if rng.gen_bool(0.2) {
                    (cur - 1).max(0)
                } else {
                    cur.max(0)
                };
                let block = (n % 100) as u8 * 2 + rng.gen_range(0..2u8);
                let (hrs, ask) = ask_for(n, block);
                book.in_flight.fetch_add(1, Ordering::SeqCst);
                let answer = node.sign(&ask);
                book.in_flight.fetch_sub(1, Ordering::SeqCst);
                match answer {
                    None => return, // killed
                    Some(Ok(r)) => {
                        {
                            let mut m = book.released.lock().unwrap();
                            if let Some((b, _)) = m.get(&hrs) {
                                let b = *b;
                                book.violations.check(b == block, Kind::DoubleSign, || {
                                    format!("blocks {b} and {block} released at {hrs:?}")
                                });
                            }
                            m.insert(hrs, (block, r.signature.clone()));
                        }
                        book.per_connection[i].fetch_add(1, Ordering::SeqCst);
                        book.received
                            .lock()
                            .unwrap()
                            .push(hex::encode(&r.signature));
                        book.advance_from(n);
                    }
                    Some(Err((code, desc))) => {
                        // 1: refused by the double-sign guard; 4: the watermark is elsewhere.
                        if !book
                            .violations
                            .check(code == 1 || code == 4, Kind::Unexpected, || {
                                format!("unexpected refusal {code}: {desc}")
                            })
                        {
                            return;
                        }
                        book.advance_from(n);
                    }
                }
            }
        });
    }
}
