//! `keyguard store copy`: an existing SQLite instance's state into the shared PostgreSQL store.
//!
//! Everything moves in one PostgreSQL transaction (all or nothing): users, clients, key
//! controls, proposals, approvals and votes, velocity events, EVM nonces, CometBFT watermarks,
//! signet heights, eth2 slashing protection, Bitcoin claims and kept transactions, the sealing parameters, and the audit log row by row
//! with its hashes (the chain continues in PostgreSQL, and is verified there before the
//! commit). Newer state is never overwritten: the copy is refused if the shared store already
//! has audit rows, or holds a watermark, nonce or claim that differs from the file's.

use std::path::Path;

use super::db::{vals, Conn, PgLink, Tx, Val};
use super::{read, StoreError};
use crate::config::PgSettings;

/// Tables and the columns copied (PostgreSQL assigns its own serial ids).
const TABLES: &[(&str, &str, &str)] = &[
    ("users", "name, roles, groups, totp_secret, last_totp_step, created_ms, totp_sealed, totp_failures, locked_until_ms", "name"),
    ("secret_kdf", "id, salt, memory_kib, iterations, parallelism, check_value", "id"),
    ("clients", "name, token_sha256, scope, created_ms, created_by, updated_ms, updated_by", "name"),
    ("key_controls", "key_id, disabled, changed_ms, changed_by", "key_id"),
    ("admin_proposals", "action, proposer, created_ms, expires_ms", "action, proposer"),
    ("approvals", "id, key_id, intent_digest, requester, chain, summary, rule, grp, required, created_ms, expires_ms, state, consumed_ms", "rowid"),
    ("approval_votes", "approval_id, \"user\", vote, ts_ms", "approval_id, \"user\""),
    ("velocity_events", "key_id, counter, ts_ms, amount, request_id", "id"),
    ("bitcoin_signed_txs", "txid, key_id, ts_ms, request_id, psbt, tx_hex", "txid, key_id"),
    ("bitcoin_claim_releases", "key_id, outpoint, txid, released_ms, released_by", "key_id, outpoint, txid"),
    ("console_passkeys", "cred_id, user_name, passkey, created_ms", "cred_id"),
];

/// Rows whose conflict with the shared store refuses the copy (`key`: the primary key).
const FENCED: &[(&str, &str, &str)] = &[
    ("evm_nonces", "key_id, chain_id, nonce, sighash, max_fee, tip, request_id", "key_id, chain_id, nonce"),
    ("cometbft_watermarks", "chain_id, key_id, height, round, step, block_id, sign_bytes, signature, ext_signature, source, updated_ms, released_height, released_round, released_step", "chain_id, key_id"),
    ("bitcoin_claims", "key_id, outpoint, txid, ts_ms, request_id", "key_id, outpoint"),
    ("signet_heights", "challenge, key_id, height, max_height, commitment, prev_hash, merkle_root, version, block_time, recent, request_id, updated_ms", "challenge, key_id"),
    // Eth2 slashing protection: a history left behind would let a moved validator double sign.
    ("eth2_validators", "pubkey, min_block_slot, min_source, min_target, prune_block_slot, prune_source, prune_target, created_ms", "pubkey"),
    ("eth2_signed_blocks", "pubkey, slot, signing_root", "pubkey, slot"),
    ("eth2_signed_attestations", "pubkey, source, target, signing_root", "pubkey, target"),
];

const AUDIT: &str = "seq, ts_ms, request_id, client, key_id, chain, method, summary, decision, \
                     rule, reason, tx_hash, prev_hash, hash";

/// What was copied.
#[derive(Debug, Default)]
pub struct CopyReport {
    /// `(table, rows)` in copy order.
    pub tables: Vec<(String, usize)>,
    /// Audit rows and the head they end at.
    pub audit_rows: u64,
}

fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Copies the (migrated) SQLite database at `from` into the PostgreSQL store `to`.
pub fn copy(from: &Path, to: &PgSettings) -> Result<CopyReport, StoreError> {
    // Bring the file to the current schema first (a no-op when it is).
    super::Store::open(from)?.close()?;
    let src = rusqlite::Connection::open_with_flags(
        from,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: from.to_path_buf(),
        source,
    })?;
    let src = Tx::Sqlite(&src);
    let mut dst = Conn::Pg(PgLink::new(to.clone()));
    super::migrations::migrate_conn(&mut dst)?;
    dst.transaction(|tx| {
        let head: i64 = tx
            .query_opt("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE", &[])?
            .map_or(Ok(0), |r| r.get(0))?;
        if head > 0 {
            return Err(StoreError::Unavailable(format!(
                "the shared store already has {head} audit rows; refusing to merge another log \
                 into it (copy into an empty database)"
            )));
        }
        let mut report = CopyReport::default();
        for (table, cols, order) in FENCED {
            let n = copy_fenced(&src, tx, table, cols, order)?;
            report.tables.push(((*table).to_owned(), n));
        }
        for (table, cols, order) in TABLES {
            let rows = src.query(&format!("SELECT {cols} FROM {table} ORDER BY {order}"), &[])?;
            let sql = format!(
                "INSERT INTO {table} ({cols}) VALUES ({}) ON CONFLICT DO NOTHING",
                placeholders(cols.split(',').count())
            );
            for r in &rows {
                tx.execute(&sql, &r.0)?;
            }
            report.tables.push(((*table).to_owned(), rows.len()));
        }
        report.audit_rows = copy_audit(&src, tx)?;
        Ok(report)
    })
}

/// Copies rows that fence signatures; one that differs from a row already shared refuses the
/// whole copy (the shared row may be newer: another instance signed with it).
fn copy_fenced(
    src: &Tx<'_>,
    tx: &Tx<'_>,
    table: &str,
    cols: &str,
    key: &str,
) -> Result<usize, StoreError> {
    let rows = src.query(&format!("SELECT {cols} FROM {table} ORDER BY {key}"), &[])?;
    let n_key = key.split(',').count();
    let key_cond = key
        .split(',')
        .enumerate()
        .map(|(i, k)| format!("{} = ${}", k.trim(), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    let insert = format!(
        "INSERT INTO {table} ({cols}) VALUES ({}) ON CONFLICT DO NOTHING",
        placeholders(cols.split(',').count())
    );
    for r in &rows {
        let existing = tx.query_opt(
            &format!("SELECT {cols} FROM {table} WHERE {key_cond}"),
            &r.0[..n_key],
        )?;
        match existing {
            Some(e) if e.0 != r.0 => {
                return Err(StoreError::StateConflict(format!(
                    "{table}: the shared store already holds a different row for {:?}; \
                     refusing to overwrite it",
                    shown(&r.0[..n_key])
                )))
            }
            Some(_) => {}
            None => {
                tx.execute(&insert, &r.0)?;
            }
        }
    }
    Ok(rows.len())
}

fn shown(vals: &[Val]) -> Vec<String> {
    vals.iter()
        .map(|v| match v {
            Val::Text(s) => s.clone(),
            Val::Int(i) => i.to_string(),
            Val::Blob(b) => hex::encode(b),
            Val::Null => "NULL".into(),
        })
        .collect()
}

/// The audit log verbatim (seqs and hashes), then the head; verified before the commit.
fn copy_audit(src: &Tx<'_>, tx: &Tx<'_>) -> Result<u64, StoreError> {
    const PAGE: i64 = 2_000;
    let insert = format!(
        "INSERT INTO audit_log ({AUDIT}) VALUES ({})",
        placeholders(AUDIT.split(',').count())
    );
    let mut after = 0i64;
    let mut last: Option<(i64, Vec<u8>)> = None;
    loop {
        let page = src.query(
            &format!("SELECT {AUDIT} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"),
            vals![after, PAGE],
        )?;
        for r in &page {
            tx.execute(&insert, &r.0)?;
            after = r.get(0)?;
            last = Some((after, r.get(13)?));
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    if let Some((seq, hash)) = &last {
        tx.execute(
            "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
            vals![*seq, hash],
        )?;
    }
    let v = read::verify(tx)?;
    Ok(v.rows)
}
