//! `[audit]`: bounds on audit growth (enforced by `crate::store::bounds`), and
//! `[audit.anchors]`: anchors of the audit chain's head, signed by a dedicated audit key and
//! written outside the data directory (see `crate::store::anchor` for what they catch).
//!
//! ```toml
//! [audit.anchors]
//! anchor_key = "/etc/keyguard/audit-anchor.key"      # ed25519 seed: 64 hex chars or 32 bytes
//! anchor_file = "/var/log/keyguard/anchors.jsonl"    # appended to, never rewritten
//! anchor_interval = "1m"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{parse_duration, Config, ConfigError};

/// Where and how often the audit head is anchored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The audit key's private seed. Not the signing keys: a stolen audit key forges anchors,
    /// never transactions. Keep it readable by keyguard only, outside the data directory.
    pub anchor_key: PathBuf,
    /// The append-only anchor file (JSON Lines), outside the data directory, so that whoever
    /// can rewrite the database cannot rewrite its anchors with it.
    pub anchor_file: PathBuf,
    /// How often a new head is anchored (only when rows were added).
    #[serde(default = "interval")]
    pub anchor_interval: String,
}

fn interval() -> String {
    "1m".into()
}

/// Whether `inner` is `outer` or lies inside it (lexically, after making both absolute).
fn inside(inner: &Path, outer: &Path) -> bool {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    abs(inner).starts_with(abs(outer))
}

impl Config {
    /// Problems of `[audit.anchors]`.
    pub(super) fn audit_problems(&self) -> Vec<ConfigError> {
        let Some(audit) = &self.audit.anchors else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        match parse_duration(&audit.anchor_interval) {
            Ok(d) if d.is_zero() => {
                problems.push(self.invalid("audit.anchors.anchor_interval", "must not be zero"))
            }
            Ok(_) => {}
            Err(e) => problems.push(self.invalid("audit.anchors.anchor_interval", e)),
        }
        for (key, path) in [
            ("audit.anchors.anchor_file", &audit.anchor_file),
            ("audit.anchors.anchor_key", &audit.anchor_key),
        ] {
            if inside(path, &self.data.dir) {
                problems.push(self.invalid(
                    key,
                    "must be outside the data directory (whoever can rewrite the database \
                     could rewrite it too)",
                ));
            }
        }
        problems
    }
}

/// `[audit]`: the bounds on audit growth enforced by `crate::store::bounds`. Every field has a safe default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditLimits {
    /// Longest string kept as is in a row (longer: prefix, length and SHA-256).
    pub max_field_bytes: usize,
    /// Largest summary kept (larger: only its length and SHA-256).
    pub max_summary_bytes: usize,
    /// Refusal rows each source may add per second, sustained.
    pub refusal_rows_per_second: f64,
    /// Refusal rows a source may add at once.
    pub refusal_burst: u32,
    /// Refusal rows all sources together may add per second, sustained (burst: ten times
    /// `refusal_burst`).
    pub total_refusal_rows_per_second: f64,
    /// Free bytes on the data directory's filesystem below which no new work is accepted.
    pub min_free_bytes: u64,
    /// `[audit.anchors]`: signed anchors of the audit head (`crate::store::anchor`).
    pub anchors: Option<AuditConfig>,
}

impl Default for AuditLimits {
    fn default() -> Self {
        AuditLimits {
            max_field_bytes: 1024,
            max_summary_bytes: 16 * 1024,
            refusal_rows_per_second: 1.0,
            refusal_burst: 60,
            total_refusal_rows_per_second: 50.0,
            min_free_bytes: 64 * 1024 * 1024,
            anchors: None,
        }
    }
}

impl AuditLimits {
    /// Config-time sanity (the values must allow at least one row and a short summary).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_field_bytes < 256 || self.max_summary_bytes < 1024 {
            return Err("audit: max_field_bytes >= 256 and max_summary_bytes >= 1024".into());
        }
        let rates = [
            self.refusal_rows_per_second,
            self.total_refusal_rows_per_second,
        ];
        if rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) || self.refusal_burst == 0 {
            return Err("audit: refusal rates must be > 0 and refusal_burst >= 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(audit: &str) -> Vec<String> {
        let text = format!(
            "[data]\ndir = \"/srv/kg\"\n[keystore]\nbackend = \"software\"\n[audit.anchors]\n{audit}"
        );
        match Config::parse(Path::new("t.toml"), &text) {
            Ok(c) => c.audit_problems().iter().map(ToString::to_string).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn anchors_inside_the_data_directory_are_refused() {
        let inside = problems("anchor_key = \"/etc/a.key\"\nanchor_file = \"/srv/kg/anchors\"\n");
        assert!(
            inside
                .iter()
                .any(|p| p.contains("audit.anchors.anchor_file")),
            "{inside:?}"
        );
        // Control: outside it, nothing to say.
        let outside = problems("anchor_key = \"/etc/a.key\"\nanchor_file = \"/var/log/a\"\n");
        assert!(outside.is_empty(), "{outside:?}");
    }
}
