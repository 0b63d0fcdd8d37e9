//! `[admin.console]`: the web console on the admin TLS listener (docs/console.md).

use serde::Deserialize;

use super::{parse_duration, Config, ConfigError};

/// The web console: passkey sign-in, sessions, and where browsers reach it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console on the admin TLS listener (never on a signing listener).
    #[serde(default)]
    pub enabled: bool,
    /// The exact origin browsers use, e.g. `"https://keyguard.example:9551"`. Passkeys are
    /// bound to its host (the WebAuthn relying party id), and every state-changing request must
    /// carry it as its `Origin` header.
    pub origin: String,
    /// A session unused for this long is signed out.
    #[serde(default = "idle")]
    pub session_idle: String,
    /// A session is signed out this long after sign-in, however busy.
    #[serde(default = "lifetime")]
    pub session_lifetime: String,
    /// The operator's address book (`address = "label"`): the approvals page shows the label
    /// beside a destination, and "no label" beside any other.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn idle() -> String {
    "10m".into()
}
fn lifetime() -> String {
    "8h".into()
}

impl ConsoleConfig {
    /// The origin parsed: `(scheme://host[:port], host)`, or why it cannot be one.
    pub fn parsed_origin(&self) -> Result<(String, String), String> {
        let rest = self
            .origin
            .strip_prefix("https://")
            .ok_or("must start with https:// (the console is served over TLS only)")?;
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err("must be scheme://host[:port] with no path".into());
        }
        let host = match rest.rsplit_once(':') {
            Some((h, port)) if port.parse::<u16>().is_ok() => h,
            _ => rest,
        };
        if host.is_empty() || host.starts_with('[') && !host.ends_with(']') {
            return Err("no host".into());
        }
        Ok((self.origin.clone(), host.to_ascii_lowercase()))
    }
}

impl Config {
    /// Problems of `[admin.console]`.
    pub(super) fn console_problems(&self) -> Vec<ConfigError> {
        let Some(console) = self.admin.console.as_ref().filter(|c| c.enabled) else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        if self.admin.tcp.is_none() {
            problems.push(self.invalid(
                "admin.console.enabled",
                "the console is served on the admin TLS listener: set admin.tcp and [admin.tls]",
            ));
        }
        if let Err(e) = console.parsed_origin() {
            problems.push(self.invalid("admin.console.origin", e));
        }
        problems.extend(
            super::labels::table_problems(&console.labels)
                .into_iter()
                .map(|e| self.invalid("admin.console.labels", e)),
        );
        for (key, value) in [
            ("admin.console.session_idle", &console.session_idle),
            ("admin.console.session_lifetime", &console.session_lifetime),
        ] {
            match parse_duration(value) {
                Ok(d) if d.is_zero() => problems.push(self.invalid(key, "must not be zero")),
                Ok(_) => {}
                Err(e) => problems.push(self.invalid(key, e)),
            }
        }
        problems
    }
}
