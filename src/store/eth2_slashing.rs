//! Ethereum consensus slashing protection (EIP-3076, complete history) in keyguard's store, so
//! SQLite and the shared PostgreSQL store carry it alike.
//!
//! Each signing is checked and recorded by ONE conditional `INSERT ... SELECT ... WHERE NOT
//! EXISTS (conflict) ON CONFLICT DO NOTHING RETURNING`, inside a transaction that on
//! PostgreSQL first locks the key's `eth2_validators` row (`FOR UPDATE`): the unique key stops
//! two blocks for one slot or two votes for one target, and the lock orders writers of one
//! key so two surrounding attestations racing from two instances cannot both see "no
//! conflict" (the check-then-write race of GHSA-6wxf-7784-62fp). SQLite's IMMEDIATE
//! transaction already serializes writers. The row is committed before the key signs, so no
//! signature can leave unrecorded. A statement that wrote nothing is then classified (a
//! repeat of the same signing root is allowed; anything else is refused by rule).

use std::sync::{Arc, MutexGuard};

use keyguard_chain::rules::eth2 as rule;
use keyguard_eth2::interchange::{Interchange, ValidatorHistory};

use super::db::{vals, Conn, Dialect, Shared, Tx};
use super::{now_ms, StoreError};

/// Why a signing was refused, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum SlashingError {
    /// A slashing-protection rule refused it; nothing was recorded.
    #[error("{rule}: {reason}")]
    Refused {
        /// Rule name (`eth2.double_vote`, ...).
        rule: &'static str,
        /// Why, with the conflicting record.
        reason: String,
    },
    /// The database failed; treat as refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A signing that may proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A new record was written.
    New,
    /// The same message (same signing root) was signed before; nothing new written.
    Repeat,
}

/// Which checks run; every production path uses [`Checks::ALL`]. The surround check can be
/// switched off only by the test-only fault `eth2-no-surround` (negative control).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Checks {
    pub(crate) surround: bool,
    /// EIP-3076's minimal strategy (`[eth2] slashing_strategy = "minimal"`): every signing
    /// must be above every one signed before (no repeat, no older message), on top of the
    /// complete checks.
    pub(crate) minimal: bool,
    /// Test-only negative control of the race: check in one transaction, write in another.
    #[cfg(test)]
    pub(crate) split: bool,
}

impl Checks {
    pub(crate) const ALL: Checks = Checks {
        surround: true,
        minimal: false,
        #[cfg(test)]
        split: false,
    };

    fn active(minimal: bool) -> Checks {
        let c = Checks {
            minimal,
            ..Checks::ALL
        };
        #[cfg(feature = "fault-injection")]
        if super::fault::is(super::fault::Fault::Eth2NoSurround) {
            return Checks {
                surround: false,
                ..c
            };
        }
        c
    }
}

fn int(v: u64, what: &str) -> Result<i64, SlashingError> {
    i64::try_from(v).map_err(|_| SlashingError::Refused {
        rule: rule::CLOCK_WINDOW,
        reason: format!("{what} {v} is beyond 2^63-1"),
    })
}

fn refused(rule: &'static str, reason: String) -> SlashingError {
    SlashingError::Refused { rule, reason }
}

/// Creates the key's row and, on PostgreSQL, locks it for the rest of the transaction, in one
/// round trip: an existing row is locked by `FOR UPDATE`; a row this statement inserts is not
/// visible to its own `SELECT`, but is ours until commit (another transaction inserting the
/// same key waits on it), so either way a second signer of this key waits for this commit.
fn lock_validator(tx: &Tx<'_>, pubkey: &[u8]) -> Result<(), StoreError> {
    if tx.dialect() == Dialect::Postgres {
        tx.query(
            "WITH created AS (INSERT INTO eth2_validators (pubkey, created_ms) VALUES ($1, $2) \
             ON CONFLICT (pubkey) DO NOTHING RETURNING pubkey) \
             SELECT pubkey FROM eth2_validators WHERE pubkey = $1 FOR UPDATE",
            vals![pubkey, now_ms()],
        )?;
        return Ok(());
    }
    tx.execute(
        "INSERT INTO eth2_validators (pubkey, created_ms) VALUES ($1, $2) \
         ON CONFLICT (pubkey) DO NOTHING",
        vals![pubkey, now_ms()],
    )?;
    Ok(())
}

/// The record at this slot / target holds the same signing root: a repeat (signed again), or
/// under the minimal strategy a refusal; `None` when it is another message (a conflict).
fn same_message(
    stored: Option<&[u8]>,
    root: Option<&[u8; 32]>,
    checks: Checks,
    what: impl FnOnce() -> String,
) -> Option<Result<Recorded, SlashingError>> {
    match (stored, root) {
        (Some(a), Some(b)) if a == b.as_slice() => Some(if checks.minimal {
            Err(refused(
                rule::NOT_INCREASING,
                format!(
                    "{} was signed before (minimal strategy: no repeats)",
                    what()
                ),
            ))
        } else {
            Ok(Recorded::Repeat)
        }),
        _ => None,
    }
}

/// Check and record a block proposal at `slot` (in the caller's transaction).
pub(crate) fn block_in(
    tx: &Tx<'_>,
    pubkey: &[u8; 48],
    slot: u64,
    root: Option<&[u8; 32]>,
    checks: Checks,
) -> Result<Recorded, SlashingError> {
    let s = int(slot, "slot")?;
    lock_validator(tx, pubkey)?;
    let minimal = if checks.minimal {
        " AND NOT EXISTS (SELECT 1 FROM eth2_signed_blocks b WHERE b.pubkey = $1 AND b.slot >= $2)"
    } else {
        ""
    };
    let wrote = !tx
        .query(
            &format!(
                "INSERT INTO eth2_signed_blocks (pubkey, slot, signing_root) SELECT $1, $2, $3 \
                 WHERE NOT EXISTS (SELECT 1 FROM eth2_validators v WHERE v.pubkey = $1 \
                    AND ((v.min_block_slot IS NOT NULL AND v.min_block_slot >= $2) \
                         OR (v.prune_block_slot IS NOT NULL AND v.prune_block_slot >= $2))){minimal} \
                 ON CONFLICT (pubkey, slot) DO NOTHING RETURNING slot"
            ),
            vals![&pubkey[..], s, root.map(|r| r.to_vec())],
        )?
        .is_empty();
    if wrote {
        return Ok(Recorded::New);
    }
    let existing = tx.query_opt(
        "SELECT signing_root FROM eth2_signed_blocks WHERE pubkey = $1 AND slot = $2",
        vals![&pubkey[..], s],
    )?;
    if let Some(row) = existing {
        let stored: Option<Vec<u8>> = row.get(0)?;
        if let Some(r) = same_message(stored.as_deref(), root, checks, || format!("slot {slot}")) {
            return r;
        }
        return Err(refused(
            rule::DOUBLE_PROPOSAL,
            format!("a different block for slot {slot} was already signed"),
        ));
    }
    if checks.minimal {
        if let Some(row) = tx.query_opt(
            "SELECT slot FROM eth2_signed_blocks WHERE pubkey = $1 AND slot >= $2 LIMIT 1",
            vals![&pubkey[..], s],
        )? {
            let signed: i64 = row.get(0)?;
            return Err(refused(
                rule::NOT_INCREASING,
                format!("slot {slot} is not above the signed slot {signed} (minimal strategy)"),
            ));
        }
    }
    Err(refused(
        rule::BELOW_WATERMARK,
        format!("slot {slot} is at or below an imported or pruned low watermark"),
    ))
}

/// Check and record an attestation `source -> target` (in the caller's transaction).
pub(crate) fn attestation_in(
    tx: &Tx<'_>,
    pubkey: &[u8; 48],
    source: u64,
    target: u64,
    root: Option<&[u8; 32]>,
    checks: Checks,
) -> Result<Recorded, SlashingError> {
    if source > target {
        return Err(refused(
            rule::SOURCE_AFTER_TARGET,
            format!("source epoch {source} is after target epoch {target}"),
        ));
    }
    let (s, t) = (int(source, "source epoch")?, int(target, "target epoch")?);
    lock_validator(tx, pubkey)?;
    let same_target = match root {
        // A different (or unknown) root at this target; the exact repeat is left to ON CONFLICT.
        Some(_) => "(a.target = $3 AND (a.signing_root IS NULL OR a.signing_root <> $4))",
        None => "a.target = $3",
    };
    let surround = if checks.surround {
        " OR (a.source < $2 AND a.target > $3) OR (a.source > $2 AND a.target < $3)"
    } else {
        ""
    };
    let minimal = if checks.minimal {
        " OR a.source > $2 OR a.target >= $3"
    } else {
        ""
    };
    let sql = format!(
        "INSERT INTO eth2_signed_attestations (pubkey, source, target, signing_root) \
         SELECT $1, $2, $3, $4 \
         WHERE NOT EXISTS (SELECT 1 FROM eth2_signed_attestations a WHERE a.pubkey = $1 \
            AND ({same_target}{surround}{minimal})) \
         AND NOT EXISTS (SELECT 1 FROM eth2_validators v WHERE v.pubkey = $1 AND \
            ((v.min_source IS NOT NULL AND v.min_source > $2) \
             OR (v.min_target IS NOT NULL AND v.min_target >= $3) \
             OR (v.prune_source IS NOT NULL AND v.prune_source > $2) \
             OR (v.prune_target IS NOT NULL AND v.prune_target >= $3))) \
         ON CONFLICT (pubkey, target) DO NOTHING RETURNING target"
    );
    let root_val = root.map(|r| r.to_vec());
    if !tx
        .query(&sql, vals![&pubkey[..], s, t, root_val.clone()])?
        .is_empty()
    {
        return Ok(Recorded::New);
    }
    classify_attestation(tx, pubkey, (source, s), (target, t), root, checks)
}

/// Why the conditional insert wrote nothing: a repeat (allowed) or the first rule it breaks.
fn classify_attestation(
    tx: &Tx<'_>,
    pubkey: &[u8; 48],
    (source, s): (u64, i64),
    (target, t): (u64, i64),
    root: Option<&[u8; 32]>,
    checks: Checks,
) -> Result<Recorded, SlashingError> {
    let pk = &pubkey[..];
    if let Some(row) = tx.query_opt(
        "SELECT source, signing_root FROM eth2_signed_attestations WHERE pubkey = $1 AND target = $2",
        vals![pk, t],
    )? {
        let stored: Option<Vec<u8>> = row.get(1)?;
        let stored_source: i64 = row.get(0)?;
        if let Some(r) = same_message(stored.as_deref(), root, checks, || {
            format!("{source}->{target}")
        }) {
            return r;
        }
        return Err(refused(
            rule::DOUBLE_VOTE,
            format!("a different attestation for target epoch {target} (source {stored_source}) was already signed"),
        ));
    }
    if checks.surround {
        if let Some(row) = tx.query_opt(
            "SELECT source, target FROM eth2_signed_attestations WHERE pubkey = $1 AND \
             ((source < $2 AND target > $3) OR (source > $2 AND target < $3)) LIMIT 1",
            vals![pk, s, t],
        )? {
            let (os, ot): (i64, i64) = (row.get(0)?, row.get(1)?);
            let how = if os < s {
                "is surrounded by"
            } else {
                "surrounds"
            };
            return Err(refused(
                rule::SURROUND_VOTE,
                format!("{source}->{target} {how} the signed attestation {os}->{ot}"),
            ));
        }
    }
    if checks.minimal {
        if let Some(row) = tx.query_opt(
            "SELECT source, target FROM eth2_signed_attestations WHERE pubkey = $1 AND \
             (source > $2 OR target >= $3) LIMIT 1",
            vals![pk, s, t],
        )? {
            let (os, ot): (i64, i64) = (row.get(0)?, row.get(1)?);
            return Err(refused(
                rule::NOT_INCREASING,
                format!(
                    "{source}->{target} is not above the signed attestation {os}->{ot} \
                     (minimal strategy)"
                ),
            ));
        }
    }
    Err(refused(
        rule::BELOW_WATERMARK,
        format!("{source}->{target} is at or below an imported or pruned low watermark"),
    ))
}

/// Handle to the slashing-protection tables (its own connection; blocking calls).
#[derive(Clone)]
pub struct SlashingStore {
    conn: Arc<Shared>,
    batch: super::eth2_batch::Batcher,
    /// EIP-3076's minimal strategy on top of the complete checks.
    minimal: bool,
}

impl std::fmt::Debug for SlashingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlashingStore")
    }
}

/// What an interchange import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Keys in the file.
    pub validators: usize,
    /// Block rows new to the store.
    pub blocks: usize,
    /// Attestation rows new to the store.
    pub attestations: usize,
}

impl SlashingStore {
    pub(crate) fn new(conn: Conn) -> Self {
        let conn = Arc::new(Shared::new(conn));
        SlashingStore {
            batch: super::eth2_batch::Batcher::spawn(&conn),
            conn,
            minimal: false,
        }
    }

    /// This handle with EIP-3076's minimal strategy (`[eth2] slashing_strategy`): every
    /// block and attestation must be above all signed before, repeats included, on top of the
    /// complete checks. The history kept is still complete (export, import, audit).
    pub fn with_minimal_strategy(mut self, minimal: bool) -> Self {
        self.minimal = minimal;
        self
    }

    fn conn(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock()
    }

    /// The shared connection, for tests that commit a batch of their own.
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.conn
    }

    /// Checks and durably records a block proposal before it is signed.
    pub fn sign_block(
        &self,
        pubkey: &[u8; 48],
        slot: u64,
        root: Option<&[u8; 32]>,
    ) -> Result<Recorded, SlashingError> {
        self.batch.submit(super::eth2_batch::Job::Block {
            pubkey: *pubkey,
            slot,
            root: root.copied(),
            checks: Checks::active(self.minimal),
        })
    }

    /// Checks and durably records an attestation before it is signed.
    pub fn sign_attestation(
        &self,
        pubkey: &[u8; 48],
        source: u64,
        target: u64,
        root: Option<&[u8; 32]>,
    ) -> Result<Recorded, SlashingError> {
        self.sign_attestation_with(pubkey, source, target, root, Checks::active(self.minimal))
    }

    pub(crate) fn sign_attestation_with(
        &self,
        pubkey: &[u8; 48],
        source: u64,
        target: u64,
        root: Option<&[u8; 32]>,
        checks: Checks,
    ) -> Result<Recorded, SlashingError> {
        #[cfg(test)]
        if checks.split {
            // The check-then-write race on purpose (negative control of the race test).
            self.conn().transaction(|t| {
                classify_attestation(
                    t,
                    pubkey,
                    (source, int(source, "s")?),
                    (target, int(target, "t")?),
                    root,
                    checks,
                )
                .map(|_| ())
                .or_else(|e| match e {
                    SlashingError::Refused {
                        rule: rule::BELOW_WATERMARK,
                        ..
                    } => Ok(()),
                    e => Err(e),
                })
            })?;
            std::thread::sleep(std::time::Duration::from_millis(30));
            return self.conn().transaction(|t| {
                lock_validator(t, pubkey)?;
                t.execute(
                    "INSERT INTO eth2_signed_attestations (pubkey, source, target, signing_root) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (pubkey, target) DO NOTHING",
                    vals![
                        &pubkey[..],
                        int(source, "s")?,
                        int(target, "t")?,
                        root.map(|r| r.to_vec())
                    ],
                )?;
                Ok(Recorded::New)
            });
        }
        self.batch.submit(super::eth2_batch::Job::Attestation {
            pubkey: *pubkey,
            source,
            target,
            root: root.copied(),
            checks,
        })
    }

    /// Imports an EIP-3076 file whose genesis validators root must be `gvr`: every record is
    /// kept (complete history) and the key's low watermarks are the lowest slot, source and
    /// target any import carried. One transaction: all or nothing.
    pub fn import(
        &self,
        file: &Interchange,
        gvr: &[u8; 32],
    ) -> Result<ImportReport, SlashingError> {
        if &file.genesis_validators_root != gvr {
            return Err(refused(
                rule::NETWORK,
                "the interchange file is for another genesis validators root".into(),
            ));
        }
        self.conn().transaction(|t| {
            let mut rep = ImportReport {
                validators: file.data.len(),
                ..Default::default()
            };
            for h in &file.data {
                rep_add(&mut rep, import_one(t, h)?);
            }
            Ok(rep)
        })
    }

    /// Deletes blocks below `before_slot` and attestations with a target below
    /// `before_epoch`, first raising each key's prune watermarks to the highest slot, source
    /// and target deleted, so nothing pruned can be signed again (a double vote or surround
    /// against a deleted record is refused as below the watermark). One transaction. The rows
    /// deleted (blocks, attestations).
    pub fn prune(&self, before_slot: u64, before_epoch: u64) -> Result<(u64, u64), SlashingError> {
        self.prune_with(before_slot, before_epoch, true)
    }

    pub(crate) fn prune_with(
        &self,
        before_slot: u64,
        before_epoch: u64,
        raise: bool,
    ) -> Result<(u64, u64), SlashingError> {
        let (bs, be) = (int(before_slot, "slot")?, int(before_epoch, "epoch")?);
        self.conn().transaction(|t| {
            let keys: Vec<Vec<u8>> = t.column("SELECT pubkey FROM eth2_validators", &[])?;
            let (mut blocks, mut atts) = (0, 0);
            for k in keys {
                let pk = &k[..];
                if t.dialect() == Dialect::Postgres {
                    t.query("SELECT pubkey FROM eth2_validators WHERE pubkey = $1 FOR UPDATE", vals![pk])?;
                }
                let slot: Option<i64> = t
                    .query_opt("SELECT MAX(slot) FROM eth2_signed_blocks WHERE pubkey = $1 AND slot < $2", vals![pk, bs])?
                    .map(|r| r.get(0))
                    .transpose()?
                    .flatten();
                let row = t.query_opt(
                    "SELECT MAX(source), MAX(target) FROM eth2_signed_attestations WHERE pubkey = $1 AND target < $2",
                    vals![pk, be],
                )?;
                let (src, tgt): (Option<i64>, Option<i64>) = match row {
                    Some(r) => (r.get(0)?, r.get(1)?),
                    None => (None, None),
                };
                for (col, v) in [("prune_block_slot", slot), ("prune_source", src), ("prune_target", tgt)] {
                    if let (Some(v), true) = (v, raise) {
                        t.execute(
                            &format!("UPDATE eth2_validators SET {col} = $2 WHERE pubkey = $1 AND ({col} IS NULL OR {col} < $2)"),
                            vals![pk, v],
                        )?;
                    }
                }
                blocks += t.execute("DELETE FROM eth2_signed_blocks WHERE pubkey = $1 AND slot < $2", vals![pk, bs])?;
                atts += t.execute("DELETE FROM eth2_signed_attestations WHERE pubkey = $1 AND target < $2", vals![pk, be])?;
            }
            Ok((blocks, atts))
        })
    }

    /// The records of `keys` only (keymanager delete answers them).
    pub fn export_keys(
        &self,
        gvr: &[u8; 32],
        keys: &[[u8; 48]],
    ) -> Result<Interchange, StoreError> {
        let mut all = self.export(gvr)?;
        all.data.retain(|h| keys.contains(&h.pubkey));
        Ok(all)
    }

    /// Every record, as an EIP-3076 v5 complete file for `gvr`.
    pub fn export(&self, gvr: &[u8; 32]) -> Result<Interchange, StoreError> {
        self.conn().with(|t| {
            let keys: Vec<Vec<u8>> =
                t.column("SELECT pubkey FROM eth2_validators ORDER BY pubkey", &[])?;
            let mut data = Vec::with_capacity(keys.len());
            for k in keys {
                let Ok(pubkey) = <[u8; 48]>::try_from(k.as_slice()) else {
                    continue;
                };
                let mut h = ValidatorHistory {
                    pubkey,
                    blocks: Vec::new(),
                    attestations: Vec::new(),
                };
                for r in t.query(
                    "SELECT slot, signing_root FROM eth2_signed_blocks WHERE pubkey = $1 ORDER BY slot",
                    vals![&k[..]],
                )? {
                    let slot: i64 = r.get(0)?;
                    let root: Option<Vec<u8>> = r.get(1)?;
                    h.blocks.push((slot as u64, root.and_then(|r| r.try_into().ok())));
                }
                for r in t.query(
                    "SELECT source, target, signing_root FROM eth2_signed_attestations \
                     WHERE pubkey = $1 ORDER BY target",
                    vals![&k[..]],
                )? {
                    let (s, tg): (i64, i64) = (r.get(0)?, r.get(1)?);
                    let root: Option<Vec<u8>> = r.get(2)?;
                    h.attestations
                        .push((s as u64, tg as u64, root.and_then(|r| r.try_into().ok())));
                }
                data.push(h);
            }
            Ok(Interchange {
                genesis_validators_root: *gvr,
                data,
            })
        })
    }
}

fn rep_add(rep: &mut ImportReport, (b, a): (usize, usize)) {
    rep.blocks += b;
    rep.attestations += a;
}

fn import_one(t: &Tx<'_>, h: &ValidatorHistory) -> Result<(usize, usize), SlashingError> {
    let pk = &h.pubkey[..];
    lock_validator(t, &h.pubkey)?;
    let mut blocks = 0;
    for (slot, root) in &h.blocks {
        blocks += t.execute(
            "INSERT INTO eth2_signed_blocks (pubkey, slot, signing_root) VALUES ($1, $2, $3) \
             ON CONFLICT (pubkey, slot) DO NOTHING",
            vals![pk, int(*slot, "slot")?, root.map(|r| r.to_vec())],
        )? as usize;
    }
    let mut atts = 0;
    for (s, tg, root) in &h.attestations {
        atts += t.execute(
            "INSERT INTO eth2_signed_attestations (pubkey, source, target, signing_root) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (pubkey, target) DO NOTHING",
            vals![
                pk,
                int(*s, "source epoch")?,
                int(*tg, "target epoch")?,
                root.map(|r| r.to_vec())
            ],
        )? as usize;
    }
    let min_slot = h.blocks.iter().map(|b| b.0).min();
    let min_source = h.attestations.iter().map(|a| a.0).min();
    let min_target = h.attestations.iter().map(|a| a.1).min();
    // The lowest value any import carried (complete strategy: an import is the signer's
    // history, so the gap between two imports is known to be empty; the EIP-3076 test
    // `multiple_interchanges_single_validator_single_message_gap`).
    let lower = |col: &str, v: Option<u64>| -> Result<(), SlashingError> {
        if let Some(v) = v {
            t.execute(
                &format!(
                    "UPDATE eth2_validators SET {col} = $2 WHERE pubkey = $1 \
                     AND ({col} IS NULL OR {col} > $2)"
                ),
                vals![pk, int(v, col)?],
            )?;
        }
        Ok(())
    };
    lower("min_block_slot", min_slot)?;
    lower("min_source", min_source)?;
    lower("min_target", min_target)?;
    Ok((blocks, atts))
}
