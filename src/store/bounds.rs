//! Bounds on how fast and how much an attacker can make the audit log grow.
//!
//! Every refusal is audited, and audit rows can never be deleted (the hash chain would break),
//! so without bounds a caller who is refused anyway could fill the disk at will (a 1 MB
//! `chain_id` in every privval vote, 60 KB of params per unauthenticated admin request) and then
//! every chain stops signing. Three bounds, all applied in [`AuditLog`](super::AuditLog) before
//! an entry reaches the writer:
//!
//! - **Field caps**: every string of a row (ids, method, rule, reason, and each string inside
//!   the summary) longer than `max_field_bytes` is cut, keeping a prefix with its original
//!   length and SHA-256; a summary still larger than `max_summary_bytes` is replaced by its
//!   length and SHA-256.
//! - **Refusal budget** (rule `audit.refusal_budget`): refusal rows are metered per source
//!   (privval connection, admin peer, client, `unauthenticated`) and overall. Rows over budget
//!   are not written but counted; the source's next row that fits the budget is preceded by one
//!   summary row with the count (held rows count as refusals here: a retry of a held request
//!   costs the caller nothing). Signed, accepted and failed rows are never metered.
//! - **Disk floor** (rule `audit.disk_floor`): below `min_free_bytes` free on the data
//!   directory's filesystem no new row is written (refusals are counted as above, everything
//!   else fails), so keyguard stops doing work while it can still write its own audit rows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::audit::{AuditEntry, Decision};
use super::now_ms;
pub use crate::config::AuditLimits;

/// Most sources metered separately; beyond this, new sources share one budget (`overflow`).
const MAX_SOURCES: usize = 4096;
/// How often the free space is looked at again.
const DISK_CHECK_MS: i64 = 500;

/// A token bucket with the refusals it has not written since its last written row.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last_ms: i64,
    suppressed: u64,
    first_suppressed_ms: i64,
    last_rule: Option<String>,
}

impl Bucket {
    fn full(burst: f64, now: i64) -> Self {
        Bucket {
            tokens: burst,
            last_ms: now,
            suppressed: 0,
            first_suppressed_ms: 0,
            last_rule: None,
        }
    }

    fn take(&mut self, rate: f64, burst: f64, now: i64) -> bool {
        let elapsed = (now - self.last_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last_ms = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What to do with one entry.
pub(crate) enum Admission {
    /// Write it, after these summary rows.
    Write(Vec<AuditEntry>),
    /// A refusal over budget or below the floor: counted, not written.
    Suppressed,
    /// Below the disk floor: fail the entry.
    DiskFloor { free: u64, floor: u64 },
}

/// The shared state of the bounds (one per store, behind every [`AuditLog`](super::AuditLog)).
#[derive(Debug, Default)]
pub(crate) struct Bounds {
    limits: RwLock<AuditLimits>,
    data_dir: RwLock<Option<PathBuf>>,
    sources: Mutex<HashMap<String, Bucket>>,
    total: Mutex<Option<Bucket>>,
    disk_checked_ms: AtomicI64,
    below_floor: AtomicBool,
    free_bytes: AtomicI64,
}

impl Bounds {
    pub(crate) fn configure(&self, limits: AuditLimits, data_dir: Option<PathBuf>) {
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = limits;
        *self.data_dir.write().unwrap_or_else(|e| e.into_inner()) = data_dir;
        self.disk_checked_ms.store(0, Ordering::Relaxed);
    }

    fn limits(&self) -> AuditLimits {
        self.limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Free bytes and the floor, if the data directory is below it (checked at most every
    /// [`DISK_CHECK_MS`]).
    pub(crate) fn disk_floor(&self) -> Option<(u64, u64)> {
        self.disk_floor_within(DISK_CHECK_MS)
    }

    /// [`Self::disk_floor`] looked at now: admission of new work uses it, so a request is
    /// never let in on a reading older than the one its audit row will be written under (that
    /// request would sign and then find its row refused).
    pub(crate) fn disk_floor_now(&self) -> Option<(u64, u64)> {
        self.disk_floor_within(0)
    }

    fn disk_floor_within(&self, max_age_ms: i64) -> Option<(u64, u64)> {
        let now = now_ms();
        let floor = self.limits().min_free_bytes;
        if now - self.disk_checked_ms.load(Ordering::Relaxed) >= max_age_ms {
            self.disk_checked_ms.store(now, Ordering::Relaxed);
            let dir = self
                .data_dir
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(dir) = dir {
                match rustix::fs::statvfs(&dir) {
                    Ok(s) => {
                        let free = s.f_bavail.saturating_mul(s.f_frsize);
                        self.free_bytes
                            .store(i64::try_from(free).unwrap_or(i64::MAX), Ordering::Relaxed);
                        self.below_floor.store(free < floor, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "statvfs failed"),
                }
            }
        }
        if self.below_floor.load(Ordering::Relaxed) {
            let free = u64::try_from(self.free_bytes.load(Ordering::Relaxed)).unwrap_or(0);
            Some((free, floor))
        } else {
            None
        }
    }

    /// Caps the entry's fields, then decides whether it is written.
    pub(crate) fn admit(&self, source: &str, entry: &mut AuditEntry, metered: bool) -> Admission {
        let limits = self.limits();
        cap_entry(entry, &limits);
        // Held rows are metered like refusals: retrying a held request is free for the caller.
        let refusal = metered && matches!(entry.decision, Decision::Refused | Decision::Held);
        if let Some((free, floor)) = self.disk_floor() {
            if refusal {
                self.count_suppressed(source, entry, &limits);
                return Admission::Suppressed;
            }
            return Admission::DiskFloor { free, floor };
        }
        if !refusal {
            return Admission::Write(Vec::new());
        }
        self.meter(source, entry, &limits)
    }

    fn source_key(source: &str, map: &HashMap<String, Bucket>) -> String {
        let key = cap_str(source, 128);
        if map.contains_key(&key) || map.len() < MAX_SOURCES {
            key
        } else {
            "overflow".into()
        }
    }

    fn count_suppressed(&self, source: &str, entry: &AuditEntry, limits: &AuditLimits) {
        let now = now_ms();
        let burst = f64::from(limits.refusal_burst);
        let mut map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::source_key(source, &map);
        let b = map.entry(key).or_insert_with(|| Bucket::full(burst, now));
        note(b, entry, now);
    }

    fn meter(&self, source: &str, entry: &AuditEntry, limits: &AuditLimits) -> Admission {
        let now = now_ms();
        let burst = f64::from(limits.refusal_burst);
        let mut map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::source_key(source, &map);
        let b = map
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(burst, now));
        let own = b.take(limits.refusal_rows_per_second, burst, now);
        let total_ok = own && {
            let total_burst = burst * 10.0;
            let mut total = self.total.lock().unwrap_or_else(|e| e.into_inner());
            total
                .get_or_insert_with(|| Bucket::full(total_burst, now))
                .take(limits.total_refusal_rows_per_second, total_burst, now)
        };
        if !total_ok {
            note(b, entry, now);
            if b.suppressed == 1 {
                tracing::warn!(source = %key, "audit.refusal_budget: refusal rows over budget are counted, not written");
            }
            return Admission::Suppressed;
        }
        let mut before = Vec::new();
        if b.suppressed > 0 {
            before.push(summary_row(&key, b, now));
            b.suppressed = 0;
            b.last_rule = None;
        }
        // Drop sources that are idle with nothing to report, so the map stays small.
        if map.len() > MAX_SOURCES / 2 {
            map.retain(|_, b| b.suppressed > 0 || now - b.last_ms < 3_600_000);
        }
        Admission::Write(before)
    }
}

fn note(b: &mut Bucket, entry: &AuditEntry, now: i64) {
    if b.suppressed == 0 {
        b.first_suppressed_ms = now;
    }
    b.suppressed += 1;
    b.last_rule.clone_from(&entry.rule);
}

/// The one row that stands for the refusal rows of `source` that were not written.
fn summary_row(source: &str, b: &Bucket, now: i64) -> AuditEntry {
    AuditEntry {
        request_id: format!("audit-budget-{now}"),
        client: source.to_owned(),
        key_id: None,
        chain: None,
        method: "audit.suppressed".into(),
        summary: json!({
            "source": source,
            "suppressed": b.suppressed,
            "first_ms": b.first_suppressed_ms,
            "last_ms": now,
            "last_rule": b.last_rule,
        }),
        decision: Decision::Refused,
        rule: Some("audit.refusal_budget".into()),
        reason: Some(format!(
            "{} refusal rows from {source} were over the audit budget and not written",
            b.suppressed
        )),
        tx_hash: None,
    }
}

/// `s` unchanged if it fits in `max` bytes; otherwise a prefix, the original length and its
/// SHA-256 (so the full value can still be matched against a copy kept elsewhere).
pub fn cap_str(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let digest = hex::encode(Sha256::digest(s.as_bytes()));
    let keep = max.saturating_sub(120).max(16).min(s.len());
    let mut cut = keep;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}...[truncated: {} bytes, sha256 {digest}]",
        &s[..cut],
        s.len()
    )
}

fn cap_opt(s: &mut Option<String>, max: usize) {
    if let Some(v) = s.as_mut() {
        if v.len() > max {
            *v = cap_str(v, max);
        }
    }
}

fn cap_value(v: &mut Value, max: usize) {
    match v {
        Value::String(s) if s.len() > max => *s = cap_str(s, max),
        Value::Array(items) => items.iter_mut().for_each(|i| cap_value(i, max)),
        Value::Object(map) => {
            // Keys are attacker-chosen too (a decoded JSON object); long ones are rewritten.
            let long: Vec<String> = map.keys().filter(|k| k.len() > max).cloned().collect();
            for k in long {
                if let Some(val) = map.remove(&k) {
                    map.insert(cap_str(&k, max), val);
                }
            }
            map.values_mut().for_each(|i| cap_value(i, max));
        }
        _ => {}
    }
}

/// Applies the field and summary caps to `entry`.
pub(crate) fn cap_entry(entry: &mut AuditEntry, limits: &AuditLimits) {
    let max = limits.max_field_bytes;
    for s in [&mut entry.request_id, &mut entry.client, &mut entry.method] {
        if s.len() > max {
            *s = cap_str(s, max);
        }
    }
    for s in [
        &mut entry.key_id,
        &mut entry.chain,
        &mut entry.rule,
        &mut entry.reason,
        &mut entry.tx_hash,
    ] {
        cap_opt(s, max);
    }
    cap_value(&mut entry.summary, max);
    // A signed row's summary is state: the Bitcoin spend window and conflict guard are rebuilt
    // from it after a restart, so replacing it by a hash would forget a signature's spend.
    // Signed rows exist only for requests policy allowed (bounded by the body size and the
    // signing limits); the attacker-sized rows this cap is for are refusals.
    if entry.decision == Decision::Signed {
        return;
    }
    let text = entry.summary.to_string();
    if text.len() > limits.max_summary_bytes {
        entry.summary = json!({
            "truncated": true,
            "len": text.len(),
            "sha256": hex::encode(Sha256::digest(text.as_bytes())),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(source: &str, big: usize) -> AuditEntry {
        AuditEntry {
            request_id: "r".into(),
            client: source.into(),
            key_id: None,
            chain: Some("x".repeat(big)),
            method: "m".into(),
            summary: json!({"chain_id": "y".repeat(big), "list": vec!["z".repeat(200); 500]}),
            decision: Decision::Refused,
            rule: Some("some.rule".into()),
            reason: Some("w".repeat(big)),
            tx_hash: None,
        }
    }

    #[test]
    fn every_field_is_capped_with_length_and_hash() {
        let limits = AuditLimits::default();
        let mut e = refusal("c", 1 << 20);
        cap_entry(&mut e, &limits);
        let chain = e.chain.as_deref().unwrap();
        assert!(chain.len() <= limits.max_field_bytes, "{}", chain.len());
        let expected = hex::encode(Sha256::digest("x".repeat(1 << 20).as_bytes()));
        assert!(chain.contains(&format!("{} bytes, sha256 {expected}", 1 << 20)));
        assert!(e.reason.as_deref().unwrap().len() <= limits.max_field_bytes);
        // 500 short strings pass the field cap but not the summary cap.
        assert!(e.summary.to_string().len() <= limits.max_summary_bytes);
        assert_eq!(e.summary["truncated"], true);
        // Negative control: a small entry is untouched.
        let mut small = refusal("c", 10);
        small.summary = json!({"chain_id": "short"});
        let before = small.clone();
        cap_entry(&mut small, &limits);
        assert_eq!(small, before);
    }

    #[test]
    fn a_signed_rows_summary_is_kept_whole() {
        // A PSBT with many outputs: its summary carries the spend the window and the conflict
        // guard are rebuilt from after a restart.
        let limits = AuditLimits::default();
        let outputs: Vec<_> = (0..400)
            .map(|i| json!({"index": i, "address": format!("bcrt1q{i:058}"), "sat": 1000}))
            .collect();
        let summary = json!({"window_sat": 400_000, "outputs": outputs});
        assert!(summary.to_string().len() > limits.max_summary_bytes);
        let mut signed = refusal("c", 10);
        signed.decision = Decision::Signed;
        signed.summary = summary.clone();
        cap_entry(&mut signed, &limits);
        assert_eq!(signed.summary, summary);
        // Negative control: the same summary on a refusal is replaced by its length and hash.
        let mut refused = refusal("c", 10);
        refused.summary = summary;
        cap_entry(&mut refused, &limits);
        assert_eq!(refused.summary["truncated"], true);
    }

    #[test]
    fn refusals_over_budget_are_counted_into_one_summary_row() {
        let bounds = Bounds::default();
        bounds.configure(
            AuditLimits {
                refusal_burst: 3,
                refusal_rows_per_second: 0.001,
                ..AuditLimits::default()
            },
            None,
        );
        let mut written = 0;
        for _ in 0..10 {
            match bounds.admit("privval:a", &mut refusal("privval:a", 10), true) {
                Admission::Write(before) => {
                    assert!(before.is_empty());
                    written += 1;
                }
                Admission::Suppressed => {}
                Admission::DiskFloor { .. } => panic!("no floor set"),
            }
        }
        assert_eq!(written, 3);
        // Another source has its own budget; signed rows are never metered.
        assert!(matches!(
            bounds.admit("client:b", &mut refusal("client:b", 10), true),
            Admission::Write(_)
        ));
        let mut signed = refusal("privval:a", 10);
        signed.decision = Decision::Signed;
        assert!(matches!(
            bounds.admit("privval:a", &mut signed, true),
            Admission::Write(_)
        ));
        // When the source has budget again, its count comes first.
        bounds
            .sources
            .lock()
            .unwrap()
            .get_mut("privval:a")
            .unwrap()
            .tokens = 1.0;
        let Admission::Write(before) =
            bounds.admit("privval:a", &mut refusal("privval:a", 10), true)
        else {
            panic!("refused with budget");
        };
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].summary["suppressed"], 7);
        assert_eq!(before[0].rule.as_deref(), Some("audit.refusal_budget"));
    }

    #[test]
    fn below_the_disk_floor_nothing_new_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = Bounds::default();
        bounds.configure(
            AuditLimits {
                min_free_bytes: u64::MAX,
                ..AuditLimits::default()
            },
            Some(dir.path().to_path_buf()),
        );
        let mut signed = refusal("c", 10);
        signed.decision = Decision::Signed;
        assert!(matches!(
            bounds.admit("c", &mut signed, true),
            Admission::DiskFloor { .. }
        ));
        assert!(matches!(
            bounds.admit("c", &mut refusal("c", 10), true),
            Admission::Suppressed
        ));
        // Negative control: a floor of zero lets everything through.
        bounds.configure(AuditLimits::default(), Some(dir.path().to_path_buf()));
        let bounds2 = Bounds::default();
        bounds2.configure(
            AuditLimits {
                min_free_bytes: 0,
                ..AuditLimits::default()
            },
            Some(dir.path().to_path_buf()),
        );
        assert!(matches!(
            bounds2.admit("c", &mut signed, true),
            Admission::Write(_)
        ));
    }
}
