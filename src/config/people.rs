//! Configuration of the admin API, rate limits and approval timing.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};

/// `[admin]`: the admin JSON-RPC API and how users authenticate to it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin API at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Unix socket path (mode 0600); default `<data.dir>/admin.sock`.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Refuse a TOTP code whose time step was already used by the same user (RFC 6238 §5.2).
    #[serde(default = "yes")]
    pub totp_single_use: bool,
    /// Time steps of clock drift accepted either side.
    #[serde(default = "one")]
    pub totp_skew: u8,
    /// Issuer shown in authenticator apps.
    #[serde(default = "issuer")]
    pub issuer: String,
    /// How long the first admin's half of a two-admin action waits for the second.
    #[serde(default = "proposal_ttl")]
    pub proposal_ttl: String,
    /// How often the audit head hash is logged for external anchoring.
    #[serde(default = "head_interval")]
    pub audit_head_interval: String,
    /// Consecutive wrong TOTP codes after which a user is locked (brute force of a 6-digit
    /// code must not be possible at network speed).
    #[serde(default = "max_failures")]
    pub totp_max_failures: u32,
    /// How long such a lock lasts.
    #[serde(default = "lockout")]
    pub totp_lockout: String,
    /// Optional TCP listener for the admin API (always TLS), e.g. `"127.0.0.1:9551"`.
    #[serde(default)]
    pub tcp: Option<std::net::SocketAddr>,
    /// Certificate and key of the TCP listener, and the CA that client certificates must chain
    /// to (required unless `client_ca_waived`).
    #[serde(default)]
    pub tls: Option<AdminTlsConfig>,
    /// Live pending approval requests one client may have open (`approval.pending_cap`).
    #[serde(default = "pending_per_client")]
    pub max_pending_approvals_per_client: u32,
    /// Live pending approval requests overall (`approval.pending_cap`).
    #[serde(default = "pending_total")]
    pub max_pending_approvals: u32,
    /// Connection and request limits of the TCP listener.
    #[serde(default)]
    pub limits: AdminListenerLimits,
    /// The web console on the TCP listener (`[admin.console]`, docs/console.md).
    #[serde(default)]
    pub console: Option<super::ConsoleConfig>,
}

/// `[admin.limits]`: what one peer, and all peers together, may hold of the TCP admin listener.
/// Anonymous peers must not be able to exhaust it, starve the signing listeners of file
/// descriptors, or lock users out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminListenerLimits {
    /// Open connections overall (`admin.connection_cap`).
    pub max_connections: usize,
    /// Open connections per peer IP (`admin.connection_cap`).
    pub max_connections_per_peer: usize,
    /// Time for the TLS handshake.
    pub handshake_timeout: String,
    /// Time for a request's headers and body, and the longest idle time between requests.
    pub idle_timeout: String,
    /// Requests per second per peer IP, sustained (`admin.peer_rate`).
    pub peer_requests_per_second: f64,
    /// Requests a peer may send at once.
    pub peer_burst: u32,
    /// Failed sign-ins (unknown user, wrong or reused code) a peer may make within
    /// `totp_lockout` before it is refused without looking at the user (`admin.peer_throttle`).
    /// This runs before the per-user lockout, so one peer cannot lock anybody out.
    pub peer_auth_failures: u32,
}

impl Default for AdminListenerLimits {
    fn default() -> Self {
        AdminListenerLimits {
            max_connections: 64,
            max_connections_per_peer: 8,
            handshake_timeout: "5s".into(),
            idle_timeout: "30s".into(),
            peer_requests_per_second: 2.0,
            peer_burst: 20,
            peer_auth_failures: 10,
        }
    }
}

/// `[admin.tls]`: PEM files of the admin TCP listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsConfig {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Clients must present a certificate chaining to this CA (TOTP still applies). Required
    /// unless `client_ca_waived = true`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Serve the TCP admin listener to peers without a client certificate. Without one, anyone
    /// who can reach the port can make keyguard do work and write audit rows; say so
    /// explicitly.
    #[serde(default)]
    pub client_ca_waived: bool,
}

fn yes() -> bool {
    true
}
fn one() -> u8 {
    1
}
fn issuer() -> String {
    "keyguard".into()
}
fn proposal_ttl() -> String {
    "1h".into()
}
fn head_interval() -> String {
    "5m".into()
}
fn max_failures() -> u32 {
    5
}
fn lockout() -> String {
    "15m".into()
}
/// Most live pending approval requests per requesting client, by default.
pub const DEFAULT_PENDING_PER_CLIENT: u32 = 100;
/// Most live pending approval requests overall, by default.
pub const DEFAULT_PENDING_TOTAL: u32 = 1_000;
fn pending_per_client() -> u32 {
    DEFAULT_PENDING_PER_CLIENT
}
fn pending_total() -> u32 {
    DEFAULT_PENDING_TOTAL
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            socket: None,
            totp_single_use: true,
            totp_skew: 1,
            issuer: issuer(),
            proposal_ttl: proposal_ttl(),
            audit_head_interval: head_interval(),
            totp_max_failures: max_failures(),
            totp_lockout: lockout(),
            tcp: None,
            tls: None,
            max_pending_approvals_per_client: pending_per_client(),
            max_pending_approvals: pending_total(),
            limits: AdminListenerLimits::default(),
            console: None,
        }
    }
}

/// `[rate_limits]`: each limit is optional; absent means unlimited.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Per client (bearer token identity, or `local`).
    #[serde(default)]
    pub per_client: Option<LimitConfig>,
    /// Per key.
    #[serde(default)]
    pub per_key: Option<LimitConfig>,
    /// Per JSON-RPC method.
    #[serde(default)]
    pub per_method: Option<LimitConfig>,
}

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Sustained requests per second (may be fractional, e.g. 0.5).
    pub per_second: f64,
    /// Requests allowed at once from a full bucket.
    pub burst: u32,
}

/// The governor quota of one configured limit (None: rate not > 0 or burst 0, refused by
/// validation). Lives with [`LimitConfig`] so that validating it needs nothing above config.
pub fn quota(limit: &LimitConfig) -> Option<governor::Quota> {
    let burst = std::num::NonZeroU32::new(limit.burst)?;
    if !(limit.per_second.is_finite() && limit.per_second > 0.0) {
        return None;
    }
    let period = std::time::Duration::from_secs_f64(1.0 / limit.per_second);
    governor::Quota::with_period(period).map(|q| q.allow_burst(burst))
}

/// The one duration syntax (`"500ms"`, `"90s"`, `"30m"`, `"1h"`, `"2d"`), shared with the
/// chain crates' windows.
pub use keyguard_chain::duration::parse_duration;

impl Config {
    /// Problems of `[admin]` and `[rate_limits]`.
    pub(super) fn people_problems(&self) -> Vec<ConfigError> {
        let mut problems = self.console_problems();
        for (key, value) in [
            ("admin.proposal_ttl", &self.admin.proposal_ttl),
            ("admin.audit_head_interval", &self.admin.audit_head_interval),
            ("admin.totp_lockout", &self.admin.totp_lockout),
        ] {
            match parse_duration(value) {
                Ok(d) if d.is_zero() => problems.push(self.invalid(key, "must not be zero")),
                Ok(_) => {}
                Err(e) => problems.push(self.invalid(key, e)),
            }
        }
        if self.admin.issuer.contains(':') {
            problems.push(self.invalid("admin.issuer", "may not contain ':'"));
        }
        if self.admin.totp_max_failures == 0 {
            problems.push(self.invalid("admin.totp_max_failures", "must be at least 1"));
        }
        match (&self.admin.tcp, &self.admin.tls) {
            (Some(_), None) => problems.push(self.invalid(
                "admin.tcp",
                "the admin API is never served without TLS: add [admin.tls] cert and key",
            )),
            (None, Some(_)) => {
                problems.push(self.invalid("admin.tls", "set admin.tcp to serve it"));
            }
            (Some(_), Some(tls)) if tls.client_ca.is_none() && !tls.client_ca_waived => problems
                .push(self.invalid(
                    "admin.tls.client_ca",
                    "the TCP admin listener requires client certificates: set client_ca, or \
                     client_ca_waived = true to accept any peer",
                )),
            _ => {}
        }
        let limits = &self.admin.limits;
        for (key, value) in [
            ("admin.limits.handshake_timeout", &limits.handshake_timeout),
            ("admin.limits.idle_timeout", &limits.idle_timeout),
        ] {
            match parse_duration(value) {
                Ok(d) if d.is_zero() => problems.push(self.invalid(key, "must not be zero")),
                Ok(_) => {}
                Err(e) => problems.push(self.invalid(key, e)),
            }
        }
        let peer_rate = LimitConfig {
            per_second: limits.peer_requests_per_second,
            burst: limits.peer_burst,
        };
        if limits.max_connections == 0
            || limits.max_connections_per_peer == 0
            || limits.peer_auth_failures == 0
            || quota(&peer_rate).is_none()
        {
            problems.push(self.invalid(
                "admin.limits",
                "connection caps, peer_auth_failures, peer rate and burst must be positive",
            ));
        }
        if self.admin.max_pending_approvals == 0 || self.admin.max_pending_approvals_per_client == 0
        {
            problems.push(self.invalid("admin.max_pending_approvals", "must be at least 1"));
        }
        if let Err(e) = self.audit.validate() {
            problems.push(self.invalid("audit", e));
        }
        if let Some(limits) = &self.rate_limits {
            for (name, limit) in [
                ("per_client", &limits.per_client),
                ("per_key", &limits.per_key),
                ("per_method", &limits.per_method),
            ] {
                if let Some(l) = limit {
                    if quota(l).is_none() {
                        problems.push(self.invalid(
                            format!("rate_limits.{name}"),
                            "per_second must be a positive number and burst at least 1",
                        ));
                    }
                }
            }
        }
        // Both chains' approval rules are one shape (`keyguard_chain::approval`).
        for (i, p) in self.policies.iter().enumerate() {
            let evm = p.evm.as_ref().and_then(|e| e.require_approval.as_ref());
            let btc = p.bitcoin.as_ref().and_then(|b| b.require_approval.as_ref());
            let found = [
                evm.map(|r| ("evm", r.problems())),
                btc.map(|r| ("bitcoin", r.problems())),
            ];
            for (chain, list) in found.into_iter().flatten() {
                for (k, reason) in list {
                    let key = format!("policies[{i}].{chain}.require_approval.{k}");
                    problems.push(self.invalid(key, reason));
                }
            }
        }
        problems
    }
}
