//! PostgreSQL schema migrations: the same tables as SQLite's (version 8 of `migrations.rs`),
//! every integer BIGINT (no 32-bit id or sequence that can run out, as Web3Signer's
//! `signed_attestations_id_seq` did), plus what sharing needs: the audit head row that orders
//! the one hash chain across instances, and per-counter rows that order velocity writers.
//! Never edit a released entry: append a new one.

pub(crate) const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        "CREATE TABLE audit_log (
        seq        BIGINT PRIMARY KEY,
        ts_ms      BIGINT NOT NULL,
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
        prev_hash  BYTEA NOT NULL,
        hash       BYTEA NOT NULL
    );
    CREATE INDEX audit_log_request_id ON audit_log(request_id);
    CREATE INDEX audit_log_ts ON audit_log(ts_ms);
    CREATE FUNCTION keyguard_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION keyguard_audit_append_only();
    CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION keyguard_audit_append_only();
    -- The chain's head: every writer locks this row first, so rows get consecutive seqs and
    -- each links to the row before it whichever instance wrote it.
    CREATE TABLE audit_head (
        id   BIGINT PRIMARY KEY CHECK (id = 1),
        seq  BIGINT NOT NULL,
        hash BYTEA NOT NULL
    );
    INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));
    CREATE TABLE users (
        name            TEXT PRIMARY KEY,
        roles           TEXT NOT NULL,
        groups          TEXT NOT NULL,
        totp_secret     BYTEA NOT NULL,
        last_totp_step  BIGINT NOT NULL DEFAULT 0,
        created_ms      BIGINT NOT NULL,
        totp_sealed     BIGINT NOT NULL DEFAULT 0,
        totp_failures   BIGINT NOT NULL DEFAULT 0,
        locked_until_ms BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE approvals (
        ord           BIGSERIAL,
        id            TEXT PRIMARY KEY,
        key_id        TEXT NOT NULL,
        intent_digest BYTEA NOT NULL,
        requester     TEXT NOT NULL,
        chain         TEXT,
        summary       TEXT NOT NULL,
        rule          TEXT NOT NULL,
        grp           TEXT NOT NULL,
        required      BIGINT NOT NULL,
        created_ms    BIGINT NOT NULL,
        expires_ms    BIGINT NOT NULL,
        state         TEXT NOT NULL,
        consumed_ms   BIGINT
    );
    CREATE INDEX approvals_intent ON approvals(key_id, intent_digest);
    CREATE TABLE approval_votes (
        approval_id TEXT NOT NULL REFERENCES approvals(id),
        \"user\"      TEXT NOT NULL,
        vote        TEXT NOT NULL,
        ts_ms       BIGINT NOT NULL,
        PRIMARY KEY (approval_id, \"user\")
    );
    CREATE TABLE key_controls (
        key_id     TEXT PRIMARY KEY,
        disabled   BIGINT NOT NULL,
        changed_ms BIGINT NOT NULL,
        changed_by TEXT NOT NULL
    );
    -- Every signer share-locks this row in the transaction that records its signature and a
    -- switch-off locks it exclusively: the two are strictly ordered across instances.
    INSERT INTO key_controls (key_id, disabled, changed_ms, changed_by) VALUES ('*', 0, 0, '');
    CREATE TABLE admin_proposals (
        action     TEXT NOT NULL,
        proposer   TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        PRIMARY KEY (action, proposer)
    );
    CREATE TABLE velocity_events (
        id         BIGSERIAL PRIMARY KEY,
        key_id     TEXT NOT NULL,
        counter    TEXT NOT NULL,
        ts_ms      BIGINT NOT NULL,
        amount     TEXT NOT NULL,
        request_id TEXT NOT NULL
    );
    CREATE INDEX velocity_events_ts ON velocity_events(ts_ms);
    CREATE INDEX velocity_events_counter ON velocity_events(key_id, counter, ts_ms);
    CREATE TABLE velocity_locks (
        key_id  TEXT NOT NULL,
        counter TEXT NOT NULL,
        n       BIGINT NOT NULL,
        PRIMARY KEY (key_id, counter)
    );
    CREATE TABLE evm_nonces (
        key_id     TEXT NOT NULL,
        chain_id   BIGINT NOT NULL,
        nonce      BIGINT NOT NULL,
        sighash    BYTEA NOT NULL,
        max_fee    TEXT NOT NULL,
        tip        TEXT NOT NULL,
        request_id TEXT NOT NULL,
        PRIMARY KEY (key_id, chain_id, nonce)
    );
    CREATE TABLE cometbft_watermarks (
        chain_id        TEXT NOT NULL,
        key_id          TEXT NOT NULL,
        height          BIGINT NOT NULL,
        round           BIGINT NOT NULL,
        step            BIGINT NOT NULL,
        block_id        BYTEA NOT NULL,
        sign_bytes      BYTEA NOT NULL,
        signature       BYTEA NOT NULL,
        ext_signature   BYTEA NOT NULL,
        source          TEXT NOT NULL,
        updated_ms      BIGINT NOT NULL,
        released_height BIGINT NOT NULL DEFAULT 0,
        released_round  BIGINT NOT NULL DEFAULT 0,
        released_step   BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (chain_id, key_id)
    );
    CREATE TABLE clients (
        name         TEXT PRIMARY KEY,
        token_sha256 BYTEA NOT NULL UNIQUE,
        scope        TEXT NOT NULL,
        created_ms   BIGINT NOT NULL,
        created_by   TEXT NOT NULL,
        updated_ms   BIGINT NOT NULL,
        updated_by   TEXT NOT NULL
    );
    CREATE TABLE secret_kdf (
        id          BIGINT PRIMARY KEY CHECK (id = 1),
        salt        BYTEA NOT NULL,
        memory_kib  BIGINT NOT NULL,
        iterations  BIGINT NOT NULL,
        parallelism BIGINT NOT NULL,
        check_value BYTEA NOT NULL
    );
    CREATE TABLE bitcoin_signed_txs (
        txid       TEXT NOT NULL,
        key_id     TEXT NOT NULL,
        ts_ms      BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        psbt       TEXT NOT NULL,
        tx_hex     TEXT,
        PRIMARY KEY (txid, key_id)
    );
    CREATE TABLE bitcoin_claim_releases (
        key_id      TEXT NOT NULL,
        outpoint    TEXT NOT NULL,
        txid        TEXT NOT NULL,
        released_ms BIGINT NOT NULL,
        released_by TEXT NOT NULL,
        PRIMARY KEY (key_id, outpoint, txid)
    );
    CREATE TABLE signet_heights (
        challenge   TEXT NOT NULL,
        key_id      TEXT NOT NULL,
        height      BIGINT NOT NULL,
        max_height  BIGINT NOT NULL,
        commitment  TEXT NOT NULL,
        prev_hash   TEXT NOT NULL,
        merkle_root TEXT NOT NULL,
        version     BIGINT NOT NULL,
        block_time  BIGINT NOT NULL,
        recent      TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        updated_ms  BIGINT NOT NULL,
        PRIMARY KEY (challenge, key_id)
    );
    CREATE TABLE bitcoin_claims (
        key_id     TEXT NOT NULL,
        outpoint   TEXT NOT NULL,
        txid       TEXT NOT NULL,
        ts_ms      BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        PRIMARY KEY (key_id, outpoint)
    );",
    ),
    (
        2,
        // Ethereum consensus slashing protection, as SQLite's version 9.
        "CREATE TABLE eth2_validators (
        pubkey         BYTEA PRIMARY KEY,
        min_block_slot BIGINT,
        min_source     BIGINT,
        min_target     BIGINT,
        prune_block_slot BIGINT,
        prune_source   BIGINT,
        prune_target   BIGINT,
        created_ms     BIGINT NOT NULL
    );
    CREATE TABLE eth2_signed_blocks (
        pubkey       BYTEA NOT NULL,
        slot         BIGINT NOT NULL,
        signing_root BYTEA,
        PRIMARY KEY (pubkey, slot)
    );
    CREATE TABLE eth2_signed_attestations (
        pubkey       BYTEA NOT NULL,
        source       BIGINT NOT NULL,
        target       BIGINT NOT NULL,
        signing_root BYTEA,
        PRIMARY KEY (pubkey, target)
    );
    CREATE INDEX eth2_signed_attestations_source ON eth2_signed_attestations(pubkey, source);",
    ),
    (
        3,
        // console-passkeys (web console; SQLite's matching entry, the lead may renumber both).
        "CREATE TABLE console_passkeys (
        cred_id    TEXT PRIMARY KEY,
        user_name  TEXT NOT NULL,
        passkey    TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE INDEX console_passkeys_user ON console_passkeys(user_name);",
    ),
];
