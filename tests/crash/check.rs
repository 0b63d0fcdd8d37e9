//! The checks run after every kill, with the daemon dead: `keyguard audit verify` through the
//! CLI, then the database read directly (read-only) and compared with what clients were told.
//! Reads are incremental (rows after the last seen `seq` / `id`), so a long run stays linear.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use crate::evm::{EvmBook, HeldState, LIMITED, VELOCITY_MAX, VELOCITY_NAME};
use crate::report::{Kind, Violations};
use crate::validators::{Hrs, VoteBook};

/// What the checker has read so far.
pub struct Checker {
    config: PathBuf,
    db: PathBuf,
    last_seq: i64,
    last_velocity_id: i64,
    /// `tx_hash` of every signed audit row (EVM hash, or CometBFT signature hex).
    signed: HashSet<String>,
    /// Nonce -> transaction hash of signed `eth_signTransaction` rows.
    nonce_owner: HashMap<u64, String>,
    /// Approval ids named by signed rows.
    approvals_signed: HashSet<String>,
    /// Request ids with a velocity row.
    velocity_requests: HashSet<String>,
    evm_seen: usize,
    votes_seen: usize,
    watermark: Option<Hrs>,
    verified: usize,
    /// What broke, if anything.
    pub violations: Violations,
}

impl Checker {
    pub fn new(dir: &Path) -> Checker {
        Checker {
            config: dir.join("keyguard.toml"),
            db: dir.join("var/keyguard.db"),
            last_seq: 0,
            last_velocity_id: 0,
            signed: HashSet::new(),
            nonce_owner: HashMap::new(),
            approvals_signed: HashSet::new(),
            velocity_requests: HashSet::new(),
            evm_seen: 0,
            votes_seen: 0,
            watermark: None,
            verified: 0,
            violations: Violations::default(),
        }
    }

    /// One line of what was checked.
    pub fn stats(&self) -> String {
        format!(
            "{} audit rows verified, {} signed rows matched",
            self.verified,
            self.signed.len()
        )
    }

    pub fn after_kill(&mut self, round: usize, evm: &EvmBook, votes: &VoteBook) {
        self.audit_verifies(round);
        let conn = Connection::open_with_flags(&self.db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the database read-only");
        let since = self.last_seq;
        self.read_audit(&conn, round);
        self.read_velocity(&conn);
        self.every_signature_is_audited(round, evm, votes);
        self.watermark_holds(&conn, round, votes);
        self.velocity_never_undercounts(&conn, round, since, evm);
        votes.step_back();
    }

    /// Run once the restarted daemon is ready (it recovers approvals at start), before load.
    pub fn after_restart(&self, round: usize, evm: &EvmBook) {
        let conn = Connection::open_with_flags(&self.db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the database read-only");
        self.approvals_survive(&conn, round, evm);
    }

    fn audit_verifies(&mut self, round: usize) {
        let out = Command::new(crate::common::binary())
            .args(["audit", "verify", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let ok = out.status.success() && text.starts_with("audit log verified: ");
        if !self.violations.check(ok, Kind::AuditChain, || {
            format!(
                "kill {round}: audit verify failed: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        }) {
            return;
        }
        let rows: usize = text
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .expect("a row count");
        // Committed rows never disappear: a restart that lost any would show fewer.
        self.violations
            .check(rows >= self.verified, Kind::AuditChain, || {
                format!(
                    "kill {round}: the audit log shrank from {} to {rows} rows",
                    self.verified
                )
            });
        self.verified = self.verified.max(rows);
    }

    fn read_audit(&mut self, conn: &Connection, round: usize) {
        let mut stmt = conn
            .prepare(
                "SELECT seq, method, summary, tx_hash FROM audit_log \
                 WHERE seq > ?1 AND decision = 'signed' ORDER BY seq",
            )
            .unwrap();
        let rows = stmt
            .query_map([self.last_seq], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (seq, method, summary, hash) = row.unwrap();
            self.last_seq = self.last_seq.max(seq);
            let hash = hash.unwrap_or_else(|| panic!("signed row {seq} has no tx_hash"));
            self.signed.insert(hash.clone());
            if method != "eth_signTransaction" {
                continue;
            }
            let summary: Value = serde_json::from_str(&summary).unwrap();
            let nonce = summary["nonce"].as_u64().expect("nonce in summary");
            if let Some(earlier) = self.nonce_owner.insert(nonce, hash.clone()) {
                self.violations
                    .check(earlier == hash, Kind::NonceConflict, || {
                        format!("kill {round}: nonce {nonce} signed for {earlier} and {hash}")
                    });
            }
            if let Some(id) = summary["approval_id"].as_str() {
                self.approvals_signed.insert(id.to_owned());
            }
        }
        // Refused and held rows are not read here, but they are past `last_seq` too.
        let max: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_log", [], |r| {
                r.get(0)
            })
            .unwrap();
        self.last_seq = self.last_seq.max(max);
    }

    fn read_velocity(&mut self, conn: &Connection) {
        let mut stmt = conn
            .prepare("SELECT id, request_id FROM velocity_events WHERE id > ?1")
            .unwrap();
        let rows = stmt
            .query_map([self.last_velocity_id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .unwrap();
        for row in rows {
            let (id, request) = row.unwrap();
            self.last_velocity_id = self.last_velocity_id.max(id);
            self.velocity_requests.insert(request);
        }
    }

    /// Every signature a client received has a signed, durable audit row.
    fn every_signature_is_audited(&mut self, round: usize, evm: &EvmBook, votes: &VoteBook) {
        let received = evm.received.lock().unwrap();
        for hash in &received[self.evm_seen..] {
            self.violations
                .check(self.signed.contains(hash), Kind::Unaudited, || {
                    format!(
                        "kill {round}: transaction {hash} was released without a durable \
                         audit row"
                    )
                });
        }
        self.evm_seen = received.len();
        let received = votes.received.lock().unwrap();
        for sig in &received[self.votes_seen..] {
            self.violations
                .check(self.signed.contains(sig), Kind::Unaudited, || {
                    format!(
                        "kill {round}: CometBFT signature {sig} was released without a \
                         durable audit row"
                    )
                });
        }
        self.votes_seen = received.len();
    }

    /// The stored watermark covers everything released and never moves back. keyguard stores
    /// steps as proposal 1, prevote 2, precommit 3 (CometBFT's `FilePV` numbering); the
    /// harness counts 0/1/2, so the stored step is converted before comparing (compared raw,
    /// a watermark one step behind what was released passed).
    fn watermark_holds(&mut self, conn: &Connection, round: usize, votes: &VoteBook) {
        let stored: Option<Hrs> = conn
            .query_row(
                "SELECT height, round, step FROM cometbft_watermarks WHERE chain_id = ?1",
                [crate::CHAIN],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i32>(1)?,
                        harness_step(r.get::<_, i32>(2)?),
                    ))
                },
            )
            .ok();
        if let Some(released) = votes.max_released() {
            self.violations
                .check(stored >= Some(released), Kind::WatermarkBehind, || {
                    format!(
                        "kill {round}: stored watermark {stored:?} is behind released \
                         {released:?}"
                    )
                });
        }
        self.violations
            .check(stored >= self.watermark, Kind::WatermarkBackwards, || {
                format!(
                    "kill {round}: watermark went backwards: {:?} -> {stored:?}",
                    self.watermark
                )
            });
        self.watermark = self.watermark.max(stored);
    }

    /// Velocity rows commit with the signature: every signed transaction has one, and the
    /// limited destination's counter holds at least what its client received.
    fn velocity_never_undercounts(
        &self,
        conn: &Connection,
        round: usize,
        since: i64,
        evm: &EvmBook,
    ) {
        let mut stmt = conn
            .prepare(
                "SELECT request_id FROM audit_log \
                 WHERE decision = 'signed' AND method = 'eth_signTransaction' AND seq > ?1",
            )
            .unwrap();
        let missing: Vec<String> = stmt
            .query_map([since], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .filter(|id| !self.velocity_requests.contains(id))
            .collect();
        self.violations
            .check(missing.is_empty(), Kind::Velocity, || {
                format!("kill {round}: signed transactions without a velocity row: {missing:?}")
            });
        let counter = format!("{VELOCITY_NAME}@{LIMITED}");
        let counted: usize = conn
            .query_row(
                "SELECT COUNT(*) FROM velocity_events WHERE counter = ?1",
                [&counter],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as usize;
        let received = evm.to_limited.lock().unwrap().len();
        self.violations.check(
            counted >= received && counted <= VELOCITY_MAX,
            Kind::Velocity,
            || {
                format!(
                    "kill {round}: counter {counter} holds {counted}, clients received \
                     {received} (limit {VELOCITY_MAX})"
                )
            },
        );
    }

    /// Held requests are still pending; approved ones are approved or consumed; every consumed
    /// approval belongs to a signature in the audit log (one consumed by a signature that a
    /// kill kept from leaving must be approved again after the restart).
    fn approvals_survive(&self, conn: &Connection, round: usize, evm: &EvmBook) {
        let states: HashMap<String, String> = conn
            .prepare("SELECT id, state FROM approvals")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for h in evm.held.lock().unwrap().iter() {
            let Some(state) = states.get(&h.id) else {
                self.violations.record(
                    Kind::Approval,
                    format!("kill {round}: held approval {} is gone", h.id),
                );
                continue;
            };
            let fine = match h.state {
                // Votes whose acknowledgement was cut may have approved it, and a retry cut
                // by the kill may have consumed it (checked against the audit log below).
                HeldState::Pending => state != "rejected",
                HeldState::Approved => state == "approved" || state == "consumed",
                HeldState::Signed | HeldState::ConsumedUnseen => state == "consumed",
            };
            self.violations.check(fine, Kind::Approval, || {
                format!("kill {round}: approval {} is {state}, {h:?}", h.id)
            });
        }
        for (id, state) in &states {
            if state == "consumed" {
                self.violations
                    .check(self.approvals_signed.contains(id), Kind::Approval, || {
                        format!("kill {round}: {id} is consumed but no signature used it")
                    });
            }
        }
    }
}

/// keyguard's stored step (proposal 1, prevote 2, precommit 3) in the harness's numbering
/// (0, 1, 2). An unknown number maps below every step, so it can never hide a lagging row.
fn harness_step(stored: i32) -> i32 {
    match stored {
        1..=3 => stored - 1,
        _ => i32::MIN,
    }
}
