//! Numbered schema migrations, each applied in its own transaction: SQLite's list here,
//! PostgreSQL's in `migrations_pg.rs` (same tables, every integer BIGINT).

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::db::{vals, Conn, Dialect};
use super::{now_ms, StoreError};

/// Every migration the binary knows, in ascending version order. Never edit a released entry:
/// append a new one.
pub(crate) const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        "CREATE TABLE audit_log (
        seq        INTEGER PRIMARY KEY,
        ts_ms      INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        client     TEXT NOT NULL,
        key_id     TEXT,
        chain      TEXT,
        method     TEXT NOT NULL,
        summary    TEXT NOT NULL,
        decision   TEXT NOT NULL,
        rule       TEXT,
        reason     TEXT,
        tx_hash    TEXT,
        prev_hash  BLOB NOT NULL,
        hash       BLOB NOT NULL
    );
    CREATE INDEX audit_log_request_id ON audit_log(request_id);
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;",
    ),
    (
        2,
        // People and control: users with roles and TOTP, M-of-N approvals, the kill switch and
        // two-admin proposals. `key_controls.key_id = '*'` is the all-keys switch.
        "CREATE TABLE users (
        name           TEXT PRIMARY KEY,
        roles          TEXT NOT NULL,
        groups         TEXT NOT NULL,
        totp_secret    BLOB NOT NULL,
        last_totp_step INTEGER NOT NULL DEFAULT 0,
        created_ms     INTEGER NOT NULL
    );
    CREATE TABLE approvals (
        id            TEXT PRIMARY KEY,
        key_id        TEXT NOT NULL,
        intent_digest BLOB NOT NULL,
        requester     TEXT NOT NULL,
        chain         TEXT,
        summary       TEXT NOT NULL,
        rule          TEXT NOT NULL,
        grp           TEXT NOT NULL,
        required      INTEGER NOT NULL,
        created_ms    INTEGER NOT NULL,
        expires_ms    INTEGER NOT NULL,
        state         TEXT NOT NULL,
        consumed_ms   INTEGER
    );
    CREATE INDEX approvals_intent ON approvals(key_id, intent_digest, created_ms);
    CREATE TABLE approval_votes (
        approval_id TEXT NOT NULL REFERENCES approvals(id),
        user        TEXT NOT NULL,
        vote        TEXT NOT NULL,
        ts_ms       INTEGER NOT NULL,
        PRIMARY KEY (approval_id, user)
    );
    CREATE TABLE key_controls (
        key_id     TEXT PRIMARY KEY,
        disabled   INTEGER NOT NULL,
        changed_ms INTEGER NOT NULL,
        changed_by TEXT NOT NULL
    );
    CREATE TABLE admin_proposals (
        action     TEXT NOT NULL,
        proposer   TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        PRIMARY KEY (action, proposer)
    );",
    ),
    // Conflict-guard state of the EVM policy engine (see store/ledger.rs).
    (
        3,
        "CREATE TABLE velocity_events (
            id         INTEGER PRIMARY KEY,
            key_id     TEXT NOT NULL,
            counter    TEXT NOT NULL,
            ts_ms      INTEGER NOT NULL,
            amount     TEXT NOT NULL,
            request_id TEXT NOT NULL
        );
        CREATE INDEX velocity_events_ts ON velocity_events(ts_ms);
        CREATE TABLE evm_nonces (
            key_id     TEXT NOT NULL,
            chain_id   INTEGER NOT NULL,
            nonce      INTEGER NOT NULL,
            sighash    BLOB NOT NULL,
            max_fee    TEXT NOT NULL,
            tip        TEXT NOT NULL,
            request_id TEXT NOT NULL,
            PRIMARY KEY (key_id, chain_id, nonce)
        );",
    ),
    (
        4,
        // The CometBFT double-sign watermark: the last height/round/step signed per chain and
        // key, with what was signed, so a timestamp-only repeat gets the same signature back.
        "CREATE TABLE cometbft_watermarks (
        chain_id      TEXT NOT NULL,
        key_id        TEXT NOT NULL,
        height        INTEGER NOT NULL,
        round         INTEGER NOT NULL,
        step          INTEGER NOT NULL,
        block_id      BLOB NOT NULL,
        sign_bytes    BLOB NOT NULL,
        signature     BLOB NOT NULL,
        ext_signature BLOB NOT NULL,
        source        TEXT NOT NULL,
        updated_ms    INTEGER NOT NULL,
        PRIMARY KEY (chain_id, key_id)
    );",
    ),
    (
        5,
        // Clients managed through the admin API (only the token's hash is kept; the scope is
        // JSON); TOTP secrets sealed under a key from the keystore passphrase (`secret_kdf`
        // holds its salt, cost and a check value); consecutive wrong TOTP codes and the lockout
        // they cause, durable so a restart does not reset a brute-force attempt.
        "CREATE TABLE clients (
        name         TEXT PRIMARY KEY,
        token_sha256 BLOB NOT NULL UNIQUE,
        scope        TEXT NOT NULL,
        created_ms   INTEGER NOT NULL,
        created_by   TEXT NOT NULL,
        updated_ms   INTEGER NOT NULL,
        updated_by   TEXT NOT NULL
    );
    CREATE TABLE secret_kdf (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        salt        BLOB NOT NULL,
        memory_kib  INTEGER NOT NULL,
        iterations  INTEGER NOT NULL,
        parallelism INTEGER NOT NULL,
        check_value BLOB NOT NULL
    );
    ALTER TABLE users ADD COLUMN totp_sealed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN totp_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN locked_until_ms INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        6,
        // Chain state an operator may need to repair: the highest height/round/step this
        // instance released per watermark (a repair never goes below it; rows from before are
        // taken as released up to their watermark); Bitcoin transactions as signed (to show
        // and broadcast); conflict-guard claims released by two admins.
        "ALTER TABLE cometbft_watermarks ADD COLUMN released_height INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE cometbft_watermarks ADD COLUMN released_round INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE cometbft_watermarks ADD COLUMN released_step INTEGER NOT NULL DEFAULT 0;
    UPDATE cometbft_watermarks SET released_height = height, released_round = round,
        released_step = step;
    CREATE TABLE bitcoin_signed_txs (
        txid       TEXT NOT NULL,
        key_id     TEXT NOT NULL,
        ts_ms      INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        psbt       TEXT NOT NULL,
        tx_hex     TEXT,
        PRIMARY KEY (txid, key_id)
    );
    CREATE TABLE bitcoin_claim_releases (
        key_id      TEXT NOT NULL,
        outpoint    TEXT NOT NULL,
        txid        TEXT NOT NULL,
        released_ms INTEGER NOT NULL,
        released_by TEXT NOT NULL,
        PRIMARY KEY (key_id, outpoint, txid)
    );",
    ),
    (
        7,
        // The Bitcoin conflict guard as rows (one claim per outpoint, fenced in the statement
        // that writes it), so a second process or instance cannot sign a conflicting spend.
        "CREATE TABLE bitcoin_claims (
        key_id     TEXT NOT NULL,
        outpoint   TEXT NOT NULL,
        txid       TEXT NOT NULL,
        ts_ms      INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        PRIMARY KEY (key_id, outpoint)
    );
    CREATE INDEX velocity_events_counter ON velocity_events(key_id, counter, ts_ms);",
    ),
    (
        8,
        // The signet block watermark: per network (challenge script, hex) and key, the last
        // block signed (height, its BIP325 commitment, previous block, merkle root with the
        // solution, version, time), the highest height ever signed (a reorg the operator
        // allows lowers `height`, never `max_height`), and "height:time" of recent blocks for
        // the median-time-past rule. Integer and text columns only (PostgreSQL: BIGINT for the
        // integers, `updated_ms` is milliseconds).
        "CREATE TABLE signet_heights (
        challenge   TEXT NOT NULL,
        key_id      TEXT NOT NULL,
        height      INTEGER NOT NULL,
        max_height  INTEGER NOT NULL,
        commitment  TEXT NOT NULL,
        prev_hash   TEXT NOT NULL,
        merkle_root TEXT NOT NULL,
        version     INTEGER NOT NULL,
        block_time  INTEGER NOT NULL,
        recent      TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        updated_ms  INTEGER NOT NULL,
        PRIMARY KEY (challenge, key_id)
    );",
    ),
    (
        9,
        // Ethereum consensus slashing protection (EIP-3076, complete history): every block
        // slot and attestation (source, target) signed per BLS key, with the signing root so a
        // repeat of the same message is allowed; per key the low watermarks an interchange
        // import set (history keyguard cannot see). Checked and written by one conditional
        // INSERT (store/eth2_slashing.rs).
        "CREATE TABLE eth2_validators (
        pubkey         BLOB PRIMARY KEY,
        min_block_slot INTEGER,
        min_source     INTEGER,
        min_target     INTEGER,
        prune_block_slot INTEGER,
        prune_source   INTEGER,
        prune_target   INTEGER,
        created_ms     INTEGER NOT NULL
    );
    CREATE TABLE eth2_signed_blocks (
        pubkey       BLOB NOT NULL,
        slot         INTEGER NOT NULL,
        signing_root BLOB,
        PRIMARY KEY (pubkey, slot)
    );
    CREATE TABLE eth2_signed_attestations (
        pubkey       BLOB NOT NULL,
        source       INTEGER NOT NULL,
        target       INTEGER NOT NULL,
        signing_root BLOB,
        PRIMARY KEY (pubkey, target)
    );
    CREATE INDEX eth2_signed_attestations_source ON eth2_signed_attestations(pubkey, source);",
    ),
    (
        10,
        // console-passkeys (web console, docs/console.md; renumbered at the merge, after eth2):
        // WebAuthn credentials bound to a user after they proved their TOTP. `passkey` is the
        // serialized webauthn-rs credential (public key and signature counter, no secret).
        "CREATE TABLE console_passkeys (
        cred_id    TEXT PRIMARY KEY,
        user_name  TEXT NOT NULL,
        passkey    TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX console_passkeys_user ON console_passkeys(user_name);",
    ),
];

/// The newest schema version this binary understands (SQLite's list).
pub(crate) fn known_version() -> u32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// The newest migration of `dialect`'s list.
pub(crate) fn known_version_of(dialect: Dialect) -> u32 {
    list(dialect).last().map_or(0, |(v, _)| *v)
}

fn list(dialect: Dialect) -> &'static [(u32, &'static str)] {
    match dialect {
        Dialect::Sqlite => MIGRATIONS,
        Dialect::Postgres => super::migrations_pg::MIGRATIONS,
    }
}

/// The version recorded by either engine (0 for a fresh database).
pub(crate) fn version_of(conn: &mut Conn) -> Result<u32, StoreError> {
    match conn {
        Conn::Sqlite(c) => current_version(c),
        Conn::Pg(_) => conn.with(|t| {
            let exists = t.query_opt(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() \
                 AND table_name = 'schema_migrations'",
                &[],
            )?;
            if exists.is_none() {
                return Ok(0);
            }
            let v: Option<i64> = t
                .query_opt("SELECT MAX(version) FROM schema_migrations", &[])?
                .map(|r| r.get(0))
                .transpose()?
                .flatten();
            Ok(v.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)))
        }),
    }
}

/// Brings either engine's schema up to date. On PostgreSQL, instances starting together
/// serialize on an exclusive lock of the version table; each migration is one transaction.
pub(crate) fn migrate_conn(conn: &mut Conn) -> Result<u32, StoreError> {
    match conn {
        Conn::Sqlite(c) => migrate(c),
        Conn::Pg(_) => {
            let known = list(Dialect::Postgres).last().map_or(0, |(v, _)| *v);
            conn.with(|t| {
                t.batch(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (
                        version BIGINT PRIMARY KEY,
                        applied_at_ms BIGINT
                    )",
                )
            })?;
            for &(version, sql) in list(Dialect::Postgres) {
                let applied = conn.transaction(|t| {
                    t.batch("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")?;
                    let found: Option<i64> = t
                        .query_opt("SELECT MAX(version) FROM schema_migrations", &[])?
                        .map(|r| r.get(0))
                        .transpose()?
                        .flatten();
                    let found = found.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX));
                    if found > known {
                        return Err(StoreError::TooNew { found, known });
                    }
                    if found >= version {
                        return Ok(false);
                    }
                    t.batch(sql)?;
                    t.execute(
                        "INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)",
                        vals![i64::from(version), now_ms()],
                    )?;
                    Ok(true)
                })?;
                if applied {
                    tracing::info!(version, "applied PostgreSQL store migration");
                }
            }
            let found = version_of(conn)?;
            if found > known {
                return Err(StoreError::TooNew { found, known });
            }
            Ok(known)
        }
    }
}

/// The schema version recorded in the database (0 for a fresh one).
pub(crate) fn current_version(conn: &Connection) -> Result<u32, StoreError> {
    let has_table: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if has_table.is_none() {
        return Ok(0);
    }
    let v: Option<i64> = conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
        r.get(0)
    })?;
    Ok(v.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)))
}

/// Brings the schema up to [`known_version`]; refuses a database written by a newer binary.
pub(crate) fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at_ms INTEGER
        )",
    )?;
    let found = current_version(conn)?;
    let known = known_version();
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?1, ?2)",
                params![i64::from(version), now_ms()],
            )?;
            tx.commit()
        };
        apply(conn).map_err(|source| StoreError::Migration { version, source })?;
        tracing::info!(version, "applied store migration");
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_strictly_ascending_from_one() {
        assert_eq!(MIGRATIONS[0].0, 1);
        for pair in MIGRATIONS.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "migrations out of order: {:?}",
                pair[1].0
            );
        }
    }

    #[test]
    fn migrate_is_idempotent_and_refuses_newer() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), known_version());
        assert_eq!(migrate(&mut conn).unwrap(), known_version());
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, MIGRATIONS.len() as i64);
        conn.execute("INSERT INTO schema_migrations VALUES (999, 0)", [])
            .unwrap();
        match migrate(&mut conn) {
            Err(StoreError::TooNew { found: 999, known }) => assert_eq!(known, known_version()),
            other => panic!("expected TooNew, got {other:?}"),
        }
    }
}
