//! The replication tripwire: each instance's own fsynced record of what it released.
//!
//! A PostgreSQL failover that promotes a standby which missed the last commits rolls watermarks
//! and nonces back, and the shared rows, the fence of every other check, would then let a height
//! or nonce be signed again. Each instance therefore appends what it released per key (CometBFT
//! height/round/step, highest EVM nonce per chain) to `released.log` in its data directory,
//! fdatasynced before the signature leaves, together with the database's system identifier and
//! timeline. At every (re)connection of the audit writer the database is compared with that
//! record: a different system identifier or timeline (a failover or another database) trips every
//! key; a row behind the record trips that key. A tripped key is refused (`store.tripwire`) until
//! an operator repairs the database and runs `keyguard store trust` (then restarts).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::db::{vals, Tx};
use super::ledger::StateWrite;
use super::StoreError;

/// The file in the data directory.
pub const FILE: &str = "released.log";

/// Rule named by a refusal.
pub const RULE: &str = "store.tripwire";

/// The database's identity: system identifier and current timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub system_identifier: String,
    pub timeline: u32,
}

#[derive(Default)]
struct State {
    identity: Option<Identity>,
    /// `cometbft <chain> <key>` → (h, r, s); `evm <key> <chain_id>` → nonce.
    votes: HashMap<(String, String), (i64, i32, i64)>,
    nonces: HashMap<(String, u64), u64>,
    /// Keys refused until repaired; `*`: every key.
    tripped: HashMap<String, String>,
    file: Option<File>,
}

/// See the module documentation.
pub struct Tripwire {
    path: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for Tripwire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tripwire")
            .field("path", &self.path)
            .finish()
    }
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

impl Tripwire {
    /// Reads the record in `dir` (a torn last line is ignored) and opens it for appending.
    pub fn open(dir: &Path) -> Result<Tripwire, StoreError> {
        let path = dir.join(FILE);
        let mut st = State::default();
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| io(&path, e))?;
                st.apply(&line);
            }
        }
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        st.file = Some(opts.open(&path).map_err(|e| io(&path, e))?);
        Ok(Tripwire {
            path,
            state: Mutex::new(st),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why `key` is refused, if it is.
    pub fn refusal(&self, key: &str) -> Option<String> {
        let st = self.lock();
        st.tripped.get(key).or_else(|| st.tripped.get("*")).cloned()
    }

    /// Compares the database with the record (at every new writer connection).
    pub(crate) fn check(&self, tx: &Tx<'_>) -> Result<(), StoreError> {
        let now = identity(tx)?;
        let mut st = self.lock();
        match st.identity.clone() {
            None => {
                st.append(&format!(
                    "identity {} {}",
                    now.system_identifier, now.timeline
                ))
                .map_err(|e| io(&self.path, e))?;
                st.identity = Some(now);
            }
            Some(was) if was != now => {
                let why = format!(
                    "the database changed under this instance (system identifier {} timeline {} \
                     -> {} timeline {}): a failover may have lost commits; repair and run \
                     `keyguard store trust`",
                    was.system_identifier, was.timeline, now.system_identifier, now.timeline
                );
                tracing::error!(reason = %why, "tripwire: every key refused");
                metrics::counter!("keyguard_store_tripwire_total", "cause" => "identity")
                    .increment(1);
                st.tripped.insert("*".into(), why);
            }
            Some(_) => {}
        }
        let votes: Vec<_> = st.votes.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for ((chain, key), (h, r, s)) in votes {
            let row = tx.query_opt(
                "SELECT height, round, step FROM cometbft_watermarks WHERE chain_id = $1 \
                 AND key_id = $2",
                vals![&chain, &key],
            )?;
            let db: Option<(i64, i64, i64)> = row
                .map(|r| Ok::<_, StoreError>((r.get(0)?, r.get(1)?, r.get(2)?)))
                .transpose()?;
            if db.is_none_or(|d| d < (h, i64::from(r), s)) {
                let why = format!(
                    "the database's watermark of {chain}/{key} ({db:?}) is behind {h}/{r}/{s}, \
                     which this instance released"
                );
                tracing::error!(reason = %why, "tripwire");
                metrics::counter!("keyguard_store_tripwire_total", "cause" => "behind")
                    .increment(1);
                st.tripped.insert(key, why);
            }
        }
        let nonces: Vec<_> = st.nonces.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for ((key, chain_id), nonce) in nonces {
            let found = tx
                .query_opt(
                    "SELECT nonce FROM evm_nonces WHERE key_id = $1 AND chain_id = $2 \
                     AND nonce = $3",
                    vals![&key, chain_id as i64, nonce as i64],
                )?
                .is_some();
            if !found {
                let why = format!(
                    "the database has no nonce {nonce} of {key} on chain {chain_id}, which this \
                     instance released"
                );
                tracing::error!(reason = %why, "tripwire");
                metrics::counter!("keyguard_store_tripwire_total", "cause" => "behind")
                    .increment(1);
                st.tripped.insert(key, why);
            }
        }
        Ok(())
    }

    /// Records what a committed batch releases, fdatasynced before the caller answers.
    pub(crate) fn record<'a>(
        &self,
        writes: impl Iterator<Item = &'a StateWrite>,
    ) -> Result<(), StoreError> {
        let mut st = self.lock();
        let mut lines = Vec::new();
        for w in writes {
            match w {
                StateWrite::Watermark {
                    chain_id,
                    key_id,
                    next,
                } => {
                    let hrs = (next.height, next.round, i64::from(next.step.number()));
                    let k = (chain_id.clone(), key_id.clone());
                    if st.votes.get(&k).is_none_or(|was| *was < hrs) {
                        st.votes.insert(k, hrs);
                        lines.push(format!(
                            "cometbft {chain_id} {key_id} {} {} {}",
                            hrs.0, hrs.1, hrs.2
                        ));
                    }
                }
                StateWrite::EvmNonce {
                    key_id,
                    chain_id,
                    nonce,
                    ..
                } => {
                    let k = (key_id.clone(), *chain_id);
                    if st.nonces.get(&k).is_none_or(|was| was < nonce) {
                        st.nonces.insert(k, *nonce);
                        lines.push(format!("evm {key_id} {chain_id} {nonce}"));
                    }
                }
                _ => {}
            }
        }
        if lines.is_empty() {
            return Ok(());
        }
        let text = lines.join("\n");
        st.append(&text).map_err(|e| io(&self.path, e))
    }

    /// `keyguard store trust`: accepts the database's identity as it is now, and, with
    /// `forget`, forgets released marks the database is behind (the operator has judged the
    /// risk). Returns what is still behind without `forget`.
    pub(crate) fn trust(
        dir: &Path,
        identity: &Identity,
        forget: bool,
        tx: &Tx<'_>,
    ) -> Result<Vec<String>, StoreError> {
        let wire = Tripwire::open(dir)?;
        {
            let mut st = wire.lock();
            st.identity = Some(identity.clone());
        }
        wire.check(tx)?;
        let st = wire.lock();
        let behind: Vec<String> = st
            .tripped
            .iter()
            .filter(|(k, _)| k.as_str() != "*")
            .map(|(_, why)| why.clone())
            .collect();
        if !behind.is_empty() && !forget {
            return Ok(behind);
        }
        let mut text = format!(
            "identity {} {}\n",
            identity.system_identifier, identity.timeline
        );
        if !forget {
            for ((c, k), (h, r, s)) in &st.votes {
                text.push_str(&format!("cometbft {c} {k} {h} {r} {s}\n"));
            }
            for ((k, c), n) in &st.nonces {
                text.push_str(&format!("evm {k} {c} {n}\n"));
            }
        }
        let tmp = dir.join(format!("{FILE}.tmp"));
        let path = dir.join(FILE);
        {
            let mut f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
            f.write_all(text.as_bytes()).map_err(|e| io(&tmp, e))?;
            f.sync_all().map_err(|e| io(&tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(Vec::new())
    }
}

/// The database's system identifier and current timeline.
pub(crate) fn identity(tx: &Tx<'_>) -> Result<Identity, StoreError> {
    let row = tx
        .query_opt(
            "SELECT CAST(system_identifier AS TEXT), \
             substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) FROM pg_control_system()",
            &[],
        )?
        .ok_or_else(|| StoreError::Unavailable("pg_control_system() returned nothing".into()))?;
    let (sysid, tli): (String, String) = (row.get(0)?, row.get(1)?);
    let timeline = u32::from_str_radix(&tli, 16)
        .map_err(|_| StoreError::Unavailable(format!("unreadable timeline {tli:?}")))?;
    Ok(Identity {
        system_identifier: sysid,
        timeline,
    })
}

impl State {
    fn apply(&mut self, line: &str) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["identity", sysid, tli] => {
                if let Ok(timeline) = tli.parse() {
                    self.identity = Some(Identity {
                        system_identifier: (*sysid).to_owned(),
                        timeline,
                    });
                }
            }
            ["cometbft", chain, key, h, r, s] => {
                if let (Ok(h), Ok(r), Ok(s)) = (h.parse(), r.parse(), s.parse()) {
                    let k = ((*chain).to_owned(), (*key).to_owned());
                    let v = (h, r, s);
                    if self.votes.get(&k).is_none_or(|was| *was < v) {
                        self.votes.insert(k, v);
                    }
                }
            }
            ["evm", key, chain, n] => {
                if let (Ok(c), Ok(n)) = (chain.parse(), n.parse::<u64>()) {
                    let k = ((*key).to_owned(), c);
                    if self.nonces.get(&k).is_none_or(|was| *was < n) {
                        self.nonces.insert(k, n);
                    }
                }
            }
            _ => {} // a torn last line, or a blank one
        }
    }

    fn append(&mut self, text: &str) -> std::io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A torn last line (a crash mid-append), garbage and lower marks never lower what was
    /// recorded; the highest mark per key wins.
    #[test]
    fn the_record_keeps_the_highest_marks_and_ignores_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE),
            "identity 7715588520724870276 1\ncometbft c k 10 0 3\ncometbft c k 9 9 9\n\
             evm k 1 5\nevm k 1 4\nnonsense\ncometbft c k 99",
        )
        .unwrap();
        let wire = Tripwire::open(dir.path()).unwrap();
        let st = wire.lock();
        assert_eq!(st.votes[&("c".into(), "k".into())], (10, 0, 3));
        assert_eq!(st.nonces[&("k".into(), 1)], 5);
        assert_eq!(
            st.identity,
            Some(Identity {
                system_identifier: "7715588520724870276".into(),
                timeline: 1
            })
        );
        assert!(st.tripped.is_empty());
    }
}
