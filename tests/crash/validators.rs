//! The CometBFT side of the load: every validator connection asks for the current step (or,
//! one time in five, the previous one again), always for one of two candidate blocks, so
//! connections and restarts conflict with each other all the time. Every signature received is
//! verified by the mock node against tendermint's own sign bytes before it is recorded here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

use crate::mockval::conn::NodeListener;
use crate::mockval::node::{now, Ask, Node, Ver};
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
    for &(listener, ver) in nodes {
        s.spawn(move || {
            let Some(conn) = listener.try_accept(Duration::from_secs(10)) else {
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
                match node.sign(&ask) {
                    None => return, // killed
                    Some(Ok(r)) => {
                        {
                            let mut m = book.released.lock().unwrap();
                            if let Some((b, _)) = m.get(&hrs) {
                                assert_eq!(*b, block, "DOUBLE SIGN at {hrs:?}");
                            }
                            m.insert(hrs, (block, r.signature.clone()));
                        }
                        book.received
                            .lock()
                            .unwrap()
                            .push(hex::encode(&r.signature));
                        book.advance_from(n);
                    }
                    Some(Err((code, desc))) => {
                        // 1: refused by the double-sign guard; 4: the watermark is elsewhere.
                        assert!(code == 1 || code == 4, "unexpected refusal {code}: {desc}");
                        book.advance_from(n);
                    }
                }
            }
        });
    }
}
