//! The daemon side of audit anchors: sign the audit head every `[audit.anchors].anchor_interval` (when
//! rows were added) and at shutdown, append the anchor to the anchor file (fsynced) and print it
//! to the journal. `keyguard audit anchor-key` creates the audit key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use ed25519_dalek::SigningKey;

use crate::config::{parse_duration, AuditConfig};
use crate::store::anchor::{read_key, Anchor};
use crate::store::{AuditFilter, StateDb};

/// Reads the audit key (refused if others can read it).
pub(crate) fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    crate::hardening::check_private(path)?;
    let bytes =
        std::fs::read(path).with_context(|| format!("reading the audit key {}", path.display()))?;
    read_key(&bytes).with_context(|| {
        format!(
            "{}: not an ed25519 seed (64 hex characters or 32 bytes)",
            path.display()
        )
    })
}

/// Writes anchors of new heads.
pub(crate) struct Anchorer {
    key: SigningKey,
    file: PathBuf,
    /// The last anchored row, so an idle log is not anchored again and again.
    last: Mutex<Option<i64>>,
}

impl Anchorer {
    pub(crate) fn new(config: &AuditConfig) -> anyhow::Result<Anchorer> {
        Ok(Anchorer {
            key: load_key(&config.anchor_key)?,
            file: config.anchor_file.clone(),
            last: Mutex::new(None),
        })
    }

    /// Anchors `(seq, head)` unless it is the last one anchored. Blocking (fsync).
    pub(crate) fn anchor(&self, seq: i64, head: &[u8; 32]) -> anyhow::Result<Option<Anchor>> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last == Some(seq) {
            return Ok(None);
        }
        let anchor = Anchor::sign(&self.key, seq, head, crate::store::now_ms());
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.file)
            .with_context(|| format!("opening the anchor file {}", self.file.display()))?;
        writeln!(file, "{}", anchor.to_line())?;
        file.sync_data()?;
        println!("keyguard: audit anchor {}", anchor.to_line());
        tracing::info!(seq, head = %anchor.head, sig = %anchor.sig, "audit anchor");
        *last = Some(seq);
        Ok(Some(anchor))
    }
}

/// The newest row's `(seq, hash)`, read through the state connection.
fn head(state: &StateDb) -> anyhow::Result<(i64, [u8; 32])> {
    let rows = state.query_audit(&AuditFilter {
        limit: Some(1),
        newest_first: true,
        ..AuditFilter::default()
    })?;
    Ok(rows
        .first()
        .map_or((0, crate::store::GENESIS_HASH), |r| (r.seq, r.hash)))
}

/// Anchors once now, then every interval, off the async workers.
pub(crate) fn spawn(anchorer: Arc<Anchorer>, state: StateDb, interval: &str) {
    let period = parse_duration(interval).unwrap_or(std::time::Duration::from_secs(60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let (a, db) = (anchorer.clone(), state.clone());
            let done = tokio::task::spawn_blocking(move || {
                let (seq, hash) = head(&db)?;
                a.anchor(seq, &hash)
            })
            .await;
            match done {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "audit anchor failed"),
                Err(e) => tracing::error!(error = %e, "audit anchor task failed"),
            }
        }
    });
}

/// Anchors the final head at shutdown (after the last row was written).
pub(crate) fn final_anchor(anchorer: &Anchorer, state: &StateDb) {
    match head(state).and_then(|(seq, hash)| anchorer.anchor(seq, &hash)) {
        Ok(_) => {}
        Err(e) => tracing::error!(error = %format!("{e:#}"), "final audit anchor failed"),
    }
}

/// `keyguard audit anchor-key --out FILE`: a new audit key (mode 0600, never overwritten);
/// prints its public key, which verifiers may pass as `--anchor-public-key`.
pub(crate) fn create_key(out: &Path) -> anyhow::Result<()> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    writeln!(file, "{}", hex::encode(key.to_bytes()))?;
    file.sync_all()?;
    println!(
        "audit key written to {}; public key {}",
        out.display(),
        hex::encode(key.verifying_key().to_bytes())
    );
    Ok(())
}
